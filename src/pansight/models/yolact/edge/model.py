"""YolactEdge: YOLACT on video with partial feature transfer (Liu et al., ICRA 2021).

:class:`YolactEdge` processes a video frame by frame with a :class:`StreamState`: a keyframe runs
YOLACT's full path and keeps its features (:class:`KeyframeFeatures`); a non-keyframe runs the
ResNet only up to ``c3`` and warps the keyframe's ``p4``/``p5`` by the estimated flow. Training
has three stages (``train_stage``): ``image``, ``flow`` and ``video`` (the last two through
:mod:`pansight.models.yolact.edge.training`).

See docs/models.md for both paths, the layout rules and what each training stage teaches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pansight.errors import ConfigError
from pansight.models.streaming import stream_detections
from pansight.models.yolact.edge.flow import (
    SPA,
    FlowEstimate,
    FlowNet,
    conv_leaky,
    init_flow_weights,
    transfer,
)
from pansight.models.yolact.head import merge_top_down
from pansight.models.yolact.model import Yolact, YolactConfig, YolactOutputs
from pansight.ops.histograms import color_histograms
from pansight.structures import Detections, ImageBatch

TRAIN_STAGES = ("image", "flow", "video")
FLOW_MODULES = ("flow_reduce", "flow_net", "spa")
"""The submodules the ``flow`` training stage trains."""


@dataclass(frozen=True)
class YolactEdgeConfig(YolactConfig):
    """Settings of :class:`YolactEdge`: YOLACT's (:class:`YolactConfig`, defaults of the original
    ``yolact_edge_vid``, ResNet-101) plus the video ones.

    Attributes:
        keyframe_interval: a keyframe every this many frames when the caller does not choose
            (``5``: one keyframe, then four transferred frames).
        with_flow: build the flow module; without it (the original's ``yolact_edge_youtubevis``
            layout, ``warp_mode="none"``) every frame is a keyframe.
        with_spa: refine the warped ``p4``/``p5`` with the ``c3`` lateral (needs ``with_flow``).
        flow_channels: ``E``: the ``c3`` laterals are reduced to ``E`` channels; the flow
            encoder has ``E``, ``2E`` and ``4E`` channels at strides 1, 2 and 4 of ``c3``.
        train_stage: what training teaches (docs/models.md): ``image``, ``flow`` or
            ``video``.
        scene_cut_threshold: a frame whose color histogram differs from the keyframe's by more
            than this (total variation distance, ``0..1``; see
            :func:`~pansight.ops.histograms.color_histograms`) is a new
            scene and becomes a keyframe (``0`` turns the check off). On the synthetic world's
            clips frames of one clip differ by at most 0.1 and frames of different clips by
            0.3 or more.
    """

    keyframe_interval: int = 5
    with_flow: bool = True
    with_spa: bool = True
    flow_channels: int = 64
    train_stage: str = "image"
    scene_cut_threshold: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keyframe_interval < 1:
            raise ConfigError(f"keyframe_interval={self.keyframe_interval} must be at least 1")
        if self.flow_channels < 1:
            raise ConfigError(f"flow_channels={self.flow_channels} must be at least 1")
        if self.with_spa and not self.with_flow:
            raise ConfigError("with_spa=true needs with_flow=true (SPA refines warped features)")
        if self.train_stage not in TRAIN_STAGES:
            raise ConfigError(
                f"train_stage={self.train_stage!r} is unknown; choose one of "
                + ", ".join(TRAIN_STAGES)
            )
        if self.train_stage != "image" and not self.with_flow:
            raise ConfigError(f"train_stage={self.train_stage!r} needs with_flow=true")


@dataclass(frozen=True)
class KeyframeFeatures:
    """What a keyframe leaves for the frames after it (all detached, input frame).

    Attributes:
        c3_lateral: ``(B, C, H/8, W/8)`` lateral 1x1 conv of ``c3``.
        p4: ``(B, C, H/16, W/16)`` FPN phase-1 ``p4`` (top-down sum before its 3x3 conv).
        p5: ``(B, C, H/32, W/32)`` FPN phase-1 ``p5``.
        histograms: ``(B, HISTOGRAM_BINS ** 3)`` color histograms of the keyframes
            (:func:`~pansight.ops.histograms.color_histograms`).
        reduced_c3: ``flow_reduce(c3_lateral)`` ``(B, E, H/8, W/8)`` once a non-keyframe has
            computed it (inference only), else ``None``.
    """

    c3_lateral: Tensor
    p4: Tensor
    p5: Tensor
    histograms: Tensor
    reduced_c3: Tensor | None = None


@dataclass(frozen=True)
class StreamState:
    """Where a video stream stands after a frame (see :meth:`YolactEdge.forward_frame`).

    Attributes:
        keyframe: features of the last keyframe.
        frame_sizes: original ``(h, w)`` of each image of the last keyframe's batch.
        frame_index: index of the last processed frame in the stream (0 for the first).
        frames_since_keyframe: transferred frames since the last keyframe (0 if the last
            frame was a keyframe).
    """

    keyframe: KeyframeFeatures
    frame_sizes: tuple[tuple[int, int], ...]
    frame_index: int
    frames_since_keyframe: int

    @property
    def last_was_keyframe(self) -> bool:
        return self.frames_since_keyframe == 0


class YolactEdge(Yolact):
    """YOLACT with keyframe / non-keyframe paths (docs/models.md).

    ``forward``, ``loss``, ``postprocess`` and ``predict`` are YOLACT's: every image is a
    keyframe. Video goes through :meth:`forward_frame` / :meth:`predict_video_frame` with a
    :class:`StreamState`.
    """

    def __init__(self, config: YolactEdgeConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        channels = config.fpn_channels
        if config.with_flow:
            self.flow_reduce = conv_leaky(channels, config.flow_channels)
            self.flow_net = FlowNet(config.flow_channels, config.flow_channels, channels)
            init_flow_weights(self.flow_reduce, self.flow_net)
        if config.with_spa:
            self.spa = SPA(channels)
            init_flow_weights(self.spa)
        self.freeze_for_stage()

    # -- training stages -------------------------------------------------------------------

    def freeze_for_stage(self) -> None:
        """Stop gradients to what ``train_stage`` keeps fixed: everything but the flow module
        and SPA for ``flow``, the ResNet for ``video``."""
        stage = self.config.train_stage
        if stage == "flow":
            for name, child in self.named_children():
                child.requires_grad_(name in FLOW_MODULES)
        elif stage == "video":
            self.body.requires_grad_(False)

    def train(self, mode: bool = True) -> YolactEdge:
        """As ``nn.Module.train``, but the ResNet's batch norms keep their statistics outside
        the ``image`` stage."""
        super().train(mode)
        if self.config.train_stage != "image":
            self.body.eval()
        return self

    # -- video -----------------------------------------------------------------------------

    def forward_frame(
        self, batch: ImageBatch, state: StreamState | None = None, keyframe: bool | None = None
    ) -> tuple[YolactOutputs, StreamState]:
        """One video frame per image of ``batch`` -> its outputs and the state after it.

        ``keyframe`` chooses the path; ``None`` takes a keyframe every ``keyframe_interval``
        frames. A keyframe is forced (whatever ``keyframe`` says) when there is no state yet,
        when the batch's original sizes differ from the keyframe's, or without the flow module.
        """
        sizes = tuple((int(height), int(width)) for height, width in batch.original_sizes)
        next_index = 0 if state is None else state.frame_index + 1
        if state is None or self.is_keyframe(state, sizes, keyframe, batch):
            top_down, features = self.keyframe_top_down(batch)
            state = StreamState(features, sizes, next_index, 0)
        else:
            state = self.with_reduced_keyframe(state)
            top_down, _ = self.transferred_top_down(batch, state.keyframe)
            state = replace(
                state, frame_index=next_index, frames_since_keyframe=state.frames_since_keyframe + 1
            )
        return self.outputs_from_levels(self.fpn.smooth(top_down)), state

    def is_keyframe(
        self,
        state: StreamState,
        frame_sizes: tuple[tuple[int, int], ...],
        requested: bool | None,
        batch: ImageBatch,
    ) -> bool:
        """Whether ``batch``, the frame after ``state`` (with these original sizes), runs the
        full path: always without the flow module, after a change of frame size and at a scene
        cut (:meth:`is_scene_cut`); otherwise as ``requested``, or every
        ``keyframe_interval`` frames."""
        if not self.config.with_flow or state.frame_sizes != frame_sizes:
            return True
        if self.is_scene_cut(state.keyframe, batch):
            return True
        if requested is not None:
            return requested
        return state.frames_since_keyframe + 1 >= self.config.keyframe_interval

    def is_scene_cut(self, keyframe: KeyframeFeatures, batch: ImageBatch) -> bool:
        """Whether the color histogram of any image of ``batch`` is farther than
        ``scene_cut_threshold`` (total variation distance) from its keyframe's."""
        threshold = self.config.scene_cut_threshold
        if threshold <= 0:
            return False
        distance = 0.5 * (color_histograms(batch.tensor) - keyframe.histograms).abs().sum(dim=1)
        return bool((distance > threshold).any())

    def keyframe_top_down(self, batch: ImageBatch) -> tuple[dict[str, Tensor], KeyframeFeatures]:
        """Full backbone and FPN phase 1: ``{"p3", "p4", "p5"}`` and what the state keeps."""
        top_down, c3_lateral = self.fpn.top_down(self.body(self.normalize(batch.tensor)))
        features = KeyframeFeatures(
            c3_lateral.detach(),
            top_down["p4"].detach(),
            top_down["p5"].detach(),
            color_histograms(batch.tensor),
        )
        return top_down, features

    def transferred_top_down(
        self, batch: ImageBatch, keyframe: KeyframeFeatures, finest_flow: bool = False
    ) -> tuple[dict[str, Tensor], dict[str, FlowEstimate]]:
        """The non-keyframe FPN phase 1 ``{"p3", "p4", "p5"}`` from the backbone up to ``c3``
        and the keyframe's features, and the flow estimates it used.

        The ``c3`` lateral is detached (as the original): the transfer trains only the flow
        module and SPA.
        """
        if not self.config.with_flow:
            raise ConfigError("this YolactEdge has no flow module (with_flow=false)")
        c3_lateral = self.fpn.lateral("c3", self.c3_features(batch)).detach()
        reduced_keyframe = keyframe.reduced_c3
        if reduced_keyframe is None:
            reduced_keyframe = self.flow_reduce(keyframe.c3_lateral)
        flows = self.flow_net(self.flow_reduce(c3_lateral), reduced_keyframe, finest_flow)
        p4 = transfer(keyframe.p4, flows["p4"])
        p5 = transfer(keyframe.p5, flows["p5"])
        p3 = merge_top_down(p4, c3_lateral)
        if self.config.with_spa:
            p4, p5 = self.spa(c3_lateral, p4, p5)
        return {"p3": p3, "p4": p4, "p5": p5}, flows

    def with_reduced_keyframe(self, state: StreamState) -> StreamState:
        """``state`` whose keyframe keeps its reduced ``c3`` lateral, so that the frames after
        it reduce only their own (without gradients only: training reduces both every time)."""
        if state.keyframe.reduced_c3 is not None or torch.is_grad_enabled():
            return state
        reduced = self.flow_reduce(state.keyframe.c3_lateral)
        return replace(state, keyframe=replace(state.keyframe, reduced_c3=reduced))

    def c3_features(self, batch: ImageBatch) -> Tensor:
        """The ResNet up to ``c3``: ``(B, C3, H/8, W/8)``."""
        body = self.body
        stem = body.maxpool(body.relu(body.bn1(body.conv1(self.normalize(batch.tensor)))))
        return body.layer2(body.layer1(stem))

    def outputs_from_levels(self, p_levels: dict[str, Tensor]) -> YolactOutputs:
        """Protonet, head, priors and semantic map on ``p3..p7`` (YOLACT's steps)."""
        prototypes = self.prototypes(p_levels["p3"])
        deltas, logits, coefficients = self.predict_per_anchor(p_levels)
        semantic_logits = self.semantic_seg_conv(p_levels["p3"])
        priors = self.priors(p_levels)
        return YolactOutputs(deltas, logits, coefficients, prototypes, priors, semantic_logits)

    @torch.no_grad()
    def predict_video_frame(
        self, image: Tensor, state: StreamState | None = None, keyframe: bool | None = None
    ) -> tuple[Detections, StreamState]:
        """Detections for one ``(3, h, w)`` frame in ``[0, 1]`` and the state after it (see
        :meth:`forward_frame` for ``keyframe``)."""
        was_training = self.training
        self.eval()
        try:
            batch, _ = self.preprocess([image.to(self.device)])
            outputs, state = self.forward_frame(batch, state, keyframe)
            (detections,) = self.postprocess(outputs, batch)
        finally:
            self.train(was_training)
        return detections, state

    def predict_video(self, frames: Iterable[Tensor]) -> list[Detections]:
        """Detections of each ``(3, h, w)`` frame, keyframes every ``keyframe_interval``."""
        return list(stream_detections(self, frames))
