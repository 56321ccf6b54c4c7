"""Implicit differentiation (``argmin_layer``) against unrolling, on a batch of ridge layers.

The inner problem is ridge regression, ``w*(X, t, lam) = argmin_w 1/2 |X w - t|^2 +
lam/2 |w|^2``, for a batch of independent problems, solved by K steps of gradient descent.
*Unrolled*: autograd records all K steps and backpropagates through them (memory grows
with K). *Implicit*: ``argmin_layer`` runs the very same K steps without a graph and
differentiates the optimality condition (memory independent of K), solving the Hessian
system by building and factorising the 32 x 32 Hessians from Hessian-vector products
(``"auto"`` picks ``"direct"`` for 32 unknowns per problem) and, for comparison, by MINRES
on Hessian-vector products (what ``"auto"`` picks above 256 unknowns). Both are timed
(forward and backward separately, median of repeats, interleaved) and their autograd
memory is counted exactly (the storage autograd holds for the backward pass when the
forward returns, beyond the inputs). Both gradients are compared with the closed-form
solution's. Targets: the implicit backward at least 2x faster and at least 10x less memory,
with a gradient at least as accurate. (The forward, the same K solver steps, costs the
same either way apart from recording the graph.)

A second comparison, ``against_torchopt``: one ridge problem of 50, 100 and 200 unknowns,
forward + backward, against torchopt's implicit differentiation (``custom_root`` with its
conjugate-gradient solve), best process CPU time of interleaved repeats; target: at least
torchopt's speed. torchopt is optional: without it that comparison is skipped.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_implicit.py``
"""

from __future__ import annotations

import gc
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch

from dlsummary import argmin_layer, seed_everything

TARGET_SPEEDUP = 2.0
TARGET_MEMORY_RATIO = 10.0


def ridge_objective(w: torch.Tensor, X: torch.Tensor, t: torch.Tensor, lam: torch.Tensor):
    """One value per problem: w (B, d), X (B, n, d), t (B, n)."""
    residual = torch.einsum("bnd,bd->bn", X, w) - t
    return 0.5 * (residual**2).sum(1) + 0.5 * lam * (w**2).sum(1)


