"""gradient_flow against direct measurements: retained gradients, hand-built dead and
saturated units, hooks and model state before and after."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlsummary import DLSummaryError, GradientFlow, gradient_flow
from dlsummary.gradflow import LayerCall, _norm

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def shared_stack(depth: int = 24, width: int = 16, act: type[nn.Module] = nn.Sigmoid,
                 n_in: int = 8) -> nn.Sequential:
    """mlpirate's construction: ``[Linear, act] * depth`` repeats the same two objects."""
    return nn.Sequential(nn.Linear(n_in, width), act(),
                         *[nn.Linear(width, width), act()] * depth, nn.Linear(width, 1))


def distinct_stack(depth: int, width: int, act: type[nn.Module], n_in: int = 8,
                   gain: float = 1.0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(n_in, width), act()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    net = nn.Sequential(*layers, nn.Linear(width, 1)).to(dtype)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(gain)
    return net


def tanh_mlp(depth: int = 10, width: int = 64, gain: float | None = None) -> nn.Sequential:
    """``depth`` Linear layers with tanh between them; PyTorch's default initialisation, or
    Xavier with ``gain`` (5/3 keeps tanh's backward gain near 1)."""
    layers: list[nn.Module] = [nn.Linear(32, width), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(width, 1))
    if gain is not None:
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=gain)
                nn.init.zeros_(m.bias)
    return net


class UNet(nn.Module):
    """A two-level U-Net (15k parameters): its bottleneck sees the smallest tensors."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.ReLU())

        self.enc1, self.enc2, self.bottleneck = block(3, c), block(c, 2 * c), block(2 * c, 2 * c)
        self.up2, self.dec2 = nn.ConvTranspose2d(2 * c, 2 * c, 2, stride=2), block(4 * c, c)
        self.up1, self.dec1 = nn.ConvTranspose2d(c, c, 2, stride=2), block(2 * c, c)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        b = self.bottleneck(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


def measure(model: nn.Module, x: torch.Tensor, **kwargs) -> GradientFlow:
    with gradient_flow(model, **kwargs) as flow:
        model(x).pow(2).mean().backward()
    return flow


def retained_norms(model: nn.Sequential, x: torch.Tensor) -> list[float]:
    """The reference: every layer output's gradient, retained and normed in float64."""
    outs = []
    h = x
    for layer in model:
        h = layer(h)
        h.retain_grad()
        outs.append(h)
    h.pow(2).mean().backward()
    return [o.grad.double().norm().item() for o in outs]


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules()) + sum(
        len(p._backward_hooks or {}) for p in model.parameters())


# -- what it measures -------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(depth=st.integers(1, 6), width=st.integers(2, 24), act=st.sampled_from(sorted(ACTIVATIONS)),
       batch=st.integers(1, 16), seed=st.integers(0, 10_000))
def test_grad_output_norms_match_retained_gradients(depth, width, act, batch, seed):
    torch.manual_seed(seed)
    net = distinct_stack(depth, width, ACTIVATIONS[act])
    x = torch.randn(batch, 8)
    flow = measure(net, x)
    net.zero_grad()
    expected = retained_norms(net, x)
    assert len(flow.layers) == len(net)
    for call, ref in zip(flow.layers, expected, strict=True):
        assert call.grad_output_norm == pytest.approx(ref, rel=1e-5, abs=1e-30)


def test_every_call_of_a_shared_module_is_reported():
    torch.manual_seed(0)
    net = shared_stack(depth=24)
    flow = measure(net, torch.randn(32, 8))
    linear_calls = [c for c in flow.layers if c.name == "2"]
    assert [c.call for c in linear_calls] == list(range(1, 25))
    assert all(c.calls == 24 and "called 24 times" in c.shared for c in linear_calls)
    assert "24 names" in linear_calls[0].shared
    assert any("2 (Linear) shared" in note for note in flow.notes)
    assert not flow.layers[0].shared and flow.layers[0].calls == 1


