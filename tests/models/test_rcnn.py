import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from pansight.data.shapes import ShapesDataset
from pansight.errors import CheckpointError
from pansight.models.base import IMAGENET_MEAN, IMAGENET_STD
from pansight.models.rcnn import FasterRCNN, MaskRCNN, RCNNConfig, RCNNOutputs
from pansight.models.rcnn_import import import_torchvision_rcnn
from pansight.structures import ImageBatch, Target

NUM_CLASSES = 5
MIN_SIZE, MAX_SIZE = 128, 192
SIZES = {"min_size": MIN_SIZE, "max_size": MAX_SIZE, "rpn_post_nms_top_n_test": 300}
SCORE_THRESH = 1e-3
DETECTIONS = 60
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]


def _images(sizes):
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, height, width, generator=generator) for height, width in sizes]


def _images_to_resize():
    """Two images the models resize by non-integer factors (to 128 x 192 and 184 x 128)."""
    return _images([(100, 150), (130, 90)])


def _images_at_input_size():
    """Two images already at their input size (shorter side 128, longer side <= 192)."""
    return _images([(MIN_SIZE, MAX_SIZE), (184, MIN_SIZE)])


def _randomised_torchvision(builder, images):
    """A torchvision detector in eval mode whose random weights keep activations near unit
    scale: batch-norm statistics are measured on ``images``, and the classifier spreads the
    detection scores."""
    torch.manual_seed(0)
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        box_score_thresh=SCORE_THRESH,
        box_detections_per_img=DETECTIONS,
        **SIZES,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # running stats become the plain batch statistics
        model.backbone.train()
        model.backbone(model.transform(images)[0].tensors)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        model.roi_heads.box_predictor.cls_score.bias.normal_(0, 1)
        model.rpn.head.cls_logits.weight.normal_(0, 0.1)
    return model.eval()


def _mask_iou(expected: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Per-detection IoU of two ``(N, H, W)`` bool mask stacks (1 where both are empty)."""
    intersection = (expected & got).sum((1, 2)).float()
    union = (expected | got).sum((1, 2)).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def test_preprocessing_matches_torchvision():
    """The resized, padded, normalised input equals torchvision's to float rounding (ours
    normalises after resizing, torchvision before; the two agree to a few ulp)."""
    transform = GeneralizedRCNNTransform(MIN_SIZE, MAX_SIZE, IMAGENET_MEAN, IMAGENET_STD).eval()
    images = _images_to_resize()
    expected, _ = transform(images)
    model = FasterRCNN(RCNNConfig(with_masks=False, **SIZES), CLASS_NAMES)
    batch, _ = model.preprocess(images)
    assert batch.image_sizes == expected.image_sizes == [(128, 192), (184, 128)]
    assert batch.tensor.shape == expected.tensors.shape == (2, 3, 192, 192)
    inside = torch.zeros_like(batch.tensor, dtype=torch.bool)
    for index, (height, width) in enumerate(batch.image_sizes):
        inside[index, :, :height, :width] = True
    normalised = torch.where(inside, model.normalize(batch.tensor), 0.0)
    torch.testing.assert_close(normalised, expected.tensors, atol=2e-6, rtol=0)


@pytest.mark.parametrize("with_masks", [True, False])
def test_parity_with_torchvision(with_masks):
    """Same weights, same images: every detection agrees.

    The images need no resize, so both networks see bit-identical input; a resize would
    change the input by float rounding (see the preprocessing test), which a deep random
    network amplifies to ~1e-3 px in the boxes.
    """
    builder = maskrcnn_resnet50_fpn if with_masks else fasterrcnn_resnet50_fpn
    images = _images_at_input_size()
    reference_model = _randomised_torchvision(builder, images)
    config = RCNNConfig(
        backbone="resnet50",
        with_masks=with_masks,
        score_thresh=SCORE_THRESH,
        detections_per_img=DETECTIONS,
        **SIZES,
    )
    model = (MaskRCNN if with_masks else FasterRCNN)(config, CLASS_NAMES).eval()
    import_torchvision_rcnn(model, reference_model.state_dict())
    with torch.no_grad():
        reference = reference_model(images)
    ours = model.predict(images)
    for expected, got in zip(reference, ours):
        assert len(got) == len(expected["boxes"]) == DETECTIONS
        torch.testing.assert_close(got.boxes, expected["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(got.scores, expected["scores"], atol=1e-4, rtol=0)
        assert torch.equal(got.labels, expected["labels"] - 1)
        assert got.scores.max() - got.scores.min() > 0.1
        if with_masks:
            assert got.masks.shape == expected["masks"][:, 0].shape
            assert _mask_iou(expected["masks"][:, 0] > 0.5, got.masks).min() >= 0.99


def test_postprocess_matches_torchvision():
    """Detections in the input frame map back to the original image as torchvision's do:
    boxes scaled, each detection's own-class mask pasted and thresholded at 0.5."""
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
    batch = ImageBatch(torch.zeros(1, 3, 128, 192), [input_size], [original_size])
    model = MaskRCNN(RCNNConfig(fpn_channels=32, representation_size=64), CLASS_NAMES)
    (got,) = model.postprocess(outputs, batch)
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


