"""Grade a student's submission of the assignment: what a program can grade, and the rest
listed for a person beside our short answer.

Graded automatically (one point each): the numeric answers (cnn.3's receptive field,
dropout.1's drop probability, for the submission's variant), every true/false sub-item (read
from the student's ``**A. True.**``-style opening), and two code tasks re-run on hidden
inputs: backprop.3's numerical gradients (against autograd, with ``W`` and ``b`` left
unchanged) and seq.2.B's hand-written embedding (against ``nn.Embedding``, outputs and
gradients). The submission runs in a fresh kernel with a time limit per cell and the network
switched off; a cell that crashes or loops costs only the items that need it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from dlsummary.assignment import (
    ANSWER_MARK,
    KeyQuestion,
    Variant,
    draw_variant,
    key_questions,
    variant_key,
)
from dlsummary.errors import DLSummaryError

CELL_TIMEOUT_S = 60
_MARK = "<<dlsummary-grade>>"
_HEADING = re.compile(r"^###\s+([a-z]+\.\d+)\b", re.M)
_KEY_ITEM_VERDICT = re.compile(r"\*\*([A-F])\.\s*(True|False)\.?\*\*")
_KEY_QUESTION_VERDICT = re.compile(r"^\*\*Answer:\*\*\s*\*\*(True|False)\.?\*\*")
CODE_TASKS = ("backprop.3", "seq.2.B")
WHOLE_QUESTIONS = ("backprop.3",)  # its A-C are the steps of one code task
NUMERIC = ("cnn.3", "dropout.1")


@dataclass(frozen=True)
class ItemGrade:
    """One gradable item: automatic (points awarded) or for a person (points None)."""

    id: str
    auto: bool
    points: float | None
    max: float
    detail: str
    key: str = ""


@dataclass(frozen=True)
class Grade:
    """The grade of one submission."""

    submission: str
    variant: int | None
    items: tuple[ItemGrade, ...] = field(default=())

    @property
    def auto_points(self) -> float:
        return sum(i.points or 0 for i in self.items if i.auto)

    @property
    def auto_max(self) -> float:
        return sum(i.max for i in self.items if i.auto)

    def to_dict(self) -> dict:
        return {"submission": self.submission, "variant": self.variant,
                "auto_points": self.auto_points, "auto_max": self.auto_max,
                "items": [asdict(i) for i in self.items]}

    def __str__(self) -> str:
        rows = [("item", "graded", "points", "detail")]
        for i in self.items:
            points = f"{i.points:g}/{i.max:g}" if i.auto else f"-/{i.max:g}"
            detail = i.detail if i.auto else f"our answer: {_one_line(i.key, 90)}"
            rows.append((i.id, "auto" if i.auto else "by hand", points, detail))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        lines = ["  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
        variant = "original" if self.variant is None else f"variant {self.variant}"
        manual = sum(1 for i in self.items if not i.auto)
        lines.append(f"\n{self.submission} ({variant}): automatic items "
                     f"{self.auto_points:g} / {self.auto_max:g}; {manual} items to grade by hand")
        return "\n".join(lines)


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.replace("**", "").split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# --------------------------------------------------------------------------- the key

def key_items(questions: list[KeyQuestion]) -> list[tuple[str, bool | None, str]]:
    """Every item of the key as (id, true/false verdict or None, our short answer)."""
    items = []
    for q in questions:
        question_text = "\n".join(c.source for c in q.question_cells if c.cell_type == "markdown")
        letters = re.findall(r"^\s*-\s*([A-F])\.", question_text, re.M)
        body = q.answer.split(ANSWER_MARK, 1)[-1]
        if not letters or q.qid in WHOLE_QUESTIONS:
            verdict = _KEY_QUESTION_VERDICT.search(q.answer.strip())
            items.append((q.qid, None if not verdict else verdict.group(1) == "True", body))
            continue
        parts = re.split(r"(?m)^(?=\*\*[A-F]\.)", body)
        for letter in letters:
            part = next((p for p in parts if p.startswith(f"**{letter}.")), "")
            verdict = _KEY_ITEM_VERDICT.match(part)
            items.append((f"{q.qid}.{letter}",
                          None if not verdict else verdict.group(2) == "True", part))
    return items


# --------------------------------------------------------------------------- the submission

def _student_answers(nb: nbformat.NotebookNode) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Per question id: the student's answer text and the sources of its code cells."""
    answers: dict[str, str] = {}
    code: dict[str, list[str]] = {}
    qid = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            head = _HEADING.search(cell.source)
            if head:
                qid = head.group(1)
                code.setdefault(qid, [])
                continue
            if qid and ANSWER_MARK in cell.source and qid not in answers:
                answers[qid] = cell.source.split(ANSWER_MARK, 1)[1]
            elif qid and qid in answers:
                answers[qid] += "\n\n" + cell.source
        elif cell.cell_type == "code" and qid:
            code[qid].append(cell.source)
    return answers, code


