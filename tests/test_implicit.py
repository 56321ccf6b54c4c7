"""Tests for dlsummary.implicit: implicit gradients of argmin layers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsummary import DLSummaryError, argmin_layer
from dlsummary.implicit import minres

F64 = torch.float64


# --- problems with known answers ------------------------------------------------------


def ridge_objective(w, X, t, lam):
    return 0.5 * ((X @ w - t) ** 2).sum() + 0.5 * lam * (w**2).sum()


def ridge_solver(X, t, lam):
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    return torch.linalg.solve(X.T @ X + lam * eye, X.T @ t)


def batched_ridge_objective(w, X, t, lam):
    """w (B, d), X (B, n, d), t (B, n): one ridge problem per row."""
    residual = (X @ w[..., None])[..., 0] - t
    return 0.5 * (residual**2).sum(1) + 0.5 * lam * (w**2).sum(1)


def batched_ridge_solver(X, t, lam):
    eye = torch.eye(X.shape[-1], dtype=X.dtype)
    rhs = (X.transpose(1, 2) @ t[..., None])[..., 0]
    return torch.linalg.solve(X.transpose(1, 2) @ X + lam * eye, rhs)


def cosh_objective(y, z):
    """sum_j cosh(y_j) - z_j y_j: minimiser asinh(z), derivative 1/sqrt(1 + z^2)."""
    return (torch.cosh(y) - z * y).sum()


def bisection_solver(z):
    """Root of sinh(y) = z by bisection: no gradient, no descent."""
    lo, hi = torch.full_like(z, -30.0), torch.full_like(z, 30.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        above = torch.sinh(mid) > z
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
    return (lo + hi) / 2


def ridge_inputs(dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(12, 4, generator=g, dtype=dtype).requires_grad_()
    t = torch.randn(12, generator=g, dtype=dtype).requires_grad_()
    lam = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    return X, t, lam


# --- gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("linear_solver", ["direct", "minres"])
def test_ridge_gradcheck(linear_solver):
    layer = argmin_layer(ridge_objective, ridge_solver, linear_solver=linear_solver)
    assert torch.autograd.gradcheck(layer, ridge_inputs())


@pytest.mark.parametrize("linear_solver", ["direct", "minres"])
def test_ridge_matches_autograd_through_the_closed_form(linear_solver):
    X, t, lam = ridge_inputs()
    layer = argmin_layer(ridge_objective, ridge_solver, linear_solver=linear_solver)
    upstream = torch.randn(4, dtype=F64)
    implicit = torch.autograd.grad(layer(X, t, lam) @ upstream, (X, t, lam))
    direct = torch.autograd.grad(ridge_solver(X, t, lam) @ upstream, (X, t, lam))
    for a, b in zip(implicit, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_ridge_matches_unrolled_gradient_descent():
    """Unrolling 2000 GD steps (differentiating through them) converges to the same gradient."""
    X, t, lam = ridge_inputs()
    step = 1.0 / float(torch.linalg.eigvalsh(X.detach().T @ X.detach()).max() + lam.detach())

    def unrolled(X, t, lam):
        w = torch.zeros(4, dtype=F64)
        for _ in range(2000):
            w = w - step * (X.T @ (X @ w - t) + lam * w)
        return w

    layer = argmin_layer(ridge_objective, ridge_solver)
    implicit = torch.autograd.grad(layer(X, t, lam).sum(), (X, t, lam))
    through_steps = torch.autograd.grad(unrolled(X, t, lam).sum(), (X, t, lam))
    for a, b in zip(implicit, through_steps, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("linear_solver", ["direct", "minres"])
def test_non_descent_solver_gradcheck(linear_solver):
    z = torch.linspace(-3, 3, 7, dtype=F64).requires_grad_()
    layer = argmin_layer(cosh_objective, bisection_solver, linear_solver=linear_solver)
    assert torch.autograd.gradcheck(layer, (z,))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=1, max_size=6))
def test_bisection_layer_matches_the_analytic_derivative(values):
    z = torch.tensor(values, dtype=F64, requires_grad=True)
    layer = argmin_layer(cosh_objective, bisection_solver)
    y = layer(z)
    torch.testing.assert_close(y, torch.asinh(z.detach()), rtol=1e-10, atol=1e-10)
    (dz,) = torch.autograd.grad(y.sum(), z)
    torch.testing.assert_close(dz, 1 / torch.sqrt(1 + z.detach() ** 2), rtol=1e-8, atol=1e-10)


def test_black_box_numpy_solver():
    """The solver may leave torch entirely: nothing is recorded through it."""
    X, t, lam = ridge_inputs()

    def numpy_solver(X, t, lam):
        assert not torch.is_grad_enabled(), "the solver runs without recording a graph"
        a, b = X.numpy(), t.numpy()
        w = np.linalg.solve(a.T @ a + float(lam) * np.eye(a.shape[1]), a.T @ b)
        return torch.from_numpy(w)

    layer = argmin_layer(ridge_objective, numpy_solver)
    assert torch.autograd.gradcheck(layer, (X, t, lam))


@pytest.mark.parametrize("linear_solver", ["direct", "minres"])
def test_batched_problems_equal_one_by_one(linear_solver):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 10, 4, generator=g, dtype=F64).requires_grad_()
    t = torch.randn(3, 10, generator=g, dtype=F64).requires_grad_()
    lam = torch.tensor(0.3, dtype=F64, requires_grad=True)
    layer = argmin_layer(
        batched_ridge_objective, batched_ridge_solver, linear_solver=linear_solver
    )
    upstream = torch.randn(3, 4, generator=g, dtype=F64)
    grads = torch.autograd.grad((layer(X, t, lam) * upstream).sum(), (X, t, lam))
    single = argmin_layer(ridge_objective, ridge_solver)
    lam_grad = torch.zeros((), dtype=F64)
    for b in range(3):
        gx, gt, gl = torch.autograd.grad(single(X[b], t[b], lam) @ upstream[b], (X, t, lam))
        torch.testing.assert_close(grads[0][b], gx[b])
        torch.testing.assert_close(grads[1][b], gt[b])
        lam_grad = lam_grad + gl
    torch.testing.assert_close(grads[2], lam_grad)
    assert torch.autograd.gradcheck(layer, (X, t, lam))


def test_float32_follows_float64():
    X, t, lam = ridge_inputs()
    layer = argmin_layer(ridge_objective, ridge_solver)
    g64 = torch.autograd.grad(layer(X, t, lam).sum(), X)[0]
    X32 = X.detach().float().requires_grad_()
    w32 = layer(X32, t.detach().float(), lam.detach().float())
    assert w32.dtype == torch.float32
    (g32,) = torch.autograd.grad(w32.sum(), X32)
    assert g32.dtype == torch.float32
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("linear_solver", ["direct", "minres"])
def test_saddle_point_with_indefinite_hessian(linear_solver):
    """y* = A^{-1} z is a stationary point (not a minimum) of 1/2 y^T A y - z^T y."""
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))
    A = q @ torch.diag(torch.tensor([-3.0, -1.0, 0.5, 1.0, 2.0, 4.0], dtype=F64)) @ q.T
    layer = argmin_layer(
        lambda y, z: 0.5 * y @ A @ y - z @ y,
        lambda z: torch.linalg.solve(A, z),
        linear_solver=linear_solver,
        stationary="any",
    )
    z = torch.randn(6, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(6, generator=g, dtype=F64)
    (dz,) = torch.autograd.grad(layer(z) @ v, z)
    torch.testing.assert_close(dz, torch.linalg.solve(A, v), rtol=1e-8, atol=1e-10)
    default = argmin_layer(  # a minimum is asked for by default: the saddle is refused
        lambda y, z: 0.5 * y @ A @ y - z @ y,
        lambda z: torch.linalg.solve(A, z),
        linear_solver=linear_solver,
    )
    with pytest.raises(DLSummaryError, match="not a minimum.*stationary='any'"):
        default(z).sum().backward()


def spectrum_problem(eigenvalues, seed=2):
    """1/2 y^T A y - z^T y with A of the given eigenvalues: its stationary point A^-1 z."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    A = q @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ q.T
    return (lambda y, z: 0.5 * y @ A @ y - z @ y), (lambda z: torch.linalg.solve(A, z)), A


