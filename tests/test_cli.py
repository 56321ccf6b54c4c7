"""The command line as a whole: the help, the MODEL spec, --input-size, --kwargs, and
the error conventions shared by every command (one line, exit code 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from torch import nn

from dlsummary.cli import SUBCOMMANDS
from dlsummary.cli._common import CLIError, load_model, parse_input_size, parse_kwargs


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlsummary", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_help_lists_every_command_with_an_example():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert name in proc.stdout
        sub = run_cli(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "example" in sub.stdout.lower(), f"'{name} --help' shows no example"


def test_no_command_prints_help_and_exits_2():
    proc = run_cli()
    assert proc.returncode == 2 and "COMMAND" in proc.stdout


def test_unknown_option_is_one_line():
    proc = run_cli("report", "--frobnicate")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--frobnicate" in proc.stderr


@pytest.mark.parametrize("text, expected", [("1,3,224,224", (1, 3, 224, 224)),
                                            ("2x1x28x28", (2, 1, 28, 28)), ("4, 8", (4, 8))])
def test_input_size_parses(text, expected):
    assert parse_input_size(text) == expected


@pytest.mark.parametrize("text", ["", "a,b", "1,-3", "1,0,4"])
def test_bad_input_size_says_how_to_write_it(text):
    with pytest.raises(CLIError, match="input-size"):
        parse_input_size(text)


def test_kwargs_must_be_a_json_object():
    assert parse_kwargs('{"depth": 3}') == {"depth": 3}
    with pytest.raises(CLIError, match="JSON"):
        parse_kwargs("{depth: 3}")
    with pytest.raises(CLIError, match="object"):
        parse_kwargs("[1, 2]")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mymodels.py"
    path.write_text(textwrap.dedent("""
        from torch import nn
        def small(width=4):
            return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU())
        def not_a_model():
            return 42
        def broken():
            raise RuntimeError("out of coffee")
        instance = nn.Linear(2, 3)
        NUMBER = 7
    """))
    return path


def test_load_model_from_file_with_kwargs(model_file):
    model = load_model(f"{model_file}:small", {"width": 6})
    assert isinstance(model, nn.Sequential) and model[0].out_channels == 6
    assert not model.training, "models are analysed in eval mode"
    assert isinstance(load_model(f"{model_file}:instance"), nn.Linear)


def test_load_model_from_module():
    assert isinstance(load_model("torch.nn:Identity"), nn.Identity)


@pytest.mark.parametrize("spec_suffix, message", [
    (":not_a_model", "returned a int, not a torch.nn.Module"),
    (":broken", "raised RuntimeError: out of coffee"),
    (":NUMBER", "is a int, not a callable"),
    (":missing", "has no attribute 'missing'"),
])
def test_load_model_errors_name_the_problem(model_file, spec_suffix, message):
    with pytest.raises(CLIError, match=message):
        load_model(f"{model_file}{spec_suffix}")


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "must be 'package.module:callable'"),
    ("nosuchpackage.models:net", "no module named 'nosuchpackage'"),
    ("missing/file.py:net", "does not exist"),
])
def test_bad_model_specs(spec, message):
    with pytest.raises(CLIError, match=message):
        load_model(spec)


def test_cuda_device_without_cuda_is_a_clear_error(model_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(CLIError, match="no CUDA device"):
        load_model(f"{model_file}:small", device="cuda")


def test_answer_lists_and_prints_questions():
    listed = run_cli("answer", "--list")
    assert listed.returncode == 0 and "dropout.1" in listed.stdout
    one = run_cli("answer", "dropout.1", "--no-evidence")
    assert one.returncode == 0
    assert "Answer:" in one.stdout and "p_1 + p_2 - p_1p_2" in one.stdout


def test_answer_unknown_id_is_one_line_exit_2():
    proc = run_cli("answer", "dropout.99")
    assert proc.returncode == 2
    assert "dropout.99" in proc.stderr and "dropout.1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_answer_json(tmp_path):
    import json

    proc = run_cli("answer", "dropout.3", "--json", "--no-evidence")
    data = json.loads(proc.stdout)
    assert data["id"] == "dropout.3" and data["answer"].startswith("**Answer:**")
