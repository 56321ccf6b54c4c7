"""Execute the answer key's sections in parallel fresh kernels and write one
self-contained HTML page, the stitched executed notebook and ``checks.json``.

Each section (``notebooks/01_cnn.py`` ...) runs in its own fresh kernel, so its outputs
cannot depend on which sections ran before it or beside it: ``--jobs 1`` and ``--jobs 4``
give the same notebook. Sections are started longest first (by the last run's timings,
else by source size) so that the slowest one does not start last.

The page has its plots embedded as data URIs, its equations converted to MathML at build
time (no MathJax, no network), no external scripts, and opens with a table of contents and
a summary table of every answer, built from the notebook itself.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime
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
from urllib.parse import unquote

import nbformat

from dlsummary.errors import DLSummaryError
from dlsummary.mathml import parse_macros, replace_math, tex_to_mathml
from dlsummary.notebook import (
    DETAIL_MARK,
    NOTEBOOK_NAME,
    QUESTION_HEADING,
    SECTION_HEADING,
    Section,
    cell_checks,
    find_key,
    find_sections,
    question_of_cell,
    questions,
    read_notebook,
    select_sections,
    stitch,
)

TEMPLATE_DIR = Path(__file__).parent / "templates"
KERNEL_TIMEOUT_S = 600
KERNEL_NAME = "dlsummary-python"
CHECKS_NAME = "checks.json"
TIMINGS_NAME = ".report-timings.json"


class ReportCellError(DLSummaryError):
    """A cell of the answer key failed: a claim's evidence did not hold, or code broke."""

    def __init__(self, qid: str | None, cell_index: int, error: str, section: str = ""):
        self.qid = qid
        self.cell_index = cell_index
        self.error = error
        self.section = section
        if qid:
            where = f"question {qid} failed ({section + ', ' if section else ''}cell {cell_index})"
        else:
            where = f"the setup of {section or 'the notebook'} failed (cell {cell_index})"
        super().__init__(f"{where}: {error}")


@dataclass(frozen=True)
class Report:
    """What ``render_report`` wrote and how long each section and question took."""

    notebook: Path
    html: Path
    checks: Path
    seconds: float
    question_seconds: dict[str, float] = field(default_factory=dict)
    section_seconds: dict[str, float] = field(default_factory=dict)
    jobs: int = 1
    n_checks: int = 0

    def __str__(self) -> str:
        slowest = sorted(self.question_seconds.items(), key=lambda kv: -kv[1])[:5]
        lines = [f"wrote {self.html}, {self.notebook} and {self.checks} ({self.n_checks} "
                 f"checks) in {self.seconds:.1f} s with {self.jobs} job(s)"]
        if self.section_seconds:
            lines.append("sections: " + ", ".join(
                f"{name} {sec:.1f} s" for name, sec in self.section_seconds.items()))
        if slowest:
            lines.append("slowest: " + ", ".join(f"{q} {s:.1f} s" for q, s in slowest))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"notebook": str(self.notebook), "html": str(self.html),
                "checks": str(self.checks), "seconds": self.seconds, "jobs": self.jobs,
                "n_checks": self.n_checks, "section_seconds": self.section_seconds,
                "question_seconds": self.question_seconds}


# --------------------------------------------------------------------------- execution

def default_jobs() -> int:
    """One kernel per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_KERNEL_ENV = {
    # One thread: the experiments are small (threads would mostly wait on each other),
    # parallel kernels do not fight over cores, and a fixed thread count gives the same
    # floating-point sums on every machine.
    "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}
_KERNEL_ARGS = ["--log-level=ERROR", "--HistoryManager.enabled=False"]
# What every section imports first; a forked kernel starts with these already loaded. Not
# matplotlib_inline (nor pyplot): its backend hooks itself into the running IPython shell
# when first imported, which must happen in the kernel, or figures are not shown.
_PRELOAD = ("numpy", "torch", "torch.nn", "torch.nn.functional", "matplotlib",
            # torch.optim's first step and torch.func's vmap import torch._dynamo (about 1.5 s)
            "torch.optim", "torch._dynamo",
            "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel",
            "dlsummary", "dlsummary.utils", "dlsummary.evidence")

# The kernel's launcher when kernels are forked: a tiny process that asks the fork server
# for a kernel, forwards signals to it, and exits with its exit code (jupyter_client
# watches and signals this process as it would a kernel).
_LAUNCHER = """
import json, os, signal, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
request = {"connection_file": sys.argv[2], "cwd": os.getcwd(), "env": dict(os.environ),
           "launcher": os.getpid()}
