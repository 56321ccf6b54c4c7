"""Reading the answer key: its sections, their questions, answers and a one-line summary
of each. The report's summary table and ``dlsummary answer`` are both built from this,
never maintained by hand.

The key is a folder of jupytext percent sources: ``00_introduction.py`` (the TeX macros and
the original assignment's notes) and one file per section, ``01_cnn.py``, ``02_dropout.py``
... ordered by their number. The section list is discovered from the file names, so a new
``09_gnn.py`` joins the report without a code change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from dlsummary.errors import DLSummaryError

NOTEBOOK_NAME = "summary_questions"
KEY_FOLDER = "notebooks"
INTRODUCTION_NUMBER = 0
SECTION_FILE = re.compile(r"^(\d{2})_([a-z][a-z0-9_]*)\.py$")
# "### cnn.3" or "### cnn.3 · receptive field of a given CNN" (a middle dot, U+00B7)
QUESTION_HEADING = re.compile(r"^###\s+([a-z]+\.\d+)(?:\s+\u00b7\s+(\S.*?))?\s*$", re.M)
SECTION_HEADING = re.compile(r"^##\s+(?!#)(.+?)\s*$", re.M)
ANSWER_MARK = "**Answer:**"
DETAIL_MARK = "**Why, in detail.**"
_ITEM_VERDICT = re.compile(r"^\*\*([A-Z])\.\s*(True|False)?\.?\*\*", re.M)


@dataclass(frozen=True)
class Section:
    """One source file of the answer key: ``01_cnn.py`` is number 1, name ``cnn``."""

    number: int
    name: str
    path: Path

    @property
    def is_introduction(self) -> bool:
        return self.number == INTRODUCTION_NUMBER


def find_key(path: str | Path | None = None) -> Path:
    """The answer key's folder: ``path`` if given, else ``notebooks/`` in the working
    directory or in the source checkout this package was installed from."""
    if path is not None:
        found = Path(path)
        if not found.exists():
            raise DLSummaryError(f"notebook {str(found)!r} does not exist")
        return found
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        folder = root / KEY_FOLDER
        if folder.is_dir() and any(SECTION_FILE.match(p.name) for p in folder.iterdir()):
            return folder
    raise DLSummaryError(
        f"cannot find the answer key ({KEY_FOLDER}/01_*.py) from {Path.cwd()} or the "
        "dlsummary checkout; run from the repository's root or pass --notebook PATH"
    )


def find_sections(path: str | Path | None = None) -> list[Section]:
    """The key's sources in order: the introduction (number 0) first, then the sections by
    their number. A single file (``--notebook tiny.py``) is a key of one section."""
    key = find_key(path)
    if key.is_file():
        return [Section(number=1, name=key.stem, path=key)]
    found: dict[int, Section] = {}
    for source in sorted(key.iterdir()):
        match = SECTION_FILE.match(source.name)
        if not match:
            continue
        number = int(match.group(1))
        if number in found:
            raise DLSummaryError(f"two sections numbered {number:02d} in {key}: "
                                 f"{found[number].path.name} and {source.name}")
        found[number] = Section(number=number, name=match.group(2), path=source)
    sections = [found[n] for n in sorted(found)]
    if not any(not s.is_introduction for s in sections):
        raise DLSummaryError(f"no section sources (NN_name.py) in {key}")
    return sections


def select_sections(sections: list[Section], only: str | list[str] | None) -> list[Section]:
    """The introduction and the sections named in ``only`` (``"cnn,dropout"``): a section
    matches its file name (``optimization``, ``04``) or one of its question-id prefixes
    (``opt``). None or empty selects every section."""
    if not only:
        return list(sections)
    wanted = [w.strip().lower() for w in (only.split(",") if isinstance(only, str) else only)]
    wanted = [w for w in wanted if w]
    chosen: set[int] = set()
    for word in wanted:
        hits = [s for s in sections if not s.is_introduction
                and word in (s.name, f"{s.number:02d}", str(s.number), *id_prefixes(s))]
        if not hits:
            names = ", ".join(s.name for s in sections if not s.is_introduction)
            raise DLSummaryError(f"--only {word!r} names no section; the sections are {names} "
                                 "(or a question prefix such as opt, seq, gan)")
        chosen.update(s.number for s in hits)
    return [s for s in sections if s.is_introduction or s.number in chosen]


def id_prefixes(section: Section) -> list[str]:
    """The question-id prefixes a section's headings use (``opt`` in 04_optimization)."""
    text = section.path.read_text(encoding="utf-8")
    found = re.findall(r"^#\s*###\s+([a-z]+)\.\d+", text, re.M)
    return list(dict.fromkeys(found))


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """A jupytext source (``.py``, ``.md``) or an ``.ipynb``, as a notebook."""
    import jupytext

    path = Path(path)
    if not path.is_file():
        raise DLSummaryError(f"notebook {str(path)!r} does not exist")
    try:
        if path.suffix == ".ipynb":
            return nbformat.read(path, as_version=4)
        return jupytext.read(path)
    except Exception as err:
        raise DLSummaryError(
            f"cannot read notebook {str(path)!r}: {type(err).__name__}: {err}"
        ) from err


