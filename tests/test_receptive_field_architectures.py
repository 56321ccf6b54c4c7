"""receptive_field on faithful replicas of the blocks real trunks use (torchvision and timm are
not installable here): ConvNeXt, ShuffleNetV2, EfficientNet (MBConv, squeeze-excitation,
stochastic depth), HRNet fuse layers, TF-"SAME" padding, U-Nets with either decoder. Each
analytic answer is held against the measured gradient footprint of neighbouring outputs,
and against a value derived by hand where one is published."""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from dlsummary.errors import DLSummaryError
from dlsummary.receptive_field import empirical_receptive_field, receptive_field

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from unet import UNet  # noqa: E402


def assert_matches_measurement(model, size, indices):
    """The analytic input box of each output index equals the measured footprint's bbox."""
    rf = receptive_field(model, size)
    for index in indices:
        emp = empirical_receptive_field(model, size, index)
        spans = rf.input_coordinates(index, clip=True)
        assert emp.bbox == tuple((s.start, s.stop) for s in spans), (index, emp.bbox, spans)
    return rf


def neighbours(rf, offsets=(0, 1)):
    """The centre output and its neighbours: enough to see size, stride and parity."""
    centre = [s // 2 for s in rf.output_size]
    return [tuple(c + o for c in centre) for o in offsets]


# --------------------------------------------------------------------------- ConvNeXt
class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: channels-last LayerNorm on NCHW."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def stochastic_depth(input, p, mode, training=True):  # noqa: A002 - torchvision's signature
    """torchvision.ops.stochastic_depth (wrapped for fx, as torchvision does)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    def __init__(self, p, mode):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        return stochastic_depth(x, self.p, self.mode, self.training)


class CNBlock(nn.Module):
    """torchvision.models.convnext.CNBlock."""

    def __init__(self, dim, sd_prob=0.1):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim),
            nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * 1e-6)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, x):
        result = self.layer_scale * self.block(x)
        result = self.stochastic_depth(result)
        result += x
        return result


def convnext(depths=(3, 3, 9, 3), dims=(4, 8, 8, 8)):
    """torchvision.models.convnext_tiny's trunk (``features``), narrow."""
    layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4),
                                             LayerNorm2d(dims[0], eps=1e-6))]
    for i, depth in enumerate(depths):
        layers.append(nn.Sequential(*[CNBlock(dims[i]) for _ in range(depth)]))
        if i + 1 < len(depths):
            layers.append(nn.Sequential(LayerNorm2d(dims[i], eps=1e-6),
                                        nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
    return nn.Sequential(*layers).eval()


def test_convnext_tiny_by_hand_and_measured():
    # stem 4 (jump 4); 3 blocks +6*4 each = 76; down +4 = 80 (j 8); 3 x 48 = 224; down +8
    # (j 16); 9 x 96 = 1096; down +16 (j 32); 3 x 192 = 1688.
    rf = receptive_field(convnext(), (1, 3, 224, 224))
    assert rf.size == (1688, 1688) and rf.stride == (32, 32) and not rf.is_global
    two_stages = convnext(depths=(3, 3))
    rf2 = assert_matches_measurement(two_stages, (1, 3, 320, 320),
                                     neighbours(receptive_field(two_stages, (1, 3, 320, 320))))
    assert rf2.size == (224, 224) and rf2.stride == (8, 8)
    assert any(r.kind == "LayerNorm" for r in rf2.layers)


def test_stochastic_depth_in_training_mode_is_element_wise():
    model = convnext(depths=(1,)).train()
    rf = receptive_field(model, (1, 3, 64, 64))
    assert rf.size == (28, 28) and rf.stride == (4, 4)


# ------------------------------------------------------------------------ ShuffleNetV2
def channel_shuffle(x, groups: int):
    """torchvision.models.shufflenetv2.channel_shuffle."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class InvertedResidual(nn.Module):
    """torchvision.models.shufflenetv2.InvertedResidual."""

    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        branch = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, bias=False, groups=inp), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch), nn.ReLU(True),
            nn.Conv2d(branch, branch, 3, stride, 1, bias=False, groups=branch),
            nn.BatchNorm2d(branch), nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch), nn.ReLU(True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def shufflenet_v2(repeats=(4, 8, 4), width=8):
    """torchvision.models.shufflenet_v2_x1_0's trunk: conv1, maxpool, stages 2-4, conv5."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU(True), nn.MaxPool2d(3, 2, 1)]
    c = width
    for n in repeats:
        layers += [InvertedResidual(c, 2 * width, 2)] + [
            InvertedResidual(2 * width, 2 * width, 1) for _ in range(n - 1)]
        c = 2 * width
    layers += [nn.Conv2d(c, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_shufflenet_v2_by_hand_and_measured():
    # conv1 3 (j2); maxpool 7 (j4); stage2: +8, +3x16 = 63 (j8); stage3: +16 +7x32 = 303
    # (j16); stage4: +32 +3x64 = 527 (j32).
    rf = receptive_field(shufflenet_v2(), (1, 3, 224, 224))
    assert rf.size == (527, 527) and rf.stride == (32, 32) and not rf.misaligned
    stage2 = shufflenet_v2(repeats=(4,))
    rf2 = assert_matches_measurement(stage2, (1, 3, 128, 128),
                                     neighbours(receptive_field(stage2, (1, 3, 128, 128))))
    assert rf2.size == (63, 63) and rf2.stride == (8, 8)


def test_merged_spatial_axes_are_named():
    class SpaceToDepth(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            return x.reshape(n, c * 2, h // 2, w)  # H is split: not a spatial axis any more

    with pytest.raises(DLSummaryError, match=r"split by 'reshape' \(reshape \(at test_rec"):
        receptive_field(SpaceToDepth(), (1, 2, 8, 8))


# ------------------------------------------------------------------------ EfficientNet
class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.SiLU(), nn.Sigmoid()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class MBConv(nn.Module):
    """torchvision.models.efficientnet.MBConv (expand, depthwise, SE, project, residual)."""

    def __init__(self, c_in, c_out, kernel, stride, expand, se=True):
        super().__init__()
        mid = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [nn.Conv2d(mid, mid, kernel, stride, (kernel - 1) // 2, groups=mid,
                             bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        if se:
            layers.append(SqueezeExcitation(mid, max(1, c_in // 4)))
        layers += [nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and c_in == c_out
        self.stochastic_depth = StochasticDepth(0.2, "row")

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


def efficientnet_b0(se=True, width=4):
    """torchvision.models.efficientnet_b0's trunk: the stem and the 7 MBConv stages."""
    stages = [(1, 3, 1, 1), (6, 3, 2, 2), (6, 5, 2, 2), (6, 3, 2, 3), (6, 5, 1, 3),
              (6, 5, 2, 4), (6, 3, 1, 1)]  # expand, kernel, stride, repeats
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                               nn.SiLU()]
    for expand, kernel, stride, repeats in stages:
        for r in range(repeats):
            layers.append(MBConv(width, width, kernel, stride if r == 0 else 1, expand, se))
    return nn.Sequential(*layers).eval()


def test_efficientnet_b0_is_global_and_without_se_finite():
    size = (1, 3, 64, 64)
    model = efficientnet_b0()
    rf = receptive_field(model, size)
    assert rf.is_global and str(rf).count("global") >= 1
    emp = empirical_receptive_field(model, size)
    assert emp.bbox == ((0, 64), (0, 64)), "squeeze-excitation: the whole image"
    # negative control: the same trunk without SE has a finite field, here measured
    plain = nn.Sequential(*list(efficientnet_b0(se=False))[:9])
    rf_plain = assert_matches_measurement(plain, (1, 3, 160, 160),
                                          neighbours(receptive_field(plain, (1, 3, 160, 160))))
    assert not rf_plain.is_global and rf_plain.stride == (16, 16)


# ------------------------------------------------------------------------- TF "SAME"
def get_same_padding(x: int, k: int, s: int, d: int) -> int:
    """timm.layers.padding.get_same_padding."""
    return max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)


def pad_same(x, k, s, d=(1, 1), value=0.0):
    """timm.layers.padding.pad_same: an ``if`` on the input's shape."""
    ih, iw = x.size()[-2:]
    pad_h = get_same_padding(ih, k[0], s[0], d[0])
    pad_w = get_same_padding(iw, k[1], s[1], d[1])
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2],
                  value=value)
    return x


class Conv2dSame(nn.Conv2d):
    """timm.layers.conv2d_same.Conv2dSame."""

    def forward(self, x):
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation,
                        self.groups)


@pytest.mark.parametrize("side", [64, 65])
def test_tf_same_padding_depends_on_the_input_size(side):
    model = nn.Sequential(Conv2dSame(3, 4, 3, 2), nn.ReLU(), Conv2dSame(4, 4, 5, 2),
                          Conv2dSame(4, 4, 3, 1)).eval()
    size = (1, 3, side, side)
    rf = assert_matches_measurement(model, size, neighbours(receptive_field(model, size)))
    assert rf.size == (3 + 8 + 8, 19) and rf.stride == (4, 4)
    # 64: pads (0, 1) then (1, 2) -> field starts at -(0 + 2*1 + 4*1); 65: (1, 1), (2, 2)
    assert rf.padding == ((6, 6) if side == 64 else (9, 9))


def test_tf_efficientnet_b0_stem_with_se_is_global():
    model = nn.Sequential(Conv2dSame(3, 4, 3, 2), MBConv(4, 4, 3, 1, 1)).eval()
    assert receptive_field(model, (1, 3, 33, 33)).is_global


# ------------------------------------------------------------------------------ HRNet
class HRFuse(nn.Module):
    """timm's HRNet with one two-branch module: high-res branch, a stride-2 transition to a
    low-res branch, and the fuse layers (1x1 conv + nn.Upsample; 3x3 stride-2 conv)."""

    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.transition = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), nn.BatchNorm2d(2 * c))
        self.branch0 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))
        self.branch1 = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, 1, 1), nn.ReLU(),
                                     nn.Conv2d(2 * c, 2 * c, 3, 1, 1))
        self.fuse_up = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c),
                                     nn.Upsample(scale_factor=2, mode="nearest"))
        self.fuse_down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False),
                                       nn.BatchNorm2d(2 * c))
        self.relu = nn.ReLU()
        self.head_lo = nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        x = self.stem(x)
        hi, lo = self.branch0(x), self.branch1(self.transition(x))
        y_hi = self.relu(hi + self.fuse_up(lo))
        y_lo = self.relu(self.fuse_down(hi) + lo)
        return y_hi + F.interpolate(self.head_lo(y_lo), size=y_hi.shape[-2:], mode="nearest")


