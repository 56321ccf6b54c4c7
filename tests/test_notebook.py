"""The answer key itself: its structure, the jupytext pair, and its execution."""

from __future__ import annotations

import re

import jupytext
import nbformat
import pytest
from conftest import NOTEBOOK, QUESTIONS_MD

from dlsummary.notebook import cell_text_output, questions

IPYNB = NOTEBOOK.with_suffix(".ipynb")
ALL_SECTIONS_BUILT = True


def test_jupytext_pair_is_in_sync():
    source = jupytext.read(NOTEBOOK)
    paired = nbformat.read(IPYNB, as_version=4)
    assert [(c.cell_type, c.source) for c in paired.cells] == \
        [(c.cell_type, c.source) for c in source.cells], \
        "notebooks/summary_questions.ipynb is out of sync: run `make sync`"
    assert all(not c.get("outputs") for c in paired.cells if c.cell_type == "code"), \
        "the committed .ipynb must have no outputs"


def test_every_question_has_an_answer_and_asserted_evidence():
    found = questions(jupytext.read(NOTEBOOK))
    assert found, "no questions found"
    nb = jupytext.read(NOTEBOOK)
    for q in found:
        assert q.answer.startswith("**Answer:**"), q.qid
        evidence = "\n".join(nb.cells[i].source for i in q.evidence_cells)
        assert re.search(r"^\s*assert\b", evidence, re.M), f"{q.qid}: no assert in its evidence"
        assert not re.search(r"\b(TODO|TBD|FIXME|placeholder)\b", q.answer + evidence), q.qid


def test_questions_follow_the_specification():
    """Ids in the order of questions.md, wording unchanged (when questions.md is at hand)."""
    if not QUESTIONS_MD.is_file():
        pytest.skip(f"{QUESTIONS_MD} is not beside this checkout")
    spec = QUESTIONS_MD.read_text()
    spec_ids = re.findall(r"^### ([a-z]+\.\d+)\s*$", spec, re.M)
    found = questions(jupytext.read(NOTEBOOK))
    ids = [q.qid for q in found]
    assert ids == [i for i in spec_ids if i in ids], "questions out of the specified order"
    if ALL_SECTIONS_BUILT:
        assert ids == spec_ids, f"missing questions: {sorted(set(spec_ids) - set(ids))}"
    for q in found:
        # the first sentence of the question must appear verbatim in the specification
        first = " ".join(q.question.split())[:60]
        assert first in " ".join(spec.split()), f"{q.qid}: wording differs from questions.md"


@pytest.mark.slow
def test_answer_key_executes_and_renders(executed_report):
    report, progress = executed_report
    page = report.html.read_text()
    nb = nbformat.read(report.notebook, as_version=4)
    found = questions(nb)
    for q in found:
        assert f'id="{q.anchor}"' in page and f'href="#{q.anchor}"' in page, q.qid
    assert page.count("<math") > 20
    assert "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert {q.qid for q in found} <= {line.split()[-1] for line in progress}
    assert all(o.get("output_type") != "error" for c in nb.cells for o in c.get("outputs", []))


_TIMING = re.compile(r"\d+(\.\d+)?\s*(s|ms|µs|us|seconds?)\b")


@pytest.mark.slow
def test_answer_key_is_deterministic(executed_report, tmp_path):
    """A second run in a fresh kernel prints the same numbers (timing lines aside)."""
    from dlsummary.report import render_report

    first = nbformat.read(executed_report[0].notebook, as_version=4)
    second = nbformat.read(render_report(NOTEBOOK, tmp_path).notebook, as_version=4)
    for a, b in zip(first.cells, second.cells, strict=True):
        if a.cell_type == "code" and "perf_counter" not in a.source:  # timings vary
            ta = _TIMING.sub("<t>", cell_text_output(a))
            tb = _TIMING.sub("<t>", cell_text_output(b))
            assert ta == tb, f"cell differs between runs:\n{ta}\n---\n{tb}"


def test_long_summaries_are_cut_outside_formulas():
    from dlsummary.notebook import summarise_answer

    answer = "**Answer:** " + "word " * 60 + "$" + "x+" * 100 + "y$ and more words."
    summary = summarise_answer(answer)
    assert summary.endswith("...") and summary.count("$") % 2 == 0
    short = summarise_answer("**Answer:** **False.** Because $a=b$. More text here.")
    assert short == "False. Because $a=b$."