sock.sendall((json.dumps(request) + "\\n").encode())
reply = sock.makefile("r")
pid = int(reply.readline())
def forward(signum, frame):
    try:
        os.kill(pid, signum)
    except OSError:
        pass
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
    signal.signal(s, forward)
sys.exit(int(reply.readline() or 1))
"""


def _kernel_spec_dir(fork_address: str | None = None) -> tempfile.TemporaryDirectory:
    """A kernelspec for *this* interpreter, so the fresh kernel sees the same packages
    whatever kernels the user has installed elsewhere; with ``fork_address``, its kernels
    are forked from the fork server listening there."""
    tmp = tempfile.TemporaryDirectory(prefix="dlsummary-kernel-")
    spec_dir = Path(tmp.name) / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    if fork_address:
        argv = [sys.executable, "-c", _LAUNCHER, fork_address, "{connection_file}"]
    else:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                *_KERNEL_ARGS]
    spec = {"argv": argv, "display_name": "dlsummary (Python)", "language": "python",
            "env": dict(_KERNEL_ENV)}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return tmp


def fork_server_main(address: str) -> None:
    """Import what every section imports, then fork one fresh kernel per request on the
    Unix socket ``address``, until SIGTERM. Each child is a new process whose only
    history is those imports (no user code ran), so a section's outputs are those of a
    cold kernel; what it saves is the 2 to 3 s of CPU each cold kernel spends importing
    torch, IPython and matplotlib."""
    import importlib
    import select
    import signal
    import socket

    for name in _PRELOAD:
        importlib.import_module(name)
    if "matplotlib_inline.backend_inline" in sys.modules:  # pragma: no cover - a guard
        raise DLSummaryError("preloading imported the inline backend: figures would be lost")
    server = socket.socket(socket.AF_UNIX)
    server.bind(address + ".tmp")
    server.listen(64)
    os.rename(address + ".tmp", address)  # appears only once it accepts connections
    clients: dict[socket.socket, int] = {}
    orphaned: set[socket.socket] = set()
    state = {"running": True}
    signal.signal(signal.SIGTERM, lambda *_: state.update(running=False))
    while state["running"]:
        watched = [server, *(c for c in clients if c not in orphaned)]
        try:
            readable, _, _ = select.select(watched, [], [], 0.05)
        except InterruptedError:
            continue
        for ready in readable:
            if ready is server:
                conn, _ = server.accept()
                request = json.loads(conn.makefile("r").readline())
                pid = os.fork()
                if pid == 0:
                    _become_kernel(request, [server, conn, *clients])
                conn.sendall(f"{pid}\n".encode())
                clients[conn] = pid
            elif not ready.recv(64):  # the launcher is gone (killed): so is its kernel
                orphaned.add(ready)
                with contextlib.suppress(OSError):
                    os.kill(clients[ready], signal.SIGKILL)
        for conn, pid in list(clients.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                with contextlib.suppress(OSError):
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()
                clients.pop(conn)
                orphaned.discard(conn)
    for conn, pid in clients.items():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        conn.close()
    server.close()
    os._exit(0)  # no interpreter teardown of torch & co.: nothing is left to flush


def _become_kernel(request: dict, inherited: list) -> None:
    """In the forked child: drop the server's sockets, take the launcher's working
    folder and environment (as a cold kernel would have them) and run an IPython kernel."""
    import signal
    import traceback

    for sock in inherited:
        sock.close()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        from ipykernel.kernelapp import IPKernelApp

        # the kernel watches its launcher (and ends with it), as a cold kernel its client
        IPKernelApp.launch_instance(argv=[
            "-f", request["connection_file"], *_KERNEL_ARGS,
            f"--IPKernelApp.parent_handle={request['launcher']}"])
        code = 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


@contextlib.contextmanager
def _kernels(fork: bool):
    """The kernelspec directory to put on JUPYTER_PATH, with a fork server behind it
    when ``fork`` (Linux)."""
    import subprocess

    if not fork:
        with _kernel_spec_dir() as spec_root:
            yield spec_root
        return
    with tempfile.TemporaryDirectory(prefix="dlsummary-fork-") as sock_dir:
        address = str(Path(sock_dir) / "kernels.sock")
        env = {**os.environ, **_KERNEL_ENV}
        server = subprocess.Popen(
            [sys.executable, "-c",
             f"from dlsummary.report import fork_server_main; fork_server_main({address!r})"],
            env=env, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(address):
                if server.poll() is not None:
                    raise DLSummaryError("the kernel fork server did not start (exit code "
                                         f"{server.returncode}); set DLSUMMARY_FORK=0")
                if time.monotonic() > deadline:
                    raise DLSummaryError("the kernel fork server did not start in 120 s")
                time.sleep(0.02)
            with _kernel_spec_dir(address) as spec_root:
                yield spec_root
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextlib.contextmanager
def fresh_kernels(fork: bool = False):
    """While inside, kernels named ``KERNEL_NAME`` are fresh kernels of this interpreter
    (forked from a preloaded server when ``fork``): their spec is found through
    ``JUPYTER_PATH``, set for this block only. The report and the grader both run in it."""
    with _kernels(fork) as spec_root:
        saved = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [spec_root, saved]))
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = saved


def fork_available() -> bool:
    """Kernels are forked from a preloaded server on Linux unless ``DLSUMMARY_FORK=0``."""
    return sys.platform == "linux" and os.environ.get("DLSUMMARY_FORK", "1") != "0"


@dataclass
class _Job:
    """One section to execute: its notebook is executed in place."""

    section: Section
    nb: nbformat.NotebookNode
    estimate: float
    seconds: float = 0.0


def _cell_seconds(cell: nbformat.NotebookNode) -> float:
    """Seconds a cell ran, from the timestamps nbclient records (then dropped, so the
    written notebook does not differ from run to run)."""
    stamps = cell.get("metadata", {}).pop("execution", None) or {}
    try:
        start = datetime.datetime.fromisoformat(stamps["iopub.execute_input"].rstrip("Z"))
        end = datetime.datetime.fromisoformat(stamps["shell.execute_reply"].rstrip("Z"))
    except (KeyError, ValueError):
        return 0.0
    return max(0.0, (end - start).total_seconds())


async def _execute_one(job: _Job, cwd: Path, slots: asyncio.Semaphore, counter: dict,
                       progress: Callable[[str], None] | None) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    owners = question_of_cell(job.nb)
    state = {"label": None, "index": -1}

    def on_cell_execute(cell, cell_index, **_):
        state["index"] = cell_index
        counter["done"] += 1
        label = owners[cell_index] or f"{job.section.name} (setup)"
        if label != state["label"]:
            state["label"] = label
            if progress:
                progress(f"[{counter['done']:3d}/{counter['total']}] {label}")

    async with slots:
        start = time.perf_counter()
        client = NotebookClient(
            job.nb, timeout=KERNEL_TIMEOUT_S, kernel_name=KERNEL_NAME,
            resources={"metadata": {"path": str(cwd)}}, on_cell_execute=on_cell_execute,
        )
        try:
            await client.async_execute()
        except (CellExecutionError, CellTimeoutError) as err:
            index = state["index"]
            qid = owners[index] if index >= 0 else None
            raise ReportCellError(qid, index, _short_error(err),
                                  section=job.section.path.name) from err
        job.seconds = time.perf_counter() - start
    if progress:
        progress(f"section {job.section.name} done in {job.seconds:.1f} s")


async def _execute_all(jobs: list[_Job], n_jobs: int, cwd: Path,
                       progress: Callable[[str], None] | None) -> None:
    slots = asyncio.Semaphore(n_jobs)
    counter = {"done": 0, "total": sum(c.cell_type == "code" for j in jobs for c in j.nb.cells)}
    # longest first: the semaphore admits tasks in the order they were created
    order = sorted(jobs, key=lambda j: -j.estimate)
    tasks = [asyncio.create_task(_execute_one(j, cwd, slots, counter, progress))
             for j in order]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [t for t in done if t.exception() is not None]
    if failed:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise failed[0].exception()


def execute_sections(
    parts: list[tuple[Section, nbformat.NotebookNode]],
    jobs: int | None = None,
    cwd: Path | None = None,
    progress: Callable[[str], None] | None = None,
    estimates: dict[str, float] | None = None,
    fork: bool | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Execute every part that has code, each in its own fresh kernel, at most ``jobs`` at
    a time; the notebooks are executed in place. Returns seconds per section and per
    question. ``fork`` (default on Linux) forks the kernels from a server that has the
    common imports loaded. Raises :class:`ReportCellError` naming the question whose cell
    failed."""
    n_jobs = max(1, jobs or default_jobs())
    estimates = estimates or {}
    work = [_Job(section, nb, estimates.get(section.name, section.path.stat().st_size / 1e4))
            for section, nb in parts if any(c.cell_type == "code" for c in nb.cells)]
    cwd = cwd or (parts[0][0].path.parent.resolve() if parts else Path.cwd())
    if not work:
        return {}, {}
    if fork is None:  # the server's one start-up pays off once kernels are started in turn
        fork = fork_available() and len(work) > n_jobs
    with fresh_kernels(fork):
        asyncio.run(_execute_all(work, n_jobs, cwd, progress))
    section_seconds = {j.section.name: round(j.seconds, 2) for j in work}
    question_seconds: dict[str, float] = {}
    for section, nb in parts:
        owners = question_of_cell(nb)
        for cell, owner in zip(nb.cells, owners, strict=True):
            if cell.cell_type == "code":
                label = owner or f"{section.name} (setup)"
                question_seconds[label] = question_seconds.get(label, 0.0) + _cell_seconds(cell)
    return section_seconds, {k: round(v, 2) for k, v in question_seconds.items()}