def test_hrnet_fuse_layers_measured():
    model = HRFuse().eval()
    size = (1, 3, 128, 128)
    rf = assert_matches_measurement(model, size, neighbours(receptive_field(model, size),
                                                            (0, 1, 2)))
    assert rf.stride == (4, 4), "the high-resolution branch sets the output grid"


# ------------------------------------------------------------------------------ U-Nets
@pytest.mark.parametrize("decoder", ["transposed", "bilinear"])
def test_unet_either_decoder_measured(decoder):
    model = UNet(width=2, depth=2, decoder=decoder).eval()
    size = (1, 1, 96, 96)
    rf = assert_matches_measurement(model, size, [(40, 40), (41, 41), (40, 43), (47, 46)])
    assert rf.output_size == (96, 96) and rf.stride == (1, 1)
    assert rf.misaligned, "a U-Net's skip and decoder fields are not centred alike"


def test_fractional_stride_after_upsampling():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Upsample(scale_factor=4))
    rf = receptive_field(model, (1, 1, 33, 33))
    assert rf.stride == (Fraction(1, 2),) * 2 and rf.size == (3, 3)
    assert "1/2" in str(rf) and rf.to_dict()["stride"] == [0.5, 0.5]
    assert_matches_measurement(model, (1, 1, 33, 33), [(9, 9), (10, 11), (11, 12)])


