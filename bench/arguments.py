"""Command-line flags that the bench scripts share, with the same names, defaults and help."""

from __future__ import annotations

import argparse


def bench_parser(
    docstring: str, threads_help: str = "torch.set_num_threads"
) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring, with ``--threads``
    (default 2)."""
    parser = argparse.ArgumentParser(description=docstring.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help=threads_help)
    return parser


def add_timing_flags(
    parser: argparse.ArgumentParser,
    runs: int,
    warmup: int | None,
    unit: str = "calls per model",
    runs_flag: str = "--runs",
    runs_help: str | None = None,
) -> None:
    """``runs_flag`` (timed ``unit``, default ``runs``; ``runs_help`` where given) and, unless
    ``warmup`` is ``None``, ``--warmup`` (untimed ``unit`` first, default ``warmup``)."""
    parser.add_argument(runs_flag, type=int, default=runs, help=runs_help or f"timed {unit}")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed {unit} first")


def add_images_flag(parser: argparse.ArgumentParser) -> None:
    """``--images``: images per timed call, in one batch (default 1)."""
    parser.add_argument("--images", type=int, default=1, help="images per call (one batch)")


def add_seed_flag(parser: argparse.ArgumentParser) -> None:
    """``--seed`` of the random weights and inputs (default 0)."""
    parser.add_argument("--seed", type=int, default=0)