def student_verdict(answer: str, letter: str | None) -> bool | None:
    """The student's True/False for sub-item ``letter`` (or the whole question), if stated
    at the start of its paragraph."""
    if letter is None:
        match = re.match(r"\W*(true|false)\b", answer.strip(), re.I)
    else:
        match = re.search(rf"(?im)^\W*{letter}\W{{1,6}}(true|false)\b", answer)
    return None if not match else match.group(1).lower() == "true"


def _first_sentence(text: str) -> str:
    text = " ".join(text.strip().split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return match.group(1) if match else text


def _plain_maths(text: str) -> str:
    text = text.replace("$", " ")
    for tex, plain in ((r"\times", "x"), (r"\cdot", "*"), (r"\left", ""), (r"\right", ""),
                       (r"\,", " "), (r"\ ", " "), ("{", ""), ("}", ""), ("**", " ")):
        text = text.replace(tex, plain)
    return re.sub(r"p_([12])", r"p\1", text)


def grade_receptive_field(answer: str, expected: int) -> tuple[float, str]:
    """cnn.3: the first number of the answer must be the receptive field's side."""
    numbers = re.findall(r"\d+", _plain_maths(_first_sentence(answer)))
    if not numbers:
        return 0.0, f"no number in the first sentence (expected {expected})"
    got = int(numbers[0])
    return (1.0 if got == expected else 0.0), f"answered {got}, expected {expected}"


def _evaluate(expression: str, p1: float, p2: float) -> float | None:
    """A small arithmetic expression in p1, p2 (implicit products allowed), or None."""
    expr = re.sub(r"(?<=[0-9)])\s*(?=[(p])", "*", expression.strip().rstrip("."))
    expr = re.sub(r"(?<=[0-9])\s+(?=[0-9])", "", expr)
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Add,
               ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd, ast.Load)
    if not all(isinstance(n, allowed) for n in ast.walk(tree)):
        return None
    if any(isinstance(n, ast.Name) and n.id not in ("p1", "p2") for n in ast.walk(tree)):
        return None
    try:
        return float(eval(compile(tree, "<answer>", "eval"), {"__builtins__": {}},  # noqa: S307
                          {"p1": p1, "p2": p2}))
    except (ZeroDivisionError, TypeError, ValueError):
        return None


def grade_drop_probability(answer: str, p1: float, p2: float) -> tuple[float, str]:
    """dropout.1: ``q = <expression or number>`` in the answer, equal to 1-(1-p1)(1-p2)."""
    expected = 1 - (1 - p1) * (1 - p2)
    text = _plain_maths(answer)
    match = re.search(r"\bq\s*=\s*([^,;\n]+)", text)
    candidates = match.group(1).split("=") if match else []
    if not candidates:
        candidates = re.findall(r"\d*\.\d+|\d+", _first_sentence(text))[:1]
    values = [v for v in (_evaluate(c.split(" which")[0], p1, p2) for c in candidates)
              if v is not None]
    if not values:
        return 0.0, f"no expression for q found (expected {expected:.4g})"
    wrong = [v for v in values if abs(v - expected) > 5e-4]
    if wrong:
        return 0.0, f"q evaluates to {wrong[0]:.4g} at p1={p1}, p2={p2}; expected {expected:.4g}"
    return 1.0, f"q = {values[0]:.4g}, as expected"


# --------------------------------------------------------------------------- code tasks

_HIDDEN_FOO = "return torch.mean(torch.sin(X @ W + b) ** 2)"