@pytest.mark.parametrize("layer", [
    nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1),
    nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1, dilation=1),
    nn.PixelShuffle(2),
    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    nn.Upsample(scale_factor=2, mode="bicubic"),
    nn.Upsample(size=(27, 27), mode="nearest-exact"),
])
def test_upsampling_layers_measured(layer):
    c = 4 if isinstance(layer, nn.PixelShuffle) else 1
    model = nn.Sequential(nn.Conv2d(1, c, 3), layer, nn.Conv2d(1, 1, 3))
    size = (1, 1, 20, 20)
    rf = receptive_field(model, size)
    centre = [s // 2 for s in rf.output_size]
    indices = [tuple(x + o for x in centre) for o in range(3)]
    assert_matches_measurement(model, size, indices)


# ---------------------------------------------------------- shape ops, norms, reductions
def test_reduction_arguments_by_position_and_name():
    class Normalise(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.conv, self.how = nn.Conv2d(3, 4, 3), how

        def forward(self, x):
            y = self.conv(x)
            if self.how == "positional p":
                return y / y.norm(2, 1, keepdim=True)  # p=2, dim=1: over channels
            if self.how == "keyword":
                return y / y.norm(p=2, dim=1, keepdim=True)
            if self.how == "F.normalize":
                return F.normalize(y, 2.0, 1)
            return y - y.mean(-1, keepdim=True)  # along W: global along W only

    for how in ("positional p", "keyword", "F.normalize"):
        rf = receptive_field(Normalise(how), (1, 3, 16, 16))
        assert rf.size == (3, 3) and not rf.is_global, how
    rf = receptive_field(Normalise("mean W"), (1, 3, 16, 16))
    assert rf.size == (3, None), "control: a mean over W is global along W, not H"


def test_norm_layers_global_or_local():
    for norm, is_global in [(nn.GroupNorm(2, 4), True), (nn.InstanceNorm2d(4), True),
                            (nn.LocalResponseNorm(2), False), (nn.BatchNorm2d(4), False)]:
        model = nn.Sequential(nn.Conv2d(1, 4, 3), norm, nn.Conv2d(4, 1, 3)).eval()
        rf = receptive_field(model, (1, 1, 16, 16))
        assert rf.is_global == is_global, type(norm).__name__
        if is_global:
            assert type(norm).__name__ in " ".join(rf.notes)
            assert empirical_receptive_field(model, (1, 1, 16, 16)).bbox == ((0, 16), (0, 16))
        else:
            assert rf.size == (5, 5)


def test_shape_queries_and_pool_indices():
    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2, return_indices=True)

        def forward(self, x):
            y = self.pool(x)[0]
            return F.avg_pool2d(y, (y.shape[-2] // 4, y.size(-1) // 4))

    rf = receptive_field(Pools(), (1, 1, 32, 32))
    assert rf.size == (8, 8) and rf.stride == (8, 8)
    class GlobalPool1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 3)

        def forward(self, x):
            return F.avg_pool1d(self.conv(x), x.shape[-1] - 2)

    assert receptive_field(GlobalPool1d(), (1, 2, 20)).size == (20,)


def swish_like(x):
    return x * torch.sigmoid(x)


def shift(x):
    return torch.roll(x, 1, dims=-1)


fx.wrap("swish_like")  # opaque to fx, as a compiled or third-party function would be
fx.wrap("shift")


def test_custom_functions_probe_and_declaration():
    class Custom(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.conv, self.fn = nn.Conv2d(1, 1, 3), fn

        def forward(self, x):
            y = self.conv(x)
            return swish_like(y) if self.fn == "swish" else shift(y)  # globals: fx.wrap

    rf = receptive_field(Custom("swish"), (1, 1, 12, 12))
    assert rf.size == (3, 3) and "probe" in " ".join(rf.notes)
    with pytest.raises(DLSummaryError, match="not element-wise.*elementwise=") as info:
        receptive_field(Custom("shift"), (1, 1, 12, 12))
    assert "'shift'" in str(info.value)
    declared = receptive_field(Custom("shift"), (1, 1, 12, 12), elementwise=["shift"])
    assert declared.size == (3, 3), "a declared function is taken at its word"



def test_tensor_input_and_rank_checked():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    example = torch.randn(1, 3, 32, 32)
    assert receptive_field(model, example).size == (5, 5)
    with pytest.raises(DLSummaryError) as info:
        receptive_field(model, (3, 64, 64))  # no batch axis: not a 1-D field of 7
    assert "rank 4" in str(info.value) and "batch axis" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_global_prints_once():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1))
    text = str(receptive_field(model, (1, 1, 16, 16))).splitlines()[-1]
    assert "receptive field global" in text and "globalxglobal" not in text


def test_honest_errors():
    class Raises(nn.Module):
        def forward(self, x):
            raise RuntimeError("broken on purpose")

    with pytest.raises(DLSummaryError, match="forward raised RuntimeError .*broken on purpose"):
        receptive_field(Raises(), (1, 1, 8, 8))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(DLSummaryError, match="data-dependent control flow") as info:
        receptive_field(Branchy(), (1, 1, 8, 8))
    assert "x.sum() > 0" in str(info.value), "the user's line is named"

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lstm = nn.Conv1d(3, 4, 3), nn.LSTM(4, 4, batch_first=True)

        def forward(self, x):
            return self.lstm(self.conv(x).transpose(1, 2))[0]

    with pytest.raises(DLSummaryError, match=r"'lstm' \(torch.nn.modules.rnn.LSTM\)") as info:
        receptive_field(Recurrent(), (1, 3, 20))
    assert "getattr_1" not in str(info.value) and "the call 'transpose'" not in str(info.value)


def test_fallback_measures_when_the_analysis_refuses():
    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return torch.roll(self.conv(x), 1, dims=-1)

    with pytest.raises(DLSummaryError):
        receptive_field(Shifted(), (1, 1, 24, 24))
    rf = receptive_field(Shifted(), (1, 1, 24, 24), fallback="measure")
    assert rf.method == "measured" and "refused" in rf.notes[0]
    assert rf.size == (3, 3) and rf.stride == (1, 1)
    analytic = receptive_field(nn.Conv2d(1, 1, 3), (1, 1, 24, 24))
    assert analytic.method == "analytic"


# ------------------------------------------- more of the table: MobileNetV2, DenseNet, RegNet
class InvertedResidualV2(nn.Module):
    """torchvision.models.mobilenetv2.InvertedResidual (expand 1x1, depthwise 3x3, project)."""

    def __init__(self, c, stride, expand):
        super().__init__()
        mid = c * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                   nn.BatchNorm2d(mid), nn.ReLU6(), nn.Conv2d(mid, c, 1, bias=False),
                   nn.BatchNorm2d(c)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_v2(stages=None, width=2):
    """torchvision.models.mobilenet_v2's ``features`` (t, c, n, s settings), narrow."""
    settings = stages or [(1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2),
                          (6, 1, 1)]  # expand, repeats, stride
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.ReLU6()]
    for expand, repeats, stride in settings:
        layers += [InvertedResidualV2(width, stride if i == 0 else 1, expand)
                   for i in range(repeats)]
    layers.append(nn.Conv2d(width, 4 * width, 1, bias=False))
    return nn.Sequential(*layers).eval()


