"""Classifier: preprocessing, loss, postprocessing and torchvision weight import."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pansight.errors import CheckpointError, ConfigError, DataError
from pansight.models.backbones import ResNetBody
from pansight.models.classification.classifier import (
    Classifier,
    ClassifierConfig,
    ClassifierOutputs,
    import_torchvision_resnet,
)
from pansight.structures import ImageBatch, Target

CLASS_NAMES = ["a", "b", "c", "d"]


def randomize_batch_norms(model: nn.Module, seed: int) -> None:
    """Give every batch norm random affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.weight.data = 0.5 + torch.rand(size, generator=generator)
            module.bias.data = 0.1 * torch.randn(size, generator=generator)
            module.running_mean = 0.1 * torch.randn(size, generator=generator)
            module.running_var = 0.5 + torch.rand(size, generator=generator)


def test_body_returns_c2_to_c5_at_their_strides():
    body = ResNetBody("resnet18")
    features = body(torch.rand(1, 3, 64, 96))
    expected = {"c2": (64, 16, 24), "c3": (128, 8, 12), "c4": (256, 4, 6), "c5": (512, 2, 3)}
    assert {key: tuple(value.shape[1:]) for key, value in features.items()} == expected
    assert body.out_channels == {"c2": 64, "c3": 128, "c4": 256, "c5": 512}
    assert ResNetBody("resnet50").out_channels == {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048}


def test_body_parameter_names_match_torchvision():
    body_keys = set(ResNetBody("resnet34").state_dict())
    torchvision_keys = set(torchvision.models.resnet34(weights=None).state_dict())
    assert body_keys == {key for key in torchvision_keys if not key.startswith("fc.")}


def test_torchvision_import_reproduces_torchvision_logits():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None, num_classes=len(CLASS_NAMES))
    randomize_batch_norms(reference, seed=1)
    model = Classifier(ClassifierConfig(), CLASS_NAMES)
    assert import_torchvision_resnet(model, reference.state_dict()) == []
    reference.eval()
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    batch = ImageBatch(images, [(64, 64)] * 2, [(64, 64)] * 2)
    with torch.no_grad():
        ours = model(batch).logits
        theirs = reference(model.normalize(images))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_torchvision_import_skips_a_head_of_another_class_count():
    reference = torchvision.models.resnet18(weights=None, num_classes=1000)
    model = Classifier(ClassifierConfig(), CLASS_NAMES)
    head_before = model.fc.weight.clone()
    assert import_torchvision_resnet(model, reference.state_dict()) == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(model.fc.weight, head_before)
    torch.testing.assert_close(model.body.conv1.weight, reference.conv1.weight)


def test_torchvision_import_names_a_misshaped_key():
    state_dict = torchvision.models.resnet18(weights=None).state_dict()
    state_dict["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    model = Classifier(ClassifierConfig(), CLASS_NAMES)
    with pytest.raises(CheckpointError, match="'layer2.0.conv1.weight' has shape"):
        import_torchvision_resnet(model, state_dict)


def test_torchvision_import_names_a_missing_key():
    state_dict = torchvision.models.resnet18(weights=None).state_dict()
    del state_dict["bn1.running_var"]
    model = Classifier(ClassifierConfig(), CLASS_NAMES)
    with pytest.raises(CheckpointError, match="lacks 'bn1.running_var'"):
        import_torchvision_resnet(model, state_dict)


def test_torchvision_import_rejects_another_depth():
    state_dict = torchvision.models.resnet34(weights=None).state_dict()
    model = Classifier(ClassifierConfig(), CLASS_NAMES)
    with pytest.raises(CheckpointError, match="'layer1.2.conv1.weight' has no place in a resnet18"):
        import_torchvision_resnet(model, state_dict)


def test_preprocess_resizes_images_and_targets_to_the_square_input():
    model = Classifier(ClassifierConfig(input_size=32), CLASS_NAMES)
    images = [torch.rand(3, 64, 128), torch.rand(3, 16, 16)]
    targets = [
        Target(image_id=0, size=(64, 128), label=1, box=torch.tensor([32.0, 16.0, 64.0, 48.0])),
        Target(image_id=1, size=(16, 16), label=2),
    ]
    batch, resized = model.preprocess(images, targets)
    assert batch.tensor.shape == (2, 3, 32, 32)
    assert batch.image_sizes == [(32, 32), (32, 32)]
    assert batch.original_sizes == [(64, 128), (16, 16)]
    assert batch.scale(0) == (0.25, 0.5)
    torch.testing.assert_close(resized[0].box, torch.tensor([8.0, 8.0, 16.0, 24.0]))
    assert resized[1].size == (32, 32)


def test_preprocess_keeps_a_constant_image_constant():
    model = Classifier(ClassifierConfig(input_size=32), CLASS_NAMES)
    batch, _ = model.preprocess([torch.full((3, 50, 70), 0.25)])
    torch.testing.assert_close(batch.tensor, torch.full((1, 3, 32, 32), 0.25))


def test_preprocess_rejects_a_gray_image():
    model = Classifier(ClassifierConfig(input_size=32), CLASS_NAMES)
    with pytest.raises(DataError, match=r"image 0 has shape \(1, 8, 8\)"):
        model.preprocess([torch.rand(1, 8, 8)])


def test_loss_is_cross_entropy_and_postprocess_is_softmax():
    model = Classifier(ClassifierConfig(input_size=32), CLASS_NAMES)
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    targets = [Target(image_id=0, size=(32, 32), label=0), Target(1, (32, 32), label=3)]
    loss = model.loss(ClassifierOutputs(logits), targets)
    expected = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 3]) / 2
    torch.testing.assert_close(loss["cls"], expected)
    batch = ImageBatch(torch.zeros(2, 3, 32, 32), [(32, 32)] * 2, [(32, 32)] * 2)
    results = model.postprocess(ClassifierOutputs(logits), batch)
    assert [result.label for result in results] == [0, 3]
    e = torch.e
    assert results[0].score == pytest.approx(e**2 / (e**2 + 3))
    assert results[1].scores.tolist() == pytest.approx([1 / (e + 3)] * 3 + [e / (e + 3)])


def test_loss_names_an_image_without_a_label():
    model = Classifier(ClassifierConfig(input_size=32), CLASS_NAMES)
    targets = [Target(image_id=7, size=(32, 32))]
    with pytest.raises(DataError, match="image 7: the target has no class label"):
        model.loss(ClassifierOutputs(torch.zeros(1, 4)), targets)


def test_loss_names_an_image_with_a_label_out_of_range():
    model = Classifier(ClassifierConfig(input_size=32), CLASS_NAMES)
    targets = [Target(image_id=3, size=(32, 32), label=4)]
    with pytest.raises(DataError, match=r"image 3: label 4 is outside 0..3"):
        model.loss(ClassifierOutputs(torch.zeros(1, 4)), targets)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backbone": "resnet7"}, "backbone='resnet7' is unknown"),
        ({"input_size": 16}, "input_size=16 is too small"),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ],
)
def test_config_rejects_bad_values(settings, message):
    with pytest.raises(ConfigError, match=message):
        ClassifierConfig(**settings)


def test_classifier_needs_class_names():
    with pytest.raises(ConfigError, match="class_names is empty"):
        Classifier(ClassifierConfig(), [])
