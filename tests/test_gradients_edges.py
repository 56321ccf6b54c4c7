"""Edge cases of dlsummary.gradients where a gradient check used to give a wrong or
unhelpful answer (issue 16, item 4), each beside a control that must keep its verdict,
and the independence of the results from timing (issue 14, item 2)."""

from __future__ import annotations

import time

import pytest
import torch

from dlsummary import DLSummaryError, check_gradients, numerical_gradient

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _projected(fn, shape_seed: int = 1):
    """``fn``'s output times a fixed random tensor, summed: a scalar that sees every output."""

    def scalar(*tensors):
        out = fn(*tensors)
        weights = torch.randn(out.shape, generator=_gen(shape_seed), dtype=out.dtype)
        return (out * weights).sum()

    return scalar


# ------------------------------------------------------------------ -inf inputs


def _masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores, dim=-1)


def _masked_scores() -> torch.Tensor:
    scores = torch.randn(3, 5, generator=_gen(), dtype=F64)
    scores[:, -2:] = float("-inf")  # an attention mask: the last two keys are hidden
    return scores


def test_minus_inf_input_passes_like_gradcheck() -> None:
    scores = _masked_scores()
    fn = _projected(_masked_softmax)
    assert torch.autograd.gradcheck(fn, (scores.clone().requires_grad_(),), eps=1e-6,
                                    atol=1e-5, rtol=1e-3)
    report = check_gradients(fn, scores)
    assert report.passed, str(report)
    (grad,) = numerical_gradient(fn, scores)
    assert torch.isfinite(grad).all()
    assert (grad[:, -2:] == 0).all()  # a hidden key has no influence


def test_minus_inf_input_still_catches_a_wrong_gradient() -> None:
    class WrongSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.softmax(x, dim=-1)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return 1.1 * y * (g - (g * y).sum(-1, keepdim=True))  # 10% too large

    report = check_gradients(_projected(WrongSoftmax.apply), _masked_scores())
    assert not report.passed
    assert report.tensors[0].kinks == 0


# ------------------------------------------------------- inputs as views of one buffer


def _as_strided_scatter(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return torch.as_strided_scatter(x, src, (1,), (1,), 0)


def test_known_wrong_as_strided_scatter_gradient_fails() -> None:
    # PyTorch marks this backward as failing its own gradcheck (OpInfo as_strided_scatter,
    # test_fn_grad expected to fail); it used to pass here, excused as "1 entry at a kink"
    x = torch.randn(1, generator=_gen(), dtype=F64)
    src = torch.randn(1, generator=_gen(1), dtype=F64)
    fn = _projected(_as_strided_scatter)
    inputs = (x.clone().requires_grad_(), src.clone().requires_grad_())
    assert not torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3,
                                        raise_exception=False)
    report = check_gradients(fn, x, src)
    assert not report.passed
    assert sum(t.kinks for t in report.tensors) == 0


@pytest.mark.parametrize("vectorize", [None, False])
def test_as_strided_sees_each_copy_at_offset_0(vectorize: bool | None) -> None:
    # each perturbed copy must be a tensor of its own: as a view into the batch its
    # storage offset would point at another copy's entries
    x = torch.randn(3, 3, generator=_gen(), dtype=F64)
    fn = _projected(lambda t: t.as_strided((2, 2), (1, 2), 1))
    report = check_gradients(fn, x, vectorize=vectorize)
    assert report.passed and report.tensors[0].kinks == 0, str(report)
    single = torch.randn(1, generator=_gen(), dtype=F64)
    one = check_gradients(_projected(lambda t: t.as_strided((1,), (1,), 0)), single,
                          vectorize=vectorize)
    assert one.passed and one.tensors[0].kinks == 0, str(one)


# ---------------------------------------------------------------------- kinks


def test_smooth_matrix_exp_has_no_kinks() -> None:
    # matrices with entries up to 9 (as OpInfo's matrix_exp sample): exp's values reach
    # ~1e8, so round-off noise in the differences exceeds atol for small entries. That is
    # a failure of finite differences (gradcheck fails it too), never a kink
    fn = _projected(torch.linalg.matrix_exp)
    large = 18 * torch.rand(5, 5, 5, generator=_gen(3), dtype=F64) - 9
    report = check_gradients(fn, large)
    assert report.tensors[0].kinks == 0
    expected = torch.autograd.gradcheck(fn, (large.clone().requires_grad_(),), eps=1e-6,
                                        atol=1e-5, rtol=1e-3, raise_exception=False)
    assert report.passed == expected
    # control: moderate entries pass, also without kinks
    moderate = 2.0 * torch.randn(6, 6, generator=_gen(3), dtype=F64)
    small = check_gradients(fn, moderate)
    assert small.passed and small.tensors[0].kinks == 0, str(small)


