import pytest
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from pansight.data.transforms import (
    SeededAugment,
    apply_transform,
    eval_transform,
    longest_edge_size,
    resize_to,
    shortest_edge_size,
    train_augment,
)
from pansight.errors import ConfigError
from pansight.structures import IGNORE_LABEL, PanopticMap, Segment, Target


def two_object_sample(height=20, width=20):
    """Object 0 fills rows/cols 1..4 (box [1, 1, 5, 5]); object 1 rows/cols 12..17."""
    image = torch.rand(3, height, width)
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 1:5, 1:5] = True
    masks[1, 12:18, 12:18] = True
    semantic = torch.zeros(height, width, dtype=torch.int64)
    semantic[masks[0]], semantic[masks[1]] = 1, 2
    ids = torch.full((height, width), 7)
    ids[masks[0]], ids[masks[1]] = 3, 5_000_001
    segments = [Segment(7, 5, False, 0), Segment(3, 1, True, 16), Segment(5_000_001, 2, True, 36)]
    target = Target(
        image_id=4,
        size=(height, width),
        label=1,
        box=torch.tensor([1.0, 1.0, 5.0, 5.0]),
        boxes=torch.tensor([[1.0, 1.0, 5.0, 5.0], [12.0, 12.0, 18.0, 18.0]]),
        labels=torch.tensor([1, 2]),
        masks=masks,
        iscrowd=torch.tensor([False, True]),
        track_ids=torch.tensor([10, 11]),
        semantic=semantic,
        panoptic=PanopticMap(ids, segments),
    )
    return image, target


def test_horizontal_flip_moves_box_and_mask_together():
    image, target = two_object_sample(height=10, width=20)
    target.boxes = torch.tensor([[2.0, 3.0, 6.0, 7.0]])
    target.labels, target.iscrowd, target.track_ids = torch.tensor([0]), None, None
    target.masks = torch.zeros(1, 10, 20, dtype=torch.bool)
    target.masks[0, 3:7, 2:6] = True
    flipped_image, flipped = apply_transform(v2.RandomHorizontalFlip(p=1.0), image, target)
    assert torch.equal(flipped_image, image.flip(-1))
    # x -> width - x, so [2, 6] becomes [14, 18]; y is unchanged.
    assert flipped.boxes.tolist() == [[14.0, 3.0, 18.0, 7.0]]
    assert flipped.box.tolist() == [15.0, 1.0, 19.0, 5.0]
    expected_mask = torch.zeros(1, 10, 20, dtype=torch.bool)
    expected_mask[0, 3:7, 14:18] = True
    assert torch.equal(flipped.masks, expected_mask)
    assert torch.equal(flipped.semantic, target.semantic.flip(-1))
    assert torch.equal(flipped.panoptic.ids, target.panoptic.ids.flip(-1))
    assert flipped.size == (10, 20) and flipped.label == 1 and flipped.image_id == 4


def test_crop_that_removes_an_object_drops_it_from_every_instance_field():
    image, target = two_object_sample()
    # The center 10x10 crop keeps rows/cols 5..14: object 0 is gone, object 1 is cut.
    cropped_image, cropped = apply_transform(v2.CenterCrop(10), image, target)
    assert cropped_image.shape == (3, 10, 10) and cropped.size == (10, 10)
    assert torch.equal(cropped_image, image[:, 5:15, 5:15])
    assert cropped.boxes.tolist() == [[7.0, 7.0, 10.0, 10.0]]
    assert cropped.labels.tolist() == [2]
    assert cropped.iscrowd.tolist() == [True]
    assert cropped.track_ids.tolist() == [11]
    assert torch.equal(cropped.masks, target.masks[1:, 5:15, 5:15])
    assert torch.equal(cropped.semantic, target.semantic[5:15, 5:15])
    # The single localization box is clamped to nothing but kept.
    assert cropped.box.tolist() == [0.0, 0.0, 0.0, 0.0]
    segments = {s.id: s.area for s in cropped.panoptic.segments}
    assert segments == {7: 91, 5_000_001: 9}


