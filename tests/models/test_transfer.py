"""Weights of one model into another: what fits by name and shape loads, the rest stays as
built, one leading module name is aligned, and a checkpoint with nothing that fits is refused."""

import pytest
import torch

from pansight.errors import CheckpointError
from pansight.models.transfer import transfer_weights
from pansight.models.zoo import build_model

THINGS = ["circle", "square", "triangle"]
STUFF = ["sky", "grass"]
TINY_RCNN = {"fpn_channels": 16, "representation_size": 32, "mask_head_channels": 8}


def built(name, class_names, **overrides):
    torch.manual_seed(len(name) + len(class_names))
    return build_model(name, class_names, {**TINY_RCNN, **overrides})


def test_faster_rcnn_fills_all_of_a_mask_rcnn_but_its_mask_branch():
    detector, segmenter = built("faster_rcnn_r18_fpn", THINGS), built("mask_rcnn_r18_fpn", THINGS)
    before = segmenter.state_dict()
    transfer = transfer_weights(segmenter, detector.state_dict())
    after, source = segmenter.state_dict(), detector.state_dict()
    mask_branch = {key for key in after if key.startswith(("mask_head", "mask_predictor"))}
    assert set(transfer.fresh) == mask_branch
    assert all(torch.equal(after[key], source[key]) for key in transfer.loaded)
    assert all(torch.equal(after[key], before[key]) for key in transfer.fresh)
    assert transfer.prefixes == ("", "")
    assert "starting afresh: mask_head, mask_predictor" in transfer.summary()


def test_mask_rcnn_fills_the_rcnn_part_of_a_panoptic_fpn():
    segmenter = built("mask_rcnn_r18_fpn", THINGS)
    flags = (True,) * len(THINGS) + (False,) * len(STUFF)
    panoptic = built("panoptic_fpn_r18", THINGS + STUFF, thing_flags=flags, semantic_channels=32)
    transfer = transfer_weights(panoptic, segmenter.state_dict())
    assert transfer.prefixes == ("rcnn.", "")
    assert {key.removeprefix("rcnn.") for key in transfer.loaded} == set(segmenter.state_dict())
    assert all(key.startswith("semantic_head") for key in transfer.fresh)
    # and back: the Panoptic FPN's Mask R-CNN is a whole Mask R-CNN
    back = transfer_weights(built("mask_rcnn_r18_fpn", THINGS), panoptic.state_dict())
    assert back.prefixes == ("", "rcnn.") and back.fresh == ()


def test_other_classes_keep_their_class_layers_fresh():
    source = built("mask_rcnn_r18_fpn", THINGS + ["star"])
    transfer = transfer_weights(built("mask_rcnn_r18_fpn", THINGS), source.state_dict())
    assert set(transfer.fresh) == {
        "box_predictor.cls_score.weight",
        "box_predictor.cls_score.bias",
        "box_predictor.bbox_pred.weight",
        "box_predictor.bbox_pred.bias",
        "mask_predictor.mask_fcn_logits.weight",
        "mask_predictor.mask_fcn_logits.bias",
    }
    assert transfer.summary().endswith(
        "starting afresh: box_predictor; partly loaded: mask_predictor"
    )


def test_a_classifier_body_goes_into_an_fcn():
    classifier = build_model("classifier_r18", THINGS, {})
    fcn = build_model("fcn8s_r18", THINGS + STUFF, {})
    transfer = transfer_weights(fcn, classifier.state_dict())
    assert {key for key in transfer.loaded} == {
        key for key in fcn.state_dict() if key.startswith("body.")
    }


def test_nothing_that_fits_is_refused():
    with pytest.raises(CheckpointError, match="no weight of the checkpoint fits"):
        transfer_weights(built("mask_rcnn_r18_fpn", THINGS), {"other.weight": torch.zeros(3)})
