"""FCN-32s/16s/8s and the torchvision-layout FCN: shapes, losses, results, training, import and
parity with torchvision's ``fcn_resnet50`` / ``fcn_resnet101``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation import fcn_resnet50, fcn_resnet101

import pansight
from pansight.config import TrainConfig
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.errors import CheckpointError, ConfigError, DataError
from pansight.models import zoo
from pansight.models.fcn.model import FCN, FCNConfig, Upsample, pixel_cross_entropy
from pansight.models.fcn.torchvision_import import import_torchvision_fcn
from pansight.models.fuse import optimize_for_inference
from pansight.structures import IGNORE_LABEL, ImageBatch, SemanticMap, Target

CLASS_NAMES = ["background", "red", "blue"]
COLORS = torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.1, 0.1, 0.9]])
SKIP_NAMES = ("fcn32s_r18", "fcn16s_r18", "fcn8s_r18")


def make_sample(seed: int, size: tuple[int, int] = (64, 64)) -> tuple[torch.Tensor, Target]:
    """A gray image with a red and a blue rectangle, and its semantic map (labels 0, 1, 2)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    semantic = torch.zeros(size, dtype=torch.int64)
    for label in (1, 2):
        top = int(torch.randint(0, height // 2, (1,), generator=generator))
        left = int(torch.randint(0, width // 2, (1,), generator=generator))
        semantic[top : top + height // 3, left : left + width // 3] = label
    image = COLORS[semantic].permute(2, 0, 1)
    image = (image + 0.03 * torch.randn(image.shape, generator=generator)).clamp(0, 1)
    return image, Target(image_id=seed, size=size, semantic=semantic)


def build(name: str, seed: int = 0, input_size: int = 64):
    torch.manual_seed(seed)
    return zoo.build_model(name, CLASS_NAMES, {"input_size": str(input_size)})


def randomize_batch_norms(model: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so parity tests see them."""
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(shape, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(shape, generator=generator))


@pytest.mark.parametrize("aux", [True, False])
def test_logits_match_torchvision_with_the_same_weights(aux):
    torch.manual_seed(0)
    reference = fcn_resnet50(weights=None, weights_backbone=None, aux_loss=aux, num_classes=5)
    reference.eval()
    randomize_batch_norms(reference)
    config = FCNConfig(backbone="resnet50", head="dilated", aux_head=aux, input_size=64)
    model = FCN(config, [f"c{i}" for i in range(5)]).eval()
    assert import_torchvision_fcn(model, reference.state_dict()) == []
    images = torch.rand(1, 3, 56, 72, generator=torch.Generator().manual_seed(1))
    batch = ImageBatch.from_images(list(images))
    with torch.no_grad():
        expected = reference(model.normalize(images))
        outputs = model(batch)
    torch.testing.assert_close(outputs.logits, expected["out"], rtol=0, atol=1e-4)
    if aux:
        torch.testing.assert_close(outputs.aux_logits, expected["aux"], rtol=0, atol=1e-4)
    else:
        assert outputs.aux_logits is None


def test_resnet101_file_loads_through_the_zoo_and_matches(tmp_path):
    reference = fcn_resnet101(weights=None, weights_backbone=None, aux_loss=True, num_classes=3)
    randomize_batch_norms(reference)
    path = tmp_path / "fcn_resnet101.pth"
    torch.save(reference.eval().state_dict(), path)
    model = zoo.build_model("fcn_resnet101", CLASS_NAMES, {"torchvision_weights": str(path)})
    images = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(model.eval().normalize(images))
        outputs = model(ImageBatch.from_images(list(images)))
    torch.testing.assert_close(outputs.logits, expected["out"], rtol=0, atol=1e-4)
    torch.testing.assert_close(outputs.aux_logits, expected["aux"], rtol=0, atol=1e-4)


def test_fcn_file_of_another_class_count_keeps_the_class_scores(tmp_path):
    reference = fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=21)
    path = tmp_path / "fcn.pth"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="classifier.4.weight, classifier.4.bias"):
        model = zoo.build_model("fcn_resnet50", CLASS_NAMES, {"torchvision_weights": str(path)})
    assert model.head.classify[4].weight.shape[0] == len(CLASS_NAMES)
    torch.testing.assert_close(model.head.classify[0].weight, reference.classifier[0].weight)


def test_import_errors_name_the_problem():
    reference = fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=3)
    with_aux = FCN(FCNConfig(backbone="resnet50", head="dilated", aux_head=True), CLASS_NAMES)
    with pytest.raises(CheckpointError, match="aux_head=false"):
        import_torchvision_fcn(with_aux, reference.state_dict())
    skip_head = FCN(FCNConfig(backbone="resnet50", head="8s"), CLASS_NAMES)
    with pytest.raises(CheckpointError, match="'classifier.0.weight' has no place"):
        import_torchvision_fcn(skip_head, reference.state_dict())
    small = FCN(FCNConfig(backbone="resnet18", head="8s"), CLASS_NAMES)
    resnet50 = torchvision.models.resnet50(weights=None).state_dict()
    with pytest.raises(CheckpointError, match="'layer1.0.conv1.weight' has shape"):
        import_torchvision_fcn(small, resnet50)


def test_resnet_classifier_weights_go_into_the_body():
    resnet = torchvision.models.resnet18(weights=None)
    model = FCN(FCNConfig(head="8s"), CLASS_NAMES)
    assert import_torchvision_fcn(model, resnet.state_dict()) == []
    torch.testing.assert_close(model.body.layer2[1].conv1.weight, resnet.layer2[1].conv1.weight)


@pytest.mark.parametrize("head", ["32s", "16s", "8s"])
@pytest.mark.parametrize("upsampling", ["bilinear", "learned"])
def test_skip_heads_score_every_input_pixel(head, upsampling):
    model = FCN(FCNConfig(head=head, upsampling=upsampling), CLASS_NAMES).eval()
    batch = ImageBatch.from_images([torch.rand(3, 72, 100), torch.rand(3, 50, 90)])
    with torch.no_grad():
        outputs = model(batch)
    assert outputs.logits.shape == (2, len(CLASS_NAMES), 72, 100)
    assert outputs.aux_logits is None


def test_learned_upsampling_starts_as_bilinear_interpolation():
    scores = torch.randn(2, 3, 5, 7)
    for factor in (2, 8, 32):
        size = (5 * factor, 7 * factor)
        learned = Upsample(3, factor, learned=True)(scores, size)
        fixed = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        inside = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
        torch.testing.assert_close(learned[inside], fixed[inside], rtol=0, atol=1e-5)


def test_skip_scores_start_at_zero_and_learn():
    model = build("fcn8s_r18").train()
    assert model.head.score["c4"].weight.abs().sum() == 0
    assert model.head.score["c3"].weight.abs().sum() == 0
    images, targets = zip(*(make_sample(seed) for seed in range(2)))
    batch, targets = model.preprocess(list(images), list(targets))
    sum(model.loss(model(batch), targets).values()).backward()
    assert model.head.score["c3"].weight.grad.abs().sum() > 0
    assert model.body.conv1.weight.grad.abs().sum() > 0


def test_loss_is_cross_entropy_over_labeled_pixels():
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, :2] = IGNORE_LABEL
    keep = labels != IGNORE_LABEL
    expected = -logits.log_softmax(dim=1).gather(1, labels.clamp(max=2)[:, None])[:, 0][keep]
    torch.testing.assert_close(pixel_cross_entropy(logits, labels), expected.mean())
    nothing = pixel_cross_entropy(logits, torch.full_like(labels, IGNORE_LABEL))
    nothing.backward()
    assert nothing.item() == 0 and torch.isfinite(logits.grad).all()


def test_bad_semantic_values_and_missing_maps_name_the_image():
    model = build("fcn32s_r18")
    image, target = make_sample(3)
    target.semantic[0, 0] = 7
    batch, targets = model.preprocess([image], [target])
    with pytest.raises(DataError, match="image 3: semantic value 7"):
        model.loss(model(batch), targets)
    bare = Target(image_id=4, size=(64, 64))
    with pytest.raises(DataError, match="image 4: the target has no semantic map"):
        model.loss(model(batch), [bare])


def test_predict_gives_maps_in_original_pixels():
    model = build("fcn16s_r18").eval()
    images = [torch.rand(3, 40, 96), torch.rand(3, 72, 48)]
    results = model.predict(images)
    assert [type(result) for result in results] == [SemanticMap, SemanticMap]
    assert [tuple(result.labels.shape) for result in results] == [(40, 96), (72, 48)]
    assert all(result.scores is None for result in results)
    batch, _ = model.preprocess(images)
    with torch.no_grad():
        scored = model.postprocess(model(batch), batch, with_scores=True)
    for plain, result in zip(results, scored):
        assert result.scores.shape == (len(CLASS_NAMES), *result.labels.shape)
        torch.testing.assert_close(result.scores.sum(dim=0), torch.ones(result.labels.shape))
        assert torch.equal(result.scores.argmax(dim=0), result.labels)
        assert torch.equal(plain.labels, result.labels)


@pytest.mark.parametrize("name", SKIP_NAMES)
def test_checkpoint_file_round_trip_rebuilds_the_model(name, tmp_path):
    model = build(name).eval()
    payload = model_payload(
        model, model_name=name, train_config=TrainConfig(), data_set=None, metrics={}
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    loaded = pansight.load(tmp_path / "model.pt")
    assert type(loaded) is FCN and loaded.config == model.config
    batch = ImageBatch.from_images([make_sample(0)[0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_fcn8s_overfits_one_batch():
    """Training-mode outputs on the batch become right (batch statistics of four images say
    nothing about evaluation mode, which other tests cover)."""
    model = build("fcn8s_r18", input_size=48).train()
    images, targets = zip(*(make_sample(seed, size=(48, 48)) for seed in range(3)))
    batch, targets = model.preprocess(list(images), list(targets))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(25):
        loss = sum(model.loss(model(batch), targets).values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    with torch.no_grad():
        results = model.postprocess(model(batch), batch)
    truth = torch.stack([target.semantic for target in targets])
    predicted = torch.stack([result.labels for result in results])
    assert (predicted == truth).float().mean() > 0.95


def test_inference_copy_folds_every_batch_norm_and_keeps_the_scores():
    model = FCN(FCNConfig(backbone="resnet50", head="dilated", aux_head=True), CLASS_NAMES)
    randomize_batch_norms(model)
    model.eval()
    optimized = optimize_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in optimized.modules())
    batch = ImageBatch.from_images([torch.rand(3, 48, 64)])
    with torch.no_grad():
        expected, outputs = model(batch), optimized(batch)
    for got, wanted in (
        (outputs.logits, expected.logits),
        (outputs.aux_logits, expected.aux_logits),
    ):
        scale = wanted.abs().max().item()
        torch.testing.assert_close(got, wanted, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"head": "4s"}, "head='4s' is unknown"),
        ({"head": "dilated"}, "needs backbone resnet50 or resnet101"),
        ({"aux_head": True}, "aux_head=true needs head='dilated'"),
        ({"upsampling": "nearest"}, "upsampling='nearest' is unknown"),
        ({"input_size": 16}, "input_size=16 is too small"),
    ],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        FCNConfig(**overrides)
