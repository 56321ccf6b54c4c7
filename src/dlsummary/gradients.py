"""Numerical gradients by finite differences, and gradient checks against autograd.

``numerical_gradient`` applies the definition of the derivative, one coordinate at a time,
but never one evaluation at a time in Python: it builds a batch of perturbed copies of a
tensor and evaluates ``fn`` on all of them in one ``torch.func.vmap`` call (falling back
to a plain loop when ``fn`` cannot be vmapped), a chunk at a time so memory stays bounded.

``check_gradients`` / ``check_module_gradients`` compare autograd's gradient with the
numerical one and return a :class:`GradientCheck`. The ``fast`` mode checks ``k`` random
directional derivatives per tensor instead of every coordinate (``2k`` evaluations per
tensor instead of ``2n``), and states the probability that it misses an error of a given
size: for a unit direction ``u`` drawn uniformly from the sphere, an error ``e`` in the
analytic gradient shows up as ``e . u``, and ``P(|e . u| <= tau)`` has a closed form.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dlsummary.errors import DLSummaryError

__all__ = [
    "GradientCheck",
    "TensorCheck",
    "check_gradients",
    "check_module_gradients",
    "numerical_gradient",
]

#: Batches are sized from the shapes involved, never from a clock, so the same call takes
#: the same path (vmap or loop, and the same chunks) on any machine under any load.
#: At most this many elements in the buffer of perturbed copies (32 MiB in float64).
DEFAULT_CHUNK_ELEMENTS = 2**22
#: At most this many elements in all intermediate tensors of one batched call of fn (the
#: copies times what one evaluation allocates, counted once): 32 MiB in float64, so a
#: batch's intermediates stay near the caches (larger batches were slower per copy).
BATCH_ELEMENTS = 2**22
#: At most this many perturbed copies in one batch: vmap's per-call overhead is amortised
#: by then.
MAX_CHUNK_ROWS = 256

_METHODS = ("central", "forward")


def default_eps(dtype: torch.dtype, method: str = "central") -> float:
    """The step that balances truncation against round-off error for ``dtype``.

    Forward differences have truncation error O(eps) and round-off O(u/eps), minimised
    near ``sqrt(u)``; central differences have O(eps**2) and O(u/eps), minimised near
    ``u**(1/3)`` (``u`` the unit round-off). For float64: 1.5e-8 and 6.1e-6.
    """
    _check_method(method)
    unit = torch.finfo(dtype).eps
    return float(unit ** (1 / 2) if method == "forward" else unit ** (1 / 3))


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise DLSummaryError(
            f"method={method!r} is not a finite-difference scheme; use 'central' "
            "(error O(eps^2), 2 evaluations per input) or 'forward' (O(eps), 1 per input)"
        )


def _check_inputs(fn: Any, tensors: Sequence[Any], what: str) -> None:
    if not callable(fn):
        raise DLSummaryError(
            f"{what}: fn must be a callable returning a scalar tensor, got a "
            f"{type(fn).__name__}; write e.g. {what}(lambda w: loss(w), w)"
        )
    if not tensors:
        raise DLSummaryError(
            f"{what}: no tensors given; pass the tensors to differentiate after fn, "
            f"e.g. {what}(fn, W, b)"
        )
    for position, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise DLSummaryError(
                f"{what}: argument {position} is a {type(tensor).__name__}, not a "
                "torch.Tensor; pass tensors, e.g. torch.as_tensor(value, dtype=torch.float64)"
            )
        if tensor.layout != torch.strided:
            raise DLSummaryError(
                f"{what}: argument {position} is a {tensor.layout} tensor of shape "
                f"{tuple(tensor.shape)}; finite differences perturb every stored entry of a "
                "dense tensor: pass tensor.to_dense() (and densify inside fn if it needs "
                "the sparse layout)"
            )
        if not tensor.is_floating_point():
            raise DLSummaryError(
                f"{what}: argument {position} has dtype {tensor.dtype}, but a gradient "
                "needs a real floating-point tensor; convert it with .double()"
            )
        if tensor.numel() == 0:
            raise DLSummaryError(
                f"{what}: argument {position} has shape {tuple(tensor.shape)} with no "
                "elements; there is nothing to differentiate"
            )


def _warn_low_precision(tensors: Sequence[Tensor], what: str) -> None:
    low = sorted({str(t.dtype) for t in tensors if torch.finfo(t.dtype).bits < 64})
    if low:
        warnings.warn(
            f"{what}: finite differences in {', '.join(low)} lose about half of the "
            "digits (forward) or a third (central) to round-off; for a gradient check use "
            "float64 (tensor.double())",
            UserWarning,
            stacklevel=3,
        )


def _as_scalar(value: Any, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise DLSummaryError(
            f"{what}: fn returned a {type(value).__name__}; it must return a scalar "
            "torch.Tensor (e.g. loss.sum() or loss.mean())"
        )
    if value.numel() != 1:
        raise DLSummaryError(
            f"{what}: fn returned a tensor of shape {tuple(value.shape)}; it must return "
            "a scalar (shape ()); reduce it first, e.g. fn(x).sum()"
        )
    return value.reshape(())


def _call(fn: Callable[..., Any], args: Sequence[Tensor], what: str) -> Tensor:
    """Call the user's ``fn`` once; its own exceptions become one clear error."""
    try:
        value = fn(*args)
    except DLSummaryError:
        raise
    except Exception as err:
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        raise DLSummaryError(
            f"{what}: fn raised {type(err).__name__} when called with tensors of shapes "
            f"{shapes}: {err}"
        ) from err
    return _as_scalar(value, what)