def stitch(parts: list[tuple[Section, nbformat.NotebookNode]]) -> nbformat.NotebookNode:
    """One notebook of the sections' cells in order (each cell tagged with its section's
    name in ``metadata.dlsummary.section``), the kernelspec of the first."""
    nb = nbformat.v4.new_notebook()
    for section, part in parts:
        if not nb.metadata and part.metadata:
            nb.metadata = nbformat.from_dict(dict(part.metadata))
        for cell in part.cells:
            cell = nbformat.from_dict(dict(cell))
            cell.metadata = nbformat.from_dict(
                {**cell.get("metadata", {}), "dlsummary": {"section": section.name}})
            cell.pop("id", None)
            nb.cells.append(cell)
    nb.metadata.pop("jupytext", None)
    for k, cell in enumerate(nb.cells):  # fresh unique ids: the parts' may collide
        cell["id"] = f"c{k:04d}"
    return nb


def read_key(path: str | Path | None = None, only: str | list[str] | None = None
             ) -> nbformat.NotebookNode:
    """The whole answer key (or the sections in ``only``) as one notebook, not executed."""
    chosen = select_sections(find_sections(path), only)
    return stitch([(s, read_notebook(s.path)) for s in chosen])


def find_notebook(path: str | Path | None = None) -> Path:
    """Kept for callers that want one path: the key's folder (or the given file)."""
    return find_key(path)


@dataclass(frozen=True)
class Question:
    """One question of the answer key, located in the notebook."""

    qid: str
    section: str
    heading_cell: int
    question: str
    answer: str
    summary: str
    evidence_cells: tuple[int, ...] = field(default=())
    topic: str = ""
    detail_cells: tuple[int, ...] = field(default=())

    @property
    def anchor(self) -> str:
        return "q-" + self.qid.replace(".", "-")

    @property
    def title(self) -> str:
        """``cnn.3 · receptive field of a given CNN``, or the bare id without a topic."""
        return f"{self.qid} \u00b7 {self.topic}" if self.topic else self.qid

    @property
    def items(self) -> list[str]:
        """The gradable sub-items: ``losses.4.A`` ... from the question's ``- A.`` lines,
        else the question itself."""
        return question_items(self.qid, self.question)

    @property
    def is_true_false(self) -> bool:
        return "true or false" in self.question.replace("*", "").lower()


_SUB_ITEM = re.compile(r"^\s*[-*]\s+([A-Z])\.\s+(.+(?:\n(?!\s*[-*]\s+[A-Z]\.)\s+\S.*)*)", re.M)
_ABBREVIATIONS = ("i.e.", "e.g.", "cf.", "vs.", "etc.", "approx.", "resp.", "eq.", "fig.",
                  "i.i.d.", "no.")


def question_items(qid: str, question_text: str) -> list[str]:
    """Sub-item ids of a question from its text (``- A. ...`` lines), or ``[qid]``."""
    letters = [m.group(1) for m in _SUB_ITEM.finditer(question_text)]
    return [f"{qid}.{letter}" for letter in dict.fromkeys(letters)] or [qid]


def item_statements(question_text: str) -> dict[str, str]:
    """The statement of each sub-item, by letter, on one line."""
    return {m.group(1): " ".join(m.group(2).split()) for m in _SUB_ITEM.finditer(question_text)}


