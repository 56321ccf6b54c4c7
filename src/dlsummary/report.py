"""Execute the answer key in a fresh kernel and write one self-contained HTML page.

The page has its plots embedded as data URIs, its equations converted to MathML at build
time (no MathJax, no network), no external scripts, and opens with a table of contents and
a summary table of every answer, built from the notebook itself.
"""

from __future__ import annotations

import bisect
import html
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from dlsummary.errors import DLSummaryError
from dlsummary.mathml import parse_macros, replace_math, tex_to_mathml
from dlsummary.notebook import (
    NOTEBOOK_NAME,
    QUESTION_HEADING,
    SECTION_HEADING,
    find_notebook,
    question_of_cell,
    questions,
    read_notebook,
)

TEMPLATE_DIR = Path(__file__).parent / "templates"
KERNEL_TIMEOUT_S = 600
KERNEL_NAME = "dlsummary-python"


class ReportCellError(DLSummaryError):
    """A cell of the answer key failed: a claim's evidence did not hold, or code broke."""

    def __init__(self, qid: str | None, cell_index: int, error: str):
        self.qid = qid
        self.cell_index = cell_index
        self.error = error
        where = f"question {qid}" if qid else "the preamble"
        super().__init__(f"{where} failed (cell {cell_index}): {error}")


@dataclass(frozen=True)
class Report:
    """What ``render_report`` wrote and how long each question took."""

    notebook: Path
    html: Path
    seconds: float
    question_seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        slowest = sorted(self.question_seconds.items(), key=lambda kv: -kv[1])[:5]
        lines = [f"wrote {self.html} and {self.notebook} in {self.seconds:.1f} s"]
        if slowest:
            lines.append("slowest: " + ", ".join(f"{q} {s:.1f} s" for q, s in slowest))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"notebook": str(self.notebook), "html": str(self.html),
                "seconds": self.seconds, "question_seconds": self.question_seconds}


# --------------------------------------------------------------------------- execution

def _kernel_spec_dir() -> tempfile.TemporaryDirectory:
    """A kernelspec for *this* interpreter, so the fresh kernel sees the same packages
    whatever kernels the user has installed elsewhere."""
    tmp = tempfile.TemporaryDirectory(prefix="dlsummary-kernel-")
    spec_dir = Path(tmp.name) / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--log-level=ERROR"],
        "display_name": "dlsummary (Python)",
        "language": "python",
        # One thread: the experiments are small (threads would mostly wait on each other)
        # and a fixed thread count gives the same floating-point sums on every machine.
        "env": {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return tmp


def execute_notebook(
    nb: nbformat.NotebookNode,
    cwd: Path,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Run every cell of ``nb`` in place in a fresh kernel; return seconds per question.

    Raises :class:`ReportCellError` naming the question whose cell failed.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    owners = question_of_cell(nb)
    sections = _section_of_cell(nb)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    timings: dict[str, float] = {}
    state: dict = {"label": None, "start": time.perf_counter(), "index": -1, "done": 0}

    def close_label(now: float) -> None:
        if state["label"] is not None:
            timings[state["label"]] = timings.get(state["label"], 0.0) + now - state["start"]

    def on_cell_execute(cell, cell_index, **_):
        state["index"] = cell_index
        state["done"] += 1
        label = owners[cell_index] or f"{sections[cell_index] or 'preamble'} (setup)"
        if label != state["label"]:
            now = time.perf_counter()
            close_label(now)
            state["label"], state["start"] = label, now
            if progress:
                progress(f"[{state['done']:3d}/{n_code}] {label}")

    with _kernel_spec_dir() as spec_root:
        # the fresh kernel's spec is found through JUPYTER_PATH, for this call only
        saved = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [spec_root, saved]))
        try:
            client = NotebookClient(
                nb,
                timeout=KERNEL_TIMEOUT_S,
                kernel_name=KERNEL_NAME,
                resources={"metadata": {"path": str(cwd)}},
                on_cell_execute=on_cell_execute,
            )
            client.execute()
        except (CellExecutionError, CellTimeoutError) as err:
            qid = owners[state["index"]] if state["index"] >= 0 else None
            raise ReportCellError(qid, state["index"], _short_error(err)) from err
        finally:
            if saved is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = saved
    close_label(time.perf_counter())
    return timings