def _check_finite(value: Tensor, what: str) -> None:
    if not bool(torch.isfinite(value)):
        raise DLSummaryError(
            f"{what}: fn is {float(value)} at the given tensors, so it has no derivative "
            "to approximate there; check for log or sqrt of a negative number, 0/0, or "
            "inf - inf (a masked -inf that reaches a sum), or pick another point"
        )


class _ElementCounter(TorchDispatchMode):
    """Counts the elements of every tensor an evaluation of ``fn`` allocates."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, Tensor):
                self.elements += value.numel()
        return out


def _elements_per_evaluation(fn: Callable[..., Any], args: Sequence[Tensor]) -> int:
    """How many tensor elements one evaluation of ``fn`` allocates: a size, which bounds a
    batch's memory (a batch of ``r`` copies allocates about ``r`` times as much)."""
    counter = _ElementCounter()
    try:
        with counter:
            fn(*args)
    except Exception:  # fn already ran once without the mode; do not blame the mode
        return 0
    return counter.elements


# --------------------------------------------------------------------------------------
# batched evaluation of fn on perturbed copies of one argument
# --------------------------------------------------------------------------------------


class _BatchEvaluator:
    """Evaluates ``fn`` with argument ``index`` replaced by each row of a batch.

    ``vectorize=None`` uses ``torch.func.vmap`` (one call per batch) and falls back, for
    good, to a loop of plain calls when vmap cannot run ``fn`` (``.item()``, data-dependent
    control flow, randomness) or changes its value; ``True`` insists on vmap, ``False``
    loops. The choice depends on what ``fn`` does, never on timing. Each looped row is a
    fresh tensor (not a view into the batch), so code that reads storage offsets or
    strides sees what it would see on the original argument.
    """

    def __init__(self, fn: Callable[..., Any], args: Sequence[Tensor], index: int,
                 vectorize: bool | None, what: str, progress: Any = None) -> None:
        self.fn, self.args, self.index, self.what = fn, list(args), index, what
        self.forced = vectorize is True
        self.vectorize = vectorize is not False
        self.checked = False  # the first vmapped row is held against a plain call
        self.progress = progress

    def _with(self, value: Tensor) -> list[Tensor]:
        args = list(self.args)
        args[self.index] = value
        return args

    def _vmapped(self, batch: Tensor) -> Tensor:
        out = torch.func.vmap(lambda row: self.fn(*self._with(row)))(batch)
        if not isinstance(out, Tensor) or out.numel() != batch.shape[0]:
            raise RuntimeError("vmapped fn did not return one scalar per row")
        return out.reshape(batch.shape[0])

    def _looped(self, batch: Tensor) -> Tensor:
        return torch.stack([_call(self.fn, self._with(row.clone()), self.what)
                            for row in batch])

    def __call__(self, batch: Tensor) -> Tensor:
        values = self._evaluate(batch)
        if self.progress is not None:
            self.progress.update(batch.shape[0])
        return values

    def _evaluate(self, batch: Tensor) -> Tensor:
        if not self.vectorize:
            return self._looped(batch)
        try:
            values = self._vmapped(batch)
        except Exception as err:  # a plain call of the same row says what is wrong, if any
            if self.forced:
                raise DLSummaryError(
                    f"{self.what}: vectorize=True, but torch.func.vmap cannot run fn on a "
                    f"batch of {batch.shape[0]} perturbed copies ({type(err).__name__}: "
                    f"{err}); leave vectorize=None to fall back to a loop"
                ) from err
            self.vectorize = False
            return self._looped(batch)
        if not self.checked:
            self.checked = True
            reference = _call(self.fn, self._with(batch[0].clone()), self.what)
            scale = max(1.0, abs(float(reference)))
            tolerance = 64 * torch.finfo(batch.dtype).eps * scale
            if not abs(float(values[0]) - float(reference)) <= tolerance:
                if self.forced:
                    raise DLSummaryError(
                        f"{self.what}: vectorize=True, but fn under vmap gives "
                        f"{float(values[0])!r} where a plain call gives {float(reference)!r}; "
                        "leave vectorize=None to use a loop"
                    )
                self.vectorize = False  # vmap changes fn's result: never use it
                return self._looped(batch)
        return values


