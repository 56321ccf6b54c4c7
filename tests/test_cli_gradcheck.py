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


    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(50, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, ids, mask):
            return self.out(torch.tanh(self.embed(ids)) * mask.unsqueeze(-1))


    def tagger_inputs():
        ids = torch.randint(0, 50, (2, 5))
        return ids, torch.ones(2, 5, dtype=torch.bool)
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
        (["{m}:mlp", "--input", "3,4:complex"], "unknown dtype"),
        (["{m}:mlp", "--input", "3,4:long:5..5"], "is empty"),
        (["{m}:mlp", "--input", "3,4:float:0..5"], "for integer inputs"),
        (["{m}:mlp", "--input", "3,4", "--input-size", "3,4"], "once"),
        (["{m}:Tagger", "--input", "2,5:long:0..500", "--input", "2,5:bool"], "index out of"),
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


def test_token_ids_and_a_mask_as_two_inputs(models: Path) -> None:
    result = _run(f"{models}:Tagger", "--input", "2,5:long:0..50", "--input", "2,5:bool")
    assert result.returncode == 0, result.stderr
    assert "(2, 5) int64 in [0, 50), (2, 5) bool" in result.stdout
    assert "embed.weight" in result.stdout


def test_inputs_from_a_callable_and_json_without_a_bar(models: Path) -> None:
    result = _run(f"{models}:Tagger", "--input-fn", f"{models}:tagger_inputs", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inputs"] == ["(2, 5) int64", "(2, 5) bool"] and report["passed"]
    assert result.stderr == ""  # no progress bar, no note
