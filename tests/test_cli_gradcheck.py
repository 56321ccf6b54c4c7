"""CLI tests for ``dlsummary gradcheck``: exit 0 on a correct model, 1 on a planted
backward error, 2 (one line on stderr, no traceback) on every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn


    def mlp(width=6):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 2))


    class _Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            return 3 * grad  # planted error: should be 2 * grad


    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return _Doubled.apply(self.linear(x))


    def frozen():
        return nn.Linear(4, 2).requires_grad_(False)


    def not_a_model():
        return 42
    """
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gradcheck") / "models.py"
    path.write_text(MODELS)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlsummary", "gradcheck", *args],
                          capture_output=True, text=True, timeout=120)


def test_correct_model_passes(models: Path) -> None:
    result = _run(f"{models}:mlp", "--input-size", "3,4")
    assert result.returncode == 0, result.stderr
    assert "PASSED" in result.stdout and "0.weight" in result.stdout


def test_json_and_fast_mode(models: Path) -> None:
    result = _run(f"{models}:mlp", "--input-size", "3,4", "--kwargs", '{"width": 3}',
                  "--fast", "--directions", "2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["passed"] and data["mode"] == "fast" and data["directions"] == 2
    assert [t["name"] for t in data["tensors"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert data["tensors"][0]["shape"] == [3, 4]


def test_broken_backward_fails_with_exit_1(models: Path) -> None:
    result = _run(f"{models}:Broken", "--input-size", "3,4")
    assert result.returncode == 1, result.stderr
    assert "FAILED" in result.stdout and "linear.weight" in result.stdout
    fast = _run(f"{models}:Broken", "--input-size", "3,4", "--fast")
    assert fast.returncode == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{m}:mlp", "--input-size", "3,5"], "forward raised"),
        (["{m}:mlp", "--input-size", "3,a"], "not a list of integers"),
        (["{m}:nope", "--input-size", "3,4"], "has no attribute 'nope'"),
        (["missing_file.py:mlp", "--input-size", "3,4"], "does not exist"),
        (["{m}:frozen", "--input-size", "3,4"], "no trainable parameters"),
        (["{m}:not_a_model", "--input-size", "3,4"], "not a torch.nn.Module"),
        (["{m}:mlp", "--input-size", "3,4", "--kwargs", "{bad"], "not valid JSON"),
        (["{m}:mlp", "--input-size", "3,4", "--directions", "0"], "--directions"),
        (["{m}:mlp", "--input-size", "3,4", "--eps", "-1"], "--eps"),
        (["{m}:mlp"], "--input-size"),
    ],
)
def test_bad_input_exits_2_with_one_line(models: Path, args: list[str], message: str) -> None:
    result = _run(*[a.replace("{m}", str(models)) for a in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_has_an_example() -> None:
    result = _run("--help")
    assert result.returncode == 0 and "example:" in result.stdout
