"""Parity of our Faster/Mask R-CNN with torchvision's: preprocessing (``torchvision`` and
``square``), imported v1 and v2 weights, results mapped back to the original image
(torchvision weight files themselves: ``test_torchvision_weight_files.py``)."""

import pytest
import torch
from torchvision.models.detection import (
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from pansight.models.base import IMAGENET_MEAN, IMAGENET_STD
from pansight.models.rcnn import RCNN_V2
from pansight.models.rcnn.model import FasterRCNN, MaskRCNN, RCNNConfig, RCNNOutputs
from pansight.models.rcnn.torchvision_import import import_torchvision_rcnn
from pansight.structures import ImageBatch, Target

NUM_CLASSES = 5
MIN_SIZE, MAX_SIZE = 128, 192
SQUARE = 192
SIZES = {"min_size": MIN_SIZE, "max_size": MAX_SIZE, "rpn_post_nms_top_n_test": 100}
SCORE_THRESH = 1e-3
DETECTIONS = 50
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]
TORCHVISION_BUILDERS = {
    (False, False): fasterrcnn_resnet50_fpn,
    (True, False): maskrcnn_resnet50_fpn,
    (False, True): fasterrcnn_resnet50_fpn_v2,
    (True, True): maskrcnn_resnet50_fpn_v2,
}
"""torchvision's builder of each layout, keyed by ``(with_masks, v2)``."""


def _images(sizes):
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, height, width, generator=generator) for height, width in sizes]


def _images_to_resize():
    """Two images the models resize by non-integer factors (to 128 x 192 and 184 x 128)."""
    return _images([(100, 150), (130, 90)])


def _images_at_input_size():
    """Two images already at their input size (shorter side 128, longer side <= 192)."""
    return _images([(MIN_SIZE, MAX_SIZE), (184, MIN_SIZE)])


def _randomized_torchvision(builder, images, sizes=SIZES):
    """A torchvision detector in eval mode whose random weights keep activations near unit
    scale and make every weight matter.

    Every batch norm gets random affine parameters; the backbone's and FPN's statistics are
    then measured on ``images``, the heads' are random. The classifier spreads the detection
    scores.
    """
    torch.manual_seed(0)
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        box_score_thresh=SCORE_THRESH,
        box_detections_per_img=DETECTIONS,
        **sizes,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # running stats become the plain batch statistics
        model.backbone.train()
        model.backbone(model.transform(images)[0].tensors)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        model.roi_heads.box_predictor.cls_score.bias.normal_(0, 1)
        model.rpn.head.cls_logits.weight.normal_(0, 0.1)
    return model.eval()


def _pansight_twin(reference_model, with_masks, v2, sizes=SIZES):
    """Our model of the same layout holding ``reference_model``'s weights, in eval mode."""
    config = RCNNConfig(
        backbone="resnet50",
        with_masks=with_masks,
        score_thresh=SCORE_THRESH,
        detections_per_img=DETECTIONS,
        **(RCNN_V2 if v2 else {}),
        **sizes,
    )
    model = (MaskRCNN if with_masks else FasterRCNN)(config, CLASS_NAMES).eval()
    import_torchvision_rcnn(model, reference_model.state_dict())
    return model


