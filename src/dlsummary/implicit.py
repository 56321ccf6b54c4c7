"""Differentiable argmin layers by the implicit function theorem.

A layer that outputs ``y*(z) = argmin_y f(y, z)`` can be trained end to end without
differentiating *through* whatever found ``y*``. At a stationary point
``g(y*, z) = grad_y f(y*, z) = 0``; differentiating this identity in ``z`` gives

    H dy*/dz + d g/d z = 0,   H = grad^2_yy f(y*, z),

so ``dy*/dz = -H^{-1} dg/dz``. A backward pass needs only the vector-Jacobian product
``v^T dy*/dz = -(H^{-1} v)^T dg/dz`` (H is symmetric): one linear solve ``H u = v`` and one
more vector-Jacobian product of ``g``. The solver that found ``y*`` may be anything (a
closed form, bisection, a black box): nothing is recorded through it.

Example::

    ridge = argmin_layer(
        objective=lambda w, X, t, lam: 0.5 * ((X @ w - t) ** 2).sum() + 0.5 * lam * (w**2).sum(),
        solver=lambda X, t, lam: torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1]), X.T @ t),
    )
    w = ridge(X, t, lam)          # differentiable in X, t and lam
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch.autograd.function import once_differentiable

from dlsummary.errors import DLSummaryError

__all__ = ["ArgminLayer", "argmin_layer", "minres"]

Objective = Callable[..., torch.Tensor]
Solver = Callable[..., torch.Tensor]
LinearSolver = Literal["auto", "direct", "minres"]
Stationary = Literal["minimum", "any"]


def argmin_layer(
    objective: Objective,
    solver: Solver,
    *,
    linear_solver: LinearSolver = "auto",
    direct_max_size: int = 256,
    stationarity_tol: float | None = None,
    minres_tol: float | None = None,
    minres_max_iter: int | None = None,
    stationary: Stationary = "minimum",
) -> ArgminLayer:
    """Turn ``y*(*inputs) = argmin_y objective(y, *inputs)`` into a differentiable function.

    Args:
        objective: ``objective(y, *inputs)`` returns either a scalar (``y`` is one problem) or
            one value per row of ``y``, shape ``(B,)`` (``y[b]`` is problem ``b``, and problem
            ``b`` must depend on row ``b`` of ``y`` only). Must be twice differentiable in
            ``y`` and once in the inputs one wants gradients for.
        solver: ``solver(*inputs)`` returns ``y*``, a stationary point of the objective.
            It runs without recording a graph, so any method works.
        linear_solver: how the backward pass solves ``H u = v``: ``"direct"`` builds each
            problem's Hessian from Hessian-vector products (one vectorised backward pass,
            ``is_grads_batched``) and factorises it (robust, for small and medium
            problems); ``"minres"`` runs MINRES on Hessian-vector products (for large
            problems; works for symmetric indefinite Hessians, e.g. saddle points);
            ``"auto"`` picks ``"direct"`` when a problem has at most ``direct_max_size``
            unknowns.
        stationary: ``"minimum"`` (default): ``y*`` must be a minimum. The curvature is
            checked where it is cheap: in the forward pass along one random direction
            (every maximum of a concave objective fails it), and in the backward pass on
            the whole Hessian with ``"direct"`` (a Cholesky factorisation: it succeeds iff
            H is positive definite) or, with ``"minres"``, in the Krylov subspace MINRES
            explored (a negative Ritz value proves a negative eigenvalue; none found is not
            a proof). ``"any"``: accept any non-degenerate stationary point (saddle points
            of minimax problems, maxima); the implicit gradient is valid there too.
        stationarity_tol: largest accepted relative residual
            ``|grad_y f(y*)| / max(1, |grad_y f(0)|)`` per problem; the forward pass raises
            ``DLSummaryError`` above it, because the implicit gradient is only as good as
            the stationarity of ``y*``. Default ``1e-6`` in float64, ``1e-3`` in float32.
        minres_tol, minres_max_iter: stopping rule of MINRES (relative residual; default
            ``1e-10`` in float64 and ``1e-5`` in float32, at most ``10 * size`` iterations).

    Returns:
        An ``ArgminLayer``: call it as ``layer(*inputs)``. Gradients flow to every tensor
        input that requires grad (pass learnable parameters of the inner problem as inputs,
        not as closures, or they receive no gradient).
    """
    if not callable(objective):
        raise DLSummaryError(
            f"argmin_layer: objective must be a callable objective(y, *inputs) -> tensor, "
            f"got {type(objective).__name__}."
        )
    if not callable(solver):
        raise DLSummaryError(
            f"argmin_layer: solver must be a callable solver(*inputs) -> y*, "
            f"got {type(solver).__name__}."
        )
    if linear_solver not in ("auto", "direct", "minres"):
        raise DLSummaryError(
            f"argmin_layer: linear_solver={linear_solver!r} is not one of "
            "'auto', 'direct', 'minres'."
        )
    if stationary not in ("minimum", "any"):
        raise DLSummaryError(
            f"argmin_layer: stationary={stationary!r} is not one of 'minimum', 'any'."
        )
    if direct_max_size < 1:
        raise DLSummaryError(f"argmin_layer: direct_max_size must be >= 1, got {direct_max_size}.")
    return ArgminLayer(
        objective=objective,
        solver=solver,
        linear_solver=linear_solver,
        direct_max_size=direct_max_size,
        stationarity_tol=stationarity_tol,
        minres_tol=minres_tol,
        minres_max_iter=minres_max_iter,
        stationary=stationary,
    )


class ArgminLayer:
    """A callable ``layer(*inputs) -> y*``, differentiable by the implicit function theorem.

    Build it with :func:`argmin_layer`. It holds no state besides its settings.
    """

    def __init__(
        self,
        objective: Objective,
        solver: Solver,
        linear_solver: LinearSolver,
        direct_max_size: int,
        stationarity_tol: float | None,
        minres_tol: float | None,
        minres_max_iter: int | None,
        stationary: Stationary = "minimum",
    ) -> None:
        self.objective = objective
        self.solver = solver
        self.linear_solver = linear_solver
        self.direct_max_size = direct_max_size
        self.stationarity_tol = stationarity_tol
        self.minres_tol = minres_tol
        self.minres_max_iter = minres_max_iter
        self.stationary = stationary

    def __repr__(self) -> str:
        name = getattr(self.objective, "__qualname__", type(self.objective).__name__)
        sname = getattr(self.solver, "__qualname__", type(self.solver).__name__)
        return (
            f"ArgminLayer(objective={name}, solver={sname}, linear_solver={self.linear_solver!r})"
        )

    def __call__(self, *inputs: Any) -> torch.Tensor:
        """Solve the inner problem for ``inputs`` and return ``y*`` (differentiable)."""
        if not inputs:
            raise DLSummaryError(
                "argmin_layer: call the layer with the inner problem's inputs, "
                "layer(z, ...); it got none."
            )
        return _ArgminFunction.apply(self, *inputs)

    # -- pieces used by the autograd function -------------------------------------------

    def _solve(self, inputs: Sequence[Any]) -> torch.Tensor:
        y = self.solver(*inputs)
        if not isinstance(y, torch.Tensor):
            raise DLSummaryError(
                f"argmin_layer: solver {_name(self.solver)} returned {type(y).__name__}; "
                "it must return the minimiser y* as a torch.Tensor."
            )
        if not y.is_floating_point():
            raise DLSummaryError(
                f"argmin_layer: solver {_name(self.solver)} returned a {y.dtype} tensor; "
                "y* must be floating point (float32 or float64)."
            )
        ref = _first_float_tensor(inputs)
        if ref is not None and (ref.dtype != y.dtype or ref.device != y.device):
            raise DLSummaryError(
                f"argmin_layer: solver {_name(self.solver)} returned y* as {y.dtype} on "
                f"{y.device}, but the inputs are {ref.dtype} on {ref.device}; return y* in "
                "the inputs' dtype and device."
            )
        if not torch.isfinite(y).all():
            raise DLSummaryError(
                f"argmin_layer: solver {_name(self.solver)} returned non-finite values "
                f"(y* of shape {tuple(y.shape)}); it did not find a minimiser."
            )
        return y.detach()

    def _values(self, y: torch.Tensor, inputs: Sequence[Any]) -> torch.Tensor:
        """Objective at ``y`` as one value per problem, shape (P,)."""
        try:
            value = self.objective(y, *inputs)
        except Exception as err:  # user code: report what it was called with
            shapes = ", ".join(
                str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
                for x in inputs
            )
            raise DLSummaryError(
                f"argmin_layer: objective {_name(self.objective)} failed when called with "
                f"y of shape {tuple(y.shape)} and inputs ({shapes}): "
                f"{type(err).__name__}: {err}"
            ) from err
        if not isinstance(value, torch.Tensor):
            raise DLSummaryError(
                f"argmin_layer: objective {_name(self.objective)} returned "
                f"{type(value).__name__}; it must return a tensor (a scalar, or one value "
                "per row of y)."
            )
        if value.dim() == 0:
            return value.reshape(1)
        if y.dim() >= 1 and value.shape == (y.shape[0],):
            return value
        raise DLSummaryError(
            f"argmin_layer: objective {_name(self.objective)} returned shape "
            f"{tuple(value.shape)} for y of shape {tuple(y.shape)}; expected a scalar (one "
            f"problem) or shape ({y.shape[0] if y.dim() else 1},) (one value per row of y, a "
            "batch of independent problems)."
        )

    def _tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        double = dtype == torch.float64
        stat = self.stationarity_tol
        if stat is None:
            stat = 1e-6 if double else 1e-3
        mtol = self.minres_tol
        if mtol is None:
            mtol = 1e-10 if double else 1e-5
        return stat, mtol


class _ArgminFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, layer: ArgminLayer, *inputs: Any) -> torch.Tensor:  # type: ignore[override]
        y = layer._solve(inputs)
        stat_tol, _ = layer._tolerances(y.dtype)
        _check_stationary(layer, y, inputs, stat_tol)
        tensors = [x if isinstance(x, torch.Tensor) else None for x in inputs]
        ctx.layer = layer
        ctx.others = [None if isinstance(x, torch.Tensor) else x for x in inputs]
        ctx.save_for_backward(y, *[t for t in tensors if t is not None])
        ctx.is_tensor = [t is not None for t in tensors]
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        layer: ArgminLayer = ctx.layer
        y_star, *saved = ctx.saved_tensors
        saved_iter = iter(saved)
        inputs: list[Any] = []
        for is_tensor, other in zip(ctx.is_tensor, ctx.others, strict=True):
            if is_tensor:
                t = next(saved_iter)
                inputs.append(t.detach().requires_grad_(t.is_floating_point()))
            else:
                inputs.append(other)
        wanted = [
            i
            for i, (x, need) in enumerate(zip(inputs, ctx.needs_input_grad[1:], strict=True))
            if need and isinstance(x, torch.Tensor)
        ]
        with torch.enable_grad():
            y = y_star.detach().requires_grad_(True)
            values = layer._values(y, inputs)
            problems = values.shape[0]
            (g,) = torch.autograd.grad(values.sum(), y, create_graph=True)
            if not g.requires_grad:  # objective linear in y: Hessian is zero
                raise _singular_error(layer, y, "the objective is linear in y (zero Hessian)")

            def hvp(v: torch.Tensor) -> torch.Tensor:
                (hv,) = torch.autograd.grad(
                    g, y, grad_outputs=v, retain_graph=True, allow_unused=True
                )
                return torch.zeros_like(v) if hv is None else hv

            def hvp_batched(vs: torch.Tensor) -> torch.Tensor:
                """H v for a stack of v (first dimension): one vectorised backward pass."""
                with warnings.catch_warnings():  # ops without a batching rule loop inside
                    warnings.filterwarnings("ignore", message=".*batching rule.*")
                    (hv,) = torch.autograd.grad(g, y, grad_outputs=vs, retain_graph=True,
                                                allow_unused=True, is_grads_batched=True)
                return torch.zeros_like(vs) if hv is None else hv

            if problems > 1:
                _check_independent(layer, y, hvp, problems)
            u = _solve_hessian(layer, y, hvp, hvp_batched, grad_y.contiguous(), problems)
            targets = [inputs[i] for i in wanted]
            grads_in = (
                torch.autograd.grad(g, targets, grad_outputs=-u, allow_unused=True)
                if targets
                else ()
            )
        out: list[Any] = [None] * len(inputs)
        for i, gi in zip(wanted, grads_in, strict=True):
            out[i] = gi
        return (None, *out)


# --- helpers ---------------------------------------------------------------------------


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", type(fn).__name__)


def _first_float_tensor(inputs: Sequence[Any]) -> torch.Tensor | None:
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x
    return None


def _per_problem_norm(x: torch.Tensor, problems: int) -> torch.Tensor:
    return x.reshape(problems, -1).norm(dim=1)


def _check_stationary(
    layer: ArgminLayer, y_star: torch.Tensor, inputs: Sequence[Any], tol: float
) -> None:
    """Raise when ``y*`` is not a stationary point of the objective (relative residual), or,
    with ``stationary="minimum"``, when the curvature along a random direction is negative."""
    detached = [x.detach() if isinstance(x, torch.Tensor) else x for x in inputs]
    probe_curvature = layer.stationary == "minimum"
    with torch.enable_grad():
        y = y_star.clone().requires_grad_(True)
        values = layer._values(y, detached)
        if not values.requires_grad:
            raise _singular_error(layer, y, "the objective does not depend on y")
        (g,) = torch.autograd.grad(values.sum(), y, allow_unused=True,
                                   create_graph=probe_curvature)
        problems = values.shape[0]
        curvature = None
        if g is not None and probe_curvature and g.requires_grad:
            direction = torch.randn(y.shape, generator=torch.Generator().manual_seed(0),
                                    dtype=y.dtype).to(y.device)
            (hv,) = torch.autograd.grad(g, y, grad_outputs=direction, allow_unused=True)
            if hv is not None:
                flat_d, flat_hv = direction.reshape(problems, -1), hv.reshape(problems, -1)
                curvature = ((flat_d * flat_hv).sum(1),
                             flat_hv.norm(dim=1) * flat_d.norm(dim=1))
        # scale: the gradient at y = 0, the usual starting point (1 where undefined there)
        y0 = torch.zeros_like(y_star).requires_grad_(True)
        try:
            (g0,) = torch.autograd.grad(layer._values(y0, detached).sum(), y0, allow_unused=True)
        except (DLSummaryError, RuntimeError):
            g0 = None
    if g is None:
        raise _singular_error(layer, y, "the objective does not depend on y")
    g = g.detach()
    residual = _per_problem_norm(g, problems)
    scale = torch.ones_like(residual)
    if g0 is not None and torch.isfinite(g0).all():
        scale = torch.clamp(_per_problem_norm(g0.detach(), problems), min=1.0)
    relative = residual / scale
    worst = int(relative.argmax())
    if not torch.isfinite(relative).all() or float(relative[worst]) > tol:
        where = f" (problem {worst} of {problems})" if problems > 1 else ""
        raise DLSummaryError(
            f"argmin_layer: solver {_name(layer.solver)} returned a point that is not "
            f"stationary for objective {_name(layer.objective)}: |grad_y f(y*)| = "
            f"{float(residual[worst]):.3g}, relative residual {float(relative[worst]):.3g} > "
            f"tolerance {tol:.3g}{where}. The implicit gradient assumes grad_y f(y*) = 0: "
            "solve the inner problem more accurately, check that objective and solver "
            "describe the same problem, or raise stationarity_tol."
        )
    if curvature is not None:
        along, bound = (c.detach() for c in curvature)
        negative = along < -math.sqrt(torch.finfo(y.dtype).eps) * bound
        if bool(negative.any()):
            p = int(negative.nonzero()[0])
            raise _not_a_minimum(
                layer, y, f"the curvature along a random direction d is d^T H d = "
                f"{float(along[p]):.3g} < 0", p, problems)


def _not_a_minimum(layer: ArgminLayer, y: torch.Tensor, evidence: str, problem: int,
                   problems: int) -> DLSummaryError:
    where = f" (problem {problem} of {problems})" if problems > 1 else ""
    return DLSummaryError(
        f"argmin_layer: solver {_name(layer.solver)} returned a stationary point of objective "
        f"{_name(layer.objective)} (y of shape {tuple(y.shape)}) that is not a minimum: "
        f"{evidence}{where}, so it is a maximum or a saddle point. Check the objective's "
        "sign (to maximise g, minimise -g), or pass stationary='any' if a saddle point or "
        "maximum is what the layer should return."
    )


def _check_independent(
    layer: ArgminLayer,
    y: torch.Tensor,
    hvp: Callable[[torch.Tensor], torch.Tensor],
    problems: int,
) -> None:
    """One value per row promises independent problems: probe row 0 of the Hessian."""
    probe = torch.zeros(problems, y.numel() // problems, dtype=y.dtype, device=y.device)
    probe[0] = 1.0
    response = hvp(probe.reshape(y.shape)).reshape(problems, -1).abs()
    own = float(response[0].max())
    leak = float(response[1:].max())
    if leak > math.sqrt(torch.finfo(y.dtype).eps) * max(own, 1e-30):
        raise DLSummaryError(
            f"argmin_layer: objective {_name(layer.objective)} returned one value per row of y "
            f"(shape {tuple(y.shape)}), which declares {problems} independent problems, but "
            f"row 0 is coupled to other rows (Hessian entry {leak:.3g} against {own:.3g} "
            "within row 0). Return a scalar (the sum) when y is one problem."
        )


def _singular_error(layer: ArgminLayer, y: torch.Tensor, why: str) -> DLSummaryError:
    return DLSummaryError(
        f"argmin_layer: the Hessian of objective {_name(layer.objective)} in y (shape "
        f"{tuple(y.shape)}) is singular at y*: {why}. The implicit function theorem needs an "
        "invertible Hessian; make the inner problem strictly convex near y* (e.g. add a "
        "small (eps/2)*|y|^2 term)."
    )


def _solve_hessian(
    layer: ArgminLayer,
    y: torch.Tensor,
    hvp: Callable[[torch.Tensor], torch.Tensor],
    hvp_batched: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    problems: int,
) -> torch.Tensor:
    """Solve ``H u = rhs`` for every problem (block-diagonal H)."""
    size = y.numel() // problems
    method = layer.linear_solver
    if method == "auto":
        method = "direct" if size <= layer.direct_max_size else "minres"
    _, mtol = layer._tolerances(y.dtype)
    if method == "direct":
        return _direct_solve(layer, y, hvp, hvp_batched, rhs, problems, size)
    max_iter = layer.minres_max_iter or max(20, 10 * size)
    u, rel, iters, ritz = _minres(hvp, rhs, problems=problems, tol=mtol, max_iter=max_iter)
    eps = torch.finfo(y.dtype).eps
    magnitude = ritz.abs()
    largest = magnitude.max(dim=1).values
    if layer.stationary == "minimum":
        negative = ritz.min(dim=1).values < -math.sqrt(eps) * largest
        if bool(negative.any()):
            p = int(negative.nonzero()[0])
            raise _not_a_minimum(
                layer, y, f"MINRES's Krylov subspace holds a direction of negative curvature "
                f"(smallest Ritz value {float(ritz[p].min()):.3g}; H's smallest eigenvalue is "
                "at most that)", p, problems)
    if not torch.isfinite(u).all() or float(rel.max()) > 1e3 * mtol:
        worst = int(torch.nan_to_num(rel, nan=math.inf).argmax())
        where = f" (problem {worst} of {problems})" if problems > 1 else ""
        smallest = float(magnitude[worst].min())
        big = float(largest[worst])
        spread = (f"its Ritz values (estimates of H's eigenvalues) range in magnitude from "
                  f"{smallest:.3g} to {big:.3g}")
        if not math.isfinite(float(rel[worst])) or float(rel[worst]) > 1:
            what = (f"MINRES on Hessian-vector products diverged{where}: after {iters} "
                    f"iterations its answer u has |H u - v| = {float(rel[worst]):.3g} |v|, "
                    f"worse than u = 0; {spread}")
        else:
            what = (f"MINRES on Hessian-vector products reached only relative residual "
                    f"{float(rel[worst]):.3g} (tolerance {mtol:.3g}) in {iters} "
                    f"iterations{where}; {spread}")
        if smallest > big * eps * size * 10:  # well conditioned: it only needs more steps
            raise DLSummaryError(
                f"argmin_layer: {what}. Raise minres_max_iter (now {max_iter}) or use "
                "linear_solver='direct'."
            )
        raise _singular_error(layer, y, what + ": the Hessian is singular or nearly so")
    return u


def _direct_solve(
    layer: ArgminLayer,
    y: torch.Tensor,
    hvp: Callable[[torch.Tensor], torch.Tensor],
    hvp_batched: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    problems: int,
    size: int,
) -> torch.Tensor:
    """Build each problem's Hessian from ``size`` HVPs (probe e_j in every problem at once:
    the Hessian is block-diagonal; all probes in one vectorised backward pass where the
    objective's operations allow it), check it, then factorise it: Cholesky for a minimum
    (it succeeds iff H is positive definite), else LU after an eigenvalue check."""
    basis = torch.eye(size, dtype=y.dtype, device=y.device)
    probes = basis[:, None, :].expand(size, problems, size).reshape(size, *y.shape)
    try:
        columns = hvp_batched(probes).reshape(size, problems, size)
    except RuntimeError:  # no vmap through some operation: one probe at a time
        columns = torch.stack([hvp(v) for v in probes]).reshape(size, problems, size)
    hessian = columns.permute(1, 2, 0)  # (P, size, size): [p, i, j] = d2f/dyi dyj
    hessian = 0.5 * (hessian + hessian.transpose(1, 2))
    eps = torch.finfo(y.dtype).eps
    b = rhs.reshape(problems, size, 1)
    if layer.stationary == "minimum" and bool(torch.isfinite(hessian).all()):
        factor, info = torch.linalg.cholesky_ex(hessian)
        pivots = torch.diagonal(factor, dim1=1, dim2=2) ** 2  # a lower bound on cond: ratio
        conditioned = pivots.min(dim=1).values > pivots.max(dim=1).values * eps * size * 10
        if bool(((info == 0) & conditioned).all()):
            return torch.cholesky_solve(b, factor).reshape(y.shape)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    magnitude = eigenvalues.abs()
    largest = magnitude.max(dim=1).values
    smallest = magnitude.min(dim=1).values
    singular = ~torch.isfinite(largest) | (smallest <= largest * eps * size * 10) | (largest == 0)
    negative = (eigenvalues < -largest[:, None] * eps * size * 10).sum(1)
    if layer.stationary == "minimum" and bool((negative > 0).any()):
        p = int((negative > 0).nonzero()[0])
        kind = "all of them: a maximum" if int(negative[p]) == size else "a saddle point"
        raise _not_a_minimum(
            layer, y, f"the Hessian has {int(negative[p])} negative eigenvalue(s) of {size} "
            f"({kind}; eigenvalues from {float(eigenvalues[p].min()):.3g} to "
            f"{float(eigenvalues[p].max()):.3g})", p, problems)
    if bool(singular.any()):
        p = int(singular.nonzero()[0])
        where = f" (problem {p} of {problems})" if problems > 1 else ""
        raise _singular_error(
            layer,
            y,
            f"eigenvalues of |H| range from {float(smallest[p]):.3g} to "
            f"{float(largest[p]):.3g}{where}",
        )
    u = torch.linalg.solve(hessian, b)
    return u.reshape(y.shape)


def minres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    problems: int = 1,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Solve ``A x = rhs`` with MINRES for a symmetric (possibly indefinite) operator.

    ``matvec`` applies a block-diagonal operator to a tensor shaped like ``rhs``; the
    ``problems`` blocks are the rows of ``rhs`` reshaped to ``(problems, -1)`` and are solved
    side by side. Returns ``(x, relative_residuals, iterations)``.
    """
    x, rel, iters, _ = _minres(matvec, rhs, problems=problems, tol=tol, max_iter=max_iter)
    return x, rel, iters