def grade_numerical_gradient(source: str, seed: int = 1234) -> dict:
    """backprop.3, run inside the submission's kernel: the student's cells on hidden sizes,
    values and a hidden smooth function; their ``grad_W``, ``grad_b`` against autograd."""
    import torch

    hidden = re.sub(r"N, d = \d+, \d+", "N, d = 37, 4", source)
    hidden = hidden.replace("return torch.mean(X @ W + b)", _HIDDEN_FOO)
    prefix_end = re.search(r"^loss = foo\(W, b\).*$", hidden, re.M)
    if prefix_end is None:
        return {"points": 0.0, "detail": "the snippet's line `loss = foo(W, b)` is missing"}
    reference: dict = {}
    student: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        exec(compile(hidden[: prefix_end.end()], "backprop.3 (given)", "exec"), reference)
        torch.manual_seed(seed)
        try:
            exec(compile(hidden, "backprop.3", "exec"), student)
        except Exception as err:  # the student's code: any failure is a result
            return {"points": 0.0, "detail": f"the cells raise {type(err).__name__}: {err}"}
    W, b = reference["W"], reference["b"]
    expected = torch.autograd.grad(reference["foo"](W, b), (W, b))
    for name, want, given in (("grad_W", expected[0], student.get("grad_W")),
                              ("grad_b", expected[1], student.get("grad_b"))):
        if not isinstance(given, torch.Tensor):
            return {"points": 0.0, "detail": f"`{name}` is not defined as a tensor"}
        if given.shape != want.shape:
            return {"points": 0.0, "detail": f"`{name}` has shape {tuple(given.shape)}, "
                                             f"expected {tuple(want.shape)}"}
        if not torch.allclose(given.detach().double(), want, rtol=1e-3, atol=1e-7):
            error = (given.detach().double() - want).abs().max().item()
            return {"points": 0.0, "detail": f"`{name}` differs from autograd by up to "
                                             f"{error:.2e} on hidden inputs"}
    for name in ("W", "b"):
        if not torch.allclose(student[name].detach(), reference[name].detach(), rtol=0,
                              atol=1e-12):
            return {"points": 0.0, "detail": f"`{name}` was changed by the gradient code"}
    return {"points": 1.0, "detail": "grad_W and grad_b match autograd on hidden inputs"}


def grade_embedding(source: str, seed: int = 4321) -> dict:
    """seq.2.B, run inside the submission's kernel: the student's ``Embedding`` against
    ``nn.Embedding`` on hidden sizes and ids, outputs and weight gradients."""
    import torch
    from torch import nn

    namespace: dict = {"torch": torch, "nn": nn}
    light = re.sub(r"embedding_dim=\d+", "embedding_dim=16", source)  # the snippet's 280 MB
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            exec(compile(light, "seq.2", "exec"), namespace)
        except Exception as err:
            return {"points": 0.0, "detail": f"the cells raise {type(err).__name__}: {err}"}
    cls = namespace.get("Embedding")
    if cls is None or cls is nn.Embedding:
        return {"points": 0.0, "detail": "no class `Embedding` of your own in seq.2's cells"}
    generator = torch.Generator().manual_seed(seed)
    for n, d, shape in ((11, 5, (3, 4)), (7, 3, (2, 3, 2)), (50, 8, (9,))):
        try:
            mine = cls(n, d)
            weight = mine.weight
            reference = nn.Embedding(n, d)
            with torch.no_grad():
                reference.weight.copy_(weight)
            ids = torch.randint(0, n, shape, generator=generator)
            out = mine(ids)
            upstream = torch.randn(*shape, d, generator=generator)
            if not isinstance(out, torch.Tensor) or out.shape != (*shape, d):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                return {"points": 0.0, "detail": f"ids of shape {shape} give {got}, expected "
                                                 f"{(*shape, d)}"}
            if not torch.allclose(out, reference(ids), rtol=1e-6, atol=1e-7):
                return {"points": 0.0, "detail": "outputs differ from nn.Embedding's"}
            if not weight.requires_grad:
                return {"points": 0.0, "detail": "its weight does not require grad: it "
                                                 "would never be trained"}
            (grad,) = torch.autograd.grad((out * upstream).sum(), weight)
            (want,) = torch.autograd.grad((reference(ids) * upstream).sum(), reference.weight)
            if not torch.allclose(grad, want, rtol=1e-5, atol=1e-6):
                return {"points": 0.0, "detail": "weight gradients differ from nn.Embedding's"}
        except Exception as err:
            return {"points": 0.0, "detail": f"Embedding({n}, {d}) on ids {shape} raises "
                                             f"{type(err).__name__}: {err}"}
    return {"points": 1.0, "detail": "outputs and gradients match nn.Embedding on hidden ids"}


_NO_NETWORK = """\
import socket as _dlsummary_socket
def _dlsummary_no_network(*args, **kwargs):
    raise OSError("network access is switched off while the submission is graded")
_dlsummary_socket.socket.connect = _dlsummary_no_network
_dlsummary_socket.create_connection = _dlsummary_no_network
"""


def _grading_cell(function: str, source: str) -> str:
    return (f"import json as _j\nfrom dlsummary.grading import {function} as _g\n"
            f"print({_MARK!r} + _j.dumps(_g({source!r})))")


