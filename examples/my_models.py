"""Models of "your own" for the README's examples: run the CLI on them, e.g.

    .venv/bin/dlsummary rf examples/my_models.py:small_resnet_features --input-size 1,3,64,64
"""

from torch import nn


class Block(nn.Module):
    """A basic residual block: two 3x3 convolutions and a skip connection."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.skip = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
        return (y + self.skip(x)).relu()


def small_resnet(width: int = 16, blocks: int = 3, classes: int = 10) -> nn.Module:
    """A small ResNet-style classifier: a stem, `blocks` residual blocks that halve the
    resolution after the first, then global pooling and a linear head."""
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    layers += [Block(width, stride=1 if i == 0 else 2) for i in range(blocks)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def small_resnet_features(width: int = 16, blocks: int = 3) -> nn.Module:
    """The same network without its pooling and head: a dense feature extractor."""
    return nn.Sequential(*list(small_resnet(width, blocks))[:-3])


def deep_sigmoid_mlp(depth: int = 20, width: int = 64) -> nn.Module:
    """A deep sigmoid MLP with default initialisation: its gradients vanish."""
    layers = [nn.Linear(32, width), nn.Sigmoid()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 1))