def test_parameter_gradient_is_this_pass_summed_over_calls():
    torch.manual_seed(0)
    net = shared_stack(depth=5)
    x = torch.randn(16, 8)
    net(x).sum().backward()  # a stale gradient already sits in .grad before the context
    flow = measure(net, x)
    net.zero_grad()
    net(x).pow(2).mean().backward()  # the same pass alone: autograd sums the 5 calls
    fresh = math.sqrt(net[2].weight.grad.norm() ** 2 + net[2].bias.grad.norm() ** 2)
    weight = math.sqrt(net[2].weight.detach().norm() ** 2 + net[2].bias.detach().norm() ** 2)
    for record in flow.layers[2:12:2]:  # the shared Linear's five calls
        assert record.param_grad_norm == pytest.approx(fresh, rel=1e-5)
        assert record.weight_norm == pytest.approx(weight, rel=1e-6)
        assert record.ratio == pytest.approx(fresh / weight, rel=1e-5)
    assert flow.layers[1].param_grad_norm is None and flow.layers[1].weight_norm is None


class _Halves(nn.Module):
    """Returns two outputs, the second half first: a node with several outputs."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.chunk(2, dim=1)
        return b, a


class _First(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0] * 3


def test_norms_match_with_in_place_activations_and_multi_output_layers():
    """The gradient of a layer's output as autograd has it, also when the next layer
    changes that output in place (ReLU(inplace=True)), and for the first of several
    outputs: checked against the same net built without in-place ops, whose outputs'
    gradients are retained."""
    torch.manual_seed(0)

    def build(inplace: bool) -> nn.Sequential:
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 8),
                             _Halves(), _First(), nn.Tanh())

    net, twin = build(True), build(False)
    twin.load_state_dict(net.state_dict())
    x = torch.randn(5, 6)
    flow = measure(net, x)
    outs, h = [], x
    for layer in twin:
        h = layer(h)
        first = h[0] if isinstance(h, tuple) else h
        first.retain_grad()
        outs.append(first)
    h.pow(2).mean().backward()
    expected = [o.grad.norm().item() for o in outs]
    assert expected[0] != pytest.approx(expected[1], rel=0.05)  # ReLU zeroes some gradient
    got = [c.grad_output_norm for c in flow.layers]
    assert got == pytest.approx(expected, rel=1e-5)


def test_saturation_is_measured_when_the_activation_is_called_with_keywords():
    torch.manual_seed(0)

    class KeywordCall(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.act = nn.Linear(4, 50), nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(input=self.lin(x) * 10)  # the hook gets no positional input

    net = KeywordCall()
    x = torch.randn(64, 4)
    flow = measure(net, x)
    s = torch.sigmoid(net.lin(x) * 10)
    exact = ((s * (1 - s)) < 0.0975 * 0.25).float().mean().item()
    assert 0.2 < exact < 0.9
    assert flow.layers[1].saturated_fraction == pytest.approx(exact, abs=1e-6)


def test_tiny_gradients_do_not_underflow():
    """mlpirate's gradients at the first layers are ~1e-22: a float32 norm returns 0."""
    torch.manual_seed(0)
    net = shared_stack(depth=24, width=32)
    x = torch.randn(64, 8)
    flow = measure(net, x)
    net64 = shared_stack(depth=24, width=32).double()
    net64.load_state_dict(net.state_dict())
    net64.zero_grad()
    expected = retained_norms(net64, x.double())
    assert expected[0] < 1e-15  # the regime where float32 squares underflow
    for call, ref in zip(flow.layers, expected, strict=True):
        assert call.grad_output_norm == pytest.approx(ref, rel=1e-3)
    assert flow.diagnosis == "vanishing" and flow.fold_change < 1e-12
    assert ("-fold per unit from the last layer call (#50, Linear) to #0 (0, Linear), over 25 "
            "layers") in flow.reason and flow.worst == 0


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-17, 2e-16, 3e-15, 1e-10, 1.0, 1e10, 1e20])
@pytest.mark.parametrize("hint", [None, 1e-25, 1.0, 1e25])
def test_norm_is_exact_across_magnitudes(scale, hint):
    t = torch.randn(300, 7, generator=torch.Generator().manual_seed(1)) * scale
    expected = t.double().norm().item()
    assert float(_norm(t, hint)) == pytest.approx(expected, rel=1e-5)
    assert float(_norm(torch.zeros(5))) == 0.0


