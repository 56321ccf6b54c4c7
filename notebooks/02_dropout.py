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

plot_style()
seed_everything(0)


def drop_statistics(layer: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Apply a dropout stack once in training mode: the fraction of zeroed entries and the
    distinct factors by which the surviving entries were scaled."""
    layer.train()
    y = layer(x)
    kept = y != 0
    return 1.0 - kept.float().mean().item(), torch.unique((y[kept] / x[kept]).round(decimals=6))

# %% [markdown]
# ### dropout.1
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
# **Answer:** $q = 1-(1-p_1)(1-p_2) = p_1 + p_2 - p_1p_2$, which is $0.28$ for $p_1=0.1,\ p_2=0.2$.
#
# Each dropout layer keeps every activation independently: the first with probability
# $1-p_1$, the second, independently of the first, with probability $1-p_2$. An activation
# survives the pair only if both keep it, so
# $$P(\text{kept}) = (1-p_1)(1-p_2) \quad\Longrightarrow\quad q = 1-(1-p_1)(1-p_2) = p_1+p_2-p_1p_2 .$$
# (Not $p_1+p_2=0.3$: that would count twice the activations that both layers drop, with
# probability $p_1p_2$.)
#
# The scaling matches too, so the single layer is an *exact* replacement, in distribution:
# PyTorch's dropout is *inverted* dropout, which divides the kept activations by the keep
# probability. A survivor of the pair is scaled by $\frac{1}{1-p_1}\cdot\frac{1}{1-p_2} =
# \frac{1}{(1-p_1)(1-p_2)} = \frac{1}{1-q}$, exactly what `nn.Dropout(p=q)` applies. In
# both cases each activation is independently $0$ with probability $q$ and $a/(1-q)$
# otherwise. In evaluation mode both are the identity.
#
# The experiment applies both stacks to a million activations and measures the fraction
# that is zeroed and the factor by which the survivors are scaled; the plot repeats the
# drop-rate measurement for a range of $p_2$.

# %%
p1, p2 = 0.1, 0.2
q = 1 - (1 - p1) * (1 - p2)
x = torch.rand(1_000_000) + 0.5  # strictly positive, so a zero means "dropped"

two = nn.Sequential(nn.Dropout(p=p1), nn.Dropout(p=p2))
one = nn.Dropout(p=q)
rate_two, scales_two = drop_statistics(two, x)
rate_one, scales_one = drop_statistics(one, x)

se = (q * (1 - q) / x.numel()) ** 0.5  # standard error of a measured drop rate
print(f"q = 1-(1-p1)(1-p2) = {q:.4f}   (standard error of a measured rate: {se:.5f})")
print(f"{'':24s}{'drop rate':>10s}{'survivor scales':>18s}")
for name, rate, scales in [("Dropout(p1), Dropout(p2)", rate_two, scales_two),
                           ("Dropout(q)", rate_one, scales_one)]:
    print(f"{name:24s}{rate:10.4f}{', '.join(f'{s:.6f}' for s in scales.tolist()):>18s}")
print(f"{'1/(1-q)':24s}{'':10s}{1 / (1 - q):18.6f}")

assert abs(rate_two - q) < 5 * se, f"two dropouts drop {rate_two:.4f}, not q={q:.4f}"
assert abs(rate_one - q) < 5 * se, f"Dropout(q) drops {rate_one:.4f}, not q={q:.4f}"
assert abs(rate_two - (p1 + p2)) > 20 * se, "the measured rate cannot tell q from p1+p2"
assert len(scales_two) == 1 and abs(scales_two.item() - 1 / (1 - q)) < 1e-5, \
    "survivors of the pair are not scaled by 1/(1-q)"
assert len(scales_one) == 1 and abs(scales_one.item() - scales_two.item()) < 1e-5, \
    "Dropout(q) scales survivors differently from the pair"
assert torch.equal(two.eval()(x), x) and torch.equal(one.eval()(x), x), "eval mode is not identity"

# %%
p2_grid = torch.linspace(0.0, 0.9, 10)
x_small = torch.rand(200_000) + 0.5
measured = [drop_statistics(nn.Sequential(nn.Dropout(p1), nn.Dropout(float(b))), x_small)[0]
            for b in p2_grid]
exact = 1 - (1 - p1) * (1 - p2_grid)
fig, ax = plt.subplots()
ax.plot(p2_grid, exact, "-", label=r"$q = 1-(1-p_1)(1-p_2)$")
ax.plot(p2_grid, p1 + p2_grid, ":", label=r"naive $p_1+p_2$")
ax.plot(p2_grid, measured, "o", label="measured (two stacked dropouts)")
ax.set(xlabel="$p_2$", ylabel="fraction dropped", title=f"Two stacked dropouts, $p_1={p1}$")
ax.legend()
plt.show()
worst = max(abs(m - e) for m, e in zip(measured, exact.tolist()))
assert worst < 0.01, f"measured drop rate is {worst:.3f} away from 1-(1-p1)(1-p2)"

# %% [markdown]
# ### dropout.2
# **True or false**: dropout must be placed only after the activation function.

# %% [markdown]
# **Answer:** **False.** Dropout can be placed before or after the activation (or on the
# inputs, on attention weights, on a residual branch); for ReLU-like activations the two
# orders give identical outputs, for others they give a different but equally valid
# regulariser.
#
# Inverted dropout multiplies each unit by an independent random factor $d = m/(1-p)$,
# $m\sim\text{Bernoulli}(1-p)$, so $d\in\{0, \frac{1}{1-p}\}$ with $d \ge 0$. Compare
# dropout after an element-wise activation, $d\,\varphi(z)$, with dropout before it,
# $\varphi(d\,z)$, under the same mask:
#
# - **ReLU, leaky ReLU, PReLU** (any $\varphi$ that is *positively homogeneous*,
#   $\varphi(cz)=c\,\varphi(z)$ for $c \ge 0$, which implies $\varphi(0)=0$):
#   $\varphi(dz) = d\,\varphi(z)$ for both values of $d$, so the two placements are the *same
#   function*: same outputs, same gradients, same training run. The order cannot matter.
# - **tanh**: $\tanh(0)=0$, so dropped units are $0$ either way, but survivors differ:
#   $\tanh\left(\frac{z}{1-p}\right) \ne \frac{\tanh z}{1-p}$. Dropout before tanh also no
#   longer preserves the expectation of the activation ($\E{\tanh(dz)} \ne \tanh z$), so the
#   train-time and test-time activations differ a little in mean.
# - **sigmoid**: $\sigma(0) = \tfrac{1}{2}$, so a unit "dropped" before the sigmoid still
#   sends $\tfrac12$ onward: dropout before a sigmoid does not silence units at all, it
#   perturbs them; the expectation is not preserved either.
#
# So placement is a design choice, not a rule. Dropout is usually put after the activation
# (equivalently: on the inputs of the next layer, which is where it acts, since dropping
# $\varphi(z)_j$ removes input $j$ of the next layer), but dropout on the raw inputs, on
# attention probabilities and on the output of a residual branch before the addition are all
# standard. One real constraint: dropout placed right before a BatchNorm layer makes the
# statistics that BatchNorm collects in training differ from those it meets at test time.
#
# The experiment applies both orders with the *same* random mask and compares.

# %%
z = torch.randn(100_000)
p = 0.5


def same_mask_dropout(t: torch.Tensor, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)  # the same seed gives the same Bernoulli mask for the same shape
    return F.dropout(t, p=p, training=True)


activations = {"ReLU": F.relu, "LeakyReLU": F.leaky_relu, "tanh": torch.tanh,
               "sigmoid": torch.sigmoid}
z0 = torch.tensor(1.0)  # one unit: its expected output over the mask, exactly
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
print(f"sigmoid after dropout-before: the 'dropped' units output {sig_dropped.unique().tolist()}")

assert gaps["ReLU"] == 0.0 and gaps["LeakyReLU"] == 0.0, "ReLU-like: orders should be identical"
assert gaps["tanh"] > 0.1 and gaps["sigmoid"] > 0.1, "tanh/sigmoid: orders should differ"
assert expectation_gaps["ReLU"] < 1e-7, "dropout before ReLU should preserve the expectation"
assert min(expectation_gaps["tanh"], expectation_gaps["sigmoid"]) > 0.01, \
    "dropout before tanh/sigmoid should change the unit's expected output"
assert torch.all(sig_dropped == 0.5), "a unit dropped before a sigmoid should output 1/2"

# %% [markdown]
# Both placements train, too: the same small classifier on scikit-learn's digits, trained
# with dropout after and before a tanh, reaches a similar test accuracy (and with ReLU the
# two runs are the same run, step for step).

# %%
from dlsummary import digits

images, labels = digits()
order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
flat, labels = images.flatten(1)[order], labels[order]
train_x, test_x, train_y, test_y = flat[:1400], flat[1400:], labels[:1400], labels[1400:]


def train_digits(order: str, act: nn.Module, seed: int = 0, steps: int = 300) -> tuple[float, float]:
    seed_everything(seed)
    drop = nn.Dropout(0.3)
    hidden = [act, drop] if order == "after" else [drop, act]
    model = nn.Sequential(nn.Linear(64, 128), *hidden, nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = torch.randint(0, len(train_x), (128,))
        loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    return accuracy, loss.item()


results = {(name, order): train_digits(order, act)
           for name, act in [("ReLU", nn.ReLU()), ("tanh", nn.Tanh())]
           for order in ("after", "before")}
for (name, order), (acc, last_loss) in results.items():
    print(f"{name:5s} dropout {order:6s} the activation: test accuracy {acc:.3f}, "
          f"last training loss {last_loss:.4f}")
assert results[("ReLU", "after")] == results[("ReLU", "before")], "ReLU runs should be identical"
assert min(acc for acc, _ in results.values()) > 0.9, "a placement failed to train"
assert abs(results[("tanh", "after")][0] - results[("tanh", "before")][0]) < 0.03, \
    "tanh: the two placements should both work about as well"

# %% [markdown]
# ### dropout.3
# After applying dropout with a drop-probability of $p$, the activations are scaled by
# $1/(1-p)$. Prove that this scaling is required in order to maintain the value of each
# activation unchanged in expectation.

# %% [markdown]
# **Answer:** With keep-mask $m\sim\text{Bernoulli}(1-p)$ and scale $c$, $\E{c\,m\,a} =
# c(1-p)\,a$, which equals $a$ for every $a$ if and only if $c = 1/(1-p)$.
#
# *Proof.* In training, dropout replaces an activation $a$ by $\tilde a = c\,m\,a$, where
# $m$ is $1$ with probability $1-p$ (kept) and $0$ with probability $p$ (dropped), and $c$
# is the scale applied to the kept units. $a$ is fixed with respect to the dropout noise,
# so by linearity of expectation
# $$\E{\tilde a} = c\,a\,\E{m} = c\,a\,\bigl((1-p)\cdot 1 + p\cdot 0\bigr) = c\,(1-p)\,a .$$
# Requiring $\E{\tilde a} = a$ for every value of $a$ (take any $a \ne 0$ and divide)
# gives $c\,(1-p) = 1$, i.e. $c = \frac{1}{1-p}$: the scaling is *sufficient* and it is the
# *only* one that works, hence *required*. Without it ($c=1$) the expectation in training is
# $(1-p)a$, so at test time, when dropout is off, the next layer would receive inputs about
# $\frac{1}{1-p}$ times larger than those it was trained on. (The original formulation
# instead leaves training unscaled and multiplies by $1-p$ at test time; inverted dropout
# moves that factor into training so that inference needs no change.)
#
# Two remarks that the measurement also shows. The variance is *not* preserved:
# $\operatorname{Var}[\tilde a] = a^2\,\frac{p}{1-p}$, the noise that regularises. And the
# expectation is preserved for each unit and for any *linear* function of the units
# ($\E{\mat{W}\tilde{\vec a}} = \mat{W}\vec a$), not through a non-linearity: in general
# $\E{\varphi(\tilde a)} \ne \varphi(a)$.

# %%
a = 1.7
n = 2_000_000
print(f"{'p':>5s}{'exact E (scaled)':>18s}{'MC mean scaled':>16s}{'MC mean unscaled':>18s}"
      f"{'MC var / (a^2 p/(1-p))':>24s}")
ps = [0.1, 0.3, 0.5, 0.7, 0.9]
mc_scaled, mc_unscaled = [], []
for p in ps:
    # exact: enumerate the two outcomes of the mask
    exact_scaled = (1 - p) * (a / (1 - p)) + p * 0.0
    samples = F.dropout(torch.full((n,), a, dtype=torch.float64), p=p, training=True)
    unscaled = samples * (1 - p)  # the same masks without the 1/(1-p) factor
    mc_scaled.append(samples.mean().item())
    mc_unscaled.append(unscaled.mean().item())
    var_ratio = samples.var().item() / (a**2 * p / (1 - p))
    se = a * (p / (1 - p) / n) ** 0.5  # standard error of the scaled sample mean
    print(f"{p:5.1f}{exact_scaled:18.6f}{mc_scaled[-1]:16.5f}{mc_unscaled[-1]:18.5f}{var_ratio:24.4f}")
    assert abs(exact_scaled - a) < 1e-12, "the exact expectation with scaling is not a"
    assert abs(mc_scaled[-1] - a) < 5 * se, f"p={p}: Monte Carlo mean {mc_scaled[-1]} is not a"
    assert abs(mc_unscaled[-1] - (1 - p) * a) < 5 * se * (1 - p), "unscaled mean is not (1-p)a"
    assert abs(mc_unscaled[-1] - a) > 20 * se, f"p={p}: unscaled mean cannot be told from a"
    assert abs(var_ratio - 1) < 0.02, f"p={p}: variance is not a^2 p/(1-p)"

fig, ax = plt.subplots()
ax.axhline(a, color="k", lw=0.8, label="$a$ (no dropout)")
ax.plot(ps, mc_scaled, "o-", label=r"with scaling $1/(1-p)$")
ax.plot(ps, mc_unscaled, "s--", label="without scaling")
ax.plot(ps, [(1 - p) * a for p in ps], ":", color="gray", label="$(1-p)\\,a$")
ax.set(xlabel="drop probability $p$", ylabel=r"mean of $\tilde a$ (Monte Carlo)",
       title=f"Expectation of a dropped activation, a = {a}")
ax.legend()
plt.show()

# %%
# Through a non-linearity the expectation is not preserved: E[tanh(a~)] != tanh(E[a~]).
p = 0.5
samples = F.dropout(torch.full((n,), a, dtype=torch.float64), p=p, training=True)
print(f"E[tanh(a~)] = {torch.tanh(samples).mean().item():.4f}  vs  tanh(a) = {torch.tanh(torch.tensor(a)).item():.4f}")
assert abs(torch.tanh(samples).mean().item() - torch.tanh(torch.tensor(a)).item()) > 0.05, \
    "expected E[tanh(a~)] to differ from tanh(a)"