def _chunk_rows(numel: int, sides: int, elements_per_evaluation: int,
                chunk_size: int | None) -> int:
    """Perturbed copies per batch, from sizes only: the buffer of copies stays within
    ``DEFAULT_CHUNK_ELEMENTS``, one batched call's intermediates within ``BATCH_ELEMENTS``."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise DLSummaryError(
                f"chunk_size={chunk_size!r} must be a positive integer: the number of "
                "perturbed copies evaluated in one batch"
            )
        return chunk_size
    by_buffer = DEFAULT_CHUNK_ELEMENTS // (numel * sides)
    by_intermediates = BATCH_ELEMENTS // max(1, elements_per_evaluation * sides)
    return max(1, min(MAX_CHUNK_ROWS, by_buffer, by_intermediates))


def _steps(plus: Tensor, minus: Tensor, eps: float) -> Tensor:
    """The step actually taken, ``plus - minus`` (exact in floating point), or the nominal
    one where an entry is infinite (``-inf + eps`` is ``-inf``: the difference is NaN)."""
    taken = plus - minus
    return torch.where(torch.isfinite(taken) & (taken > 0), taken, torch.full_like(taken, eps))


def _coordinate_gradient(evaluate: _BatchEvaluator, x: Tensor, eps: float, method: str,
                         f0: Tensor, rows: int) -> Tensor:
    """Finite differences along every coordinate of ``x``, ``rows`` coordinates at a
    time. The batch buffer is reused: only the perturbed entries are written and reset."""
    flat = x.reshape(-1)
    numel = flat.numel()
    sides = 2 if method == "central" else 1
    chunk = min(rows, numel)
    buffer = flat.expand(sides * chunk, numel).clone()
    grad = torch.empty_like(flat)
    for start in range(0, numel, chunk):
        stop = min(start + chunk, numel)
        count = stop - start
        original = flat[start:stop]
        # row r of the batch perturbs coordinate start + r: a diagonal of the buffer
        plus_diagonal = buffer[:count, start:stop].diagonal()
        plus = original + eps
        plus_diagonal.copy_(plus)
        if sides == 2:
            minus_diagonal = buffer[chunk:chunk + count, start:stop].diagonal()
            minus = original - eps
            minus_diagonal.copy_(minus)
            used = buffer if count == chunk else torch.cat(
                [buffer[:count], buffer[chunk:chunk + count]])
            values = evaluate(used.reshape(2 * count, *x.shape))
            grad[start:stop] = (values[:count] - values[count:]) / _steps(plus, minus, 2 * eps)
            minus_diagonal.copy_(original)
        else:
            values = evaluate(buffer[:count].reshape(count, *x.shape))
            grad[start:stop] = (values - f0) / _steps(plus, original, eps)
        plus_diagonal.copy_(original)
    return grad.reshape(x.shape)


def _one_sided_values(evaluate: _BatchEvaluator, x: Tensor, index: Tensor, h: float,
                      rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``fn`` at ``x + h e_i`` and ``x - h e_i`` for the coordinates ``i`` in ``index``, with
    the steps actually taken up and down, ``rows`` copies per batch."""
    flat = x.reshape(-1)
    count = index.numel()
    chunk = max(1, min(count, rows // 2 if rows > 1 else 1))
    ups, downs, up_steps, down_steps = [], [], [], []
    for start in range(0, count, chunk):
        part = index[start:start + chunk]
        k = part.numel()
        steps = torch.arange(k, device=x.device)
        batch = flat.expand(2 * k, flat.numel()).clone()
        batch[steps, part] += h
        batch[k + steps, part] -= h
        values = evaluate(batch.reshape(-1, *x.shape))
        ups.append(values[:k])
        downs.append(values[k:])
        up_steps.append(_steps(batch[steps, part], flat[part], h))
        down_steps.append(_steps(flat[part], batch[k + steps, part], h))
    return torch.cat(ups), torch.cat(downs), torch.cat(up_steps), torch.cat(down_steps)


def _directional_derivatives(evaluate: _BatchEvaluator, x: Tensor, directions: Tensor,
                             eps: float, method: str, f0: Tensor, rows: int) -> Tensor:
    """Finite differences of ``fn`` along each row of ``directions`` (shape (k, *x.shape))."""
    k = directions.shape[0]
    sides = 2 if method == "central" else 1
    chunk = min(rows, k)
    out = []
    for start in range(0, k, chunk):
        step = eps * directions[start:start + chunk]
        if sides == 2:
            values = evaluate(torch.cat([x + step, x - step]))
            half = step.shape[0]
            out.append((values[:half] - values[half:]) / (2 * eps))
        else:
            out.append((evaluate(x + step) - f0) / eps)
    return torch.cat(out)


def _progress_bar(total: int, enabled: bool, what: str) -> Any:
    """A tqdm bar on stderr counting evaluations (with an ETA), or ``None``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="eval", unit_scale=True, leave=False,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


# --------------------------------------------------------------------------------------
# numerical_gradient
# --------------------------------------------------------------------------------------


def numerical_gradient(
    fn: Callable[..., Tensor],
    *tensors: Tensor,
    eps: float | None = None,
    method: str = "central",
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    progress: bool = False,
) -> tuple[Tensor, ...]:
    """The gradient of the scalar ``fn(*tensors)`` w.r.t. each tensor, by finite differences.

    Returns one tensor per input, like ``torch.autograd.grad``. Central differences
    ``(f(x + eps e_i) - f(x - eps e_i)) / 2 eps`` cost 2 evaluations per input element,
    forward differences 1 (plus one at ``x``). The evaluations are batched: ``chunk_size``
    perturbed copies (default: from the sizes of the tensor and of what one evaluation
    allocates, see ``_chunk_rows``) go through ``fn`` in one ``torch.func.vmap`` call;
    ``vectorize=False`` forces a loop (``None`` uses vmap where ``fn`` allows it). Nothing
    is timed, so the result is the same on any machine under any load. ``eps`` defaults
    to :func:`default_eps` for the tensor's dtype. Warns below float64. The given tensors
    are never modified. ``progress=True`` shows a bar with an ETA on stderr.
    """
    what = "numerical_gradient"
    _check_method(method)
    _check_inputs(fn, tensors, what)
    if eps is not None and not (isinstance(eps, (int, float)) and eps > 0):
        raise DLSummaryError(f"{what}: eps={eps!r} must be a positive number, e.g. 1e-6")
    _warn_low_precision(tensors, what)
    args = [t.detach().clone() for t in tensors]  # fn can never see (or modify) the originals
    sides = 2 if method == "central" else 1
    with torch.no_grad():
        f0 = _call(fn, args, what)
        footprint = _elements_per_evaluation(fn, args)
        bar = _progress_bar(sum(sides * x.numel() for x in args), progress, what)
        grads = []
        try:
            for index, x in enumerate(args):
                step = float(eps) if eps is not None else default_eps(x.dtype, method)
                evaluate = _BatchEvaluator(fn, args, index, vectorize, what, bar)
                rows = _chunk_rows(x.numel(), sides, footprint, chunk_size)
                grads.append(_coordinate_gradient(evaluate, x, step, method, f0, rows))
        finally:
            if bar is not None:
                bar.close()
    return tuple(grads)


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorCheck:
    """The comparison for one tensor (or named parameter).

    In a full check the compared entries are the gradient's coordinates; in a fast check
    they are the ``k`` random directional derivatives (``worst`` then names directions).
    ``tolerance`` is the fast check's ``tau = atol + rtol * |g| / sqrt(n)``, else ``None``.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    passed: bool
    worst: tuple[tuple[tuple[int, ...], float, float], ...]  # (index, numerical, analytic)
    failing: int
    compared: int
    gradient_norm: float
    tolerance: float | None = None
    kinks: int = 0  # entries at a point where fn is not differentiable (not failures)


@dataclass(frozen=True)
class GradientCheck:
    """Autograd against finite differences, per tensor, with the tolerances used.

    An entry passes when ``|numerical - analytic| <= atol + rtol * |numerical|`` (full
    check) or, for a random unit direction ``u``, when ``|D_num - D_ad| <= tau`` with
    ``tau = atol + rtol * |g| / sqrt(n)`` (fast check).
    """

    tensors: tuple[TensorCheck, ...]
    atol: float
    rtol: float
    eps: float | None
    method: str
    fast: bool
    directions: int | None
    evaluations: int
    seed: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    screened: bool = False  # full check: forward differences first, `method` where they disagree

    @property
    def passed(self) -> bool:
        """True when every tensor passed."""
        return all(t.passed for t in self.tensors)

    def __bool__(self) -> bool:
        return self.passed

    def miss_probability(self, relative_error: float = 0.01) -> dict[str, float]:
        """Fast mode: per tensor, the probability that an error ``e`` in the analytic
        gradient with ``|e| = relative_error * |g|`` passes all ``k`` directions.

        For ``u`` uniform on the unit sphere of R^n, ``P(|e . u| <= tau) =
        I_{s^2}(1/2, (n-1)/2)`` with ``s = tau / |e|`` (regularised incomplete beta); the
        ``k`` directions are independent. Finite-difference error (far below ``tau`` in
        float64) is neglected. A full check returns 0 for every tensor it passed.
        """
        if not self.fast:
            return {t.name: 0.0 for t in self.tensors}
        return {
            t.name: direction_miss_probability(
                math.prod(t.shape), t.tolerance or 0.0, relative_error * t.gradient_norm,
                self.directions or 1,
            )
            for t in self.tensors
        }

    def below_tolerance(self, relative_error: float = 0.01) -> tuple[str, ...]:
        """Fast mode: the tensors whose gradient is so small that an error of
        ``relative_error`` times its norm cannot exceed the tolerance ``tau`` in any
        direction (a gradient of about 0): no relative guarantee is possible for them,
        only the absolute one, ``|error . u| <= tau`` on each direction checked."""
        if not self.fast:
            return ()
        return tuple(t.name for t in self.tensors
                     if relative_error * t.gradient_norm <= (t.tolerance or 0.0))

    def _fast_guarantee(self, relative_error: float) -> list[str]:
        small = set(self.below_tolerance(relative_error))
        miss = self.miss_probability(relative_error)
        rest = {name: p for name, p in miss.items() if name not in small}
        percent = f"{relative_error:.0%}"
        lines = []
        if rest:
            worst = max(rest, key=rest.__getitem__)
            lines.append(
                f"an error of {percent} of a tensor's gradient norm is missed with probability "
                f"<= {rest[worst]:.1e} ({len(rest)} tensor{'s' if len(rest) > 1 else ''}; "
                f"worst {worst}; per tensor: miss_probability())"
            )
        if small:
            names = [t.name for t in self.tensors if t.name in small]
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6
                                            else "")
            tau = max(t.tolerance or 0.0 for t in self.tensors if t.name in small)
            lines.append(
                f"{len(names)} tensor{'s have' if len(names) > 1 else ' has'} a gradient of "
                f"about 0 (an error of {percent} of it is below the tolerance): {shown}; "
                f"checked only to an absolute error of {tau:.1e} per direction"
            )
        return lines

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        mode = (f"fast: {self.directions} random directions per tensor" if self.fast
                else "full: every coordinate")
        scheme = (f"forward differences, {self.method} where they disagree" if self.screened
                  else f"{self.method} differences")
        eps = "default per dtype" if self.eps is None else f"{self.eps:.3g}"
        lines = [
            f"gradient check {verdict} ({mode}; {scheme}, eps={eps}, "
            f"atol={self.atol:g}, rtol={self.rtol:g}; {self.evaluations:,} evaluations)",
        ]
        rows = [("tensor", "shape", "max abs err", "max rel err", "failing", "worst entry: "
                 "numerical vs autograd")]
        for t in self.tensors:
            if t.worst:
                index, num, ana = t.worst[0]
                label = "dir " if self.fast else ""
                worst = f"{label}{list(index)}: {num:.6g} vs {ana:.6g}"
            else:
                worst = ""
            rows.append((t.name, str(t.shape), f"{t.max_abs_error:.2e}",
                         f"{t.max_rel_error:.2e}", f"{t.failing}/{t.compared}", worst))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if self.fast:
            lines.extend(self._fast_guarantee(0.01))
        kinks = sum(t.kinks for t in self.tensors)
        if kinks:
            lines.append(
                f"{kinks} entr{'y' if kinks == 1 else 'ies'} sit at a kink (the one-sided "
                "differences disagree, e.g. a ReLU input at 0, and autograd's value is "
                "between or on them): not differentiable there, so not counted as failures"
            )
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (used by ``dlsummary gradcheck --json``)."""
        return {
            "passed": self.passed,
            "mode": "fast" if self.fast else "full",
            "method": self.method,
            "screened": self.screened,
            "eps": self.eps,
            "atol": self.atol,
            "rtol": self.rtol,
            "directions": self.directions,
            "evaluations": self.evaluations,
            "seed": self.seed,
            "miss_probability_at_1_percent": self.miss_probability(0.01) if self.fast else None,
            "below_tolerance_at_1_percent": list(self.below_tolerance(0.01)),
            "notes": list(self.notes),
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "passed": t.passed,
                    "max_abs_error": t.max_abs_error,
                    "max_rel_error": t.max_rel_error,
                    "failing": t.failing,
                    "compared": t.compared,
                    "gradient_norm": t.gradient_norm,
                    "tolerance": t.tolerance,
                    "kinks": t.kinks,
                    "worst": [
                        {"index": list(i), "numerical": n, "analytic": a} for i, n, a in t.worst
                    ],
                }
                for t in self.tensors
            ],
        }

    def plot(self, ax: Any = None) -> Any:
        """Bar chart of each tensor's max relative error, with ``rtol`` drawn as a line."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        names = [t.name for t in self.tensors]
        errors = [max(t.max_rel_error, 1e-18) for t in self.tensors]
        colors = ["tab:green" if t.passed else "tab:red" for t in self.tensors]
        ax.bar(range(len(names)), errors, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.axhline(self.rtol, color="black", linestyle="--", label=f"rtol = {self.rtol:g}")
        ax.set_ylabel("max relative error")
        ax.set_title("gradient check: " + ("passed" if self.passed else "FAILED"))
        ax.legend()
        return ax


def direction_miss_probability(n: int, tolerance: float, error_norm: float, k: int) -> float:
    """Probability that ``k`` independent uniformly random unit directions in R^n all give
    ``|e . u| <= tolerance`` for an error vector of norm ``error_norm``."""
    if error_norm <= tolerance:
        return 1.0
    s2 = (tolerance / error_norm) ** 2
    if n == 1:
        return 0.0
    from scipy.special import betainc

    return float(betainc(0.5, (n - 1) / 2, s2)) ** k


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------


def _analytic_gradients(fn: Callable[..., Tensor], tensors: Sequence[Tensor],
                        names: Sequence[str], what: str) -> tuple[Tensor, list[Tensor]]:
    xs = [t.detach().clone().requires_grad_(True) for t in tensors]
    with torch.enable_grad():
        value = _call(fn, xs, what)
        if not value.requires_grad:
            raise DLSummaryError(
                f"{what}: fn's result does not depend on the tensors through autograd "
                "(no grad_fn); make sure fn computes with its arguments, not copies made "
                "with .detach(), .item() or numpy"
            )
        try:
            grads = torch.autograd.grad(value, xs, allow_unused=True)
        except Exception as err:
            raise DLSummaryError(
                f"{what}: autograd's backward pass raised {type(err).__name__}: {err} "
                "(the forward pass ran; look at the backward of a custom "
                "torch.autograd.Function or a hook)"
            ) from err
    out = []
    for name, x, g in zip(names, xs, grads, strict=True):
        if g is None:  # autograd says the result does not depend on it
            g = torch.zeros_like(x)
        if g.shape != x.shape:
            raise DLSummaryError(
                f"{what}: autograd returned a gradient of shape {tuple(g.shape)} for "
                f"{name} of shape {tuple(x.shape)}; the backward of a custom Function must "
                "return one gradient per input with the input's shape"
            )
        out.append(g.detach())
    return value.detach(), out


def _worst(numerical: Tensor, analytic: Tensor, allowed: Tensor, shape: tuple[int, ...],
           count: int = 3) -> tuple[tuple[tuple[int, ...], float, float], ...]:
    excess = ((numerical - analytic).abs() / allowed).reshape(-1)
    top = torch.topk(excess, min(count, excess.numel())).indices.tolist()
    num, ana = numerical.reshape(-1), analytic.reshape(-1)
    result = []
    for flat_index in top:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), shape))
        result.append((index, float(num[flat_index]), float(ana[flat_index])))
    return tuple(result)