def test_dead_and_saturated_fractions_match_hand_built_units():
    torch.manual_seed(0)
    lin = nn.Linear(4, 10)
    with torch.no_grad():
        lin.bias[:3] = -100.0   # pre-activation < 0 for every input: dead ReLU units
        lin.bias[3:] = 100.0
        lin.weight.mul_(0.01)
    net = nn.Sequential(lin, nn.ReLU(), nn.Linear(10, 10), nn.Sigmoid(), nn.Linear(10, 1))
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].bias.copy_(torch.tensor([20.0] * 4 + [0.0] * 6))  # 4 of 10 saturated
    flow = measure(net, torch.randn(50, 4))
    assert flow.layers[1].dead_fraction == pytest.approx(0.3)
    assert flow.layers[3].saturated_fraction == pytest.approx(0.4)
    assert flow.layers[0].dead_fraction is None and flow.layers[1].saturated_fraction is None
    assert any("dead units: 30.0%" in n for n in flow.notes)


def test_tanh_saturation_threshold_is_the_sigmoid_one():
    """tanh(x) = 2 sigmoid(2x) - 1: the same inputs count as saturated for both."""
    x = torch.linspace(-6, 6, 401)[:, None]  # <= 512 examples: counted exactly
    net = nn.Sequential(nn.Linear(1, 1), nn.Tanh())
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[0].bias.zero_()
    seq = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid())
    with torch.no_grad():
        seq[0].weight.fill_(1.0)
        seq[0].bias.zero_()
    sig = measure(seq, x)
    tanh = measure(net, x)  # tanh(x/2) = 2 sigmoid(x) - 1
    assert sig.layers[1].saturated_fraction == pytest.approx(tanh.layers[1].saturated_fraction,
                                                             abs=2 / 401)
    derivative = torch.sigmoid(x) * (1 - torch.sigmoid(x))
    assert sig.layers[1].saturated_fraction == pytest.approx(
        (derivative < 0.0975 * 0.25).float().mean().item(), abs=2 / 401)


def test_saturation_on_a_large_sorted_batch_is_estimated_evenly():
    x = torch.linspace(-8, 8, 4096)[:, None]  # sorted: a first-rows sample would be biased
    seq = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid())
    with torch.no_grad():
        seq[0].weight.fill_(1.0)
        seq[0].bias.zero_()
    s = torch.sigmoid(x)
    exact = ((s * (1 - s)) < 0.0975 * 0.25).float().mean().item()
    assert measure(seq, x).layers[1].saturated_fraction == pytest.approx(exact, abs=0.01)


