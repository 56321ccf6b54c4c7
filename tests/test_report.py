"""The report: a failing cell names its question and exits non-zero, nothing half-written
is left, and the page loads nothing from the network."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

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
    # ### tiny.1
    # Is $\\vec{x}$ bold?

    # %% [markdown]
    # **Answer:** Yes, $\\vec{x}$ is bold.

    # %%
    value = 2 + 2
    print("value", value)
    assert value == {expected}, "arithmetic is broken"

    # %% [markdown]
    # ### tiny.2
    # Items?

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
    assert "AssertionError" in str(info.value) and "arithmetic is broken" in str(info.value)
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
    assert found["tiny.2"].summary == "A: True; B: False"
    assert found["tiny.1"].summary == "Yes, $\\vec{x}$ is bold."
    page = notebook_to_html(nb)
    row = re.search(r'<a href="#q-tiny-2">tiny.2</a></td><td>(.*?)</td>', page)
    assert row and row.group(1) == "A: True; B: False"


def test_html_refuses_external_resources(tmp_path):
    import jupytext

    from dlsummary.errors import DLSummaryError

    nb = jupytext.read(write_tiny(tmp_path, 4))
    nb.cells.append(nbformat.v4.new_markdown_cell('<img src="https://example.org/x.png">'))
    with pytest.raises(DLSummaryError, match="external"):
        notebook_to_html(nb)
