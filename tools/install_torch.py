"""Install PyTorch into the environment: the CPU build on a machine without an NVIDIA GPU.

``make`` runs it as ``.venv/bin/python tools/install_torch.py torch==2.13.0``. In order:

1. a torch that satisfies the requirement is installed already: keep it (a CUDA build
   installed by hand, see the README's GPU section, stays);
2. pip options follow the requirement (``TORCH="torch==2.13.0 --index-url URL"``): the
   user has chosen; install exactly that;
3. the configured sources list the CPU build (``2.13.0+cpu``, as a mirror of the PyTorch
   index or a wheel on disk would): install it from them. Not on Linux (PyPI's macOS and
   Windows wheels are CPU builds), or an NVIDIA GPU here: install what they serve;
4. otherwise (plain PyPI on Linux serves the multi-GB CUDA build): the CPU wheel from
   ``--cpu-index-url``, then torch's small dependencies from the configured sources. An
   index that does not answer within 5 s, or a download that fails, falls back to step
   3's install with a note: the install never fails or stalls for the CPU index.

The sources are asked with ``pip index versions`` (one page, nothing downloaded; a dry-run
resolve would download the CUDA wheels just to read their metadata). Progress is pip's own
(a bar per download on a terminal) plus a line per step.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 5  # the CPU index must answer within this, or it is not used
PIP_FAST_FAIL = ("--timeout", "15", "--retries", "1")  # not pip's 15 s x 5 retries per file
PIP = ("-m", "pip", "install", "--disable-pip-version-check")


def say(message: str) -> None:
    print(f"install_torch: {message}", flush=True)


def installed_torch(python: str) -> str | None:
    """The torch version installed for ``python``, or None."""
    code = ("import importlib.metadata as m\ntry: print(m.version('torch'))\n"
            "except m.PackageNotFoundError: pass")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() or None


def satisfies(version: str, requirement: str) -> bool:
    """Whether an installed torch ``version`` meets ``requirement`` (``torch``,
    ``torch==2.13.0``; other specifiers are left to pip)."""
    match = re.fullmatch(r"\s*torch\s*(?:==\s*([\w.]+))?\s*", requirement)
    if match is None:
        return False
    wanted = match.group(1)
    return wanted is None or version.split("+")[0] == wanted.split("+")[0]


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is loaded (Linux) or nvidia-smi lists a device."""
    if Path("/proc/driver/nvidia/version").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


def listed_versions(python: str) -> list[str] | None:
    """The torch versions the configured sources list (``pip index versions``), or None
    when pip cannot say (an old pip, an index that does not answer)."""
    proc = subprocess.run([python, "-m", "pip", "index", "versions", "torch",
                           "--disable-pip-version-check"], capture_output=True, text=True)
    match = re.search(r"^Available versions:\s*(.+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        return None
    return [v.strip() for v in match.group(1).split(",") if v.strip()]


def pinned_version(requirement: str) -> str | None:
    """``torch==2.13.0`` -> ``2.13.0``; None for any other form."""
    match = re.fullmatch(r"\s*torch\s*==\s*([\w.]+)\s*", requirement)
    return match.group(1).split("+")[0] if match else None


def index_answers(url: str) -> bool:
    """The index answers for torch within PROBE_TIMEOUT_S (proxies from the environment,
    as pip uses them)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=PROBE_TIMEOUT_S) as r:
            return 200 <= r.status < 400
    except (OSError, ValueError):  # unreachable, refused, timed out, a bad URL
        return False


def cpu_requirement(requirement: str) -> str:
    """``torch==2.13.0`` -> ``torch==2.13.0+cpu``: exactly the CPU wheel, never a CUDA one
    that another source might also offer."""
    version = pinned_version(requirement)
    return f"torch=={version}+cpu" if version else requirement


def pip_install(python: str, *args: str, dry_run: bool = False) -> int:
    dry = ["--dry-run", "--ignore-installed"] if dry_run else []
    say("$ " + " ".join(["pip install", *dry, *args]))
    return subprocess.run([python, *PIP, *dry, *args]).returncode


def install(python: str, requirement: str, pip_options: list[str], cpu_index: str,
            dry_run: bool = False, reinstall: bool = False) -> int:
    """Steps 1-4 of the module's docstring; returns pip's exit code (0 on success)."""
    version = None if reinstall else installed_torch(python)
    if version is not None and satisfies(version, requirement):
        say(f"torch {version} is installed already and satisfies {requirement!r}; kept")
        return 0
    if pip_options:
        say(f"installing {requirement} with your pip options {' '.join(pip_options)}")
        return pip_install(python, requirement, *pip_options, dry_run=dry_run)
    version = pinned_version(requirement)
    if version is not None:
        say(f"asking pip which builds of torch {version} the configured sources list")
        listed = listed_versions(python)
        if listed is not None and f"{version}+cpu" in listed:
            say(f"they list the CPU build {version}+cpu; installing it")
            return pip_install(python, cpu_requirement(requirement), dry_run=dry_run)
    if not sys.platform.startswith("linux"):
        say(f"{sys.platform}: the configured index's build is the right one; installing it")
        return pip_install(python, requirement, dry_run=dry_run)
    if has_nvidia_gpu():
        say("this machine has an NVIDIA GPU: installing the configured index's CUDA build")
        return pip_install(python, requirement, dry_run=dry_run)
    say(f"no NVIDIA GPU here: the CPU build (about 200 MB, not several GB of CUDA) from "
        f"{cpu_index}")
    if not index_answers(cpu_index):
        say(f"{cpu_index} does not answer within {PROBE_TIMEOUT_S} s; falling back to the "
            "configured index (its CUDA build works on the CPU too, it is only larger; set "
            "TORCH='torch==... --index-url URL' to choose)")
        return pip_install(python, requirement, dry_run=dry_run)
    code = pip_install(python, *PIP_FAST_FAIL, "--index-url", cpu_index, "--no-deps",
                       cpu_requirement(requirement), dry_run=dry_run)
    if code != 0:
        say(f"the CPU wheel could not be installed from {cpu_index}; falling back to the "
            "configured index")
        return pip_install(python, requirement, dry_run=dry_run)
    if dry_run:  # nothing was installed, so there is nothing to complete
        say(f"then: pip install {requirement} (torch's dependencies, from the configured "
            "index; torch itself is satisfied by the CPU wheel)")
        return 0
    say("torch's dependencies, from the configured index")
    return pip_install(python, requirement)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Install PyTorch, the CPU build where there is no NVIDIA GPU.")
    parser.add_argument("--python", default=sys.executable,
                        help="the environment's Python (default: this one)")
    parser.add_argument("--cpu-index-url", default=os.environ.get("CPU_INDEX", CPU_INDEX),
                        help=f"index of the CPU builds (default {CPU_INDEX})")
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would be installed, install nothing")
    parser.add_argument("--reinstall", action="store_true",
                        help="ignore the torch installed already (with --dry-run: tests)")
    parser.add_argument("requirement", help="e.g. torch==2.13.0")
    parser.add_argument("pip_options", nargs=argparse.REMAINDER,
                        help="pip options, passed on unchanged (skips the CPU-build logic)")
    args = parser.parse_args(argv)
    return install(args.python, args.requirement, args.pip_options, args.cpu_index_url,
                   dry_run=args.dry_run, reinstall=args.reinstall)


if __name__ == "__main__":
    sys.exit(main())
