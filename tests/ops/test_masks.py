import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from pansight.ops.masks import paste_masks, paste_masks_above, upsample_above


def test_paste_matches_torchvision_per_detection_loop():
    torch.manual_seed(0)
    masks = torch.rand(6, 28, 28)
    boxes = torch.tensor(
        [
            [3.2, 4.7, 40.1, 30.9],
            [-5.0, -3.0, 20.0, 12.0],  # partly outside the image
            [50.0, 40.0, 80.0, 61.5],  # reaches past the right/bottom edge
            [10.0, 10.0, 10.4, 10.2],  # smaller than a pixel
            [0.0, 0.0, 63.0, 47.0],
            [30.5, 2.5, 33.5, 44.5],
        ]
    )
    ours = paste_masks(masks, boxes, (48, 64))
    reference = paste_masks_in_image(masks[:, None], boxes, (48, 64), padding=1)[:, 0]
    assert ours.shape == (6, 48, 64)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_paste_above_equals_full_paste_thresholded():
    """Boxes inside, partly and wholly outside the image, and smaller than a pixel: pasting only
    inside the boxes gives the full paste's thresholded masks."""
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(40, 28, 28, generator=generator)
    corners = torch.rand(40, 2, generator=generator) * 100 - 20
    sizes = torch.rand(40, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + sizes], dim=1)
    boxes[0] = torch.tensor([70.0, 10.0, 90.0, 20.0])  # wholly right of the image
    boxes[1] = torch.tensor([-30.0, -30.0, -10.0, -5.0])  # wholly above and left
    boxes[2] = torch.tensor([10.0, 10.0, 10.4, 10.2])  # smaller than a pixel
    for threshold in (0.0, 0.5):
        expected = paste_masks(masks, boxes, (48, 64)) > threshold
        assert torch.equal(paste_masks_above(masks, boxes, (48, 64), threshold), expected)
    assert paste_masks_above(masks[:0], boxes[:0], (5, 7), 0.5).shape == (0, 5, 7)
    with pytest.raises(ValueError, match="threshold"):
        paste_masks_above(masks, boxes, (48, 64), -0.1)


def test_paste_no_detections():
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7)).shape == (0, 5, 7)


def boxed_masks(count: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """``(count, h, w)`` random probabilities, zero outside a random box per mask."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    masks = torch.rand(count, height, width, generator=generator)
    for mask in masks:
        y0 = torch.randint(0, height - 2, (1,), generator=generator).item()
        x0 = torch.randint(0, width - 2, (1,), generator=generator).item()
        y1 = torch.randint(y0 + 1, height + 1, (1,), generator=generator).item()
        x1 = torch.randint(x0 + 1, width + 1, (1,), generator=generator).item()
        outside = torch.ones(height, width, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        mask[outside] = 0
    return masks


@pytest.mark.parametrize("image_size", [(97, 131), (40, 40), (23, 61)])
def test_upsample_above_equals_full_bilinear_upsampling(image_size):
    masks = boxed_masks(12, (20, 24), seed=sum(image_size))
    masks[3] = 0  # a mask with no support at all
    full = F.interpolate(masks[None], image_size, mode="bilinear", align_corners=False)[0]
    for threshold in (0.0, 0.5):
        fast = upsample_above(masks, image_size, threshold)
        assert fast.shape == (12, *image_size) and fast.dtype == torch.bool
        differ = fast != (full > threshold)
        # only float rounding of the weighted sums can differ, i.e. values at the threshold
        assert ((full[differ] - threshold).abs() < 1e-5).all()
        assert differ.float().mean() < 1e-3
    assert not upsample_above(masks, image_size, 0.5)[3].any()


def test_upsample_above_no_masks_and_negative_threshold():
    assert upsample_above(torch.zeros(0, 5, 5), (10, 12), 0.5).shape == (0, 10, 12)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        upsample_above(torch.zeros(1, 5, 5), (10, 12), -0.1)
