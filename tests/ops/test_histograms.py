"""Color histograms: hand-counted colors, and the pixel grid of large images."""

import torch

from pansight.ops.histograms import color_histograms


def test_color_histograms_sum_to_one_and_count_colours():
    images = torch.zeros(2, 3, 4, 4)
    images[1, 0, :2] = 1.0  # top half red
    histograms = color_histograms(images)
    torch.testing.assert_close(histograms.sum(dim=1), torch.ones(2))
    assert histograms[0, 0] == 1.0
    assert histograms[1, 0] == 0.5 and histograms[1].max() == 0.5


def test_histograms_of_large_images_count_a_grid_of_their_pixels():
    images = torch.rand(1, 3, 520, 600)
    expected = color_histograms(images[:, :, ::4, ::4])
    torch.testing.assert_close(color_histograms(images), expected)
