"""The loader: order fixed by (seed, epoch), skipping without loading, collation."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pansight.engine.loader import build_loader, collate
from pansight.structures import Target


class Numbered(Dataset):
    """Sample ``i`` is a 1x1 image of value ``i``; records what was read and the epoch set."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read: list[int] = []
        self.epoch: int | None = None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        self.read.append(index)
        return torch.full((3, 1, 1), float(index)), Target(image_id=index, size=(1, 1))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def batches(dataset: Dataset, **options) -> list[list[int]]:
    """The image ids of each batch, in order."""
    loader = build_loader(dataset, 4, **options)
    return [[target.image_id for target in targets] for _, targets in loader]


def test_collate_keeps_images_as_a_list() -> None:
    samples = [(torch.zeros(3, 2, 5), Target(0, (2, 5))), (torch.ones(3, 4, 3), Target(1, (4, 3)))]
    images, targets = collate(samples)
    assert [image.shape for image in images] == [(3, 2, 5), (3, 4, 3)]
    assert [target.image_id for target in targets] == [0, 1]


def test_order_is_a_function_of_seed_and_epoch() -> None:
    first = batches(Numbered(10), shuffle=True, seed=1, epoch=2)
    assert batches(Numbered(10), shuffle=True, seed=1, epoch=2) == first
    assert sorted(sum(first, [])) == list(range(10))  # every sample once
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert batches(Numbered(10), shuffle=True, seed=1, epoch=3) != first
    assert batches(Numbered(10), shuffle=True, seed=2, epoch=2) != first


def test_order_does_not_depend_on_global_random_state() -> None:
    torch.manual_seed(0)
    first = batches(Numbered(10), shuffle=True, seed=1)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    assert batches(Numbered(10), shuffle=True, seed=1) == first
    assert torch.equal(torch.get_rng_state(), state)  # and does not draw from it


def test_no_shuffle_is_sequential_and_drop_last_drops_the_tail() -> None:
    assert batches(Numbered(10), shuffle=False, seed=0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches(Numbered(10), shuffle=False, seed=0, drop_last=True) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]


def test_skip_batches_gives_the_tail_without_loading_the_head() -> None:
    full = batches(Numbered(10), shuffle=True, seed=5, epoch=1)
    dataset = Numbered(10)
    loader = build_loader(dataset, 4, shuffle=True, seed=5, epoch=1, skip_batches=2)
    assert len(loader) == 1
    tail = [[target.image_id for target in targets] for _, targets in loader]
    assert tail == full[2:]
    assert dataset.read == full[2]


def test_dataset_epoch_is_set() -> None:
    dataset = Numbered(4)
    build_loader(dataset, 2, shuffle=True, seed=0, epoch=6)
    assert dataset.epoch == 6


def test_worker_processes_give_the_same_batches() -> None:
    in_process = batches(Numbered(12), shuffle=True, seed=3, epoch=1)
    assert batches(Numbered(12), shuffle=True, seed=3, epoch=1, workers=2) == in_process