def _minres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    problems: int,
    tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """:func:`minres`, also returning each problem's Ritz values, shape (problems, k): the
    eigenvalues of the Lanczos matrix, which lie between H's extreme eigenvalues."""
    shape = rhs.shape
    b = rhs.reshape(problems, -1)

    def op(v: torch.Tensor) -> torch.Tensor:
        return matvec(v.reshape(shape)).reshape(problems, -1)

    x = torch.zeros_like(b)
    beta1 = b.norm(dim=1)
    zero_rhs = beta1 == 0
    safe = torch.where(zero_rhs, torch.ones_like(beta1), beta1)
    v = b / safe[:, None]
    v_old = torch.zeros_like(b)
    w_old = torch.zeros_like(b)
    w_old2 = torch.zeros_like(b)
    beta = beta1.clone()
    c_old = torch.ones_like(beta1)
    s_old = torch.zeros_like(beta1)
    c = torch.ones_like(beta1)
    s = torch.zeros_like(beta1)
    eta = beta1.clone()
    tiny = torch.finfo(b.dtype).tiny
    active = ~zero_rhs
    iters = 0
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    lanczos: list[torch.Tensor] = []  # was the problem still iterating at this step?
    for iters in range(1, max_iter + 1):  # noqa: B007 - returned
        av = op(v)
        alpha = (v * av).sum(dim=1)
        v_new = av - alpha[:, None] * v - beta[:, None] * v_old
        beta_new = v_new.norm(dim=1)
        alphas.append(alpha)
        betas.append(beta_new)
        lanczos.append(active)
        eps_k = s_old * beta
        delta_tmp = c_old * beta
        delta = c * delta_tmp + s * alpha
        gamma_tmp = -s * delta_tmp + c * alpha
        gamma = torch.sqrt(gamma_tmp**2 + beta_new**2)
        ok = active & (gamma > tiny)
        gamma_safe = torch.where(ok, gamma, torch.ones_like(gamma))
        c_new = torch.where(ok, gamma_tmp / gamma_safe, c)
        s_new = torch.where(ok, beta_new / gamma_safe, torch.zeros_like(s))
        w = (v - eps_k[:, None] * w_old2 - delta[:, None] * w_old) / gamma_safe[:, None]
        x = x + torch.where(ok, c_new * eta, torch.zeros_like(eta))[:, None] * w
        eta = torch.where(ok, -s_new * eta, eta)
        beta_safe = torch.where(beta_new > tiny, beta_new, torch.ones_like(beta_new))
        v_old, v = v, v_new / beta_safe[:, None]
        beta = beta_new
        c_old, s_old, c, s = c, s, c_new, s_new
        w_old2, w_old = w_old, w
        rel = eta.abs() / safe
        active = active & ok & (rel > tol) & (beta_new > tiny)
        if not bool(active.any()):
            break
    # report the true residual, not the recurrence's estimate
    true_rel = (b - op(x)).norm(dim=1) / safe
    true_rel = torch.where(zero_rhs, torch.zeros_like(true_rel), true_rel)
    return x.reshape(shape), true_rel, iters, _ritz_values(alphas, betas, lanczos)


def _ritz_values(alphas: list[torch.Tensor], betas: list[torch.Tensor],
                 lanczos: list[torch.Tensor]) -> torch.Tensor:
    """Eigenvalues of each problem's Lanczos tridiagonal matrix, (problems, k), ascending.
    Steps after a problem stopped are replaced by a decoupled copy of its first diagonal
    entry, a Ritz value already present, so they add none."""
    alpha = torch.stack(alphas, dim=1)  # (P, k)
    beta = torch.stack(betas, dim=1)
    used = torch.stack(lanczos, dim=1)
    alpha = torch.where(used, alpha, alpha[:, :1])
    off = torch.where(used[:, 1:], beta[:, :-1], torch.zeros_like(beta[:, :-1]))
    finite = torch.isfinite(alpha).all(1) & torch.isfinite(off).all(1)
    alpha = torch.where(finite[:, None], alpha, torch.zeros_like(alpha))
    off = torch.where(finite[:, None], off, torch.zeros_like(off))
    tridiagonal = torch.diag_embed(alpha) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.linalg.eigvalsh(tridiagonal)
