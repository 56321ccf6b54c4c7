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
# ## Backpropagation

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dlsummary import check_gradients, numerical_gradient, plot_style, seed_everything
from dlsummary.evidence import check, control

plot_style()
seed_everything(0)
torch.set_default_dtype(torch.float64)  # this section compares gradients to ~1e-10


def numerical_grad(loss_fn, param: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The definition of the derivative, one coordinate at a time: perturb the tensor that
    ``loss_fn`` reads in place, evaluate twice, restore (backprop.3's answer)."""
    grad = torch.zeros_like(param)
    with torch.no_grad():
        flat, grad_flat = param.view(-1), grad.view(-1)
        for j in range(flat.numel()):
            original = flat[j].item()
            flat[j] = original + eps
            loss_plus = loss_fn().item()
            flat[j] = original - eps
            loss_minus = loss_fn().item()
            flat[j] = original
            grad_flat[j] = (loss_plus - loss_minus) / (2 * eps)
    return grad


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """max |estimate - reference| / max |reference|; infinite if the shapes differ."""
    if estimate.shape != reference.shape:
        return math.inf
    return ((estimate - reference).abs().max() / reference.abs().max()).item()

# %% [markdown]
# ### backprop.1 · gradients of a two-layer MLP
# You wish to train the following 2-layer MLP for a binary classification task:
# $$
# \hat{y}^{(i)} =\mat{W}_2~ \varphi(\mat{W}_1 \vec{x}^{(i)}+ \vec{b}_1) + \vec{b}_2
# $$
# Your wish to minimize the in-sample loss function is defined as
# $$
# L_{\mathcal{S}} = \frac{1}{N}\sum_{i=1}^{N}\ell(y^{(i)},\hat{y}^{(i)}) + \frac{\lambda}{2}\left(\norm{\mat{W}_1}_F^2 + \norm{\mat{W}_2}_F^2 \right)
# $$
# Where the pointwise loss is binary cross-entropy:
# $$
# \ell(y, \hat{y}) =  - y \log(\hat{y}) - (1-y) \log(1-\hat{y})
# $$
# Write an analytic expression for the derivative of the final loss $L_{\mathcal{S}}$ w.r.t.
# each of the following tensors: $\mat{W}_1$, $\mat{W}_2$, $\mat{b}_1$, $\mat{b}_2$, $\mat{x}$.

# %% [markdown]
# **Answer:** Let $\boldsymbol{z}^{(i)} = \boldsymbol{W}_1\boldsymbol{x}^{(i)} + \boldsymbol{b}_1$,
# $\boldsymbol{a}^{(i)} = \varphi(\boldsymbol{z}^{(i)})$,
# $\boldsymbol{W}_2 \in \mathbb{R}^{1\times h}$. With
# $$\delta^{(i)} = \frac{\partial \ell}{\partial \hat y^{(i)}} = \frac{\hat y^{(i)} - y^{(i)}}{\hat y^{(i)}\,(1-\hat y^{(i)})}, \qquad \boldsymbol{g}^{(i)} = \delta^{(i)}\,\boldsymbol{W}_2^\top \odot \varphi'(\boldsymbol{z}^{(i)}),$$
# the chain rule gives
# $$\frac{\partial L_{\mathcal{S}}}{\partial \boldsymbol{W}_2} = \frac{1}{N}\sum_{i} \delta^{(i)}\boldsymbol{a}^{(i)\top} + \lambda\boldsymbol{W}_2, \qquad \frac{\partial L_{\mathcal{S}}}{\partial b_2} = \frac{1}{N}\sum_{i} \delta^{(i)},$$
# $$\frac{\partial L_{\mathcal{S}}}{\partial \boldsymbol{W}_1} = \frac{1}{N}\sum_{i} \boldsymbol{g}^{(i)}\boldsymbol{x}^{(i)\top} + \lambda\boldsymbol{W}_1, \qquad \frac{\partial L_{\mathcal{S}}}{\partial \boldsymbol{b}_1} = \frac{1}{N}\sum_{i} \boldsymbol{g}^{(i)}, \qquad \frac{\partial L_{\mathcal{S}}}{\partial \boldsymbol{x}^{(i)}} = \frac{1}{N}\boldsymbol{W}_1^\top \boldsymbol{g}^{(i)}.$$
# Biases and input are unregularised (no $\lambda$ term). BCE needs $\hat y \in (0,1)$,
# which an affine output does not guarantee; with a sigmoid output the same formulas hold
# with $\delta^{(i)} = \hat y^{(i)} - y^{(i)}$.

# %% [markdown]
# **Why, in detail.** Shapes: $\boldsymbol{x}^{(i)}\in\mathbb{R}^d$,
# $\boldsymbol{W}_1\in\mathbb{R}^{h\times d}$, $\boldsymbol{b}_1, \boldsymbol{z}^{(i)},
# \boldsymbol{a}^{(i)}, \boldsymbol{g}^{(i)} \in\mathbb{R}^h$, $b_2, \hat y^{(i)}\in\mathbb{R}$;
# every gradient has the shape of its tensor.
#
# 1. *The loss.* $\frac{\partial \ell}{\partial \hat y} = -\frac{y}{\hat y} + \frac{1-y}{1-\hat y}
#    = \frac{\hat y - y}{\hat y(1-\hat y)}$, and the mean gives each sample's term a factor
#    $\frac1N$.
# 2. *The output layer.* $\hat y^{(i)} = \boldsymbol{W}_2\boldsymbol{a}^{(i)} + b_2$ is linear,
#    with $\frac{\partial \hat y^{(i)}}{\partial \boldsymbol{W}_2} = \boldsymbol{a}^{(i)\top}$ and
#    $\frac{\partial \hat y^{(i)}}{\partial b_2} = 1$; the regulariser adds
#    $\frac{\partial}{\partial \boldsymbol{W}}\frac{\lambda}{2}\lVert\boldsymbol{W}\rVert_F^2 = \lambda\boldsymbol{W}$.
# 3. *Back through $\varphi$.* $\frac{\partial \hat y^{(i)}}{\partial \boldsymbol{a}^{(i)}} =
#    \boldsymbol{W}_2^\top$, and the element-wise $\varphi$ has the Jacobian
#    $\operatorname{diag}\varphi'(\boldsymbol{z}^{(i)})$, so
#    $\frac{\partial L_{\mathcal{S}}}{\partial \boldsymbol{z}^{(i)}} = \frac1N\boldsymbol{g}^{(i)}$.
# 4. *The first layer and the input.* $\boldsymbol{z}^{(i)}$ is linear in $\boldsymbol{W}_1$,
#    $\boldsymbol{b}_1$ and $\boldsymbol{x}^{(i)}$. The input gradient of sample $i$ involves
#    only sample $i$, since no other term of the mean depends on $\boldsymbol{x}^{(i)}$.
#
# In matrix form over a batch $\boldsymbol{X}\in\mathbb{R}^{N\times d}$ (rows are samples):
# $\boldsymbol{G} = \frac1N(\boldsymbol{\delta}\boldsymbol{W}_2)\odot\varphi'(\boldsymbol{Z})$,
# $\frac{\partial L}{\partial \boldsymbol{W}_1} = \boldsymbol{G}^\top\boldsymbol{X} + \lambda\boldsymbol{W}_1$,
# $\frac{\partial L}{\partial \boldsymbol{X}} = \boldsymbol{G}\boldsymbol{W}_1$.
# With the affine output as written, a prediction outside $(0,1)$ makes $\log$ undefined
# (NaN), and near $0$ or $1$ the factor $\frac{1}{\hat y(1-\hat y)}$ explodes. With a sigmoid
# output, $\sigma'(s) = \hat y(1-\hat y)$ cancels that factor and $\delta = \hat y - y$ is
# bounded by 1 (what `BCEWithLogitsLoss` computes).
#
# The experiment implements the formulas by hand (with $\varphi = \tanh$) and compares them
# with autograd for both output variants; the control applies the sigmoid variant's
# $\delta$ to the affine model, a plausible slip the comparison must catch. It then measures
# the regulariser's contribution with autograd alone, checks that sample $i$'s input
# gradient ignores the other samples, and pushes the affine outputs out of $(0,1)$.

# %%
N, d, h, lam = 32, 4, 6, 0.1
X = torch.randn(N, d)
y = (torch.rand(N) < 0.5).double()
W1, b1 = torch.randn(h, d) / 2, torch.randn(h) / 2
W2, b2 = torch.randn(1, h) / 20, torch.tensor([0.5])  # keeps the affine output in (0, 1)
names = ["W1", "b1", "W2", "b2", "x"]


def mlp_loss(W1, b1, W2, b2, X, sigmoid_output: bool, lam: float = lam):
    """L_S of the question; with sigmoid_output, the common variant y_hat = sigmoid(s)."""
    y_hat = (torch.tanh(X @ W1.T + b1) @ W2.T + b2).squeeze(1)
    if sigmoid_output:
        y_hat = torch.sigmoid(y_hat)
    bce = -(y * torch.log(y_hat) + (1 - y) * torch.log(1 - y_hat)).mean()
    return bce + lam / 2 * (W1.square().sum() + W2.square().sum())


def hand_gradients(W1, b1, W2, b2, X, sigmoid_output: bool, delta_rule: str | None = None):
    """The formulas of the answer, in matrix form (phi = tanh, phi' = 1 - tanh^2).
    ``delta_rule`` overrides the output error: "affine" or "sigmoid"."""
    Z = X @ W1.T + b1                      # (N, h)
    A = torch.tanh(Z)                      # (N, h)
    s = (A @ W2.T + b2).squeeze(1)         # (N,)
    y_hat = torch.sigmoid(s) if sigmoid_output else s
    rule = delta_rule or ("sigmoid" if sigmoid_output else "affine")
    delta = y_hat - y if rule == "sigmoid" else (y_hat - y) / (y_hat * (1 - y_hat))
    delta = delta[:, None] / N             # (N, 1): dL/dy_hat of each sample, with the 1/N
    G = (delta @ W2) * (1 - A**2)          # (N, h): dL/dz of each sample
    return {"W1": G.T @ X + lam * W1, "b1": G.sum(0), "W2": delta.T @ A + lam * W2,
            "b2": delta.sum(0), "x": G @ W1}


def autograd_gradients(sigmoid_output: bool, lam: float = lam, X=X):
    leaves = [t.clone().requires_grad_() for t in (W1, b1, W2, b2, X)]
    loss = mlp_loss(*leaves, sigmoid_output=sigmoid_output, lam=lam)
    return dict(zip(names, torch.autograd.grad(loss, leaves)))


errors = {}
for sigmoid_output in (False, True):
    reference = autograd_gradients(sigmoid_output)
    hand = hand_gradients(W1, b1, W2, b2, X, sigmoid_output)
    errors[sigmoid_output] = {k: relative_error(hand[k], reference[k]) for k in names}
    variant = "sigmoid output" if sigmoid_output else "affine output (as written)"
    print(f"{variant:27s} relative error of the formulas: "
          + ", ".join(f"{k} {e:.1e}" for k, e in errors[sigmoid_output].items()))
slip = hand_gradients(W1, b1, W2, b2, X, sigmoid_output=False, delta_rule="sigmoid")
affine_reference = autograd_gradients(False)
slip_errors = {k: relative_error(slip[k], affine_reference[k]) for k in names}
print("control: the sigmoid's delta = y_hat - y on the affine model, relative error: "
      + ", ".join(f"{k} {e:.2f}" for k, e in slip_errors.items()))

check("backprop.1", "affine output: all five formulas (shapes included) match autograd",
      max(errors[False].values()), "<", 1e-10)
check("backprop.1", "sigmoid output: the formulas with delta = y_hat - y match autograd",
      max(errors[True].values()), "<", 1e-10)
control("backprop.1", "the comparison catches a wrong delta (the sigmoid's, on the affine "
        "model): worst relative error", max(slip_errors.values()), ">", 0.5)

# %%
# The regulariser's part, with autograd alone: the gradients with lambda minus those without.
with_reg, without_reg = autograd_gradients(False), autograd_gradients(False, lam=0.0)
reg_part = {k: with_reg[k] - without_reg[k] for k in names}
print({k: f"{(reg_part[k] - lam * w).abs().max().item():.1e}"
       for k, w in (("W1", W1), ("W2", W2))}, "= max |regulariser's part - lambda W|")
check("backprop.1", "the regulariser adds exactly lambda * W to the weight gradients",
      max(relative_error(reg_part["W1"], lam * W1), relative_error(reg_part["W2"], lam * W2)),
      "<", 1e-10)
check("backprop.1", "and nothing to the gradients of b1, b2 and x",
      max(reg_part[k].abs().max().item() for k in ("b1", "b2", "x")), "<", 1e-14)

# Sample 0's input gradient ignores the other samples.
X_other = X.clone()
X_other[1:] += 0.3 * torch.randn(N - 1, d)
moved = autograd_gradients(False, X=X_other)
check("backprop.1", "changing the other samples leaves sample 0's input gradient unchanged",
      relative_error(moved["x"][0], with_reg["x"][0]), "<", 1e-12)
control("backprop.1", "while the weight gradient, a sum over samples, does change",
        relative_error(moved["W1"], with_reg["W1"]), ">", 1e-3)

# Outside (0, 1) the BCE of an affine output is undefined.
y_affine = (torch.tanh(X @ W1.T + b1) @ W2.T + b2).squeeze(1)
check("backprop.1", "the affine outputs used above lie in (0, 1), where the BCE is defined: "
      "distance of the closest one to 0 or 1", min(y_affine.min(), 1 - y_affine.max()), ">", 0)
big_W2 = W2 * 40
y_big = (torch.tanh(X @ W1.T + b1) @ big_W2.T + b2).squeeze(1)
outside = int(((y_big <= 0) | (y_big >= 1)).sum())
loss_big = mlp_loss(W1, b1, big_W2, b2, X, sigmoid_output=False)
print(f"with 40 x W2: {outside}/{N} affine outputs leave (0, 1) and the BCE loss is {float(loss_big)}")
check("backprop.1", "an affine output outside (0, 1) makes the BCE undefined (NaN)",
      math.isnan(loss_big.item()), "==", True)
control("backprop.1", "with a sigmoid output the same weights give a finite loss",
        math.isfinite(mlp_loss(W1, b1, big_W2, b2, X, sigmoid_output=True).item()), "==", True)

# %% [markdown]
# ### backprop.2 · numerical gradients and their drawbacks
# The derivative of a function $f(\vec{x})$ at a point $\vec{x}_0$ is
# $$
# f'(\vec{x}_0)=\lim_{\Delta\vec{x}\to 0} \frac{f(\vec{x}_0+\Delta\vec{x})-f(\vec{x}_0)}{\Delta\vec{x}}
# $$
# - A. Explain how this formula can be used in order to compute gradients of neural network
#   parameters numerically, without automatic differentiation (AD).
# - B. What are the drawbacks of this approach? List at least two drawbacks compared to AD.

# %% [markdown]
# **Answer:**
#
# **A.** Dividing by a vector means nothing, so apply it per coordinate: each partial
# derivative of the loss $L(\boldsymbol{\theta})$ is a 1-D derivative along
# $\boldsymbol{e}_j$. Drop the limit, take a small step $\epsilon$:
# $$\frac{\partial L}{\partial \theta_j} \approx \frac{L(\boldsymbol{\theta}+\epsilon\boldsymbol{e}_j) - L(\boldsymbol{\theta})}{\epsilon} \quad\text{or better}\quad \frac{L(\boldsymbol{\theta}+\epsilon\boldsymbol{e}_j) - L(\boldsymbol{\theta}-\epsilon\boldsymbol{e}_j)}{2\epsilon},$$
# with errors $\frac{\epsilon}{2}L''$ and $\frac{\epsilon^2}{6}L'''$. For each parameter
# entry: add $\epsilon$ in place, compute the loss, subtract $2\epsilon$, compute it again,
# restore, store the quotient. Only forward passes are needed.
#
# **B.** (1) *Cost:* $2n$ forward passes for $n$ parameters, against about 2 to 3 forward
# passes for reverse-mode AD, whatever $n$. (2) *Accuracy:* truncation plus round-off
# $\approx u|L|/\epsilon$; float32 keeps only about 5 to 6 correct digits, so float64 is
# needed; AD is exact to round-off. (3) *The step must be tuned.* (4) *Kinks:* at ReLU's $0$
# the quotient gives $0.5$, AD a subgradient ($0$). (5) A random loss (dropout) breaks it.

# %% [markdown]
# **Why, in detail.** By Taylor's theorem the forward quotient is off by
# $\frac{\epsilon}{2}L''(\theta) + O(\epsilon^2)$, while in the central one the even terms
# cancel, leaving $\frac{\epsilon^2}{6}L''' + O(\epsilon^4)$. Subtracting two nearly equal
# floating-point numbers adds a round-off error of about $u\,|L|/\epsilon$ ($u$ the unit
# round-off, $2^{-24}\approx 6\times10^{-8}$ in float32, $2^{-53}$ in float64), so the total
# error $C\epsilon^{p} + u|L|/\epsilon$ ($p = 1$ forward, $2$ central) is smallest near
# $\epsilon \sim u^{1/2}$ (forward) or $u^{1/3}$ (central), where the rule of thumb predicts
# about a half (forward) or two thirds (central) of the digits. For the function below the
# constants are favourable and float32 does a little better than that (about 5 and 6 of its
# 7 digits), still far from AD in float32 (about 7) and from central differences in float64
# (about 12). Reverse-mode AD costs one forward and one backward pass, the backward about
# twice the forward's arithmetic, for the whole gradient. At a kink the two sides of the
# central quotient straddle the corner and average the one-sided slopes, whereas PyTorch
# returns the subgradient $0$ for ReLU at $0$. A random loss changes between the two
# evaluations by far more than $\epsilon\,\partial L/\partial\theta_j$. Because it needs only
# forward passes, the method is used to check a hand-written backward pass; its step must be
# tuned to the dtype and the function.
#
# The experiments, each with its control: the per-coordinate loop against autograd (control:
# one step along all coordinates at once, the naive reading of dividing by $\Delta\vec{x}$);
# the error's slope against $\epsilon$ for both quotients; the arithmetic (floating-point
# operations of the matrix products, counted by PyTorch) of numerical and automatic
# gradients as $n$ grows; the error against $\epsilon$ in float32 and float64; ReLU at its
# kink (control: away from it); and a loss with dropout (control: the same masks at both
# evaluations).

# %%
x_data, y_data = torch.randn(64, 20), torch.randn(64, 1)


def mlp_params(hidden: int) -> list[torch.Tensor]:
    return [torch.randn(hidden, 20) / 5, torch.randn(1, hidden) / 5]


def small_mlp_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(torch.tanh(x_data @ first.T) @ second.T, y_data)


def flops_of(fn) -> int:
    """Floating-point operations of the matrix products that ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# A. The per-coordinate loop computes the gradient; a step along all coordinates does not.
params = mlp_params(8)
leaves = [p.clone().requires_grad_() for p in params]
reference = torch.autograd.grad(small_mlp_loss(*leaves), leaves)
loop = [numerical_grad(lambda: small_mlp_loss(*params), p) for p in params]
eps_all = 1e-6
whole_step = [(small_mlp_loss(*[q + eps_all * (q is p) for q in params])
               - small_mlp_loss(*[q - eps_all * (q is p) for q in params])) / (2 * eps_all)
              for p in params]  # one number per tensor: the derivative along (1, 1, ..., 1)
loop_error = max(relative_error(g, r) for g, r in zip(loop, reference))
whole_error = max(relative_error(torch.full_like(r, float(w)), r)
                  for w, r in zip(whole_step, reference))
print(f"per-coordinate loop: relative error {loop_error:.1e}; one step along all "
      f"coordinates: {whole_error:.2f}")
check("backprop.2.A", "central differences per coordinate give the gradient (float64)",
      loop_error, "<", 1e-7)
control("backprop.2.A", "one step along all coordinates at once does not give the gradient",
        whole_error, ">", 0.5)

# B(1). Cost: numerical gradients take 2n forward passes, AD a constant multiple of one.
calls = {"forward": 0, "backward": 0}  # counted inside the loss and by a hook on it


def counted_loss(*tensors: torch.Tensor) -> torch.Tensor:
    calls["forward"] += 1
    loss = small_mlp_loss(*tensors)
    if loss.requires_grad:
        loss.register_hook(lambda g: calls.update(backward=calls["backward"] + 1))
    return loss


def calls_made(fn) -> tuple[int, int]:
    """(forward, backward) passes of the loss that ``fn`` runs, counted as they happen."""
    calls.update(forward=0, backward=0)
    fn()
    return calls["forward"], calls["backward"]


rows = []
for hidden in (2, 8, 32, 128):
    params = mlp_params(hidden)
    n = sum(p.numel() for p in params)
    leaves = [p.clone().requires_grad_() for p in params]
    forward = flops_of(lambda params=params: small_mlp_loss(*params))
    ad_calls: list[tuple[int, int]] = []
    ad = flops_of(lambda leaves=leaves, ad_calls=ad_calls: ad_calls.append(calls_made(
        lambda: torch.autograd.grad(counted_loss(*leaves), leaves))))
    numeric_calls: list[tuple[int, int]] = []
    numeric = (flops_of(lambda params=params, numeric_calls=numeric_calls: numeric_calls.append(
        calls_made(lambda: [numerical_grad(lambda: counted_loss(*params), p) for p in params])))
        if hidden <= 8 else None)
    rows.append(dict(n=n, forward=forward, ad=ad / forward, ad_calls=ad_calls[0],
                     numeric=None if numeric is None else numeric / forward,
                     numeric_calls=numeric_calls[0][0] if numeric_calls else None))
print(f"{'n':>6s}{'numerical, in forward passes':>30s}{'AD, in forward passes':>24s}"
      f"{'loss calls: numerical':>23s}{'AD (fwd, bwd)':>15s}")
for r in rows:
    shown = "-" if r["numeric"] is None else f"{r['numeric']:.0f}"
    shown_calls = "-" if r["numeric_calls"] is None else str(r["numeric_calls"])
    print(f"{r['n']:6d}{shown:>30s}{r['ad']:24.2f}{shown_calls:>23s}{str(r['ad_calls']):>15s}")

log_n = [math.log(r["n"]) for r in rows]
ad_slope = (math.log(rows[-1]["ad"]) - math.log(rows[0]["ad"])) / (log_n[-1] - log_n[0])
counted = [r for r in rows if r["numeric"] is not None]
check("backprop.2.B", "numerical gradients cost 2n forward passes (counted arithmetic)",
      max(abs(r["numeric"] / (2 * r["n"]) - 1) for r in counted), "<", 1e-9)
check("backprop.2.B", "and 2n calls of the loss, counted inside it as the loop runs "
      "(calls / n)", [r["numeric_calls"] / r["n"] for r in counted], "==", [2.0] * len(counted))
control("backprop.2.B", "autograd calls the loss once and runs one backward pass, whatever n "
        "(the most of either, n = 42 to 2688)",
        max(max(r["ad_calls"]) for r in rows), "==", 1)
control("backprop.2.B", "so the numerical loop's calls grow n-fold against AD's one "
        "(calls at the largest counted n)", counted[-1]["numeric_calls"], ">", 100)
check("backprop.2.B", "AD costs a small constant multiple (2 to 3) of one forward pass: "
      "the largest, over n", max(r["ad"] for r in rows), "between", (1.5, 3.5))
control("backprop.2.B", "AD's cost per forward pass does not grow with n (log-log slope)",
        abs(ad_slope), "<", 0.05)

fig, ax = plt.subplots(figsize=(5.2, 3.2))
n_line = [r["n"] for r in rows]
ax.loglog(n_line, [2 * n for n in n_line], "-", color="gray", label="$2n$")
ax.loglog([r["n"] for r in counted], [r["numeric"] for r in counted], "o",
          label="central differences (counted)")
ax.loglog(n_line, [r["ad"] for r in rows], "s-", label="autograd (forward + backward)")
ax.set(xlabel="number of parameters $n$", ylabel="cost in forward passes",
       title="Arithmetic of one gradient")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The error of the difference quotient against the step, for $f(x) = e^{x}\sin x$ (exact
# derivative $e^{x}(\sin x + \cos x)$) at five points $x_0$, in float32 and float64; the plot
# shows $x_0 = 0.7$, the table the median over the points.

# %%
def f_scalar(x):
    return torch.exp(x) * torch.sin(x)


points = [0.3, 0.7, 1.1, 1.5, 1.9]
steps = torch.logspace(-15, -1, 57, dtype=torch.float64)
curves = {}  # (dtype, method) -> relative errors, shape (points, steps)
for dtype in (torch.float32, torch.float64):
    for method in ("forward", "central"):
        table = []
        for x0 in points:
            exact = math.exp(x0) * (math.sin(x0) + math.cos(x0))
            x = torch.tensor(x0, dtype=dtype)
            errors = []
            for eps in steps.tolist():
                e = torch.tensor(eps, dtype=dtype)
                if method == "forward":
                    quotient = (f_scalar(x + e) - f_scalar(x)) / e
                else:
                    quotient = (f_scalar(x + e) - f_scalar(x - e)) / (2 * e)
                errors.append(max(abs(float(quotient) - exact) / abs(exact), 1e-17))
            table.append(errors)
        curves[(dtype, method)] = torch.tensor(table)

fig, ax = plt.subplots(figsize=(5.6, 3.4))
for (dtype, method), errors in curves.items():
    ax.loglog(steps, errors[1], label=f"{method}, {str(dtype).removeprefix('torch.')}")
ax.set(xlabel=r"step $\epsilon$", ylabel="relative error of the derivative",
       title=r"$f(x) = e^x \sin x$ at $x_0 = 0.7$")
ax.legend(fontsize=8)
plt.show()

summary = {}
print(f"{'dtype':8s} {'method':8s} {'digits':>7s} {'best eps':>9s} {'predicted eps':>13s} "
      f"{'truncation slope':>17s}")
large = steps > 1e-4  # where truncation dominates (float64)
for (dtype, method), errors in curves.items():
    unit = torch.finfo(dtype).eps / 2  # unit round-off
    predicted = unit ** (1 / 2) if method == "forward" else unit ** (1 / 3)
    best = errors.min(dim=1)
    best_eps = steps[best.indices]
    slope = torch.tensor([
        torch.linalg.lstsq(torch.stack([steps[large].log(), torch.ones(int(large.sum()))], 1),
                           row[large].log()[:, None]).solution[0, 0] for row in errors])
    summary[(dtype, method)] = dict(
        digits=float(-best.values.log10().median()),
        eps_offset=float((best_eps / predicted).log10().abs().max()),
        both_sides=float(torch.minimum(errors[:, 0], errors[:, -1]).div(best.values).min()),
        slope=float(slope.median()))
    s = summary[(dtype, method)]
    print(f"{str(dtype).removeprefix('torch.'):8s} {method:8s} {s['digits']:7.1f} "
          f"{float(best_eps.median()):9.1e} {predicted:13.1e} {s['slope']:17.2f}")

x32 = torch.tensor(points, dtype=torch.float32, requires_grad=True)
(autograd_32,) = torch.autograd.grad(f_scalar(x32).sum(), x32)
exact_all = torch.tensor([math.exp(p) * (math.sin(p) + math.cos(p)) for p in points])
autograd_digits = float(-((autograd_32.double() - exact_all).abs() / exact_all).log10().median())
print(f"autograd in float32: {autograd_digits:.1f} correct digits (median over the points)")
f32, f64 = torch.float32, torch.float64

check("backprop.2.A", "forward differences: truncation error proportional to eps (slope 1)",
      summary[(f64, "forward")]["slope"], "~", 1.0, tol=0.15)
check("backprop.2.A", "central differences: truncation error proportional to eps^2 (slope 2)",
      summary[(f64, "central")]["slope"], "~", 2.0, tol=0.15)
check("backprop.2.B", "float32 at the best step: about 5 correct digits (forward)",
      summary[(f32, "forward")]["digits"], "between", (4.3, 6.0))
check("backprop.2.B", "float32 at the best step: about 6 correct digits (central)",
      summary[(f32, "central")]["digits"], "between", (5.0, 6.8))
control("backprop.2.B", "float64 central differences keep many more digits (over 10)",
        summary[(f64, "central")]["digits"], ">", 10)
control("backprop.2.B", "AD in float32 keeps its 7 digits (round-off only)",
        autograd_digits, ">", 6.7)
check("backprop.2.B", "the best step lies near u^(1/2) (forward) or u^(1/3) (central): "
      "worst offset in decades", max(s["eps_offset"] for s in summary.values()), "<=", 1.5)
check("backprop.2.B", "the error grows on both sides of the best step (round-off left, "
      "truncation right) by over 100x", min(s["both_sides"] for s in summary.values()), ">", 100)

# %% [markdown]
# At a kink, ReLU at 0, and with a random loss:

# %%
relu_at = {}
for point in (0.0, 0.3):
    x_point = torch.tensor([point], requires_grad=True)
    (relu_autograd,) = torch.autograd.grad(torch.relu(x_point).sum(), x_point)
    (relu_numeric,) = numerical_gradient(lambda t: torch.relu(t).sum(), x_point.detach())
    relu_at[point] = (float(relu_autograd), float(relu_numeric))
    print(f"d relu/dx at {point}: autograd {relu_at[point][0]}, central difference "
          f"{relu_at[point][1]:.6f}")
check("backprop.2.B", "at ReLU's kink the central difference averages the slopes 0 and 1",
      relu_at[0.0][1], "~", 0.5, tol=1e-6)
check("backprop.2.B", "while autograd returns the subgradient 0", relu_at[0.0][0], "==", 0.0)
control("backprop.2.B", "away from the kink (x = 0.3) they agree",
        abs(relu_at[0.3][1] - relu_at[0.3][0]), "<", 1e-6)



def dropout_loss(w: torch.Tensor, same_mask: bool) -> torch.Tensor:
    """A loss with dropout inside; with same_mask, every evaluation draws the same mask."""
    if same_mask:
        torch.manual_seed(7)
    return F.dropout(inputs * w, 0.5, training=True).sum()


inputs = torch.randn(200)
w_drop = torch.tensor([1.0])
numeric_fresh = numerical_grad(lambda: dropout_loss(w_drop, False), w_drop)
numeric_same = numerical_grad(lambda: dropout_loss(w_drop, True), w_drop)
leaf = w_drop.clone().requires_grad_()
(autograd_same,) = torch.autograd.grad(dropout_loss(leaf, True), leaf)
print(f"dL/dw with dropout: autograd {float(autograd_same):.3f}; central difference with a "
      f"fresh mask per evaluation {float(numeric_fresh):.3g}, with the same mask "
      f"{float(numeric_same):.3f}")
check("backprop.2.B", "a random loss (fresh dropout masks) ruins the quotient: relative error",
      relative_error(numeric_fresh, autograd_same), ">", 100)
control("backprop.2.B", "with the same mask at both evaluations it is right again",
        relative_error(numeric_same, autograd_same), "<", 1e-6)
seed_everything(0)

# %% [markdown]
# ### backprop.3 · numerical gradients in code
# Given the following code snippet:
# - A. Write a short snippet that implements that calculates gradient of `loss` w.r.t. `W`
#   and `b` using the approach of numerical gradients from the previous question.
# - B. Calculate the same derivatives with autograd.
# - C. Show, by calling `torch.allclose()` that your numerical gradient is close to
#   autograd's gradient.

# %%
import torch

N, d = 100, 5
dtype = torch.float64
X = torch.rand(N, d, dtype=dtype)
W, b = torch.rand(d, d, requires_grad=True, dtype=dtype), torch.rand(d, requires_grad=True, dtype=dtype)

def foo(W, b):
    return torch.mean(X @ W + b)

loss = foo(W, b)
print(f"{loss=}")

# To fill in: calculate gradients numerically for W and b
# grad_W =...
# grad_b =...

# To fill in: compare with autograd using torch.allclose()
# autograd_W = ...
# autograd_b = ...
# assert torch.allclose(grad_W, autograd_W)
# assert torch.allclose(grad_b, autograd_b)

# %% [markdown]
# **Answer:**
#
# **A.** Perturb each entry in place (a copy would change nothing), restore it, store the
# central quotient:
# ```python
# def numerical_grad(loss_fn, param, eps=1e-6):
#     grad = torch.zeros_like(param)
#     with torch.no_grad():
#         flat, grad_flat = param.view(-1), grad.view(-1)
#         for j in range(flat.numel()):
#             original = flat[j].item()
#             flat[j] = original + eps
#             loss_plus = loss_fn().item()
#             flat[j] = original - eps
#             loss_minus = loss_fn().item()
#             flat[j] = original
#             grad_flat[j] = (loss_plus - loss_minus) / (2 * eps)
#     return grad
#
# grad_W = numerical_grad(lambda: foo(W, b), W)
# grad_b = numerical_grad(lambda: foo(W, b), b)
# ```
#
# **B.** `autograd_W, autograd_b = torch.autograd.grad(foo(W, b), (W, b))`.
#
# **C.** `torch.allclose(grad_W, autograd_W)` and `torch.allclose(grad_b, autograd_b)` are
# both `True`: $L$ is linear, so only round-off ($u|L|/\epsilon \approx
# 2\times10^{-10}$) separates them from the exact
# $$\frac{\partial L}{\partial W_{jk}} = \dfrac{1}{Nd}\sum_{n} X_{nj}, \qquad \frac{\partial L}{\partial b_k} = \dfrac{1}{d}.$$

# %% [markdown]
# **Why, in detail.** A frequent mistake is to write the perturbed value into
# `param.clone()`: the loss still reads the original tensor, both evaluations see the same
# parameters, and every "derivative" is exactly 0; the control below runs that version and
# `torch.allclose` rejects it. The exact gradient follows from
# $L = \frac{1}{Nd}\sum_{n,k}\bigl(\sum_j X_{nj}W_{jk} + b_k\bigr)$. The round-off is
# $u|L|/\epsilon$ with $u = 2^{-53}\approx 1.1\times10^{-16}$, $|L|\approx 1.8$ and
# $\epsilon = 10^{-6}$: about $2\times10^{-10}$, which the measurement reproduces; since
# nothing is lost to truncation for a linear loss, a *larger* step is more accurate here
# (the second control). `dlsummary.numerical_gradient` (batched, no Python loop) and
# `dlsummary.check_gradients` give the same result.

# %%
# A. Numerical gradients: perturb W and b themselves, one entry at a time
#    (numerical_grad is defined at the top of this section, as in the answer).
grad_W = numerical_grad(lambda: foo(W, b), W)
grad_b = numerical_grad(lambda: foo(W, b), b)

# B. The same derivatives with autograd.
autograd_W, autograd_b = torch.autograd.grad(foo(W, b), (W, b))

# C. They agree.
error_W = (grad_W - autograd_W).abs().max().item()
error_b = (grad_b - autograd_b).abs().max().item()
print(f"max |numerical - autograd|: W {error_W:.1e}, b {error_b:.1e}")
check("backprop.3", "torch.allclose(grad_W, autograd_W) holds",
      torch.allclose(grad_W, autograd_W), "==", True)
check("backprop.3", "torch.allclose(grad_b, autograd_b) holds",
      torch.allclose(grad_b, autograd_b), "==", True)

exact_W = (X.sum(0) / (N * d))[:, None].expand(d, d)
check("backprop.3", "autograd gives dL/dW_jk = sum_n X_nj / (N d) and dL/db_k = 1/d",
      max(relative_error(autograd_W, exact_W),
          relative_error(autograd_b, torch.full((d,), 1 / d))), "<", 1e-12)
round_off = torch.finfo(dtype).eps / 2 * abs(foo(W, b).item()) / 1e-6
print(f"predicted round-off u|L|/eps = {round_off:.1e}")
check("backprop.3", "the predicted round-off u|L|/eps is about 2e-10", round_off, "~", 2e-10,
      rel=0.25)
check("backprop.3", "the numerical error is that round-off: measured / predicted",
      max(error_W, error_b) / round_off, "between", (0.1, 10))
larger_step = numerical_grad(lambda: foo(W, b), W, eps=1e-2)
control("backprop.3", "no truncation error for a linear loss: eps = 1e-2 is over 100x "
        "more accurate than 1e-6", error_W / (larger_step - autograd_W).abs().max().item(),
        ">", 100)

# %%
# Control: the mistake of perturbing a copy that the loss never reads.
def perturb_a_copy(loss_fn, param, eps=1e-6):
    grad = torch.zeros_like(param)
    with torch.no_grad():
        for j in range(param.numel()):
            original = param.view(-1)[j].item()
            param_copy = param.clone()
            param_copy.view(-1)[j] = original + eps
            loss_plus = loss_fn()
            param_copy.view(-1)[j] = original - eps
            loss_minus = loss_fn()
            grad.view(-1)[j] = (loss_plus - loss_minus) / (2 * eps)
    return grad


copy_W = perturb_a_copy(lambda: foo(W, b), W)
print("perturbing a copy gives dL/dW =", copy_W.unique().tolist())
control("backprop.3", "perturbing a copy gives all-zero differences",
        int(torch.count_nonzero(copy_W)), "==", 0)
control("backprop.3", "and torch.allclose rejects that gradient",
        torch.allclose(copy_W, autograd_W), "==", False)

batched_W, batched_b = numerical_gradient(foo, W, b)
check("backprop.3", "dlsummary.numerical_gradient (batched) agrees with autograd",
      max(relative_error(batched_W, autograd_W), relative_error(batched_b, autograd_b)),
      "<", 1e-8)
gradient_check = check_gradients(foo, W, b, names=["W", "b"])
print(gradient_check)
check("backprop.3", "dlsummary's gradient check of foo passes", gradient_check.passed, "==", True)
torch.set_default_dtype(torch.float32)  # restore the default for later sections