def _compare(name: str, shape: tuple[int, ...], numerical: Tensor, analytic: Tensor,
             allowed: Tensor, gradient_norm: float, tolerance: float | None,
             kinks: Tensor | None = None) -> TensorCheck:
    diff = (numerical - analytic).abs()
    rel = diff / numerical.abs().clamp_min(torch.finfo(numerical.dtype).tiny)
    bad = ~(diff <= allowed)  # NaN counts as bad
    if kinks is not None:
        bad = bad & ~kinks
    return TensorCheck(
        name=name,
        shape=shape,
        max_abs_error=float(diff.max()),
        max_rel_error=float(rel.max()),
        passed=not bool(bad.any()),
        worst=_worst(numerical, analytic, allowed, tuple(numerical.shape)),
        failing=int(bad.sum()),
        compared=numerical.numel(),
        gradient_norm=gradient_norm,
        tolerance=tolerance,
        kinks=0 if kinks is None else int(kinks.sum()),
    )


#: At most this many failing entries of a tensor are probed for kinks: kinks are rare
#: (a ReLU input exactly at 0); hundreds of failing entries are a wrong gradient.
MAX_KINK_PROBES = 256
#: One-sided differences are taken at ``eps`` and at ``KINK_STEP_RATIO * eps``: at a kink
#: each one-sided slope stays put when the step changes, while round-off noise (of size
#: ``noise / step``) does not.
KINK_STEP_RATIO = 4.0
#: A kink is shown when the one-sided slopes disagree by this many times the change of
#: each slope between the two steps (its noise and curvature), and by more than the
#: tolerance.
KINK_MARGIN = 8.0


