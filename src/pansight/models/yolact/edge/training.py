"""YolactEdge's ``flow`` and ``video`` training stages: batches of frame pairs (each frame
beside an earlier keyframe of its clip) instead of single images.

The trainer runs a model's training view (:func:`training_view`): the model itself for the
``image`` stage, else a wrapper with its own ``preprocess``, ``forward`` and ``loss`` around the
YolactEdge, whose weights it trains and saves. The model's own ``forward`` stays YOLACT's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pansight.errors import DataError
from pansight.models.yolact.config import YolactOutputs
from pansight.models.yolact.edge.flow import FlowEstimate
from pansight.models.yolact.edge.model import YolactEdge
from pansight.structures import ImageBatch, Target


@dataclass
class FramePairBatch:
    """Training pairs of video frames: each frame beside an earlier keyframe of its clip.

    Attributes:
        keyframes: the keyframes, preprocessed.
        frames: the later frames (the ones the targets describe), preprocessed.
    """

    keyframes: ImageBatch
    frames: ImageBatch

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class FeatureTransfer:
    """A frame's FPN phase-1 features computed two ways, for a feature-distance loss.

    Attributes:
        reference: ``{"p3", "p4", "p5"}`` by the full path on the frame (no gradient).
        transferred: ``{"p3", "p4", "p5"}`` by the non-keyframe path from the keyframe
            (gradients reach the flow module and SPA).
        flows: :class:`FlowEstimate` at ``"p5"``, ``"p4"`` and ``"p3"`` resolution.

    ``model.fpn.smooth(...)`` turns either into ``p3..p7`` (the original's "P" loss location,
    phase 1 being its "L").
    """

    reference: dict[str, Tensor]
    transferred: dict[str, Tensor]
    flows: dict[str, FlowEstimate]


def feature_distance(transfer: FeatureTransfer) -> Tensor:
    """The flow stage's loss: mean squared difference between the transferred and the fully
    computed phase-1 features, summed over ``p3``, ``p4`` and ``p5``."""
    return sum(
        F.mse_loss(transfer.transferred[level].float(), transfer.reference[level].float())
        for level in ("p3", "p4", "p5")
    )


def transfer_features(
    model: YolactEdge, keyframe_batch: ImageBatch, frame_batch: ImageBatch
) -> FeatureTransfer:
    """``frame_batch``'s phase-1 features by the full path and transferred from
    ``keyframe_batch`` (same batch size), for training the flow module."""
    with torch.no_grad():
        _, keyframe = model.keyframe_top_down(keyframe_batch)
        reference, _ = model.keyframe_top_down(frame_batch)
    transferred, flows = model.transferred_top_down(frame_batch, keyframe, finest_flow=True)
    return FeatureTransfer(reference, transferred, flows)


class FramePairStage(nn.Module):
    """A training stage on frame pairs around ``model`` (its submodule ``model``).

    ``preprocess`` takes ``(2, 3, h, w)`` pairs (keyframe, frame; the targets describe the
    frame) and gives a :class:`FramePairBatch`.
    """

    def __init__(self, model: YolactEdge) -> None:
        super().__init__()
        self.model = model

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[FramePairBatch, list[Target] | None]:
        for index, pair in enumerate(images):
            if pair.dim() != 4 or pair.shape[0] != 2:
                raise DataError(
                    f"sample {index} has shape {tuple(pair.shape)}; a batch of frame pairs "
                    "needs (2, 3, H, W) for every sample"
                )
        keyframes, _ = self.model.preprocess([pair[0] for pair in images])
        frames, targets = self.model.preprocess([pair[1] for pair in images], targets)
        return FramePairBatch(keyframes, frames), targets


class FlowStage(FramePairStage):
    """``flow``: the frame's features transferred from the keyframe against those computed
    fully on the frame (:func:`feature_distance`); only the flow module and SPA learn."""

    def forward(
        self, pairs: FramePairBatch, targets: list[Target] | None = None
    ) -> FeatureTransfer:
        return transfer_features(self.model, pairs.keyframes, pairs.frames)

    def loss(self, outputs: FeatureTransfer, targets: list[Target]) -> dict[str, Tensor]:
        return {"feature": feature_distance(outputs)}


class VideoStage(FramePairStage):
    """``video``: YOLACT's losses on the frames' outputs from features transferred from their
    keyframes (no gradient reaches the keyframe path)."""

    def forward(self, pairs: FramePairBatch, targets: list[Target] | None = None) -> YolactOutputs:
        with torch.no_grad():
            _, keyframe = self.model.keyframe_top_down(pairs.keyframes)
        top_down, _ = self.model.transferred_top_down(pairs.frames, keyframe)
        return self.model.outputs_from_levels(self.model.fpn.smooth(top_down))

    def loss(self, outputs: YolactOutputs, targets: list[Target]) -> dict[str, Tensor]:
        return self.model.loss(outputs, targets)


def training_view(model: YolactEdge) -> nn.Module:
    """What the trainer runs per step for ``model``'s ``train_stage``."""
    stages = {"flow": FlowStage, "video": VideoStage}
    stage = stages.get(model.config.train_stage)
    return model if stage is None else stage(model)