def _sentence_ends(text: str) -> list[int]:
    """Indexes just after each sentence end in ``text``: a ``.``, ``!`` or ``?`` outside
    formulas and code, followed by a space and a capital (or the end), not an abbreviation
    such as "i.e." or "e.g."."""
    ends: list[int] = []
    in_math = in_code = False
    for i, char in enumerate(text):
        if char == "`":
            in_code = not in_code
        elif char == "$" and not in_code and (i == 0 or text[i - 1] != "\\"):
            in_math = not in_math
        elif char in ".!?" and not in_math and not in_code:
            rest = text[i + 1:]
            if rest and not (rest[0] == " " and (rest.lstrip()[:1].isupper()
                                                  or rest.lstrip()[:1] in "($*`")):
                continue
            word = text[:i + 1].rsplit(" ", 1)[-1].lower().lstrip("(*")
            if char == "." and (word in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", word)):
                continue
            ends.append(i + 1)
    return ends


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    ends = _sentence_ends(text)
    return text[:ends[0]] if ends else text


def _shorten(text: str, limit: int = 90) -> str:
    """Cut a long statement at a word boundary outside any ``$...$`` formula."""
    if len(text) <= limit:
        return text
    cut = None
    in_math = False
    for i, char in enumerate(text):
        if char == "$" and (i == 0 or text[i - 1] != "\\"):
            in_math = not in_math
        elif char == " " and not in_math:
            if i > limit:
                break
            cut = i
    return text if cut is None else text[:cut].rstrip(",;:") + " ..."


def summarise_answer(answer: str, question: str = "") -> str:
    """A one-line answer. For a true/false question, each statement, shortened, with its
    verdict ("A. In a model using only ReLU ... **False**"); else the answer's first
    sentence (cut at a sentence end, never inside "i.e.")."""
    body = answer.split(ANSWER_MARK, 1)[1] if ANSWER_MARK in answer else answer
    verdicts = _ITEM_VERDICT.findall(body)
    if verdicts and all(v for _, v in verdicts):
        statements = item_statements(question)
        parts = []
        for letter, verdict in verdicts:
            statement = _shorten(statements.get(letter, ""))
            parts.append(f"{letter}. {statement} **{verdict}**." if statement
                         else f"{letter}. **{verdict}**.")
        return " ".join(parts)
    # a code block ends the sentence that introduces it ("... as follows:")
    body = re.sub(r":?[ \t]*\n?```.*?```", ". ", body, flags=re.S)
    paragraphs = body.strip().split("\n\n")
    first = " ".join(paragraphs[0].split())
    sentence = _first_sentence(first)
    if sentence.endswith(":") and len(paragraphs) > 1:
        # a lead-in to a list: the list's items, by their bold titles or first sentences
        entries = re.findall(r"^\s*(?:[-*]|\d+\.)\s+(.+(?:\n(?!\s*(?:[-*]|\d+\.)\s).+)*)",
                             "\n\n".join(paragraphs[1:]), re.M)
        heads = []
        for entry in entries[:4]:
            flat = " ".join(entry.split())
            bold = re.match(r"\*\*(.+?)\*\*", flat)
            heads.append(bold.group(1).rstrip(".:") if bold else _first_sentence(flat).rstrip("."))
        if heads:
            return f"{sentence} {'; '.join(heads)}."
    plain = sentence.replace("*", "").rstrip(".").strip().lower()
    if plain in ("true", "false", "yes", "no"):
        # a bare verdict: add the reason that follows it
        sentence = f"{sentence} {_first_sentence(first[len(sentence):])}".strip()
    return sentence


def questions(nb: nbformat.NotebookNode) -> list[Question]:
    """Every question in notebook order, with its answer text and evidence cells."""
    found: list[Question] = []
    section = ""
    current: dict | None = None

    def close() -> None:
        if current is None:
            return
        if not current["answer"]:
            raise DLSummaryError(
                f"question {current['qid']} has no '{ANSWER_MARK}' cell in the notebook"
            )
        found.append(Question(
            qid=current["qid"], section=current["section"], heading_cell=current["cell"],
            question=current["question"].strip(), answer=current["answer"].strip(),
            summary=summarise_answer(current["answer"], current["question"]),
            evidence_cells=tuple(current["evidence"]), topic=current["topic"],
            detail_cells=tuple(current["detail"]),
        ))

    for index, cell in enumerate(nb.cells):
        source = cell.source
        if cell.cell_type == "markdown":
            sec = SECTION_HEADING.search(source)
            head = QUESTION_HEADING.search(source)
            if sec and not head:
                close()
                current = None
                section = sec.group(1)
                continue
            if head:
                close()
                current = {"qid": head.group(1), "section": section, "cell": index,
                           "question": source[head.end():], "answer": "", "evidence": [],
                           "topic": head.group(2) or "", "detail": []}
                continue
            if current is not None:
                if ANSWER_MARK in source and not current["answer"]:
                    current["answer"] = source
                elif current["answer"]:
                    current["detail"].append(index)
                else:
                    current["question"] += "\n\n" + source
        elif cell.cell_type == "code" and current is not None:
            if current["answer"]:
                current["evidence"].append(index)
            else:
                current["question"] += f"\n\n```python\n{source}\n```"
    close()
    return found


def question_of_cell(nb: nbformat.NotebookNode) -> list[str | None]:
    """For each cell index, the id of the question it belongs to (None before the first)."""
    owner: list[str | None] = []
    qid: str | None = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            if SECTION_HEADING.search(cell.source) and not QUESTION_HEADING.search(cell.source):
                qid = None
            head = QUESTION_HEADING.search(cell.source)
            if head:
                qid = head.group(1)
        owner.append(qid)
    return owner


def cell_text_output(cell: nbformat.NotebookNode) -> str:
    """The plain-text output of an executed code cell (streams and text/plain results)."""
    parts: list[str] = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            text = output.get("data", {}).get("text/plain")
            if text and not text.startswith("<Figure"):
                parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


def cell_checks(cell: nbformat.NotebookNode) -> list[dict]:
    """The check records (``dlsummary.evidence``) an executed code cell displayed."""
    from dlsummary.evidence import MIME_TYPE

    return [dict(o["data"][MIME_TYPE]) for o in cell.get("outputs", [])
            if o.get("output_type") == "display_data" and MIME_TYPE in o.get("data", {})]
