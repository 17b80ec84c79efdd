"""Video mask AP against pycocotools' image mask AP (one-frame clips) and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pansight.data.shapes_video import render_clip
from pansight.errors import DataError
from pansight.metrics.coco import CocoMetric
from pansight.metrics.video import (
    EncodedTrack,
    Track,
    VideoMaskMetric,
    ground_truth_tracks,
    track_iou,
    tracks_from_detections,
)
from pansight.structures import Detections, Target

SIZE = (32, 32)


def square(x: int, y: int, side: int = 8) -> torch.Tensor:
    """``(H, W)`` bool mask of a ``side`` x ``side`` square with top-left pixel ``(x, y)``."""
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[y : y + side, x : x + side] = True
    return mask


def clip_targets(tracks: list[Track]) -> list[Target]:
    """Per-frame targets of ground-truth tracks (track id = position in ``tracks``)."""
    targets = []
    for t in range(len(tracks[0].masks)):
        seen = [k for k, track in enumerate(tracks) if track.masks[t] is not None]
        masks = [tracks[k].masks[t] for k in seen]
        targets.append(
            Target(
                image_id=t,
                size=SIZE,
                labels=torch.tensor([tracks[k].label for k in seen], dtype=torch.int64),
                masks=torch.stack(masks) if masks else torch.zeros(0, *SIZE, dtype=torch.bool),
                iscrowd=torch.tensor([tracks[k].iscrowd for k in seen], dtype=torch.bool),
                track_ids=torch.tensor(seen, dtype=torch.int64),
            )
        )
    return targets


def video_ap(predicted: list[Track], truth: list[Track], num_classes: int = 2) -> dict:
    metric = VideoMaskMetric(num_classes)
    metric.update(predicted, clip_targets(truth))
    return metric.compute()


def test_perfect_tracks_give_one():
    truth = [
        Track(0, [square(0, 0), square(2, 1), None]),
        Track(1, [None, square(20, 20), square(21, 22)]),
    ]
    predicted = [Track(t.label, list(t.masks), score=0.9) for t in truth]
    assert video_ap(predicted, truth) == pytest.approx(
        {"mask_AP": 1, "mask_AP50": 1, "mask_AP75": 1}
    )


def test_track_seen_in_half_the_frames_has_iou_one_half():
    truth = [Track(0, [square(4, 4), square(5, 5), square(6, 6), square(7, 7)])]
    predicted = [Track(0, [square(4, 4), square(5, 5), None, None], score=0.8)]
    encoded = [EncodedTrack.of(track) for track in predicted + truth]
    assert track_iou(encoded[:1], encoded[1:], [False])[0, 0] == pytest.approx(0.5)
    # Only the 0.5 threshold of the ten matches.
    assert video_ap(predicted, truth) == pytest.approx(
        {"mask_AP": 0.1, "mask_AP50": 1.0, "mask_AP75": 0.0}
    )


def test_track_iou_sums_over_frames_and_skips_frames_where_both_are_absent():
    half = square(0, 0)
    half[:, 4:] = False
    predicted = EncodedTrack.of(Track(0, [half, square(20, 20, side=2), None, None]))
    truth = EncodedTrack.of(Track(0, [square(0, 0), None, None, square(10, 10)]))
    # Frame 0: 32 of 64 shared; frame 1: 4 predicted pixels alone; frame 3: 64 truth alone.
    assert track_iou([predicted], [truth], [False])[0, 0] == pytest.approx(32 / (64 + 4 + 64))
    # A crowd region divides by the prediction's own area.
    assert track_iou([predicted], [truth], [True])[0, 0] == pytest.approx(32 / (32 + 4))


def test_swapped_identities_halfway_miss_at_iou_one_half():
    left = [square(0, 0) for _ in range(4)]
    right = [square(20, 20) for _ in range(4)]
    truth = [Track(0, left), Track(0, right)]
    predicted = [
        Track(0, left[:2] + right[2:], score=0.9),
        Track(0, right[:2] + left[2:], score=0.8),
    ]
    encoded_predicted = [EncodedTrack.of(track) for track in predicted]
    encoded_truth = [EncodedTrack.of(track) for track in truth]
    # Each shares 2 of its 4 frames: 128 / (256 + 256 - 128).
    iou = track_iou(encoded_predicted, encoded_truth, [False, False])
    assert iou == pytest.approx(np.full((2, 2), 1 / 3))
    assert video_ap(predicted, truth)["mask_AP50"] == 0.0


def test_wrong_class_gives_zero():
    truth = [Track(0, [square(0, 0), square(1, 1)])]
    predicted = [Track(1, list(truth[0].masks), score=0.9)]
    assert video_ap(predicted, truth) == {"mask_AP": 0.0, "mask_AP50": 0.0, "mask_AP75": 0.0}


def test_no_ground_truth_gives_minus_one_and_no_predictions_zero():
    assert VideoMaskMetric(2).compute()["mask_AP"] == -1.0
    truth = [Track(0, [square(0, 0)])]
    assert video_ap([], truth)["mask_AP"] == 0.0


def test_crowd_track_is_neither_matched_nor_missed():
    truth = [
        Track(0, [square(0, 0), square(0, 0)]),
        Track(0, [square(16, 16, 16)] * 2, iscrowd=True),
    ]
    inside_crowd = Track(0, [square(18, 18), square(18, 18)], score=0.95)
    predicted = [inside_crowd, Track(0, list(truth[0].masks), score=0.5)]
    assert video_ap(predicted, truth)["mask_AP"] == pytest.approx(1)


def random_image(rng: np.random.Generator, num_classes: int) -> tuple[Target, Detections]:
    """Random rectangles and predictions near them (some displaced, some spurious)."""
    num_objects = int(rng.integers(1, 5))
    masks, labels = [], []
    for _ in range(num_objects):
        x, y = rng.integers(0, 20, size=2)
        width, height = rng.integers(5, 13, size=2)
        mask = torch.zeros(SIZE, dtype=torch.bool)
        mask[y : y + height, x : x + width] = True
        masks.append(mask)
        labels.append(int(rng.integers(num_classes)))
    predicted_masks, predicted_labels = [], []
    for mask, label in zip(masks, labels):
        shift = [int(v) for v in rng.integers(-1, 2, size=2)]
        predicted_masks.append(torch.roll(mask, shifts=shift, dims=(0, 1)))
        predicted_labels.append(label if rng.random() < 0.8 else int(rng.integers(num_classes)))
    for _ in range(int(rng.integers(0, 3))):
        predicted_masks.append(torch.roll(masks[0], shifts=int(rng.integers(4, 12)), dims=1))
        predicted_labels.append(int(rng.integers(num_classes)))
    target = Target(
        image_id=0,
        size=SIZE,
        boxes=torch.zeros(num_objects, 4),
        labels=torch.tensor(labels),
        masks=torch.stack(masks),
        iscrowd=torch.tensor(rng.random(num_objects) < 0.1),
        track_ids=torch.arange(num_objects),
    )
    result = Detections(
        boxes=torch.zeros(len(predicted_masks), 4),
        scores=torch.tensor(rng.random(len(predicted_masks)), dtype=torch.float32),
        labels=torch.tensor(predicted_labels),
        masks=torch.stack(predicted_masks),
        track_ids=torch.arange(len(predicted_masks)),
    )
    return target, result


def test_one_frame_clips_give_pycocotools_image_mask_ap():
    rng = np.random.default_rng(0)
    num_classes = 3
    images = [random_image(rng, num_classes) for _ in range(12)]
    image_metric = CocoMetric(num_classes, iou_types=("segm",))
    video_metric = VideoMaskMetric(num_classes)
    for target, result in images:
        image_metric.update([result], [target])
        video_metric.update(tracks_from_detections([result]), [target])
    expected = image_metric.compute()
    computed = video_metric.compute()
    assert 0.1 < expected["mask_AP"] < 0.9
    for name in ("mask_AP", "mask_AP50", "mask_AP75"):
        assert computed[name] == pytest.approx(expected[name], abs=1e-12)


def test_tracks_from_detections_take_mean_score_and_most_frequent_label():
    masks = torch.stack([square(0, 0), square(10, 10)])
    frames = [
        Detections(torch.zeros(2, 4), torch.tensor([0.9, 0.4]), torch.tensor([1, 0]), masks),
        Detections(torch.zeros(1, 4), torch.tensor([0.5]), torch.tensor([2]), masks[:1]),
        Detections(torch.zeros(1, 4), torch.tensor([0.7]), torch.tensor([1]), masks[1:]),
    ]
    ids = [torch.tensor([7, 3]), torch.tensor([7]), torch.tensor([7])]
    tracks = tracks_from_detections(frames, ids)
    assert [track.label for track in tracks] == [0, 1]
    assert [track.score for track in tracks] == pytest.approx([0.4, (0.9 + 0.5 + 0.7) / 3])
    assert tracks[0].masks[1] is None and torch.equal(tracks[0].masks[0], masks[1])
    assert torch.equal(tracks[1].masks[2], masks[1])


def test_tracks_from_detections_break_label_ties_towards_the_smaller_label():
    masks = square(0, 0)[None]
    frames = [
        Detections(torch.zeros(1, 4), torch.tensor([0.5]), torch.tensor([lab]), masks)
        for lab in (2, 1)
    ]
    tracks = tracks_from_detections(frames, [torch.tensor([0]), torch.tensor([0])])
    assert tracks[0].label == 1


def test_ground_truth_of_a_rendered_clip_scores_one():
    clip = render_clip(3, num_frames=4, image_size=32, seed=1)
    targets = [target for _, target in clip]
    truth = ground_truth_tracks(targets)
    assert len(truth) == len({i for target in targets for i in target.track_ids.tolist()})
    metric = VideoMaskMetric(5)
    metric.update([Track(t.label, t.masks, score=0.5) for t in truth], targets)
    assert metric.compute()["mask_AP"] == pytest.approx(1)


def test_bad_input_raises():
    truth = [Track(0, [square(0, 0), square(1, 1)])]
    metric = VideoMaskMetric(2)
    with pytest.raises(ValueError, match="frames"):
        metric.update([Track(0, [square(0, 0)])], clip_targets(truth))
    with pytest.raises(ValueError, match="labels"):
        metric.update([Track(5, list(truth[0].masks))], clip_targets(truth))
    with pytest.raises(DataError, match="outside"):
        VideoMaskMetric(1).update([], clip_targets([Track(1, [square(0, 0)])]))
    without_ids = [Target(image_id=4, size=SIZE, masks=square(0, 0)[None])]
    with pytest.raises(DataError, match="image 4"):
        metric.update([], without_ids)
    two = Detections(torch.zeros(2, 4), torch.ones(2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="masks"):
        tracks_from_detections([two], [torch.tensor([0, 1])])
    with pytest.raises(ValueError, match="track_ids"):
        tracks_from_detections([two])
    two.masks = torch.stack([square(0, 0), square(9, 9)])
    with pytest.raises(ValueError, match="twice"):
        tracks_from_detections([two], [torch.tensor([0, 0])])


def dense_track_iou(predicted: Track, truth: Track) -> float:
    """Track IoU from dense masks, frame by frame."""
    intersection = union = 0
    for mask, truth_mask in zip(predicted.masks, truth.masks):
        mask = torch.zeros(SIZE, dtype=torch.bool) if mask is None else mask
        truth_mask = torch.zeros(SIZE, dtype=torch.bool) if truth_mask is None else truth_mask
        intersection += int((mask & truth_mask).sum())
        union += int((mask | truth_mask).sum())
    return intersection / union if union else 0.0


def test_track_iou_matches_dense_masks_on_random_tracks():
    generator = torch.Generator().manual_seed(0)

    def random_track() -> Track:
        masks = [torch.rand(SIZE, generator=generator) < 0.3 for _ in range(5)]
        absent = torch.rand(5, generator=generator) < 0.3
        return Track(0, [None if gone else mask for mask, gone in zip(masks, absent)])

    predicted = [random_track() for _ in range(4)]
    truth = [random_track() for _ in range(3)]
    iou = track_iou(
        [EncodedTrack.of(track) for track in predicted],
        [EncodedTrack.of(track) for track in truth],
        [False] * len(truth),
    )
    expected = [[dense_track_iou(p, g) for g in truth] for p in predicted]
    np.testing.assert_allclose(iou, expected, rtol=1e-12)
