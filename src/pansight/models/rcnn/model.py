"""Faster R-CNN and Mask R-CNN on a ResNet-FPN body.

:class:`MaskRCNN` (and :class:`FasterRCNN`, without the mask branch) runs one method per step,
from :meth:`~MaskRCNN.resize` and :meth:`~MaskRCNN.pad` to :meth:`~MaskRCNN.box_branch` and
:meth:`~MaskRCNN.mask_branch`. Matching, sampling and the losses are in
:mod:`pansight.models.rcnn.training`. Parameter names follow torchvision's detection models, so
:mod:`pansight.models.rcnn.torchvision_import` maps their checkpoints in by prefix.

See docs/models.md for the steps in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pansight.errors import ConfigError, DataError
from pansight.models.backbones import ResNetBody
from pansight.models.base import PansightModel, check_class_names
from pansight.models.fpn import FPN
from pansight.models.rcnn.config import SIZE_DIVISIBLE, RCNNConfig
from pansight.models.rcnn.outputs import RCNNOutputs
from pansight.models.rcnn.roi_heads import (
    BoxPredictor,
    MaskHead,
    MaskPredictor,
    build_box_head,
    select_detections,
)
from pansight.models.rcnn.rpn import RPNHead, select_proposals
from pansight.models.rcnn.training import (
    matching_targets,
    positive_rois_with_mask_targets,
    rcnn_losses,
    sample_training_examples,
)
from pansight.ops.anchors import AnchorGenerator
from pansight.ops.boxes import BoxCoder
from pansight.ops.masks import paste_masks_above
from pansight.ops.roi_align import TrainableMultiScaleRoIAlign
from pansight.structures import Detections, ImageBatch, Size, Target

ROI_LEVELS = ["p2", "p3", "p4", "p5"]
BOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
PASTE_CHUNK = 16
"""Detections whose masks are pasted together (bounds the float pixels held at once)."""


class MaskRCNN(PansightModel):
    """Mask R-CNN (and, with ``with_masks=False``, Faster R-CNN) on ResNet-FPN.

    ``forward(batch, targets)`` needs ``targets`` (input frame) in training mode: the RPN and
    RoI heads sample their training examples from them inside forward.
    """

    task = "instance"

    def __init__(self, config: RCNNConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        check_class_names(class_names)
        channels = config.fpn_channels
        classes_with_background = self.num_classes + 1
        self.body = ResNetBody(config.backbone)
        self.fpn = FPN(self.body.out_channels, channels, config.fpn_norm)
        self.anchors = AnchorGenerator(
            tuple((size,) for size in config.anchor_sizes), config.aspect_ratios
        )
        self.rpn_head = RPNHead(
            channels, self.anchors.num_anchors_per_location, config.rpn_conv_depth
        )
        self.box_roi_align = TrainableMultiScaleRoIAlign(ROI_LEVELS, BOX_ROI_SIZE, sampling_ratio=2)
        hidden = config.representation_size
        self.box_head = build_box_head(
            config.box_head, channels, BOX_ROI_SIZE, hidden, config.head_norm
        )
        self.box_predictor = BoxPredictor(hidden, classes_with_background)
        if config.with_masks:
            self.mask_roi_align = TrainableMultiScaleRoIAlign(
                ROI_LEVELS, MASK_ROI_SIZE, sampling_ratio=2
            )
            mask_channels = config.mask_head_channels or channels
            self.mask_head = MaskHead(channels, mask_channels, config.head_norm)
            self.mask_predictor = MaskPredictor(mask_channels, classes_with_background)
        self.rpn_coder = BoxCoder(RPN_BOX_WEIGHTS)
        self.roi_coder = BoxCoder(ROI_BOX_WEIGHTS)

    # -- steps 1-2: preprocessing -------------------------------------------------------------

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Resize (bilinear) and pad ``(3, h, w)`` images in ``[0, 1]``; targets follow."""
        for index, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise DataError(f"image {index} has shape {tuple(image.shape)}; expected (3, H, W)")
        resized = [self.resize(image.float()) for image in images]
        batch = self.pad(resized, [(int(im.shape[-2]), int(im.shape[-1])) for im in images])
        if targets is None:
            return batch, None
        return batch, [t.resized(size) for t, size in zip(targets, batch.image_sizes)]

    def resize(self, image: Tensor) -> Tensor:
        """``(3, h, w)`` -> ``(3, h', w')`` bilinear, computed as torchvision's detection
        transform does (scale factor with ``recompute_scale_factor``)."""
        height, width = image.shape[-2:]
        if self.config.preprocessing == "square":
            scale = self.config.square_size / max(height, width)
        else:
            scale = min(
                self.config.min_size / min(height, width), self.config.max_size / max(height, width)
            )
        return F.interpolate(
            image[None],
            scale_factor=scale,
            mode="bilinear",
            recompute_scale_factor=True,
            align_corners=False,
        )[0]

    def pad(self, images: list[Tensor], original_sizes: list[Size]) -> ImageBatch:
        """Zero-pad resized images to a multiple of 32, or to the fixed square."""
        if self.config.preprocessing == "square":
            side = self.config.square_size
            return ImageBatch.from_images(images, original_sizes, pad_to=(side, side))
        return ImageBatch.from_images(images, original_sizes, size_divisible=SIZE_DIVISIBLE)

    # -- steps 3-9: the network ----------------------------------------------------------------

    def forward(self, batch: ImageBatch, targets: list[Target] | None = None) -> RCNNOutputs:
        """``batch.tensor`` ``(B, 3, H, W)`` in ``[0, 1]`` -> :class:`RCNNOutputs`.

        ``targets`` (input frame) are required in training mode and ignored otherwise.
        """
        p_levels = self.pyramid_levels(self.backbone_levels(batch))
        return self.forward_heads(p_levels, batch, targets)

    def forward_heads(
        self, p_levels: dict[str, Tensor], batch: ImageBatch, targets: list[Target] | None = None
    ) -> RCNNOutputs:
        """Steps 5-9 (RPN to the box and mask branches) on the pyramid ``p2..p6`` of
        ``batch``: :meth:`forward` after the FPN, for models that also read the pyramid."""
        matching = None
        if self.training:
            matching = matching_targets(
                targets, self.num_classes, self.config.with_masks, self.device
            )
        objectness, deltas, anchors, level_sizes = self.rpn_per_level(p_levels, batch)
        proposal_boxes = self.decode_anchors(deltas, anchors)
        proposals = self.nms_proposals(proposal_boxes, objectness, level_sizes, batch)
        training, matched = None, None
        if matching is not None:
            proposals, training, matched = sample_training_examples(
                proposals, anchors, matching, self.config, self.rpn_coder, self.roi_coder
            )
        roi_levels = self.roi_levels(p_levels)
        box_features = self.roi_align_boxes(roi_levels, proposals, batch)
        class_logits, box_regression = self.box_branch(box_features)
        boxes, scores, labels = [], [], []
        if training is None:
            boxes, scores, labels = self.detections(class_logits, box_regression, proposals, batch)
        mask_logits = None
        if self.config.with_masks:
            if training is None:
                mask_logits = self.mask_branch(roi_levels, boxes, batch)
            else:
                rois, training.mask_targets = positive_rois_with_mask_targets(
                    proposals, training.roi_labels, matching, matched, 2 * MASK_ROI_SIZE
                )
                mask_logits = self.mask_branch(roi_levels, rois, batch)
        return RCNNOutputs(
            proposals=proposals,
            class_logits=class_logits,
            box_regression=box_regression,
            detection_boxes=boxes,
            detection_scores=scores,
            detection_labels=labels,
            mask_logits=mask_logits,
            rpn_objectness=objectness,
            rpn_deltas=deltas,
            training_targets=training,
        )

    def backbone_levels(self, batch: ImageBatch) -> dict[str, Tensor]:
        """Normalize pixels (padding stays 0 after normalizing) -> ResNet ``c2..c5``."""
        images = self.normalize(batch.tensor)
        for index, (height, width) in enumerate(batch.image_sizes):
            images[index, :, height:] = 0
            images[index, :, :, width:] = 0
        return self.body(images)

    def pyramid_levels(self, c_levels: dict[str, Tensor]) -> dict[str, Tensor]:
        """``c2..c5`` -> ``p2..p6`` (``fpn_channels`` each)."""
        return self.fpn(c_levels)

    def rpn_per_level(
        self, p_levels: dict[str, Tensor], batch: ImageBatch
    ) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """RPN head on every level: objectness ``(B, N)``, deltas ``(B, N, 4)``, the anchors
        ``(N, 4)`` in padded-input pixels and the number of anchors per level."""
        levels = list(p_levels.values())
        objectness, deltas = self.rpn_head(levels)
        feature_sizes = [(int(level.shape[-2]), int(level.shape[-1])) for level in levels]
        per_level = self.anchors(feature_sizes, tuple(batch.tensor.shape[-2:]), deltas.device)
        return objectness, deltas, torch.cat(per_level), [len(a) for a in per_level]

    def decode_anchors(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Deltas ``(B, N, 4)`` (weights 1, 1, 1, 1) on anchors ``(N, 4)`` -> ``(B, N, 4)``."""
        batch_size = deltas.shape[0]
        flat_anchors = anchors.repeat(batch_size, 1)
        boxes = self.rpn_coder.decode(deltas.detach().reshape(-1, 4), flat_anchors)
        return boxes.reshape(batch_size, -1, 4)

    def nms_proposals(
        self, boxes: Tensor, objectness: Tensor, level_sizes: list[int], batch: ImageBatch
    ) -> list[Tensor]:
        """Per image ``(P_i, 4)`` proposals: top-n per level, clip, NMS per level, top-n."""
        config = self.config
        pre = config.rpn_pre_nms_top_n_train if self.training else config.rpn_pre_nms_top_n_test
        post = config.rpn_post_nms_top_n_train if self.training else config.rpn_post_nms_top_n_test
        return select_proposals(
            boxes,
            objectness,
            level_sizes,
            batch.image_sizes,
            pre,
            post,
            config.rpn_nms_thresh,
            config.rpn_score_thresh,
        )

    def roi_levels(self, p_levels: dict[str, Tensor]) -> dict[str, Tensor]:
        """The levels RoIAlign reads (``p2..p5``) in the contiguous layout its kernel needs:
        converted once here, not in every RoIAlign call, when the model runs channels-last
        (:func:`pansight.models.fuse.optimize_for_inference`); otherwise unchanged."""
        return {name: p_levels[name].contiguous() for name in ROI_LEVELS}

    def roi_align_boxes(
        self, p_levels: dict[str, Tensor], rois: list[Tensor], batch: ImageBatch
    ) -> Tensor:
        """``(sum R_i, C, 7, 7)`` features of the RoIs from the level their size picks."""
        return self.box_roi_align(p_levels, rois, batch.image_sizes)

    def box_branch(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        """RoI features -> class logits ``(R, K + 1)`` and deltas ``(R, 4 * (K + 1))``."""
        return self.box_predictor(self.box_head(box_features))

    def mask_branch(
        self, p_levels: dict[str, Tensor], rois: list[Tensor], batch: ImageBatch
    ) -> Tensor:
        """Mask logits ``(sum R_i, K + 1, 28, 28)`` of per-image ``(R_i, 4)`` RoIs: the
        detections in eval mode, the positive sampled RoIs in training."""
        features = self.mask_roi_align(p_levels, rois, batch.image_sizes)
        return self.mask_predictor(self.mask_head(features))

    # -- training ------------------------------------------------------------------------------

    def loss(self, outputs: RCNNOutputs, targets: list[Target]) -> dict[str, Tensor]:
        """``{"rpn_objectness", "rpn_box", "cls", "box"}`` and ``"mask"`` with masks.

        ``outputs`` must come from a training-mode forward (which sampled the examples from
        ``targets``).
        """
        return rcnn_losses(outputs, self.config.with_masks)

    # -- results -------------------------------------------------------------------------------

    def detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        batch: ImageBatch,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image the selected ``(D_i, 4)`` boxes, ``(D_i,)`` scores and labels ``1..K``:
        per-class decoding, score threshold, NMS and the top ``detections_per_img``."""
        config = self.config
        return select_detections(
            class_logits,
            box_regression,
            proposals,
            batch.image_sizes,
            self.roi_coder,
            config.score_thresh,
            config.nms_thresh,
            config.detections_per_img,
        )

    def postprocess(self, outputs: RCNNOutputs, batch: ImageBatch) -> list[Detections]:
        """Detections in original-image pixels; labels ``0..K-1``; masks ``bool (N, H, W)``
        pasted from the 28x28 mask of each detection's class."""
        counts = [len(boxes) for boxes in outputs.detection_boxes]
        mask_logits = [None] * len(counts)
        if outputs.mask_logits is not None:
            mask_logits = outputs.mask_logits.split(counts)
        results = []
        for index, (boxes, scores, labels) in enumerate(
            zip(outputs.detection_boxes, outputs.detection_scores, outputs.detection_labels)
        ):
            (height, width), (orig_h, orig_w) = (
                batch.image_sizes[index],
                batch.original_sizes[index],
            )
            # float32 tensor divisions, as torchvision's transform does: a Python float ratio
            # rounds differently and moves boxes by up to one ulp
            ratio_w = torch.tensor(orig_w, dtype=torch.float32) / torch.tensor(
                width, dtype=torch.float32
            )
            ratio_h = torch.tensor(orig_h, dtype=torch.float32) / torch.tensor(
                height, dtype=torch.float32
            )
            boxes = boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device)
            masks = None
            if mask_logits[index] is not None:
                own = mask_logits[index][torch.arange(len(labels), device=labels.device), labels]
                masks = self._binary_masks(own.sigmoid(), boxes, (orig_h, orig_w))
            results.append(Detections(boxes, scores, labels - 1, masks))
        return results

    def _binary_masks(self, probabilities: Tensor, boxes: Tensor, image_size: Size) -> Tensor:
        """``bool (N, H, W)``: each ``(M, M)`` mask probability map pasted at its ``(N, 4)``
        box (original-image pixels) and thresholded, :data:`PASTE_CHUNK` detections at a time so
        that at most ``(PASTE_CHUNK, H, W)`` float pixels exist at once."""
        masks = torch.empty((len(boxes), *image_size), dtype=torch.bool, device=boxes.device)
        for start in range(0, len(boxes), PASTE_CHUNK):
            chunk = slice(start, start + PASTE_CHUNK)
            masks[chunk] = paste_masks_above(
                probabilities[chunk], boxes[chunk], image_size, self.config.mask_threshold
            )
        return masks


class FasterRCNN(MaskRCNN):
    """Faster R-CNN: :class:`MaskRCNN` without the mask branch (task ``detect``)."""

    task = "detect"

    def __init__(self, config: RCNNConfig, class_names: list[str]) -> None:
        if config.with_masks:
            raise ConfigError("FasterRCNN has no mask branch; set with_masks=false")
        super().__init__(config, class_names)
