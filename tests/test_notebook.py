"""The answer key itself: its sections, their structure and wording, and its execution."""

from __future__ import annotations

import re

import nbformat
import pytest
from conftest import DETERMINISM_SECTION, KEY, QUESTIONS_GNN_MD, QUESTIONS_MD

from dlsummary.notebook import (
    cell_text_output,
    find_sections,
    questions,
    read_key,
    read_notebook,
    select_sections,
)


def spec_ids() -> list[str]:
    """Question ids in the specification's order: questions.md, then questions-gnn.md
    (the section after Unsupervised learning) when it is at hand."""
    text = QUESTIONS_MD.read_text()
    if QUESTIONS_GNN_MD.is_file():
        text += "\n" + QUESTIONS_GNN_MD.read_text()
    return re.findall(r"^### ([a-z]+\.\d+)\s*$", text, re.M)


def test_sections_are_discovered_in_number_order():
    sections = find_sections(KEY)
    numbers = [s.number for s in sections]
    assert numbers == sorted(numbers) and numbers[0] == 0, "00_introduction.py comes first"
    assert len(sections) >= 9, [s.path.name for s in sections]


def test_no_committed_ipynb():
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=KEY.parent,
                             capture_output=True, text=True).stdout.split()
    assert tracked == [], f"generated notebooks are committed: {tracked}"


def test_only_selects_sections_by_name_or_prefix():
    sections = find_sections(KEY)
    names = [s.name for s in select_sections(sections, "cnn,opt")]
    assert names == ["introduction", "cnn", "optimization"]
    from dlsummary.errors import DLSummaryError

    with pytest.raises(DLSummaryError, match="names no section"):
        select_sections(sections, "cnnn")


def test_every_section_runs_alone_and_has_checked_evidence():
    """Each section opens with its ## heading and sets its own seed (it must run in a fresh
    kernel on its own); every question has an answer and evidence with a check."""
    for section in find_sections(KEY):
        if section.is_introduction:
            continue
        nb = read_notebook(section.path)
        text = "\n".join(c.source for c in nb.cells)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("## "), \
            f"{section.path.name} must open with its '## Section' heading"
        assert "seed_everything(" in text, f"{section.path.name} does not fix its seed"
        found = questions(nb)
        assert found, f"no questions in {section.path.name}"
        for q in found:
            assert q.answer.startswith("**Answer:**"), q.qid
            evidence = "\n".join(nb.cells[i].source for i in q.evidence_cells)
            assert re.search(r"\b(check|control)\(", evidence), f"{q.qid}: no check"
            assert not re.search(r"\b(TODO|TBD|FIXME|placeholder)\b", q.answer + evidence), q.qid


def test_questions_follow_the_specification():
    """Ids in the order of questions.md (and questions-gnn.md), wording unchanged."""
    if not QUESTIONS_MD.is_file():
        pytest.skip(f"{QUESTIONS_MD} is not beside this checkout")
    spec = QUESTIONS_MD.read_text()
    if QUESTIONS_GNN_MD.is_file():
        spec += "\n" + QUESTIONS_GNN_MD.read_text()
    expected = spec_ids()
    found = questions(read_key(KEY))
    ids = [q.qid for q in found]
    assert ids == [i for i in expected if i in ids], "questions out of the specified order"
    gnn_built = any(i.startswith("gnn.") for i in ids)
    wanted = expected if gnn_built else [i for i in expected if not i.startswith("gnn.")]
    assert ids == wanted, f"missing questions: {sorted(set(wanted) - set(ids))}"
    flat_spec = " ".join(spec.split())
    for q in found:
        # the first sentence of the question must appear verbatim in the specification
        first = " ".join(q.question.split())[:60]
        assert first in flat_spec, f"{q.qid}: wording differs from questions.md"


@pytest.mark.slow
def test_answer_key_executes_and_renders(executed_report):
    report, progress = executed_report
    page = report.html.read_text()
    nb = nbformat.read(report.notebook, as_version=4)
    found = questions(nb)
    assert [q.qid for q in found] == [q.qid for q in questions(read_key(KEY))], \
        "the stitched notebook lost or reordered questions"
    for q in found:
        assert f'id="{q.anchor}"' in page and f'href="#{q.anchor}"' in page, q.qid
    assert page.count("<math") > 20
    assert "data:image/png;base64," in page
    assert "Partial report" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert {q.qid for q in found} <= {line.split()[-1] for line in progress}
    assert all(o.get("output_type") != "error" for c in nb.cells for o in c.get("outputs", []))


