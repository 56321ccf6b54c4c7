"""Run every benchmark, then print (and optionally write into the README) one table of the
figures with the machine they came from.

    python benchmarks/run_all.py                 # print the table
    python benchmarks/run_all.py --readme README.md   # also replace the README's table
    python benchmarks/run_all.py --no-report     # skip timing the report (it takes minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quietly(name: str) -> dict:
    print(f"running {name} ...", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        return load(name).main()


def mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def rows_receptive_field(f: dict) -> list[tuple]:
    return [("receptive field", f"analytic vs one empirical measurement, {f['model']}",
             f"{f['analytic_s']:.3f} s", f"{f['empirical_s']:.2f} s", f"{f['speedup']:.0f}x",
             "< 1 s and >= 10x", mark(f["analytic_under_0.5s"] and f["speedup_at_least_10x"])),
            ("receptive field", "analytic vs one empirical measurement, U-Net (transposed-conv "
             f"decoder), field {f['unet_receptive_field']}",
             f"{f['unet_analytic_s']:.3f} s", f"{f['unet_empirical_s']:.2f} s",
             f"{f['unet_empirical_s'] / f['unet_analytic_s']:.0f}x", "faster",
             mark(f["unet_analytic_s"] < f["unet_empirical_s"]))]


def rows_gradflow(f: dict) -> list[tuple]:
    rows = [_gradflow_row(f)]
    import torch

    threads = torch.get_num_threads()
    if threads > 1:  # the overhead is a larger share when the plain pass is parallel
        torch.set_num_threads(1)
        try:
            rows.insert(0, _gradflow_row(run_quietly("bench_gradflow")))
        finally:
            torch.set_num_threads(threads)
    return rows


def _gradflow_row(f: dict) -> tuple:
    return ("gradient flow",
             f"overhead of `gradient_flow` on mlpirate, batch {f['batch']}, {f['threads']} "
             f"thread(s) ({f.get('measure', 'best')} of {f['repeats']}; median wall time "
             f"{f['mlpirate_overhead_median']:+.1%}; the exact per-call norms alone "
             f"{f['norms_only_overhead']:+.1%})",
             f"{f['mlpirate_gradient_flow_ms']:.1f} ms",
             f"{f['mlpirate_plain_ms']:.1f} ms (plain pass)",
             f"{f['overhead']:+.1%}", f"<= {f['target_overhead']:.0%}", mark(f["target_met"]))


def rows_gradients(f: dict) -> list[tuple]:
    rows = []
    for name, r in f.items():
        if isinstance(r, dict) and "loop_s" in r:
            target = r.get("target")
            rows.append(("numerical gradient", f"{name}, vs per-element loop",
                         f"{r['ours_s']:.3f} s", f"{r['loop_s']:.3f} s",
                         f"{r['speedup']:.1f}x",
                         "none set" if target is None else f">= {target:g}x",
                         "" if target is None else mark(r["speedup"] >= target)))
    g = f["gradcheck"]
    rows.append(("gradient check", "`check_gradients` vs `torch.autograd.gradcheck`",
                 f"{g['check_gradients_s']:.3f} s", f"{g['gradcheck_s']:.3f} s",
                 f"{g['speedup']:.1f}x", f">= {g['target']:g}x", mark(g["speedup"] >= g["target"])))
    unet = f.get("unet", {}).get("runs", {})
    ours = unet.get("ours")
    for label, target in (("previous, loop (its pick under load)", 5.0),
                          ("previous, its timed trial", None),
                          ("torch.autograd.gradcheck", 1.0)):
        if ours and label in unet:
            ratio = unet[label]["cpu_s"] / ours["cpu_s"]
            rows.append(("gradient check", f"full check of a {f['unet']['parameters']:,}-parameter "
                         f"U-Net (1x3x16x16) vs {label}, CPU time",
                         f"{ours['cpu_s']:.2f} s", f"{unet[label]['cpu_s']:.2f} s",
                         f"{ratio:.1f}x", "none set" if target is None else f">= {target:g}x",
                         "" if target is None else mark(ratio >= target)))
    fl = f["floor"]
    rows.append(("numerical gradient", "evaluation-equivalents per input (cheap case)",
                 f"{fl['evaluations_per_input']:.1f}", "", "", f"floor {fl['floor']:g}", ""))
    return rows


def rows_implicit(f: dict) -> list[tuple]:
    t = f["targets_met"]
    return [
        ("argmin layer", f"ridge layer backward: implicit vs unrolled ({f['steps']} steps)",
         f"{f['implicit']['backward_s'] * 1e3:.1f} ms",
         f"{f['unrolled']['backward_s'] * 1e3:.1f} ms", f"{f['backward_speedup']:.0f}x",
         "faster", mark(t["backward_speedup"])),
        ("argmin layer", "memory saved for backward: unrolled / implicit",
         f"{f['implicit']['saved_bytes'] / 2**20:.2f} MiB",
         f"{f['unrolled']['saved_bytes'] / 2**20:.1f} MiB", f"{f['memory_ratio']:.0f}x",
         "smaller", mark(t["memory"])),
    ] + _rows_torchopt(f.get("torchopt", {}))


def _rows_torchopt(f: dict) -> list[tuple]:
    """argmin_layer vs torchopt's implicit differentiation, one ridge problem per size."""
    if not f or "skipped" in f:
        return []
    return [("argmin layer", f"forward+backward vs torchopt `custom_root` (CG), {d} unknowns",
             f"{r['argmin_layer_ms']:.1f} ms", f"{r['torchopt_ms']:.1f} ms",
             f"{r['speedup']:.1f}x", ">= 1x", mark(r["speedup"] >= 1))
            for d, r in f["sizes"].items()]