def _section_of_cell(nb: nbformat.NotebookNode) -> list[str | None]:
    section: str | None = None
    out: list[str | None] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and not QUESTION_HEADING.search(cell.source):
            match = SECTION_HEADING.search(cell.source)
            section = match.group(1) if match else section
        out.append(section)
    return out


def _short_error(err: Exception) -> str:
    name = getattr(err, "ename", None) or type(err).__name__
    value = getattr(err, "evalue", None)
    if value is None:
        value = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    return f"{name}: {value}".strip()


# --------------------------------------------------------------------------- HTML

_MACRO_BLOCK = re.compile(r"\$\$(?:(?!\$\$).)*?\\newcommand.*?\$\$", re.S)


def _preamble_macros(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"
                     and "\\newcommand" in c.source)


def _summary_html(nb: nbformat.NotebookNode, macros: dict) -> str:
    """Table of contents and the one-line answer of every question, linked to its answer."""
    rows: list[str] = []
    toc: list[str] = []
    section = None

    def with_math(text: str) -> str:
        # escape the prose, convert the formulas
        pieces: list[str] = []
        formulas: list[str] = []

        def keep(tex: str, display: bool) -> str:
            formulas.append(tex_to_mathml(tex, display=False, macros=macros))
            return f"\x00{len(formulas) - 1}\x00"

        marked = html.escape(replace_math(text, keep), quote=False)
        for k, part in enumerate(marked.split("\x00")):
            pieces.append(formulas[int(part)] if k % 2 else part)
        return "".join(pieces)

    for q in questions(nb):
        if q.section != section:
            section = q.section
            anchor = "s-" + re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")
            toc.append(f'<li><a href="#{anchor}">{html.escape(section)}</a></li>')
        rows.append(
            f'<tr><td><a href="#{q.anchor}">{q.qid}</a></td>'
            f"<td>{with_math(q.summary)}</td></tr>"
        )
    return (
        '<nav id="contents" class="dls-summary"><h2>Contents</h2><ol>' + "".join(toc) + "</ol>"
        '<h2 id="summary">Summary of the answers</h2>'
        '<table class="dls-table"><colgroup><col style="width: 7em"><col></colgroup>'
        '<thead><tr><th>question</th><th>answer</th></tr></thead>'
        "<tbody>" + "".join(rows) + "</tbody></table></nav>"
    )


_CSS = """
<style type="text/css">
main { max-width: 1100px; margin: 0 auto; }
.dls-summary { margin: 1em 0 2em 0; padding: 0.5em 1.5em; background: #f7f7fa;
  border: 1px solid #ddd; border-radius: 6px; font-size: 14px; }
.dls-summary ol { columns: 2; }
.dls-table { border-collapse: collapse; width: 100%; }
.dls-table td, .dls-table th { border-bottom: 1px solid #ddd; padding: 4px 8px;
  text-align: left; vertical-align: top; }
.dls-table { table-layout: fixed; }
.dls-table td:first-child { white-space: nowrap; font-family: monospace; }
math[display="block"] { margin: 0.6em 0; font-size: 1.1em; }
.dls-footer { color: #666; font-size: 12px; margin: 2em 0; }
</style>
"""