def test_saturation_of_a_wide_layer_is_estimated_from_a_spread_sample():
    """128 units, 4,096 examples sorted from saturated to not: about 16k values are read
    (128 evenly spaced examples), and the estimate stays within a percent point."""
    from dlsummary import gradflow

    ramp = torch.linspace(-10, 10, 4096)[:, None]
    x = ramp + 0.5 * torch.randn(4096, 128, generator=torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Identity(), nn.Sigmoid())
    s = torch.sigmoid(x)
    exact = ((s * (1 - s)) < 0.0975 * 0.25).float().mean().item()
    flow = measure(net, x.requires_grad_())
    assert flow.layers[1].saturated_fraction == pytest.approx(exact, abs=0.01)
    examples = max(gradflow.SATURATION_EXAMPLES, gradflow.SATURATION_VALUES // 128)
    first_rows = ((s[:examples] * (1 - s[:examples])) < 0.0975 * 0.25).float().mean().item()
    assert abs(first_rows - exact) > 0.3  # control: the first rows alone would be far off


# -- diagnosis --------------------------------------------------------------------------
def test_diagnoses_vanishing_exploding_and_healthy():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    vanishing = measure(distinct_stack(20, 32, nn.Sigmoid), x)
    healthy_net = distinct_stack(20, 32, nn.ReLU)
    for m in healthy_net:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    healthy = measure(healthy_net, x)
    exploding = measure(distinct_stack(20, 32, nn.Identity, gain=4.0), x)
    assert vanishing.diagnosis == "vanishing" and "falls" in vanishing.reason
    assert healthy.diagnosis == "healthy" and "within the threshold" in healthy.reason
    assert exploding.diagnosis == "exploding" and "grows" in exploding.reason
    assert exploding.fold_change > 1e3 > 1e-3 > vanishing.fold_change


def test_thresholds_move_the_verdict():
    torch.manual_seed(0)
    net, x = tanh_mlp(), torch.randn(256, 32)
    flow = measure(net, x)
    worst = flow.layers[flow.worst]
    fold, rate = 1 / worst.per_unit_ratio, 1 / worst.per_layer
    assert 10 < fold < 1e3 and rate > 1.5  # vanishing by the per-layer rule only
    assert measure(net, x, per_layer=1.01 * rate).diagnosis == "healthy"
    assert measure(net, x, per_layer=0.99 * rate).diagnosis == "vanishing"
    assert measure(net, x, per_layer=1e9, threshold=0.99 * fold).diagnosis == "vanishing"
    assert measure(net, x, per_layer=1e9, threshold=1.01 * fold).diagnosis == "healthy"


def test_non_finite_gradient_is_exploding():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with gradient_flow(net) as flow:
        (net(torch.randn(4, 3)).sum() * float("inf")).backward()
    assert flow.diagnosis == "exploding"
    assert "inf" in flow.reason or "nan" in flow.reason


def test_ten_layer_tanh_mlp_is_vanishing_and_its_xavier_twin_healthy():
    """A 10-layer tanh MLP at default initialisation loses ~1.7x per layer (0.58 x tanh'):
    a fall of ~160-fold, under the old end-to-end threshold of 1000 but not healthy."""
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    flow = measure(tanh_mlp(), x)
    assert flow.diagnosis == "vanishing"
    assert flow.worst == 0 and flow.layers[0].depth == 9
    assert 1e-3 < flow.layers[0].per_unit_ratio < 1e-1
    assert f"#0 (0, Linear), over 9 layers: {1 / flow.layers[0].per_layer:.3g}-fold per layer" \
        in flow.reason
    torch.manual_seed(0)
    control = measure(tanh_mlp(gain=5 / 3), x)
    assert control.diagnosis == "healthy" and "within the thresholds" in control.reason
    assert control.layers[control.worst].per_layer > 1 / 1.5


def test_unet_bottleneck_is_judged_per_element():
    torch.manual_seed(0)
    net, x, target = UNet(), torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    with gradient_flow(net) as flow:
        nn.functional.mse_loss(net(x), target).backward()
    # the reference: the bottleneck's and the head's output gradients, retained by hand
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: outputs.setdefault(n, o))
               for n, m in net.named_modules() if n in ("bottleneck.0", "head")]
    out = net(x)
    for t in outputs.values():
        t.retain_grad()
    nn.functional.mse_loss(out, target).backward()
    for h in handles:
        h.remove()
    bottle, head = outputs["bottleneck.0"].grad, outputs["head"].grad
    by_norm = float(bottle.double().norm() / head.double().norm())
    by_element = by_norm * math.sqrt(head.numel() / bottle.numel())  # 768 vs 256 elements
    assert 1 / 1e4 < by_norm < by_element < 1 / 1e3
    worst = flow.layers[flow.worst]
    assert worst.name == "bottleneck.0" and flow.diagnosis == "vanishing"
    assert worst.per_unit_ratio == pytest.approx(by_element, rel=1e-5)
    assert f"{_fold_text(1 / worst.per_unit_ratio)}-fold per unit" in flow.reason
    assert "to #8 (bottleneck.0, Conv2d), over 8 layers" in flow.reason
    assert flow.fold_change > 1e-3  # the first layer, fed by the skip, sees far less fall


def _fold_text(value: float) -> str:
    from dlsummary.gradflow import _fold

    return _fold(value)