def rows_sequence(f: dict) -> list[tuple]:
    s = f["seconds"]
    return [("Embedding", "hand-written `Embedding` vs `nn.Embedding`, forward+backward",
             f"{s['dlsummary Embedding'] * 1e3:.2f} ms", f"{s['nn.Embedding'] * 1e3:.2f} ms",
             f"{f['ours_vs_nn_embedding']:.2f}x time", "<= 2x",
             mark(f["targets_met"]["ours within 2x of nn.Embedding"]))]


BENCHES = {
    "bench_receptive_field": rows_receptive_field,
    "bench_gradflow": rows_gradflow,
    "bench_gradients": rows_gradients,
    "bench_implicit": rows_implicit,
    "bench_sequence": rows_sequence,
}


def time_report() -> list[tuple]:
    """The report, sequential and parallel side by side (benchmarks/bench_report.py)."""
    f = run_quietly("bench_report")
    seq, par = f["runs"].get("seq", {}), f["runs"].get("par", {})
    ok = seq.get("ok") and par.get("ok") and f["same_outputs"]
    return [("report", f"`dlsummary report`, whole key: --jobs {par.get('jobs', '?')} vs "
             f"--jobs 1 (wall; CPU {par.get('cpu_s', 0):.0f} s vs {seq.get('cpu_s', 0):.0f} "
             f"s; same outputs: {f['same_outputs']})",
             f"{par.get('wall_s', float('nan')):.0f} s", f"{seq.get('wall_s', float('nan')):.0f} s",
             f"{seq.get('wall_s', 0) / max(par.get('wall_s', 1), 1e-9):.1f}x",
             f"<= {f['target_s']} s (quiet 2-core)", mark(bool(ok and f["met"])))]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return (f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, Python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def table(rows: list[tuple]) -> str:
    head = ("tool", "measurement", "ours", "baseline", "ratio", "target", "met")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="write the table into this README")
    parser.add_argument("--no-report", action="store_true", help="do not time the report")
    args = parser.parse_args()
    rows: list[tuple] = []
    for name, formatter in BENCHES.items():
        rows += formatter(run_quietly(name))
    if not args.no_report:
        print("timing the report ...", file=sys.stderr, flush=True)
        rows += time_report()
    text = (f"## Performance\n\nMeasured by `make bench` (`benchmarks/run_all.py`) on: "
            f"{machine()}.\nEach benchmark times our tool and its baseline side by side in "
            f"one run; `python benchmarks/bench_*.py` prints the details.\n\n{table(rows)}\n")
    print(text)
    if args.readme:
        readme = args.readme.read_text()
        if START not in readme or END not in readme:
            print(f"{args.readme} has no {START} ... {END} markers", file=sys.stderr)
            return 2
        new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                     lambda _: f"{START}\n{text}{END}", readme, flags=re.S)
        args.readme.write_text(new)
        print(f"wrote the table into {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