def _kinks(evaluate: _BatchEvaluator, x: Tensor, eps: float, f0: Tensor, numerical: Tensor,
           analytic: Tensor, allowed: Tensor, rows: int) -> tuple[Tensor | None, int]:
    """Among the entries that fail, find those at a kink of ``fn``, shown rather than
    assumed: the forward and backward one-sided slopes, each measured at two steps, are
    each stable across the steps (so they are slopes, not noise), disagree with each
    other by far more than that instability and than the tolerance, and autograd's value
    lies between them (a one-sided derivative or a subgradient). Returns the mask and the
    number of evaluations spent."""
    bad = ~((numerical - analytic).abs() <= allowed)
    index = bad.reshape(-1).nonzero().reshape(-1)
    count = index.numel()
    if count == 0 or count > MAX_KINK_PROBES:
        return None, 0
    slopes = []
    for h in (eps, KINK_STEP_RATIO * eps):
        up, down, up_step, down_step = _one_sided_values(evaluate, x, index, h, rows)
        slopes.append(((up - f0) / up_step, (f0 - down) / down_step))
    (forward, backward), (forward_far, backward_far) = slopes
    instability = (forward - forward_far).abs() + (backward - backward_far).abs()
    tol = allowed.reshape(-1)[index]
    gap = (forward - backward).abs()
    ana = analytic.reshape(-1)[index]
    low, high = torch.minimum(forward, backward), torch.maximum(forward, backward)
    slack = tol + instability
    at_kink = ((gap > tol) & (gap > KINK_MARGIN * instability)
               & (ana >= low - slack) & (ana <= high + slack))
    mask = torch.zeros(x.numel(), dtype=torch.bool, device=x.device)
    mask[index[at_kink]] = True
    return mask.reshape(x.shape), 4 * count