@pytest.mark.parametrize("linear_solver", ["direct", "minres"])
def test_maximum_of_a_concave_objective_is_refused_in_the_forward_pass(linear_solver):
    objective, solver, _ = spectrum_problem([-4.0, -2.0, -1.0, -0.5, -3.0])
    layer = argmin_layer(objective, solver, linear_solver=linear_solver)
    z = torch.randn(5, dtype=F64, requires_grad=True)
    with pytest.raises(DLSummaryError, match=r"not a minimum: the curvature along a random "
                                             r"direction d is d\^T H d = -[0-9.]+"):
        layer(z)  # no backward needed
    negated = argmin_layer(lambda y, z: -objective(y, z), solver, linear_solver=linear_solver)
    (dz,) = torch.autograd.grad(negated(z).sum(), z)  # control: -f is convex: accepted
    assert torch.isfinite(dz).all()


def test_saddle_with_positive_probe_is_caught_by_each_backward_check():
    """One negative eigenvalue among 40: the random forward probe sees positive curvature,
    the Cholesky factorisation (direct) and a negative Ritz value (MINRES) do not pass it."""
    eigenvalues = [-0.05] + [1.0 + i for i in range(39)]
    objective, solver, A = spectrum_problem(eigenvalues)
    z = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=F64,
                    requires_grad=True)
    for linear_solver, evidence in (("direct", "1 negative eigenvalue"),
                                    ("minres", "negative curvature .smallest Ritz value -")):
        layer = argmin_layer(objective, solver, linear_solver=linear_solver)
        y = layer(z)  # the forward probe passes
        with pytest.raises(DLSummaryError, match=f"not a minimum: .*{evidence}"):
            y.sum().backward()
        any_point = argmin_layer(objective, solver, linear_solver=linear_solver,
                                 stationary="any")
        (dz,) = torch.autograd.grad(any_point(z).sum(), z)
        torch.testing.assert_close(dz, torch.linalg.solve(A, torch.ones(40, dtype=F64)),
                                   rtol=1e-7, atol=1e-9)


