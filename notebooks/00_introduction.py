# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# $$
# \newcommand{\mat}[1]{\boldsymbol {#1}}
# \newcommand{\mattr}[1]{\boldsymbol {#1}^\top}
# \newcommand{\matinv}[1]{\boldsymbol {#1}^{-1}}
# \newcommand{\vec}[1]{\boldsymbol {#1}}
# \newcommand{\vectr}[1]{\boldsymbol {#1}^\top}
# \newcommand{\rvar}[1]{\mathrm {#1}}
# \newcommand{\rvec}[1]{\boldsymbol{\mathrm{#1}}}
# \newcommand{\diag}{\mathop{\mathrm {diag}}}
# \newcommand{\set}[1]{\mathbb {#1}}
# \newcommand{\cset}[1]{\mathcal{#1}}
# \newcommand{\norm}[1]{\left\lVert#1\right\rVert}
# \newcommand{\pderiv}[2]{\frac{\partial #1}{\partial #2}}
# \newcommand{\bb}[1]{\boldsymbol{#1}}
# \newcommand{\E}[2][]{\mathbb{E}_{#1}\left[#2\right]}
# \newcommand{\ip}[3]{\left<#1,#2\right>_{#3}}
# \newcommand{\given}[]{\,\middle\vert\,}
# \newcommand{\DKL}[2]{\cset{D}_{\text{KL}}\left(#1\,\Vert\, #2\right)}
# \newcommand{\grad}[]{\nabla}
# \newcommand{\norm}[1]{\left\lVert#1\right\rVert}
# $$
#
# # Part 2: Summary Questions
# <a id=part2></a>
#
# An answer key to the course's summary questions. Each answer comes first, short enough to
# read in a minute, with the list of what was checked beneath it; the explanation in detail
# and the code of the experiment are folded below it, their outputs and plots shown. Every
# check compares a measured value with a stated threshold, and most have a negative
# control beside them: the same measurement where the claim should *not* hold. If a claim
# stopped being true, its check would fail and this page would not be built.
#
# <details class="dls-assignment-notes"><summary>The original assignment's notes to
# students</summary><ul>
# <li>Clearly mark where your answer begins, e.g. write "<strong>Answer:</strong>" in the
# beginning of your cell.</li>
# <li>Provide a full explanation, even if the question doesn't explicitly state so. We will
# reduce points for partial explanations!</li>
# <li>This notebook should be runnable from start to end without any errors.</li>
# </ul></details>
#
# <div class="dls-summary-here"></div>
