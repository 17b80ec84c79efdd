"""IoUTracker: ids that follow the synthetic world's moving things, new ids for new objects,
box IoU without masks, forgetting after ``max_age`` frames, untracked low scores."""

import pytest
import torch

from pansight.data.shapes_video import render_clip
from pansight.structures import Detections, Target
from pansight.tracking import UNTRACKED, IoUTracker, mask_iou


def ground_truth(target: Target, with_masks: bool = True) -> Detections:
    """A frame's targets as confident detections."""
    masks = target.masks if with_masks else None
    return Detections(target.boxes, torch.ones(len(target.labels)), target.labels, masks)


def boxes(*rows: list[float], labels: list[int] | None = None) -> Detections:
    """Box-only detections scoring 1, label 0 unless given."""
    labels = labels or [0] * len(rows)
    return Detections(
        torch.tensor(rows, dtype=torch.float32).view(-1, 4),
        torch.ones(len(rows)),
        torch.tensor(labels, dtype=torch.int64),
    )


@pytest.mark.parametrize("with_masks", [True, False])
@pytest.mark.parametrize("index", [0, 1, 4])
def test_ids_follow_the_moving_things_of_a_clip(index, with_masks):
    clip = render_clip(index, num_frames=8, image_size=64)
    first, last = clip[0][1], clip[-1][1]
    moved = (first.boxes[:2] - last.boxes[:2]).abs().amax()
    assert moved > 3  # the things really move (pixels)
    tracker = IoUTracker()
    truth_to_track: dict[int, set[int]] = {}
    for _, target in clip:
        ids = tracker.update(ground_truth(target, with_masks))
        assert ids.dtype == torch.int64 and ids.shape == target.track_ids.shape
        for truth, track in zip(target.track_ids.tolist(), ids.tolist()):
            truth_to_track.setdefault(truth, set()).add(track)
    # each thing keeps one id for the whole clip, and no two things share one
    assert all(len(tracks) == 1 for tracks in truth_to_track.values())
    assert len(set.union(*truth_to_track.values())) == len(truth_to_track)


def test_a_new_object_gets_a_new_id():
    clip = render_clip(4, num_frames=8, image_size=64)
    tracker = IoUTracker()
    first, second = clip[0][1], clip[1][1]
    assert first.track_ids.tolist() == second.track_ids.tolist() == [0, 1, 2, 3]
    old = first.track_ids != 0
    partial = Detections(first.boxes[old], torch.ones(int(old.sum())), first.labels[old])
    assert tracker.update(partial).tolist() == [0, 1, 2]
    ids = tracker.update(ground_truth(second, with_masks=False))
    # thing 0 was not there before: it starts track 3, the others continue 0, 1, 2
    assert ids.tolist() == [3, 0, 1, 2]


def test_label_must_match_and_iou_must_reach_the_threshold():
    tracker = IoUTracker(iou_threshold=0.5)
    first = boxes([0, 0, 10, 10], [20, 20, 30, 30], labels=[0, 1])
    assert tracker.update(first).tolist() == [0, 1]
    # same place, other label -> new; box IoU 60/140 < 0.5 -> new; IoU 80/120 -> continues
    ids = tracker.update(boxes([0, 0, 10, 10], [24, 20, 34, 30], labels=[2, 1]))
    assert ids.tolist() == [2, 3]
    ids = tracker.update(boxes([0, 0, 10, 10], [26, 20, 36, 30], labels=[2, 1]))
    assert ids.tolist() == [2, 3]


def test_greedy_matching_gives_a_track_to_its_best_overlap():
    tracker = IoUTracker()
    tracker.update(boxes([0, 0, 10, 10]))
    # both overlap the track; the second overlaps more and takes it
    assert tracker.update(boxes([4, 0, 14, 10], [1, 0, 11, 10])).tolist() == [1, 0]


@pytest.mark.parametrize("gap, same_id", [(2, True), (3, False)])
def test_tracks_are_forgotten_after_max_age_frames(gap, same_id):
    tracker = IoUTracker(max_age=3)
    tracker.update(boxes([0, 0, 10, 10]))
    for _ in range(gap):
        assert len(tracker.update(boxes())) == 0
    # seen at frame 0; frame gap+1 is within max_age=3 frames only for gap <= 2
    assert (tracker.update(boxes([1, 0, 11, 10])).item() == 0) == same_id


def test_low_scores_are_untracked_and_start_no_track():
    tracker = IoUTracker(min_score=0.5)
    detections = boxes([0, 0, 10, 10], [20, 20, 30, 30])
    detections.scores = torch.tensor([0.9, 0.2])
    assert tracker.update(detections).tolist() == [0, UNTRACKED]
    assert tracker.update(boxes([20, 20, 30, 30])).tolist() == [1]


def test_mask_iou_reference_values():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # 4 pixels
    masks[1, :2, :] = True  # 8 pixels
    others = torch.zeros(3, 4, 4, dtype=torch.bool)
    others[0, :2, :2] = True
    others[1, 1:3, 1:3] = True  # 4 pixels, 1 shared with mask 0, 2 with mask 1
    expected = torch.tensor([[1.0, 1 / 7, 0.0], [0.5, 2 / 10, 0.0]])
    torch.testing.assert_close(mask_iou(masks, others), expected)


def test_masks_decide_where_boxes_would_not():
    # two L-shaped masks with the same box but few shared pixels
    tracker = IoUTracker()
    left = torch.zeros(1, 10, 10, dtype=torch.bool)
    left[0, :, :2] = True
    left[0, -2:, :] = True
    right = left.flip(-1).flip(-2)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    one, label = torch.ones(1), torch.zeros(1, dtype=torch.int64)
    assert tracker.update(Detections(box, one, label, left)).tolist() == [0]
    assert tracker.update(Detections(box, one, label, right)).tolist() == [1]  # mask IoU 1/8
