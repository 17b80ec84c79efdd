"""YOLACT: anchors, box coding, mask assembly and post-processing against loops that state the
original's rules plainly; training on synthetic multi-object images; the zoo and API wiring."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

import pansight
from pansight.data.shapes import THING_CLASSES, ShapesDataset
from pansight.errors import ConfigError
from pansight.models import zoo
from pansight.models.yolact.head import (
    YolactFPN,
    assemble_masks,
    crop_to_boxes,
    decode_boxes,
    encode_boxes,
    yolact_priors,
)
from pansight.models.yolact.loss import ImageTargets, _class_loss, match_priors
from pansight.models.yolact.model import Yolact, YolactConfig, YolactOutputs
from pansight.structures import Target

TINY = {"input_size": "96", "fpn_channels": "32", "proto_channels": "32"}


def build(seed: int = 0, **overrides: str) -> Yolact:
    torch.manual_seed(seed)
    return zoo.build_model("yolact_r18", list(THING_CLASSES), TINY | overrides)


def synthetic_batch(count: int, size: int = 96, empty_last: bool = False, seed: int = 3):
    data = ShapesDataset(mode="multi", num_images=count, image_size=size, seed=seed)
    images, targets = zip(*(data[index] for index in range(count)))
    targets = list(targets)
    if empty_last:
        targets[-1] = Target(
            image_id=99, size=(size, size), masks=torch.zeros(0, size, size).bool()
        )
    return list(images), targets


# -- anchors and boxes ---------------------------------------------------------------------------


def loop_priors(sizes, scales, ratios, input_size, square):
    """The original's anchor rule, written out: rows, columns, ratios."""
    priors = []
    for (height, width), scale in zip(sizes, scales):
        for row in range(height):
            for col in range(width):
                for ratio in ratios:
                    w = scale * math.sqrt(ratio) / input_size
                    h = w if square else scale / math.sqrt(ratio) / input_size
                    priors.append([(col + 0.5) / width, (row + 0.5) / height, w, h])
    return torch.tensor(priors)


@pytest.mark.parametrize("square", [True, False])
def test_priors_follow_the_original_rule(square):
    sizes = [(5, 4), (3, 2), (2, 1), (1, 1), (1, 1)]
    scales = (24, 48, 96, 192, 384)
    priors = yolact_priors(sizes, scales, (1, 0.5, 2), 550, square)
    expected = loop_priors(sizes, scales, (1, 0.5, 2), 550, square)
    torch.testing.assert_close(priors, expected)


def test_decode_is_center_size_with_variances_and_encode_inverts_it():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    deltas = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
    # center (0.5 + 1 * 0.1 * 0.2, 0.5 - 2 * 0.1 * 0.4) = (0.52, 0.42); size (0.2 e^0.1, 0.4)
    width = 0.2 * math.exp(0.1)
    expected = torch.tensor([[0.52 - width / 2, 0.22, 0.52 + width / 2, 0.62]])
    torch.testing.assert_close(decode_boxes(deltas, priors), expected)
    torch.testing.assert_close(encode_boxes(expected, priors), deltas)


# -- masks -----------------------------------------------------------------------------------------


def test_crop_keeps_the_box_grown_by_one_pixel():
    masks = torch.ones(1, 10, 10)
    # x from 0.25 * 10 - 1 = 1.5 to 0.5 * 10 + 1 = 6 (columns 2..5), y from 0 to 3 (rows 0..2)
    cropped = crop_to_boxes(masks, torch.tensor([[0.5, 0.2, 0.25, 0.05]]))
    expected = torch.zeros(10, 10)
    expected[0:3, 2:6] = 1
    torch.testing.assert_close(cropped[0], expected)


def test_assemble_masks_is_the_cropped_sigmoid_of_the_linear_combination():
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.rand(8, 8, 4, generator=generator)
    coefficients = torch.rand(3, 4, generator=generator) * 2 - 1
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.6], [0.6, 0.6, 0.9, 0.7]])
    masks = assemble_masks(prototypes, coefficients, boxes)
    for index in range(3):
        full = torch.sigmoid((prototypes * coefficients[index]).sum(dim=-1))
        torch.testing.assert_close(masks[index], crop_to_boxes(full[None], boxes[[index]])[0])


# -- post-processing -------------------------------------------------------------------------------