def notebook_to_html(nb: nbformat.NotebookNode, title: str = "dlsummary answer key") -> str:
    """The executed notebook as one self-contained HTML page (MathML equations, embedded
    images, no external resources)."""
    from nbconvert import HTMLExporter

    nb = nbformat.from_dict(nb)  # a copy: the caller's notebook keeps its TeX
    macros = parse_macros(_preamble_macros(nb))
    summary = _summary_html(nb, macros)
    rendered: list[str] = []
    owners = question_of_cell(nb)

    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        # the macro definitions themselves are not shown
        cell.source = _MACRO_BLOCK.sub("", cell.source)

        def render(tex: str, display: bool, _qid=owners[index]) -> str:
            try:
                mathml = tex_to_mathml(tex, display=display, macros=macros)
            except DLSummaryError as err:
                where = f"question {_qid}" if _qid else "the preamble"
                raise DLSummaryError(f"{where}: {err}") from err
            rendered.append(mathml)
            return f"DLSMATH{len(rendered) - 1:05d}X"

        source = replace_math(cell.source, render)
        head = QUESTION_HEADING.search(source)
        if head:
            anchor = "q-" + head.group(1).replace(".", "-")
            source = source.replace(head.group(0), f'<a id="{anchor}"></a>\n\n{head.group(0)}', 1)
        else:
            sec = SECTION_HEADING.search(source)
            if sec:
                anchor = "s-" + re.sub(r"[^a-z0-9]+", "-", sec.group(1).lower()).strip("-")
                source = source.replace(sec.group(0), f'<a id="{anchor}"></a>\n\n{sec.group(0)}', 1)
        cell.source = source
    nb.metadata["title"] = title

    exporter = HTMLExporter(
        template_name="dlsummary", extra_template_basedirs=[str(TEMPLATE_DIR)],
        embed_images=True,
    )
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    # plots get a text alternative naming the question they belong to
    body = re.sub(r'<img alt="No description has been provided for this image"',
                  _alt_text(body), body)

    def put_back(match: re.Match[str]) -> str:
        return rendered[int(match.group(1))]

    # the placeholder may have been wrapped in <p> for display math: unwrap
    body = re.sub(r"<p>\s*DLSMATH(\d{5})X\s*</p>", put_back, body)
    body = re.sub(r"DLSMATH(\d{5})X", put_back, body)
    marker = '<div class="dls-summary-here"></div>'
    body = body.replace(marker, summary, 1) if marker in body else body.replace(
        "<main>", "<main>" + summary, 1)
    body = body.replace("</head>", _CSS + "</head>", 1)
    external = re.findall(
        r"""<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""", body
    )
    if external:
        raise DLSummaryError(f"the report would load external resources: {external[:3]}")
    return body


def _alt_text(body: str) -> Callable[[re.Match[str]], str]:
    """A replacement that labels each image with the question whose heading precedes it."""
    anchors = [(m.start(), m.group(1).replace("-", "."))
               for m in re.finditer(r'<a id="q-([a-z]+-\d+)"', body)]
    positions = [pos for pos, _ in anchors]

    def label(match: re.Match[str]) -> str:
        k = bisect.bisect_left(positions, match.start())
        qid = anchors[k - 1][1] if k else "the preamble"
        return f'<img alt="plot for {qid}"'

    return label


# --------------------------------------------------------------------------- the command

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def render_report(
    notebook: str | Path | None = None,
    output_dir: str | Path = "build",
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Execute the answer key in a fresh kernel and write ``summary_questions.ipynb``
    (executed) and ``summary_questions.html`` (self-contained) into ``output_dir``.

    On a failing cell, raises :class:`ReportCellError` naming the question; any earlier
    report in ``output_dir`` is removed (so a stale page cannot pass for a good one) and
    the partly executed notebook is kept as ``summary_questions.failed.ipynb``.
    """
    source = find_notebook(notebook)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = NOTEBOOK_NAME if notebook is None else Path(source).stem
    html_path, nb_path = out / f"{stem}.html", out / f"{stem}.ipynb"
    failed_path = out / f"{stem}.failed.ipynb"

    nb = read_notebook(source)
    questions(nb)  # a malformed answer key fails before minutes of execution
    start = time.perf_counter()
    try:
        timings = execute_notebook(nb, cwd=source.parent.resolve(), progress=progress)
    except ReportCellError:
        for stale in (html_path, nb_path):
            stale.unlink(missing_ok=True)
        _atomic_write(failed_path, nbformat.writes(nb))
        raise
    failed_path.unlink(missing_ok=True)
    page = notebook_to_html(nb)
    _atomic_write(nb_path, nbformat.writes(nb))
    _atomic_write(html_path, page)
    return Report(notebook=nb_path, html=html_path, seconds=time.perf_counter() - start,
                  question_seconds={k: round(v, 2) for k, v in timings.items()})