def _run_code_tasks(nb: nbformat.NotebookNode, code: dict[str, list[str]],
                    timeout: int) -> dict[str, dict]:
    """Execute the submission, then the graders of the code tasks, in one fresh kernel."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    from dlsummary.report import KERNEL_NAME, fresh_kernels

    run = nbformat.from_dict(json.loads(json.dumps(nb)))
    run.cells.insert(0, nbformat.v4.new_code_cell(_NO_NETWORK))
    tasks = {"backprop.3": ("grade_numerical_gradient", code.get("backprop.3", [])),
             "seq.2.B": ("grade_embedding", code.get("seq.2", []))}
    first_task = len(run.cells)
    for function, sources in tasks.values():
        run.cells.append(nbformat.v4.new_code_cell(_grading_cell(function, "\n\n".join(sources))))
    results: dict[str, dict] = {}
    with fresh_kernels():
        client = NotebookClient(run, timeout=timeout, kernel_name=KERNEL_NAME,
                                allow_errors=True, interrupt_on_timeout=True,
                                resources={"metadata": {"path": str(Path.cwd())}})
        try:
            client.execute()
        except DeadKernelError as err:
            for task in tasks:
                results[task] = {"points": 0.0, "detail": f"the kernel died ({err})"}
    for task, cell in zip(tasks, run.cells[first_task:], strict=True):
        if task in results:
            continue
        results[task] = {"points": 0.0, "detail": "its grading did not finish (a cell looped "
                                                  f"past {timeout} s or crashed)"}
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and _MARK in output.get("text", ""):
                results[task] = json.loads(output["text"].split(_MARK, 1)[1])
            elif output.get("output_type") == "error":
                name = output.get("ename", "error")
                detail = "timed out" if "Interrupt" in name else f"{name}: {output.get('evalue')}"
                results[task] = {"points": 0.0, "detail": f"grading failed: {detail}"}
    return results


# --------------------------------------------------------------------------- grading

def grade_submission(path: str | Path, variant: int | None | str = "auto",
                     timeout: int = CELL_TIMEOUT_S, notebooks: str | Path | None = None) -> Grade:
    """Grade ``path`` (an .ipynb). ``variant`` "auto" reads it from the notebook's metadata
    (written by ``dlsummary assignment``)."""
    path = Path(path)
    if not path.is_file():
        raise DLSummaryError(f"submission {str(path)!r} does not exist")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:
        raise DLSummaryError(f"cannot read submission {str(path)!r} as a notebook "
                             f"({type(err).__name__}: {err})") from None
    if variant == "auto":
        variant = nb.metadata.get("dlsummary", {}).get("variant")
    chosen: Variant = draw_variant(variant)  # type: ignore[arg-type]
    key = variant_key(chosen)
    _, questions = key_questions(notebooks)
    answers, code = _student_answers(nb)
    executed = _run_code_tasks(nb, code, timeout)
    grades = []
    for item, verdict, ours in key_items(questions):
        qid = ".".join(item.split(".")[:2])
        letter = item.split(".")[2] if item.count(".") == 2 else None
        answer = answers.get(qid, "")
        if item in CODE_TASKS:
            result = executed[item]
            grades.append(ItemGrade(item, True, result["points"], 1.0, result["detail"], ours))
        elif item == "cnn.3":
            points, detail = grade_receptive_field(answer, key.receptive_field)
            grades.append(ItemGrade(item, True, points, 1.0, detail, ours))
        elif item == "dropout.1":
            points, detail = grade_drop_probability(answer, chosen.p1, chosen.p2)
            grades.append(ItemGrade(item, True, points, 1.0, detail, ours))
        elif verdict is not None:
            given = student_verdict(answer if letter is None else answer, letter)
            expected = "True" if verdict else "False"
            if given is None:
                grades.append(ItemGrade(item, True, 0.0, 1.0,
                                        f"no True/False verdict found (expected {expected})", ours))
            else:
                stated = "True" if given else "False"
                grades.append(ItemGrade(item, True, 1.0 if given == verdict else 0.0, 1.0,
                                        f"answered {stated}, expected {expected}", ours))
        else:
            if item == "losses.2":  # the variant's own depth, measured
                ours = (f"{ours.strip()}\n\n(This variant: {chosen.pirate_depth} repeated "
                        f"Linear+Sigmoid layers; at initialisation the first layer's gradient "
                        f"is {key.pirate_gradient_ratio:.0e} times the last's, per element.)")
            grades.append(ItemGrade(item, False, None, 1.0, "free text", ours.strip()))
    return Grade(str(path), chosen.number, tuple(grades))
