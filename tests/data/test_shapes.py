import time

import numpy as np
import pytest
import torch

from pansight.data.shapes import (
    ALL_CLASSES,
    MIN_VISIBLE_PIXELS,
    STUFF_CLASSES,
    THING_CLASSES,
    ShapesDataset,
    Thing,
    render_sample,
)
from pansight.data.shapes_video import ShapesVideoDataset, render_clip
from pansight.errors import ConfigError


def assert_same_sample(first, second):
    (image_a, target_a), (image_b, target_b) = first, second
    assert torch.equal(image_a, image_b)
    for name in ("boxes", "labels", "masks", "iscrowd", "semantic"):
        assert torch.equal(getattr(target_a, name), getattr(target_b, name)), name
    assert torch.equal(target_a.panoptic.ids, target_b.panoptic.ids)
    assert target_a.panoptic.segments == target_b.panoptic.segments
    assert target_a.label == target_b.label


def assert_consistent(image, target):
    """Pixels, masks, boxes, semantic and panoptic maps of one picture all agree."""
    height, width = target.size
    masks, labels, ids = target.masks, target.labels, target.panoptic.ids
    assert image.shape == (3, height, width) and 0 <= image.min() and image.max() <= 1
    assert masks.shape == (len(labels), height, width) and masks.dtype == torch.bool
    assert ((labels >= 0) & (labels < len(THING_CLASSES))).all()
    assert (masks.sum(0) <= 1).all(), "visible masks overlap"
    assert (masks.flatten(1).sum(1) >= MIN_VISIBLE_PIXELS).all()
    assert not target.iscrowd.any()
    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).reshape(-1, 3)
    for mask, label, box in zip(masks, labels, target.boxes):
        assert (target.semantic[mask] == label).all()
        rows, cols = np.nonzero(mask.numpy())
        tight = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert box.tolist() == pytest.approx(tight)
        color = pixels[mask.flatten()][0]
        same_color = (pixels == color).all(1).reshape(height, width)
        assert torch.equal(same_color, mask), "a thing's pixels are exactly its mask"
    things_anywhere = masks.any(0)
    stuff = target.semantic[~things_anywhere]
    assert (stuff >= len(THING_CLASSES)).all() and (stuff < len(ALL_CLASSES)).all()
    assert (ids > 0).all(), "every pixel belongs to a segment"
    assert sum(segment.area for segment in target.panoptic.segments) == height * width
    for segment in target.panoptic.segments:
        region = ids == segment.id
        assert int(region.sum()) == segment.area > 0
        assert (target.semantic[region] == segment.label).all()
    things = [segment for segment in target.panoptic.segments if segment.is_thing]
    assert [segment.label for segment in things] == labels.tolist()
    for segment, mask in zip(things, masks):
        assert torch.equal(ids == segment.id, mask)
    stuff_labels = [s.label for s in target.panoptic.segments if not s.is_thing]
    assert len(set(stuff_labels)) == len(stuff_labels), "one segment per stuff class"


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_same_arguments_give_the_same_sample_in_any_order(mode):
    later_first = [render_sample(i, mode=mode, seed=3) for i in (7, 5)]
    assert_same_sample(render_sample(5, mode=mode, seed=3), later_first[1])
    assert_same_sample(render_sample(7, mode=mode, seed=3), later_first[0])


def test_seed_split_and_index_change_the_sample():
    image = render_sample(2)[0]
    assert not torch.equal(image, render_sample(2, seed=1)[0])
    assert not torch.equal(image, render_sample(2, split="val")[0])
    assert not torch.equal(image, render_sample(3)[0])


def test_multi_mode_targets_agree_with_pixels_and_each_other():
    counts, classes, stuff, overlapping = [], set(), set(), 0
    for index in range(40):
        image, target = render_sample(index, mode="multi", image_size=64, max_objects=4)
        assert_consistent(image, target)
        assert target.label is None and target.box is None
        counts.append(len(target.labels))
        classes |= set(target.labels.tolist())
        stuff |= {s.label for s in target.panoptic.segments if not s.is_thing}
        boxes = target.boxes
        for i in range(len(boxes)):
            for j in range(i):
                lo, hi = (
                    torch.maximum(boxes[i, :2], boxes[j, :2]),
                    torch.minimum(boxes[i, 2:], boxes[j, 2:]),
                )
                overlapping += bool((hi > lo).all())
    assert 1 <= min(counts) and max(counts) <= 4 and len(set(counts)) > 1
    assert classes == set(range(len(THING_CLASSES)))
    assert stuff == set(range(len(THING_CLASSES), len(ALL_CLASSES)))
    assert overlapping > 0, "things overlap in some images"


def test_single_mode_has_one_large_object_with_label_and_box():
    for index in range(20):
        image, target = render_sample(index, mode="single", image_size=64)
        assert_consistent(image, target)
        assert len(target.labels) == 1
        assert target.label == int(target.labels[0])
        assert torch.equal(target.box, target.boxes[0])
        width, height = (target.box[2:] - target.box[:2]).tolist()
        assert min(width, height) >= 10, "the object is big enough to localize"


