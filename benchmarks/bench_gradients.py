"""Benchmark: dlsummary.numerical_gradient / check_gradients against the per-element loop
people usually write and against torch.autograd.gradcheck, timed side by side.

Targets (issue 6): >= 4x faster than the loop for a cheap function of 10,000 inputs whose
cost is dominated by per-call overhead (10x is the aim); never slower than the loop for an
expensive function; not slower than torch.autograd.gradcheck on the same check. The floor
is 2 evaluations per input (central differences) at full batching efficiency: we report
our time in units of one batched evaluation per input.

Issue 16: a full check of a U-Net of 7,479 parameters (input 1x3x16x16) against the
previous implementation (commit 36d5c07, read with git when available), run both ways it
could go (its timed trial, and the loop its trial picks on a loaded machine), and against
torch.autograd.gradcheck over the same parameters. Times are CPU seconds of this process
(on one thread they do not grow with other processes' load) beside wall-clock seconds.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_gradients.py [--no-unet-gradcheck]
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from dlsummary import check_gradients, check_module_gradients, numerical_gradient

F64 = torch.float64


def per_element_loop(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     eps: float = 6e-6) -> torch.Tensor:
    """The usual central-difference loop: perturb one entry in place, evaluate, restore."""
    x = x.clone()
    flat, grad = x.view(-1), torch.empty(x.numel(), dtype=x.dtype)
    with torch.no_grad():
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + eps
            plus = fn(x).item()
            flat[i] = original - eps
            minus = fn(x).item()
            flat[i] = original
            grad[i] = (plus - minus) / (2 * eps)
    return grad.view(x.shape)


def best_time(run: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _cases() -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    # cheap: a small MLP's loss on one sample w.r.t. a 100x100 weight (10,000 inputs);
    # a few small ops per call, so per-call overhead dominates its cost
    X8 = torch.randn(1, 100, generator=g, dtype=F64)
    V = torch.randn(100, 3, generator=g, dtype=F64)
    y8 = torch.arange(1) % 3
    W = torch.randn(100, 100, generator=g, dtype=F64) / 10

    def cheap(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.tanh(X8 @ w) @ V, y8)

    # memory-bound: one pass over the 10,000 inputs, no overhead to amortise
    def sum_of_squares(v: torch.Tensor) -> torch.Tensor:
        return (v * v).sum()

    # expensive: 2,048 samples through a 128 -> 8 layer (1,024 inputs, ~2 MFLOP per call)
    X2k = torch.randn(2048, 128, generator=g, dtype=F64)
    W2 = torch.randn(128, 8, generator=g, dtype=F64) / 10

    def expensive(w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(X2k @ w).square().mean()

    return {
        "cheap (MLP loss, 10,000 inputs)": (cheap, W),
        "memory-bound (sum of squares, 10,000 inputs)": (
            sum_of_squares, torch.randn(10_000, generator=g, dtype=F64)),
        "expensive (2048x128 @ W, 1,024 inputs)": (expensive, W2),
    }


ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "36d5c07"  # gradients.py before issue 16


def _load(name: str, path: Path | None = None, source: str | None = None) -> ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None) if source is not None else \
        importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    if source is not None:
        exec(compile(source, f"{BASELINE_COMMIT}:gradients.py", "exec"), module.__dict__)
    else:
        spec.loader.exec_module(module)
    return module


def _baseline() -> ModuleType | None:
    """The previous gradients module, from git; None where git or the commit is missing."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:src/dlsummary/gradients.py"], cwd=ROOT,
            capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return _load("baseline_gradients", source=source)


