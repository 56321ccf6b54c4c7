"""Analytic receptive field vs one gradient measurement, on a deep ResNet-style model, and on
a U-Net (transposed-convolution decoder: fractional strides, concatenated skips).

Target: the analytic calculator in well under a second (< 0.5 s), and at least 10x faster
than one empirical measurement (a geometry-faithful float64 copy, a forward and a backward
pass). Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_receptive_field.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from dlsummary.receptive_field import empirical_receptive_field, receptive_field

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from unet import UNet  # noqa: E402


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1, 3x3 (stride), 1x1 (expansion 4), plus shortcut."""

    def __init__(self, c_in: int, mid: int, stride: int):
        super().__init__()
        out = 4 * mid
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                         nn.BatchNorm2d(out))
                           if stride > 1 or c_in != out else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def resnet101_features() -> nn.Sequential:
    """torchvision's ResNet-101 up to layer4 (stem + [3, 4, 23, 3] bottlenecks, widths
    64..2048, 104 convolutions, 42 M parameters)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for stage, blocks in enumerate([3, 4, 23, 3]):
        mid = 64 * 2**stage
        for b in range(blocks):
            layers.append(Bottleneck(c_in, mid, 2 if stage > 0 and b == 0 else 1))
            c_in = 4 * mid
    return nn.Sequential(*layers).eval()


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> dict:
    torch.manual_seed(0)
    model = resnet101_features()
    size = (1, 3, 224, 224)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    receptive_field(model, size)  # warm-up: the first call imports torch's meta kernels
    analytic = _best_of(lambda: receptive_field(model, size), 5)
    empirical = _best_of(lambda: empirical_receptive_field(model, size), 1)
    rf = receptive_field(model, size)
    ratio = empirical / analytic
    unet, unet_size = UNet(width=8, depth=4).eval(), (1, 1, 256, 256)
    unet_analytic = _best_of(lambda: receptive_field(unet, unet_size), 5)
    unet_empirical = _best_of(lambda: empirical_receptive_field(unet, unet_size), 1)
    unet_rf = receptive_field(unet, unet_size)
    figures = {
        "model": f"ResNet-101 (torchvision geometry), {convs} convs, input {size}",
        "receptive_field": rf.size[0],
        "analytic_s": analytic,
        "empirical_s": empirical,
        "speedup": ratio,
        "analytic_under_0.5s": analytic < 0.5,
        "speedup_at_least_10x": ratio >= 10,
        "unet_receptive_field": unet_rf.size[0],
        "unet_analytic_s": unet_analytic,
        "unet_empirical_s": unet_empirical,
    }
    print(figures["model"], f"-> receptive field {rf.size[0]}, stride {rf.stride[0]}")
    print(f"{'method':28s} {'time (s)':>9s}")
    print(f"{'analytic receptive_field':28s} {analytic:9.3f}")
    print(f"{'empirical (one gradient)':28s} {empirical:9.3f}")
    print(f"U-Net (depth 4, transposed decoder), input {unet_size} -> receptive field "
          f"{unet_rf.size[0]}: analytic {unet_analytic:.3f} s, empirical {unet_empirical:.3f} s")
    print(f"speedup {ratio:.1f}x; targets: analytic < 0.5 s "
          f"{'met' if figures['analytic_under_0.5s'] else 'NOT met'}, >= 10x "
          f"{'met' if figures['speedup_at_least_10x'] else 'NOT met'}")
    return figures


if __name__ == "__main__":
    main()