def loop_detections(outputs: YolactOutputs, image_size, config: YolactConfig):
    """The original's detection rules, one candidate and one class at a time."""
    probabilities = outputs.class_logits[0].softmax(-1)
    boxes = decode_boxes(outputs.box_deltas[0], outputs.priors)
    candidates = [a for a in range(len(boxes)) if probabilities[a, 1:].max() > config.score_thresh]
    found = []
    for label in range(probabilities.shape[1] - 1):
        order = sorted(candidates, key=lambda a: -probabilities[a, label + 1].item())[
            : config.top_k
        ]
        for rank, anchor in enumerate(order):
            previous = boxes[order[:rank]]
            ious = [_iou(boxes[anchor], other) for other in previous]
            if all(iou <= config.nms_thresh for iou in ious):
                found.append((probabilities[anchor, label + 1].item(), anchor, label))
    found.sort(key=lambda item: -item[0])
    found = found[: config.detections_per_img]
    height, width = image_size
    results = []
    for score, anchor, label in found:
        x0, y0, x1, y1 = boxes[anchor].tolist()
        pixels = [
            math.trunc(max(min(x0, x1) * width, 0)),
            math.trunc(max(min(y0, y1) * height, 0)),
            math.trunc(min(max(x0, x1) * width, width)),
            math.trunc(min(max(y0, y1) * height, height)),
        ]
        mask = torch.sigmoid(outputs.prototypes[0] @ outputs.mask_coefficients[0, anchor])
        mask = crop_to_boxes(mask[None], boxes[[anchor]])
        mask = F.interpolate(mask[None], image_size, mode="bilinear", align_corners=False)[0, 0]
        results.append((score, label, pixels, mask > 0.5))
    return results


def _iou(box, other):
    inter_w = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    inter_h = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1])
    return (inter / (area - inter)).item()


def test_postprocess_matches_the_original_rules_written_as_loops():
    model = build(seed=1, detections_per_img="15", top_k="12").eval()
    image = torch.rand(3, 70, 50, generator=torch.Generator().manual_seed(2))
    batch, _ = model.preprocess([image])
    with torch.no_grad():
        outputs = model(batch)
        # distinct, moderately confident scores (no ties for the sorts to order differently)
        generator = torch.Generator().manual_seed(3)
        outputs.class_logits = 2 * torch.randn(outputs.class_logits.shape, generator=generator)
        (result,) = model.postprocess(outputs, batch)
        expected = loop_detections(outputs, (70, 50), model.config)
    assert len(result) == len(expected) > 0
    for index, (score, label, pixels, mask) in enumerate(expected):
        assert result.scores[index].item() == pytest.approx(score, abs=1e-6)
        assert int(result.labels[index]) == label
        assert result.boxes[index].tolist() == pixels
        assert torch.equal(result.masks[index], mask)


def test_sizes_at_550_pixels_are_the_originals():
    model = build(input_size="550").eval()
    batch, _ = model.preprocess([torch.rand(3, 40, 60)])
    with torch.no_grad():
        outputs = model(batch)
    assert outputs.prototypes.shape == (1, 138, 138, 32)
    assert outputs.semantic_logits.shape == (1, len(THING_CLASSES), 69, 69)
    assert outputs.priors.shape == (3 * (69**2 + 35**2 + 18**2 + 9**2 + 5**2), 4)


def test_standard_nms_option_keeps_at_least_as_many_detections():
    fast, standard = build(), build(nms="standard")
    images, _ = synthetic_batch(1)
    assert len(standard.predict(images)[0]) >= len(fast.predict(images)[0])


def test_bad_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="nms='greedy'"):
        YolactConfig(nms="greedy")
    with pytest.raises(ConfigError, match="anchor_scales"):
        YolactConfig(anchor_scales=(1, 2))


# -- training ----------------------------------------------------------------------------------


def test_matching_forces_one_prior_per_object_and_marks_neutrals_and_crowds():
    priors = torch.tensor(
        [
            [0.25, 0.25, 0.5, 0.5],
            [0.44, 0.25, 0.5, 0.5],
            [0.75, 0.75, 0.2, 0.2],
            [0.8, 0.2, 0.2, 0.2],
        ]
    )
    truth = ImageTargets(
        boxes=torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.55, 0.55, 1.0, 1.0]]),
        labels=torch.tensor([2, 0]),
        masks=torch.zeros(2, 4, 4, dtype=torch.bool),
        crowd_boxes=torch.tensor([[0.7, 0.1, 0.9, 0.3]]),
    )
    labels, matched = match_priors(truth, priors, YolactConfig())
    # prior 0 is object 0 exactly; prior 1 has IoU 0.45 with it (neutral); prior 2 (IoU 0.2
    # with object 1) is object 1's best prior and is forced positive; prior 3 lies in the crowd
    assert labels.tolist() == [3, -1, 1, -1]
    assert matched[:3].tolist() == [0, 0, 1]