def test_minres_divergence_names_the_cause():
    """A singular Hessian with the right-hand side outside its range: no u solves H u = v;
    the message says MINRES diverged or stalled and why, with the Ritz values."""
    layer = argmin_layer(
        lambda y, z: 0.5 * (y[0] - z[0]) ** 2 + 0.5 * 1e-30 * y[1] ** 2,
        lambda z: torch.stack([z[0], torch.zeros_like(z[0])]),
        linear_solver="minres",
    )
    z = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    with pytest.raises(DLSummaryError) as info:
        layer(z).sum().backward()
    message = str(info.value)
    assert "Ritz values" in message and "singular or nearly so" in message
    assert "stalled" not in message


def test_auto_uses_minres_for_large_problems():
    """A 200-unknown problem goes to MINRES under 'auto' and still gets the exact gradient."""
    g = torch.Generator().manual_seed(3)
    M = torch.randn(200, 200, generator=g, dtype=F64)
    A = M @ M.T / 200 + torch.eye(200, dtype=F64)
    layer = argmin_layer(lambda y, z: 0.5 * y @ A @ y - z @ y, lambda z: torch.linalg.solve(A, z))
    z = torch.randn(200, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(200, generator=g, dtype=F64)
    (dz,) = torch.autograd.grad(layer(z) @ v, z)
    torch.testing.assert_close(dz, torch.linalg.solve(A, v), rtol=1e-7, atol=1e-9)


def test_non_tensor_inputs_pass_through():
    X, t, _ = ridge_inputs()
    layer = argmin_layer(ridge_objective, ridge_solver)
    w = layer(X, t, 0.5)
    (gx,) = torch.autograd.grad(w.sum(), X)
    (ref,) = torch.autograd.grad(ridge_solver(X, t, 0.5).sum(), X)
    torch.testing.assert_close(gx, ref)


def test_solver_runs_once_per_call_and_layer_has_no_state():
    calls = []

    def solver(X, t, lam):
        calls.append(1)
        return ridge_solver(X, t, lam)

    layer = argmin_layer(ridge_objective, solver)
    X, t, lam = ridge_inputs()
    layer(X, t, lam).sum().backward()
    assert len(calls) == 1
    assert "ArgminLayer" in repr(layer) and "ridge_objective" in repr(layer)


# --- MINRES ---------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 30), st.integers(0, 2**16), st.booleans())
def test_minres_solves_symmetric_systems(n, seed, definite):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    eig = torch.rand(n, generator=g, dtype=F64) + 0.1
    if not definite:
        eig = eig * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    A = q @ torch.diag(eig) @ q.T
    b = torch.randn(n, generator=g, dtype=F64)
    x, rel, iters = minres(lambda v: A @ v, b, tol=1e-12, max_iter=10 * n)
    assert float(rel) < 1e-9 and iters <= 10 * n
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-7, atol=1e-7)


