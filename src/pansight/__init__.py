"""pansight: the ladder of image understanding in one library.

classification -> localization -> detection -> semantic -> instance (image and video) -> panoptic.

>>> import pansight
>>> run = pansight.train("classify", data="digits", epochs=15)
>>> model = pansight.load(run.out / "model.pt")
"""

from pansight.api import evaluate, load, train

__all__ = ["evaluate", "load", "train"]
__version__ = "0.1.0"
