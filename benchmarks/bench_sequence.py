"""Time dlsummary.sequence.Embedding against nn.Embedding (the baseline it re-implements)
and against the one-hot matmul it is equivalent to, forward + backward, side by side.

Targets: ours within 2x of nn.Embedding; the one-hot matmul at least 10x slower than the
lookup at a realistic vocabulary size (the reason embeddings exist as a layer).
Run: ``python benchmarks/bench_sequence.py`` (a few seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlsummary.sequence import Embedding

VOCAB, DIM, TOKENS = 20_000, 64, 512


def _best_time(step: Callable[[], None], repeats: int = 7, number: int = 5) -> float:
    """Best mean seconds per call over several repeats (the least disturbed run)."""
    step()  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            step()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def main() -> dict:
    torch.manual_seed(0)
    reference, ours = nn.Embedding(VOCAB, DIM), Embedding(VOCAB, DIM)
    with torch.no_grad():
        ours.weight.copy_(reference.weight)
    ids = torch.randint(0, VOCAB, (TOKENS,))
    upstream = torch.randn(TOKENS, DIM)

    def run(forward: Callable[[], torch.Tensor], weight: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            weight.grad = None
            (forward() * upstream).sum().backward()

        return step

    timings = {
        "nn.Embedding": _best_time(run(lambda: reference(ids), reference.weight)),
        "dlsummary Embedding": _best_time(run(lambda: ours(ids), ours.weight)),
        "one_hot @ weight": _best_time(
            run(lambda: F.one_hot(ids, VOCAB).float() @ ours.weight, ours.weight), repeats=3
        ),
    }
    ratio_ours = timings["dlsummary Embedding"] / timings["nn.Embedding"]
    ratio_one_hot = timings["one_hot @ weight"] / timings["dlsummary Embedding"]
    results = {
        "setting": f"V={VOCAB}, d={DIM}, {TOKENS} ids, forward+backward, CPU "
        f"({torch.get_num_threads()} threads)",
        "seconds": timings,
        "ours_vs_nn_embedding": ratio_ours,
        "one_hot_vs_ours": ratio_one_hot,
        "targets_met": {
            "ours within 2x of nn.Embedding": ratio_ours <= 2.0,
            "one-hot at least 10x slower": ratio_one_hot >= 10.0,
        },
    }
    print(results["setting"])
    for name, seconds in timings.items():
        print(f"  {name:>20}: {seconds * 1e3:8.3f} ms")
    print(
        f"  ours / nn.Embedding   = {ratio_ours:6.2f}x  (target <= 2: "
        f"{'met' if ratio_ours <= 2 else 'NOT met'})"
    )
    print(
        f"  one-hot / ours        = {ratio_one_hot:6.1f}x  (target >= 10: "
        f"{'met' if ratio_one_hot >= 10 else 'NOT met'})"
    )
    return results


if __name__ == "__main__":
    main()
