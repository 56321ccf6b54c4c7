"""``dlsummary rf`` driven as a user would: a subprocess, its output and exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # each case starts a Python process that imports torch

MODELS = textwrap.dedent("""
    import torch.nn as nn

    def cnn(depth=2):
        return nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(depth)],
                             nn.MaxPool2d(2))

    def classifier():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 2))

    def recurrent():
        return nn.Sequential(nn.Conv1d(3, 4, 3), nn.LSTM(4, 4))

    def not_a_model():
        return 42
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("rf") / "models.py"
    path.write_text(MODELS)
    return path


def rf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlsummary", "rf", *args],
                          capture_output=True, text=True, timeout=120)


def test_table(models):
    done = rf(f"{models}:cnn", "--input-size", "1,3,32,32", "--kwargs", '{"depth": 3}')
    assert done.returncode == 0, done.stderr
    assert "receptive field 8x8, effective stride 2x2" in done.stdout
    assert "MaxPool2d" in done.stdout and "Conv2d" in done.stdout


def test_json_and_measure(models):
    done = rf(f"{models}:cnn", "--input-size", "1,3,32,32", "--json", "--measure")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["size"] == [6, 6] and data["stride"] == [2, 2] and not data["is_global"]
    assert data["measured"]["size"] == [6, 6]
    assert [row["size"] for row in data["layers"]] == [[3, 3], [5, 5], [6, 6]]


def test_global(models):
    done = rf(f"{models}:classifier", "--input-size", "1,3,16,16", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["is_global"] and data["size"] == [None, None]


@pytest.mark.parametrize("args, needle", [
    (["{m}:recurrent", "--input-size", "1,3,20"], "'1' (torch.nn.modules.rnn.LSTM)"),
    (["{m}:not_a_model", "--input-size", "1,3,8,8"], "not a torch.nn.Module"),
    (["{m}:missing", "--input-size", "1,3,8,8"], "has no attribute 'missing'"),
    (["no_such_package.models:net", "--input-size", "1,3,8,8"], "no module named"),
    (["{m}", "--input-size", "1,3,8,8"], "must be 'package.module:callable'"),
    (["{m}:cnn", "--input-size", "1,3,a,8"], "not a list of integers"),
    (["{m}:cnn", "--input-size", "1,5,8,8"], "input of shape"),
    (["{m}:cnn", "--input-size", "1,3,8,8", "--kwargs", "{bad"], "not valid JSON"),
])
def test_errors_are_one_line(models, args, needle):
    done = rf(*[a.replace("{m}", str(models)) for a in args])
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