def test_hard_negative_mining_takes_three_negatives_per_positive():
    logits = torch.zeros(1, 8, 2)
    logits[0, :, 1] = torch.tensor([0.0, 5.0, 4.0, 3.0, 2.0, 1.0, 9.0, -1.0])
    labels = torch.tensor([[1, 0, 0, 0, 0, 0, -1, 0]])
    loss = _class_loss(logits, labels, YolactConfig())
    # positive: anchor 0; negatives: the 3 background anchors most confident of an object
    # (1, 2, 3); anchor 6 is neutral
    expected = F.cross_entropy(logits[0, [0, 1, 2, 3]], torch.tensor([1, 0, 0, 0]), reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_train_step_gives_finite_losses_and_gradients_with_an_empty_image():
    model = build().train()
    images, targets = synthetic_batch(3, empty_last=True)
    batch, input_targets = model.preprocess(images, targets)
    losses = model.loss(model(batch), input_targets)
    assert set(losses) == {"box", "cls", "mask", "semantic"}
    assert all(loss.dim() == 0 and torch.isfinite(loss) and loss > 0 for loss in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    for module in (
        model.body.conv1,
        model.protonet[10],
        model.head.mask_layer,
        model.fpn.lat_layers[2],
    ):
        assert module.weight.grad.abs().sum() > 0


def test_batch_of_only_empty_images_trains_without_nan():
    model = build().train()
    images, targets = synthetic_batch(2)
    empty = [
        replace(
            t,
            boxes=torch.zeros(0, 4),
            labels=torch.zeros(0, dtype=torch.int64),
            masks=None,
            iscrowd=None,
        )
        for t in targets
    ]
    batch, input_targets = model.preprocess(images, empty)
    losses = model.loss(model(batch), input_targets)
    assert losses["box"] == 0 and losses["mask"] == 0 and losses["semantic"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.training
def test_overfits_a_tiny_batch(seed):
    """Losses fall and the training-mode outputs find every object (label, box and mask)."""
    model = build(seed=seed).train()
    images, targets = synthetic_batch(2, seed=3 + seed)
    batch, input_targets = model.preprocess(images, targets)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # a tenth of the rate for the last 20 steps, so the result does not hang on where the last
    # large step happened to land
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[80], gamma=0.1)
    first = None
    for _ in range(100):
        total = sum(model.loss(model(batch), input_targets).values())
        first = first if first is not None else total.item()
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # as YOLACT's recipe clips
        optimizer.step()
        scheduler.step()
    assert total.item() < 0.3 * first
    with torch.no_grad():
        outputs = model(batch)
        results = model.postprocess(outputs, batch)
    # boxes are decoded and masks assembled at prototype resolution: an object under 4x4
    # prototype pixels loses up to a cell at an edge, a large share of its area, so it is held
    # to lower bounds (box IoU 0.5, mask IoU 0.4) than the others (0.7, 0.6)
    stride = model.config.input_size / outputs.prototypes.shape[1]
    for result, target in zip(results, targets):
        top = slice(0, len(target.labels))
        best = box_iou(target.boxes, result.boxes[top]).max(dim=1)
        assert torch.equal(result.labels[top][best.indices], target.labels)
        masks = result.masks[top][best.indices]
        mask_iou = (masks & target.masks).sum((1, 2)) / (masks | target.masks).sum((1, 2))
        area = target.masks.sum((1, 2))
        large = area >= (4 * stride) ** 2
        assert (best.values >= torch.where(large, 0.7, 0.5)).all()
        # objects hidden down to a few pixels at prototype resolution are not required
        visible = area >= 100
        assert visible.any() and (mask_iou[visible] >= torch.where(large, 0.6, 0.4)[visible]).all()


def test_trains_through_the_api(tmp_path):
    from pansight.api import train

    run = train(
        "instance",
        model="yolact_r18",
        max_iters=2,
        batch_size=2,
        lr=1e-3,
        warmup_iters=0,
        out=str(tmp_path / "run"),
        **{"data.num_train": 4, "data.num_val": 2, "data.image_size": 64, "model.input_size": 96},
    )
    assert isinstance(run.model, Yolact) and (tmp_path / "run" / "model.pt").exists()
    assert run.model.config.input_size == 96
    loaded = pansight.load(tmp_path / "run" / "model.pt")
    assert isinstance(loaded, Yolact)
    images, _ = synthetic_batch(1, size=64)
    batch, _ = loaded.preprocess(images)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).class_logits, run.model(batch).class_logits)


def test_fpn_downsamples_in_float32_under_autocast():
    """P6 and P7 come from maps of a pixel or two at small inputs, where oneDNN's bfloat16
    channels-last weight gradient is unreliable: under bfloat16 autocast they are computed in
    float32, so P7's weight gradient is float32 arithmetic on P6."""
    torch.manual_seed(0)
    fpn = YolactFPN({"c3": 8, "c4": 8, "c5": 8}, 8).to(memory_format=torch.channels_last)
    features = {
        f"c{level}": torch.randn(2, 8, 2 ** (5 - level), 2 ** (5 - level)) for level in (3, 4, 5)
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        levels = fpn(features)
    assert levels["p5"].dtype == torch.bfloat16
    assert levels["p6"].dtype == levels["p7"].dtype == torch.float32
    assert levels["p6"].shape[-2:] == levels["p7"].shape[-2:] == (1, 1)
    levels["p7"].sum().backward()
    conv = fpn.downsample_layers[1]
    weight = conv.weight.detach().clone().requires_grad_()
    F.conv2d(levels["p6"].detach(), weight, conv.bias, stride=2, padding=1).sum().backward()
    torch.testing.assert_close(conv.weight.grad, weight.grad)
