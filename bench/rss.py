"""Peak resident memory of one call, read from Linux's ``/proc/self/status``, and measured in a
fresh subprocess of the bench script itself, which loads only the model it measures.

A script that measures memory this way takes the hidden flags of :func:`add_child_flags`; when
``--memory-of`` is given it is the child: it loads ``--state``, builds the one call and prints
:func:`call_peak_bytes` of it (:func:`print_call_peak`).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

MIB = 2**20


def call_peak_bytes(call: Callable[[], object]) -> tuple[int, int]:
    """``(peak resident-memory increase during call(), whole-process peak)`` in bytes.

    The process's high-water mark is reset first (``clear_refs`` 5), so the increase is the
    call's own peak over what the process held before it.
    """
    gc.collect()
    before = proc_status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    call()
    peak = proc_status_bytes("VmHWM")
    return peak - before, peak


def proc_status_bytes(field: str, process: int | str = "self") -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/<process>/status`` in bytes; ``process``
    is a process id, or ``"self"`` for this process."""
    status = Path(f"/proc/{process}/status")
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{status} has no {field}")


def add_child_flags(parser: argparse.ArgumentParser, choices: Iterable[str]) -> None:
    """The hidden flags of the child process: ``--memory-of`` (the model or backend it
    measures, one of ``choices``) and ``--state`` (the file holding what it loads)."""
    parser.add_argument("--memory-of", choices=list(choices), help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)


def print_call_peak(call: Callable[[], object]) -> None:
    """The child's last line: :func:`call_peak_bytes` of ``call``, two integers."""
    print(*call_peak_bytes(call))


def forwarded_flags(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """The flags ``names`` (attribute names, ``score_thresh``) of ``args`` as a command line
    (``--score-thresh 0.0``), a list value as several words."""
    words = []
    for name in names:
        value = getattr(args, name)
        values = value if isinstance(value, list | tuple) else [value]
        words += [f"--{name.replace('_', '-')}", *map(str, values)]
    return words


def peak_memory_in_child(
    script: str, which: str, state_file: Path, flags: list[str]
) -> tuple[int, int]:
    """``(peak increase during the call, whole-process peak)`` in bytes of ``which``, measured
    by ``script --memory-of which --state state_file flags`` in a fresh Python."""
    command = [sys.executable, script, "--memory-of", which, "--state", str(state_file), *flags]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    increase, total = completed.stdout.split()[-2:]
    return int(increase), int(total)


def peak_memory_in_children(
    script: str, names: Iterable[str], state: dict, flags: list[str]
) -> dict[str, tuple[int, int]]:
    """:func:`peak_memory_in_child` of each of ``names``, every child loading ``state`` (saved
    with ``torch.save`` to a temporary file)."""
    with tempfile.TemporaryDirectory() as folder:
        state_file = Path(folder) / "state.pt"
        torch.save(state, state_file)
        return {name: peak_memory_in_child(script, name, state_file, flags) for name in names}