def test_a_smaller_tensor_does_not_masquerade_as_vanishing():
    """A 1-unit bottleneck whose per-element gradient equals the 256-unit layer's: its norm
    is 16 times smaller, per unit the same: healthy. The norm alone would say vanishing."""
    squeeze, expand = nn.Linear(256, 1, bias=False), nn.Linear(1, 256, bias=False)
    with torch.no_grad():
        squeeze.weight.fill_(1.0)  # back to 256 units: each element gets the same gradient
        expand.weight.fill_(1 / 16)
    net = nn.Sequential(nn.Linear(256, 256), squeeze, expand)
    with torch.no_grad():
        net[0].weight.mul_(1e-4)  # the output is ~0, so its gradient is -2 target / size
        net[0].bias.zero_()
    gen = torch.Generator().manual_seed(0)
    x, target = torch.randn(64, 256, generator=gen), torch.randn(64, 256, generator=gen)
    with gradient_flow(net) as flow:  # a random target: the output gradients are unrelated
        nn.functional.mse_loss(net(x), target).backward()
    bottleneck, out = flow.layers[1], flow.layers[2]
    by_norm = bottleneck.grad_output_norm / out.grad_output_norm
    assert by_norm < 1 / 10  # what a norm-only rule would call a 1-layer vanishing
    assert bottleneck.per_unit_ratio == pytest.approx(by_norm * 16, rel=1e-12)
    assert 0.5 < bottleneck.per_unit_ratio < 2
    assert flow.diagnosis == "healthy"


