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
# ## Dropout

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlsummary import plot_style, seed_everything
from dlsummary.evidence import check, control

plot_style()
seed_everything(0)


def drop_statistics(layer: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Apply a dropout stack once in training mode: the fraction of zeroed entries and the
    distinct factors by which the surviving entries were scaled."""
    layer.train()
    y = layer(x)
    kept = y != 0
    return 1.0 - kept.float().mean().item(), torch.unique((y[kept] / x[kept]).round(decimals=5))

# %% [markdown]
# ### dropout.1 · two dropouts as one
# Consider the following neural network:
#
# ```python
# import torch.nn as nn
#
# p1, p2 = 0.1, 0.2
# nn.Sequential(
#     nn.Conv2d(in_channels=3, out_channels=4, kernel_size=3, padding=1),
#     nn.ReLU(),
#     nn.Dropout(p=p1),
#     nn.Dropout(p=p2),
# )
# ```
#
# If we want to replace the two consecutive dropout layers with a single one defined as
# follows:
# ```python
# nn.Dropout(p=q)
# ```
# what would the value of `q` need to be? Write an expression for `q` in terms of `p1` and `p2`.

# %% [markdown]
# **Answer:** $q = 1-(1-p_1)(1-p_2) = p_1+p_2-p_1p_2$, here $0.28$. The two layers drop
# independently, and an activation survives the pair only if both keep it:
# $P(\text{kept}) = (1-p_1)(1-p_2)$. (Not $p_1+p_2 = 0.3$, which counts twice the units that
# both layers drop.) The scaling matches too: a survivor is multiplied by
# $\frac{1}{1-p_1}\cdot\frac{1}{1-p_2} = \frac{1}{1-q}$, as by `nn.Dropout(p=q)`. Each
# activation is $0$ with probability $q$ and $a/(1-q)$ otherwise: an exact replacement (and
# both are the identity in evaluation mode).

# %% [markdown]
# **Why, in detail.** PyTorch's dropout is *inverted* dropout: it divides the kept
# activations by the keep probability during training, so nothing changes at test time.
# Two stacked layers therefore keep a unit with probability $(1-p_1)(1-p_2)$ and scale it by
# the inverse of that probability, which is the definition of one dropout layer with
# $1-q = (1-p_1)(1-p_2)$.
#
# The experiment applies both stacks to 400,000 positive activations (so that a zero means
# "dropped") and measures the fraction that is zeroed and the factors by which the survivors
# are scaled; the naive $p_1+p_2$ is the control, which the measured rate must reject. The
# plot repeats the drop-rate measurement for a range of $p_2$.

# %%
p1, p2 = 0.1, 0.2
q = 1 - (1 - p1) * (1 - p2)
x = torch.rand(400_000) + 0.5  # strictly positive, so a zero means "dropped"

two = nn.Sequential(nn.Dropout(p=p1), nn.Dropout(p=p2))
one = nn.Dropout(p=q)
rate_two, scales_two = drop_statistics(two, x)
rate_one, scales_one = drop_statistics(one, x)
se = (q * (1 - q) / x.numel()) ** 0.5  # standard error of a measured drop rate

print(f"q = 1-(1-p1)(1-p2) = {q:.4f}   (standard error of a measured rate: {se:.5f})")
print(f"{'':24s}{'drop rate':>10s}{'survivor scales':>18s}")
for name, rate, scales in [("Dropout(p1), Dropout(p2)", rate_two, scales_two),
                           ("Dropout(q)", rate_one, scales_one)]:
    print(f"{name:24s}{rate:10.4f}{', '.join(f'{s:.5f}' for s in scales.tolist()):>18s}")
print(f"{'1/(1-q)':24s}{'':10s}{1 / (1 - q):18.5f}")

check("dropout.1", "two stacked dropouts drop a fraction q = 1-(1-p1)(1-p2) (within 5 s.e.)",
      rate_two, "~", q, tol=5 * se)
check("dropout.1", "Dropout(q) drops the same fraction q", rate_one, "~", q, tol=5 * se)
control("dropout.1", "the measured rate rejects the naive p1 + p2 (more than 20 s.e. away)",
        abs(rate_two - (p1 + p2)) / se, ">", 20)
check("dropout.1", "every survivor of the pair is scaled by the same factor",
      len(scales_two), "==", 1)
check("dropout.1", "the pair scales survivors by 1/(1-q)", scales_two[0], "~", 1 / (1 - q),
      rel=1e-4)
check("dropout.1", "Dropout(q) scales survivors by the same factor as the pair",
      scales_one[0], "~", scales_two[0].item(), rel=1e-4)
check("dropout.1", "in evaluation mode the pair and the single layer are the identity",
      max((two.eval()(x) - x).abs().max().item(), (one.eval()(x) - x).abs().max().item()),
      "==", 0.0)

# %%
p2_grid = torch.linspace(0.0, 0.9, 10)
x_small = torch.rand(100_000) + 0.5
measured = torch.tensor([drop_statistics(nn.Sequential(nn.Dropout(p1), nn.Dropout(float(b))),
                                         x_small)[0] for b in p2_grid])
exact = 1 - (1 - p1) * (1 - p2_grid)
naive = p1 + p2_grid
se_grid = (exact * (1 - exact) / x_small.numel()).sqrt().clamp_min(1e-4)

fig, ax = plt.subplots(figsize=(5.2, 3.2))
ax.plot(p2_grid, exact, "-", label=r"$q = 1-(1-p_1)(1-p_2)$")
ax.plot(p2_grid, naive, ":", label=r"naive $p_1+p_2$")
ax.plot(p2_grid, measured, "o", label="measured (two stacked dropouts)")
ax.set(xlabel="$p_2$", ylabel="fraction dropped", title=f"Two stacked dropouts, $p_1={p1}$")
ax.legend(fontsize=8)
plt.show()

check("dropout.1", "over p2 in [0, 0.9] the measured rate stays within 5 s.e. of 1-(1-p1)(1-p2)",
      ((measured - exact).abs() / se_grid).max(), "<", 5)
control("dropout.1", "at p2 = 0.9 the naive p1 + p2 is more than 20 s.e. off the measured rate",
        ((measured[-1] - naive[-1]).abs() / se_grid[-1]), ">", 20)

# %% [markdown]
# ### dropout.2 · where to place dropout
# **True or false**: dropout must be placed only after the activation function.

# %% [markdown]
# **Answer:** **False.** Dropout multiplies each unit by a random $d\in\{0, \frac{1}{1-p}\}$,
# and either order is a valid regulariser. For ReLU and leaky ReLU, positively homogeneous
# ($\varphi(cz) = c\,\varphi(z)$ for $c\ge0$), $\varphi(dz) = d\,\varphi(z)$: the two
# placements are the same function. For tanh or sigmoid the orders differ but both work:
# before tanh a survivor becomes $\tanh\frac{z}{1-p}$, not $\frac{\tanh z}{1-p}$ (the
# expectation is no longer exactly kept); before a sigmoid a dropped unit outputs
# $\sigma(0)=\frac12$, perturbed rather than silenced. Dropout is also put on inputs,
# attention weights and residual branches: placement is a design choice, not a rule.

# %% [markdown]
# **Why, in detail.** With inverted dropout $d = m/(1-p)$, $m\sim\text{Bernoulli}(1-p)$,
# compare $d\,\varphi(z)$ (after) with $\varphi(dz)$ (before) under the same mask. Positive
# homogeneity, which implies $\varphi(0)=0$, makes them equal for both values of $d$: same
# outputs, same gradients, same training run. For tanh, $\tanh(0)=0$, so dropped units are
# $0$ either way, but the survivors differ and $\E{\tanh(dz)} \ne \tanh z$. For the sigmoid,
# $\sigma(0)=\frac12$, and dropout before it does not silence anything. Dropout after the
# activation is the same as dropout on the inputs of the next layer, which is where it acts.
# (One practical caveat, not measured here: dropout right before a BatchNorm layer makes the
# statistics BatchNorm collects in training differ from those it meets at test time.)
#
# The experiment applies both orders with the *same* random mask, for ReLU-like activations
# and for tanh and sigmoid as the control, and computes one unit's exact expected output
# over the two outcomes of the mask. Then a small classifier is trained with each placement.

# %%
z = torch.randn(100_000)
p = 0.5


def same_mask_dropout(t: torch.Tensor, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)  # the same seed gives the same Bernoulli mask for the same shape
    return F.dropout(t, p=p, training=True)


activations = {"ReLU": F.relu, "LeakyReLU": F.leaky_relu, "tanh": torch.tanh,
               "sigmoid": torch.sigmoid}
z0 = torch.tensor(1.0)  # one unit: its expected output over the two outcomes of the mask
print(f"{'activation':11s}{'max |after - before|':>22s}{'E[before] at z=1':>18s}"
      f"{'E[after] = phi(1)':>19s}")
gaps, expectation_gaps = {}, {}
for name, act in activations.items():
    after = same_mask_dropout(act(z))  # dropout(phi(z))
    before = act(same_mask_dropout(z))  # phi(dropout(z))
    gaps[name] = (after - before).abs().max().item()
    e_before = ((1 - p) * act(z0 / (1 - p)) + p * act(torch.tensor(0.0))).item()
    expectation_gaps[name] = abs(e_before - act(z0).item())
    print(f"{name:11s}{gaps[name]:22.3g}{e_before:18.4f}{act(z0).item():19.4f}")

dropped = same_mask_dropout(z) == 0
sig_dropped = torch.sigmoid(same_mask_dropout(z))[dropped]
print(f"sigmoid after dropout-before: the {int(dropped.sum())} 'dropped' units output "
      f"{sig_dropped.unique().tolist()}")

check("dropout.2", "ReLU and leaky ReLU: dropout before and after give the same outputs",
      max(gaps["ReLU"], gaps["LeakyReLU"]), "<=", 1e-6)
control("dropout.2", "tanh and sigmoid (not homogeneous): the two orders differ",
        min(gaps["tanh"], gaps["sigmoid"]), ">", 0.1)
check("dropout.2", "dropout before ReLU keeps the unit's expected output phi(z)",
      expectation_gaps["ReLU"], "<", 1e-6)
control("dropout.2", "dropout before tanh or sigmoid changes the unit's expected output",
        min(expectation_gaps["tanh"], expectation_gaps["sigmoid"]), ">", 0.01)
check("dropout.2", "a unit dropped before a sigmoid outputs 1/2, not 0",
      sig_dropped.unique().tolist(), "==", [0.5])

# %% [markdown]
# Both placements train. A one-hidden-layer classifier (128 units, dropout 0.3) on a
# synthetic four-class problem (labels from a random teacher network), trained by plain SGD
# with each placement from the same initialisation and the same mini-batches: with ReLU the
# two runs are the same run, weight for weight; with tanh they are different runs (the
# control) that reach about the same test accuracy. That the accuracy gap could see a worse
# setting is shown by a third tanh run, the same in every respect but with dropout
# $p = 0.95$ before the activation: it scores clearly lower.

# %%
teacher = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))
with torch.no_grad():
    inputs = torch.randn(3000, 20)
    classes = teacher(inputs).argmax(1)
train_x, test_x, train_y, test_y = inputs[:2000], inputs[2000:], classes[:2000], classes[2000:]


def train_classifier(order: str, act: nn.Module, steps: int = 300, lr: float = 0.3,
                     p: float = 0.3):
    """Plain SGD on cross-entropy; returns the test accuracy and the final weights."""
    seed_everything(1)  # same initialisation, masks and batches for every placement
    hidden = [act, nn.Dropout(p)] if order == "after" else [nn.Dropout(p), act]
    model = nn.Sequential(nn.Linear(20, 128), *hidden, nn.Linear(128, 4))
    params = list(model.parameters())
    for _ in range(steps):
        batch = torch.randint(0, len(train_x), (128,))
        loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for param, grad in zip(params, grads):
                param -= lr * grad
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    return accuracy, torch.cat([w.detach().flatten() for w in params])


runs = {(name, order): train_classifier(order, act)
        for name, act in [("ReLU", nn.ReLU()), ("tanh", nn.Tanh())]
        for order in ("after", "before")}
too_much = train_classifier("before", nn.Tanh(), p=0.95)[0]  # control: same run, p = 0.95
weight_gap = {name: (runs[(name, "after")][1] - runs[(name, "before")][1]).abs().max().item()
              for name in ("ReLU", "tanh")}
for (name, order), (accuracy, _) in runs.items():
    print(f"{name:5s} dropout {order:6s} the activation: test accuracy {accuracy:.3f}")
print(f"tanh, dropout p=0.95 before the activation: test accuracy {too_much:.3f}")
print("max |weights(after) - weights(before)|:", {k: f"{v:.2g}" for k, v in weight_gap.items()})

check("dropout.2", "with ReLU the two placements give the same training run (same weights)",
      weight_gap["ReLU"], "<=", 1e-6)
control("dropout.2", "with tanh the two placements are different training runs",
        weight_gap["tanh"], ">", 1e-3)
check("dropout.2", "every placement trains: test accuracy above 0.85",
      min(accuracy for accuracy, _ in runs.values()), ">", 0.85)
check("dropout.2", "tanh: dropout before and after reach about the same test accuracy",
      abs(runs[("tanh", "after")][0] - runs[("tanh", "before")][0]), "<", 0.03)
control("dropout.2", "the same accuracy gap detects a setting that hurts: tanh with dropout "
        "p=0.95 before it falls more than 0.03 below p=0.3",
        runs[("tanh", "before")][0] - too_much, ">", 0.03)
control("dropout.2", "guessing the majority class scores far below the trained nets' 0.85",
        torch.bincount(test_y).max().item() / len(test_y), "<", 0.6)

# %% [markdown]
# ### dropout.3 · why dropout scales by 1/(1-p)
# After applying dropout with a drop-probability of $p$, the activations are scaled by
# $1/(1-p)$. Prove that this scaling is required in order to maintain the value of each
# activation unchanged in expectation.

# %% [markdown]
# **Answer:** In training, dropout replaces an activation $a$ by $\tilde a = c\,m\,a$, with
# keep-mask $m\sim\text{Bernoulli}(1-p)$ ($1$ with probability $1-p$, else $0$) and a
# scale $c$ on kept units. $a$ is fixed with
# respect to the dropout noise, so
# $$\E{\tilde a} = c\,a\,\E{m} = c\,a\,\bigl((1-p)\cdot 1 + p\cdot 0\bigr) = c\,(1-p)\,a .$$
# $\E{\tilde a} = a$ for every $a$ holds if and only if $c\,(1-p) = 1$, i.e.
# $c = \dfrac{1}{1-p}$: sufficient and the only choice, hence required. Without it the
# training expectation is $(1-p)\,a$, and at test time, with dropout off, the next layer
# would receive inputs $\frac{1}{1-p}$ times larger than in training.

# %% [markdown]
# **Why, in detail.** The original formulation of dropout leaves training unscaled and
# multiplies by $1-p$ at test time; inverted dropout moves that factor into training so that
# inference needs no change. Two refinements. The variance is *not* preserved:
# $\operatorname{Var}[\tilde a] = a^2\,\frac{p}{1-p}$; that noise is the regulariser. And the
# expectation is kept for each unit and for any *linear* function of the units
# ($\E{\mat{W}\tilde{\vec a}} = \mat{W}\vec a$), not through a non-linearity: in general
# $\E{\varphi(\tilde a)} \ne \varphi(a)$.
#
# The experiment draws keep-masks $m$ independently of PyTorch's dropout and measures, for
# several $p$, the mean of the unscaled $m\,a$ (the control: it is $(1-p)a$, not $a$) and the
# scale $c^* = a / \overline{m\,a}$ that restores the expectation, which must come out as
# $1/(1-p)$. It then measures what `F.dropout` does: its survivor scale, the mean and the
# variance of its output, and the expectation through a linear map and through tanh.

# %%
a = 1.7
n = 500_000
ps = [0.1, 0.3, 0.5, 0.7, 0.9]
rows = []
print(f"{'p':>4s}{'mean of m*a':>13s}{'(1-p) a':>9s}{'c* measured':>13s}{'1/(1-p)':>9s}"
      f"{'F.dropout mean':>16s}{'scale':>8s}{'var / (a^2 p/(1-p))':>21s}")
for p in ps:
    keep = torch.bernoulli(torch.full((n,), 1 - p, dtype=torch.float64))
    unscaled_mean = (keep * a).mean().item()
    c_star = a / unscaled_mean
    se_mean = a * (p * (1 - p) / n) ** 0.5  # standard error of the mean of m*a
    se_c = se_mean / a / (1 - p) ** 2  # its effect on c* = a / mean (first order)

    dropped = F.dropout(torch.full((n,), a, dtype=torch.float64), p=p, training=True)
    survivor_scale = (dropped[dropped != 0] / a).unique()
    var_ratio = dropped.var().item() / (a**2 * p / (1 - p))
    q_keep = 1 - p
    kurtosis = (1 - 3 * q_keep * (1 - q_keep)) / (q_keep * (1 - q_keep))
    se_var = ((kurtosis - 1) / n) ** 0.5  # relative s.e. of a sample variance (first order)
    rows.append(dict(p=p, unscaled=unscaled_mean, c_star=c_star, se_mean=se_mean, se_c=se_c,
                     scaled=dropped.mean().item(), se_scaled=se_mean / (1 - p),
                     scale=survivor_scale, var_ratio=var_ratio, se_var=se_var))
    print(f"{p:4.1f}{unscaled_mean:13.4f}{(1 - p) * a:9.4f}{c_star:13.4f}{1 / (1 - p):9.4f}"
          f"{rows[-1]['scaled']:16.4f}{survivor_scale.tolist()[0]:8.4f}{var_ratio:21.4f}")

def worst(key: str, target, se_key: str) -> float:
    """The largest distance, in standard errors, of a measured quantity from its target."""
    return max(abs(r[key] - target(r["p"])) / r[se_key] for r in rows)


check("dropout.3", "for every p the scale c* that restores E = a is 1/(1-p) (within 6 s.e.)",
      worst("c_star", lambda p: 1 / (1 - p), "se_c"), "<", 6)
control("dropout.3", "without scaling the mean is (1-p)a: at least 20 s.e. away from a for every p",
        min(abs(r["unscaled"] - a) / r["se_mean"] for r in rows), ">", 20)
check("dropout.3", "F.dropout scales every survivor by 1/(1-p), for every p",
      max(float((r["scale"] * (1 - r["p"]) - 1).abs().max()) for r in rows), "<", 1e-9)
check("dropout.3", "F.dropout's output has mean a for every p (within 5 s.e.)",
      worst("scaled", lambda p: a, "se_scaled"), "<", 5)
check("dropout.3", "its variance is a^2 p/(1-p), the noise dropout adds: "
      "|var / (a^2 p/(1-p)) - 1| over (6 s.e. + 0.001), worst p",
      max(abs(r["var_ratio"] - 1) / (6 * r["se_var"] + 1e-3) for r in rows), "<", 1)

fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
axes[0].axhline(a, color="k", lw=0.8, label="$a$ (no dropout)")
axes[0].plot(ps, [r["scaled"] for r in rows], "o-", label=r"F.dropout (scaled by $1/(1-p)$)")
axes[0].plot(ps, [r["unscaled"] for r in rows], "s", label=r"$m\,a$ (no scaling), measured")
axes[0].plot(ps, [(1 - p) * a for p in ps], ":", color="gray", label="$(1-p)\\,a$")
axes[0].set(xlabel="drop probability $p$", ylabel=r"sample mean", title=f"Mean, $a$ = {a}")
axes[0].legend(fontsize=7)
p_line = torch.linspace(0.05, 0.92, 100)
axes[1].plot(p_line, 1 / (1 - p_line), "-", color="gray", label=r"$1/(1-p)$")
axes[1].plot(ps, [r["c_star"] for r in rows], "o", label=r"measured $c^* = a/\overline{m\,a}$")
axes[1].set(xlabel="drop probability $p$", ylabel="scale $c$", yscale="log",
            title="The scale that restores the mean")
axes[1].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %%
# The expectation survives a linear map, not a non-linearity.
p = 0.5
acts = torch.linspace(-2, 2, 8, dtype=torch.float64)
weights = torch.randn(3, 8, dtype=torch.float64)
samples = F.dropout(acts.expand(200_000, 8), p=p, training=True)  # (samples, units)
linear_mean = (samples @ weights.T).mean(0)
linear_se = ((samples @ weights.T).std(0) / samples.shape[0] ** 0.5)
tanh_gap = (torch.tanh(samples).mean(0) - torch.tanh(acts)).abs().max().item()
print("E[W a~] =", linear_mean.numpy().round(4), "  W a =", (weights @ acts).numpy().round(4))
print(f"max |E[tanh(a~)] - tanh(a)| over the units: {tanh_gap:.3f}")
check("dropout.3", "the expectation is kept through a linear map: E[W a~] = W a (within 5 s.e.)",
      ((linear_mean - weights @ acts).abs() / linear_se).max(), "<", 5)
control("dropout.3", "but not through tanh: E[tanh(a~)] differs from tanh(a)", tanh_gap, ">", 0.05)
