"""ONNX graphs of Faster/Mask R-CNN and Panoptic FPN: the whole detection pipeline, one image.

:func:`trace_rcnn_to_onnx` traces :class:`RCNNGraph`, which takes ``images`` ``(1, 3, H, W)``
and ``image_sizes`` ``(n, 2)`` int64 (the image's ``(h, w)`` first, then those of its batch),
runs every step of the eager ``forward`` in eval mode with sizes kept as tensors, and returns the
fields of :class:`~pansight.models.rcnn.model.RCNNOutputs` that ``postprocess`` reads. Mask
pasting and panoptic fusion stay in the eager ``postprocess``.

See docs/export.md for the inputs, steps, outputs and how the graph differs from the eager code.
"""

from __future__ import annotations

import warnings

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, remove_small_boxes, roi_align

from pansight.export.tracing import INPUT_NAME, trace_module
from pansight.models.panoptic.model import PanopticFPN
from pansight.models.rcnn import RCNN_OUTPUTS
from pansight.models.rcnn.model import BOX_ROI_SIZE, MASK_ROI_SIZE, ROI_LEVELS, MaskRCNN
from pansight.models.rcnn.roi_heads import MIN_DETECTION_SIDE
from pansight.models.rcnn.rpn import MIN_PROPOSAL_SIDE
from pansight.models.registry import ExportSpec
from pansight.ops.anchors import AnchorGenerator

IMAGE_SIZES_NAME = "image_sizes"
OUTPUT_AXES = {
    "detection_boxes": {0: "detections"},
    "detection_scores": {0: "detections"},
    "detection_labels": {0: "detections"},
    "mask_logits": {0: "detections"},
    "semantic_logits": {2: "height", 3: "width"},
}


class RCNNGraph(nn.Module):
    """A :class:`MaskRCNN` (or :class:`FasterRCNN`) or :class:`PanopticFPN` in eval mode as a
    function of one image and its size.

    ``forward(images, image_sizes)``: ``(1, 3, H, W)`` preprocessed image and ``(n, 2)`` int64
    ``(h, w)``, its own first, then those of its batch -> the ``spec.output_names`` tensors,
    in that order (docs/export.md).
    """

    def __init__(self, model: MaskRCNN | PanopticFPN, spec: ExportSpec) -> None:
        super().__init__()
        self.model = model
        self.rcnn: MaskRCNN = model.rcnn if isinstance(model, PanopticFPN) else model
        self.spec = spec

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        rcnn, size = self.rcnn, image_sizes[0]
        p_levels = rcnn.pyramid_levels(rcnn.body(self.normalized_inside(images, size)))
        proposals = self.proposals(p_levels, images, size)
        roi_levels = [p_levels[name] for name in ROI_LEVELS]
        exponents = level_scale_exponents(roi_levels, image_sizes[:, 0].max())
        box_features = self.roi_align(roi_levels, exponents, proposals, BOX_ROI_SIZE)
        class_logits, box_regression = rcnn.box_branch(box_features)
        boxes, scores, labels = self.detections(class_logits, box_regression, proposals, size)
        outputs = dict(zip(RCNN_OUTPUTS, (boxes, scores, labels)))
        if rcnn.config.with_masks:
            mask_features = self.roi_align(roi_levels, exponents, boxes, MASK_ROI_SIZE)
            outputs["mask_logits"] = rcnn.mask_predictor(rcnn.mask_head(mask_features))
        if isinstance(self.model, PanopticFPN):
            outputs["semantic_logits"] = self.model.semantic_head(p_levels)
        return tuple(outputs[name] for name in self.spec.output_names)

    def normalized_inside(self, images: Tensor, size: Tensor) -> Tensor:
        """Normalized ``(1, 3, H, W)`` pixels, zero outside the image's ``(h, w)`` (the
        eager ``backbone_levels``)."""
        normalized = self.rcnn.normalize(images)
        rows = torch.arange(images.shape[-2], device=images.device) < size[0]
        cols = torch.arange(images.shape[-1], device=images.device) < size[1]
        return torch.where(rows[:, None] & cols[None, :], normalized, 0.0)

    def proposals(self, p_levels: dict[str, Tensor], images: Tensor, size: Tensor) -> Tensor:
        """``(P, 4)`` RPN proposals, best first (the eager ``select_proposals``): per level
        the top ``pre_nms_top_n`` anchors, decoded and clipped; tiny boxes and low scores
        dropped; NMS per level; the ``post_nms_top_n`` best."""
        rcnn, config = self.rcnn, self.rcnn.config
        boxes, logits, levels = [], [], []
        for level, features in enumerate(p_levels.values()):
            objectness, deltas = rcnn.rpn_head([features])
            count = torch.clamp(
                torch._shape_as_tensor(objectness)[1], max=config.rpn_pre_nms_top_n_test
            )
            top = objectness.topk(count, dim=1).indices[0]
            anchors = level_anchors(rcnn.anchors, level, features, images)[top]
            boxes.append(rcnn.rpn_coder.decode(deltas[0, top], anchors).reshape(-1, 4))
            logits.append(objectness[0, top])
            levels.append(torch.full_like(top, level))
        boxes = clip_to_size(torch.cat(boxes), size)
        scores, level_of = torch.cat(logits).sigmoid(), torch.cat(levels)
        keep = remove_small_boxes(boxes, MIN_PROPOSAL_SIDE)
        keep = keep[scores[keep] >= config.rpn_score_thresh]
        kept = batched_nms(boxes[keep], scores[keep], level_of[keep], config.rpn_nms_thresh)
        return boxes[keep][kept[: config.rpn_post_nms_top_n_test]]

    def roi_align(
        self, levels: list[Tensor], exponents: Tensor, boxes: Tensor, output_size: int
    ) -> Tensor:
        """``(R, C, S, S)`` RoIAlign features of ``(R, 4)`` boxes, each from the level the FPN
        rule picks (torchvision's ``MultiScaleRoIAlign``).

        A level's scale ``2 ** e`` multiplies the boxes instead of being RoIAlign's constant
        ``spatial_scale``: the same numbers (a power of two scales exactly), but computed in
        the graph from the image's size.
        """
        pooler = self.rcnn.box_roi_align
        level_index = fpn_level_index(boxes, exponents, pooler)
        pooled = levels[0].new_zeros((boxes.shape[0], levels[0].shape[1], output_size, output_size))
        for index, features in enumerate(levels):
            chosen = torch.nonzero(level_index == index).flatten()
            scaled = boxes[chosen] * torch.pow(2.0, exponents[index])
            rois = torch.cat([torch.zeros_like(scaled[:, :1]), scaled], dim=1)
            level_pooled = roi_align(
                features, rois, output_size, 1.0, pooler.sampling_ratio, aligned=False
            )
            pooled = pooled.index_put((chosen,), level_pooled)
        return pooled

    def detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor, size: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes ``(D, 4)``, scores ``(D,)`` and labels ``(D,)`` in ``1..K`` (the eager
        ``select_detections``): per-class boxes above ``score_thresh``, not tiny, NMS per
        class, the ``detections_per_img`` best."""
        rcnn, config = self.rcnn, self.rcnn.config
        class_boxes = clip_to_size(rcnn.roi_coder.decode(box_regression, proposals), size)
        boxes = class_boxes[:, 1:].reshape(-1, 4)
        scores = F.softmax(class_logits, -1)[:, 1:].reshape(-1)
        keep = torch.nonzero(scores > config.score_thresh).flatten()
        keep = keep[remove_small_boxes(boxes[keep], MIN_DETECTION_SIDE)]
        labels = keep % rcnn.num_classes + 1
        kept = batched_nms(boxes[keep], scores[keep], labels, config.nms_thresh)
        kept = kept[: config.detections_per_img]
        return boxes[keep[kept]], scores[keep[kept]], labels[kept]


def level_anchors(
    generator: AnchorGenerator, level: int, features: Tensor, images: Tensor
) -> Tensor:
    """``(h * w * A, 4)`` anchors of pyramid level ``level`` (features ``(1, C, h, w)``) in
    padded-input pixels, as :class:`AnchorGenerator` lays them out, the stride being
    ``H // h`` by ``W // w`` of the padded input ``(1, 3, H, W)``."""
    feature_shape, image_shape = torch._shape_as_tensor(features), torch._shape_as_tensor(images)
    strides = (image_shape[-2:] // feature_shape[-2:]).to(torch.float32)
    shift_y = torch.arange(features.shape[-2], dtype=torch.float32) * strides[0]
    shift_x = torch.arange(features.shape[-1], dtype=torch.float32) * strides[1]
    grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + generator.cell_anchors(level)[None]).reshape(-1, 4)


