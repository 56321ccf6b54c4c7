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


# --------------------------------------------------------------------------- terminal

_UNICODE_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ",
    "tau": "τ", "upsilon": "υ", "phi": "ϕ", "varphi": "φ", "chi": "χ", "psi": "ψ",
    "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ",
    "Pi": "Π", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
    "cdot": "·", "times": "×", "div": "÷", "pm": "±", "mp": "∓", "le": "≤", "leq": "≤",
    "ge": "≥", "geq": "≥", "ne": "≠", "neq": "≠", "approx": "≈", "sim": "∼", "simeq": "≃",
    "equiv": "≡", "propto": "∝", "ll": "≪", "gg": "≫", "to": "→", "rightarrow": "→",
    "leftarrow": "←", "Rightarrow": "⇒", "Longrightarrow": "⟹", "iff": "⇔",
    "Leftrightarrow": "⇔", "mapsto": "↦", "infty": "∞", "sum": "Σ", "prod": "Π",
    "int": "∫", "partial": "∂", "nabla": "∇", "in": "∈", "notin": "∉", "subset": "⊂",
    "subseteq": "⊆", "cup": "∪", "cap": "∩", "emptyset": "∅", "forall": "∀",
    "exists": "∃", "odot": "⊙", "otimes": "⊗", "oplus": "⊕", "circ": "∘", "ast": "∗",
    "star": "⋆", "dots": "…", "ldots": "…", "cdots": "⋯", "vdots": "⋮", "ddots": "⋱",
    "top": "ᵀ", "intercal": "ᵀ", "prime": "′", "lVert": "‖", "rVert": "‖", "Vert": "‖",
    "|": "‖", "lvert": "|", "rvert": "|", "vert": "|", "mid": "|", "langle": "⟨",
    "rangle": "⟩", "lfloor": "⌊", "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉",
    "log": "log", "exp": "exp", "ln": "ln", "max": "max", "min": "min", "sin": "sin",
    "cos": "cos", "tanh": "tanh", "arg": "arg", "lim": "lim", "det": "det", "Pr": "Pr",
    "ell": "ℓ", "hbar": "ℏ", "neg": "¬", "land": "∧", "lor": "∨", "perp": "⊥",
    "{": "{", "}": "}", "%": "%", "$": "$", "&": "&", "#": "#", "_": "_",
    ",": " ", ";": " ", ":": " ", "!": "", " ": " ", "quad": "  ", "qquad": "    ",
}
_BLACKBOARD = {"E": "𝔼", "R": "ℝ", "N": "ℕ", "Z": "ℤ", "P": "ℙ", "Q": "ℚ", "C": "ℂ"}
_SUPERSCRIPTS = str.maketrans("0123456789+-=()nijkTtx", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱʲᵏᵀᵗˣ")
_SUBSCRIPTS = str.maketrans("0123456789+-=()aeijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ")
_STYLE_COMMANDS = ("boldsymbol", "mathbf", "mathrm", "mathit", "mathsf", "mathtt", "text",
                   "textrm", "textbf", "textit", "operatorname", "bm", "mathcal", "hat",
                   "tilde", "bar", "overline", "widehat", "widetilde", "mathop", "mbox",
                   "displaystyle", "vec")
_DROP = ("left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr",
         "middle", "limits", "nolimits", "displaystyle", "textstyle")


def _script(text: str, table: dict, mark: str) -> str:
    """A super- or subscript in Unicode where every character has one, else ``^(..)``."""
    plain = text.strip()
    if not plain:
        return ""
    converted = plain.translate(table)
    if all(c != o or c in " " for c, o in zip(converted, plain, strict=True)) and plain:
        return converted
    return f"{mark}{plain}" if len(plain) == 1 else f"{mark}({plain})"


def tex_to_unicode(tex: str, macros: dict[str, Macro] | None = None) -> str:
    """TeX as readable Unicode text for a terminal: the macros expanded, Greek letters and
    operators as symbols, ``\\frac{a}{b}`` as ``(a)/(b)``, simple scripts as ``x²``,
    ``x₁``. An approximation for reading, not a typesetter."""
    tex = expand_macros(tex, macros or {})

    def convert(text: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            char = text[i]
            if char == "\\":
                match = re.match(r"\\([A-Za-z]+|.)", text[i:])
                name = match.group(1) if match else ""
                i += len(match.group(0)) if match else 1
                if name in _DROP:
                    continue
                if name in ("frac", "dfrac", "tfrac"):
                    num, i = _take_group(text, i)
                    den, i = _take_group(text, i)
                    num, den = convert(num), convert(den)
                    wrap = (lambda s: s if re.fullmatch(r"[\w.′ᵀ²³⁻¹]+", s) else f"({s})")
                    out.append(f"{wrap(num)}/{wrap(den)}")
                elif name == "sqrt":
                    arg, i = _take_group(text, i)
                    out.append(f"√({convert(arg)})")
                elif name in ("mathbb",):
                    arg, i = _take_group(text, i)
                    out.append("".join(_BLACKBOARD.get(c, c) for c in convert(arg)))
                elif name in _STYLE_COMMANDS:
                    if name in ("displaystyle",):
                        continue
                    arg, i = _take_group(text, i)
                    out.append(convert(arg) + ("\u0302" if name in ("hat", "widehat") else
                                               "\u0303" if name in ("tilde", "widetilde")
                                               else "\u0304" if name in ("bar", "overline")
                                               else ""))
                elif name in _UNICODE_SYMBOLS:
                    symbol = _UNICODE_SYMBOLS[name]
                    out.append(f"{symbol} " if name.isalpha() and len(symbol) > 1 else symbol)
                elif name in ("begin", "end"):
                    _, i = _take_group(text, i)
                else:
                    # a macro's argument glued to a command (\lVertx): split the known
                    # command off, else keep the name
                    known = next((name[:k] for k in range(len(name) - 1, 1, -1)
                                  if name[:k] in _UNICODE_SYMBOLS), None)
                    if known:
                        i -= len(name) - len(known)
                        out.append(_UNICODE_SYMBOLS[known])
                    else:
                        out.append(name)
            elif char in "^_":
                arg, i = _take_group(text, i + 1)
                converted = convert(arg)
                if char == "^":
                    out.append(converted if converted in ("ᵀ", "′") else
                               _script(converted, _SUPERSCRIPTS, "^"))
                else:
                    out.append(_script(converted, _SUBSCRIPTS, "_"))
            elif char in "{}&":
                i += 1
            elif char == "~":
                out.append(" ")
                i += 1
            else:
                out.append(char)
                i += 1
        return "".join(out)

    text = convert(tex.replace("\\\\", "; "))
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _take_group(text: str, i: int) -> tuple[str, int]:
    """The next argument at ``i``: a braced group, a command or one character."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return "", i
    if text[i] == "{":
        inner, end = _braced(text, i)
        return inner, end
    if text[i] == "\\":
        match = re.match(r"\\([A-Za-z]+|.)", text[i:])
        return match.group(0), i + len(match.group(0))
    return text[i], i + 1


def markdown_math_to_unicode(markdown: str, macros: dict[str, Macro] | None = None) -> str:
    """Markdown with its ``$...$`` and ``$$...$$`` formulas as Unicode text."""
    return replace_math(markdown, lambda tex, display: tex_to_unicode(tex, macros))