def test_rectangular_images_and_every_stuff_texture_varies():
    image, target = render_sample(0, image_size=(40, 72))
    assert image.shape == (3, 40, 72) and target.size == (40, 72)
    assert_consistent(image, target)
    for label in range(len(THING_CLASSES), len(ALL_CLASSES)):
        region = target.semantic == label
        if region.sum() > 20:
            assert image[:, region].std(dim=1).max() > 0.01, ALL_CLASSES[label]


def test_stars_rotate_and_rings_have_holes():
    def thing(name, angle):
        return Thing(THING_CLASSES.index(name), (20.0, 20.0), 12.0, angle, (0, 0, 0))

    ys, xs = np.mgrid[0:40, 0:40] + 0.5
    star = thing("star", 0.0).mask(xs, ys)
    assert not np.array_equal(star, thing("star", 0.3).mask(xs, ys))
    ring = thing("ring", 0.0).mask(xs, ys)
    assert not ring[20, 20] and ring[20, 20 + 10]
    assert thing("circle", 0.0).mask(xs, ys).sum() == pytest.approx(np.pi * 144, rel=0.05)


def test_dataset_attributes_length_and_bounds():
    dataset = ShapesDataset(split="val", mode="multi", num_images=3, image_size=32, seed=4)
    assert len(dataset) == 3
    assert dataset.class_names == list(THING_CLASSES)
    assert dataset.semantic_class_names == list(THING_CLASSES + STUFF_CLASSES)
    assert dataset.category_ids == [0, 1, 2, 3, 4]
    assert dataset.thing_flags == [True] * 5 + [False] * 4
    image, target = dataset[2]
    assert_same_sample((image, target), render_sample(2, image_size=32, seed=4, split="val"))
    assert target.image_id == 2
    with pytest.raises(IndexError):
        dataset[3]


@pytest.mark.parametrize(
    "options", [{"mode": "many"}, {"image_size": 8}, {"max_objects": 0}, {"num_images": -1}]
)
def test_bad_options_raise_config_error(options):
    with pytest.raises(ConfigError, match=next(iter(options))):
        ShapesDataset(**options)


def test_rendering_is_fast():
    def seconds_per_sample():
        started = time.perf_counter()
        for index in range(20):
            render_sample(index, mode="multi", image_size=64)
        return (time.perf_counter() - started) / 20

    assert min(seconds_per_sample() for _ in range(3)) < 0.01


def test_clip_frames_are_consistent_and_deterministic():
    clip = render_clip(1, num_frames=6, image_size=48, max_objects=3)
    assert len(clip) == 6
    for frame, (image, target) in enumerate(clip):
        assert_consistent(image, target)
        assert target.image_id == 6 + frame
        assert target.track_ids.tolist() == sorted(set(target.track_ids.tolist()))
    again = render_clip(1, num_frames=6, image_size=48, max_objects=3)
    for first, second in zip(clip, again):
        assert_same_sample(first, second)
        assert torch.equal(first[1].track_ids, second[1].track_ids)


def test_tracks_keep_their_class_and_color_across_frames():
    for index in range(6):
        tracks = {}
        for image, target in render_clip(index, num_frames=8, image_size=64):
            for track, label, mask in zip(target.track_ids, target.labels, target.masks):
                color = tuple(image[:, mask][:, 0].tolist())
                tracks.setdefault(int(track), set()).add((int(label), color))
        assert all(len(appearances) == 1 for appearances in tracks.values())


def test_things_move_smoothly_and_may_leave_the_picture():
    steps, left = [], 0
    for index in range(6):
        clip = render_clip(index, num_frames=40, image_size=64, max_objects=1)
        centers = [
            ((target.boxes[0, :2] + target.boxes[0, 2:]) / 2) if len(target.labels) else None
            for _, target in clip
        ]
        left += any(center is None for center in centers)
        for before, after in zip(centers, centers[1:]):
            if before is not None and after is not None:
                steps.append(float((after - before).norm()))
    assert max(steps) <= 0.1 * 64
    assert np.mean(steps) > 0.2, "things move"
    assert left > 0, "some thing leaves the picture"


def test_video_dataset_gives_one_clip_per_index():
    dataset = ShapesVideoDataset(split="val", num_clips=2, num_frames=3, image_size=32)
    assert len(dataset) == 2 and dataset.class_names == list(THING_CLASSES)
    clip = dataset[1]
    assert len(clip) == 3
    assert_same_sample(clip[0], render_clip(1, num_frames=3, image_size=32, split="val")[0])
    with pytest.raises(IndexError):
        dataset[2]
    with pytest.raises(ConfigError, match="num_frames"):
        render_clip(0, num_frames=0)
