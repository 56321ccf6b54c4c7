"""TeX in Markdown -> MathML at build time, so that the report's equations render with no
network and no JavaScript (Chromium and Firefox display MathML natively).

The notebook's preamble defines macros with ``\\newcommand``; :func:`parse_macros` reads
them and :func:`expand_macros` expands them before ``latex2mathml`` converts the TeX.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from dlsummary.errors import DLSummaryError


@dataclass(frozen=True)
class Macro:
    """A ``\\newcommand{\\name}[n_args][default]{body}`` definition."""

    name: str
    n_args: int
    default: str | None
    body: str


_NEWCOMMAND = re.compile(
    r"\\newcommand\s*\{\\([A-Za-z]+)\}\s*(?:\[(\d)\])?\s*(?:\[([^\]]*)\])?\s*\{"
)


def _braced(text: str, start: int) -> tuple[str, int]:
    """The contents of the brace group that opens at ``text[start]``, and the index after it."""
    if start >= len(text) or text[start] != "{":
        raise DLSummaryError(f"expected '{{' at position {start} of TeX {text!r}")
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "\\":
            continue
        if text[i] == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    raise DLSummaryError(f"unbalanced braces in TeX {text!r}")


def parse_macros(tex: str) -> dict[str, Macro]:
    """Every ``\\newcommand`` in ``tex`` (later definitions win, as in LaTeX's renew)."""
    macros: dict[str, Macro] = {}
    for match in _NEWCOMMAND.finditer(tex):
        body, _ = _braced(tex, match.end() - 1)
        n_args = int(match.group(2) or 0)
        macros[match.group(1)] = Macro(match.group(1), n_args, match.group(3), body)
    return macros


def expand_macros(tex: str, macros: dict[str, Macro], max_depth: int = 20) -> str:
    """Expand user macros (recursively, up to ``max_depth`` rounds)."""
    if not macros:
        return tex
    pattern = re.compile(r"\\(" + "|".join(sorted(map(re.escape, macros), key=len, reverse=True))
                         + r")(?![A-Za-z])")
    for _ in range(max_depth):
        out: list[str] = []
        pos = 0
        changed = False
        for match in pattern.finditer(tex):
            if match.start() < pos:
                continue
            macro = macros[match.group(1)]
            out.append(tex[pos : match.start()])
            cursor = match.end()
            args: list[str] = []
            n_required = macro.n_args
            if macro.default is not None:
                n_required -= 1
                rest = tex[cursor:]
                stripped = rest.lstrip()
                if stripped.startswith("["):
                    cursor += len(rest) - len(stripped)
                    close = tex.index("]", cursor)
                    args.append(tex[cursor + 1 : close])
                    cursor = close + 1
                else:
                    args.append(macro.default)
            for _ in range(n_required):
                while cursor < len(tex) and tex[cursor] == " ":
                    cursor += 1
                if cursor < len(tex) and tex[cursor] == "{":
                    arg, cursor = _braced(tex, cursor)
                elif cursor < len(tex):  # a single-token argument, e.g. \vec x
                    if tex[cursor] == "\\":
                        name = re.match(r"\\[A-Za-z]+|\\.", tex[cursor:])
                        arg = name.group(0) if name else tex[cursor]
                    else:
                        arg = tex[cursor]
                    cursor += len(arg)
                else:
                    raise DLSummaryError(f"macro \\{macro.name} is missing an argument in {tex!r}")
                args.append(arg)
            body = macro.body
            for k, arg in enumerate(args, start=1):
                body = body.replace(f"#{k}", arg)
            out.append("{" + body + "}" if macro.n_args else body)
            pos = cursor
            changed = True
        out.append(tex[pos:])
        tex = "".join(out)
        if not changed:
            break
    return tex


_ALIGNED = re.compile(r"\\begin\{(aligned|align\*?|split|gathered)\}(.*?)\\end\{\1\}", re.S)


def _normalise(tex: str) -> str:
    """Rewrite the few constructs latex2mathml lacks into ones it has."""

    def aligned(match: re.Match[str]) -> str:
        body = match.group(2)
        n_cols = max(row.count("&") for row in re.split(r"\\\\", body)) + 1
        cols = "".join("r" if k % 2 == 0 else "l" for k in range(n_cols))
        return r"\begin{array}{" + cols + "}" + body + r"\end{array}"

    tex = _ALIGNED.sub(aligned, tex)
    tex = tex.replace(r"\lVert", r"\|").replace(r"\rVert", r"\|")
    tex = tex.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    tex = re.sub(r"\\(displaystyle|textstyle|nonumber)\b", "", tex)
    tex = re.sub(r"\\(label|tag)\{[^}]*\}", "", tex)
    tex = re.sub(r"\\arg(?![A-Za-z])", r"\\operatorname{arg}", tex)
    return tex


def tex_to_mathml(tex: str, display: bool = False, macros: dict[str, Macro] | None = None) -> str:
    """One TeX formula (without its ``$`` delimiters) as a ``<math>`` element."""
    import latex2mathml.converter

    source = _normalise(expand_macros(tex, macros or {}))
    try:
        mathml = latex2mathml.converter.convert(source, display="block" if display else "inline")
    except Exception as err:  # latex2mathml raises many types for bad TeX
        raise DLSummaryError(
            f"cannot convert TeX to MathML ({type(err).__name__}: {err}): {tex.strip()!r}"
        ) from err
    leftover = re.search(r">[^<]*?(\\[A-Za-z]+)", mathml)
    if leftover:
        raise DLSummaryError(
            f"TeX command {leftover.group(1)} is not supported by the MathML converter "
            f"(in {tex.strip()!r}); write it with standard commands"
        )
    # keep the source on the element, for copy-and-paste and for tests
    return mathml.replace("<math ", f'<math data-tex="{_attr(tex.strip())}" ', 1)


def _attr(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;").replace("\n", " ")


# Math in Markdown: $$...$$, \[...\], \begin{equation}...\end{equation}, then $...$.
# Code spans and fenced code are left alone.
_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.S)
_DISPLAY = re.compile(
    r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\begin\{(equation\*?|align\*?)\}(.+?)\\end\{\3\}", re.S
)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)((?:\\\$|[^$])+?)(?<![\\\s])\$(?!\$)")


def replace_math(markdown: str, render: Callable[[str, bool], str]) -> str:
    """Replace every formula in ``markdown`` by ``render(tex, display)``, outside code."""
    pieces = _CODE.split(markdown)
    for i in range(0, len(pieces), 2):  # even pieces are outside code
        text = pieces[i]

        def display(match: re.Match[str]) -> str:
            if match.group(1) is not None:
                return render(match.group(1), True)
            if match.group(2) is not None:
                return render(match.group(2), True)
            env = match.group(3).rstrip("*")
            body = match.group(4)
            if env == "align":
                body = r"\begin{aligned}" + body + r"\end{aligned}"
            return render(body, True)

        text = _DISPLAY.sub(display, text)
        text = _INLINE.sub(lambda m: render(m.group(1), False), text)
        pieces[i] = text
    return "".join(pieces)
