"""The report, timed: sequential (``--jobs 1``, every section in turn) against parallel
(``--jobs N``, one kernel per core; forked kernels), side by side in one run, with the
wall and CPU seconds of each and the time per section; and whether both wrote the same
notebook (timing lines aside).

    python benchmarks/bench_report.py                     # the whole key, --jobs 1 vs N
    python benchmarks/bench_report.py --only cnn,dropout  # a subset
    python benchmarks/bench_report.py --modes par,par-cold  # forked vs cold kernels

Target (issue 13): the whole report in at most 60 s on a quiet 2-core machine. The wall
figures move with the machine's load; the CPU figures (user + system of the report and
every kernel) move much less, and say what the machinery costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60
_TIMING = re.compile(r"\d+(\.\d+)?\s*(s|ms|µs|us|seconds?)\b")
MODES = {
    # name: (jobs, environment overrides)
    "seq": (1, {}),
    "par": (None, {}),
    "par-cold": (None, {"DLSUMMARY_FORK": "0"}),
}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_report(mode: str, only: str | None, out: Path) -> dict:
    """One ``dlsummary report`` in a subprocess: wall and CPU seconds (the kernels are its
    descendants, all waited for, so their CPU is counted), seconds per section."""
    jobs, env = MODES[mode]
    cmd = [sys.executable, "-m", "dlsummary", "report", "--quiet", "--json",
           "--output", str(out)]
    cmd += ["--jobs", str(jobs)] if jobs else []
    cmd += ["--only", only] if only else []
    cpu0, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env})
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu0
    if proc.returncode != 0:
        return {"mode": mode, "ok": False, "wall_s": wall, "cpu_s": cpu,
                "error": proc.stderr.strip().splitlines()[-1:] or [""]}
    result = json.loads(proc.stdout)
    return {"mode": mode, "ok": True, "wall_s": wall, "cpu_s": cpu, "jobs": result["jobs"],
            "report_s": result["seconds"], "section_seconds": result["section_seconds"],
            "notebook": result["notebook"], "n_checks": result["n_checks"]}


def _outputs(path: str) -> list[str]:
    import nbformat

    from dlsummary.notebook import cell_text_output

    nb = nbformat.read(path, as_version=4)
    return [_TIMING.sub("<t>", cell_text_output(c)) for c in nb.cells
            if c.cell_type == "code" and "perf_counter" not in c.source]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="sections to run (default: all)")
    parser.add_argument("--modes", default="seq,par",
                        help=f"comma-separated, of {', '.join(MODES)} (default: seq,par)")
    args = parser.parse_args([] if argv is None else argv)  # run_all.py calls main()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for mode in modes:
            print(f"timing the report, {mode} ...", file=sys.stderr, flush=True)
            runs[mode] = run_report(mode, args.only, Path(tmp) / mode)
        good = [r for r in runs.values() if r["ok"]]
        same = None
        if len(good) > 1:
            first = _outputs(good[0]["notebook"])
            same = all(_outputs(r["notebook"]) == first for r in good[1:])
    sections = sorted({s for r in good for s in r["section_seconds"]})
    print(f"{'':24s}" + "".join(f"{m:>12s}" for m in runs))
    for label, key in (("wall (s)", "wall_s"), ("CPU, all processes (s)", "cpu_s")):
        print(f"{label:24s}" + "".join(f"{r[key]:12.1f}" for r in runs.values()))
    print(f"{'jobs':24s}" + "".join(f"{r.get('jobs', '-'):>12}" for r in runs.values()))
    for name in sections:
        cells = "".join(f"{r.get('section_seconds', {}).get(name, float('nan')):12.1f}"
                        for r in runs.values())
        print(f"  {name:22s}{cells}")
    for r in runs.values():
        if not r["ok"]:
            print(f"{r['mode']}: FAILED: {r['error']}")
    if same is not None:
        print(f"same outputs in every mode (timing lines aside): {same}")
    par = runs.get("par")
    met = bool(par and par["ok"] and par["wall_s"] <= TARGET_S and args.only is None)
    print(f"target: whole report <= {TARGET_S} s wall on a quiet 2-core machine: "
          f"{'met' if met else 'not met' if args.only is None else 'n/a (subset)'}")
    return {"runs": runs, "same_outputs": same, "target_s": TARGET_S, "met": met,
            "only": args.only, "cores": len(os.sched_getaffinity(0))}


if __name__ == "__main__":
    main(sys.argv[1:])
