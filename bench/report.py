"""What every bench script prints: the processor header first, text tables of its figures, and
the final ``result: key=value ...`` line."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pansight import hardware


def set_threads_and_print_header(threads: int, *, onnxruntime: bool = False) -> None:
    """Give torch ``threads`` intra-op threads, then print the processor line
    (:func:`pansight.hardware.describe`, which reports them) that every bench result is read
    against; with ``onnxruntime``, append onnxruntime's version."""
    torch.set_num_threads(threads)
    line = hardware.describe()
    if onnxruntime:
        line += f" | onnxruntime {_onnxruntime_version()}"
    print(line, flush=True)


def _onnxruntime_version() -> str:
    try:
        import onnxruntime  # optional dependency: only scripts that time it ask for its version
    except ImportError:
        return "not installed"
    return onnxruntime.__version__


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages, e.g. ``"1.9, 2.0, 2.1"``."""
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


@dataclass(frozen=True)
class Column:
    """One column of a :class:`Table`.

    Attributes:
        title: the heading.
        width: characters the heading and every cell take.
        spec: format spec of a number in the column (``".0f"``); text cells print as they are.
        align: ``">"`` (right, the default) or ``"<"`` (left, for names).
    """

    title: str
    width: int
    spec: str = ""
    align: str = ">"

    def cell(self, value: object) -> str:
        spec = "" if isinstance(value, str) else self.spec
        return f"{value:{self.align}{self.width}{spec}}"


class Table:
    """A text table whose columns are one space apart."""

    def __init__(self, *columns: Column) -> None:
        self.columns = columns

    def header(self) -> str:
        return " ".join(column.cell(column.title) for column in self.columns)

    def row(self, *values: object) -> str:
        """One line of ``values``, one per column."""
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for {len(self.columns)} columns")
        return " ".join(column.cell(value) for column, value in zip(self.columns, values))


def print_result(fields: dict[str, object]) -> None:
    """Print the ``result: key=value ...`` line that ends a bench: floats with three decimals,
    other values (integers, booleans, text already formatted) as they are."""
    values = (f"{v:.3f}" if isinstance(v, float) else str(v) for v in fields.values())
    print("result: " + " ".join(f"{key}={value}" for key, value in zip(fields, values)))
