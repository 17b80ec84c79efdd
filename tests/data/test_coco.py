import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pansight.data.coco import CocoInstances, CocoPanoptic
from pansight.data.coco_panoptic import id_to_rgb, rgb_to_id
from pansight.data.shapes import (
    ALL_CLASSES,
    COCO_CATEGORY_IDS,
    THING_CLASSES,
    ShapesDataset,
    render_sample,
)
from pansight.data.shapes_coco import write_coco
from pansight.errors import DataError
from pansight.structures import IGNORE_LABEL

HEIGHT, WIDTH = 6, 8


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Four multi-object samples written as COCO, and the samples themselves."""
    root = tmp_path_factory.mktemp("shapes_coco")
    dataset = ShapesDataset(split="val", mode="multi", num_images=4, image_size=48, seed=2)
    write_coco(dataset, root, "val")
    return root, [dataset[i] for i in range(len(dataset))]


def test_instances_round_trip(written):
    root, samples = written
    dataset = CocoInstances(root / "annotations" / "instances_val.json", root / "images" / "val")
    assert dataset.class_names == list(THING_CLASSES)
    assert dataset.category_ids == [1, 3, 5, 7, 9]
    assert dataset.semantic_class_names is None and dataset.thing_flags is None
    assert len(dataset) == len(samples)
    for (image, target), (expected_image, expected) in zip(dataset, samples):
        assert torch.equal(image, expected_image)
        assert target.image_id == expected.image_id and target.size == expected.size
        assert torch.equal(target.boxes, expected.boxes)
        assert torch.equal(target.labels, expected.labels)
        assert torch.equal(target.masks, expected.masks)
        assert torch.equal(target.iscrowd, expected.iscrowd)


def test_write_coco_takes_any_iterable_of_samples(tmp_path):
    samples = [render_sample(i, mode="single", image_size=32) for i in range(2)]
    write_coco(iter(samples), tmp_path, "train")
    dataset = CocoInstances(
        tmp_path / "annotations/instances_train.json", tmp_path / "images/train"
    )
    assert [target.labels.tolist() for _, target in dataset] == [
        target.labels.tolist() for _, target in samples
    ]


def test_written_instances_use_coco_ids_and_decode_with_pycocotools(written):
    root, samples = written
    coco = COCO(str(root / "annotations" / "instances_val.json"))
    for _, expected in samples:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[expected.image_id]))
        categories = [annotation["category_id"] for annotation in annotations]
        assert categories == [COCO_CATEGORY_IDS[label] for label in expected.labels.tolist()]
        masks = np.stack([coco.annToMask(annotation) for annotation in annotations])
        assert np.array_equal(masks, expected.masks.numpy())


def test_panoptic_round_trip(written):
    root, samples = written
    annotations = root / "annotations"
    dataset = CocoPanoptic(
        annotations / "panoptic_val.json", annotations / "panoptic_val", root / "images" / "val"
    )
    assert dataset.class_names == list(THING_CLASSES)
    assert dataset.category_ids == [1, 3, 5, 7, 9]
    assert dataset.semantic_class_names == list(ALL_CLASSES)
    assert dataset.semantic_category_ids == list(COCO_CATEGORY_IDS)
    assert dataset.thing_flags == [True] * 5 + [False] * 4
    for (image, target), (expected_image, expected) in zip(dataset, samples):
        assert torch.equal(image, expected_image)
        assert torch.equal(target.semantic, expected.semantic)
        assert torch.equal(target.panoptic.ids, expected.panoptic.ids)
        assert target.panoptic.segments == expected.panoptic.segments
        for name in ("boxes", "labels", "masks", "iscrowd"):
            assert torch.equal(getattr(target, name), getattr(expected, name)), name


def test_written_panoptic_json_lists_segments_with_boxes(written):
    root, samples = written
    data = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    assert {c["id"]: c["isthing"] for c in data["categories"]} == {
        category_id: int(index < 5) for index, category_id in enumerate(COCO_CATEGORY_IDS)
    }
    record, (_, expected) = data["annotations"][0], samples[0]
    png = np.asarray(Image.open(root / "annotations" / "panoptic_val" / record["file_name"]))
    first = record["segments_info"][0]
    rows, cols = np.nonzero(rgb_to_id(png) == first["id"])
    assert first["bbox"] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
    assert first["area"] == expected.panoptic.segments[0].area == len(rows)


def test_rgb_id_encoding():
    assert rgb_to_id(np.array([1, 2, 3], dtype=np.uint8)) == 1 + 2 * 256 + 3 * 256**2
    ids = np.array([[0, 1, 255], [256, 70000, 256**3 - 1]])
    assert np.array_equal(id_to_rgb(ids)[1, 1], [70000 % 256, 70000 // 256 % 256, 1])
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    with pytest.raises(ValueError):
        id_to_rgb(np.array([256**3]))


# Hand-made files ---------------------------------------------------------------------------


def hand_mask(rows, cols):
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[rows, cols] = True
    return mask


def write_images(folder, names, size=(HEIGHT, WIDTH)):
    folder.mkdir(exist_ok=True)
    for name in names:
        Image.fromarray(np.full((*size, 3), 90, dtype=np.uint8)).save(folder / name)
    return folder


def instances_json(tmp_path, **changes):
    """A tiny instances file: image 1 has a polygon, an uncompressed and a crowd RLE object and a
    zero-size box flagged ignore; image 2 has no annotations. Category ids 7 (b) and 2 (a)."""
    crowd = mask_utils.encode(np.asfortranarray(hand_mask(slice(4, 6), slice(5, 8)), np.uint8))
    data = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": HEIGHT, "width": WIDTH},
            {"id": 2, "file_name": "two.png", "height": HEIGHT, "width": WIDTH},
        ],
        "categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [1, 1, 4, 3],
                "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4], [6, 4, 8, 4, 8, 6, 6, 6]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "bbox": [1, 1, 1, 3],
                "segmentation": {"size": [HEIGHT, WIDTH], "counts": [7, 3, 38]},
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 2,
                "bbox": [5, 4, 3, 2],
                "iscrowd": 1,
                "segmentation": {"size": crowd["size"], "counts": crowd["counts"].decode()},
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 7,
                "bbox": [2, 2, 0, 0],
                "ignore": 1,
                "segmentation": [],
            },
        ],
    }
    data.update(changes)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    write_images(tmp_path / "images", ["one.png", "two.png"])
    return path, data


def test_instances_decode_polygons_rle_and_crowd(tmp_path):
    path, _ = instances_json(tmp_path)
    dataset = CocoInstances(path, tmp_path / "images")
    assert dataset.class_names == ["a", "b"] and dataset.category_ids == [2, 7]
    image, target = dataset[0]
    assert image.shape == (3, HEIGHT, WIDTH) and target.image_id == 1
    assert target.labels.tolist() == [1, 0, 0, 1]
    assert target.boxes.tolist() == [[1, 1, 5, 4], [1, 1, 2, 4], [5, 4, 8, 6], [2, 2, 2, 2]]
    assert target.iscrowd.tolist() == [False, False, True, True]
    polygons = hand_mask(slice(1, 4), slice(1, 5)) | hand_mask(slice(4, 6), slice(6, 8))
    assert np.array_equal(target.masks[0].numpy(), polygons)
    assert np.array_equal(target.masks[1].numpy(), hand_mask(slice(1, 4), 1))
    assert np.array_equal(target.masks[2].numpy(), hand_mask(slice(4, 6), slice(5, 8)))
    assert not target.masks[3].any()


def test_image_without_annotations_has_empty_targets(tmp_path):
    path, _ = instances_json(tmp_path)
    _, target = CocoInstances(path, tmp_path / "images")[1]
    assert target.boxes.shape == (0, 4) and target.labels.shape == (0,)
    assert target.masks.shape == (0, HEIGHT, WIDTH) and target.iscrowd.shape == (0,)


def test_boxes_only_file_has_no_masks(tmp_path):
    path, data = instances_json(tmp_path)
    annotations = [{k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]]
    path, _ = instances_json(tmp_path, annotations=annotations)
    _, target = CocoInstances(path, tmp_path / "images")[0]
    assert target.masks is None and len(target.boxes) == 4


def broken(data, key, index, **changes):
    records = [dict(record) for record in data[key]]
    records[index].update(changes)
    return {key: records}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: {"images": []}, "image list"),
        (lambda data: broken(data, "annotations", 0, category_id=4), "annotation 10: unknown"),
        (lambda data: broken(data, "annotations", 1, bbox=[1, 1, -1, 3]), "annotation 11: bbox"),
        (lambda data: broken(data, "annotations", 0, image_id=9), "annotation 10: image_id"),
        (lambda data: broken(data, "images", 1, id=1), "image id 1"),
        (lambda data: broken(data, "categories", 0, id=2), "category id 2"),
        (lambda data: broken(data, "annotations", 0, segmentation=[[1, 2, 3, 4]]), "polygon"),
        (
            lambda data: broken(
                data, "annotations", 1, segmentation={"size": [6, 8], "counts": [7, 3]}
            ),
            "annotation 11: RLE counts",
        ),
        (
            lambda data: broken(
                data, "annotations", 2, segmentation={"size": [6, 8], "counts": "12"}
            ),
            "annotation 12: RLE counts",
        ),
    ],
)
def test_bad_annotations_raise_data_error_naming_the_file(tmp_path, change, message):
    path, data = instances_json(tmp_path)
    path, _ = instances_json(tmp_path, **change(data))
    with pytest.raises(DataError, match=message) as error:
        CocoInstances(path, tmp_path / "images")
    assert str(path) in str(error.value)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, key):
    path, data = instances_json(tmp_path)
    del data[key]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"{path}: .*'{key}'"):
        CocoInstances(path, tmp_path / "images")


def test_missing_annotation_key_is_named(tmp_path):
    path, data = instances_json(tmp_path)
    path, _ = instances_json(tmp_path, annotations=[{"id": 1, "image_id": 1, "category_id": 2}])
    with pytest.raises(DataError, match=r"annotations\[0\] is missing required key 'bbox'"):
        CocoInstances(path, tmp_path / "images")


def test_missing_and_invalid_json_files(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(DataError, match=f"{missing}: annotation file not found"):
        CocoInstances(missing, tmp_path)
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"images": [')
    with pytest.raises(DataError, match=f"{invalid}: invalid JSON"):
        CocoInstances(invalid, tmp_path)


def test_corrupt_truncated_or_missing_image_names_the_image(tmp_path):
    path, _ = instances_json(tmp_path)
    dataset = CocoInstances(path, tmp_path / "images")
    image_file = tmp_path / "images" / "one.png"
    image_file.write_bytes(image_file.read_bytes()[:30])
    with pytest.raises(DataError, match=str(image_file)):
        dataset[0]
    image_file.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=str(image_file)):
        dataset[0]
    image_file.unlink()
    with pytest.raises(DataError, match=f"{image_file}: image file not found"):
        dataset[0]


def test_image_of_the_wrong_size_is_reported(tmp_path):
    path, _ = instances_json(tmp_path)
    write_images(tmp_path / "images", ["two.png"], size=(5, 5))
    with pytest.raises(DataError, match="two.png: image is 5x5"):
        CocoInstances(path, tmp_path / "images")[1]


def panoptic_files(tmp_path, segments=None, ids=None):
    """Image 1: a stuff region (id 2) and two things (ids 300 and 70000, one crowd) with void
    pixels; image 2 has no annotation record. Categories interleave things and stuff."""
    if ids is None:
        ids = np.full((HEIGHT, WIDTH), 300)
        ids[:, :3] = 2
        ids[4:, 5:] = 70000
        ids[0, 7] = 0
    png_dir = tmp_path / "panoptic"
    png_dir.mkdir(exist_ok=True)
    Image.fromarray(id_to_rgb(ids)).save(png_dir / "one.png")
    segments = segments or [
        {"id": 2, "category_id": 20},
        {"id": 300, "category_id": 40},
        {"id": 70000, "category_id": 90, "iscrowd": 1},
        {"id": 5, "category_id": 90},
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": HEIGHT, "width": WIDTH},
            {"id": 2, "file_name": "two.png", "height": HEIGHT, "width": WIDTH},
        ],
        "annotations": [{"image_id": 1, "file_name": "one.png", "segments_info": segments}],
        "categories": [
            {"id": 90, "name": "person", "isthing": 1},
            {"id": 20, "name": "grass", "isthing": 0},
            {"id": 40, "name": "car", "isthing": 1},
        ],
    }
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(data))
    images = write_images(tmp_path / "images", ["one.png", "two.png"])
    return path, png_dir, images, ids


def test_panoptic_reads_segments_semantic_and_things(tmp_path):
    path, png_dir, images, ids = panoptic_files(tmp_path)
    dataset = CocoPanoptic(path, png_dir, images)
    assert dataset.semantic_class_names == ["grass", "car", "person"]
    assert dataset.semantic_category_ids == [20, 40, 90]
    assert dataset.thing_flags == [False, True, True]
    assert dataset.class_names == ["car", "person"] and dataset.category_ids == [40, 90]
    _, target = dataset[0]
    assert torch.equal(target.panoptic.ids, torch.from_numpy(ids))
    segments = [(s.id, s.label, s.is_thing, s.area, s.iscrowd) for s in target.panoptic.segments]
    assert segments == [
        (2, 0, False, 18, False),
        (300, 1, True, 23, False),
        (70000, 2, True, 6, True),
    ]
    expected_semantic = np.select([ids == 2, ids == 300, ids == 70000], [0, 1, 2], IGNORE_LABEL)
    assert np.array_equal(target.semantic.numpy(), expected_semantic)
    assert target.labels.tolist() == [0, 1] and target.iscrowd.tolist() == [False, True]
    assert target.boxes.tolist() == [[3, 0, 8, 6], [5, 4, 8, 6]]
    assert torch.equal(target.masks[1], torch.from_numpy(ids == 70000))


def test_panoptic_image_without_annotation_is_void(tmp_path):
    _, target = CocoPanoptic(*panoptic_files(tmp_path)[:3])[1]
    assert not target.panoptic.ids.any() and not target.panoptic.segments
    assert (target.semantic == IGNORE_LABEL).all() and target.masks.shape == (0, HEIGHT, WIDTH)


def test_panoptic_errors_name_the_file(tmp_path):
    path, png_dir, images, _ = panoptic_files(tmp_path, segments=[{"id": 2, "category_id": 3}])
    with pytest.raises(DataError, match=f"{path}: annotation of image 1: segment 2: unknown"):
        CocoPanoptic(path, png_dir, images)
    path, png_dir, images, _ = panoptic_files(tmp_path, segments=[{"id": 2, "category_id": 20}])
    with pytest.raises(DataError, match=r"one.png: segment ids \[300, 70000\] are not listed"):
        CocoPanoptic(path, png_dir, images)[0]
    data = json.loads(path.read_text())
    del data["categories"][0]["isthing"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"{path}: categories\[0\] is missing .*'isthing'"):
        CocoPanoptic(path, png_dir, images)


def test_missing_or_corrupt_panoptic_png_is_named(tmp_path):
    dataset = CocoPanoptic(*panoptic_files(tmp_path)[:3])
    png = tmp_path / "panoptic" / "one.png"
    png.write_bytes(png.read_bytes()[:40])
    with pytest.raises(DataError, match=f"{png}: cannot decode"):
        dataset[0]
    png.unlink()
    with pytest.raises(DataError, match=f"{png}: panoptic PNG not found"):
        dataset[0]
