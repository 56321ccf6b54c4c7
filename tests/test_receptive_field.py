"""Tests for dlsummary.receptive_field: published architectures, analytic vs measured
footprints (hypothesis), multi-path graphs, global outputs, and the errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dlsummary.errors import DLSummaryError

# from the module itself: the package's lazy export of the name `receptive_field` can be
# shadowed by the submodule of the same name (reported to the lead).
from dlsummary.receptive_field import (
    EmpiricalReceptiveField,
    ReceptiveField,
    empirical_receptive_field,
    receptive_field,
)


# ----------------------------------------------------------- torchvision-faithful models
# torchvision is not installed; these reproduce its layer geometry (kernel, stride,
# padding, dilation, block structure) exactly; channel widths are cut where geometry does
# not depend on them, to keep the tests fast.
def vgg16(width: int = 4) -> nn.Module:
    """torchvision.models.vgg16: config D, 3x3 convs with padding 1, 2x2 max-pools."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
           512, 512, 512, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = max(1, v // 64) * width
            layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = out
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(nn.Linear(c * 49, 10), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(10, 10))

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.avgpool, self.classifier = (
                model.features, model.avgpool, model.classifier)

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    return VGG()


def alexnet(width: int = 4) -> nn.Module:
    """torchvision.models.alexnet's ``features``."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(w, w, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(w, w, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(w, w, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(w, w, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)  # reused twice, as in torchvision
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False),
                                         nn.BatchNorm2d(c))
                           if stride != 1 or c_in != c else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: stride on the 3x3 conv), or the original
    ResNet v1 (stride on the first 1x1 conv) with ``stride_in_1x1=True``."""

    def __init__(self, c_in: int, c: int, stride: int, stride_in_1x1: bool = False):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(c_in, c, 1, s1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, s3, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False),
                                         nn.BatchNorm2d(c))
                           if stride != 1 or c_in != c else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet's structure (stem, four stages, avgpool, fc)."""

    def __init__(self, block: str, layers: list[int], width: int = 2,
                 stride_in_1x1: bool = False, head: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        for i, n in enumerate(layers):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                if block == "basic":
                    blocks.append(BasicBlock(width, width, stride))
                else:
                    blocks.append(Bottleneck(width, width, stride, stride_in_1x1))
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = head
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if not self.head:
            return x
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# Published receptive fields, each re-derived by hand (r' = r + (k-1) j, j' = j s):
# VGG16 conv5_3: 1 + 2(2+4+12+24+48) convs + (1+2+4+8) pools = 196, jump 16; pool5 212.
# AlexNet conv5: 11, 19, 51, 67, 99, 131, 163 (jump 16); pool5 163 + 2*16 = 195 (jump 32).
# ResNet-50 v1 (stride on the 1x1): 11 after the stem, +24 layer1, +16*4 layer2,
#   +32*6 layer3, +64*3 layer4 = 483 (Araujo et al., Distill 2019). torchvision's v1.5
#   (stride on the 3x3) loses (k-1)*j on each stride-2 block: 483 - 8 - 16 - 32 = 427.
# ResNet-101 v1: 99 + 23*32 + 3*64 = 1027 (published); torchvision v1.5: 971.
# ResNet-18 (torchvision): 11 + 32 + (8+16+32) + (16+32+64) + (32+64+128) = 435.
@pytest.mark.parametrize("name, model, size, stride", [
    ("vgg16 conv5_3", lambda: vgg16().features[:-2], 196, 16),
    ("vgg16 pool5", lambda: vgg16().features, 212, 32),
    ("alexnet conv5", lambda: alexnet()[:-1], 163, 16),
    ("alexnet pool5", lambda: alexnet(), 195, 32),
    ("resnet18", lambda: ResNet("basic", [2, 2, 2, 2], head=False), 435, 32),
    ("resnet50 torchvision v1.5", lambda: ResNet("bottleneck", [3, 4, 6, 3], head=False), 427,
     32),
    ("resnet50 v1", lambda: ResNet("bottleneck", [3, 4, 6, 3], stride_in_1x1=True, head=False),
     483, 32),
    ("resnet101 v1", lambda: ResNet("bottleneck", [3, 4, 23, 3], stride_in_1x1=True,
                                    head=False), 1027, 32),
    ("resnet101 torchvision v1.5", lambda: ResNet("bottleneck", [3, 4, 23, 3], head=False), 971,
     32),
])
def test_published_architectures(name, model, size, stride):
    rf = receptive_field(model(), (1, 3, 224, 224))
    assert rf.size == (size, size), f"{name}: {rf.size} != published {size}"
    assert rf.stride == (stride, stride), name
    assert not rf.is_global and not rf.misaligned, name


def test_full_classifiers_are_global():
    for model in (vgg16(), ResNet("basic", [2, 2, 2, 2])):
        rf = receptive_field(model, (1, 3, 224, 224))
        assert rf.is_global and rf.size == (None, None)
        assert "global" in str(rf)


def test_measured_footprint_matches_resnet18_interior():
    model = ResNet("basic", [2, 2, 1, 1], width=1, head=False)
    rf = receptive_field(model, (1, 3, 320, 320))
    emp = empirical_receptive_field(model, (1, 3, 320, 320), (5, 5))
    spans = rf.input_coordinates((5, 5))
    assert emp.bbox == tuple((s.start, s.stop) for s in spans)


CNN3 = nn.Sequential(
    nn.Conv2d(3, 4, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(4, 16, kernel_size=5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, kernel_size=7, dilation=2, padding=3), nn.ReLU(),
)


def test_cnn3_table_and_coordinates():
    rf = receptive_field(CNN3, (1, 3, 1024, 1024))
    assert [r.size[0] for r in rf.layers] == [3, 4, 12, 16, 112]
    assert [r.jump[0] for r in rf.layers] == [1, 2, 4, 8, 8]
    assert rf.size == (112, 112) and rf.stride == (8, 8) and rf.padding == (29, 29)
    assert rf.output_size == (122, 122)
    assert rf.input_coordinates((0, 3))[1] == (-5, 107, 50.5)
    assert rf.input_coordinates((0, 0), clip=True)[0] == (0, 83, 41.0)
    d = rf.to_dict()
    assert d["size"] == [112, 112] and len(d["layers"]) == 5
    assert "112x112" in str(rf) and "MaxPool2d" in str(rf)


def test_one_and_three_dimensional():
    m1 = nn.Sequential(nn.Conv1d(1, 2, 5, stride=2), nn.MaxPool1d(3, ceil_mode=True),
                       nn.Conv1d(2, 2, 3, dilation=4))
    rf = receptive_field(m1, (2, 1, 300))
    assert rf.size == (5 + 2 * 2 + 2 * 4 * 6,)
    emp = empirical_receptive_field(m1, (2, 1, 300), (10,))
    span = rf.input_coordinates((10,))[0]
    assert emp.bbox == ((span.start, span.stop),)
    m3 = nn.Sequential(nn.Conv3d(1, 1, (3, 5, 1), stride=(1, 2, 1)), nn.AvgPool3d(2))
    rf3 = receptive_field(m3, (1, 1, 16, 16, 16))
    assert rf3.size == (4, 7, 2) and rf3.stride == (2, 4, 2)


def test_same_padding_asymmetric_pad_crop_groups_and_reuse():
    conv = nn.Conv2d(2, 2, 3, padding=1, groups=2)

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.pad = nn.ZeroPad2d((3, 0, 1, 0))
            self.same = nn.Conv2d(2, 2, 4, padding="same", dilation=2)
            self.conv = conv

        def forward(self, x):
            x = self.conv(self.conv(self.same(self.pad(x))))
            return x[:, :, 2:, 1:]

    model = Reuse()
    rf = receptive_field(model, (1, 2, 40, 40))
    assert rf.size == (7 + 4, 7 + 4)
    emp = empirical_receptive_field(model, (1, 2, 40, 40), (12, 9))
    assert emp.bbox == tuple((s.start, s.stop) for s in rf.input_coordinates((12, 9)))
    assert sum(r.name == "conv" for r in rf.layers) == 2, "a reused module appears per use"


def test_concat_and_global_variants():
    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 1, 1)
            self.b = nn.Conv2d(1, 1, 5, padding=2)
            self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(1, 1, 3, padding=1))

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)

    rf = receptive_field(Inception(), (1, 1, 30, 30))
    assert rf.size == (5, 5) and not rf.misaligned

    class SE(nn.Module):  # squeeze-and-excitation: a gate computed from the whole image
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.conv(x)
            gate = torch.sigmoid(self.fc(y.mean((2, 3))))
            return y * gate[:, :, None, None]

    assert receptive_field(SE(), (1, 1, 20, 20)).is_global
    rows = receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveMaxPool2d((1, 5))),
                           (1, 1, 12, 12))
    assert rows.size == (None, 3 + 1) and rows.is_global, "global along H only"


