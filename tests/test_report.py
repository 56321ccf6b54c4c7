"""The report: a failing cell names its question and exits non-zero, nothing half-written
is left, and the page loads nothing from the network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time

import nbformat
import pytest

from dlsummary.notebook import questions
from dlsummary.report import ReportCellError, notebook_to_html, render_report

TINY = textwrap.dedent('''\
    # %% [markdown]
    # $$
    # \\newcommand{\\vec}[1]{\\boldsymbol {#1}}
    # $$
    # # Title

    # %% [markdown]
    # ## Tiny

    # %% [markdown]
    # ### tiny.1 · bold vectors
    # Is $\\vec{x}$ bold?

    # %% [markdown]
    # **Answer:** Yes, $\\vec{x}$ is bold.

    # %% [markdown]
    # **Why, in detail.** The macro says so, i.e. it is $\\boldsymbol{x}$.

    # %%
    from dlsummary.evidence import check
    value = 2 + 2
    print("value", value)
    check("tiny.1", "arithmetic is broken", value, "==", {expected})

    # %% [markdown]
    # ### tiny.2
    # State whether **true or false**:
    # - A. Two plus two is four, which everybody learns at school long before any course on
    #   deep learning.
    # - B. Cats bark.

    # %% [markdown]
    # **Answer:** A true, B false.
    #
    # **A. True.** Because.
    #
    # **B. False.** Because not.

    # %%
    import matplotlib.pyplot as plt
    plt.plot([0, 1], [1, 0])
    plt.show()
    ''')


def write_tiny(tmp_path, expected: int):
    path = tmp_path / "tiny.py"
    path.write_text(TINY.replace("{expected}", str(expected)))
    return path


@pytest.mark.slow
def test_passing_notebook_writes_both_files(tmp_path):
    lines: list[str] = []
    report = render_report(write_tiny(tmp_path, 4), tmp_path / "out", progress=lines.append)
    assert report.html.is_file() and report.notebook.is_file()
    page = report.html.read_text()
    assert "<math" in page and 'mathvariant="bold-italic"' in page
    assert "data:image/png;base64," in page, "the plot is not embedded"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "external resource"
    assert "DLSMATH" not in page
    assert 'href="#q-tiny-1"' in page and 'id="q-tiny-1"' in page
    assert any("tiny.1" in line for line in lines), "no progress line names the question"
    assert '<details class="dls-fold dls-detail"><summary>Why, in detail' in page
    assert '<details class="dls-fold dls-code"><summary>Evidence code' in page
    assert 'class="dls-checks"' in page and "arithmetic is broken" in page
    assert "[ok]" not in page, "the check's text/plain is printed raw"
    assert 'href="#row-q-tiny-1"' in page and 'id="row-q-tiny-1"' in page
    checks = json.loads(report.checks.read_text())
    assert [(c["item"], c["kind"], c["passed"]) for c in checks] == [("tiny.1", "check", True)]
    executed = nbformat.read(report.notebook, as_version=4)
    assert any("value 4" in o.get("text", "") for c in executed.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@pytest.mark.slow
def test_failing_cell_names_the_question_and_leaves_no_report(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny.html").write_text("an old, good-looking report")
    with pytest.raises(ReportCellError) as info:
        render_report(write_tiny(tmp_path, 5), out)
    assert info.value.qid == "tiny.1"
    assert "CheckFailed" in str(info.value) and "arithmetic is broken" in str(info.value)
    assert "measured 4, expected == 5" in str(info.value)
    assert not (out / "tiny.html").exists(), "a stale report was left looking current"
    assert (out / "tiny.failed.ipynb").is_file()


@pytest.mark.slow
def test_cli_exit_code_and_message_on_failing_cell(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dlsummary", "report", "--notebook",
         str(write_tiny(tmp_path, 5)), "--output", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "tiny.1" in proc.stderr and "arithmetic is broken" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_notebook_path_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dlsummary", "report", "--notebook", str(tmp_path / "nope.py")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "nope.py" in proc.stderr and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_summary_table_uses_item_verdicts(tmp_path):
    import jupytext

    nb = jupytext.read(write_tiny(tmp_path, 4))
    found = {q.qid: q for q in questions(nb)}
    assert found["tiny.2"].summary == (
        "A. Two plus two is four, which everybody learns at school long before any course on deep "
        "... "
        "**True**. B. Cats bark. **False**.")
    assert found["tiny.1"].summary == "Yes, $\\vec{x}$ is bold."
    assert found["tiny.1"].topic == "bold vectors" and found["tiny.2"].topic == ""
    assert found["tiny.2"].items == ["tiny.2.A", "tiny.2.B"] and found["tiny.2"].is_true_false
    page = notebook_to_html(nb)
    row = re.search(r'<a href="#q-tiny-2">tiny.2</a></td><td>(.*?)</td>', page)
    assert row and "<strong>True</strong>" in row.group(1) and "**" not in row.group(1)
    assert '<span class="dls-topic">bold vectors</span>' in page


def test_html_refuses_external_resources(tmp_path):
    import jupytext

    from dlsummary.errors import DLSummaryError

    nb = jupytext.read(write_tiny(tmp_path, 4))
    nb.cells.append(nbformat.v4.new_markdown_cell('<img src="https://example.org/x.png">'))
    with pytest.raises(DLSummaryError, match="external"):
        notebook_to_html(nb)


SECTION = textwrap.dedent('''\
    # %% [markdown]
    # ## Section {n}

    # %%
    import random
    import time

    from dlsummary.evidence import check
    random.seed({n})
    time.sleep({sleep})

    # %% [markdown]
    # ### part{letter}.1 \u00b7 topic {n}
    # Question {n}?

    # %% [markdown]
    # **Answer:** Yes.

    # %%
    draws = [random.random() for _ in range(3)]
    print("draws", draws)
    check("part{letter}.1", "the draws are in [0, 1)", max(draws), "<", {limit})

    # %%
    import matplotlib.pyplot as plt

    plt.figure(figsize=(2, 1))
    _ = plt.plot(draws)  # no plt.show(): the inline backend shows it after the cell
    ''')


def write_key(folder, limits=(1, 1, 1), sleeps=(0, 0, 0)):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "00_introduction.py").write_text("# %% [markdown]\n# # A key\n")
    for n, (limit, sleep) in enumerate(zip(limits, sleeps, strict=True), start=1):
        (folder / f"{n:02d}_part{n}.py").write_text(
            SECTION.format(n=n, letter="abc"[n - 1], limit=limit, sleep=sleep))
    return folder


@pytest.mark.slow
def test_sections_give_the_same_outputs_with_any_number_of_jobs(tmp_path):
    key = write_key(tmp_path / "key")
    one = render_report(key, tmp_path / "one", jobs=1)
    two = render_report(key, tmp_path / "two", jobs=2)  # 3 sections > 2 jobs: forked kernels
    a = nbformat.read(one.notebook, as_version=4)
    b = nbformat.read(two.notebook, as_version=4)
    assert [(c.source, c.get("outputs")) for c in a.cells] == \
        [(c.source, c.get("outputs")) for c in b.cells]
    assert [q.qid for q in questions(a)] == ["parta.1", "partb.1", "partc.1"], "out of order"
    assert json.loads(one.checks.read_text()) == json.loads(two.checks.read_text())
    assert len(json.loads(one.checks.read_text())) == 3
    for nb in (a, b):  # forked kernels show figures as cold ones do
        assert sum("image/png" in o.get("data", {}) for c in nb.cells
                   for o in c.get("outputs", [])) == 3


@pytest.mark.slow
def test_a_failing_section_names_its_question_and_stops_the_others(tmp_path):
    key = write_key(tmp_path / "key", limits=(1, 0, 1), sleeps=(20, 0, 20))
    out = tmp_path / "out"
    out.mkdir()
    for name in ("summary_questions.html", "summary_questions.ipynb", "checks.json"):
        (out / name).write_text("an old, good-looking report")
    start = time.perf_counter()
    with pytest.raises(ReportCellError) as info:
        render_report(key, out, jobs=3)
    assert info.value.qid == "partb.1" and "02_part2.py" in str(info.value)
    assert time.perf_counter() - start < 20, "the other sections were not stopped"
    assert not any((out / n).exists() for n in ("summary_questions.html",
                                                "summary_questions.ipynb", "checks.json"))
    assert (out / "summary_questions.failed.ipynb").is_file()


def test_only_names_an_unknown_section_in_one_line(tmp_path):
    key = write_key(tmp_path / "key")
    proc = subprocess.run(
        [sys.executable, "-m", "dlsummary", "report", "--notebook", str(key), "--only", "nope",
         "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'nope'" in proc.stderr and "part1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_section_notebooks_are_generated_on_demand(tmp_path):
    from dlsummary.report import write_section_notebooks

    key = write_key(tmp_path / "key")
    written = write_section_notebooks(key)
    assert [p.name for p in written] == ["00_introduction.ipynb", "01_part1.ipynb",
                                         "02_part2.ipynb", "03_part3.ipynb"]
    nb = nbformat.read(written[1], as_version=4)
    assert nb.cells[0].source == "## Section 1"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
