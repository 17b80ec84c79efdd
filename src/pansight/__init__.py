"""pansight: the ladder of image understanding in one library.

classification -> localization -> detection -> semantic -> instance (image and video) -> panoptic.
"""

__version__ = "0.1.0"
