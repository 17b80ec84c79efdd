"""Region proposal network: the shared head, proposal selection, training targets and losses.

Anchors and deltas of all levels are concatenated level by level; within a level they are
ordered by location (row-major) then anchor, the layout :class:`pansight.ops.anchors
.AnchorGenerator` produces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from pansight.ops.boxes import BalancedSampler, BoxCoder, Matcher

SMOOTH_L1_BETA = 1.0 / 9
MIN_PROPOSAL_SIDE = 1e-3
"""Proposals narrower or shorter than this many pixels are dropped."""


class RPNHead(nn.Module):
    """``conv_depth`` 3x3 conv + ReLU layers shared over levels, then a 1x1 objectness logit and
    1x1 box deltas per anchor.

    The first conv is ``conv``, any further ones are ``extra_convs`` (torchvision's v2 head has
    two), so one-conv heads keep the parameter names they always had.

    ``forward`` maps per-level features ``[(B, C, h_i, w_i)]`` to objectness ``(B, N)`` and
    deltas ``(B, N, 4)`` with ``N = sum_i h_i * w_i * A``.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(conv_depth - 1)
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, *self.extra_convs, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        objectness, deltas = [], []
        for level in features:
            hidden = F.relu(self.conv(level), inplace=True)
            for conv in self.extra_convs:
                hidden = F.relu(conv(hidden), inplace=True)
            logits, level_deltas = self.cls_logits(hidden), self.bbox_pred(hidden)
            batch, anchors, height, width = logits.shape
            objectness.append(logits.permute(0, 2, 3, 1).reshape(batch, -1))
            level_deltas = level_deltas.view(batch, anchors, 4, height, width)
            deltas.append(level_deltas.permute(0, 3, 4, 1, 2).reshape(batch, -1, 4))
        return torch.cat(objectness, dim=1), torch.cat(deltas, dim=1)


def select_proposals(
    boxes: Tensor,
    objectness: Tensor,
    level_sizes: list[int],
    image_sizes: list[tuple[int, int]],
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    score_thresh: float = 0.0,
) -> list[Tensor]:
    """The best decoded anchors of each image after NMS.

    Per level the ``pre_nms_top_n`` highest logits are kept; then per image boxes are clipped to
    the image, tiny boxes and scores (sigmoid) below ``score_thresh`` dropped, NMS runs per
    level, and the ``post_nms_top_n`` best survive.

    Args:
        boxes: ``(B, N, 4)`` decoded anchors in input-frame pixels.
        objectness: ``(B, N)`` logits.
        level_sizes: number of anchors of each level (they sum to ``N``).
        image_sizes: ``(h, w)`` of each image inside the padding.

    Returns:
        per image ``(P_i, 4)`` proposals, best first.
    """
    objectness = objectness.detach()
    chosen, levels = [], []
    for level, level_logits in enumerate(objectness.split(level_sizes, dim=1)):
        top = level_logits.topk(min(pre_nms_top_n, level_logits.shape[1]), dim=1).indices
        chosen.append(top + sum(level_sizes[:level]))
        levels.append(torch.full_like(top[0], level))
    chosen_index, level_of = torch.cat(chosen, dim=1), torch.cat(levels)
    proposals = []
    for image, size in enumerate(image_sizes):
        image_boxes = clip_boxes_to_image(boxes[image, chosen_index[image]], size)
        scores = objectness[image, chosen_index[image]].sigmoid()
        keep = remove_small_boxes(image_boxes, MIN_PROPOSAL_SIDE)
        keep = keep[scores[keep] >= score_thresh]
        kept = batched_nms(image_boxes[keep], scores[keep], level_of[keep], nms_thresh)
        proposals.append(image_boxes[keep][kept[:post_nms_top_n]])
    return proposals


def rpn_targets(
    anchors: Tensor,
    gt_boxes: list[Tensor],
    matcher: Matcher,
    sampler: BalancedSampler,
    coder: BoxCoder,
) -> tuple[Tensor, Tensor]:
    """Sampled anchor labels and regression targets of every image.

    Args:
        anchors: ``(N, 4)`` anchors (the same for every image of the padded batch).
        gt_boxes: per image ``(G_i, 4)`` ground-truth boxes to match (no crowd, no empty boxes).

    Returns:
        labels ``(B, N)`` float: 1 sampled positive, 0 sampled negative, -1 not sampled; and
        regression targets ``(B, N, 4)`` (meaningful at positives only).
    """
    all_labels, all_targets = [], []
    for boxes in gt_boxes:
        matches = matcher(box_iou(boxes, anchors))
        matched_boxes = boxes[matches.clamp(min=0)] if boxes.numel() else anchors
        labels = torch.where(matches >= 0, 1.0, torch.where(matches == -1, 0.0, -1.0))
        positive, negative = sampler(labels)
        labels = torch.full_like(labels, -1.0)
        labels[positive], labels[negative] = 1.0, 0.0
        all_labels.append(labels)
        all_targets.append(coder.encode(matched_boxes, anchors))
    return torch.stack(all_labels), torch.stack(all_targets)


def rpn_losses(
    objectness: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor
) -> dict[str, Tensor]:
    """``{"rpn_objectness", "rpn_box"}``: BCE over sampled anchors and smooth-L1 over sampled
    positives, both normalized by the number of sampled anchors.

    Args:
        objectness: ``(B, N)`` logits; deltas ``(B, N, 4)``; labels ``(B, N)`` as
            :func:`rpn_targets` gives; regression_targets ``(B, N, 4)``.
    """
    sampled = labels >= 0
    positive = labels > 0
    num_sampled = sampled.sum().clamp(min=1)
    objectness_loss = F.binary_cross_entropy_with_logits(
        objectness[sampled], labels[sampled], reduction="sum"
    )
    box_loss = F.smooth_l1_loss(
        deltas[positive], regression_targets[positive], beta=SMOOTH_L1_BETA, reduction="sum"
    )
    return {"rpn_objectness": objectness_loss / num_sampled, "rpn_box": box_loss / num_sampled}
