"""YOLACT: real-time single-stage instance segmentation (Bolya et al., ICCV 2019).

:class:`Yolact` resizes every image to an ``input_size`` square, runs the ResNet body, FPN,
protonet (``k`` prototype masks) and shared prediction head (per anchor: class logits, box
deltas, ``k`` mask coefficients), then decodes the boxes, runs Fast NMS per class and assembles
the masks from prototypes and coefficients. :meth:`Yolact.predict_with_prototypes` also returns
each image's :class:`MaskComposition`. Defaults are those of the original ``yolact_base``.

See docs/models.md for the steps in detail and where the parts, losses and importer live.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pansight.errors import DataError
from pansight.models.backbones import ResNetBody
from pansight.models.base import PansightModel, check_class_names
from pansight.models.yolact.config import (
    LEVELS,
    YOLACT_PIXEL_MEAN,
    YOLACT_PIXEL_STD,
    YolactConfig,
    YolactOutputs,
)
from pansight.models.yolact.head import (
    PredictionHead,
    YolactFPN,
    assemble_masks,
    build_protonet,
    decode_boxes,
    init_head_weights,
    yolact_priors,
)
from pansight.models.yolact.loss import yolact_losses
from pansight.ops.masks import upsample_above
from pansight.ops.nms import per_class_nms
from pansight.structures import Detections, ImageBatch, Target


@dataclass
class MaskComposition:
    """How YOLACT composes one image's masks, one row per detection in the detections' order.

    A detection's mask is ``sigmoid(sum_j coefficients[d, j] * prototypes[j])``, zeroed outside
    its box (grown by one prototype pixel), upsampled bilinearly to the image and thresholded at
    ``mask_threshold`` (:meth:`Yolact.masks_in_image`).

    Attributes:
        prototypes: ``(k, Hp, Wp)`` prototype masks (after ReLU) of the square input frame.
        coefficients: ``(D, k)`` mask coefficients in ``[-1, 1]``.
        boxes: ``(D, 4)`` xyxy boxes relative to the input side (``0..1``), as decoded, before
            they are mapped to image pixels; the masks are cropped to them.
    """

    prototypes: Tensor
    coefficients: Tensor
    boxes: Tensor

    def mask_probabilities(self) -> Tensor:
        """``(D, Hp, Wp)`` mask probabilities at prototype resolution, cropped to the boxes."""
        return assemble_masks(self.prototypes.permute(1, 2, 0), self.coefficients, self.boxes)


class Yolact(PansightModel):
    """YOLACT on a ResNet body; docs/models.md describes the steps.

    ``forward`` ignores ``targets``: matching happens in :meth:`loss`.
    """

    task = "instance"

    def __init__(self, config: YolactConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        check_class_names(class_names)
        self.pixel_mean.copy_(torch.tensor(YOLACT_PIXEL_MEAN).view(1, 3, 1, 1))
        self.pixel_std.copy_(torch.tensor(YOLACT_PIXEL_STD).view(1, 3, 1, 1))
        channels = config.fpn_channels
        self.body = ResNetBody(config.backbone)
        self.fpn = YolactFPN(self.body.out_channels, channels)
        self.protonet = build_protonet(channels, config.proto_channels, config.num_prototypes)
        self.head = PredictionHead(
            channels, len(config.aspect_ratios), self.num_classes + 1, config.num_prototypes
        )
        self.semantic_seg_conv = nn.Conv2d(channels, self.num_classes, kernel_size=1)
        init_head_weights([self.fpn, self.protonet, self.head, self.semantic_seg_conv])

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Resize ``(3, h, w)`` images in ``[0, 1]`` to ``input_size`` squares (bilinear,
        ``align_corners=False``, no antialiasing, as the original); targets follow."""
        side = self.config.input_size
        for index, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise DataError(f"image {index} has shape {tuple(image.shape)}; expected (3, H, W)")
        resized = [
            F.interpolate(image[None].float(), (side, side), mode="bilinear", align_corners=False)
            for image in images
        ]
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch = ImageBatch(torch.cat(resized), [(side, side)] * len(images), original_sizes)
        if targets is None:
            return batch, None
        return batch, [target.resized((side, side)) for target in targets]

    def forward(self, batch: ImageBatch, targets: list[Target] | None = None) -> YolactOutputs:
        """``batch.tensor`` ``(B, 3, S, S)`` in ``[0, 1]`` -> :class:`YolactOutputs`."""
        c_levels = self.body(self.normalize(batch.tensor))
        p_levels = self.fpn(c_levels)
        prototypes = self.prototypes(p_levels["p3"])
        deltas, logits, coefficients = self.predict_per_anchor(p_levels)
        priors = self.priors(p_levels)
        semantic_logits = self.semantic_seg_conv(p_levels["p3"])
        return YolactOutputs(deltas, logits, coefficients, prototypes, priors, semantic_logits)

    def prototypes(self, p3: Tensor) -> Tensor:
        """``p3`` ``(B, C, H3, W3)`` -> prototypes ``(B, 2 H3, 2 W3, k)`` (ReLU)."""
        return F.relu(self.protonet(p3)).permute(0, 2, 3, 1)

    def predict_per_anchor(self, p_levels: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The shared head on ``p3..p7``, concatenated over levels: deltas ``(B, A, 4)``,
        logits ``(B, A, K + 1)``, coefficients ``(B, A, k)``."""
        per_level = [self.head(p_levels[level]) for level in LEVELS]
        deltas, logits, coefficients = (torch.cat(parts, dim=1) for parts in zip(*per_level))
        return deltas, logits, coefficients

    def priors(self, p_levels: dict[str, Tensor]) -> Tensor:
        """``(A, 4)`` relative center-size anchors for the levels' sizes."""
        sizes = [
            (int(p_levels[level].shape[-2]), int(p_levels[level].shape[-1])) for level in LEVELS
        ]
        config = self.config
        return yolact_priors(
            sizes,
            config.anchor_scales,
            config.aspect_ratios,
            config.input_size,
            config.square_anchors,
            self.device,
        )

    def loss(self, outputs: YolactOutputs, targets: list[Target]) -> dict[str, Tensor]:
        """``{"box", "cls", "mask", "semantic"}`` for input-frame ``targets`` (see
        :mod:`pansight.models.yolact.loss`)."""
        return yolact_losses(outputs, targets, self.config, self.num_classes)

    def postprocess(self, outputs: YolactOutputs, batch: ImageBatch) -> list[Detections]:
        """Detections in original-image pixels; labels ``0..K-1``; masks ``bool (N, H, W)``."""
        return [detections for detections, _ in self.postprocess_with_prototypes(outputs, batch)]

    def postprocess_with_prototypes(
        self, outputs: YolactOutputs, batch: ImageBatch
    ) -> list[tuple[Detections, MaskComposition]]:
        """:meth:`postprocess`, with each image's :class:`MaskComposition` beside its
        detections."""
        probabilities = outputs.class_logits.softmax(dim=-1)
        boxes = decode_boxes(outputs.box_deltas, outputs.priors)
        return [
            self.detect(
                boxes[index],
                probabilities[index],
                outputs.mask_coefficients[index],
                outputs.prototypes[index],
                batch.original_sizes[index],
            )
            for index in range(len(batch))
        ]

    @torch.no_grad()
    def predict_with_prototypes(
        self, images: list[Tensor]
    ) -> tuple[list[Detections], list[MaskComposition]]:
        """:meth:`predict`, plus how each image's masks are made: its prototypes and the
        coefficients and boxes of its detections (see :class:`MaskComposition`)."""
        was_training = self.training
        self.eval()
        try:
            batch, _ = self.preprocess([image.to(self.device) for image in images])
            per_image = self.postprocess_with_prototypes(self(batch), batch)
        finally:
            self.train(was_training)
        return [detections for detections, _ in per_image], [parts for _, parts in per_image]

    def detect(
        self,
        boxes: Tensor,
        probabilities: Tensor,
        coefficients: Tensor,
        prototypes: Tensor,
        image_size: tuple[int, int],
    ) -> tuple[Detections, MaskComposition]:
        """One image's detections from its relative boxes ``(A, 4)``, class probabilities
        ``(A, K + 1)``, coefficients ``(A, k)`` and prototypes ``(Hp, Wp, k)``, and the
        composition of their masks.

        Anchors whose best object probability exceeds ``score_thresh`` are the candidates; NMS
        runs per class on each class's ``top_k`` best candidates (their scores are not
        thresholded again).
        """
        config = self.config
        object_scores = probabilities[:, 1:]
        candidate = object_scores.max(dim=1).values > config.score_thresh
        boxes, coefficients = boxes[candidate], coefficients[candidate]
        kept, labels, scores = per_class_nms(
            config.nms,
            boxes,
            object_scores[candidate].t(),
            config.nms_thresh,
            config.top_k,
            config.detections_per_img,
        )
        composition = MaskComposition(prototypes.permute(2, 0, 1), coefficients[kept], boxes[kept])
        masks = self.masks_in_image(
            prototypes, composition.coefficients, composition.boxes, image_size
        )
        detections = Detections(
            self.boxes_in_image(composition.boxes, image_size), scores, labels, masks
        )
        return detections, composition

    def masks_in_image(
        self, prototypes: Tensor, coefficients: Tensor, boxes: Tensor, image_size: tuple[int, int]
    ) -> Tensor:
        """``(D, H, W)`` bool masks: assembled and cropped at prototype resolution, upsampled
        (bilinear) to the image and thresholded."""
        masks = assemble_masks(prototypes, coefficients, boxes)
        return upsample_above(masks, image_size, self.config.mask_threshold)

    def boxes_in_image(self, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Relative xyxy ``(D, 4)`` -> ordered, clipped image pixels (truncated to whole pixels
        with ``integer_boxes``)."""
        height, width = image_size
        scaled = boxes * torch.tensor([width, height, width, height], device=boxes.device)
        low = torch.minimum(scaled[:, :2], scaled[:, 2:]).clamp(min=0)
        limit = torch.tensor([width, height], device=boxes.device, dtype=scaled.dtype)
        high = torch.minimum(torch.maximum(scaled[:, :2], scaled[:, 2:]), limit)
        pixels = torch.cat([low, high], dim=1)
        return pixels.trunc() if self.config.integer_boxes else pixels
