"""The command line as a whole: the help, the MODEL spec, --input-size, --kwargs, and
the conventions shared by every command: a user's mistake is one line and exit code 2 (no
traceback unless --debug, before or after the command), --device names a device that
exists, and a reader that goes away (`| head`) ends the command quietly.

The commands run as subprocesses, the way a user meets them. No wall-clock limit: a slow
machine is not a failure."""

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
                          text=True, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one line on stderr naming every fragment, no traceback; return the line."""
    message = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


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
        def needs_width(width, depth=1):
            return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU())
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
    assert "Answer:" in one.stdout
    assert "p₁+p₂-p₁p₂" in one.stdout or "p_1 + p_2 - p_1p_2" in one.stdout, one.stdout


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


# --- conventions every subcommand shares, driven as a user would --------------------------

def _bad_invocations(model_file) -> dict[str, list[str]]:
    """Per subcommand, a cheap invocation that is a user's mistake (exit 2)."""
    model = f"{model_file}:small"
    return {
        "report": ["report", "--notebook", str(model_file.parent / "no_such_key.py")],
        "answer": ["answer", "no_such.99"],
        "rf": ["rf", model, "--input-size", "1,a,8,8"],
        "gradflow": ["gradflow", model, "--input-size", "1,a,8,8"],
        "gradcheck": ["gradcheck", model, "--input-size", "1,a,8,8"],
        "assignment": ["assignment", "--variant", "-3"],
        "grade": ["grade", str(model_file.parent / "no_such_submission.ipynb")],
    }


def test_every_subcommand_has_a_debug_case(model_file):
    assert set(_bad_invocations(model_file)) == set(SUBCOMMANDS)


@pytest.mark.slow  # 3 processes per command; nothing in them depends on the kernels
@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_debug_before_or_after_the_command_shows_the_traceback(model_file, command):
    args = _bad_invocations(model_file)[command]
    plain = run_cli(*args)
    line = assert_one_line_error(plain, f"dlsummary {command}: error:")
    for argv in (["--debug", *args], [*args, "--debug"]):
        debug = run_cli(*argv)
        assert debug.returncode == 2, debug.stderr
        assert "Traceback (most recent call last)" in debug.stderr, (argv, debug.stderr)
        assert debug.stderr.strip().splitlines()[-1] == line, "the one-line message still ends it"


@pytest.mark.parametrize("device, fragments", [
    ("gpu", ["'gpu' is not a device name", "did you mean --device cuda?"]),
    ("cpi", ["'cpi' is not a device name", "did you mean --device cpu?"]),
    ("cuda:x", ["'cuda:x' is not a device name", "cuda:N"]),
])
def test_unknown_device_is_one_line_with_a_suggestion(model_file, device, fragments):
    proc = run_cli("rf", f"{model_file}:small", "--input-size", "1,1,8,8", "--device", device)
    assert_one_line_error(proc, "--device", *fragments)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["rf", "gradflow", "gradcheck"])
@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_unavailable_device_is_one_line(model_file, command, device):
    import torch

    available = (torch.cuda.is_available() if device == "cuda"
                 else torch.backends.mps.is_available())
    if available:
        pytest.skip(f"this machine has {device}")
    proc = run_cli(command, f"{model_file}:small", "--input-size", "1,1,8,8",
                   "--device", device)
    assert_one_line_error(proc, f"--device '{device}'", "available here", "--device cpu")


def test_cpu_device_is_accepted(model_file):
    proc = run_cli("rf", f"{model_file}:small", "--input-size", "1,1,8,8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "receptive field 3x3" in proc.stdout


def test_callable_that_needs_arguments_points_at_kwargs(model_file):
    proc = run_cli("rf", f"{model_file}:needs_width", "--input-size", "1,1,8,8")
    assert_one_line_error(proc, "needs the argument width", "--kwargs '{\"width\": ")
    # a torch class as MODEL: its constructor's required arguments, named
    proc = run_cli("gradflow", "torch.nn:Linear", "--input-size", "4,8")
    assert_one_line_error(proc, "in_features, out_features", "--kwargs")
    # a misspelt argument: the names it does take, and the closest
    proc = run_cli("rf", f"{model_file}:needs_width", "--input-size", "1,1,8,8",
                   "--kwargs", '{"widht": 4}')
    assert_one_line_error(proc, "no argument 'widht'", "did you mean 'width'?", "width, depth")
    # and the negative control: with --kwargs it runs
    proc = run_cli("rf", f"{model_file}:needs_width", "--input-size", "1,1,8,8",
                   "--kwargs", '{"width": 4}')
    assert proc.returncode == 0, proc.stderr


def _closed_pipe_cases(model_file) -> dict[str, list[str]]:
    model = f"{model_file}:small"
    return {
        "help": ["--help"],
        "report": ["report", "--help"],  # executing the key is minutes; its output path is
        "answer": ["answer", "--help"],  # main()'s, the same for every command
        "rf": ["rf", model, "--input-size", "1,1,8,8"],
        "gradflow": ["gradflow", model, "--input-size", "2,1,8,8"],
        "gradcheck": ["gradcheck", model, "--input-size", "1,1,6,6"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["help", "report", "answer", "rf", "gradflow", "gradcheck"])
def test_a_closed_pipe_ends_quietly(model_file, case):
    """`dlsummary ... | head`: the reader is gone before the command writes; no traceback,
    exit 141 as for a tool killed by SIGPIPE (argparse's help printer drops the text itself
    and exits 0)."""
    args = _closed_pipe_cases(model_file)[case]
    proc = subprocess.Popen([sys.executable, "-m", "dlsummary", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader has gone
    stderr = proc.stderr.read()
    returncode = proc.wait()
    assert stderr == "", stderr
    assert returncode == (0 if "--help" in args else 141), stderr


def test_head_through_a_shell_pipeline(model_file):
    """The same as a user types it, exit status of the pipeline included (head's)."""
    proc = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m dlsummary rf '{model_file}:small' "
                       "--input-size 1,1,8,8 --json | head -n 2"],
        capture_output=True, text=True)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