def test_float32_rounding_noise_is_not_a_kink() -> None:
    # the function is rounded to float32 inside: its finite differences are noise of
    # about 1e-7 / 6e-6 = 2% of the value, so they do disagree with autograd; that must
    # be reported, not excused as kinks
    x = torch.randn(40, generator=_gen(), dtype=F64)

    def rounded(t: torch.Tensor) -> torch.Tensor:
        return (torch.sin(t.float()) * 30).double().square().sum()

    report = check_gradients(rounded, x)
    assert report.tensors[0].kinks == 0
    assert not report.passed and report.tensors[0].failing >= 5


def test_a_real_kink_is_still_shown() -> None:
    # control: ReLU inputs exactly at 0 are kinks (one-sided slopes 0 and 1, stable)
    x = torch.tensor([-1.0, 0.0, 0.5, 0.0], dtype=F64)
    report = check_gradients(lambda t: torch.relu(t).sum(), x)
    assert report.passed and report.tensors[0].kinks == 2, str(report)


# ---------------------------------------------------------- failures named clearly


def test_vmap_failing_after_the_first_batch_falls_back_to_the_loop() -> None:
    calls = {"batched": 0}

    def fn(t: torch.Tensor) -> torch.Tensor:
        if torch._C._functorch.is_batchedtensor(t):
            calls["batched"] += 1
            if calls["batched"] > 1:
                raise RuntimeError("this fn cannot run under vmap twice")
        return (t.sin() * t).sum()

    x = torch.randn(700, generator=_gen(), dtype=F64)
    (grad,) = numerical_gradient(fn, x, chunk_size=100)
    want = torch.sin(x) + x * torch.cos(x)
    assert torch.allclose(grad, want, rtol=1e-7, atol=1e-8)
    assert calls["batched"] == 2  # one batch by vmap, the failure, then the loop


def test_sparse_input_is_refused_up_front() -> None:
    x = torch.randn(4, 4, generator=_gen(), dtype=F64).to_sparse()
    with pytest.raises(DLSummaryError, match="to_dense"):
        check_gradients(lambda t: t.to_dense().sum(), x)
    with pytest.raises(DLSummaryError, match="to_dense"):
        numerical_gradient(lambda t: t.to_dense().sum(), x)


def test_nan_output_is_named_not_called_random() -> None:
    x = torch.tensor([1.0, -2.0], dtype=F64)
    with pytest.raises(DLSummaryError, match="nan") as info:
        check_gradients(lambda t: torch.log(t).sum(), x)
    assert "deterministic" not in str(info.value)
    # control: a really random function is still called random
    with pytest.raises(DLSummaryError, match="deterministic"):
        check_gradients(lambda t: (t * torch.rand(())).sum(), x.abs())


def test_an_exception_in_the_users_backward_is_wrapped() -> None:
    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            raise ValueError("my backward is not written yet")

    with pytest.raises(DLSummaryError, match="backward.*my backward is not written yet"):
        check_gradients(lambda t: Broken.apply(t).sum(), torch.ones(3, dtype=F64))


# ------------------------------------------------- results do not depend on timing


def _expensive_case() -> tuple:
    g = _gen()
    data = torch.randn(512, 64, generator=g, dtype=F64)
    w = torch.randn(64, 4, generator=g, dtype=F64) / 8

    def fn(weights: torch.Tensor) -> torch.Tensor:
        return torch.tanh(data @ weights).square().mean()

    return fn, w


def test_numerical_gradient_never_reads_a_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    fn, w = _expensive_case()
    (reference,) = numerical_gradient(fn, w)

    def no_clock() -> float:
        raise AssertionError("numerical_gradient read the clock")

    for name in ("perf_counter", "monotonic", "time", "process_time"):
        monkeypatch.setattr(time, name, no_clock)
    (again,) = numerical_gradient(fn, w)
    assert torch.equal(again, reference)


def test_numerical_gradient_is_bit_identical_under_load() -> None:
    # a loaded machine, simulated: every call of fn is delayed by a varying amount, which
    # slows a loop of calls far more than one batched call. The old timed trial chose vmap
    # or the loop from exactly this; the path now follows from sizes alone.
    fn, w = _expensive_case()
    (quiet,) = numerical_gradient(fn, w)
    delays = iter([0.0, 2e-3, 0.0, 5e-3] * 10_000)

    def loaded(weights: torch.Tensor) -> torch.Tensor:
        time.sleep(next(delays))
        return fn(weights)

    (busy,) = numerical_gradient(loaded, w)
    assert torch.equal(busy, quiet)


def test_the_loop_and_vmap_paths_agree_to_finite_difference_accuracy() -> None:
    # the two paths run different kernels, so they may differ in the last bits; both are
    # within the finite-difference error of the closed form
    fn, w = _expensive_case()
    by_vmap = numerical_gradient(fn, w, vectorize=True)[0]
    by_loop = numerical_gradient(fn, w, vectorize=False)[0]
    wr = w.clone().requires_grad_()
    (exact,) = torch.autograd.grad(fn(wr), wr)
    for got in (by_vmap, by_loop):
        assert torch.allclose(got, exact, rtol=1e-7, atol=1e-10)
