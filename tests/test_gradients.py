"""Tests for dlsummary.gradients: finite differences against closed forms, gradient checks
against planted backward errors, and the fast mode's stated miss rate."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlsummary import (
    DLSummaryError,
    GradientCheck,
    check_gradients,
    check_module_gradients,
    numerical_gradient,
)
from dlsummary.gradients import default_eps, direction_miss_probability

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- numerical_gradient


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_quadratic_form_matches_closed_form(n: int, seed: int) -> None:
    g = _gen(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    c = torch.randn(n, generator=g, dtype=F64)
    x = torch.randn(n, generator=g, dtype=F64)
    (grad,) = numerical_gradient(lambda v: v @ A @ v + c @ v, x)
    assert torch.allclose(grad, (A + A.T) @ x + c, rtol=1e-7, atol=1e-8)


def test_several_tensors_shapes_and_forward_method() -> None:
    g = _gen()
    W = torch.randn(3, 4, generator=g, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    X = torch.randn(5, 3, generator=g, dtype=F64)

    def fn(W, b):
        return torch.tanh(X @ W + b).square().sum()

    Wr, br = W.clone().requires_grad_(), b.clone().requires_grad_()
    exact = torch.autograd.grad(fn(Wr, br), (Wr, br))
    central = numerical_gradient(fn, W, b)
    forward = numerical_gradient(fn, W, b, method="forward")
    for got_c, got_f, want in zip(central, forward, exact, strict=True):
        assert got_c.shape == want.shape and got_c.dtype == F64
        assert (got_c - want).abs().max() < 1e-8
        assert 1e-10 < (got_f - want).abs().max() < 1e-5  # forward: O(eps), less accurate


def test_tensors_left_unmodified_even_by_an_in_place_fn() -> None:
    x = torch.randn(6, dtype=F64, requires_grad=True)
    before = x.detach().clone()

    def mutating(v):
        out = (v * v).sum()
        v.mul_(0)  # a badly behaved fn
        return out

    numerical_gradient(mutating, x, vectorize=False)
    assert torch.equal(x.detach(), before) and x.requires_grad


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    x = torch.randn(2, 5, generator=_gen(1), dtype=F64)
    fn = lambda v: torch.sin(v).prod() + v.pow(3).sum()
    (reference,) = numerical_gradient(fn, x, chunk_size=10)
    (got,) = numerical_gradient(fn, x, chunk_size=chunk_size)
    assert torch.allclose(got, reference, rtol=0, atol=1e-12)


def test_falls_back_to_a_loop_when_fn_cannot_be_vmapped() -> None:
    x = torch.randn(8, generator=_gen(2), dtype=F64)

    def uses_item(v):  # .item() is not allowed under vmap
        return v.square().sum() * (1.0 + 0.0 * v.sum().item())

    (grad,) = numerical_gradient(uses_item, x)
    assert torch.allclose(grad, 2 * x, atol=1e-8)
    (looped,) = numerical_gradient(lambda v: v.square().sum(), x, vectorize=False)
    (vmapped,) = numerical_gradient(lambda v: v.square().sum(), x, vectorize=True)
    assert torch.allclose(looped, vmapped, atol=1e-12)


def test_default_eps_balances_truncation_and_round_off() -> None:
    assert default_eps(F64, "central") == pytest.approx((2.0**-52) ** (1 / 3))
    assert default_eps(F64, "forward") == pytest.approx((2.0**-52) ** 0.5)
    assert default_eps(torch.float32, "central") > 1e-3


def test_warns_below_float64() -> None:
    x = torch.randn(4)
    with pytest.warns(UserWarning, match="float64"):
        numerical_gradient(lambda v: v.sum(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numerical_gradient(lambda v: v.sum(), x.double())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: numerical_gradient(3, torch.ones(2, dtype=F64)), "callable"),
        (lambda: numerical_gradient(lambda v: v.sum()), "no tensors"),
        (lambda: numerical_gradient(lambda v: v.sum(), [1.0, 2.0]), "not a torch.Tensor"),
        (lambda: numerical_gradient(lambda v: v.sum(), torch.arange(3)), "floating-point"),
        (lambda: numerical_gradient(lambda v: v * 2, torch.ones(3, dtype=F64)), r"shape \(3,\)"),
        (lambda: numerical_gradient(lambda v: 1.0, torch.ones(3, dtype=F64)), "returned a float"),
        (lambda: numerical_gradient(lambda v: v.sum(), torch.ones(3, dtype=F64), method="x"),
         "central"),
        (lambda: numerical_gradient(lambda v: v.sum(), torch.ones(3, dtype=F64), eps=-1.0),
         "positive"),
        (lambda: numerical_gradient(lambda v: v.sum(), torch.ones(3, dtype=F64), chunk_size=0),
         "chunk_size"),
        (lambda: numerical_gradient(lambda v: v @ torch.ones(4, dtype=F64),
                                    torch.ones(3, dtype=F64)), r"shapes \(3,\)"),
    ],
)
def test_bad_input_gives_a_clear_error(call, message: str) -> None:
    with pytest.raises(DLSummaryError, match=message):
        call()


# ---------------------------------------------------------------- planted backward errors


class WrongSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return -torch.cos(x) * grad  # should be +cos


class MissingTerm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.exp(x) * grad  # product rule: misses the x * exp(x) term


class WrongTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (grad @ b.T).T, a.T @ grad  # grad_a should be grad @ b.T


class OneEntry(torch.autograd.Function):
    SIZE = 0.01

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        out = (1 - torch.tanh(x) ** 2) * grad
        out.view(-1)[3] += OneEntry.SIZE  # one wrong entry
        return out


class WrongScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.square()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return x * grad  # should be 2 * x


def _planted(name: str):
    """(fn with the planted error, the same fn with a correct backward, its inputs)."""
    g = _gen(7)
    weights = torch.randn(8, 8, generator=g, dtype=F64)
    x = torch.randn(8, 8, generator=g, dtype=F64)
    y = torch.randn(8, 8, generator=g, dtype=F64)
    cases = {
        "wrong sign": (lambda a: (WrongSign.apply(a) * weights).sum(),
                       lambda a: (torch.sin(a) * weights).sum(), (x,)),
        "missing term": (lambda a: (MissingTerm.apply(a) * weights).sum(),
                         lambda a: (a * torch.exp(a) * weights).sum(), (x,)),
        "wrong transpose": (lambda a, b: (WrongTranspose.apply(a, b) * weights).sum(),
                            lambda a, b: ((a @ b) * weights).sum(), (x, y)),
        "one entry": (lambda a: (OneEntry.apply(a) * weights).sum(),
                      lambda a: (torch.tanh(a) * weights).sum(), (x,)),
        "wrong scale": (lambda a: (WrongScale.apply(a) * weights).sum(),
                        lambda a: (a.square() * weights).sum(), (x,)),
    }
    return cases[name]


PLANTED = ["wrong sign", "missing term", "wrong transpose", "one entry", "wrong scale"]


@pytest.mark.parametrize("name", PLANTED)
def test_full_check_catches_every_planted_error(name: str) -> None:
    buggy, correct, inputs = _planted(name)
    assert check_gradients(correct, *inputs).passed, "the correct backward passes"
    report = check_gradients(buggy, *inputs)
    assert not report.passed
    assert "FAILED" in str(report)
    if name == "one entry":
        (tensor,) = report.tensors
        assert tensor.failing == 1 and tensor.worst[0][0] == (0, 3)


def _error_norms(buggy, correct, inputs) -> list[tuple[float, float]]:
    """Per tensor (|e|, |g_claimed|): the planted error's size and the claimed gradient's."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    claimed = torch.autograd.grad(buggy(*leaves), leaves)
    leaves = [t.clone().requires_grad_() for t in inputs]
    true = torch.autograd.grad(correct(*leaves), leaves)
    return [(float((c - t).norm()), float(c.norm())) for c, t in zip(claimed, true, strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize("name", PLANTED)
def test_fast_mode_misses_at_its_stated_rate(name: str) -> None:
    buggy, correct, inputs = _planted(name)
    trials, atol, rtol = 300, 1e-5, 1e-3
    # the stated probability that one random direction misses the planted error
    stated_pass = 1.0
    for (error, claimed_norm), t in zip(_error_norms(buggy, correct, inputs), inputs,
                                        strict=True):
        tau = atol + rtol * claimed_norm / math.sqrt(t.numel())
        stated_pass *= direction_miss_probability(t.numel(), tau, error, 1) if error else 1.0
    misses = sum(
        check_gradients(buggy, *inputs, fast=True, directions=1, seed=s, atol=atol,
                        rtol=rtol).passed
        for s in range(trials)
    )
    sigma = math.sqrt(max(stated_pass * (1 - stated_pass), 1e-4) / trials)
    assert abs(misses / trials - stated_pass) <= 4 * sigma + 0.01, (name, misses, stated_pass)
    if name == "one entry":
        assert 0.1 < stated_pass < 0.9  # a case where the rate is really tested


def test_fast_mode_states_its_miss_probability() -> None:
    _, correct, inputs = _planted("wrong sign")
    report = check_gradients(correct, *inputs, fast=True, directions=6)
    assert report.passed and report.evaluations == 12
    miss = report.miss_probability(0.01)["arg0"]
    (t,) = report.tensors
    s = t.tolerance / (0.01 * t.gradient_norm)
    assert miss == pytest.approx(math.erf(s * math.sqrt(64 / 2)) ** 6, rel=0.1)
    assert "missed with probability" in str(report)


def test_direction_miss_probability_against_monte_carlo() -> None:
    n, tau, norm = 20, 0.1, 0.5
    u = torch.randn(200_000, n, generator=_gen(3), dtype=F64)
    u = u / u.norm(dim=1, keepdim=True)
    empirical = float((u[:, 0].abs() * norm <= tau).double().mean())
    assert direction_miss_probability(n, tau, norm, 1) == pytest.approx(empirical, abs=0.005)
    assert direction_miss_probability(n, tau, norm, 3) == pytest.approx(empirical**3, rel=0.05)


# ---------------------------------------------------------------- modules


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def test_module_check_passes_names_parameters_and_leaves_model_alone() -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 0])
    report = check_module_gradients(model, lambda out: nn.functional.cross_entropy(out, y), x)
    assert report.passed
    assert [t.name for t in report.tensors] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32
    data = report.to_dict()
    json.dumps(data)
    assert data["passed"] and data["tensors"][0]["shape"] == [7, 5]
    assert isinstance(report, GradientCheck) and bool(report)


