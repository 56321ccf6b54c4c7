"""Sweep: dlsummary.check_gradients against torch.autograd.gradcheck on PyTorch's own OpInfo
database (float64 samples of every op with autograd), verdict by verdict, timed.

Each sample becomes a scalar function of its floating-point tensor inputs (the outputs
projected on fixed random weights), checked by both tools with the same tolerances
(atol 1e-5, rtol 1e-3). Prints how many samples agree and lists the disagreements.
Needs the ``expecttest`` package (torch's test helpers import it).

Run: OMP_NUM_THREADS=1 python benchmarks/opinfo_sweep.py [--samples-per-op 2] [--ops N]
     [--match fft linalg.eig]

Recorded once (torch 2.13.0+cpu, 1 thread, shared 2-core machine, before complex outputs
were projected): 530 ops, 1,020 samples, verdicts agree on 978; 40 of the 42 others were
complex-output ops (fft, eig) this script then dropped (they agree now: a rerun of fft,
linalg.eig and sort gave 44 of 46); the other 2 are sort and msort on 8,000 distinct
values: check_gradients passes them (no kinks), gradcheck fails them, most likely on its
reentrancy check of a scatter backward rather than on a gradient value. check_gradients
179 s, gradcheck 237 s.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch

from dlsummary import DLSummaryError, check_gradients

F64 = torch.float64


def _scalar_fn(op: Any, sample: Any, positions: list[tuple[str, Any]]):
    """The sample as a function of its differentiable tensors, projected to a scalar."""

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        it = iter(tensors)
        values = {key: next(it) for key, _ in positions}
        inp = values.get("input", sample.input)
        args = [values.get(f"arg{i}", a) for i, a in enumerate(sample.args)]
        kwargs = {k: values.get(f"kw_{k}", v) for k, v in sample.kwargs.items()}
        out = op.op(inp, *args, **kwargs)
        outs = [out] if isinstance(out, torch.Tensor) else [
            o for o in out if isinstance(o, torch.Tensor)]
        total = torch.zeros((), dtype=F64)
        for index, o in enumerate(outs):
            if o.is_complex():
                o = torch.view_as_real(o)  # both parts count
            if o.is_floating_point():
                gen = torch.Generator().manual_seed(index + 1)
                total = total + (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
        return total

    return fn


def _differentiable(sample: Any) -> list[tuple[str, torch.Tensor]]:
    found = []
    if isinstance(sample.input, torch.Tensor):
        found.append(("input", sample.input))
    found += [(f"arg{i}", a) for i, a in enumerate(sample.args) if isinstance(a, torch.Tensor)]
    found += [(f"kw_{k}", v) for k, v in sample.kwargs.items() if isinstance(v, torch.Tensor)]
    return [(k, t) for k, t in found
            if t.requires_grad and t.dtype == F64 and t.layout == torch.strided
            and t.numel() > 0]


def main(samples_per_op: int = 2, max_ops: int | None = None, progress_every: int = 0,
         match: list[str] | None = None) -> dict:
    """Run the sweep; print and return the counts."""
    from torch.testing._internal.common_methods_invocations import op_db

    warnings.filterwarnings("ignore")
    counts = {"ops": 0, "samples": 0, "agree": 0, "both_pass": 0, "both_fail": 0}
    disagreements: list[str] = []
    skipped = 0
    ours_s = gradcheck_s = 0.0
    ops = [op for op in op_db
           if op.supports_autograd and F64 in op.supported_backward_dtypes("cpu")]
    if match:
        ops = [op for op in ops if any(m in op.name for m in match)]
    for op in ops[:max_ops]:
        used = 0
        try:
            samples = op.sample_inputs("cpu", F64, requires_grad=True)
            for sample in samples:
                if used >= samples_per_op:
                    break
                positions = _differentiable(sample)
                if not positions:
                    continue
                fn = _scalar_fn(op, sample, positions)
                tensors = [t.detach().clone() for _, t in positions]
                try:
                    with torch.no_grad():
                        value = fn(*tensors)
                    if not value.requires_grad and not torch.isfinite(value):
                        continue
                except Exception:
                    skipped += 1
                    continue
                start = time.perf_counter()
                try:
                    theirs = bool(torch.autograd.gradcheck(
                        fn, tuple(t.clone().requires_grad_() for t in tensors), eps=1e-6,
                        atol=1e-5, rtol=1e-3, raise_exception=False, check_undefined_grad=False,
                        check_batched_grad=False))
                except Exception:
                    theirs = None
                gradcheck_s += time.perf_counter() - start
                start = time.perf_counter()
                try:
                    ours: bool | None = check_gradients(fn, *tensors).passed
                except DLSummaryError:
                    ours = None
                ours_s += time.perf_counter() - start
                if theirs is None:
                    skipped += 1
                    continue
                used += 1
                counts["samples"] += 1
                if ours == theirs:
                    counts["agree"] += 1
                    counts["both_pass" if ours else "both_fail"] += 1
                else:
                    variant = f".{op.variant_test_name}" if op.variant_test_name else ""
                    disagreements.append(f"{op.name}{variant} sample {used - 1}: "
                                         f"gradcheck {theirs}, ours {ours}")
        except Exception:
            skipped += 1
        counts["ops"] += 1 if used else 0
        if progress_every and counts["ops"] and counts["ops"] % progress_every == 0 and used:
            print(f"  ... {counts['ops']} ops, {counts['samples']} samples, "
                  f"{counts['agree']} agree", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{counts['ops']} ops, {counts['samples']} float64 samples: verdicts agree on "
          f"{counts['agree']} ({counts['both_pass']} both pass, {counts['both_fail']} both fail); "
          f"{skipped} samples skipped (errors before any check)")
    print(f"time: check_gradients {ours_s:.1f} s, torch.autograd.gradcheck {gradcheck_s:.1f} s")
    for line in disagreements:
        print("  disagree:", line)
    return {**counts, "skipped": skipped, "ours_s": ours_s, "gradcheck_s": gradcheck_s,
            "disagreements": disagreements}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-op", type=int, default=2)
    parser.add_argument("--ops", type=int, default=None, help="only the first N ops")
    parser.add_argument("--match", nargs="*", default=None,
                        help="only ops whose name contains one of these strings")
    options = parser.parse_args()
    main(options.samples_per_op, options.ops, progress_every=25, match=options.match)
