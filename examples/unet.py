"""A small U-Net (Ronneberger et al., 2015) with either decoder: transposed convolutions
(``ConvTranspose2d``, stride 2) or bilinear upsampling followed by a convolution.

    dlsummary rf examples/unet.py:unet --input-size 1,1,96,96
    dlsummary rf examples/unet.py:unet --input-size 1,1,96,96 --kwargs '{"decoder": "bilinear"}'
"""

from __future__ import annotations

import torch
from torch import nn


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with padding 1, each followed by batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    )


class Up(nn.Module):
    """Upsample by 2, concatenate the encoder's skip connection, then a double conv."""

    def __init__(self, c_in: int, c_out: int, decoder: str):
        super().__init__()
        if decoder == "transposed":
            self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
        elif decoder == "bilinear":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear",
                                                align_corners=False),
                                    nn.Conv2d(c_in, c_in // 2, kernel_size=1))
        else:
            raise ValueError(f"decoder {decoder!r}: use 'transposed' or 'bilinear'")
        self.conv = double_conv(c_in, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Encoder of ``depth`` poolings (width doubling), a bottleneck, and a decoder."""

    def __init__(self, channels: int = 1, classes: int = 2, width: int = 4, depth: int = 2,
                 decoder: str = "transposed"):
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.inc = double_conv(channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(widths[i], widths[i + 1]))
            for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], decoder)
                                for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())
        return self.head(y)


def unet(width: int = 4, depth: int = 2, decoder: str = "transposed") -> UNet:
    """The CLI entry point: a 1-channel, 2-class U-Net."""
    return UNet(width=width, depth=depth, decoder=decoder)