def timed(run: Callable[[], object]) -> tuple[float, float, object]:
    """(wall s, CPU s of this process, result) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def unet_benchmark(with_gradcheck: bool = True) -> dict:
    """Full check of the U-Net: ours, the previous code (both of its paths), gradcheck."""
    tests = _load("test_gradients_modules", ROOT / "tests" / "test_gradients_modules.py")
    torch.manual_seed(0)
    model = tests.TinyUNet().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    n = sum(p.numel() for p in model.parameters())
    check_module_gradients(nn_small(), None, torch.randn(2, 3, dtype=F64))  # warm-up
    runs: dict[str, tuple[float, float]] = {}
    wall, cpu, ours = timed(lambda: check_module_gradients(model, None, x))
    assert ours.passed, str(ours)
    runs["ours"] = (wall, cpu)
    baseline = _baseline()
    if baseline is not None:
        for label, vectorize in (("previous, its timed trial", None),
                                 ("previous, loop (its pick under load)", False)):
            wall, cpu, old = timed(lambda v=vectorize: baseline.check_module_gradients(
                model, None, x, vectorize=v))
            assert old.passed
            runs[label] = (wall, cpu)
    if with_gradcheck:
        work = tests.TinyUNet().double().eval()
        work.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
        names = [name for name, _ in work.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for p in work.parameters())
        weights = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1),
                              dtype=F64)

        def loss(*ps: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(work, dict(zip(names, ps, strict=True)), (x,))
            return (out * weights).sum()

        wall, cpu, ok = timed(lambda: torch.autograd.gradcheck(
            loss, params, eps=1e-6, atol=1e-5, rtol=1e-3))
        assert ok
        runs["torch.autograd.gradcheck"] = (wall, cpu)
    print(f"\nU-Net, {n:,} parameters, input (1, 3, 16, 16), full check "
          f"({ours.evaluations:,} evaluations):")
    print(f"  {'':40s} {'wall s':>8s} {'CPU s':>8s} {'CPU ratio to ours':>18s}")
    for label, (wall, cpu) in runs.items():
        print(f"  {label:40s} {wall:8.2f} {cpu:8.2f} {cpu / runs['ours'][1]:17.1f}x")
    return {"parameters": n, "evaluations": ours.evaluations,
            "runs": {k: {"wall_s": w, "cpu_s": c} for k, (w, c) in runs.items()}}


def nn_small() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


def main(unet_gradcheck: bool = True) -> dict:
    """Time everything; print the table; return the figures."""
    torch.manual_seed(0)
    results: dict[str, dict] = {}
    targets = {"cheap (MLP loss, 10,000 inputs)": 4.0,
               "expensive (2048x128 @ W, 1,024 inputs)": 1.0}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'function':46s} {'loop s':>8s} {'ours s':>8s} {'speed-up':>8s}  target")
    for name, (fn, x) in _cases().items():
        (ours_grad,) = numerical_gradient(fn, x)
        loop_grad = per_element_loop(fn, x)
        assert torch.allclose(ours_grad, loop_grad, rtol=1e-5, atol=1e-5), name
        loop_s = best_time(lambda fn=fn, x=x: per_element_loop(fn, x))
        ours_s = best_time(lambda fn=fn, x=x: numerical_gradient(fn, x))
        target = targets.get(name)
        met = "" if target is None else (
            f">= {target:g}x {'met' if loop_s / ours_s >= target else 'NOT met'}")
        print(f"{name:46s} {loop_s:8.3f} {ours_s:8.3f} {loop_s / ours_s:7.1f}x  {met}")
        results[name] = {"loop_s": loop_s, "ours_s": ours_s, "speedup": loop_s / ours_s,
                         "target": target}

    # the floor: 2 evaluations per input at full batching efficiency (the cheapest
    # evaluation over batch sizes around the tool's own, 512, so that no batch beats it)
    fn, x = _cases()["cheap (MLP loss, 10,000 inputs)"]
    batched = torch.func.vmap(fn)

    def per_evaluation(size: int) -> float:
        batch = x.expand(size, *x.shape).clone()
        return best_time(lambda: batched(batch), repeats=5) / size

    with torch.no_grad():
        per_eval = min(per_evaluation(size) for size in (256, 512, 1024, 2048))
        single = best_time(lambda: [fn(x) for _ in range(200)]) / 200
    ours_s = results["cheap (MLP loss, 10,000 inputs)"]["ours_s"]
    evals_per_input = ours_s / (x.numel() * per_eval)
    print(f"\nfloor (cheap case): one evaluation costs {single * 1e6:.1f} us alone, "
          f"{per_eval * 1e6:.1f} us in the cheapest batch (256 to 2,048);")
    loop_evals = results["cheap (MLP loss, 10,000 inputs)"]["loop_s"] / (x.numel() * per_eval)
    print(f"our time = {evals_per_input:.2f} batched evaluations per input (floor 2.00), "
          f"the loop's = {loop_evals:.1f}")

    # against torch.autograd.gradcheck, the same check (full, central, float64)
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (xr,), eps=1e-6, atol=1e-5, rtol=1e-3)
    assert check_gradients(fn, x).passed
    gradcheck_s = best_time(
        lambda: torch.autograd.gradcheck(fn, (xr,), eps=1e-6, atol=1e-5, rtol=1e-3), repeats=2)
    check_s = best_time(lambda: check_gradients(fn, x), repeats=2)
    ratio = gradcheck_s / check_s
    print(f"\ntorch.autograd.gradcheck {gradcheck_s:.3f} s, check_gradients {check_s:.3f} s: "
          f"{ratio:.1f}x  (target >= 1x {'met' if ratio >= 1 else 'NOT met'})")
    results["gradcheck"] = {"gradcheck_s": gradcheck_s, "check_gradients_s": check_s,
                            "speedup": ratio, "target": 1.0}
    results["floor"] = {"evaluations_per_input": evals_per_input, "floor": 2.0,
                        "batched_eval_us": per_eval * 1e6, "single_eval_us": single * 1e6}
    results["unet"] = unet_benchmark(with_gradcheck=unet_gradcheck)
    return results


if __name__ == "__main__":
    main(unet_gradcheck="--no-unet-gradcheck" not in sys.argv[1:])
