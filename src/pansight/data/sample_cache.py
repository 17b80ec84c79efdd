"""Rendered samples kept in memory, compactly, so that a sample is drawn once per process.

The synthetic world renders every sample from ``(seed, split, index)`` alone, which costs
more than a training step's share of it (about 5 ms for a 64 px image, 15 ms for a 128 px
scene on one core). Runs that see an image more than once — several epochs, or several models
trained in one process on the same scenes, as ``pansight demo`` does — take it from here
instead. Images are kept as uint8 and label maps as uint8 (the world has fewer than 256 classes
and segments per image), about a fifth of their working size, and come back exactly: an image
in ``[0, 1]`` made from uint8 values returns to the same floats, and label maps whose values
fit in uint8 are kept so.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import replace

import torch
from torch import Tensor

from pansight.structures import Target

DEFAULT_MAX_BYTES = 512 * 2**20


class SampleCache:
    """Least-recently-used ``(image, target)`` pairs up to ``max_bytes`` of packed tensors.

    Args:
        max_bytes: the most memory the packed samples may hold; the least recently used go
            first. A sample larger than this is not kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[Tensor, Target, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, key: Hashable, render: Callable[[], tuple[Tensor, Target]]
    ) -> tuple[Tensor, Target]:
        """The sample called ``key``: unpacked from memory, or ``render()``-ed and kept.

        ``render`` must return an image in ``[0, 1]`` made of uint8 values (``k / 255``), as
        the synthetic world's are."""
        if key in self._entries:
            self._entries.move_to_end(key)
            image, target, _ = self._entries[key]
            return unpack(image, target)
        image, target = render()
        packed_image, packed_target = pack(image, target)
        size = packed_bytes(packed_image, packed_target)
        if size <= self.max_bytes:
            self._entries[key] = (packed_image, packed_target, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
        return image, target


def pack(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """``image`` as uint8, the target's semantic and panoptic maps as uint8 where they fit."""
    packed = {}
    if target.semantic is not None:
        packed["semantic"] = _narrowed(target.semantic)
    if target.panoptic is not None:
        packed["panoptic"] = replace(target.panoptic, ids=_narrowed(target.panoptic.ids))
    return image.mul(255).round_().to(torch.uint8), replace(target, **packed)


def _narrowed(labels: Tensor) -> Tensor:
    """``labels`` as uint8 when every value fits, else unchanged."""
    fits = labels.numel() == 0 or (labels.min() >= 0 and labels.max() <= 255)
    return labels.to(torch.uint8) if fits else labels


def unpack(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """The inverse of :func:`pack`, as new tensors (callers may change them freely)."""
    unpacked: dict[str, object] = {
        name: value.clone() for name, value in vars(target).items() if isinstance(value, Tensor)
    }
    if target.semantic is not None:
        unpacked["semantic"] = target.semantic.long()
    if target.panoptic is not None:
        segments = list(target.panoptic.segments)
        unpacked["panoptic"] = replace(
            target.panoptic, ids=target.panoptic.ids.long(), segments=segments
        )
    return image.float().div_(255), replace(target, **unpacked)


def packed_bytes(image: Tensor, target: Target) -> int:
    tensors = [image, *(value for value in vars(target).values() if isinstance(value, Tensor))]
    if target.panoptic is not None:
        tensors.append(target.panoptic.ids)
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)