class DenseLayer(nn.Module):
    """torchvision.models.densenet._DenseLayer: BN-ReLU-1x1, BN-ReLU-3x3, concatenated."""

    def __init__(self, c_in, growth):
        super().__init__()
        self.layers = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, growth, 1),
                                    nn.BatchNorm2d(growth), nn.ReLU(),
                                    nn.Conv2d(growth, growth, 3, padding=1))

    def forward(self, features):
        return torch.cat([features, self.layers(features)], 1)


def densenet121(growth=2, blocks=(6, 12, 24, 16)):
    """torchvision.models.densenet121's ``features``: stem, dense blocks, transitions."""
    layers: list[nn.Module] = [nn.Conv2d(3, 4, 7, 2, 3, bias=False), nn.BatchNorm2d(4),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c = 4
    for i, n in enumerate(blocks):
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        if i + 1 < len(blocks):
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1), nn.AvgPool2d(2, 2)]
            c //= 2
    return nn.Sequential(*layers).eval()


class XBlock(nn.Module):
    """torchvision.models.regnet.ResBottleneckBlock (1x1, grouped 3x3 with the stride, 1x1)."""

    def __init__(self, c_in, c, stride):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c_in, c, 1), nn.ReLU(),
                               nn.Conv2d(c, c, 3, stride, 1, groups=2), nn.ReLU(),
                               nn.Conv2d(c, c, 1))
        self.proj = nn.Conv2d(c_in, c, 1, stride) if stride != 1 or c_in != c else None

    def forward(self, x):
        return torch.relu((x if self.proj is None else self.proj(x)) + self.f(x))


