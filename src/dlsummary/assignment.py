"""The student assignment: the questions without our answers, and fresh variants of them.

:func:`write_assignment` writes the notebook a student fills in: every question in order,
with its own code cells (cnn.3's network, the pirate MLP, backprop.3's and seq.2's snippets)
and an empty **Answer:** cell under each. :func:`draw_variant` draws a new instance of the
parameterised questions from a seed (cnn.3's network, dropout.1's ``p1, p2``, the pirate
MLP's depth); :func:`variant_key` derives that variant's answers with the library (the
receptive field from the geometry, the drop rate from the exact formula) and confirms each by
measurement (the gradient footprint, a Monte-Carlo estimate) before anyone is graded on it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import torch
from torch import nn

from dlsummary.errors import DLSummaryError

ASSIGNMENT_NAME = "assignment.ipynb"
_HEADING = re.compile(r"^###\s+([a-z]+\.\d+)\b[^\n]*$", re.M)
_SECTION = re.compile(r"^##\s+(?!#)(.+?)\s*$", re.M)
ANSWER_MARK = "**Answer:**"

ORIGINAL_CNN = (("conv", 3, 4, 3, 1, 1, 1), ("relu",), ("pool", 2),
                ("conv", 4, 16, 5, 2, 2, 1), ("relu",), ("pool", 2),
                ("conv", 16, 32, 7, 1, 3, 2), ("relu",))
CNN_INPUT = (1, 3, 1024, 1024)

GRADING_NOTES = """**Automatic grading.** Some items are graded by a program, so:
- true/false items: open each sub-item with its letter and verdict, e.g. `**A. True.**`, then
  explain (a question without sub-items: `**True.**` or `**False.**`);
- numeric answers (cnn.3, dropout.1): give the number (or the expression) in the first sentence
  of the answer, e.g. `**Answer:** 7x7, because ...` or `q = ...`;
- backprop.3: keep your code in the question's code cell(s), leave the names `X`, `W`, `b`,
  `foo` and `loss` as given, and store your numerical gradients in `grad_W` and `grad_b`; the
  grader re-runs these cells on hidden inputs (other sizes and values of `X`, `W`, `b`, and
  another smooth function inside `foo`);
- seq.2.B: write your implementation as a class `Embedding(num_embeddings, embedding_dim)`
  with a `weight` tensor of shape `(num_embeddings, embedding_dim)`, called on a tensor of ids,
  in a code cell of seq.2; the grader compares it with `nn.Embedding` on hidden ids.
Every task's cells must run on their own (their own imports).
"""


# --------------------------------------------------------------------------- variants

@dataclass(frozen=True)
class Variant:
    """One instance of the parameterised questions; ``number`` None is the original."""

    number: int | None
    cnn_layers: tuple[tuple, ...]
    p1: float
    p2: float
    pirate_depth: int

    def build_cnn(self) -> nn.Sequential:
        """cnn.3's network of this variant."""
        layers: list[nn.Module] = []
        for spec in self.cnn_layers:
            if spec[0] == "conv":
                _, c_in, c_out, k, s, p, d = spec
                layers.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d))
            elif spec[0] == "pool":
                layers.append(nn.MaxPool2d(spec[1]))
            else:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def cnn_code(self) -> str:
        """cnn.3's code cell for this variant, in the question's own style."""
        lines = []
        for spec in self.cnn_layers:
            if spec[0] == "conv":
                _, c_in, c_out, k, s, p, d = spec
                extra = "".join(f", {name}={v}" for name, v, default in
                                (("stride", s, 1), ("dilation", d, 1)) if v != default)
                lines.append(f"    nn.Conv2d(in_channels={c_in}, out_channels={c_out}, "
                             f"kernel_size={k}{extra}, padding={p}),")
            elif spec[0] == "pool":
                lines.append(f"    nn.MaxPool2d({spec[1]}),")
            else:
                lines.append("    nn.ReLU(),")
        body = "\n".join(lines)
        return ("import torch\nimport torch.nn as nn\n\ncnn = nn.Sequential(\n" + body +
                "\n)\n\ncnn(torch.rand(size=" + str(CNN_INPUT) + ", dtype=torch.float32)).shape")


ORIGINAL = Variant(None, ORIGINAL_CNN, 0.1, 0.2, 24)


