import torch

from pansight.ops.boxes import BalancedSampler, BoxCoder, Matcher


def test_box_coder_round_trip_and_hand_case():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    references = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 7.0, 9.0]])
    boxes = torch.tensor([[1.0, 2.0, 11.0, 22.0], [4.0, 3.0, 9.0, 12.0]])
    deltas = coder.encode(boxes, references)
    # first box: center moves by (1, 2) on a 10 x 20 reference, same size
    torch.testing.assert_close(deltas[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    decoded = coder.decode(deltas, references)
    assert decoded.shape == (2, 1, 4)
    torch.testing.assert_close(decoded[:, 0], boxes)


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.2, 0.6, 0.35, 0.2]])  # (G=2, P=4)
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, -2, -2, -1]
    # gt 1's best IoU (0.6) is reached by prediction 1, which becomes its match
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 1, -2, -1]
    assert Matcher(0.7, 0.3)(torch.zeros((0, 3))).tolist() == [-1, -1, -1]


def test_sampler_respects_fraction_and_ignores():
    labels = torch.tensor([1] * 10 + [0] * 20 + [-1] * 5)
    positive, negative = BalancedSampler(8, 0.25)(labels)
    assert positive.sum() == 2 and negative.sum() == 6
    assert (labels[positive] == 1).all() and (labels[negative] == 0).all()
    positive, negative = BalancedSampler(8, 0.5)(torch.tensor([1, 0, -1]))
    assert positive.tolist() == [True, False, False] and negative.tolist() == [False, True, False]