def _screened_gradient(evaluate: _BatchEvaluator, x: Tensor, eps: float, f0: Tensor,
                       analytic: Tensor, atol: float, rtol: float, rows: int,
                       screen_rows: int) -> tuple[Tensor, int]:
    """Every coordinate by forward differences (one evaluation each, error about
    ``sqrt(u)``, far below the tolerance in float64), then central differences at ``eps``
    for the entries that disagree with autograd: the verdict is central differences',
    at about half their cost. Returns the gradient and the evaluations spent."""
    step = default_eps(x.dtype, "forward")
    numerical = _coordinate_gradient(evaluate, x, step, "forward", f0, screen_rows)
    flat = numerical.reshape(-1)
    disagree = ~((flat - analytic.reshape(-1)).abs() <= atol + rtol * flat.abs())
    index = disagree.nonzero().reshape(-1)
    if index.numel() == 0:
        return numerical, x.numel()
    progress, evaluate.progress = evaluate.progress, None
    up, down, up_step, down_step = _one_sided_values(evaluate, x, index, eps, rows)
    evaluate.progress = progress
    flat[index] = (up - down) / (up_step + down_step)
    return numerical, x.numel() + 2 * index.numel()


def _evaluate_at_point(fn: Callable[..., Tensor], args: Sequence[Tensor], what: str) -> Tensor:
    """``fn`` at the given point: finite, and the same twice (else no finite difference
    means anything)."""
    f0 = _call(fn, args, what)
    _check_finite(f0, what)
    again = _call(fn, args, what)
    if not torch.equal(f0, again):
        raise DLSummaryError(
            f"{what}: fn gave {float(f0)!r} and then {float(again)!r} for the same "
            "input; finite differences need a deterministic function (dropout or "
            "another random layer in training mode? call model.eval())"
        )
    return f0


