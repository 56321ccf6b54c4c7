"""tools/install_torch.py, the set-up's choice of PyTorch build, against real pip.

Offline: the "configured index" and the "CPU index" are local HTTP servers that serve tiny
stand-in wheels (a CUDA-style torch that needs nvidia-* packages, a CPU torch that does
not), pip's configuration files are switched off, and pip only resolves (--dry-run). The
paths: the index serves a CPU build; it serves the CUDA build and the CPU index answers; the
CPU index refuses connections, stalls without answering, or lacks the wheel (each: fall
back, never fail); pip options given; torch installed already.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "install_torch.py"
_spec = importlib.util.spec_from_file_location("install_torch", SCRIPT)
install_torch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_torch)


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A pure-Python wheel holding only metadata, in ``folder/name/`` (a simple index)."""
    project = folder / name
    project.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    path = project / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", wheel)
        archive.writestr(f"{dist_info}/RECORD", "")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    """Serve a folder over HTTP on 127.0.0.1; returns the URL."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def indexes(tmp_path, serve):
    """URLs of: an index serving the CUDA-style torch, one serving that and the CPU build
    too, and a CPU index (torch 2.13.0+cpu), each with what their torch needs."""
    cuda, cpu_served, cpu_index = tmp_path / "cuda", tmp_path / "cpu_served", tmp_path / "cpu"
    make_wheel(cuda, "torch", "2.13.0", ("nvidia-cublas-cu12", "filelock"))
    make_wheel(cuda, "nvidia-cublas-cu12", "12.8.0")
    make_wheel(cuda, "filelock", "3.0.0")
    make_wheel(cpu_served, "torch", "2.13.0", ("nvidia-cublas-cu12", "filelock"))  # both,
    make_wheel(cpu_served, "torch", "2.13.0+cpu", ("filelock",))  # as on a mirror
    make_wheel(cpu_served, "nvidia-cublas-cu12", "12.8.0")
    make_wheel(cpu_served, "filelock", "3.0.0")
    make_wheel(cpu_index, "torch", "2.13.0+cpu", ("filelock",))
    (tmp_path / "empty" / "torch").mkdir(parents=True)
    return {"cuda": serve(cuda), "cpu_served": serve(cpu_served), "cpu": serve(cpu_index),
            "empty": serve(tmp_path / "empty")}


def run_script(index_url: str, cpu_index: str, *args: str) -> subprocess.CompletedProcess:
    """The script as make runs it, with pip seeing only ``index_url``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k.lower() not in ("http_proxy", "https_proxy")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index_url, PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--python", sys.executable, "--cpu-index-url", cpu_index,
         *args], capture_output=True, text=True, env=env)


needs_no_gpu = pytest.mark.skipif(
    install_torch.has_nvidia_gpu() or not sys.platform.startswith("linux"),
    reason="an NVIDIA GPU or not Linux: the configured index's build is the right one")


def _would_install(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("Would install")]
    assert lines, proc.stdout + proc.stderr
    return lines[-1]


@pytest.mark.parametrize("requirement, version, expected", [
    ("torch==2.13.0", "2.13.0+cpu", True), ("torch==2.13.0", "2.13.0", True),
    ("torch", "2.4.1+cu124", True), ("torch==2.13.0", "2.12.0+cpu", False),
    ("torch>=2.2", "2.13.0", False),  # other specifiers: pip decides
])
def test_satisfies(requirement, version, expected):
    assert install_torch.satisfies(version, requirement) is expected


def test_cpu_requirement_pins_the_cpu_wheel():
    assert install_torch.cpu_requirement("torch==2.13.0") == "torch==2.13.0+cpu"
    assert install_torch.cpu_requirement("torch>=2.2") == "torch>=2.2"


@pytest.mark.slow
def test_configured_sources_that_list_the_cpu_build_serve_it(indexes):
    proc = run_script(f"{indexes['cpu_served']}/", _refusing_url(), "--dry-run", "--reinstall",
                      "torch==2.13.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "they list the CPU build 2.13.0+cpu" in proc.stdout
    would = _would_install(proc)
    assert "torch-2.13.0+cpu" in would and "nvidia" not in would
    assert "--index-url" not in proc.stdout, "the configured sources only"


@pytest.mark.slow
@needs_no_gpu
def test_a_cuda_index_without_a_gpu_takes_the_cpu_wheel(indexes):
    proc = run_script(f"{indexes['cuda']}/", indexes["cpu"], "--dry-run", "--reinstall",
                      "torch==2.13.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"--index-url {indexes['cpu']} --no-deps torch==2.13.0+cpu" in proc.stdout
    assert "torch-2.13.0+cpu" in _would_install(proc)
    assert "nvidia" not in _would_install(proc)


def _refusing_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def stalling_url():
    """A server that accepts connections and never answers (a firewall that drops)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.slow
@needs_no_gpu
@pytest.mark.parametrize("case", ["refused", "stalls", "no wheel"])
def test_an_unusable_cpu_index_falls_back_to_the_configured_one(indexes, stalling_url, case):
    cpu_index = {"refused": _refusing_url(), "stalls": stalling_url,
                 "no wheel": indexes["empty"]}[case]
    proc = run_script(f"{indexes['cuda']}/", cpu_index, "--dry-run", "--reinstall",
                      "torch==2.13.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "falling back to the configured index" in proc.stdout
    would = _would_install(proc)
    assert "torch-2.13.0" in would and "nvidia-cublas" in would, "the configured build"


@pytest.mark.slow
def test_pip_options_are_the_users_choice(indexes):
    proc = run_script(f"{indexes['cuda']}/", _refusing_url(), "--dry-run", "--reinstall",
                      "torch==2.13.0", "--index-url", f"{indexes['cpu_served']}/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "with your pip options" in proc.stdout and "asking pip" not in proc.stdout
    assert "nvidia" not in _would_install(proc)


def test_an_installed_torch_is_kept(indexes):
    proc = run_script(_refusing_url(), _refusing_url(), "torch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is installed already" in proc.stdout and "$ pip" not in proc.stdout