class _BuggyLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        return WrongTranspose.apply(x, self.weight)


def test_module_check_points_at_the_broken_parameter() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), _BuggyLinear())
    report = check_module_gradients(model, None, torch.randn(3, 3))
    verdicts = {t.name: t.passed for t in report.tensors}
    assert verdicts["0.weight"] is False or verdicts["0.bias"] is False  # upstream of the bug
    assert not report.passed and "1.weight" in str(report)
    fast = check_module_gradients(model, None, torch.randn(3, 3), fast=True)
    assert not fast.passed


def test_module_check_refuses_a_random_model() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1)).train()
    with pytest.raises(DLSummaryError, match="deterministic"):
        check_module_gradients(model, None, torch.randn(6, 4))
    assert check_module_gradients(model.eval(), None, torch.randn(6, 4)).passed


def test_module_errors() -> None:
    with pytest.raises(DLSummaryError, match="nn.Module"):
        check_module_gradients(lambda x: x, None, torch.randn(2))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(DLSummaryError, match="no parameters"):
        check_module_gradients(frozen, None, torch.randn(2, 2))
    with pytest.raises(DLSummaryError, match=r"Linear.forward raised .*\(4, 3\)"):
        check_module_gradients(nn.Linear(2, 2), None, torch.randn(4, 3))
    with pytest.raises(DLSummaryError, match="loss_fn"):
        check_module_gradients(nn.Linear(2, 2), "mse", torch.randn(4, 2))