def regnet_x_400mf(depths=(1, 2, 7, 12), width=4):
    """torchvision.models.regnet_x_400mf's trunk: stem and four stages (stride 2 each)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 2, 1), nn.ReLU()]
    for depth in depths:
        layers += [XBlock(width, width, 2 if i == 0 else 1) for i in range(depth)]
    return nn.Sequential(*layers).eval()


# Derived by hand, as for the published ones above (r' = r + (k-1) j, j' = j s):
# MobileNetV2: stem 3 (j2); +4; +4 +8 = 19 (j4); +8 +2x16 = 59 (j8); +16 +3x32 = 171 (j16);
#   +3x32 = 267; +32 +2x64 = 427 (j32); +64 = 491 (Araujo et al.'s published value).
# DenseNet-121: 7 (j2), pool 11 (j4); 6 x 8 = 59; transition +4 = 63 (j8); 12 x 16 = 255;
#   +8 = 263 (j16); 24 x 32 = 1031; +16 = 1047 (j32); 16 x 64 = 2071.
# RegNetX-400MF: stem 3 (j2); +4 = 7 (j4); +8 +16 = 31 (j8); +16 +6x32 = 239 (j16);
#   +32 +11x64 = 975 (j32).
@pytest.mark.parametrize("name, build, size", [
    ("mobilenet_v2", mobilenet_v2, 491),
    ("densenet121", densenet121, 2071),
    ("regnet_x_400mf", regnet_x_400mf, 975),
])
def test_more_published_trunks(name, build, size):
    rf = receptive_field(build(), (1, 3, 224, 224))
    assert rf.size == (size, size) and rf.stride == (32, 32), name
    assert not rf.misaligned, name


@pytest.mark.parametrize("build", [
    lambda: mobilenet_v2([(1, 1, 1), (6, 2, 2), (6, 3, 2)]),
    lambda: densenet121(blocks=(3, 2)),
    lambda: regnet_x_400mf((1, 2)),
])
def test_more_trunks_measured(build):
    model = build()
    size = (1, 3, 128, 128)
    assert_matches_measurement(model, size, neighbours(receptive_field(model, size)))


def test_channels_last_mean_without_keepdim_is_local():
    class ChannelMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x).permute(0, 2, 3, 1).mean(-1).unsqueeze(1)

    rf = receptive_field(ChannelMean(), (1, 1, 12, 12))
    assert rf.size == (3, 3) and rf.output_size == (10, 10)


def test_flatten_and_back_and_attention():
    class Tokens(nn.Module):
        """Spatial axes flattened into tokens, then back (a ViT-style hybrid block)."""

        def __init__(self, attend):
            super().__init__()
            self.conv, self.qkv, self.attend = nn.Conv2d(3, 8, 3), nn.Linear(8, 24), attend

        def forward(self, x):
            y = self.conv(x)
            b, c, h, w = y.shape
            tokens = y.flatten(2).transpose(1, 2)
            if self.attend:
                q, k, v = self.qkv(tokens).chunk(3, dim=-1)
                tokens = (q @ k.transpose(-2, -1)).softmax(-1) @ v
            return tokens.transpose(1, 2).reshape(b, c, h, w) + y

    assert receptive_field(Tokens(attend=False), (1, 3, 16, 16)).size == (3, 3)
    rf = receptive_field(Tokens(attend=True), (1, 3, 16, 16))
    assert rf.is_global, "attention over all tokens sees the whole image"
    emp = empirical_receptive_field(Tokens(attend=True), (1, 3, 16, 16))
    assert emp.bbox == ((0, 16), (0, 16))


# ------------------------------------------------------------------------ Inception v3
def basic_conv(c_in, kernel=1, stride=1, padding=0):
    """torchvision.models.inception.BasicConv2d (2 output channels: geometry only)."""
    return nn.Sequential(nn.Conv2d(c_in, 2, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(2), nn.ReLU())


def conv_1x7(kind="1x7"):
    return basic_conv(2, (1, 7), padding=(0, 3)) if kind == "1x7" else basic_conv(
        2, (7, 1), padding=(3, 0))


class InceptionBlock(nn.Module):
    """torchvision's InceptionA/B/C/D/E: branches concatenated along channels."""

    def __init__(self, kind, c_in):
        super().__init__()
        self.kind = kind
        pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), basic_conv(c_in))
        if kind == "A":
            branches = [basic_conv(c_in), nn.Sequential(basic_conv(c_in), basic_conv(2, 5, 1, 2)),
                        nn.Sequential(basic_conv(c_in), basic_conv(2, 3, 1, 1),
                                      basic_conv(2, 3, 1, 1)), pool]
        elif kind == "B":
            branches = [basic_conv(c_in, 3, 2), nn.Sequential(
                basic_conv(c_in), basic_conv(2, 3, 1, 1), basic_conv(2, 3, 2)),
                nn.MaxPool2d(3, 2)]
        elif kind == "C":
            branches = [basic_conv(c_in),
                        nn.Sequential(basic_conv(c_in), conv_1x7(), conv_1x7("7x1")),
                        nn.Sequential(basic_conv(c_in), conv_1x7("7x1"), conv_1x7(),
                                      conv_1x7("7x1"), conv_1x7()), pool]
        elif kind == "D":
            branches = [nn.Sequential(basic_conv(c_in), basic_conv(2, 3, 2)),
                        nn.Sequential(basic_conv(c_in), conv_1x7(), conv_1x7("7x1"),
                                      basic_conv(2, 3, 2)), nn.MaxPool2d(3, 2)]
        else:  # E: the 3x3 branches end in a (1x3, 3x1) pair, concatenated
            branches = [basic_conv(c_in), basic_conv(c_in),
                        nn.Sequential(basic_conv(c_in), basic_conv(2, 3, 1, 1)), pool]
            self.pair_a = nn.ModuleList([basic_conv(2, (1, 3), padding=(0, 1))
                                         for _ in range(2)])
            self.pair_b = nn.ModuleList([basic_conv(2, (3, 1), padding=(1, 0))
                                         for _ in range(2)])
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        outs = [b(x) for b in self.branches]
        if self.kind == "E":
            outs[1] = torch.cat([self.pair_a[0](outs[1]), self.pair_b[0](outs[1])], 1)
            outs[2] = torch.cat([self.pair_a[1](outs[2]), self.pair_b[1](outs[2])], 1)
        return torch.cat(outs, 1)


