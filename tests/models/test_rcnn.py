import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from pansight.data.shapes import ShapesDataset
from pansight.errors import CheckpointError
from pansight.models.rcnn import FasterRCNN, MaskRCNN, RCNNConfig
from pansight.models.rcnn_import import import_torchvision_rcnn
from pansight.structures import Detections, Target

NUM_CLASSES = 5
SIZES = {"min_size": 128, "max_size": 192, "rpn_post_nms_top_n_test": 300}
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]


def _randomised_torchvision(builder):
    """A torchvision detector in eval mode with spread-out scores and non-trivial BN stats."""
    torch.manual_seed(0)
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        box_score_thresh=0.0,
        box_detections_per_img=100,
        **SIZES,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        model.roi_heads.box_predictor.cls_score.bias.normal_(0, 1)
        model.rpn.head.cls_logits.weight.normal_(0, 0.1)
    return model.eval()


def _images():
    generator = torch.Generator().manual_seed(1)
    return [
        torch.rand(3, 100, 150, generator=generator),
        torch.rand(3, 130, 90, generator=generator),
    ]


def _assert_same_detections(reference, ours, with_masks):
    for expected, got in zip(reference, ours):
        assert len(got) == len(expected["boxes"]) >= 50
        # the 50 best: further down, near-equal tiny scores may swap places
        expected = {key: value[:50] for key, value in expected.items()}
        got = Detections(got.boxes[:50], got.scores[:50], got.labels[:50], got.masks)
        got.masks = None if got.masks is None else got.masks[:50]
        torch.testing.assert_close(got.boxes, expected["boxes"], atol=0.1, rtol=0)
        torch.testing.assert_close(got.scores, expected["scores"], atol=1e-3, rtol=0)
        assert torch.equal(got.labels, expected["labels"] - 1)
        if with_masks:
            expected_masks = expected["masks"][:, 0] > 0.5
            intersection = (expected_masks & got.masks).sum((1, 2)).float()
            union = (expected_masks | got.masks).sum((1, 2)).float()
            iou = torch.where(union > 0, intersection / union.clamp(min=1), 1.0)
            # random mask heads put many pixels near probability 0.5, where float noise flips
            # single pixels of small masks
            assert iou.mean() >= 0.99 and iou.min() >= 0.9


@pytest.mark.parametrize("with_masks", [True, False])
def test_parity_with_torchvision(with_masks):
    builder = maskrcnn_resnet50_fpn if with_masks else fasterrcnn_resnet50_fpn
    reference_model = _randomised_torchvision(builder)
    config = RCNNConfig(backbone="resnet50", with_masks=with_masks, score_thresh=0.0, **SIZES)
    model = (MaskRCNN if with_masks else FasterRCNN)(config, CLASS_NAMES).eval()
    import_torchvision_rcnn(model, reference_model.state_dict())
    images = _images()
    with torch.no_grad():
        reference = reference_model(images)
    ours = model.predict(images)
    assert ours[1].boxes[:, 2].max() <= 90 and ours[1].boxes[:, 3].max() <= 130
    if with_masks:
        assert ours[0].masks.shape[1:] == (100, 150) and ours[0].masks.dtype == torch.bool
    _assert_same_detections(reference, ours, with_masks)


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
