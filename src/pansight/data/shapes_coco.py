"""The synthetic world written to disk as COCO instances + COCO panoptic files.

What ``pansight data write`` produces, and what ``data=coco data.root=DIR`` reads back, so the
real-data readers are exercised by the same data as the built-in world.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from pathlib import Path

from torch import Tensor
from tqdm import tqdm

from pansight.data.coco import image_record, instance_annotations, write_coco_json
from pansight.data.coco_panoptic import write_panoptic
from pansight.data.images import write_image
from pansight.data.shapes import ALL_CLASSES, COCO_CATEGORY_IDS, THING_CLASSES, THING_FLAGS
from pansight.structures import Target

PROGRESS_MIN_IMAGES = 100
"""Show a progress bar from this many images on."""


def write_coco(samples: Iterable[tuple[Tensor, Target]], out_dir: str | Path, split: str) -> None:
    """Write samples of the world (a :class:`ShapesDataset` or ``(image, target)`` pairs) as COCO.

    Files under ``out_dir``:
        - ``images/<split>/<image_id:06d>.png``
        - ``annotations/instances_<split>.json``: things with ids ``1, 3, 5, 7, 9``, compressed
          RLE masks;
        - ``annotations/panoptic_<split>.json`` and ``annotations/panoptic_<split>/<id>.png``
          (ids as ``R + 256 G + 256^2 B``), stuff with ids ``11, 13, 15, 17``.
    """
    out_dir = Path(out_dir)
    annotation_dir = out_dir / "annotations"
    thing_ids = list(COCO_CATEGORY_IDS[: len(THING_CLASSES)])
    images, instances, panoptic = [], [], []
    total = len(samples) if isinstance(samples, Sized) else None
    quiet = total is not None and total < PROGRESS_MIN_IMAGES
    for image, target in tqdm(samples, total=total, desc=f"writing {split}", disable=quiet):
        file_name = f"{target.image_id:06d}.png"
        write_image(image, out_dir / "images" / split / file_name)
        images.append(image_record(target.image_id, file_name, target.size))
        instances += instance_annotations(target, thing_ids, first_id=len(instances) + 1)
        png_path = annotation_dir / f"panoptic_{split}" / file_name
        panoptic.append(
            write_panoptic(target.panoptic, target.image_id, png_path, COCO_CATEGORY_IDS)
        )
    categories = [
        {"id": category_id, "name": name, "supercategory": "thing" if is_thing else "stuff"}
        for category_id, name, is_thing in zip(COCO_CATEGORY_IDS, ALL_CLASSES, THING_FLAGS)
    ]
    write_coco_json(
        annotation_dir / f"instances_{split}.json", images, instances, categories[: len(thing_ids)]
    )
    panoptic_categories = [
        {**category, "isthing": int(is_thing)}
        for category, is_thing in zip(categories, THING_FLAGS)
    ]
    write_coco_json(
        annotation_dir / f"panoptic_{split}.json", images, panoptic, panoptic_categories
    )
