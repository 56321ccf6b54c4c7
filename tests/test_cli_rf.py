"""``dlsummary rf`` driven as a user would: a subprocess, its output and exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each case starts a Python process that imports torch

MODELS = textwrap.dedent("""
    import torch
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

    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return torch.roll(self.conv(x), 1, dims=-1)

    def shifted():
        return Shifted()

    def no_batch_axis():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
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
    done = rf(f"{models}:classifier", "--input-size", "1,3,16,16", "--json", "--measure")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["is_global"] and data["size"] == [None, None]
    assert data["measured"] is None and "(N, C, *spatial)" in data["not_measured"]


@pytest.mark.parametrize("args, needle", [
    (["{m}:recurrent", "--input-size", "1,3,20"], "'1' (torch.nn.modules.rnn.LSTM)"),
    (["{m}:not_a_model", "--input-size", "1,3,8,8"], "not a torch.nn.Module"),
    (["{m}:missing", "--input-size", "1,3,8,8"], "has no attribute 'missing'"),
    (["no_such_package.models:net", "--input-size", "1,3,8,8"], "no module named"),
    (["{m}", "--input-size", "1,3,8,8"], "must be 'package.module:callable'"),
    (["{m}:cnn", "--input-size", "1,3,a,8"], "not a list of integers"),
    (["{m}:cnn", "--input-size", "1,5,8,8"], "input of shape"),
    (["{m}:cnn", "--input-size", "1,3,8,8", "--kwargs", "{bad"], "not valid JSON"),
    (["{m}:no_batch_axis", "--input-size", "3,64,64"], "needs an input of rank 4"),
    (["{m}:shifted", "--input-size", "1,1,24,24"], "the call 'roll'"),
])
def test_errors_are_one_line(models, args, needle):
    done = rf(*[a.replace("{m}", str(models)) for a in args])
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


UNET = str(Path(__file__).resolve().parents[1] / "examples" / "unet.py")


@pytest.mark.parametrize("decoder", ["transposed", "bilinear"])
def test_unet_either_decoder(decoder):
    done = rf(f"{UNET}:unet", "--input-size", "1,1,96,96", "--kwargs",
              json.dumps({"decoder": decoder}), "--json", "--measure")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["method"] == "analytic" and data["stride"] == [1, 1]
    low, high = data["measured"]["bbox"][0]
    assert data["size"][0] >= high - low, "the maximum over neighbouring outputs"
    assert data["misaligned"], "skip and decoder paths are centred differently"


def test_measure_falls_back_when_the_analysis_refuses(models):
    plain = rf(f"{models}:shifted", "--input-size", "1,1,24,24")
    assert plain.returncode == 2 and "roll" in plain.stderr
    done = rf(f"{models}:shifted", "--input-size", "1,1,24,24", "--measure")
    assert done.returncode == 0, done.stderr
    assert "receptive field 3x3, effective stride 1x1" in done.stdout
    assert "(measured)" in done.stdout and "refused" in done.stdout


def test_global_is_printed_once(models):
    done = rf(f"{models}:classifier", "--input-size", "1,3,16,16")
    assert done.returncode == 0, done.stderr
    assert "receptive field global" in done.stdout and "globalxglobal" not in done.stdout