def _mask_iou(expected: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Per-detection IoU of two ``(N, H, W)`` bool mask stacks (1 where both are empty)."""
    intersection = (expected & got).sum((1, 2)).float()
    union = (expected | got).sum((1, 2)).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def _assert_same_detections(reference, ours, with_masks):
    for expected, got in zip(reference, ours, strict=True):
        assert len(got) == len(expected["boxes"]) == DETECTIONS
        torch.testing.assert_close(got.boxes, expected["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(got.scores, expected["scores"], atol=1e-4, rtol=0)
        assert torch.equal(got.labels, expected["labels"] - 1)
        assert got.scores.max() - got.scores.min() > 0.1
        if with_masks:
            assert got.masks.shape == expected["masks"][:, 0].shape
            assert _mask_iou(expected["masks"][:, 0] > 0.5, got.masks).min() >= 0.99


def _normalized_inside(model, batch):
    """The batch as the network sees it: normalized, zero in the padding."""
    inside = torch.zeros_like(batch.tensor, dtype=torch.bool)
    for index, (height, width) in enumerate(batch.image_sizes):
        inside[index, :, :height, :width] = True
    return torch.where(inside, model.normalize(batch.tensor), 0.0)


def test_preprocessing_matches_torchvision():
    """The resized, padded, normalized input equals torchvision's to float rounding (ours
    normalizes after resizing, torchvision before; the two agree to a few ulp)."""
    transform = GeneralizedRCNNTransform(MIN_SIZE, MAX_SIZE, IMAGENET_MEAN, IMAGENET_STD).eval()
    images = _images_to_resize()
    expected, _ = transform(images)
    model = FasterRCNN(RCNNConfig(with_masks=False, **SIZES), CLASS_NAMES)
    batch, _ = model.preprocess(images)
    assert batch.image_sizes == expected.image_sizes == [(128, 192), (184, 128)]
    assert batch.tensor.shape == expected.tensors.shape == (2, 3, 192, 192)
    torch.testing.assert_close(
        _normalized_inside(model, batch), expected.tensors, atol=2e-6, rtol=0
    )


def test_square_preprocessing_matches_torchvision():
    """``square`` equals torchvision's transform with ``min_size = max_size = square_size``
    (longer side to the square) and ``size_divisible = square_size`` (pad to the square):
    same sizes, same pixels, same boxes in the input frame."""
    transform = GeneralizedRCNNTransform(
        SQUARE, SQUARE, IMAGENET_MEAN, IMAGENET_STD, size_divisible=SQUARE
    ).eval()
    images = _images([(100, 150), (130, 90), (240, 200)])
    boxes = [
        torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, w, h]])
        for _, h, w in (image.shape for image in images)
    ]
    targets = [
        Target(image_id=i, size=tuple(image.shape[-2:]), boxes=b, labels=torch.tensor([0, 1]))
        for i, (image, b) in enumerate(zip(images, boxes))
    ]
    expected, expected_targets = transform(images, [{"boxes": b} for b in boxes])
    model = FasterRCNN(
        RCNNConfig(with_masks=False, preprocessing="square", square_size=SQUARE), CLASS_NAMES
    )
    batch, input_targets = model.preprocess(images, targets)
    assert batch.image_sizes == expected.image_sizes == [(128, 192), (192, 132), (192, 160)]
    assert batch.tensor.shape == expected.tensors.shape == (3, 3, SQUARE, SQUARE)
    torch.testing.assert_close(
        _normalized_inside(model, batch), expected.tensors, atol=2e-6, rtol=0
    )
    for got, want in zip(input_targets, expected_targets):
        torch.testing.assert_close(got.boxes, want["boxes"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("with_masks", "v2"),
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["mask_rcnn", "faster_rcnn", "mask_rcnn_v2", "faster_rcnn_v2"],
)
def test_parity_with_torchvision(with_masks, v2):
    """Same weights, same images: every detection agrees.

    The images need no resize, so both networks see bit-identical input; a resize would
    change the input by float rounding (see the preprocessing test), which a deep random
    network amplifies to ~1e-3 px in the boxes.
    """
    images = _images_at_input_size()
    reference_model = _randomized_torchvision(TORCHVISION_BUILDERS[with_masks, v2], images)
    model = _pansight_twin(reference_model, with_masks, v2)
    with torch.no_grad():
        reference = reference_model(images)
    _assert_same_detections(reference, model.predict(images), with_masks)


def test_square_parity_with_torchvision():
    """``square`` pads to ``square_size x square_size`` where multiple-of-32 padding would
    stop at 128 x 192; torchvision's equivalent transform sees the same padded input and gives
    the same detections."""
    images = _images([(96, SQUARE), (128, SQUARE)])
    top_n = {"rpn_post_nms_top_n_test": SIZES["rpn_post_nms_top_n_test"]}
    torchvision_sizes = {"min_size": SQUARE, "max_size": SQUARE, **top_n}
    reference_model = _randomized_torchvision(fasterrcnn_resnet50_fpn, images, torchvision_sizes)
    reference_model.transform.size_divisible = SQUARE
    square = {"preprocessing": "square", "square_size": SQUARE, **top_n}
    model = _pansight_twin(reference_model, False, False, square)
    batch, _ = model.preprocess(images)
    assert batch.tensor.shape[-2:] == (SQUARE, SQUARE)
    with torch.no_grad():
        reference = reference_model(images)
    _assert_same_detections(reference, model.predict(images), with_masks=False)


@pytest.mark.parametrize("preprocessing", ["torchvision", "square"])
def test_postprocess_matches_torchvision(preprocessing):
    """Detections in the input frame map back to the original image as torchvision's do:
    boxes scaled, each detection's own-class mask pasted and thresholded at 0.5. In the
    square frame the image fills the top-left 128 x 192 of the 192 x 192 padding."""
    generator = torch.Generator().manual_seed(2)
    count, input_size, original_size = 60, (128, 192), (100, 150)
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([192.0, 128.0])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    scores = torch.rand(count, generator=generator)
    labels = torch.randint(1, NUM_CLASSES + 1, (count,), generator=generator)
    mask_logits = 4 * torch.randn(count, NUM_CLASSES + 1, 28, 28, generator=generator)
    unused = torch.empty(0)
    outputs = RCNNOutputs(
        [boxes], unused, unused, [boxes], [scores], [labels], mask_logits, unused, unused
    )
    padded = (SQUARE, SQUARE) if preprocessing == "square" else input_size
    batch = ImageBatch(torch.zeros(1, 3, *padded), [input_size], [original_size])
    config = RCNNConfig(
        fpn_channels=32, representation_size=64, preprocessing=preprocessing, square_size=SQUARE
    )
    (got,) = MaskRCNN(config, CLASS_NAMES).postprocess(outputs, batch)
    own_masks = mask_logits[torch.arange(count), labels].sigmoid()[:, None]
    transform = GeneralizedRCNNTransform(MIN_SIZE, MAX_SIZE, IMAGENET_MEAN, IMAGENET_STD).eval()
    (expected,) = transform.postprocess(
        [{"boxes": boxes, "scores": scores, "labels": labels, "masks": own_masks}],
        [input_size],
        [original_size],
    )
    torch.testing.assert_close(got.boxes, expected["boxes"], atol=1e-4, rtol=0)
    assert torch.equal(got.scores, scores) and torch.equal(got.labels, labels - 1)
    assert got.masks.shape == (count, *original_size) and got.masks.dtype == torch.bool
    assert _mask_iou(expected["masks"][:, 0] > 0.5, got.masks).min() >= 0.99


def test_v2_layout_trains():
    """One training step of the v2 layout (batch-normed FPN and heads, two-conv RPN head) on a
    tiny ResNet-18 model: finite losses, gradients into every new layer; an image without
    objects leaves the batch-normed mask head an empty batch."""
    torch.manual_seed(0)
    config = RCNNConfig(
        min_size=64,
        max_size=64,
        fpn_channels=32,
        representation_size=64,
        rpn_post_nms_top_n_train=100,
        box_batch_size_per_image=32,
        **RCNN_V2,
    )
    model = MaskRCNN(config, CLASS_NAMES).train()
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:40, 20:50] = True
    with_object = Target(
        image_id=0,
        size=(64, 64),
        boxes=torch.tensor([[20.0, 10.0, 50.0, 40.0]]),
        labels=torch.tensor([2]),
        masks=masks,
    )
    empty = Target(image_id=1, size=(64, 64), boxes=torch.zeros(0, 4), masks=masks[:0])
    for targets in ([with_object, empty], [empty]):
        batch, input_targets = model.preprocess(_images([(64, 64)] * len(targets)), targets)
        losses = model.loss(model(batch, input_targets), input_targets)
        assert set(losses) == {"rpn_objectness", "rpn_box", "cls", "box", "mask"}
        assert all(torch.isfinite(value) for value in losses.values())
    model.zero_grad()
    batch, input_targets = model.preprocess(_images([(64, 64)]), [with_object])
    sum(model.loss(model(batch, input_targets), input_targets).values()).backward()
    for layer in (
        model.fpn.inner_blocks[0][1],
        model.rpn_head.extra_convs[0],
        model.box_head.norms[3],
        model.box_head.fc,
        model.mask_head.norms[0],
    ):
        assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
