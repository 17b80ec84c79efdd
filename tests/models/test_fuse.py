"""Folding batch norms into convolutions: which pairs fold, and folded == unfused outputs."""

import pytest
import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from pansight.models.fuse import conv_norm_pairs, fold_batch_norms, optimize_for_inference
from pansight.models.rcnn.model import MaskRCNN, RCNNConfig

TOLERANCE = 1e-5
"""Largest difference allowed, relative to the largest output value."""


def _randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Eval statistics and affine parameters far from a norm's identity defaults."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in model.modules():
            if (
                isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d))
                and norm.running_mean is not None
            ):
                channels = norm.running_mean.shape[0]
                norm.running_mean.copy_(torch.randn(channels, generator=generator))
                norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(channels, generator=generator) * 0.1)


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE * scale)


class ConvFeedsTwo(nn.Module):
    """The conv's output goes to the norm and, around it, to the sum: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images)
        return self.norm(features) + features


class NormBeforeConv(nn.Module):
    """Registered conv-then-norm, but the norm runs first: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(images))


class SeparateLists(nn.Module):
    """Convs and norms in two lists, paired by a loop (as the v2 R-CNN heads are); the second
    norm has no running statistics and so cannot fold."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)])
        self.norms = nn.ModuleList(
            [nn.BatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False)]
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            images = torch.relu(norm(conv(images)))
        return images


class Untraceable(nn.Module):
    """A forward fx cannot trace (it loops over a list input); its children still fold."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Conv2dNormActivation(3, 4, norm_layer=FrozenBatchNorm2d)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.block(image) for image in images]


def test_pairs_follow_the_data_not_the_registration_order():
    assert conv_norm_pairs(ConvFeedsTwo()) == []
    assert conv_norm_pairs(NormBeforeConv()) == []
    assert conv_norm_pairs(SeparateLists()) == [("convs.0", "norms.0")]
    assert conv_norm_pairs(Untraceable()) == [("block.0", "block.1")]


@pytest.mark.parametrize("module_cls", [ConvFeedsTwo, NormBeforeConv, SeparateLists])
def test_folded_modules_compute_the_same(module_cls):
    torch.manual_seed(0)
    module = module_cls()
    _randomize_norms(module)
    module.eval()
    images = torch.randn(2, 3, 16, 16)
    folded = fold_batch_norms(module)
    _assert_close(folded(images), module(images))


def test_untraceable_parent_folds_its_children():
    torch.manual_seed(0)
    module = Untraceable()
    _randomize_norms(module)
    images = [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 8, 24)]
    folded = fold_batch_norms(module)
    assert isinstance(folded.block[1], nn.Identity)
    for got, expected in zip(folded(images), module.eval()(images)):
        _assert_close(got, expected)


def _small_rcnn(**overrides) -> MaskRCNN:
    sizes = {"min_size": 96, "max_size": 128, "fpn_channels": 32, "representation_size": 64}
    config = RCNNConfig(backbone="resnet18", **sizes, **overrides)
    torch.manual_seed(0)
    model = MaskRCNN(config, ["a", "b", "c"])
    _randomize_norms(model)
    return model.eval()


def _network_outputs(model: MaskRCNN, batch, proposals) -> dict[str, torch.Tensor]:
    """Every tensor the network computes from ``batch``, the RoI heads on ``proposals``."""
    levels = model.pyramid_levels(model.backbone_levels(batch))
    objectness, deltas, _, _ = model.rpn_per_level(levels, batch)
    class_logits, box_deltas = model.box_branch(model.roi_align_boxes(levels, proposals, batch))
    mask_features = model.mask_roi_align(levels, proposals, batch.image_sizes)
    mask_logits = model.mask_predictor(model.mask_head(mask_features))
    return levels | {
        "objectness": objectness,
        "rpn_deltas": deltas,
        "class_logits": class_logits,
        "box_deltas": box_deltas,
        "mask_logits": mask_logits,
    }


@pytest.mark.parametrize(
    "overrides",
    [{}, {"fpn_norm": True, "head_norm": True, "box_head": "conv_fc", "rpn_conv_depth": 2}],
    ids=["v1", "v2"],
)
def test_optimized_rcnn_computes_the_same(overrides):
    """Folded and channels-last, the R-CNN's every network output (same input, same RoIs)
    matches the original's; the original keeps its norms, its state dict and training mode."""
    model = _small_rcnn(**overrides)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    optimized = optimize_for_inference(model)

    assert len(conv_norm_pairs(model)) == norms
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimized.modules())
    assert optimized.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())

    generator = torch.Generator().manual_seed(1)
    images = [
        torch.rand(3, 96, 128, generator=generator),
        torch.rand(3, 100, 90, generator=generator),
    ]
    batch, _ = model.preprocess(images)
    with torch.no_grad():
        proposals = model(batch).proposals
        expected = _network_outputs(model, batch, proposals)
        got = _network_outputs(optimized, batch, proposals)
    for name, value in expected.items():
        _assert_close(got[name], value)


def test_original_still_trains_after_folding_a_copy():
    model = _small_rcnn()
    fold_batch_norms(model)
    model.train()
    norm = model.body.bn1
    before = norm.running_mean.clone()
    model.body(torch.rand(2, 3, 64, 64))
    assert not torch.equal(norm.running_mean, before)
