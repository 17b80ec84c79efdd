"""Original-checkpoint layouts for import tests: ``key<TAB>shape`` files and random weights of
exactly those keys and shapes."""

from pathlib import Path

import torch


def reference_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` from a ``key<TAB>shape`` file (``64x3x7x7``; empty for a scalar)."""
    keys = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, shape = line.partition("\t")
        keys[key] = tuple(int(side) for side in shape.split("x")) if shape.strip() else ()
    return keys


def random_state_dict(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of exactly those keys and shapes (positive running variances, integer
    batch counters)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            state_dict[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state_dict[key] = 0.5 + torch.rand(shape, generator=generator)
        else:
            state_dict[key] = 0.02 * torch.randn(shape, generator=generator)
    return state_dict
