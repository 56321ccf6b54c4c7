import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlsummary.errors import DLSummaryError
from dlsummary.mathml import expand_macros, parse_macros, replace_math, tex_to_mathml

PREAMBLE = r"""
\newcommand{\mat}[1]{\boldsymbol {#1}}
\newcommand{\vec}[1]{\boldsymbol {#1}}
\newcommand{\norm}[1]{\left\lVert#1\right\rVert}
\newcommand{\E}[2][]{\mathbb{E}_{#1}\left[#2\right]}
\newcommand{\DKL}[2]{\mathcal{D}_{\text{KL}}\left(#1\,\Vert\, #2\right)}
\newcommand{\grad}[]{\nabla}
"""


def test_macros_are_parsed_with_arity_and_default():
    macros = parse_macros(PREAMBLE)
    assert macros["mat"].n_args == 1
    assert macros["E"].n_args == 2 and macros["E"].default == ""
    assert macros["grad"].n_args == 0


def test_macros_expand_nested_and_optional_arguments():
    macros = parse_macros(PREAMBLE)
    out = expand_macros(r"\E[q]{\norm{\mat{W}}} + \E{x} + \grad f", macros)
    assert r"\mathbb{E}_{q}\left[{\left\lVert{\boldsymbol {W}}\right\rVert}\right]" in out
    assert r"\mathbb{E}_{}\left[x\right]" in out
    assert r"\nabla f" in out
    assert not re.search(r"\\(mat|norm|E)(?![A-Za-z])", out)


def test_macro_name_prefix_is_not_expanded():
    macros = parse_macros(r"\newcommand{\set}[1]{\mathbb {#1}}")
    assert expand_macros(r"\setminus \set{R}", macros) == r"\setminus {\mathbb {R}}"


def test_replace_math_leaves_code_alone():
    seen = []
    md = "price `$x$` and ```\n$y$\n``` but $z^2$ and $$\\frac{1}{2}$$"
    out = replace_math(md, lambda tex, display: seen.append((tex, display)) or "M")
    assert seen == [("\\frac{1}{2}", True), ("z^2", False)]
    assert "`$x$`" in out and "$y$" in out


def test_aligned_becomes_a_table():
    mathml = tex_to_mathml(r"\begin{aligned} a &= b \\ c &= d \end{aligned}", display=True)
    assert "<mtable" in mathml and "<mi>&</mi>" not in mathml
    assert 'display="block"' in mathml


def test_vec_macro_is_bold_not_an_arrow():
    mathml = tex_to_mathml(r"\vec{x}", macros=parse_macros(PREAMBLE))
    assert 'mathvariant="bold-italic"' in mathml


def test_bad_tex_names_the_formula():
    with pytest.raises(DLSummaryError, match="frac"):
        tex_to_mathml(r"\frac{1}{")


@given(st.text(alphabet="abcxyz ", min_size=1, max_size=20).filter(str.strip))
def test_plain_text_without_dollars_is_unchanged(text):
    assert replace_math(text, lambda tex, display: "M") == text


def test_arg_min_renders_as_an_operator():
    mathml = tex_to_mathml(r"\arg\min_{\vec{y}} f(\vec{y})")
    body = mathml.split(">", 1)[1]  # past the data-tex attribute that keeps the source
    assert "\\arg" not in body and ">arg<" in body


def test_unsupported_command_is_an_error_not_raw_text(monkeypatch):
    with pytest.raises(DLSummaryError, match=r"\\hline"):
        tex_to_mathml(r"a \hline b")


def test_unicode_for_the_terminal_expands_macros_and_symbols():
    from dlsummary.mathml import tex_to_unicode

    macros = parse_macros(PREAMBLE)
    assert tex_to_unicode(r"\E{c\,m\,a} = c(1-p)\,a", macros) == "𝔼[c m a] = c(1-p) a"
    assert tex_to_unicode(r"q = 1-(1-p_1)(1-p_2)") == "q = 1-(1-p₁)(1-p₂)"
    assert tex_to_unicode(r"\mat{W}^\top \norm{x}_2^2", macros) == "Wᵀ ‖x‖₂²"
    assert tex_to_unicode(r"\frac{1}{1-p}") == "1/(1-p)"
    assert tex_to_unicode(r"10^{21} \le \alpha_{k+1}") == "10²¹ ≤ α_(k+1)" or \
        tex_to_unicode(r"10^{21} \le \alpha_{k+1}") == "10²¹ ≤ αₖ₊₁"
    assert "\\" not in tex_to_unicode(r"\DKL{q}{p} \grad f", macros)
