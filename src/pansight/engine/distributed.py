"""Small helpers for data-parallel training under ``torchrun``.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in each one's environment. Outside ``torchrun`` every helper answers as if this
were the only process (rank 0 of 1), so single-process code needs no special cases.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """Whether the environment names this process's rank and the number of processes."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device_type: str) -> bool:
    """Join the process group ``torchrun`` describes; return whether this call created it.

    Uses the ``nccl`` backend for ``device_type == "cuda"`` (and makes ``cuda:LOCAL_RANK`` the
    current device), ``gloo`` otherwise. Does nothing outside ``torchrun`` or when a group
    already exists.
    """
    if not launched_by_torchrun() or is_distributed():
        return False
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """The index of this process's device on its machine."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0: the one process that logs and writes files.

    Also right before the process group starts or after it ends (``torchrun``'s ``RANK``).
    """
    return rank() == 0 and int(os.environ.get("RANK", 0)) == 0


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if there is one."""
    if is_distributed():
        dist.destroy_process_group()