def inception_v3(blocks="AAABCCCCDEE"):
    """torchvision.models.inception_v3's trunk (Conv2d_1a .. Mixed_7c)."""
    layers: list[nn.Module] = [basic_conv(3, 3, 2), basic_conv(2, 3), basic_conv(2, 3, 1, 1),
                               nn.MaxPool2d(3, 2), basic_conv(2), basic_conv(2, 3),
                               nn.MaxPool2d(3, 2)]
    c = 2
    out_channels = {"A": lambda c: 8, "B": lambda c: 4 + c, "C": lambda c: 8,
                    "D": lambda c: 4 + c, "E": lambda c: 12}
    for kind in blocks:
        layers.append(InceptionBlock(kind, c))
        c = out_channels[kind](c)
    return nn.Sequential(*layers).eval()


def test_inception_v3_published_and_measured():
    # stem: 3, 7, 11 (j2), pool 15 (j4), 15, 23, pool 31 (j8); Mixed_5b-d +32 each = 127;
    # 6a +32 = 159 (j16); 6b-e +192 each = 927; 7a +128 = 1055 (j32); 7b, 7c +128 each =
    # 1311, the published value (Araujo et al., Distill 2019).
    rf = receptive_field(inception_v3(), (1, 3, 299, 299))
    assert rf.size == (1311, 1311) and rf.stride == (32, 32) and not rf.misaligned
    trunk = inception_v3("AB")
    size = (1, 3, 299, 299)
    rf_trunk = assert_matches_measurement(trunk, size, neighbours(receptive_field(trunk, size)))
    assert rf_trunk.size == (127 - 64 + 32, 127 - 64 + 32) and rf_trunk.stride == (16, 16)