def test_misaligned_paths_are_reported():
    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.conv(x) + x[:, :, :-2, :-2]  # shortcut not centred on the conv

    rf = receptive_field(Crop(), (1, 1, 10, 10))
    assert rf.misaligned and "misaligned" in str(rf)


def test_does_not_change_the_model():
    model = ResNet("basic", [1, 1, 1, 1], head=True).train()
    state = copy.deepcopy(model.state_dict())
    receptive_field(model, (1, 3, 64, 64))
    empirical_receptive_field(nn.Sequential(*list(model.children())[:4]), (1, 3, 64, 64))
    assert model.training
    assert isinstance(model.maxpool, nn.MaxPool2d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_empirical_result_object():
    emp = empirical_receptive_field(CNN3, (1, 3, 128, 128))
    assert isinstance(emp, EmpiricalReceptiveField)
    assert emp.size == (112, 112) and emp.mask.shape == (128, 128)
    assert emp.to_dict()["size"] == [112, 112] and "112x112" in str(emp)
    import matplotlib

    matplotlib.use("Agg")
    assert emp.plot() is not None


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("bad, needle", [
    (nn.Sequential(nn.Conv1d(1, 4, 3), nn.LSTM(4, 4)), "'1' (torch.nn.modules.rnn.LSTM)"),
    (nn.Sequential(nn.Conv2d(1, 1, 3), nn.Fold((4, 4), 2)), "'1' (torch.nn.modules.fold.Fold)"),
    (nn.Sequential(nn.Conv2d(1, 1, 3), nn.RNN(14, 4)), "'1' (torch.nn.modules.rnn.RNN)"),
])
def test_unsupported_modules_are_named(bad, needle):
    with pytest.raises(DLSummaryError, match="Supported") as info:
        receptive_field(bad, (1, 1, 16) if isinstance(bad[0], nn.Conv1d) else (1, 1, 16, 16))
    assert needle in str(info.value)


def test_attention_is_named():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    with pytest.raises(DLSummaryError, match=r"'attn' \(torch.nn.modules.activation.Multihead"):
        receptive_field(Attn(), (1, 4, 4))


def test_bad_inputs():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(DLSummaryError, match="could not trace Branchy"):
        receptive_field(Branchy(), (1, 1, 8, 8))
    with pytest.raises(DLSummaryError, match="needs a torch.nn.Module"):
        receptive_field("resnet", (1, 3, 8, 8))
    with pytest.raises(DLSummaryError, match=r"\(N, C, \*spatial\)"):
        receptive_field(CNN3, (3, 8))
    with pytest.raises(DLSummaryError, match="input of shape"):
        receptive_field(CNN3, (1, 5, 64, 64))  # wrong channel count
    with pytest.raises(DLSummaryError, match="spatial dim"):
        receptive_field(CNN3, (1, 3, 64, 64)).input_coordinates((0,))
    with pytest.raises(DLSummaryError, match="outside"):
        receptive_field(CNN3, (1, 3, 64, 64)).input_coordinates((0, 99))
    with pytest.raises(DLSummaryError, match="output_index"):
        empirical_receptive_field(CNN3, (1, 3, 64, 64), (99, 0))
    with pytest.raises(DLSummaryError, match="flattened or merged but not mixed"):
        receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten()), (1, 1, 8, 8))