def test_a_wider_tensor_does_not_masquerade_as_vanishing():
    """A 2-layer MLP 64 -> 512 -> 1 at default init: per element the hidden gradient is
    ~40x smaller than the 1-unit output's, by norm 1.7x: healthy."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 1))
    flow = measure(net, torch.randn(128, 64))
    hidden = flow.layers[0]
    by_norm = hidden.grad_output_norm / flow.layers[-1].grad_output_norm
    assert by_norm * math.sqrt(1 / 512) < 1 / 10 < by_norm
    assert hidden.per_unit_ratio == pytest.approx(by_norm, rel=1e-12)
    assert flow.diagnosis == "healthy"


def test_exactly_zero_gradient_anywhere_is_named():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every ReLU unit dead: nothing reaches layer call #0
    flow = measure(net, torch.randn(8, 4))
    assert flow.diagnosis == "vanishing" and flow.worst == 0
    assert "exactly zero" in flow.reason and "#0 (0, Linear)" in flow.reason


def test_every_transformer_encoder_parameter_is_in_a_row_or_a_note():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                       batch_first=True)
    net = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    x = torch.randn(3, 5, 16)
    with gradient_flow(net) as flow:
        net(x).pow(2).mean().backward()
    names = {n for n, p in net.named_parameters()}
    in_rows = {n for c in flow.layers for n in c.parameters}
    assert in_rows == names and not flow.no_gradient
    attention = [c for c in flow.layers if c.type == "MultiheadAttention"]
    assert len(attention) == 2
    assert "layers.0.self_attn.out_proj.weight" in attention[0].parameters
    note = next(n for n in flow.notes if n.startswith("used functionally"))
    assert "layers.0.self_attn.out_proj" in note and "layers.1.self_attn.out_proj" in note
    # the attention row's parameter gradient covers in_proj and out_proj, as .grad says
    prefix = "layers.0.self_attn."
    expected = math.sqrt(sum(float(p.grad.double().norm()) ** 2
                             for n, p in net.named_parameters() if n.startswith(prefix)))
    assert attention[0].param_grad_norm == pytest.approx(expected, rel=1e-5)


def test_parameters_without_gradient_are_named():
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 1)
            self.frozen = nn.Linear(3, 3)
            self.frozen.requires_grad_(False)

        def forward(self, x):
            return self.used(self.frozen(x))

    flow = measure(Partial(), torch.randn(4, 3))
    assert flow.no_gradient == ("unused.weight", "unused.bias")
    assert any("2 trainable parameter(s) received no gradient: unused.weight" in n
               for n in flow.notes)
    assert any("neither ran" in n and "unused (Linear)" in n for n in flow.notes)


class TanhRNN(nn.Module):
    def __init__(self, hidden: int = 16, recurrent: bool = True) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        if not recurrent:
            with torch.no_grad():
                self.rnn.weight_hh_l0.zero_()

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_per_step_input_gradient_matches_autograd_and_vanishes_over_time():
    torch.manual_seed(0)
    net, x = TanhRNN(), torch.randn(8, 40, 4)
    with gradient_flow(net) as plain:
        net(x).pow(2).mean().backward()
    assert plain.diagnosis == "healthy"  # the layer view sees two layer calls only
    with gradient_flow(net, per_step=True) as flow:
        net(x).pow(2).mean().backward()
    leaf = x.clone().requires_grad_()
    net.zero_grad()
    net(leaf).pow(2).mean().backward()
    expected = leaf.grad.double().norm(dim=(0, 2))
    steps = flow.layers[0].step_grad_norms
    assert len(steps) == 40 and flow.layers[1].step_grad_norms is None
    assert steps == pytest.approx(expected.tolist(), rel=1e-6)
    assert steps[0] < 1e-3 * steps[-1]
    assert flow.diagnosis == "vanishing" and "from step 39 to step 0" in flow.reason
    short = torch.randn(8, 3, 4)
    with gradient_flow(net, per_step=True) as control:  # 3 steps: too short to vanish
        net(short).pow(2).mean().backward()
    assert control.diagnosis == "healthy" and any("over time steps" in n for n in control.notes)


def test_per_step_exactly_zero_first_step_is_vanishing():
    torch.manual_seed(0)
    net = TanhRNN(recurrent=False)  # no memory: step 0's input cannot reach the last output
    with gradient_flow(net, per_step=True) as flow:
        net(torch.randn(2, 6, 4)).pow(2).mean().backward()
    assert flow.diagnosis == "vanishing" and "exactly zero at step 0" in flow.reason
    assert flow.layers[0].step_grad_norms[0] == 0.0 < flow.layers[0].step_grad_norms[-1]


def test_reading_inside_the_block_before_backward_is_an_error():
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    with gradient_flow(net) as flow:
        loss = net(torch.randn(4, 3)).pow(2).mean()
        with pytest.raises(DLSummaryError, match="filled when loss.backward.. finishes"):
            _ = flow.diagnosis
        with pytest.raises(DLSummaryError, match="read before it is measured"):
            _ = flow.layers
        assert "pending" in repr(flow)
        loss.backward()
        inside = (flow.diagnosis, flow.reason, flow.grad_norms())  # filled on backward()
    assert inside == (flow.diagnosis, flow.reason, flow.grad_norms())
    assert inside[0] == "healthy" and len(inside[2]) == 3


# -- no hidden state --------------------------------------------------------------------
def test_hooks_removed_and_model_unchanged():
    torch.manual_seed(0)
    net = shared_stack(depth=3)
    net.eval()
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    before_hooks = hook_count(net)
    flow = measure(net, torch.randn(8, 8))
    assert hook_count(net) == before_hooks
    assert not net.training
    assert all(torch.equal(before_state[k], v) for k, v in net.state_dict().items())
    # a later pass outside the context is not recorded
    n_layers = len(flow.layers)
    net(torch.randn(8, 8)).sum().backward()
    assert len(flow.layers) == n_layers


def test_hooks_removed_when_the_body_raises():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = hook_count(net)

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom, match="inside the block"), gradient_flow(net) as flow:
        net(torch.randn(2, 4))
        raise Boom("inside the block")
    assert hook_count(net) == before
    assert flow.diagnosis == "not measured" and "Boom" in flow.reason


def test_hooks_removed_when_the_model_raises_midway():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(self.a(x))  # 4 features into a 5-feature layer

    net = Broken()
    before = hook_count(net)
    with pytest.raises(RuntimeError), gradient_flow(net):
        net(torch.randn(2, 4)).sum().backward()
    assert hook_count(net) == before


def test_fields_are_frozen():
    flow = measure(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)), torch.randn(3, 2))
    with pytest.raises(AttributeError):
        flow.diagnosis = "healthy"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        flow.layers[0].grad_output_norm = 1.0  # type: ignore[misc]
    assert isinstance(flow.layers[0], LayerCall)


def test_two_forward_passes_are_not_mistaken_for_sharing():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with gradient_flow(net) as flow:
        (net(torch.randn(5, 3)).sum() + net(torch.randn(5, 3)).sum()).backward()
    assert len(flow.layers) == 6 and [c.call for c in flow.layers] == [1, 1, 1, 2, 2, 2]
    assert not any(c.shared for c in flow.layers)
    assert "2 forward passes" in flow.notes[0]


# -- other models -----------------------------------------------------------------------
def test_tied_parameters_are_pointed_out():
    enc, dec = nn.Linear(6, 3, bias=False), nn.Linear(3, 6, bias=False)
    net = nn.Sequential(enc, nn.Tanh(), dec)
    dec.weight = nn.Parameter(enc.weight.detach().t().contiguous())  # not tied: a copy
    assert not measure(net, torch.randn(5, 6)).layers[2].shared
    shared_param = nn.Parameter(torch.randn(4, 4))
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    a.weight = shared_param
    b.weight = shared_param
    flow = measure(nn.Sequential(a, nn.Tanh(), b), torch.randn(5, 4))
    assert "parameters also owned by '2'" in flow.layers[0].shared
    assert "parameters also owned by '0'" in flow.layers[2].shared


def test_tuple_outputs_float64_and_containers():
    torch.manual_seed(0)

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 5, batch_first=True)
            self.head = nn.Linear(5, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    net = Recurrent().double()
    flow = measure(net, torch.randn(4, 7, 3, dtype=torch.float64))
    assert [c.type for c in flow.layers] == ["GRU", "Linear"]
    assert flow.layers[0].output_shape == (4, 7, 5)
    assert all(c.grad_output_norm > 0 for c in flow.layers)


# -- output ---------------------------------------------------------------------------
def test_table_dict_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    torch.manual_seed(0)
    flow = measure(shared_stack(depth=2), torch.randn(8, 8))
    text = str(flow)
    assert "|grad out|" in text and "Sigmoid" in text and "2/2" in text
    assert text.count("\n") >= len(flow.layers) + 2 and "diagnosis:" in text
    data = json.loads(json.dumps(flow.to_dict(), allow_nan=False))
    assert data["diagnosis"] == flow.diagnosis and len(data["layers"]) == len(flow.layers)
    assert data["layers"][2]["calls"] == 2
    ax = flow.plot()
    assert ax.get_yscale() == "log" and len(ax.lines) == 1
    assert len(ax.lines[0].get_xdata()) == len(flow.layers)


# -- errors ---------------------------------------------------------------------------
def test_not_a_module():
    with pytest.raises(DLSummaryError, match="expects a torch.nn.Module, got Tensor"):
        gradient_flow(torch.randn(3))  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [1, 0.5, -3, float("inf"), "10", True])
def test_bad_threshold(threshold):
    with pytest.raises(DLSummaryError, match="threshold=.*finite number > 1"):
        gradient_flow(nn.Linear(2, 2), threshold=threshold)
    with pytest.raises(DLSummaryError, match="per_layer=.*finite number > 1"):
        gradient_flow(nn.Linear(2, 2), per_layer=threshold)
    with pytest.raises(DLSummaryError, match="per_step"):
        gradient_flow(nn.Linear(2, 2), per_step="yes")  # type: ignore[arg-type]


def test_no_forward_and_no_backward():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(DLSummaryError, match="no layer of the model ran"), gradient_flow(net):
        pass
    with pytest.raises(DLSummaryError, match="call loss.backward"), gradient_flow(net):
        net(torch.randn(3, 2))
    with pytest.raises(DLSummaryError, match="no_grad"), gradient_flow(net), torch.no_grad():
        net(torch.randn(3, 2))
    assert hook_count(net) == 0


def test_context_is_single_use():
    net = nn.Linear(2, 1)
    recorder = gradient_flow(net)
    with recorder:
        net(torch.randn(3, 2)).sum().backward()
    with pytest.raises(DLSummaryError, match="only once"), recorder:
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    net = shared_stack(depth=24, width=32)
    x = torch.randn(64, 8)
    cpu = measure(net, x)
    gpu = measure(net.cuda(), x.cuda())
    for a, b in zip(cpu.layers, gpu.layers, strict=True):
        assert b.grad_output_norm == pytest.approx(a.grad_output_norm, rel=1e-3)
    assert gpu.diagnosis == cpu.diagnosis == "vanishing"


def test_nan_outputs_count_as_saturated_and_the_flow_as_exploding():
    net = nn.Sequential(nn.Identity(), nn.Sigmoid())
    x = torch.zeros(8, 4)
    x[0, 0] = float("nan")
    flow = measure(net, x.requires_grad_())
    assert flow.layers[1].saturated_fraction == pytest.approx(1 / 32)
    assert flow.diagnosis == "exploding"
