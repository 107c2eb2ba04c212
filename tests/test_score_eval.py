"""Saturation, diversity and recognition metrics of distilled renders."""

import torch

from scene3d.distill.evaluate import diversity, foreground, recognition, saturation


def test_saturation_of_grey_and_pure_colours():
    img = torch.ones(2, 3, 4, 4)
    img[0, :, :2] = 0.5  # grey object on white: saturation 0
    img[1, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red: saturation 1
    assert foreground(img).sum() == 16
    assert abs(saturation(img[:1])) < 1e-6 and abs(saturation(img[1:]) - 1) < 1e-6
    assert abs(saturation(img) - 0.5) < 1e-6


def test_diversity_zero_for_identical_seeds_and_grows_with_difference():
    a = torch.rand(1, 4, 3, 8, 8)
    assert diversity(torch.cat([a, a])) == 0.0
    assert diversity(torch.cat([a, a + 0.1])) > diversity(torch.cat([a, a + 0.01])) > 0
    assert diversity(a) == 0.0


def test_recognition_fraction():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot((x.mean((1, 2, 3)) > 0.5).long(), 2).float()

    images = torch.cat([torch.zeros(3, 3, 2, 2), torch.ones(1, 3, 2, 2)])
    assert recognition(Fixed(), images, 0) == 0.75 and recognition(Fixed(), images, 1) == 0.25