def _short_error(err: Exception) -> str:
    name = getattr(err, "ename", None) or type(err).__name__
    value = getattr(err, "evalue", None)
    if value is None:
        value = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    return f"{name}: {value}".strip()


def collect_checks(nb: nbformat.NotebookNode) -> list[dict]:
    """Every check record the executed notebook displayed, in notebook order."""
    return [record for cell in nb.cells if cell.cell_type == "code"
            for record in cell_checks(cell)]


# --------------------------------------------------------------------------- HTML

_MACRO_BLOCK = re.compile(r"\$\$(?:(?!\$\$).)*?\\newcommand.*?\$\$", re.S)
_SHORT_NOTE_WORDS = 60


def _preamble_macros(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"
                     and "\\newcommand" in c.source)


def _section_anchor(title: str) -> str:
    return "s-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _inline_markdown(text: str, macros: dict) -> str:
    """One line of Markdown as HTML (bold, italics, code), its formulas as MathML."""
    import mistune

    formulas: list[str] = []

    def keep(tex: str, display: bool) -> str:
        formulas.append(tex_to_mathml(tex, display=False, macros=macros))
        return f"DLSINLINE{len(formulas) - 1:04d}X"

    rendered = mistune.html(replace_math(text, keep)).strip()
    rendered = re.sub(r"^<p>(.*)</p>$", r"\1", rendered, flags=re.S)
    return re.sub(r"DLSINLINE(\d{4})X", lambda m: formulas[int(m.group(1))], rendered)


