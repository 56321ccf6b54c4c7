"""Small helpers shared by the answer key and the tools: seeds, devices, data."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a cell gives the same numbers
    on every run. (Returns nothing, so that a cell ending with it shows no output.)"""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def default_device() -> torch.device:
    """CUDA when present, else CPU. Experiments use it only where the results' meaning
    does not depend on the device."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download) as tensors.

    Returns ``images`` of shape (1797, 1, 8, 8) scaled to [0, 1] and ``labels`` (1797,).
    The file scikit-learn ships is read directly (importing ``sklearn.datasets`` costs
    about a second); ``load_digits`` is the fallback where the file is not found.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    path = (Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
            if spec and spec.origin else None)
    if path is not None and path.is_file():
        raw = np.loadtxt(path, delimiter=",")
        pixels, target = raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)
    else:  # pragma: no cover - a scikit-learn that stores its data elsewhere
        from sklearn.datasets import load_digits

        data = load_digits()
        pixels, target = data.images, data.target
    images = torch.tensor(pixels, dtype=dtype).unsqueeze(1) / 16.0
    labels = torch.tensor(target, dtype=torch.long)
    return images, labels


def plot_style() -> None:
    """The answer key's plot style: small, crisp figures with a light grid. Each section
    of the key calls it, so that a section run on its own looks the same as in the report."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.figsize": (7.0, 3.2), "figure.dpi": 90, "axes.grid": True,
                         "grid.alpha": 0.3})
