"""The separable RoIAlign against torchvision's kernel: values and gradients."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from pansight.ops.roi_align import TrainableMultiScaleRoIAlign, fpn_levels, separable_roi_align


def random_boxes(count: int, extent: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes partly outside ``[0, extent]``, some thinner than a pixel, one of zero size."""
    corners = torch.rand(count, 2, generator=generator) * (extent + 20) - 10
    sizes = torch.rand(count, 2, generator=generator) * extent / 2
    sizes[0] = 0.0
    sizes[1] = 0.3
    return torch.cat([corners, corners + sizes], dim=1)


@pytest.mark.parametrize("scale, size, ratio", [(0.25, 7, 2), (0.125, 14, 2), (0.5, 5, 3)])
def test_separable_roi_align_matches_torchvision(scale, size, ratio):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 17, 23, generator=generator, requires_grad=True)
    rois = [random_boxes(9, 23 / scale, generator), random_boxes(5, 17 / scale, generator)]
    expected = roi_align(features, rois, size, spatial_scale=scale, sampling_ratio=ratio)
    pooled = separable_roi_align(features, rois, size, scale, ratio)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)

    upstream = torch.randn(expected.shape, generator=generator)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), features)
    (grad,) = torch.autograd.grad((pooled * upstream).sum(), features)
    torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-4)


def test_an_image_without_rois_gives_no_rows():
    features = torch.randn(2, 3, 8, 8)
    rois = [torch.zeros((0, 4)), torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    pooled = separable_roi_align(features, rois, 7, 0.5, 2)
    expected = roi_align(features, rois, 7, spatial_scale=0.5, sampling_ratio=2)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)


def test_fpn_levels_follow_the_canonical_rule():
    boxes = torch.tensor(
        [[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 448, 448], [0, 0, 8, 8]]
    ).float()
    assert fpn_levels(boxes, 2, 5).tolist() == [4, 3, 2, 5, 2]


def test_trainable_multiscale_matches_torchvision_with_and_without_gradients():
    generator = torch.Generator().manual_seed(1)
    names = ["p2", "p3", "p4", "p5"]
    levels = {
        name: torch.randn(2, 4, 96 // 2**i, 128 // 2**i, generator=generator, requires_grad=True)
        for i, name in enumerate(names, start=2)
    }
    rois = [random_boxes(40, 128, generator) * 2, random_boxes(30, 96, generator) * 2]
    shapes = [(96, 128), (80, 120)]
    reference = MultiScaleRoIAlign(names, 7, sampling_ratio=2)
    ours = TrainableMultiScaleRoIAlign(names, 7, sampling_ratio=2)

    expected = reference(levels, rois, shapes)
    pooled = ours(levels, rois, shapes)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(expected.shape, generator=generator)
    expected_grads = torch.autograd.grad(
        (expected * upstream).sum(), list(levels.values()), materialize_grads=True
    )
    grads = torch.autograd.grad(
        (pooled * upstream).sum(), list(levels.values()), materialize_grads=True
    )
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        assert torch.equal(ours(levels, rois, shapes), reference(levels, rois, shapes))


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inference_splits_rois_across_threads_and_returns_torchvision_tensor(mode):
    generator = torch.Generator().manual_seed(2)
    names = ["p2", "p3", "p4", "p5"]
    levels = {
        name: torch.randn(2, 4, 96 // 2**i, 128 // 2**i, generator=generator)
        for i, name in enumerate(names, start=2)
    }
    rois = [random_boxes(90, 128, generator) * 2, random_boxes(7, 96, generator) * 2]
    shapes = [(96, 128), (80, 120)]
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with mode():
            expected = MultiScaleRoIAlign(names, 7, sampling_ratio=2)(levels, rois, shapes)
            pooled = TrainableMultiScaleRoIAlign(names, 7, sampling_ratio=2)(levels, rois, shapes)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(pooled, expected)