def _run_check(fn: Callable[..., Tensor], tensors: Sequence[Tensor], names: Sequence[str],
               *, fast: bool, atol: float, rtol: float, eps: float | None, method: str,
               directions: int, seed: int, chunk_size: int | None, vectorize: bool | None,
               what: str, notes: tuple[str, ...] = (), progress: bool = False,
               screen: bool = True) -> GradientCheck:
    _check_method(method)
    if not (atol >= 0 and rtol >= 0):
        raise DLSummaryError(f"{what}: atol={atol!r} and rtol={rtol!r} must be >= 0")
    if eps is not None and not (isinstance(eps, (int, float)) and eps > 0):
        raise DLSummaryError(f"{what}: eps={eps!r} must be a positive number, e.g. 1e-6")
    if fast and (not isinstance(directions, int) or directions < 1):
        raise DLSummaryError(f"{what}: directions={directions!r} must be a positive integer")
    _warn_low_precision(tensors, what)
    args = [t.detach().clone() for t in tensors]
    with torch.no_grad():
        f0 = _evaluate_at_point(fn, args, what)
        footprint = _elements_per_evaluation(fn, args)
    _, analytic = _analytic_gradients(fn, tensors, names, what)
    sides = 2 if method == "central" else 1
    screening = screen and method == "central" and not fast
    evaluations = 0 if method == "central" and not screening else 1  # the one at x
    per_entry = 1 if screening else sides
    planned = sum(sides * directions if fast else per_entry * x.numel() for x in args)
    bar = _progress_bar(planned, progress, what)
    results = []
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for index, (name, x, g) in enumerate(zip(names, args, analytic, strict=True)):
                step = float(eps) if eps is not None else default_eps(x.dtype, method)
                n = x.numel()
                evaluate = _BatchEvaluator(fn, args, index, vectorize, what, bar)
                rows = _chunk_rows(n, sides, footprint, chunk_size)
                norm = float(g.norm())
                if fast:
                    z = torch.randn((directions, n), generator=generator, dtype=torch.float64)
                    units = (z / z.norm(dim=1, keepdim=True)).to(device=x.device, dtype=x.dtype)
                    units = units.reshape(directions, *x.shape)
                    numerical = _directional_derivatives(evaluate, x, units, step, method, f0,
                                                         rows)
                    analytic_dir = units.reshape(directions, n) @ g.reshape(n)
                    tau = atol + rtol * norm / math.sqrt(n)
                    allowed = torch.full_like(numerical, tau)
                    results.append(_compare(name, tuple(x.shape), numerical, analytic_dir,
                                            allowed, norm, tau))
                    evaluations += sides * directions
                else:
                    if screen and method == "central":
                        numerical, spent = _screened_gradient(
                            evaluate, x, step, f0, g, atol, rtol, rows,
                            _chunk_rows(n, 1, footprint, chunk_size))
                    else:
                        numerical = _coordinate_gradient(evaluate, x, step, method, f0, rows)
                        spent = sides * n
                    allowed = atol + rtol * numerical.abs()
                    evaluate.progress = None  # the bar counts the planned evaluations
                    kinks, extra = _kinks(evaluate, x, step, f0, numerical, g, allowed, rows)
                    results.append(_compare(name, tuple(x.shape), numerical, g, allowed, norm,
                                            None, kinks))
                    evaluations += spent + extra
    finally:
        if bar is not None:
            bar.close()
    return GradientCheck(
        tensors=tuple(results), atol=float(atol), rtol=float(rtol),
        eps=None if eps is None else float(eps), method=method, fast=fast,
        directions=directions if fast else None, evaluations=evaluations,
        seed=seed if fast else None, notes=notes, screened=screening,
    )


def check_gradients(
    fn: Callable[..., Tensor],
    *tensors: Tensor,
    fast: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    eps: float | None = None,
    method: str = "central",
    directions: int = 4,
    seed: int = 0,
    names: Sequence[str] | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    progress: bool = False,
    screen: bool = True,
) -> GradientCheck:
    """Compare autograd's gradient of the scalar ``fn(*tensors)`` with finite differences.

    Full check: every coordinate, screened by forward differences (``n`` evaluations),
    with central differences (2 more each) for the entries that disagree with autograd;
    ``screen=False`` takes central differences everywhere (``2n``). ``fast=True``: ``directions``
    random unit directions per tensor, ``2 * directions`` evaluations whatever the size;
    ``GradientCheck.miss_probability`` states the chance of missing an error of a given
    size. Tolerances as in ``torch.autograd.gradcheck`` (atol 1e-5, rtol 1e-3); use float64.
    """
    what = "check_gradients"
    _check_inputs(fn, tensors, what)
    if names is None:
        names = [f"arg{i}" for i in range(len(tensors))]
    elif len(names) != len(tensors):
        raise DLSummaryError(
            f"{what}: {len(names)} names for {len(tensors)} tensors; give one name per tensor"
        )
    return _run_check(fn, tensors, list(names), fast=fast, atol=atol, rtol=rtol, eps=eps,
                      method=method, directions=directions, seed=seed,
                      chunk_size=chunk_size, vectorize=vectorize, what=what,
                      progress=progress, screen=screen)


