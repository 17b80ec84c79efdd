import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from pansight.ops.masks import paste_masks


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


def test_paste_no_detections():
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7)).shape == (0, 5, 7)