def test_import_names_the_bad_key():
    model = FasterRCNN(RCNNConfig(with_masks=False), CLASS_NAMES)
    state = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1
    ).state_dict()
    with pytest.raises(CheckpointError, match="backbone.body"):
        import_torchvision_rcnn(model, state)
    own = {
        f"backbone.body.{k[5:]}" if k.startswith("body.") else k: v
        for k, v in model.state_dict().items()
    }
    with pytest.raises(CheckpointError, match="no weight for 'fpn.inner_blocks.0.0.weight'"):
        import_torchvision_rcnn(model, {k: v for k, v in own.items() if k.startswith("backbone")})


def _training_samples():
    data = ShapesDataset(split="train", mode="multi", num_images=4, image_size=96)
    images, targets = zip(*[data[i] for i in range(3)])
    images, targets = list(images), list(targets)
    # image 1: no objects; image 2: an extra zero-area box and a crowd region
    targets[1] = Target(image_id=1, size=targets[1].size, masks=None)
    extra_box = torch.tensor([[10.0, 10.0, 10.0, 30.0], [0.0, 0.0, 40.0, 40.0]])
    count = len(targets[2].labels)
    targets[2] = Target(
        image_id=2,
        size=targets[2].size,
        boxes=torch.cat([targets[2].boxes, extra_box]),
        labels=torch.cat([targets[2].labels, torch.tensor([0, 1])]),
        masks=torch.cat([targets[2].masks, torch.zeros((2, 96, 96), dtype=torch.bool)]),
        iscrowd=torch.tensor([False] * count + [False, True]),
    )
    return images, targets


@pytest.mark.parametrize("model_cls", [MaskRCNN, FasterRCNN])
def test_training_step_is_finite(model_cls):
    torch.manual_seed(0)
    config = RCNNConfig(
        backbone="resnet18",
        with_masks=model_cls is MaskRCNN,
        min_size=128,
        max_size=128,
        fpn_channels=32,
        representation_size=64,
        rpn_post_nms_top_n_train=200,
        box_batch_size_per_image=64,
    )
    model = model_cls(config, CLASS_NAMES).train()
    images, targets = _training_samples()
    batch, input_targets = model.preprocess(images, targets)
    outputs = model(batch, input_targets)
    losses = model.loss(outputs, input_targets)
    expected = {"rpn_objectness", "rpn_box", "cls", "box"} | (
        {"mask"} if config.with_masks else set()
    )
    assert set(losses) == expected
    assert all(torch.isfinite(value) for value in losses.values())
    assert (outputs.roi_labels > 0).any()
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.box_predictor.cls_score.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model.postprocess(model(batch), batch)
    assert type(model(batch)) is type(outputs)
    assert len(results) == 3 and results[0].boxes.shape[1] == 4
