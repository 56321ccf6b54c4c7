"""The autograder: our key gets full marks on every automatic item, the blank assignment
zero, wrong code fails its item, and a crashing or looping submission is still graded."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest

from dlsummary.assignment import build_assignment, build_solution, draw_variant
from dlsummary.grading import (
    grade_drop_probability,
    grade_receptive_field,
    grade_submission,
    student_verdict,
)


def _write(nb, path):
    nbformat.write(nb, path)
    return path


def _code_cell_of(nb, qid):
    """Index of the first code cell after question ``qid``'s heading."""
    start = next(i for i, c in enumerate(nb.cells) if c.source.startswith(f"### {qid}\n"))
    return next(i for i in range(start, len(nb.cells)) if nb.cells[i].cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("variant", [None, 3, 11, 27])
def test_our_key_gets_full_marks_on_every_automatic_item(tmp_path, variant):
    grade = grade_submission(_write(build_solution(draw_variant(variant)), tmp_path / "k.ipynb"))
    missed = [(i.id, i.detail) for i in grade.items if i.auto and i.points != i.max]
    assert not missed and grade.auto_max >= 20
    assert grade.variant == variant
    by_hand = [i for i in grade.items if not i.auto]
    assert by_hand and all(i.key for i in by_hand)  # listed with our short answer


@pytest.mark.slow
@pytest.mark.parametrize("variant", [None, 11])
def test_the_blank_assignment_scores_zero(tmp_path, variant):
    grade = grade_submission(_write(build_assignment(draw_variant(variant)), tmp_path / "b.ipynb"))
    assert grade.auto_points == 0 and grade.auto_max >= 20


WRONG_GRADIENT = """
grad_W = torch.zeros_like(W)
grad_b = torch.zeros_like(b)
eps = 1e-6
with torch.no_grad():
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            W[i, j] += eps
            grad_W[i, j] = (foo(W, b) - loss) / eps    # forgets to restore W
    for i in range(b.shape[0]):
        b[i] += eps
        grad_b[i] = (foo(W, b) - loss) / eps
        b[i] -= eps
"""

WRONG_EMBEDDING = """
class Embedding(torch.nn.Module):
    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(num_embeddings, embedding_dim))

    def forward(self, ids):
        return self.weight[ids.clamp(max=self.weight.shape[0] - 2) + 1]   # off by one
"""


@pytest.mark.slow
def test_wrong_code_fails_and_a_crash_is_still_graded(tmp_path):
    nb = build_solution(draw_variant(None))
    backprop = _code_cell_of(nb, "backprop.3")
    nb.cells[backprop].source = nb.cells[backprop].source.split("from dlsummary import")[0] \
        + WRONG_GRADIENT
    seq = _code_cell_of(nb, "seq.2")
    nb.cells[seq].source = nb.cells[seq].source.split("from dlsummary.sequence")[0] \
        + WRONG_EMBEDDING
    nb.cells.insert(1, nbformat.v4.new_code_cell("raise RuntimeError('a crash')"))
    grade = grade_submission(_write(nb, tmp_path / "w.ipynb"))
    items = {i.id: i for i in grade.items}
    assert items["backprop.3"].points == 0 and "W" in items["backprop.3"].detail
    assert items["seq.2.B"].points == 0 and "differ" in items["seq.2.B"].detail
    # everything else was still graded, and right
    others = [i for i in grade.items if i.auto and i.id not in ("backprop.3", "seq.2.B")]
    assert others and all(i.points == i.max for i in others)


@pytest.mark.slow
def test_a_submission_that_loops_is_interrupted_and_still_graded(tmp_path):
    """Every verdict here holds whichever cells the (deliberately short) limit interrupts."""
    nb = build_solution(draw_variant(None))
    nb.cells.insert(1, nbformat.v4.new_code_cell("while True:\n    pass"))
    seq = _code_cell_of(nb, "seq.2")
    nb.cells[seq].source += "\n\nclass Embedding:\n    def __init__(self, n, d):\n" \
        "        while True:\n            pass\n"
    grade = grade_submission(_write(nb, tmp_path / "loop.ipynb"), timeout=5)
    points = {i.id: i.points for i in grade.items}
    assert points["seq.2.B"] == 0 and points["cnn.3"] == points["losses.4.A"] == 1


@pytest.mark.parametrize(("answer", "letter", "verdict"), [
    ("\n**A. True.** because", "A", True), ("**B. False** no", "B", False),
    ("A) false, since", "A", False), ("**A.** True: yes", "A", True),
    ("**A.** it depends", "A", None), ("**False.** Dropout can", None, False),
    ("It is true that", None, None),
])
def test_verdicts_are_read_from_the_opening_of_each_sub_item(answer, letter, verdict):
    assert student_verdict(answer, letter) is verdict


@pytest.mark.parametrize(("answer", "points"), [
    (" $112\\times112$, with a jump of 8", 1.0), (" 112 x 112 pixels.", 1.0),
    (" Three layers give 100.", 0.0), (" It is large.", 0.0),
])
def test_the_receptive_field_is_the_first_number(answer, points):
    assert grade_receptive_field(answer, 112)[0] == points


@pytest.mark.parametrize(("answer", "points"), [
    (" $q = 1-(1-p_1)(1-p_2) = p_1 + p_2 - p_1p_2$, which is $0.28$", 1.0),
    (" q=0.28", 1.0), (" $q = p_1 + p_2$", 0.0), (" 0.28, because", 1.0),
    (" $q = p_1 p_2$", 0.0), (" no idea", 0.0),
])
def test_the_drop_probability_is_an_expression_or_a_number(answer, points):
    assert grade_drop_probability(answer, 0.1, 0.2)[0] == points


def test_the_command_line(tmp_path):
    run = [sys.executable, "-m", "dlsummary"]
    out = subprocess.run([*run, "assignment", "-o", str(tmp_path), "--variant", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "assignment.ipynb").is_file(), out.stderr
    key = subprocess.run([*run, "assignment", "--variant", "2", "--key", "--json"],
                         capture_output=True, text=True)
    assert key.returncode == 0 and json.loads(key.stdout)["cnn.3"] > 1
    bad = subprocess.run([*run, "grade", str(tmp_path / "missing.ipynb")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing.ipynb" in bad.stderr
    not_nb = tmp_path / "x.ipynb"
    not_nb.write_text("not json")
    bad = subprocess.run([*run, "grade", str(not_nb)], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot read" in bad.stderr