def test_minres_batched_and_zero_rhs():
    g = torch.Generator().manual_seed(4)
    M = torch.randn(3, 8, 8, generator=g, dtype=F64)
    A = M + M.transpose(1, 2)
    b = torch.randn(3, 8, generator=g, dtype=F64)
    b[1] = 0.0
    x, rel, _ = minres(lambda v: (A @ v[..., None])[..., 0], b, problems=3, tol=1e-12)
    assert (rel < 1e-9).all()
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-7, atol=1e-8)
    assert (x[1] == 0).all()


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("linear_solver", ["direct", "minres"])
def test_singular_hessian_is_reported(linear_solver):
    """y[1] does not enter the objective: the Hessian has a zero eigenvalue."""
    layer = argmin_layer(
        lambda y, z: 0.5 * (y[0] - z[0]) ** 2,
        lambda z: torch.stack([z[0], torch.zeros_like(z[0])]),
        linear_solver=linear_solver,
    )
    z = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    with pytest.raises(DLSummaryError, match="singular") as info:
        layer(z).sum().backward()
    assert "argmin_layer" in str(info.value)
    if linear_solver == "direct":
        assert "eigenvalues" in str(info.value)
    else:
        assert "MINRES" in str(info.value) and "Ritz values" in str(info.value)


def test_coupled_rows_are_not_a_batch():
    """A per-row objective whose rows interact (here through their mean) is refused."""
    def objective(y, z):
        return 0.5 * ((y - z) ** 2).sum(1) + 0.5 * y.mean() ** 2

    def solver(z):
        # the scalar term is broadcast to all B rows: the summed objective's gradient is
        # y - z + (B / n) mean(y) = 0, with n = y.numel()
        c = z.shape[0] / z.numel()
        return z - c * z.mean() / (1 + c)

    layer = argmin_layer(objective, solver)
    z = torch.randn(3, 2, dtype=F64, requires_grad=True)
    with pytest.raises(DLSummaryError, match="coupled to other rows"):
        layer(z).sum().backward()


def test_linear_objective_is_singular():
    layer = argmin_layer(lambda y, z: (z * y).sum(), lambda z: torch.zeros_like(z))
    z = torch.zeros(3, dtype=F64, requires_grad=True)
    with pytest.raises(DLSummaryError, match="singular"):
        layer(z).sum().backward()


def test_non_stationary_answer_reports_the_residual():
    layer = argmin_layer(cosh_objective, lambda z: bisection_solver(z) + 1e-3)
    z = torch.tensor([0.5, 1.0], dtype=F64, requires_grad=True)
    with pytest.raises(DLSummaryError, match=r"not stationary.*relative residual [0-9.e-]+ >"):
        layer(z)


def test_stationarity_tolerance_can_be_relaxed():
    layer = argmin_layer(
        cosh_objective, lambda z: bisection_solver(z) + 1e-4, stationarity_tol=1e-2
    )
    layer(torch.tensor([0.5], dtype=F64))


@pytest.mark.parametrize(
    ("objective", "solver", "match"),
    [
        (cosh_objective, lambda z: z.tolist(), "returned list"),
        (cosh_objective, lambda z: torch.ones(2, dtype=torch.long), "must be floating point"),
        (cosh_objective, lambda z: torch.ones(2, dtype=torch.float32), "inputs' dtype"),
        (cosh_objective, lambda z: torch.full_like(z, math.nan), "non-finite"),
        (lambda y, z: 1.0, bisection_solver, "must return a tensor"),
        (lambda y, z: y @ torch.ones(5, dtype=F64), bisection_solver, "failed when called"),
    ],
)
def test_bad_objective_or_solver(objective, solver, match):
    z = torch.tensor([0.5, 1.0], dtype=F64)
    with pytest.raises(DLSummaryError, match=match):
        argmin_layer(objective, solver)(z)


def test_objective_of_the_wrong_shape():
    """For y of shape (2, 3) the objective must give a scalar or 2 values, not 3."""
    layer = argmin_layer(lambda y, z: (torch.cosh(y) - z * y).sum(0), bisection_solver)
    with pytest.raises(DLSummaryError, match=r"returned shape \(3,\) for y of shape \(2, 3\)"):
        layer(torch.ones(2, 3, dtype=F64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": 3, "solver": bisection_solver}, "objective must be a callable"),
        ({"objective": cosh_objective, "solver": None}, "solver must be a callable"),
        (
            {"objective": cosh_objective, "solver": bisection_solver, "linear_solver": "cg"},
            "not one of",
        ),
        (
            {"objective": cosh_objective, "solver": bisection_solver, "direct_max_size": 0},
            "direct_max_size",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(DLSummaryError, match=match):
        argmin_layer(**kwargs)


def test_calling_without_inputs():
    with pytest.raises(DLSummaryError, match="got none"):
        argmin_layer(cosh_objective, bisection_solver)()