_TIMING = re.compile(r"\d+(\.\d+)?\s*(s|ms|µs|us|seconds?)\b")


def _texts(nb: nbformat.NotebookNode, section: str) -> list[str]:
    return [_TIMING.sub("<t>", cell_text_output(c)) for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("dlsummary", {}).get("section") == section
            and "perf_counter" not in c.source]  # timings vary


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_jobs(executed_report, tmp_path):
    """The session's report ran every section with one kernel per core; one small section
    re-executed alone with --jobs 1 prints the same (timing lines aside). The full
    --jobs 1 against --jobs 2 comparison is in benchmarks/bench_report.py."""
    from dlsummary.report import render_report

    first = nbformat.read(executed_report[0].notebook, as_version=4)
    again = render_report(KEY, tmp_path, jobs=1, only=DETERMINISM_SECTION)
    second = nbformat.read(again.notebook, as_version=4)
    a, b = _texts(first, DETERMINISM_SECTION), _texts(second, DETERMINISM_SECTION)
    assert a and len(a) == len(b)
    for ta, tb in zip(a, b, strict=True):
        assert ta == tb, f"a cell differs between runs:\n{ta}\n---\n{tb}"
    assert "Partial report" in again.html.read_text()


def test_long_summaries_are_cut_at_sentence_ends():
    from dlsummary.notebook import summarise_answer

    short = summarise_answer("**Answer:** **False.** Because $a=b$. More text here.")
    assert short == "**False.** Because $a=b$."
    abbreviated = summarise_answer("**Answer:** Halve it, i.e. use $0.5$ (e.g. for SGD). Then.")
    assert abbreviated == "Halve it, i.e. use $0.5$ (e.g. for SGD)."
    in_math = summarise_answer("**Answer:** It is $x. Y$ here, and `a. B` too. Next one.")
    assert in_math == "It is $x. Y$ here, and `a. B` too."


def test_true_false_summary_shows_each_statement_with_its_verdict():
    from dlsummary.notebook import summarise_answer

    question = ("State **true or false**:\n- A. In a model using exclusively ReLU activations, "
                "there can be no vanishing gradients at all, whatever its depth.\n- B. Short.")
    summary = summarise_answer("**Answer:**\n\n**A. False.** No.\n\n**B. True.** Yes.", question)
    assert summary.startswith("A. In a model using exclusively ReLU activations")
    assert "... **False**. B. Short. **True**." in summary


def test_answer_suggests_the_id_meant_and_fits_the_terminal():
    import subprocess
    import sys

    from dlsummary.cli.answer import suggest_ids

    known = ["cnn.1", "cnn.3", "losses.4", "opt.4"]
    assert suggest_ids("CNN.3", known) == ["cnn.3"]
    assert suggest_ids("cnn3", known) == ["cnn.3"]
    assert suggest_ids("loses.4", known) == ["losses.4"]
    env = {"COLUMNS": "60", "PATH": "/usr/bin:/bin"}
    listing = subprocess.run([sys.executable, "-m", "dlsummary", "answer", "--list"],
                             capture_output=True, text=True, env=env, cwd=KEY.parent)
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) >= 27
    assert max(len(line) for line in listing.stdout.splitlines()) <= 60
    wrong = subprocess.run([sys.executable, "-m", "dlsummary", "answer", "cnn.42"],
                           capture_output=True, text=True, env=env, cwd=KEY.parent)
    assert wrong.returncode == 2 and "did you mean" in wrong.stderr
    upper = subprocess.run([sys.executable, "-m", "dlsummary", "answer", "DROPOUT.3",
                            "--no-evidence"], capture_output=True, text=True, env=env,
                           cwd=KEY.parent)
    assert upper.returncode == 0 and upper.stdout.startswith("dropout.3")
    assert "\\E{" not in upper.stdout and "𝔼" in upper.stdout