def gd_solver(steps: int) -> Callable[..., torch.Tensor]:
    """K steps of gradient descent with the safe step 1/L (L from the Gram matrices)."""

    def solve(X: torch.Tensor, t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        gram = X.transpose(1, 2) @ X
        step = 1.0 / (torch.linalg.eigvalsh(gram).amax(1) + lam)[:, None]
        w = torch.zeros(X.shape[0], X.shape[2], dtype=X.dtype, device=X.device)
        Xt = torch.einsum("bnd,bn->bd", X, t)
        for _ in range(steps):
            w = w - step * (torch.einsum("bde,be->bd", gram, w) - Xt + lam * w)
        return w

    return solve


def closed_form(X: torch.Tensor, t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(X.shape[2], dtype=X.dtype, device=X.device)
    return torch.linalg.solve(X.transpose(1, 2) @ X + lam * eye, torch.einsum("bnd,bn->bd", X, t))


def saved_bytes(
    fn: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, int]:
    """Run fn and count the bytes autograd still holds for the backward pass when fn returns,
    beyond the inputs themselves (which the caller holds anyway); tensors saved and released
    again (e.g. by a stationarity check) do not count."""
    packed: list[weakref.ref] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        packed.append(weakref.ref(x))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    gc.collect()
    alive = {id(x): x for ref in packed if (x := ref()) is not None}
    storages = {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes()
                for x in alive.values()}
    for x in inputs:
        storages.pop(x.untyped_storage().data_ptr(), None)
    return out, sum(storages.values())


def main(
    batch: int = 32,
    samples: int = 256,
    features: int = 32,
    steps: int = 1000,
    repeats: int = 5,
    device: str | None = None,
    compare_torchopt: bool = True,
) -> dict:
    """Time and count memory of both gradients (and, if asked and installed, compare with
    torchopt); return the figures."""
    seed_everything(0)
    dev = torch.device(device or "cpu")
    dtype = torch.float64
    X = torch.randn(batch, samples, features, dtype=dtype, device=dev)
    X = (X * torch.linspace(0.2, 1.0, features, dtype=dtype, device=dev)).requires_grad_()
    t = torch.randn(batch, samples, dtype=dtype, device=dev).requires_grad_()
    lam = torch.tensor(5.0, dtype=dtype, device=dev, requires_grad=True)
    upstream = torch.randn(batch, features, dtype=dtype, device=dev)
    inputs = (X, t, lam)

    solver = gd_solver(steps)
    layer = argmin_layer(ridge_objective, solver, stationarity_tol=1e-5)  # auto: direct here
    iterative = argmin_layer(
        ridge_objective, solver, stationarity_tol=1e-5, linear_solver="minres"
    )
    runs = {
        "unrolled": lambda: solver(*inputs),
        "implicit": lambda: layer(*inputs),
        "implicit (MINRES)": lambda: iterative(*inputs),
    }

    def forward_backward(name: str) -> tuple[torch.Tensor, ...]:
        out = runs[name]()
        return torch.autograd.grad((out * upstream).sum(), inputs)

    exact = torch.autograd.grad((closed_form(*inputs) * upstream).sum(), inputs)
    figures: dict = {"device": str(dev), "batch": batch, "samples": samples,
                     "features": features, "steps": steps}
    times: dict[str, dict[str, list[float]]] = {
        name: {"forward": [], "backward": []} for name in runs
    }

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(repeats):
        for name in runs:
            sync()
            t0 = time.perf_counter()
            out = runs[name]()
            sync()
            t1 = time.perf_counter()
            torch.autograd.grad((out * upstream).sum(), inputs)
            sync()
            times[name]["forward"].append(t1 - t0)
            times[name]["backward"].append(time.perf_counter() - t1)
    for name in runs:
        grads = torch.autograd.grad((runs[name]() * upstream).sum(), inputs)
        error = max(float((g - e).norm() / e.norm()) for g, e in zip(grads, exact, strict=True))
        _, memory = saved_bytes(runs[name], inputs)
        forward = statistics.median(times[name]["forward"])
        backward = statistics.median(times[name]["backward"])
        figures[name] = {"forward_s": forward, "backward_s": backward,
                         "seconds": forward + backward, "saved_bytes": memory,
                         "relative_gradient_error": error}
    figures["speedup"] = figures["unrolled"]["seconds"] / figures["implicit"]["seconds"]
    figures["backward_speedup"] = (
        figures["unrolled"]["backward_s"] / figures["implicit"]["backward_s"]
    )
    figures["backward_speedup_minres"] = (
        figures["unrolled"]["backward_s"] / figures["implicit (MINRES)"]["backward_s"]
    )
    figures["memory_ratio"] = (
        figures["unrolled"]["saved_bytes"] / figures["implicit"]["saved_bytes"]
    )
    figures["targets_met"] = {
        "backward_speedup": figures["backward_speedup"] >= TARGET_SPEEDUP,
        "memory": figures["memory_ratio"] >= TARGET_MEMORY_RATIO,
        "accuracy": figures["implicit"]["relative_gradient_error"]
        <= max(1e-8, figures["unrolled"]["relative_gradient_error"]),
    }
    if compare_torchopt:
        figures["torchopt"] = against_torchopt()
    return figures


def _print(figures: dict) -> None:
    print(f"ridge layer: {figures['batch']} problems of {figures['samples']} x "
          f"{figures['features']}, {figures['steps']} GD steps, float64, {figures['device']}")
    print(f"{'':>17} {'forward':>9} {'backward':>9} {'autograd memory':>16} "
          f"{'grad error vs closed form':>26}")
    for name in ("unrolled", "implicit", "implicit (MINRES)"):
        f = figures[name]
        print(f"{name:>17} {f['forward_s'] * 1e3:>7.1f}ms {f['backward_s'] * 1e3:>7.1f}ms "
              f"{f['saved_bytes'] / 2**10:>13.1f}KiB {f['relative_gradient_error']:>26.2e}")
    met = {k: "met" if v else "NOT met" for k, v in figures["targets_met"].items()}
    print(f"backward {figures['backward_speedup']:.1f}x faster (target >= {TARGET_SPEEDUP}x: "
          f"{met['backward_speedup']}; with MINRES {figures['backward_speedup_minres']:.1f}x); "
          f"forward + backward {figures['speedup']:.1f}x faster")
    print(f"memory {figures['memory_ratio']:.0f}x less (target >= {TARGET_MEMORY_RATIO}x: "
          f"{met['memory']}); gradient at least as accurate: {met['accuracy']}")


def _single_ridge(w: torch.Tensor, X: torch.Tensor, t: torch.Tensor, lam: torch.Tensor):
    return 0.5 * ((X @ w - t) ** 2).sum() + 0.5 * lam * (w**2).sum()


def _single_closed_form(X: torch.Tensor, t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    return torch.linalg.solve(X.T @ X + lam * eye, X.T @ t)


def _compare_one(torchopt: Any, d: int, repeats: int) -> dict:
    """One size of :func:`against_torchopt`."""
    import warnings

    def optimality(w, X, t, lam):  # torchopt differentiates the optimality condition
        return X.T @ (X @ w - t) + lam * w

    g = torch.Generator().manual_seed(d)
    X = torch.randn(2 * d, d, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(2 * d, generator=g, dtype=torch.float64).requires_grad_()
    lam = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(d, generator=g, dtype=torch.float64)
    ours = argmin_layer(_single_ridge, _single_closed_form)
    solve = torchopt.linear_solve.solve_cg(rtol=1e-10, maxiter=10 * d)

    @torchopt.diff.implicit.custom_root(optimality, argnums=(1, 2, 3), solve=solve)
    def theirs(w0, X, t, lam):
        return _single_closed_form(X.detach(), t.detach(), lam.detach())

    w0 = torch.zeros(d, dtype=torch.float64)
    runs = {"argmin_layer": lambda: torch.autograd.grad(ours(X, t, lam) @ upstream,
                                                        (X, t, lam)),
            "torchopt": lambda: torch.autograd.grad(theirs(w0, X, t, lam) @ upstream,
                                                    (X, t, lam))}
    exact = torch.autograd.grad(_single_closed_form(X, t, lam) @ upstream, (X, t, lam))
    row: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchopt calls functorch.vjp
        for name, fn in runs.items():
            grads = fn()
            row[f"{name}_error"] = max(float((a - b).norm() / b.norm())
                                       for a, b in zip(grads, exact, strict=True))
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs.items())
        for i in range(repeats):
            for name, fn in order[i % 2:] + order[:i % 2]:  # alternate who goes first
                start = time.process_time()
                fn()
                cpu[name].append(time.process_time() - start)
    for name in runs:
        row[f"{name}_ms"] = 1e3 * min(cpu[name])
    row["speedup"] = row["torchopt_ms"] / row["argmin_layer_ms"]
    return row


def against_torchopt(sizes: tuple[int, ...] = (50, 100, 200), repeats: int = 15) -> dict:
    """Forward + backward of one ridge layer with d unknowns: argmin_layer vs torchopt."""
    try:
        import torchopt
    except ImportError:
        return {"skipped": "torchopt is not installed (pip install torchopt to compare)"}

    figures: dict = {"sizes": {d: _compare_one(torchopt, d, repeats) for d in sizes}}
    figures["slowest_speedup"] = min(r["speedup"] for r in figures["sizes"].values())
    figures["target_met"] = figures["slowest_speedup"] >= 1.0
    return figures


def _print_torchopt(figures: dict) -> None:
    if "skipped" in figures:
        print(f"torchopt comparison skipped: {figures['skipped']}")
        return
    print("one ridge problem, forward + backward, best CPU time; gradient error vs closed form")
    print(f"{'unknowns':>9} {'argmin_layer':>13} {'torchopt':>10} {'speedup':>8} "
          f"{'our error':>10} {'their error':>12}")
    for d, r in figures["sizes"].items():
        print(f"{d:>9} {r['argmin_layer_ms']:>11.2f}ms {r['torchopt_ms']:>8.2f}ms "
              f"{r['speedup']:>7.2f}x {r['argmin_layer_error']:>10.1e} "
              f"{r['torchopt_error']:>12.1e}")
    print(f"target: at least torchopt's speed at every size: "
          f"{'met' if figures['target_met'] else 'NOT met'} "
          f"(slowest {figures['slowest_speedup']:.2f}x)")


if __name__ == "__main__":
    for k in (250, 1000):  # the unrolled cost grows with K, the implicit one does not
        figures = main(steps=k, compare_torchopt=k == 1000)
        _print(figures)
    _print_torchopt(figures["torchopt"])