@pytest.mark.parametrize("fill", [0, 7, 255])
def test_padding_is_ignore_in_semantic_void_in_panoptic_and_off_in_masks(fill):
    image, target = two_object_sample()
    padded_image, padded = apply_transform(v2.Pad(2, fill=fill), image, target)
    assert padded_image.shape == (3, 24, 24) and padded.size == (24, 24)
    border = torch.ones(24, 24, dtype=torch.bool)
    border[2:22, 2:22] = False
    assert (padded.semantic[border] == IGNORE_LABEL).all()
    assert torch.equal(padded.semantic[2:22, 2:22], target.semantic)
    assert (padded.panoptic.ids[border] == 0).all()
    assert torch.equal(padded.panoptic.ids[2:22, 2:22], target.panoptic.ids)
    assert not padded.masks[:, border].any()
    assert padded.boxes.tolist() == [[3.0, 3.0, 7.0, 7.0], [14.0, 14.0, 20.0, 20.0]]
    assert [s.area for s in padded.panoptic.segments] == [348, 16, 36]


def test_train_augment_keeps_targets_consistent():
    image, target = two_object_sample()
    torch.manual_seed(0)
    new_image, new_target = apply_transform(train_augment("instance", image_size=32), image, target)
    h, w = new_target.size
    assert new_image.shape == (3, h, w) and 25 <= min(h, w) <= 40
    assert new_target.masks.shape == (2, h, w) and new_target.semantic.shape == (h, w)
    for box, mask in zip(new_target.boxes, new_target.masks):
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert abs(cols.min() - box[0]) <= 1 and abs(cols.max() + 1 - box[2]) <= 1
        assert abs(rows.min() - box[1]) <= 1 and abs(rows.max() + 1 - box[3]) <= 1


def test_train_augment_classify_sizes_and_unknown_task():
    image = torch.rand(3, 20, 24)
    target = Target(image_id=0, size=(20, 24), label=3)
    torch.manual_seed(0)
    kept, kept_target = apply_transform(train_augment("classify"), image, target)
    assert kept.shape == (3, 20, 24) and kept_target.label == 3
    cropped, cropped_target = apply_transform(train_augment("classify", 16), image, target)
    assert cropped.shape == (3, 16, 16) and cropped_target.size == (16, 16)
    no_flip = train_augment("classify", horizontal_flip=False)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in no_flip.transforms)
    assert eval_transform("classify") is None
    with pytest.raises(ConfigError, match="segment"):
        train_augment("segment")


def test_resize_helpers():
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)
    assert shortest_edge_size(64, 64, 32, 1000) == (32, 32)
    assert longest_edge_size(50, 100, 64) == (32, 64)
    assert longest_edge_size(300, 30, 100) == (100, 10)
    flat = torch.full((3, 40, 60), 0.25)
    resized = resize_to(flat, (20, 30))
    assert resized.shape == (3, 20, 30) and torch.allclose(resized, torch.full_like(resized, 0.25))
    batch = resize_to(torch.rand(2, 3, 8, 8), (16, 4))
    assert batch.shape == (2, 3, 16, 4)


class NoiseImages(Dataset):
    class_names = ["a", "b"]
    semantic_class_names = None
    category_ids = [0, 1]
    thing_flags = None

    def __len__(self):
        return 4

    def __getitem__(self, index):
        image = torch.linspace(0, 1, 3 * 16 * 16).view(3, 16, 16) * (index + 1) / 4
        box = torch.tensor([2.0, 3.0, 9.0, 12.0])
        return image, Target(image_id=index, size=(16, 16), label=index % 2, box=box)


def test_seeded_augment_is_a_function_of_seed_epoch_and_index():
    transform = train_augment("localize")
    first, second = (
        SeededAugment(NoiseImages(), transform, 5),
        SeededAugment(NoiseImages(), transform, 5),
    )
    assert first.class_names == ["a", "b"] and first.category_ids == [0, 1] and len(first) == 4
    assert first.semantic_class_names is None and first.thing_flags is None
    first.set_epoch(3)
    second.set_epoch(3)
    rng_before = torch.get_rng_state()
    image_a, target_a = first[2]
    assert torch.equal(torch.get_rng_state(), rng_before)
    second[1]  # other samples drawn in between do not matter
    image_b, target_b = second[2]
    assert torch.equal(image_a, image_b) and torch.equal(target_a.box, target_b.box)
    epochs = []
    for epoch in range(4):
        second.set_epoch(epoch)
        epochs.append(second[2][0])
    assert not all(torch.equal(epochs[0], other) for other in epochs[1:])