def draw_variant(number: int | None) -> Variant:
    """The variant drawn from seed ``number`` (the same on every machine: Python's own
    generator, not torch's); ``None`` gives the original questions."""
    if number is None:
        return ORIGINAL
    if not isinstance(number, int) or number < 0:
        raise DLSummaryError(f"a variant is a non-negative integer seed, got {number!r}")
    rng = random.Random(f"dlsummary-variant-{number}")
    layers: list[tuple] = []
    channels = (3, 4, 16, 32)
    for i in range(3):
        k = rng.choice((3, 5, 7))
        s = rng.choice((1, 1, 2))
        d = rng.choice((1, 1, 2))
        p = rng.randint(0, d * (k - 1) // 2)  # from "valid" to "same"
        layers += [("conv", channels[i], channels[i + 1], k, s, p, d), ("relu",)]
        if i < 2 and rng.random() < 0.6:
            layers.append(("pool", rng.choice((2, 2, 3))))
    # the course used a depth of 24 and of 42 for the pirate MLP
    p1, p2 = rng.choice((0.05, 0.1, 0.15, 0.2, 0.25, 0.3)), rng.choice((0.1, 0.2, 0.3, 0.4, 0.5))
    return Variant(number, tuple(layers), p1, p2, rng.randint(8, 48))


@dataclass(frozen=True)
class VariantKey:
    """The numeric answers of a variant, each derived and confirmed by measurement."""

    variant: Variant
    receptive_field: int  # cnn.3: side of the (square) receptive field, analytic
    measured_receptive_field: int  # ... and of the measured gradient footprint
    drop_probability: float  # dropout.1: q = 1 - (1 - p1)(1 - p2)
    measured_drop_probability: float  # ... and its Monte-Carlo estimate
    pirate_gradient_ratio: float  # losses.2: rms gradient of the first layer / the last's

    def to_dict(self) -> dict:
        return {"variant": self.variant.number, "cnn.3": self.receptive_field,
                "cnn.3 measured": self.measured_receptive_field,
                "dropout.1": self.drop_probability,
                "dropout.1 measured": self.measured_drop_probability,
                "losses.2 gradient ratio": self.pirate_gradient_ratio,
                "p1": self.variant.p1, "p2": self.variant.p2,
                "pirate_depth": self.variant.pirate_depth}


def cnn_receptive_fields(variant: Variant) -> tuple[int, int]:
    """cnn.3's receptive field for this variant: from the geometry, and measured as the
    gradient footprint of the central output pixel on an input large enough to hold it."""
    from dlsummary.receptive_field import empirical_receptive_field, receptive_field

    cnn = variant.build_cnn()
    analytic = receptive_field(cnn, CNN_INPUT)
    side = 2 * analytic.size[0] + 8 * analytic.stride[0] + 16  # the field fits inside
    measured = empirical_receptive_field(cnn, (1, 3, side, side))
    return analytic.size[0], measured.size[0]


def pirate_gradient_ratio(depth: int, seed: int = 0) -> float:
    """losses.2 for a pirate MLP with ``depth`` repeated Linear+Sigmoid layers, at PyTorch's
    default initialisation: the root-mean-square gradient of the first Linear's weight over
    that of the last (per element, so that the layers' sizes do not enter)."""
    torch.manual_seed(seed)
    hidden = 128
    model = nn.Sequential(nn.Linear(42, hidden), nn.Sigmoid(),
                          *[nn.Linear(hidden, hidden), nn.Sigmoid()] * depth,
                          nn.Linear(hidden, 1)).double()  # float32 underflows at depth 24
    x, target = torch.rand(256, 42, dtype=torch.float64), torch.rand(256, 1, dtype=torch.float64)
    first, last = model[0].weight, model[-1].weight
    g_first, g_last = torch.autograd.grad(((model(x) - target) ** 2).mean(), (first, last))
    return (g_first.pow(2).mean().sqrt() / g_last.pow(2).mean().sqrt()).item()


def variant_key(variant: Variant, samples: int = 400_000) -> VariantKey:
    """Derive the variant's numeric answers and confirm each by measurement; refuse a
    variant whose derivation and measurement disagree."""
    rf, measured_rf = cnn_receptive_fields(variant)
    q = 1 - (1 - variant.p1) * (1 - variant.p2)
    generator = torch.Generator().manual_seed(variant.number or 0)
    kept = ((torch.rand(samples, generator=generator) >= variant.p1)
            & (torch.rand(samples, generator=generator) >= variant.p2))
    measured_q = 1 - kept.double().mean().item()
    se = (q * (1 - q) / samples) ** 0.5
    if rf != measured_rf or abs(measured_q - q) > 5 * se:
        raise DLSummaryError(
            f"variant {variant.number}: the derived key disagrees with its measurement "
            f"(receptive field {rf} vs footprint {measured_rf}; q {q:.4f} vs {measured_q:.4f})")
    ratio = pirate_gradient_ratio(variant.pirate_depth)
    if not ratio < 1e-3:
        raise DLSummaryError(f"variant {variant.number}: its pirate MLP (depth "
                             f"{variant.pirate_depth}) shows no vanishing gradient ({ratio:.1e})")
    return VariantKey(variant, rf, measured_rf, q, measured_q, ratio)


# --------------------------------------------------------------------------- the key's cells

@dataclass(frozen=True)
class KeyQuestion:
    """One question of the answer key: its section, id, the cells that ask it (heading,
    text, the question's own code) and our answer."""

    section: str
    qid: str
    question_cells: tuple
    answer: str


def section_sources(notebooks: str | Path | None = None) -> list[Path]:
    """The answer key's section sources (``notebooks/NN_name.py``) in order."""
    folder = Path(notebooks) if notebooks is not None else _notebooks_folder()
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.py"))
    if not found:
        raise DLSummaryError(f"no section sources (NN_name.py) in {folder}")
    return found


def _notebooks_folder() -> Path:
    here = Path(__file__).resolve()
    for folder in (Path.cwd() / "notebooks", *(p / "notebooks" for p in here.parents)):
        if any(folder.glob("[0-9][0-9]_*.py")):
            return folder
    raise DLSummaryError("cannot find the answer key's notebooks/ folder; run from the "
                         "repository's root or pass --notebooks DIR")


def key_questions(notebooks: str | Path | None = None) -> tuple[list, list[KeyQuestion]]:
    """The introduction's cells and every question of the key, in order."""
    import jupytext

    intro: list = []
    found: list[dict] = []
    for path in section_sources(notebooks):
        nb = jupytext.read(path)
        section = ""
        current: dict | None = None
        for cell in nb.cells:
            text = cell.source
            head = _HEADING.search(text) if cell.cell_type == "markdown" else None
            if cell.cell_type == "markdown" and _SECTION.search(text) and not head:
                section = _SECTION.search(text).group(1)
                current = None
                continue
            if head:
                current = {"qid": head.group(1), "cells": [cell], "answer": None,
                           "section": section}
                found.append(current)
                continue
            if current is None:
                if not section:
                    intro.append(cell)
                continue
            if current["answer"] is None:
                if cell.cell_type == "markdown" and text.lstrip().startswith(ANSWER_MARK):
                    current["answer"] = text
                else:
                    current["cells"].append(cell)
    questions = []
    for q in found:
        if q["answer"] is None:
            raise DLSummaryError(f"question {q['qid']} has no {ANSWER_MARK} cell")
        questions.append(KeyQuestion(q["section"], q["qid"], tuple(q["cells"]), q["answer"]))
    return intro, questions


# --------------------------------------------------------------------------- the notebook

def _vary(qid: str, source: str, variant: Variant) -> str:
    """A question cell's text or code for this variant."""
    if variant.number is None:
        return source
    if qid == "cnn.3" and "nn.Sequential(" in source and "cnn(" in source:
        return variant.cnn_code()
    if qid == "dropout.1":
        source = re.sub(r"p1, p2 = [0-9.]+, [0-9.]+", f"p1, p2 = {variant.p1}, {variant.p2}",
                        source)
    if qid in ("losses.2", "losses.3"):
        source = re.sub(r"\]\*24\b", f"]*{variant.pirate_depth}", source)
    return source


def build_assignment(variant: Variant = ORIGINAL,
                     notebooks: str | Path | None = None) -> nbformat.NotebookNode:
    """The student notebook for ``variant``: the questions, their code, empty answers."""
    intro, questions = key_questions(notebooks)
    nb = nbformat.v4.new_notebook()
    cells = []
    for cell in intro:  # the TeX macros; the original notes
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(_student_intro(cell.source)))
    which = "" if variant.number is None else f"This is variant {variant.number}.\n\n"
    cells.append(nbformat.v4.new_markdown_cell(which + GRADING_NOTES))
    section = None
    for q in questions:
        if q.section != section:
            section = q.section
            cells.append(nbformat.v4.new_markdown_cell(f"## {section}"))
        for cell in q.question_cells:
            source = _vary(q.qid, cell.source, variant)
            source = _HEADING.sub(f"### {q.qid}", source, count=1)  # the topic could tell
            if cell.cell_type == "code":
                cells.append(nbformat.v4.new_code_cell(source))
            else:
                cells.append(nbformat.v4.new_markdown_cell(source))
        cells.append(nbformat.v4.new_markdown_cell(ANSWER_MARK + " "))
    nb.cells = cells
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nb.metadata["dlsummary"] = {"assignment": True, "variant": variant.number}
    return nb


