"""The README's example outputs, held against a fresh run of the same commands.

The README's blocks are written by ``make readme`` (``tools/readme_examples.py``) on one
machine; another machine's kernels round the last digits differently. So what is compared
is what is stable: every word, every integer (shapes, counts, receptive fields, the 10^k of
a diagnosis), the verdict and the exit code exactly; decimal measurements within the
example's stated ``rtol``; the rounding noise that the example names (finite-difference
errors, which entry is worst) not at all. A stale README fails here with the line that
differs and the command that regenerates it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_examples",
                                               ROOT / "tools" / "readme_examples.py")
readme_examples = importlib.util.module_from_spec(_spec)
sys.modules["readme_examples"] = readme_examples
_spec.loader.exec_module(readme_examples)
EXAMPLES = readme_examples.EXAMPLES

# a number in the text; a decimal point or an exponent makes it a measurement
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
NOISE = "<noise>"


def _skeleton(line: str, noise: tuple[str, ...]) -> tuple[str, list[str]]:
    """The line's text with numbers as '#', whitespace collapsed; and the numbers."""
    for pattern in noise:
        line = re.sub(pattern, f" {NOISE}", line)
    numbers = _NUMBER.findall(line)
    text = " ".join(_NUMBER.sub("#", line).split())
    return text, numbers


def _same_number(expected: str, actual: str, rtol: float) -> bool:
    if not any(c in expected + actual for c in ".eE"):  # integers: exact
        return expected.lstrip("+") == actual.lstrip("+")
    a, b = float(expected), float(actual)
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def differences(expected: list[str], actual: list[str], rtol: float = 0.0,
                noise: tuple[str, ...] = ()) -> list[str]:
    """What differs between the README's lines and a fresh run's, beyond the tolerance."""
    if len(expected) != len(actual):
        return [f"{len(expected)} lines in the README, {len(actual)} now"]
    found = []
    for number, (old, new) in enumerate(zip(expected, actual, strict=True), 1):
        old_text, old_numbers = _skeleton(old, noise)
        new_text, new_numbers = _skeleton(new, noise)
        if old_text != new_text or len(old_numbers) != len(new_numbers):
            found.append(f"line {number}: README {old!r}, now {new!r}")
            continue
        for a, b in zip(old_numbers, new_numbers, strict=True):
            if not _same_number(a, b, rtol):
                found.append(f"line {number}: {a} in the README, {b} now "
                             f"(rtol {rtol:g}): {new!r}")
    return found


# --- the comparison itself, against outputs that must and must not match --------------

def test_comparison_accepts_rounding_within_tolerance_only():
    readme = ["0   0   Linear  1/1  2.35e-08  0.0%", "diagnosis: vanishing (10^7-fold)"]
    assert differences(readme, ["0  0  Linear  1/1  2.36e-08  0.0%",
                                "diagnosis: vanishing (10^7-fold)"], rtol=0.01) == []
    # negative controls: each a real change, each caught
    for changed in (["0   0   Linear  1/1  2.60e-08  0.0%", readme[1]],  # 10 % off
                    ["0   0   Linear  2/2  2.35e-08  0.0%", readme[1]],  # an integer
                    [readme[0], "diagnosis: healthy (10^7-fold)"],  # the verdict
                    [readme[0], "diagnosis: vanishing (10^6-fold)"],  # its order of size
                    readme[:1]):  # a line less
        assert differences(readme, changed, rtol=0.01), changed


def test_comparison_ignores_only_the_named_noise():
    noise = EXAMPLES["gradcheck"].noise
    readme = ["0.weight        (4, 3, 3, 3)  1.25e-10     2.82e-08     0/108    "
              "[3, 0, 2, 2]: 0.00257144 vs 0.00257144"]
    other_machine = ["0.weight        (4, 3, 3, 3)  1.25e-10     6.04e-08     0/108    "
                     "[0, 0, 1, 0]: 0.00113955 vs 0.00113955"]
    assert differences(readme, other_machine, noise=noise) == []
    for changed in (other_machine[0].replace("0/108", "3/108"),  # failing entries
                    other_machine[0].replace("(4, 3, 3, 3)", "(4, 3, 5, 5)"),  # a shape
                    other_machine[0].replace("0.weight", "0.bias")):
        assert differences(readme, [changed], noise=noise), changed


# --- the README against fresh runs --------------------------------------------------------

@pytest.fixture(scope="module")
def readme_text() -> str:
    return (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def fresh_run():
    """Each example's command, run once for this module's tests."""
    done = {}

    def run(name: str):
        if name not in done:
            done[name] = readme_examples.run(EXAMPLES[name])
        return done[name]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_is_current(name, readme_text, fresh_run):
    example = EXAMPLES[name]
    shown = readme_examples.readme_block(name, readme_text)
    assert shown[0] == f"$ {example.command}", "the README's command line"
    proc = fresh_run(name)
    assert proc.returncode == example.returncode, proc.stdout + proc.stderr
    found = differences(shown[1:], readme_examples.shown_lines(example, proc.stdout),
                        rtol=example.rtol, noise=example.noise)
    assert not found, (f"README's {name} example is stale; regenerate it with `make readme`:\n"
                       + "\n".join(found))


# the claims the README's text makes about these outputs, checked on the fresh run

@pytest.mark.slow
def test_readme_rf_claims(fresh_run):
    out = fresh_run("rf").stdout
    assert "receptive field 25x25, effective stride 4x4, effective padding 12x12" in out
    assert "misaligned paths" in out, "the README explains this warning"


@pytest.mark.slow
def test_readme_gradflow_claims(fresh_run):
    proc = fresh_run("gradflow")
    assert proc.returncode == 1, "a vanishing diagnosis is a failed check"
    assert "diagnosis: vanishing" in proc.stdout


@pytest.mark.slow
def test_readme_gradcheck_claims(fresh_run):
    proc = fresh_run("gradcheck")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gradient check PASSED" in proc.stdout and "770 trainable parameters" in proc.stdout
    failing = re.findall(r"\s(\d+)/(\d+)\s", proc.stdout)
    assert len(failing) == 16, "one row per parameter tensor"
    assert all(bad == "0" for bad, _ in failing), "no failing entry in any tensor"