# ------------------------------------------------------- property: analytic == measured
@st.composite
def networks(draw):
    """A random 1-D stack of convs, pools, residual blocks and concat blocks."""
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "pool", "residual", "concat", "pad", "upsample",
                                     "transposed", "channels_last"]))
        k = draw(st.integers(1, 5))
        d = draw(st.integers(1, 3))
        if kind == "conv":
            s = draw(st.integers(1, 3))
            p = draw(st.integers(0, 2))
            layers += [nn.Conv1d(2, 2, k, stride=s, padding=p, dilation=d,
                                 groups=draw(st.sampled_from([1, 2]))), nn.ReLU()]
        elif kind == "pool":
            k = max(k, 2)
            s = draw(st.integers(1, k))
            p = draw(st.integers(0, k // 2))
            pool = draw(st.sampled_from(["max", "avg"]))
            ceil = draw(st.booleans())
            layers.append(nn.MaxPool1d(k, s, p, dilation=1 if 2 * p > k else d, ceil_mode=ceil)
                          if pool == "max" else nn.AvgPool1d(k, s, p, ceil_mode=ceil))
        elif kind == "residual":
            layers.append(_Residual(2 * draw(st.integers(0, 2)) + 1, d,
                                    draw(st.integers(1, 2))))
        elif kind == "concat":
            layers.append(_Concat(draw(st.integers(0, 2)), draw(st.integers(0, 2))))
        elif kind == "upsample":
            layers.append(nn.Upsample(scale_factor=draw(st.sampled_from([2, 4])),
                                      mode=draw(st.sampled_from(["nearest", "linear"]))))
        elif kind == "transposed":
            s = draw(st.integers(1, 3))
            layers.append(nn.ConvTranspose1d(2, 2, max(k, s), stride=s,
                                             padding=draw(st.integers(0, max(k, s) - 1))))
        elif kind == "channels_last":
            layers.append(_ChannelsLast())
        else:
            layers.append(nn.ConstantPad1d((draw(st.integers(0, 3)), draw(st.integers(0, 3))),
                                           0.0))
    return nn.Sequential(*layers)


class _ChannelsLast(nn.Module):
    """ConvNeXt's pattern in 1-D: channels moved last for LayerNorm and Linear, then back,
    via the shape arithmetic of a channel shuffle (size(), view, transpose)."""

    def __init__(self):
        super().__init__()
        self.norm, self.linear = nn.LayerNorm(2), nn.Linear(2, 2)

    def forward(self, x):
        n, c, length = x.size()
        y = self.linear(self.norm(x.permute(0, 2, 1))).permute(0, 2, 1)
        y = y.reshape(n, 2, c // 2, length).transpose(1, 2).contiguous()
        return y.view(n, -1, length)


class _Residual(nn.Module):
    def __init__(self, k: int, d: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, k, stride, padding=d * (k - 1) // 2, dilation=d)
        self.short = nn.Conv1d(2, 2, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv(x)) + self.short(x)


class _Concat(nn.Module):
    def __init__(self, half_a: int, half_b: int):
        super().__init__()
        self.a = nn.Conv1d(2, 1, 2 * half_a + 1, padding=half_a)
        self.b = nn.Conv1d(2, 1, 2 * half_b + 1, padding=half_b, dilation=1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


@pytest.mark.slow
@settings(max_examples=220, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_property_analytic_equals_measured(model):
    probe = receptive_field(model, (1, 2, 4096))
    size, jump, pad = probe.size[0], probe.stride[0], probe.padding[0]
    length = math.ceil(4 * (size + abs(pad) + jump)) + 8
    rf = receptive_field(model, (1, 2, length))
    assert rf.output_size == tuple(model(torch.zeros(1, 2, length)).shape[2:]), "shape formula"
    interior = [i for i in range(rf.output_size[0])
                if rf.input_coordinates((i,))[0].start >= 0
                and rf.input_coordinates((i,))[0].stop <= length]
    assert len(interior) >= 2, "the input is long enough for two interior outputs"
    i = interior[len(interior) // 2 - 1]
    first = empirical_receptive_field(model, (1, 2, length), (i,))
    second = empirical_receptive_field(model, (1, 2, length), (i + 1,))
    span, after = rf.input_coordinates((i,))[0], rf.input_coordinates((i + 1,))[0]
    assert first.bbox == ((span.start, span.stop),), f"footprint {first.bbox} vs {span}"
    assert second.bbox == ((after.start, after.stop),), f"next {second.bbox} vs {after}"
    assert first.size[0] <= rf.size[0], "the reported size is the maximum over outputs"
    lo, hi = rf.maps[0]
    if lo.period == hi.period == 1 and not rf.misaligned:  # the same field at every output
        assert first.size[0] == rf.size[0]
        assert second.bbox[0][0] - first.bbox[0][0] == rf.stride[0], "effective stride"


def test_receptive_field_is_a_dataclass():
    rf = receptive_field(nn.Conv2d(1, 1, 3), (1, 1, 5, 5))
    assert isinstance(rf, ReceptiveField)
    with pytest.raises(AttributeError):
        rf.size = (1, 1)  # type: ignore[misc]