def test_report_table_and_plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    report = check_gradients(lambda a: a.square().sum(), torch.ones(3, dtype=F64), names=["w"])
    text = str(report)
    assert "PASSED" in text and "w" in text and "max abs err" in text
    ax = report.plot()
    assert ax.get_yscale() == "log"


@pytest.mark.slow
def test_fast_mode_checks_a_million_parameters_in_seconds() -> None:
    import time

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Tanh(), nn.Linear(1000, 10))
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    start = time.perf_counter()
    report = check_module_gradients(model, None, torch.randn(8, 1000), fast=True)
    seconds = time.perf_counter() - start
    assert report.passed and report.evaluations == 2 * 4 * 4
    assert seconds < 30, f"fast check took {seconds:.1f} s"


def test_relu_kink_is_reported_not_failed():
    """At ReLU's kink the central difference gives 1/2 and autograd 0: both are right."""
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    report = check_gradients(lambda t: torch.relu(t).sum(), x)
    assert report.passed, str(report)
    assert report.tensors[0].kinks == 1 and "kink" in str(report)


def test_a_wrong_gradient_at_a_kink_still_fails():
    class BadReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.clamp_min(0)

        @staticmethod
        def backward(ctx, grad):
            (t,) = ctx.saved_tensors
            return grad * ((t > 0).to(t.dtype) + 3.0 * (t == 0).to(t.dtype))  # 3 at the kink

    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    report = check_gradients(lambda t: BadReLU.apply(t).sum(), x)
    assert not report.passed and report.tensors[0].kinks == 0