def clip_to_size(boxes: Tensor, size: Tensor) -> Tensor:
    """``(..., 4)`` xyxy boxes clamped into ``[0, w] x [0, h]``; ``size`` is ``(2,)`` ``(h, w)``."""
    height, width = size.to(boxes.dtype).unbind()
    return torch.min(boxes.clamp(min=0), torch.stack([width, height, width, height]))


def level_scale_exponents(levels: list[Tensor], image_height: Tensor) -> Tensor:
    """``(L,)`` float exponents ``e`` of each level's scale ``2 ** e`` relative to the image:
    ``round(log2(level height / largest image height))``, torchvision's inference of the scales."""
    heights = torch.stack([torch._shape_as_tensor(level)[-2] for level in levels])
    return torch.round(torch.log2(heights.to(torch.float32) / image_height.to(torch.float32)))


def fpn_level_index(boxes: Tensor, exponents: Tensor, pooler: nn.Module) -> Tensor:
    """``(R,)`` int64 index into the levels of each ``(R, 4)`` box: ``floor(4 + log2(sqrt(area)
    / 224) + 1e-6)`` clamped to the levels there are (torchvision's ``LevelMapper``)."""
    lowest, highest = -exponents[0], -exponents[-1]
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    eps = torch.tensor(1e-6, dtype=side.dtype)
    target = torch.floor(pooler.canonical_level + torch.log2(side / pooler.canonical_scale) + eps)
    target = torch.min(torch.max(target, lowest), highest)
    return target.to(torch.int64) - lowest.to(torch.int64)


def trace_rcnn_to_onnx(
    model: MaskRCNN | PanopticFPN, spec: ExportSpec, images: Tensor
) -> onnx.ModelProto:
    """Trace :class:`RCNNGraph` on one preprocessed image ``(1, 3, H, W)`` (its size taken as
    the whole padded size) into an ONNX model with dynamic ``H``, ``W`` and detection counts."""
    image_sizes = torch.tensor([images.shape[-2:]], dtype=torch.int64, device=images.device)
    dynamic_axes = {INPUT_NAME: {2: "height", 3: "width"}, IMAGE_SIZES_NAME: {0: "sizes"}}
    dynamic_axes |= {name: OUTPUT_AXES[name] for name in spec.output_names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated")
        return trace_module(
            RCNNGraph(model, spec),
            (images, image_sizes),
            [INPUT_NAME, IMAGE_SIZES_NAME],
            list(spec.output_names),
            dynamic_axes,
        )
