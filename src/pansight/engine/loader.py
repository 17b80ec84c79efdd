"""Batches of ``(image, target)`` samples in an order that is a function of (seed, epoch).

Every rank of a data-parallel run reads a disjoint share of each epoch (a
:class:`~torch.utils.data.DistributedSampler`); a single process is the one-rank case of the same
sampler, so the order never depends on anything but the seed, the epoch and the world size.
A loader can start part-way into an epoch (``skip_batches``) without loading the batches it
skips, which is how training resumes exactly in the middle of an epoch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from pansight.engine import distributed
from pansight.structures import Target


def collate(samples: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``.

    Images stay a list of ``(3, h, w)`` tensors of any sizes: the model's ``preprocess`` resizes
    and pads them into an :class:`~pansight.structures.ImageBatch`.
    """
    images = [image for image, _ in samples]
    targets = [target for _, target in samples]
    return images, targets


class SkipBatches(Sampler[list[int]]):
    """The batches of ``batch_sampler`` after its first ``skip`` (their indices are never used)."""

    def __init__(self, batch_sampler: BatchSampler, skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    workers: int = 0,
    drop_last: bool = False,
    skip_batches: int = 0,
) -> DataLoader:
    """A loader over one epoch of ``dataset`` yielding :func:`collate`'d batches.

    Args:
        dataset: returns ``(image, target)``; if it has ``set_epoch(epoch)`` (epoch-dependent
            augmentation), that is called first.
        batch_size: samples per batch on this process.
        shuffle: permute the samples (the permutation depends only on ``seed`` and ``epoch``).
        seed: seed of the permutation and of the worker processes' random generators.
        epoch: which epoch's order to use.
        workers: worker processes (0: load in this process).
        drop_last: drop the last incomplete batch (and, under ``torchrun``, the samples that do
            not divide evenly among the ranks instead of repeating some).
        skip_batches: start after this many batches of the epoch, without loading them.

    Under ``torchrun`` each rank reads its own disjoint share of the permutation.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = DistributedSampler(
        dataset,
        num_replicas=distributed.world_size(),
        rank=distributed.rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    sampler.set_epoch(epoch)
    batches = SkipBatches(BatchSampler(sampler, batch_size, drop_last), skip_batches)
    # A generator of our own: creating the loader's iterator then draws its worker seed from it,
    # not from the global random state (which an exact resume restores and must not disturb).
    generator = torch.Generator().manual_seed(seed + epoch)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=workers,
        generator=generator,
    )
