"""The render cache gives back exactly what was rendered, as fresh tensors, and keeps to its
memory bound by dropping the least recently used samples."""

import dataclasses

import torch

from pansight.data.sample_cache import SampleCache, pack, packed_bytes
from pansight.data.shapes import RENDERED, ShapesDataset, render_sample


def assert_same_sample(found, expected):
    (image, target), (expected_image, expected_target) = found, expected
    assert torch.equal(image, expected_image) and image.dtype == expected_image.dtype
    for field in dataclasses.fields(target):
        value, reference = getattr(target, field.name), getattr(expected_target, field.name)
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, reference) and value.dtype == reference.dtype, field.name
        elif field.name == "panoptic":
            assert torch.equal(value.ids, reference.ids) and value.ids.dtype == torch.int64
            assert value.segments == reference.segments
        else:
            assert value == reference, field.name


def test_cached_samples_equal_fresh_renders_and_can_be_changed_freely():
    cache = SampleCache()
    render = lambda: render_sample(3, mode="multi", image_size=48)  # noqa: E731
    first = cache.get("a", render)
    assert len(cache) == 1
    again = cache.get("a", lambda: (_ for _ in ()).throw(AssertionError("rendered twice")))
    assert_same_sample(again, render())
    again[0].zero_()
    again[1].masks.zero_()
    again[1].panoptic.segments.clear()
    assert_same_sample(cache.get("a", render), first)


def test_label_maps_that_do_not_fit_in_a_byte_stay_wide():
    image, target = render_sample(0, mode="multi", image_size=32)
    wide = dataclasses.replace(target, semantic=target.semantic + 300)
    _, packed = pack(image, wide)
    assert packed.semantic.dtype == torch.int64
    cache = SampleCache()
    assert_same_sample(cache.get("w", lambda: (image, wide)), (image, wide))
    assert_same_sample(cache.get("w", lambda: (image, wide)), (image, wide))


def test_the_least_recently_used_samples_go_first():
    samples = {key: render_sample(key, mode="single", image_size=32) for key in range(3)}
    one = packed_bytes(*pack(*samples[0]))
    cache = SampleCache(max_bytes=2 * one + one // 2)
    for key in (0, 1, 0, 2):
        cache.get(key, lambda key=key: samples[key])
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    cache.get(0, lambda: (_ for _ in ()).throw(AssertionError("0 was used last but one")))
    assert SampleCache(max_bytes=10).get(0, lambda: samples[0]) is not None


def test_data_sets_of_one_world_share_their_renders():
    before = len(RENDERED)
    first = ShapesDataset(split="val", mode="multi", num_images=2, image_size=40, seed=91)
    second = ShapesDataset(split="val", mode="multi", num_images=2, image_size=40, seed=91)
    assert_same_sample(
        first[1], render_sample(1, mode="multi", image_size=40, seed=91, split="val")
    )
    assert len(RENDERED) == before + 1
    assert_same_sample(second[1], first[1])
    assert len(RENDERED) == before + 1