def check_module_gradients(
    model: nn.Module,
    loss_fn: Callable[..., Tensor] | None,
    *inputs: Any,
    target: Any = None,
    fast: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    eps: float | None = None,
    method: str = "central",
    directions: int = 4,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float64,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    progress: bool = False,
    screen: bool = True,
) -> GradientCheck:
    """Check autograd's gradient of ``loss_fn(model(*inputs), target)`` (PyTorch's
    convention; ``loss_fn(model(*inputs))`` when no ``target`` is given) w.r.t. every
    trainable parameter, reported per qualified parameter name.

    ``inputs`` are the arguments of ``forward``, as many as it takes: floating-point
    tensors are cast to ``dtype``, integer and boolean ones (token ids, masks) and
    non-tensors are passed unchanged. Works on a deep copy cast to ``dtype`` (float64 by
    default, since finite differences in float32 cannot judge a gradient to 1e-3;
    ``dtype=None`` keeps the model's own), so the caller's model is never changed.
    ``loss_fn=None`` uses a fixed random projection of the output, ``(out * R).sum()``,
    which (unlike ``out.sum()``) cannot hide errors that cancel across outputs. Put the
    model in eval mode (or remove its randomness) first: the loss must be a deterministic
    function of the parameters. ``progress=True`` shows a bar with an ETA on stderr.
    """
    what = "check_module_gradients"
    if not isinstance(model, nn.Module):
        raise DLSummaryError(
            f"{what}: model must be a torch.nn.Module, got a {type(model).__name__}; for a "
            "plain function use check_gradients(fn, *tensors)"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise DLSummaryError(
            f"{what}: loss_fn must map the model's output (and the target) to a scalar, or "
            f"be None; got a {type(loss_fn).__name__}, e.g. nn.CrossEntropyLoss() with "
            "target=y"
        )
    if loss_fn is None and target is not None:
        raise DLSummaryError(
            f"{what}: a target was given but no loss_fn to compare the output with; pass "
            "e.g. nn.MSELoss() as loss_fn"
        )
    work = copy.deepcopy(model)
    if dtype is not None:
        work = work.to(dtype)
    named = [(n, p) for n, p in work.named_parameters() if p.requires_grad]
    if not named:
        raise DLSummaryError(
            f"{what}: {type(model).__name__} has no parameters that require grad; "
            "nothing to check"
        )
    device = named[0][1].device

    def cast(value: Any, label: str) -> Any:
        if isinstance(value, Tensor):
            if value.device != device:
                raise DLSummaryError(
                    f"{what}: {label} is on {value.device} but {type(model).__name__}'s "
                    f"parameters are on {device}; move it with .to('{device}')"
                )
            if value.layout != torch.strided:
                raise DLSummaryError(
                    f"{what}: {label} is a {value.layout} tensor; pass .to_dense()"
                )
            value = value.detach()
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
        return value

    cast_inputs = tuple(cast(v, f"input {i}") for i, v in enumerate(inputs))
    cast_target = cast(target, "target")
    names = [n for n, _ in named]
    buffers = dict(work.named_buffers())
    frozen = {n: p.detach() for n, p in work.named_parameters() if not p.requires_grad}
    projection: list[Tensor] = []

    def describe_inputs() -> str:
        return ", ".join(
            f"{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
            if isinstance(v, Tensor) else type(v).__name__
            for v in cast_inputs
        ) or "none"

    def forward(*params: Tensor) -> Tensor:
        state = {**buffers, **frozen, **dict(zip(names, params, strict=True))}
        try:
            out = torch.func.functional_call(work, state, cast_inputs)
        except Exception as err:
            hint = ""
            if loss_fn is not None and target is None and len(cast_inputs) > 1:
                hint = "; if the last input is the loss's target, pass it as target=..."
            raise DLSummaryError(
                f"{what}: {type(model).__name__}.forward raised {type(err).__name__} on "
                f"inputs ({describe_inputs()}): {err}{hint}"
            ) from err
        if loss_fn is not None:
            try:
                return loss_fn(out) if target is None else loss_fn(out, cast_target)
            except Exception as err:
                call = "loss_fn(output)" if target is None else "loss_fn(output, target)"
                raise DLSummaryError(
                    f"{what}: {call} raised {type(err).__name__}: {err}"
                ) from err
        if not isinstance(out, Tensor):
            raise DLSummaryError(
                f"{what}: {type(model).__name__} returned a {type(out).__name__}; pass a "
                "loss_fn that turns it into a scalar tensor"
            )
        if not projection:
            gen = torch.Generator().manual_seed(seed + 1)
            projection.append(torch.randn(out.shape, generator=gen, dtype=torch.float64)
                              .to(device=out.device, dtype=out.dtype))
        return (out * projection[0]).sum()

    params = [p.detach() for _, p in named]
    notes: tuple[str, ...] = ()
    if dtype is not None:
        notes = (f"checked on a {str(dtype).removeprefix('torch.')} copy of the model",)
    return _run_check(forward, params, names, fast=fast, atol=atol, rtol=rtol, eps=eps,
                      method=method, directions=directions, seed=seed,
                      chunk_size=chunk_size, vectorize=vectorize, what=what, notes=notes,
                      progress=progress, screen=screen)
