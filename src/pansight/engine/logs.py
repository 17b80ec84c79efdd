"""Where training reports to: a JSON-lines file, TensorBoard, and a progress bar.

``<out>/metrics.jsonl`` gets one JSON object per logged step (``{"iter": 20, "epoch": 0,
"lr": 0.05, "loss": 1.2, ...}``); ``<out>/tb/`` gets the same numbers as TensorBoard scalars,
tagged ``<group>/<name>`` (``train/loss``, ``eval/top1``). A disabled log (every rank but 0)
writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm


class MetricsLog:
    """Appends scalars to ``<out>/metrics.jsonl`` and ``<out>/tb/``.

    Args:
        out: the run folder.
        enabled: write anything at all (``False`` on every rank but 0).
    """

    def __init__(self, out: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self.writer = None
        if enabled:
            # tensorboard is a heavy dependency, imported only when a run logs
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out) / "tb"))

    def write(self, group: str, iteration: int, epoch: int, values: dict[str, float]) -> None:
        """Record ``values`` (name -> number) reached after ``iteration`` iterations.

        The JSON line holds ``iter``, ``epoch`` and the values, named as given for ``train``
        and ``<group>/<name>`` for any other group.
        """
        if not self.enabled:
            return
        named = {k if group == "train" else f"{group}/{k}": v for k, v in values.items()}
        with self.path.open("a") as stream:
            stream.write(json.dumps({"iter": iteration, "epoch": epoch, **named}) + "\n")
        for name, value in values.items():
            self.writer.add_scalar(f"{group}/{name}", value, iteration)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, done: int, enabled: bool = True, label: str = "") -> tqdm:
    """An iteration counter from ``done`` to ``total`` on standard error (if enabled), titled
    ``train`` and ``label`` (the run's precision)."""
    title = f"train {label}".strip()
    return tqdm(
        total=total, initial=done, unit="it", desc=title, mininterval=1.0, disable=not enabled
    )
