"""``dlsummary gradflow`` driven as a user would: a subprocess, its output and exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # each case starts a Python process that imports torch

MODELS = textwrap.dedent("""
    import torch.nn as nn

    def deep(depth=24, act="sigmoid"):
        A = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}[act]
        return nn.Sequential(nn.Linear(8, 16), A(), *[nn.Linear(16, 16), A()] * depth,
                             nn.Linear(16, 1))

    def rnn():
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn, self.head = nn.RNN(3, 8, batch_first=True), nn.Linear(8, 1)

            def forward(self, x):
                return self.head(self.rnn(x)[0][:, -1])
        return Net()

    def paramless():
        return nn.Sequential(nn.ReLU())

    def integer_output():
        class ArgMax(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(8, 3)

            def forward(self, x):
                return self.lin(x).argmax(-1)
        return ArgMax()

    def not_a_model():
        return 42
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("gradflow") / "models.py"
    path.write_text(MODELS)
    return path


def gradflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlsummary", "gradflow", *args],
                          capture_output=True, text=True, timeout=120)


def test_healthy_model_exits_0():
    done = gradflow("torch.nn:Linear", "--kwargs", '{"in_features": 8, "out_features": 2}',
                    "--input-size", "4,8")
    assert done.returncode == 0, done.stderr
    assert "diagnosis: healthy" in done.stdout and "Linear" in done.stdout


def test_vanishing_model_exits_1_and_points_out_sharing(models):
    done = gradflow(f"{models}:deep", "--input-size", "64,8")
    assert done.returncode == 1, done.stderr
    assert "diagnosis: vanishing" in done.stdout
    assert "shared: called 24 times in one pass" in done.stdout
    assert "24/24" in done.stdout  # every call of the shared Linear has its row


def test_json_and_plot(models, tmp_path):
    plot = tmp_path / "flow.png"
    done = gradflow(f"{models}:deep", "--kwargs", '{"depth": 3, "act": "relu"}',
                    "--input-size", "32x8", "--json", "--plot", str(plot), "--seed", "3")
    assert done.returncode in (0, 1), done.stderr
    data = json.loads(done.stdout)
    assert data["diagnosis"] in {"healthy", "vanishing", "exploding"}
    assert len(data["layers"]) == 2 + 2 * 3 + 1
    assert data["layers"][1]["dead_fraction"] is not None
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_thresholds_change_the_exit_code(models):
    base = (f"{models}:deep", "--kwargs", '{"depth": 2}', "--input-size", "16,8")
    assert gradflow(*base).returncode == 1  # control: a 4-layer sigmoid stack vanishes
    assert gradflow(*base, "--threshold", "1e30").returncode == 1  # per layer, still
    done = gradflow(*base, "--threshold", "1e30", "--per-layer", "1e30")
    assert done.returncode == 0, done.stdout + done.stderr


def test_per_step_judges_a_recurrent_net_over_time(models):
    done = gradflow(f"{models}:rnn", "--input-size", "4,60,3", "--json")
    assert done.returncode == 0, done.stderr  # the layer view: two calls, no fall
    plain = json.loads(done.stdout)
    assert plain["layers"][0]["step_grad_norms"] is None
    done = gradflow(f"{models}:rnn", "--input-size", "4,60,3", "--json", "--per-step")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["diagnosis"] == "vanishing" and "from step 59 to step 0" in data["reason"]
    assert len(data["layers"][0]["step_grad_norms"]) == 60


@pytest.mark.parametrize("args, message", [
    (["{m}:deep", "--input-size", "16,9"],
     "raised RuntimeError on a random batch of shape (16, 9)"),
    (["{m}:deep", "--input-size", "16,a"], "is not a list of integers"),
    (["{m}:paramless", "--input-size", "16,8"], "has no trainable parameters"),
    (["{m}:integer_output", "--input-size", "16,8"], "not a floating-point tensor"),
    (["{m}:not_a_model", "--input-size", "16,8"], "not a torch.nn.Module"),
    (["{m}:missing", "--input-size", "16,8"], "has no attribute 'missing'"),
    (["no/such/file.py:deep", "--input-size", "16,8"], "does not exist"),
    (["{m}:deep", "--input-size", "16,8", "--kwargs", "{depth: 2}"], "is not valid JSON"),
    (["{m}:deep", "--input-size", "16,8", "--plot", "flow.txt"], "ending in .png, .pdf or .svg"),
    (["{m}:deep", "--input-size", "16,8", "--threshold", "0.5"], "finite number > 1"),
    (["{m}:deep", "--input-size", "16,8", "--per-layer", "1"], "per_layer=1.0"),
    (["{m}:deep", "--input-size", "16,8", "--plot", "/no/such/dir/flow.png"], "cannot write"),
])
def test_bad_input_is_one_line_exit_2(models, args, message):
    done = gradflow(*[a.replace("{m}", str(models)) for a in args])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr, done.stderr


def test_missing_input_size_is_usage_error(models):
    done = gradflow(f"{models}:deep")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--input-size" in done.stderr