# Reference solutions of the code tasks, as a student would write them with this library.
SOLUTION_CODE = {
    "backprop.3": """
from dlsummary import numerical_gradient

grad_W, grad_b = numerical_gradient(foo, W, b)          # central differences, W and b restored
autograd_W, autograd_b = torch.autograd.grad(foo(W, b), (W, b))
assert torch.allclose(grad_W, autograd_W)
assert torch.allclose(grad_b, autograd_b)
""",
    "seq.2": """
from dlsummary.sequence import Embedding                 # weight[ids]: a row lookup

mine = Embedding(42, 8)
ids = torch.randint(0, 42, (5, 6))
assert torch.equal(mine(ids), mine.weight[ids])
""",
}


def build_solution(variant: Variant = ORIGINAL,
                   notebooks: str | Path | None = None) -> nbformat.NotebookNode:
    """The assignment filled in with our answers (for this variant) and the code tasks
    solved: what full marks look like, and what the grader is tested on."""
    _, questions = key_questions(notebooks)
    answers = {q.qid: q.answer for q in questions}
    if variant.number is not None:
        key = variant_key(variant)
        side = key.receptive_field
        answers["cnn.3"] = (f"{ANSWER_MARK} ${side}\\times{side}$: by "
                            "$r_l = r_{l-1} + d_l(k_l-1)j_{l-1}$ and $j_l = j_{l-1}s_l$ over the "
                            "layers (pooling layers included), confirmed by the measured "
                            "gradient footprint of an output pixel.")
        answers["dropout.1"] = (f"{ANSWER_MARK} $q = 1-(1-p_1)(1-p_2) = p_1+p_2-p_1p_2$, which "
                                f"is ${key.drop_probability:.4g}$ here: a unit survives only "
                                "if both layers keep it, independently.")
    nb = build_assignment(variant, notebooks)
    pending = dict(SOLUTION_CODE)
    qid = None
    for cell in nb.cells:
        head = _HEADING.search(cell.source) if cell.cell_type == "markdown" else None
        if head:
            qid = head.group(1)
        elif cell.cell_type == "markdown" and cell.source.startswith(ANSWER_MARK) and qid:
            cell.source = answers[qid]
        elif cell.cell_type == "code" and qid in pending:  # the task's own code cell
            cell.source = cell.source.rstrip() + "\n" + pending.pop(qid)
    return nb