def _summary_html(nb: nbformat.NotebookNode, macros: dict) -> str:
    """Table of contents and the one-line answer of every question, linked to its answer."""
    rows: list[str] = []
    toc: list[str] = []
    section = None
    for q in questions(nb):
        if q.section != section:
            section = q.section
            toc.append(f'<li><a href="#{_section_anchor(section)}">{html.escape(section)}</a></li>')
            rows.append(f'<tr class="dls-section-row"><th colspan="2">{html.escape(section)}'
                        "</th></tr>")
        topic = f'<span class="dls-topic">{html.escape(q.topic)}</span>' if q.topic else ""
        rows.append(
            f'<tr id="row-{q.anchor}"><td><a href="#{q.anchor}">{q.qid}</a>{topic}</td>'
            f"<td>{_inline_markdown(q.summary, macros)}</td></tr>"
        )
    return (
        '<nav id="contents" class="dls-summary"><h2>Contents</h2><ol>' + "".join(toc) + "</ol>"
        '<h2 id="summary">Summary of the answers</h2>'
        '<table class="dls-table"><colgroup><col class="dls-idcol"><col></colgroup>'
        '<thead><tr><th>question</th><th>answer</th></tr></thead>'
        "<tbody>" + "".join(rows) + "</tbody></table></nav>"
    )


