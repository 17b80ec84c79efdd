"""Which precision a training run computes in: ``amp`` resolved for this device and processor.

Mixed precision must never cost speed. :func:`resolve_precision` gives float16 autocast with loss
scaling on CUDA; on a CPU, ``amp=auto`` (the default) picks bfloat16 only where the processor
runs it natively (:mod:`pansight.hardware`) and float32 elsewhere, while ``amp=true`` forces
autocast and warns where it will be slow. With bfloat16 on a CPU the model and its batches also
take the channels-last memory format.

See docs/training.md for the measured costs and gains behind these choices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from pansight import hardware


@dataclass(frozen=True)
class Precision:
    """The precision of a run.

    Attributes:
        autocast_dtype: the autocast dtype, or ``None`` for float32 throughout.
        loss_scaling: scale the loss (float16 on CUDA, whose gradients would underflow).
        reason: why, in a few words (for ``config.yaml`` and the progress bar).
        channels_last: train the model and its batches in the channels-last memory format.
    """

    autocast_dtype: torch.dtype | None
    loss_scaling: bool
    reason: str
    channels_last: bool = False

    @property
    def name(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``."""
        return str(self.autocast_dtype or torch.float32).removeprefix("torch.")


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """The :class:`Precision` that ``amp`` (``auto``, ``true`` or ``false``) gives on ``device``.

    ``amp=true`` on a CPU without native bfloat16 warns (once per call site) that it will be
    slow, and keeps it: the user asked for it.
    """
    if amp == "false":
        return Precision(None, False, "amp=false")
    if device.type == "cuda":
        return Precision(torch.float16, True, f"amp={amp} on CUDA")
    if hardware.native_bf16():
        reason = f"amp={amp}: this CPU runs bfloat16 natively"
        return Precision(torch.bfloat16, False, reason, channels_last=True)
    if amp == "auto":
        return Precision(None, False, "amp=auto: this CPU has no native bfloat16")
    warnings.warn(
        "amp=true on a CPU without native bfloat16 (no AVX512-BF16 or AMX): oneDNN emulates "
        "bfloat16, which is many times slower than float32; amp=auto chooses for you",
        stacklevel=2,
    )
    return Precision(torch.bfloat16, False, "amp=true: bfloat16 emulated on this CPU")
