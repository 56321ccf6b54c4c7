"""Reading the answer key: where it is, its questions, their answers and a one-line summary
of each. The report's summary table and ``dlsummary answer`` are both built from this,
never maintained by hand."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from dlsummary.errors import DLSummaryError

NOTEBOOK_NAME = "summary_questions"
QUESTION_HEADING = re.compile(r"^###\s+([a-z]+\.\d+)\s*$", re.M)
SECTION_HEADING = re.compile(r"^##\s+(?!#)(.+?)\s*$", re.M)
ANSWER_MARK = "**Answer:**"
_ITEM_VERDICT = re.compile(r"^\*\*([A-Z])\.\s*(True|False)?\.?\*\*", re.M)


def find_notebook(path: str | Path | None = None) -> Path:
    """The answer key's jupytext source: ``path`` if given, else
    ``notebooks/summary_questions.py`` in the working directory or in the source checkout
    this package was installed from."""
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise DLSummaryError(f"notebook {str(found)!r} does not exist")
        return found
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / "notebooks", *(p / "notebooks" for p in here.parents)]
    for folder in candidates:
        source = folder / f"{NOTEBOOK_NAME}.py"
        if source.is_file():
            return source
    raise DLSummaryError(
        f"cannot find notebooks/{NOTEBOOK_NAME}.py from {Path.cwd()} or the dlsummary "
        "checkout; run from the repository's root or pass --notebook PATH"
    )


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

    @property
    def anchor(self) -> str:
        return "q-" + self.qid.replace(".", "-")


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else text
    return _shorten(sentence)


def _shorten(text: str, limit: int = 320) -> str:
    """Cut a long line at a word boundary outside any ``$...$`` formula."""
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


def summarise_answer(answer: str) -> str:
    """A one-line answer: the item verdicts of a true/false question ("A: False; B: True"),
    else the first sentence after **Answer:**."""
    body = answer.split(ANSWER_MARK, 1)[1] if ANSWER_MARK in answer else answer
    verdicts = _ITEM_VERDICT.findall(body)
    if verdicts and all(v for _, v in verdicts):
        return "; ".join(f"{letter}: {verdict}" for letter, verdict in verdicts)
    first = " ".join(body.strip().split("\n\n", 1)[0].replace("**", "").split())
    sentence = _first_sentence(first)
    if sentence.rstrip(".").lower() in ("true", "false", "yes", "no"):
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
            summary=summarise_answer(current["answer"]),
            evidence_cells=tuple(current["evidence"]),
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
                           "question": source[head.end():], "answer": "", "evidence": []}
                continue
            if current is not None:
                if ANSWER_MARK in source and not current["answer"]:
                    current["answer"] = source
                elif current["answer"]:
                    current["answer"] += "\n\n" + source
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
