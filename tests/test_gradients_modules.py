"""check_module_gradients on the models people have: a small U-Net (full check, with a
planted backward bug as control), PyTorch's loss convention with a target, integer
token ids, several forward arguments, the fast mode's headline, and the progress bar."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlsummary import DLSummaryError, check_module_gradients

F64 = torch.float64


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class TinyUNet(nn.Module):
    """A three-level U-Net of 7,479 parameters for 3x16x16 inputs (skip connections by
    concatenation, transposed convolutions up)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = _block(3, 4), _block(4, 8), _block(8, 16)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(16, 8, 2, stride=2), _block(16, 8)
        self.up1, self.dec1 = nn.ConvTranspose2d(8, 4, 2, stride=2), _block(8, 4)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class _LeakyGradient(torch.autograd.Function):
    """Identity forward; backward lets 10% too much gradient through (vmap-able)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 1.1 * g


class BrokenBottleneck(TinyUNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = _LeakyGradient.apply(self.mid(self.pool(e2)))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


@pytest.mark.slow
def test_full_check_of_a_unet_passes_and_a_planted_bug_fails() -> None:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    assert sum(p.numel() for p in model.parameters()) == 7479
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    report = check_module_gradients(model, None, x)
    assert report.passed, str(report)
    assert report.evaluations < 2 * 7479  # screened: about one evaluation per parameter
    broken = BrokenBottleneck().eval()
    broken.load_state_dict(model.state_dict())
    bad = check_module_gradients(broken, None, x)
    failed = {t.name for t in bad.tensors if not t.passed}
    upstream = {n for n, _ in model.named_parameters()
                if n.startswith(("enc1", "enc2", "mid"))}
    assert failed <= upstream  # no false alarm downstream of the wrong backward
    # every parameter whose gradient flows only through it fails; enc1's (and possibly
    # enc2's) gradients come mostly through the skip connections, so their error can be
    # below the tolerance
    assert {n for n in upstream if n.startswith("mid")} <= failed


def test_loss_fn_gets_the_output_and_the_target() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    report = check_module_gradients(model, nn.CrossEntropyLoss(), x, target=y)
    assert report.passed, str(report)
    # the loss must see the target: the gradient differs from the one with another target
    other = check_module_gradients(model, nn.CrossEntropyLoss(), x, target=torch.zeros_like(y))
    assert report.tensors[-1].gradient_norm != other.tensors[-1].gradient_norm
    with pytest.raises(DLSummaryError, match="target="):
        check_module_gradients(model, nn.CrossEntropyLoss(), x, y)  # y is not an input


class Tagger(nn.Module):
    """Token ids and a padding mask: forward(ids, mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.embed(ids)) * mask.unsqueeze(-1)
        return self.out(hidden).sum(1)


def test_integer_token_ids_and_a_mask() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (3, 7), generator=g)
    mask = torch.rand(3, 7, generator=g) < 0.7
    report = check_module_gradients(Tagger(), None, ids, mask)
    assert report.passed, str(report)
    embed = next(t for t in report.tensors if t.name == "embed.weight")
    assert embed.compared == 20 * 6
    assert ids.dtype == torch.int64  # inputs are left as they were


def test_fast_headline_sets_gradients_of_about_zero_apart() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU is off: only the last bias has a gradient
    report = check_module_gradients(model, None, torch.randn(5, 4), fast=True)
    assert set(report.below_tolerance()) == {"0.weight", "0.bias", "2.weight"}
    text = str(report)
    assert "probability <= 1.0e+00" not in text
    assert "about 0" in text and "0.weight" in text
    headline = next(line for line in text.splitlines() if "missed with probability" in line)
    assert "1 tensor;" in headline and "2.bias" in headline  # stated for the rest
    # control: with every unit on, no tensor is set apart
    with torch.no_grad():
        model[0].bias.fill_(100.0)
    assert check_module_gradients(model, None, torch.randn(5, 4), fast=True) \
        .below_tolerance() == ()


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Linear(30, 3)
    x = torch.randn(2, 30)
    check_module_gradients(model, None, x)
    assert capsys.readouterr().err == ""
    check_module_gradients(model, None, x, progress=True)
    assert "eval" in capsys.readouterr().err