def _student_intro(text: str) -> str:
    """The introduction as a student's notebook has it: the TeX macros, the title and the
    original assignment's notes; not the answer key's description of itself."""
    text = re.sub(r"<div class=\"dls-summary-here\"></div>", "", text)
    text = re.sub(r"<details[^>]*>\s*<summary>(.*?)</summary>", r"**\1**", text, flags=re.S)
    text = text.replace("</details>", "")
    text = re.sub(r"(?m)^> ?", "", text)
    kept = [p for p in text.split("\n\n")
            if not re.search(r"experiment|assert|answer key|\bcheck", p, re.I)]
    return "\n\n".join(p.strip() for p in kept if p.strip())


def write_assignment(output: str | Path, variant: int | None = None,
                     notebooks: str | Path | None = None, solution: bool = False) -> Path:
    """Write ``output/assignment.ipynb`` (the original, or variant ``variant``), or with
    ``solution`` the filled-in ``output/solution.ipynb``."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise DLSummaryError(f"--output {str(out)!r} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    chosen = draw_variant(variant)
    nb = build_solution(chosen, notebooks) if solution else build_assignment(chosen, notebooks)
    path = out / ("solution.ipynb" if solution else ASSIGNMENT_NAME)
    nbformat.write(nb, path)
    return path
