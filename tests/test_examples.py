"""The README's examples, run as written: if a tool's output changed, the README is stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlsummary", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_readme_rf_example():
    proc = run("rf", "examples/my_models.py:small_resnet_features", "--input-size", "1,3,64,64")
    assert proc.returncode == 0, proc.stderr
    assert "receptive field 25x25, effective stride 4x4, effective padding 12x12" in proc.stdout
    assert "misaligned paths" in proc.stdout
    readme = (ROOT / "README.md").read_text()
    for line in proc.stdout.splitlines()[:14]:
        assert line.rstrip() in readme, f"README's rf output is stale at: {line!r}"


@pytest.mark.slow
def test_readme_gradflow_example():
    proc = run("gradflow", "examples/my_models.py:deep_sigmoid_mlp", "--input-size", "256,32",
               "--kwargs", '{"depth": 8}')
    assert proc.returncode == 1, "a vanishing diagnosis is a failed check"
    assert "diagnosis: vanishing (gradient norm falls 10^7-fold" in proc.stdout
    readme = (ROOT / "README.md").read_text()
    for line in proc.stdout.splitlines()[:4]:
        assert line.rstrip() in readme, f"README's gradflow output is stale at: {line!r}"


@pytest.mark.slow
def test_readme_gradcheck_example():
    proc = run("gradcheck", "examples/my_models.py:small_resnet", "--input-size", "2,3,16,16",
               "--kwargs", '{"width": 4, "blocks": 2}')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gradient check PASSED" in proc.stdout and "770 trainable parameters" in proc.stdout
    readme = (ROOT / "README.md").read_text()
    for line in proc.stdout.splitlines()[:4]:
        assert line.rstrip() in readme, f"README's gradcheck output is stale at: {line!r}"