def _checks_html(records: list[dict]) -> str:
    """The "Checked" list under an answer, one compact line per check: the sub-item, the
    claim, what was measured against what threshold, and whether it is a control."""
    from dlsummary.evidence import _fmt

    items = []
    for r in records:
        kind = "control" if r.get("kind") == "control" else "check"
        item, question = str(r.get("item", "")), str(r.get("question", ""))
        letter = item[len(question) + 1:] if item.startswith(question + ".") else ""
        tag = f'<span class="dls-item">{html.escape(letter)}</span> ' if letter else ""
        mark = ('<span class="dls-verdict">\u2713</span>' if r.get("passed")
                else '<span class="dls-verdict dls-failed">FAILED</span>')
        control = ' <span class="dls-control-tag">control</span>' if kind == "control" else ""
        measured, expected = _fmt(r.get("measured")), str(r.get("expected"))
        if expected == f"== {measured}":  # exactly the value required: say it once
            numbers = f"<code>{html.escape(measured)}</code>, as required"
        else:
            numbers = (f"<code>{html.escape(measured)}</code>, expected "
                       f"<code>{html.escape(expected)}</code>")
        items.append(f'<li class="dls-{kind}">{mark} {tag}'
                     f'{html.escape(str(r.get("claim")))}: {numbers}{control}</li>')
    return ('<div class="dls-checks"><p class="dls-checks-title">Checked '
            f'({len(records)})</p><ul>' + "".join(items) + "</ul></div>")


_CHECK_REPR = re.compile(r"^Check\(question=")


def _fold_label(source: str) -> str | None:
    """How a markdown cell after the answer is shown: folded under a label, or (a short
    note on the experiment) left open."""
    if source.lstrip().startswith(DETAIL_MARK):
        return "Why, in detail"
    if len(source.split()) <= _SHORT_NOTE_WORDS:
        return None
    return "More on this answer"