def test_class_token_and_window_attention():
    class ViT(nn.Module):
        """Patch embedding, a class token concatenated before the tokens, attention."""

        def __init__(self):
            super().__init__()
            self.patch, self.norm = nn.Conv2d(3, 8, 4, 4), nn.LayerNorm(8)
            self.cls = nn.Parameter(torch.zeros(1, 1, 8))

        def forward(self, x):
            y = self.patch(x)
            n, c, h, w = y.shape
            t = torch.cat([self.cls.expand(n, -1, -1), y.reshape(n, c, h * w).permute(0, 2, 1)],
                          dim=1)
            q = self.norm(t)
            return ((q @ q.transpose(1, 2)).softmax(-1) @ q)[:, 0]

    assert receptive_field(ViT(), (1, 3, 32, 32)).is_global

    class Windows(nn.Module):
        """Swin-style attention within 4x4 windows: a windowed field, refused, not global."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            b, c, h, w = y.shape
            t = y.permute(0, 2, 3, 1).view(b, h // 4, 4, w // 4, 4, c)
            t = t.permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, c)
            t = (t @ t.transpose(1, 2)).softmax(-1) @ t
            return t.view(b, h // 4, w // 4, 4, 4, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)

    with pytest.raises(DLSummaryError, match="windowed field"):
        receptive_field(Windows(), (1, 3, 16, 16))
    measured = empirical_receptive_field(Windows(), (1, 3, 16, 16), (8, 8))
    assert measured.size == (6, 6), "control: the measured field is the window, not global"


def test_named_tuple_results_and_constants_like():
    class MaxOverChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.max(dim=1, keepdim=True).values + torch.zeros_like(y[:, :1])

    rf = receptive_field(MaxOverChannels(), (1, 1, 10, 10))
    assert rf.size == (3, 3) and not rf.notes


class SpaceToDepth(nn.Module):
    """timm.layers.space_to_depth.SpaceToDepth (TResNet's stem)."""

    def __init__(self, block=4):
        super().__init__()
        self.bs = block

    def forward(self, x):
        n, c, h, w = x.size()
        x = x.view(n, c, h // self.bs, self.bs, w // self.bs, self.bs)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * self.bs * self.bs, h // self.bs, w // self.bs)


class DepthToSpace(nn.Module):
    """timm.layers.space_to_depth.DepthToSpace: PixelShuffle written with view/permute."""

    def __init__(self, block=2):
        super().__init__()
        self.bs = block

    def forward(self, x):
        n, c, h, w = x.size()
        x = x.view(n, self.bs, self.bs, c // (self.bs ** 2), h, w)
        x = x.permute(0, 3, 4, 1, 5, 2).contiguous()
        return x.view(n, c // (self.bs ** 2), h * self.bs, w * self.bs)


def test_space_to_depth_and_back():
    tresnet_stem = nn.Sequential(SpaceToDepth(), nn.Conv2d(48, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, padding=1))
    rf = assert_matches_measurement(tresnet_stem, (1, 3, 64, 64), [(8, 8), (9, 9), (8, 10)])
    assert rf.size == (20, 20) and rf.stride == (4, 4), "4 + 2 x 2 x 4: blocks of 4 pixels"
    round_trip = nn.Sequential(SpaceToDepth(), DepthToSpace(4), nn.Conv2d(3, 3, 3))
    assert receptive_field(round_trip, (1, 3, 64, 64)).size == (3, 3), "identity, then 3x3"
    upsampling = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DepthToSpace(), nn.Conv2d(2, 2, 3))
    rf_up = assert_matches_measurement(upsampling, (1, 3, 32, 32), [(20, 20), (21, 22), (22, 21)])
    assert rf_up.stride == (Fraction(1, 2),) * 2
