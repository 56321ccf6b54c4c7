"""Small helpers: the bundled digits read directly equal scikit-learn's own loader."""

from __future__ import annotations

import torch

from dlsummary.utils import digits


def test_digits_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    images, labels = digits()
    data = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert torch.equal(images, torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16)
    assert torch.equal(labels, torch.tensor(data.target))
    assert images.min() >= 0 and images.max() <= 1
    assert digits(torch.float64)[0].dtype == torch.float64