def _arrange(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of the executed notebook laid out for reading: roles in each cell's
    metadata (the template folds by them), check outputs taken out of the cells and
    shown as a "Checked" list under the answer, and a link back to the summary after
    every question."""
    from dlsummary.evidence import MIME_TYPE

    found = {q.heading_cell: q for q in questions(nb)}
    by_answer: dict[int, list[dict]] = {}
    roles: dict[int, tuple[str, str | None]] = {}
    for q in found.values():
        for i in range(q.heading_cell + 1, min([*q.detail_cells, *q.evidence_cells,
                                                len(nb.cells)])):
            if nb.cells[i].cell_type == "code":
                roles[i] = ("question", None)  # the question's own code, as asked
        answer_cell = next((i for i in range(q.heading_cell + 1, len(nb.cells))
                            if nb.cells[i].cell_type == "markdown"
                            and nb.cells[i].source.lstrip().startswith("**Answer:**")), None)
        if answer_cell is None:
            answer_cell = min([*q.detail_cells, *q.evidence_cells, q.heading_cell + 1])
        roles[answer_cell] = ("answer", None)
        by_answer[answer_cell] = [r for i in q.evidence_cells for r in cell_checks(nb.cells[i])]
        for i in q.detail_cells:
            roles[i] = ("detail", _fold_label(nb.cells[i].source))
        for i in q.evidence_cells:
            roles[i] = ("evidence", "Evidence code")
    owners = question_of_cell(nb)
    out = nbformat.v4.new_notebook(metadata=nbformat.from_dict(dict(nb.metadata)))

    checks_cell: dict[str, nbformat.NotebookNode] = {}

    def back_link(qid: str) -> None:
        """The way back to the summary: on the line of the question's "Checked" title (no
        line of its own), or, for a question without checks, after its last cell."""
        anchor = "q-" + qid.replace(".", "-")
        link = f'<a href="#row-{anchor}">&uarr; back to the summary</a>'
        if qid in checks_cell:
            cell = checks_cell[qid]
            cell.source = cell.source.replace(
                '<p class="dls-checks-title">',
                f'<p class="dls-checks-title"><span class="dls-back">{link}</span>', 1)
            return
        out.cells.append(nbformat.v4.new_markdown_cell(
            f'<p class="dls-back">{link}</p>', metadata={"dlsummary": {"role": "back"}}))

    for index, cell in enumerate(nb.cells):
        if index > 0 and owners[index - 1] and owners[index] != owners[index - 1]:
            back_link(owners[index - 1])
        cell = nbformat.from_dict(dict(cell))
        info = dict(cell.get("metadata", {}).get("dlsummary", {}))
        role, fold = roles.get(index, ("setup" if cell.cell_type == "code" else "text", None))
        if role == "setup":
            fold = "Setup code"
        info.update(role=role, fold=fold)
        cell.metadata = nbformat.from_dict({**cell.get("metadata", {}), "dlsummary": info})
        if cell.cell_type == "code":
            # the records become the "Checked" list; a check() left as a cell's last
            # expression would print its repr: neither is shown raw
            cell.outputs = [o for o in cell.get("outputs", [])
                            if MIME_TYPE not in o.get("data", {})
                            and not _CHECK_REPR.match(o.get("data", {}).get("text/plain", ""))]
        out.cells.append(cell)
        if index in by_answer and by_answer[index]:
            out.cells.append(nbformat.v4.new_markdown_cell(
                _checks_html(by_answer[index]), metadata={"dlsummary": {"role": "checks"}}))
            if owners[index]:
                checks_cell[owners[index]] = out.cells[-1]
    if owners and owners[-1]:
        back_link(owners[-1])
    return out


_CSS = """
<style type="text/css">
main { max-width: 1100px; margin: 0 auto; }
body { overflow-wrap: break-word; }
.jp-Notebook { padding-left: 8px; padding-right: 8px; }
.dls-summary { margin: 1em 0 2em 0; padding: 0.5em 1.5em; background: #f7f7fa;
  border: 1px solid #ddd; border-radius: 6px; font-size: 13px; }
.dls-summary ol { columns: 2; }
.dls-table { border-collapse: collapse; width: 100%; table-layout: fixed; }
.dls-table td, .dls-table th { border-bottom: 1px solid #ddd; padding: 2px 6px;
  text-align: left; vertical-align: top; overflow-wrap: anywhere; }
.dls-table col.dls-idcol { width: 11em; }
.dls-table td:first-child a { font-family: monospace; white-space: nowrap; }
.dls-table .dls-section-row th { background: #ececf3; }
.dls-topic { display: block; color: #555; font-size: 12px; }
.dls-answer { border-left: 4px solid #3a6ea5; background: #f3f7fc; padding: 0.1em 0.8em;
  margin: 0.3em 0; }
.dls-checks { border-left: 4px solid #4a9a5a; background: #f4faf5; padding: 0.1em 0.8em;
  margin: 0.3em 0 0.6em 0; font-size: 12px; line-height: 1.25; }
.dls-checks-title { font-weight: bold; margin: 0.2em 0; }
/* a long list scrolls in its box (its count is in the title), as long prints do */
.dls-checks ul { margin: 0 0 0.3em 0; padding-left: 0; list-style: none; max-height: 9em;
  overflow-y: auto; }
.dls-checks li { margin: 0; }
.dls-checks code { font-size: 11px; background: none; padding: 0; }
.dls-checks .dls-item { font-weight: bold; color: #333; }
.dls-checks .dls-verdict { color: #2d6a3a; font-weight: bold; }
.dls-checks .dls-failed { color: #a00; }
.dls-checks .dls-control-tag { color: #7a5a12; font-style: italic; }
details.dls-fold { margin: 0.1em 0; }
details.dls-fold > summary { cursor: pointer; color: #3a6ea5; font-size: 12px; }
.dls-back { font-size: 12px; text-align: right; margin: 0 0 0.8em 0; }
.dls-checks-title .dls-back { float: right; margin: 0; font-weight: normal; }
.dls-partial { background: #fff4d6; border: 1px solid #e0b84a; padding: 0.5em 1em; }
/* printed output stays visible, long prints scroll instead of lengthening the page */
.jp-OutputArea-output pre, .jp-RenderedText pre { overflow: auto; max-height: 8.2em;
  font-size: 12px; line-height: 1.3; margin: 0.2em 0; white-space: pre;
  overflow-wrap: normal; }
/* plots keep their aspect ratio (width and height both follow the limits) */
.jp-RenderedImage img, .jp-OutputArea-output img { max-width: min(100%, 640px);
  max-height: 190px; width: auto; height: auto; }
.jp-Cell { padding-top: 0; padding-bottom: 0; }
.jp-RenderedHTMLCommon p { margin-bottom: 0.6em; }
.jp-RenderedHTMLCommon h3 { margin-top: 0.8em; margin-bottom: 0.4em; }
.jp-Cell-outputWrapper { margin-top: 0; }
.jp-OutputArea-child { margin-top: 0; margin-bottom: 0; }
.jp-OutputArea-output { padding-top: 0; padding-bottom: 0; margin-top: 0; margin-bottom: 2px; }
/* on a wide page an experiment's printout and its plot sit side by side */
@media (min-width: 1000px) {
  .jp-OutputArea { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 0 12px; }
  .jp-OutputArea-child { flex: 1 1 300px; min-width: 0; width: auto; display: block; }
  .jp-OutputArea-child:has(img) { flex: 0 1 auto; }
}
.jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }
math { overflow-x: auto; max-width: 100%; }
math[display="block"] { margin: 0.6em 0; font-size: 1.1em; }
/* inline fractions: keep numerator and denominator at a readable size */
math:not([display="block"]) mfrac > * { math-depth: auto-add; font-size: 0.95em; }
math:not([display="block"]) mfrac { font-size: 1.1em; }
.dls-footer { color: #666; font-size: 12px; margin: 2em 0; }
</style>
"""


def notebook_to_html(nb: nbformat.NotebookNode, title: str = "dlsummary answer key",
                     partial: list[str] | None = None) -> str:
    """The executed notebook as one self-contained HTML page (MathML equations, embedded
    images, no external resources), laid out for reading: each question's answer set off
    with the list of its checks, the long explanation and the evidence code folded, a
    link back to the summary. ``partial`` names the sections of a subset run, which the
    page then says at the top."""
    from nbconvert import HTMLExporter

    nb = _arrange(nb)  # a copy: the caller's notebook keeps its TeX and its outputs
    macros = parse_macros(_preamble_macros(nb))
    summary = _summary_html(nb, macros)
    if partial:
        summary = ('<p class="dls-partial"><strong>Partial report:</strong> only the '
                   f"sections {html.escape(', '.join(partial))} were executed "
                   "(<code>--only</code>); run <code>dlsummary report</code> for the whole "
                   "key.</p>") + summary
    rendered: list[str] = []
    owners = question_of_cell(nb)

    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        if cell.metadata.get("dlsummary", {}).get("role") in ("checks", "back"):
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
                anchor = _section_anchor(sec.group(1))
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
    # nbconvert percent-encodes the heading ids ("cnn.3-%C2%B7-..."), while a browser
    # decodes the "#..." of a link before looking the id up: store the ids decoded
    body = re.sub(r'(<h[1-6] id=")([^"]*%[0-9A-Fa-f]{2}[^"]*)"',
                  lambda m: m.group(1) + html.escape(unquote(m.group(2))) + '"', body)
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


def _read_estimates(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return {str(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def render_report(
    notebook: str | Path | None = None,
    output_dir: str | Path = "build",
    progress: Callable[[str], None] | None = None,
    jobs: int | None = None,
    only: str | list[str] | None = None,
    fork: bool | None = None,
) -> Report:
    """Execute the answer key (a folder of section sources, or one source file) and write
    ``summary_questions.ipynb`` (executed, stitched in section order),
    ``summary_questions.html`` (self-contained) and ``checks.json`` into ``output_dir``.

    ``jobs`` kernels run at once (default: one per core); ``only`` ("cnn,dropout") runs a
    subset, and the page says so; ``fork`` as in :func:`execute_sections`. On a failing
    cell, raises :class:`ReportCellError` naming the question; the earlier report in
    ``output_dir`` is removed (a stale page cannot pass for a good one) and the partly
    executed notebook is kept as ``summary_questions.failed.ipynb``.
    """
    key = find_key(notebook)
    sections = select_sections(find_sections(key), only)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = NOTEBOOK_NAME if key.is_dir() else key.stem
    html_path, nb_path = out / f"{stem}.html", out / f"{stem}.ipynb"
    checks_path = out / (CHECKS_NAME if key.is_dir() else f"{stem}.{CHECKS_NAME}")
    failed_path = out / f"{stem}.failed.ipynb"
    timings_path = out / TIMINGS_NAME

    parts = [(s, read_notebook(s.path)) for s in sections]
    questions(stitch(parts))  # a malformed answer key fails before minutes of execution
    n_jobs = max(1, jobs or default_jobs())
    start = time.perf_counter()
    for stale in (html_path, nb_path, checks_path):
        stale.unlink(missing_ok=True)
    try:
        section_seconds, question_seconds = execute_sections(
            parts, jobs=n_jobs, cwd=(key if key.is_dir() else key.parent).resolve(),
            progress=progress, estimates=_read_estimates(timings_path), fork=fork)
    except ReportCellError:
        _atomic_write(failed_path, nbformat.writes(stitch(parts)))
        raise
    failed_path.unlink(missing_ok=True)
    nb = stitch(parts)
    all_names = [s.name for s in find_sections(key) if not s.is_introduction]
    chosen = [s.name for s in sections if not s.is_introduction]
    partial = chosen if len(chosen) < len(all_names) else None
    checks = collect_checks(nb)
    page = notebook_to_html(nb, partial=partial)
    _atomic_write(nb_path, nbformat.writes(nb))
    _atomic_write(checks_path, json.dumps(checks, indent=1, ensure_ascii=False) + "\n")
    _atomic_write(html_path, page)
    if not partial:
        _atomic_write(timings_path, json.dumps(section_seconds))
    return Report(notebook=nb_path, html=html_path, checks=checks_path,
                  seconds=time.perf_counter() - start, question_seconds=question_seconds,
                  section_seconds=section_seconds, jobs=n_jobs, n_checks=len(checks))


def write_section_notebooks(notebook: str | Path | None = None) -> list[Path]:
    """Each source of the key as an ``.ipynb`` beside it (no outputs), for opening in
    Jupyter; they are generated on demand, never committed."""
    written = []
    for section in find_sections(notebook):
        target = section.path.with_suffix(".ipynb")
        _atomic_write(target, nbformat.writes(read_notebook(section.path)))
        written.append(target)
    return written
