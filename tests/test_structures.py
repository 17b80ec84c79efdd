import torch

from pansight.structures import ImageBatch, PanopticMap, Segment, Target


def test_target_resized_scales_boxes_and_maps():
    masks = torch.zeros((1, 4, 8), dtype=torch.bool)
    masks[0, :2, :4] = True
    target = Target(
        image_id=1,
        size=(4, 8),
        box=torch.tensor([0.0, 0.0, 4.0, 2.0]),
        boxes=torch.tensor([[0.0, 0.0, 4.0, 2.0]]),
        labels=torch.tensor([2]),
        masks=masks,
        semantic=masks[0].long(),
        panoptic=PanopticMap(masks[0].long(), [Segment(1, 2, True, 8)]),
    )
    resized = target.resized((8, 16))
    assert resized.size == (8, 16)
    assert torch.equal(resized.boxes, torch.tensor([[0.0, 0.0, 8.0, 4.0]]))
    assert torch.equal(resized.box, torch.tensor([0.0, 0.0, 8.0, 4.0]))
    assert resized.masks.shape == (1, 8, 16) and resized.masks.dtype == torch.bool
    assert int(resized.masks.sum()) == 32 and bool(resized.masks[0, :4, :8].all())
    assert torch.equal(resized.semantic, resized.masks[0].long())
    assert torch.equal(resized.panoptic.ids, resized.masks[0].long())


def test_target_resized_with_no_objects():
    target = Target(image_id=0, size=(4, 6), masks=torch.zeros((0, 4, 6), dtype=torch.bool))
    resized = target.resized((8, 12))
    assert resized.masks.shape == (0, 8, 12) and resized.boxes.shape == (0, 4)


def test_image_batch_pads_and_maps_scales():
    images = [torch.ones(3, 5, 7), torch.ones(3, 6, 3)]
    batch = ImageBatch.from_images(images, original_sizes=[(10, 14), (6, 3)], size_divisible=4)
    assert batch.tensor.shape == (2, 3, 8, 8)
    assert batch.tensor[0, :, 5:].abs().sum() == 0 and batch.tensor[1, :, :, 3:].abs().sum() == 0
    assert batch.scale(0) == (0.5, 0.5) and batch.scale(1) == (1.0, 1.0)
