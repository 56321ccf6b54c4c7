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
# ## Losses and Activation functions

# %%
import copy
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from dlsummary import digits, gradient_flow, plot_style, seed_everything
from dlsummary.evidence import check, control

plot_style()
seed_everything(0)


def first_to_last(flow) -> float:
    """Gradient norm at the first layer call's output over the norm at the last one,
    read from the flow's per-call rows (< 1: the gradient shrinks towards the input)."""
    norms = [c.grad_output_norm for c in flow.layers if c.grad_output_norm is not None]
    return norms[0] / norms[-1]

# %% [markdown]
# ### losses.1 · L2 loss for a binary classifier
# You're training a an image classifier that, given an image, needs to classify it as either
# a dog (output 0) or a hotdog (output 1). Would you train this model with an L2 loss? if so,
# why? if not, demonstrate with a numerical example. What would you use instead?

# %% [markdown]
# **Answer:** No. With a sigmoid output $p=\sigma(z)$ the L2 loss $(p-y)^2$ has gradient $\partial\ell_2/\partial z=2(p-y)\,p(1-p)$, which vanishes exactly where the model is confidently wrong: a hotdog ($y=1$) scored $z=-6$ ($p=0.0025$) gets $\partial\ell_2/\partial z\approx-0.005$, while binary cross-entropy $\ell=-y\log p-(1-y)\log(1-p)$ gets $\partial\ell/\partial z=p-y\approx-0.998$, about 200 times stronger. L2 after a sigmoid is also non-convex in $z$, and assumes Gaussian noise, the wrong model for a 0/1 label. Use binary cross-entropy on the logit (`nn.BCEWithLogitsLoss`).

# %% [markdown]
# **Why, in detail.** With $p=\sigma(z)$ and $\sigma'(z)=p(1-p)$:
#
# $$
# \begin{aligned}
# \ell_{2}(z) &= (p-y)^2, & \frac{\partial \ell_{2}}{\partial z} &= 2(p-y)\,p(1-p),\\
# \ell_{\text{BCE}}(z) &= -y\log p-(1-y)\log(1-p), & \frac{\partial \ell_{\text{BCE}}}{\partial z} &= p-y .
# \end{aligned}
# $$
#
# For a hotdog that the model confidently calls a dog ($z\to-\infty$), the L2 loss tends to the bounded value $1$ and its gradient $2(p-1)p(1-p)\approx -2e^{z}\to 0$: the factor $\sigma'(z)$ switches the learning signal off on the examples that most need it. Its second derivative in $z$ (for $y=1$), $-2p(1-p)^2(1-3p)$, is negative wherever $p<1/3$, so L2 after a sigmoid is not convex; cross-entropy's, $p(1-p)$, is positive everywhere. Cross-entropy grows like $|z|$ and its gradient tends to $-1$. Statistically, cross-entropy is the negative log-likelihood of a Bernoulli label, so minimising it is maximum-likelihood estimation of $P(\text{hotdog}\mid\text{image})$.
#
# Without a sigmoid (regressing a raw output $\hat y$ onto 0/1), L2 fails the other way: $\hat y=3$ for a hotdog, confidently *correct*, costs $(3-1)^2=4$, and its gradient pulls the prediction back, so far-away correct examples drag the decision boundary.
#
# The experiments: (1) the table of losses and gradients, each checked against the closed forms; (2) a one-feature logistic classifier that starts confidently wrong: with cross-entropy gradient descent fixes it in 2 steps, with L2 it needs 37 (over ten times as many); started neutral ($w=0$), both losses fix it in one step, so what hurts L2 is the confident mistake; (3) least squares on raw outputs: adding hotdogs far on the correct side moves the L2 boundary by about one unit towards the hotdogs, and the cross-entropy boundary hardly at all.

# %%
z = torch.tensor([-6.0, -4.0, -2.0, 0.0, 2.0], requires_grad=True)  # logits for a hotdog
y = torch.ones_like(z)
p = torch.sigmoid(z)
l2 = (p - y) ** 2
bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
(grad_l2,) = torch.autograd.grad(l2.sum(), z)
(grad_bce,) = torch.autograd.grad(bce.sum(), z)
pd = p.detach()
print(f"{'logit z':>8} {'p=σ(z)':>9} {'L2':>7} {'dL2/dz':>8} {'BCE':>7} {'dBCE/dz':>8}")
for row in zip(z.tolist(), pd.tolist(), l2.tolist(), grad_l2.tolist(), bce.tolist(), grad_bce.tolist(), strict=True):
    print("{:8.1f} {:9.5f} {:7.4f} {:8.4f} {:7.4f} {:8.4f}".format(*row))

check("losses.1", "autograd's dL2/dz equals 2(p-y)p(1-p) at every logit",
      float((grad_l2 - 2 * (pd - 1) * pd * (1 - pd)).abs().max()), "<", 1e-6)
check("losses.1", "autograd's dBCE/dz equals p-y at every logit", float((grad_bce - (pd - 1)).abs().max()), "<", 1e-6)
check("losses.1", "L2's gradient at z=-6 is about -0.005", float(grad_l2[0]), "~", -0.005, tol=0.0005)
check("losses.1", "BCE's gradient at z=-6 is about -0.998", float(grad_bce[0]), "~", -0.998, tol=0.001)
check("losses.1", "BCE's loss at z=-6 is about 6.0 (grows like |z|)", float(bce.detach()[0]), "~", 6.0, tol=0.01)
check("losses.1", "L2's loss stays below its bound 1", float(l2.detach().max()), "<", 1.0)
ratio_wrong = float(grad_bce[0] / grad_l2[0])
check("losses.1", "confidently wrong (z=-6), BCE's gradient is about 200 times L2's", ratio_wrong, "~", 200, rel=0.05)
control("losses.1", "undecided (z=0), the two gradients are within a factor of 2.5: L2 is weak only when wrong",
        float(grad_bce[3] / grad_l2[3]), "<", 2.5)
check("losses.1", "L2's push shrinks as the prediction gets more wrong (|grad| at z=-6 over z=-2)",
      float(grad_l2[0] / grad_l2[2]), "<", 0.1)

zz = z.detach().clone().requires_grad_(True)
(d_l2,) = torch.autograd.grad(((torch.sigmoid(zz) - 1) ** 2).sum(), zz, create_graph=True)
(curv_l2,) = torch.autograd.grad(d_l2.sum(), zz)
(d_bce,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(zz, y, reduction="sum"), zz, create_graph=True)
(curv_bce,) = torch.autograd.grad(d_bce.sum(), zz)
check("losses.1", "L2's curvature equals -2p(1-p)^2(1-3p)",
      float((curv_l2 - (-2 * pd * (1 - pd) ** 2 * (1 - 3 * pd))).abs().max()), "<", 1e-6)
check("losses.1", "L2 after a sigmoid is concave at z=-6 (p < 1/3)", float(curv_l2[0]), "<", 0)
control("losses.1", "L2's curvature is positive at z=2 (p > 1/3): it is non-convex, not concave", float(curv_l2[4]), ">", 0)
check("losses.1", "BCE's curvature p(1-p) is positive at every logit", float(curv_bce.min()), ">", 0)

zs = torch.linspace(-8, 8, 401, requires_grad=True)
curves = {"L2 after sigmoid": (torch.sigmoid(zs) - 1) ** 2,
          "binary cross-entropy": F.binary_cross_entropy_with_logits(zs, torch.ones_like(zs), reduction="none")}
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for label, loss in curves.items():
    (g,) = torch.autograd.grad(loss.sum(), zs)
    axes[0].plot(zs.detach(), loss.detach(), label=label)
    axes[1].plot(zs.detach(), g, label=label)
axes[0].set(xlabel="logit z (true class: hotdog)", ylabel="loss", title="loss")
axes[1].set(xlabel="logit z (true class: hotdog)", ylabel="dloss/dz", title="gradient")
axes[0].legend()
plt.tight_layout()
plt.show()

# %%
# A logistic classifier trained by gradient descent with each loss, started confidently
# wrong (w = -3) and, as a control, started neutral (w = 0).
g = torch.Generator().manual_seed(0)
x = torch.cat([torch.randn(200, generator=g) - 2, torch.randn(200, generator=g) + 2])
labels = torch.cat([torch.zeros(200), torch.ones(200)])  # dog = 0, hotdog = 1
losses = {"L2": lambda s: ((torch.sigmoid(s) - labels) ** 2).mean(),
          "BCE": lambda s: F.binary_cross_entropy_with_logits(s, labels)}
steps_to_fix = {}
for w_start in (-3.0, 0.0):
    for name, loss_fn in losses.items():
        w, b = torch.tensor(w_start, requires_grad=True), torch.tensor(0.0, requires_grad=True)
        curve = []
        for _ in range(60):
            scores = w * x + b
            curve.append(((scores > 0).float() == labels).float().mean().item())
            gw, gb = torch.autograd.grad(loss_fn(scores), (w, b))
            with torch.no_grad():
                w -= 1.0 * gw
                b -= 1.0 * gb
        steps_to_fix[name, w_start] = next((i for i, a in enumerate(curve) if a > 0.9), math.inf)
print("gradient-descent steps until accuracy > 90 %:",
      {f"{name}, start w={w0}": s for (name, w0), s in steps_to_fix.items()})
check("losses.1", "from a confidently wrong start, BCE is fixed within 3 steps", steps_to_fix["BCE", -3.0], "<=", 3)
check("losses.1", "from the same start, L2 needs over 10 times as many steps",
      steps_to_fix["L2", -3.0] / steps_to_fix["BCE", -3.0], ">", 10)
check("losses.1", "L2 needs about 37 steps", steps_to_fix["L2", -3.0], "~", 37, rel=0.1)
control("losses.1", "from a neutral start (w=0) L2 is fixed as fast as BCE (within one step of it)",
        steps_to_fix["L2", 0.0] - steps_to_fix["BCE", 0.0], "<=", 1)

# %%
# Without a sigmoid: least squares on raw outputs against 0/1 labels, and logistic
# regression (BCE), with and without 100 hotdogs far on the correct side (x ~ 15).
near_x = torch.cat([0.7 * torch.randn(200, generator=g) - 2, 0.7 * torch.randn(200, generator=g) + 2])
near_y = torch.cat([torch.zeros(200), torch.ones(200)])
far_x = 0.7 * torch.randn(100, generator=g) + 15


def boundaries(xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, float]:
    """Decision boundary of least squares (output 0.5) and of logistic regression (logit 0)."""
    design = torch.stack([xs, torch.ones_like(xs)], 1)
    slope, offset = torch.linalg.lstsq(design, ys[:, None]).solution.squeeze().tolist()
    w, b = torch.tensor(0.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    for _ in range(200):
        gw, gb = torch.autograd.grad(F.binary_cross_entropy_with_logits(w * xs + b, ys), (w, b))
        with torch.no_grad():
            w -= gw
            b -= gb
    return (0.5 - offset) / slope, float(-b.detach() / w.detach())


l2_clean, bce_clean = boundaries(near_x, near_y)
l2_far, bce_far = boundaries(torch.cat([near_x, far_x]), torch.cat([near_y, torch.ones(100)]))
print(f"decision boundary, L2 on raw outputs: {l2_clean:.2f} -> {l2_far:.2f} with the far hotdogs; "
      f"BCE: {bce_clean:.2f} -> {bce_far:.2f}")
check("losses.1", "far-away correct examples drag L2's boundary by about one unit", l2_far - l2_clean, "~", 1.0, tol=0.25)
control("losses.1", "the same examples move the BCE boundary by less than 0.1", abs(bce_far - bce_clean), "<", 0.1)

# %% [markdown]
# ### losses.2 · cause of an early plateau
# After months of research into the origins of climate change, you observe the following
# result:

# %%
# The "pirates vs. global temperature" chart, redrawn from approximate data points.
pirates = [45000, 20000, 15000, 5000, 400, 17]
temperature = [14.25, 14.5, 14.8, 15.1, 15.5, 15.8]
years = [1820, 1860, 1880, 1920, 1970, 2000]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(pirates, temperature, "o-")
for n, t, yr in zip(pirates, temperature, years, strict=True):
    ax.annotate(str(yr), (n, t), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set_xscale("symlog", linthresh=100)
ax.invert_xaxis()
ax.set(xlabel="number of pirates (approximate)", ylabel="global average temperature (°C)",
       title="Global average temperature vs. number of pirates")
plt.tight_layout()
plt.show()

# %% [markdown]
# You decide to train a cutting-edge deep neural network regression model, that will predict
# the global temperature based on the population of pirates in `N` locations around the
# globe. You define your model as follows:

# %%
import torch.nn as nn

N = 42  # number of known global pirate hot spots
H = 128
mlpirate = nn.Sequential(
    nn.Linear(in_features=N, out_features=H),
    nn.Sigmoid(),
    *[
        nn.Linear(in_features=H, out_features=H), nn.Sigmoid(),
    ]*24,
    nn.Linear(in_features=H, out_features=1),
)

# %% [markdown]
# While training your model you notice that the loss reaches a plateau after only a few
# iterations. It seems that your model is no longer training. What is the most likely cause?

# %% [markdown]
# **Answer:** Vanishing gradients. Each of the 25 Linear+Sigmoid layers multiplies the backward signal by about $\sqrt{H\operatorname{Var}(W_{ij})}\cdot\sigma'\approx 0.58\times 0.25\approx 0.14$ ($\sigma'\le 1/4$; default initialisation $\operatorname{Var}(W_{ij})=1/(3H)$), so the first layer's gradient is about $10^{21}$ times smaller than the last's and the early layers do not learn. Worse, `[...]*24` repeats *one* `Linear` and *one* `Sigmoid` object: the 24 hidden layers share weights, and iterating that contracting map ($\lVert\mathbf W\rVert_2/4<1$) sends every input to the same hidden vector. The network outputs a constant, the mean temperature: the loss drops to the targets' variance and stays there.

# %% [markdown]
# **Why, in detail.** For $\mathbf{h}_{l}=\sigma(\mathbf{W}_l\mathbf{h}_{l-1}+\mathbf{b}_l)$ backpropagation multiplies one Jacobian per layer:
#
# $$
# \frac{\partial L}{\partial \mathbf{h}_{0}}=\left(\prod_{l=1}^{25}\mathbf{W}_l^\top\operatorname{diag}\left(\sigma'(\mathbf{a}_l)\right)\right)\frac{\partial L}{\partial \mathbf{h}_{25}},\qquad \sigma'(a)=\sigma(a)\left(1-\sigma(a)\right)\le\frac{1}{4}.
# $$
#
# PyTorch's default `nn.Linear` initialisation, $W_{ij}\sim U(-1/\sqrt{H},1/\sqrt{H})$, has $\operatorname{Var}(W_{ij})=1/(3H)$, so $\mathbf{W}^\top$ scales a random vector by about $1/\sqrt{3}\approx 0.58$; with $\sigma'\approx 0.24$ that is about $0.14$ per layer (measured: $0.14$) and $10^{21}$ over the stack (measured: first layer call over last, $10^{-21}$). The sigmoids are *not* saturated (0 % of units in the flat tails): the maximum slope $1/4$ is already too small. Adam does not rescue a gradient of $10^{-21}$ either: it is far below Adam's $\epsilon=10^{-8}$, so $m/(\sqrt{v}+\epsilon)$ is negligible.
#
# **What `[...]*24` creates.** Multiplying a list repeats *references*: the model has 22,145 parameters instead of the 401,921 of 24 distinct layers, and the hidden stack applies the same map $\mathbf{h}\mapsto\sigma(\mathbf{W}\mathbf{h}+\mathbf{b})$ 24 times. Its Lipschitz constant is at most $\lVert\mathbf{W}\rVert_2/4$ (measured: $0.28$), so iterating it drives every input towards one fixed point (Banach's fixed-point theorem): the spread between examples falls from $0.1$ to float32 rounding. Writing 24 distinct layers fixes the sharing but not the vanishing gradient (measured: still $10^{21}$).
#
# Un-normalised inputs make it worse: raw pirate counts (tens of thousands) saturate most units of the first sigmoid; standardise the inputs. (And pirates do not cause the temperature: the chart is a correlation through time.)
#
# **The experiment.** On synthetic pirate data, one backward pass through `mlpirate` measures the gradient norm at every layer call; the same measurement on a one-hidden-layer network is the control. Trained with Adam, `mlpirate` reaches the targets' variance within a few steps and stays there, while the one-hidden-layer network, trained the same way, learns the data.

# %%
untied = nn.Sequential(nn.Linear(N, H), nn.Sigmoid(), *[m for _ in range(24) for m in (nn.Linear(H, H), nn.Sigmoid())], nn.Linear(H, 1))
n_params = sum(p.numel() for p in mlpirate.parameters())
n_untied = sum(p.numel() for p in untied.parameters())
n_distinct_hidden = len({id(m) for m in mlpirate[2:50:2]})
print(f"layers in the Sequential: {len(mlpirate)}, distinct hidden Linear objects: {n_distinct_hidden}, "
      f"parameters: {n_params:,} (24 distinct layers: {n_untied:,})")
check("losses.2", "[...]*24 puts one Linear object into all 24 hidden places", n_distinct_hidden, "==", 1)
check("losses.2", "the shared model has 22,145 parameters", n_params, "==", 22_145)
control("losses.2", "24 distinct layers have 401,921 parameters", n_untied, "==", 401_921)


def pirate_data(n_years: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic pirate counts at N hot spots (falling over 1820-2000) and temperatures
    (rising); returns raw counts, standardised log-counts and standardised temperatures."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, n_years)
    share = torch.rand(N, generator=gen)
    counts = 40_000 * torch.exp(-5 * t)[:, None] * (share / share.sum()) * torch.exp(0.3 * torch.randn(n_years, N, generator=gen))
    temp = 14.2 + 1.6 * t**3 + 0.05 * torch.randn(n_years, generator=gen)
    logc = torch.log1p(counts)
    return counts, (logc - logc.mean(0)) / logc.std(0), ((temp - temp.mean()) / temp.std())[:, None]

# %%
counts, X, Y = pirate_data()
with gradient_flow(mlpirate) as flow:
    F.mse_loss(mlpirate(X), Y).backward()
mlpirate.zero_grad()
lines = str(flow).splitlines()
print("\n".join(lines[:6] + ["..."] + lines[-9:]))  # the first and last layer calls, the notes
fold = first_to_last(flow)
per_layer = fold ** (1 / 25)
sat = max(c.saturated_fraction for c in flow.layers if c.type == "Sigmoid")
shallow = nn.Sequential(nn.Linear(N, H), nn.Sigmoid(), nn.Linear(H, 1))
with gradient_flow(shallow) as shallow_flow:
    F.mse_loss(shallow(X), Y).backward()
shallow.zero_grad()
print(f"first/last gradient norm {fold:.1e}: {per_layer:.3f} per Linear+Sigmoid layer; "
      f"one hidden layer: {first_to_last(shallow_flow):.2f}; saturated sigmoid units: {sat:.1%}")
check("losses.2", "the gradient reaching the first layer is about 1e21 times smaller than at the last (log10)",
      math.log10(fold), "~", -21, tol=1)
control("losses.2", "in a one-hidden-layer net it shrinks less than 100-fold", first_to_last(shallow_flow), ">", 0.01)
check("losses.2", "about 0.58 x 0.24 = 0.14 per Linear+Sigmoid layer", per_layer, "~", 0.14, rel=0.2)
check("losses.2", "the sigmoids are not saturated: the small maximum slope 1/4 is enough", sat, "<", 0.01)
check("losses.2", "the shared hidden Linear is called 24 times in one pass", flow.layers[2].calls, "==", 24)
flow.plot(label="mlpirate").set_title("mlpirate: gradient norm at each layer call's output")
plt.tight_layout()
plt.show()

# %%
with gradient_flow(mlpirate) as raw_flow:  # un-normalised pirate counts
    F.mse_loss(mlpirate(counts), Y).backward()
mlpirate.zero_grad()
raw_sat = raw_flow.layers[1].saturated_fraction
print(f"raw counts as input: {raw_sat:.0%} of the first sigmoid's units saturated")
check("losses.2", "raw pirate counts saturate most of the first sigmoid's units", raw_sat, ">", 0.5)
control("losses.2", "standardised inputs saturate almost none (first sigmoid)", flow.layers[1].saturated_fraction, "<", 0.05)

with gradient_flow(untied) as untied_flow:
    F.mse_loss(untied(X), Y).backward()
print(f"24 distinct layers: first/last gradient norm {first_to_last(untied_flow):.1e}")
check("losses.2", "untying the layers does not cure the vanishing gradient", first_to_last(untied_flow), "<", 1e-15)

# %%
# The forward signal: how different are the hidden vectors of different examples?
spread, h = [], X
with torch.no_grad():
    for layer in mlpirate:
        h = layer(h)
        if isinstance(layer, nn.Sigmoid):
            spread.append(h.std(0).mean().item())  # std across examples, averaged over units
lipschitz = torch.linalg.matrix_norm(mlpirate[2].weight.detach(), ord=2).item() / 4
print(f"spread across examples after sigmoid 1, 5, 10, 25: {spread[0]:.1e}, {spread[4]:.1e}, {spread[9]:.1e}, {spread[24]:.1e}")
print(f"Lipschitz bound of the shared hidden map: ||W||_2 / 4 = {lipschitz:.2f}")
check("losses.2", "the shared hidden map is a contraction (||W||_2 / 4 about 0.28)", lipschitz, "~", 0.28, tol=0.02)
check("losses.2", "all inputs collapse to one hidden vector (spread after layer 25 / layer 1)",
      spread[24] / spread[0], "<", 1e-6)
plt.figure(figsize=(5, 2.6))
plt.semilogy(range(1, 26), spread, marker=".")
plt.xlabel("sigmoid layer")
plt.ylabel("std across examples")
plt.title("mlpirate's forward signal collapses")
plt.tight_layout()
plt.show()

# %%
class SGD:
    """Plain gradient descent, p <- p - lr * grad (written out: torch.optim's first step
    imports its compiler, which costs more time than this whole experiment)."""

    def __init__(self, params, lr: float) -> None:
        self.params, self.lr = list(params), lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            p.add_(p.grad, alpha=-self.lr)


class Adam(SGD):
    """Adam as torch.optim.Adam computes it: p <- p - lr * m_hat / (sqrt(v_hat) + eps),
    with m, v running means of the gradient and of its square (bias-corrected)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))


def train(model: nn.Module, steps: int = 80, make_opt=lambda ps: Adam(ps, lr=1e-3)) -> list[float]:
    """Full-batch training on the synthetic pirate data; returns the loss curve."""
    opt = make_opt(model.parameters())
    curve = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(X), Y)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


seed_everything(0)
sigmoid_adam = copy.deepcopy(mlpirate)
deep_curve = train(sigmoid_adam)
shallow_curve = train(shallow)
target_var = Y.var(unbiased=False).item()
print(f"target variance {target_var:.3f}; final loss: mlpirate {deep_curve[-1]:.3f}, one hidden layer {shallow_curve[-1]:.3f}")
plt.figure(figsize=(5, 2.8))
plt.plot(deep_curve, label="mlpirate")
plt.plot(shallow_curve, label="one hidden layer")
plt.axhline(target_var, ls=":", c="gray", label="variance of the target")
plt.xlabel("Adam step")
plt.ylabel("MSE")
plt.legend()
plt.tight_layout()
plt.show()
plateau_step = next(i for i, v in enumerate(deep_curve) if v < 1.02 * target_var)
print(f"mlpirate is within 2 % of the target variance from step {plateau_step} on")
check("losses.2", "mlpirate reaches the target variance within a few steps", plateau_step, "<=", 10)
check("losses.2", "and stays on that plateau (lowest later loss / variance)",
      min(deep_curve[plateau_step:]) / target_var, ">", 0.98)
control("losses.2", "a one-hidden-layer net trained the same way learns (final loss / variance)",
        shallow_curve[-1] / target_var, "<", 0.3)

# %% [markdown]
# ### losses.3 · tanh instead of sigmoid
# Referring to question 2 above: A friend suggests that if you replace the `sigmoid`
# activations with `tanh`, it will solve your problem. Is he correct? Explain why or why not.

# %% [markdown]
# **Answer:** No, not by itself. $\tanh'\le 1$ (four times sigmoid's $1/4$) and its outputs are zero-centred, so with the same default initialisation each layer shrinks the gradient by about $1/\sqrt3\approx0.58$ instead of $0.14$: over 25 layers still a $10^{6}$-fold loss, the forward signal still collapses, and the weight sharing of `[...]*24` remains. With plain SGD, at a rate where a well-initialised tanh network learns, it stays on the plateau; Adam lets it escape after about 40 steps, where the sigmoid network stays stuck: tanh helps but does not solve it. The fix is a per-layer gain near 1: Xavier initialisation (gain $5/3$ for tanh) or ReLU with He initialisation, normalisation layers, residual connections.

# %% [markdown]
# **Why, in detail.** $\tanh(a)=2\sigma(2a)-1$, so $\tanh'(a)=1-\tanh^2(a)\le 1$, and its outputs are centred at 0 (sigmoid's are all positive, which shifts the next layer's pre-activations and gives all incoming weight gradients of a unit the same sign for each example). The per-layer backward factor becomes $\approx\sqrt{H\operatorname{Var}(W_{ij})}\cdot 1=1/\sqrt{3}\approx0.58$ (measured: $0.58$), but $0.58^{25}\approx 10^{-6}$: the gradient still vanishes with depth, and the forward signal still shrinks towards the fixed point $\mathbf{0}$ (measured: the spread between examples falls about $10^{6}$-fold). tanh also still saturates ($\tanh'\to0$ for $|a|\gtrsim 2$), e.g. on un-normalised inputs. The problem is the per-layer gain $\lVert\mathbf{W}^\top\operatorname{diag}(f'(\mathbf{a}))\rVert<1$, which the activation only partly controls.
#
# Why Adam escapes with tanh and not with sigmoid: Adam's step is $\eta\,m/(\sqrt{v}+\epsilon)$, about $\eta$ per parameter whatever the gradient's size *as long as it is well above* $\epsilon=10^{-8}$. The tanh network's first-layer gradient is $10^{-6}$ of the last layer's and still above $\epsilon$, so every layer moves at the full rate (measured: the first layer's weights change by over 10 %); the sigmoid network's is $10^{-21}$ of it, far below $\epsilon$, and its first layer does not move. After Adam's training the tanh network's gradient no longer vanishes (measured: first/last gradient norm about 0.2, up from $10^{-6}$). Relying on this is fragile (deeper stacks push the gradient below $\epsilon$ too); the durable fix is to make the gain 1: Xavier with gain $5/3$ for tanh, or ReLU with He initialisation $\operatorname{Var}(W_{ij})=2/\text{fan-in}$ (the factor 2 compensates for ReLU zeroing half its inputs), plus normalisation layers or residual connections for very deep stacks.
#
# **The experiment.** The same 25-layer network (weight sharing kept) with tanh, tanh with Xavier initialisation and ReLU with He initialisation: one backward pass each, then training. Plain SGD runs at learning rate 0.003, where the Xavier-initialised tanh network learns; Adam runs at 0.001, like the sigmoid network of losses.2.

# %%
def pirate_net(activation: type[nn.Module], init=None) -> nn.Sequential:
    """mlpirate with another activation (and optionally another initialisation), sharing kept."""
    seed_everything(0)
    net = nn.Sequential(nn.Linear(N, H), activation(), *[nn.Linear(H, H), activation()] * 24, nn.Linear(H, 1))
    for m in net.modules():
        if init is not None and isinstance(m, nn.Linear):
            init(m.weight)
            nn.init.zeros_(m.bias)
    return net


variants = {
    "tanh, default init": pirate_net(nn.Tanh),
    "tanh, Xavier gain 5/3": pirate_net(nn.Tanh, lambda w: nn.init.xavier_normal_(w, gain=5 / 3)),
    "ReLU, He init": pirate_net(nn.ReLU, lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
}
folds, spreads = {"sigmoid, default init (losses.2)": fold}, {}
fig, ax = plt.subplots(figsize=(6, 3))
flow.plot(ax=ax, label="sigmoid, default init (losses.2)")
for name, net in variants.items():
    with gradient_flow(net) as f:
        F.mse_loss(net(X), Y).backward()
    net.zero_grad()
    folds[name] = first_to_last(f)
    f.plot(ax=ax, label=name)
    with torch.no_grad():
        spreads[name] = float(net[:-1](X).std(0).mean() / net[:2](X).std(0).mean())
    print(f"{name:24s} first/last gradient norm = {folds[name]:.1e}; "
          f"spread between examples, last hidden / first = {spreads[name]:.1e}")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
with gradient_flow(variants["tanh, default init"]) as tanh_raw_flow:  # un-normalised pirate counts
    F.mse_loss(variants["tanh, default init"](counts), Y).backward()
variants["tanh, default init"].zero_grad()
with torch.no_grad():
    first_hidden = {"sigmoid": mlpirate[:2](X), "tanh": variants["tanh, default init"][:2](X)}
print(f"raw counts: {tanh_raw_flow.layers[1].saturated_fraction:.0%} of the first tanh's units saturated; "
      f"first hidden layer's outputs: sigmoid min {float(first_hidden['sigmoid'].min()):.2f}, "
      f"tanh mean {float(first_hidden['tanh'].mean()):+.3f}")
check("losses.3", "tanh still saturates on un-normalised inputs (first tanh, raw counts)",
      tanh_raw_flow.layers[1].saturated_fraction, ">", 0.5)
check("losses.3", "sigmoid's outputs are all positive (smallest output of the first hidden layer)",
      float(first_hidden["sigmoid"].min()), ">", 0)
control("losses.3", "tanh's are centred at 0 (|mean output| of the first hidden layer)", abs(float(first_hidden["tanh"].mean())), "<", 0.1)
tanh_per_layer = folds["tanh, default init"] ** (1 / 25)
print(f"tanh, default init: {tanh_per_layer:.2f} per layer")
check("losses.3", "tanh with the default init still loses about 1e6 of gradient (log10 first/last)",
      math.log10(folds["tanh, default init"]), "~", -6, tol=1)
check("losses.3", "about 1/sqrt(3) = 0.58 per layer", tanh_per_layer, "~", 1 / math.sqrt(3), rel=0.1)
control("losses.3", "tanh vanishes over 1e10 times less than sigmoid",
        folds["tanh, default init"] / fold, ">", 1e10)
control("losses.3", "tanh with Xavier gain 5/3 keeps the gradient within 100-fold",
        abs(math.log10(folds["tanh, Xavier gain 5/3"])), "<", 2)
control("losses.3", "ReLU with He init keeps the gradient within 100-fold", abs(math.log10(folds["ReLU, He init"])), "<", 2)
check("losses.3", "tanh's forward signal still collapses with the default init", spreads["tanh, default init"], "<", 1e-4)
control("losses.3", "with Xavier gain 5/3 the spread between examples survives the stack",
        spreads["tanh, Xavier gain 5/3"], ">", 1e-2)

# %%
sgd = lambda ps: SGD(ps, lr=0.003)  # noqa: E731
tanh_adam = copy.deepcopy(variants["tanh, default init"])
curves = {
    "tanh, SGD": train(copy.deepcopy(variants["tanh, default init"]), make_opt=sgd),
    "tanh Xavier 5/3, SGD": train(copy.deepcopy(variants["tanh, Xavier gain 5/3"]), make_opt=sgd),
    "tanh, Adam": train(tanh_adam),
    "sigmoid (losses.2), Adam": deep_curve,
}
plt.figure(figsize=(5.5, 2.8))
for name, curve in curves.items():
    plt.semilogy([v / target_var for v in curve], ls="--" if name.startswith("sigmoid") else "-", label=name)
plt.xlabel("step")
plt.ylabel("MSE / variance of target")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()
first_below = {name: next((i for i, v in enumerate(c) if v < 0.5 * target_var), math.inf) for name, c in curves.items()}
print("first step with loss < half the variance:", first_below)
check("losses.3", "default-init tanh with SGD stays on the plateau (lowest loss / variance)",
      min(curves["tanh, SGD"]) / target_var, ">", 0.98)
control("losses.3", "at the same SGD learning rate, tanh with Xavier init learns (lowest loss / variance)",
        min(curves["tanh Xavier 5/3, SGD"]) / target_var, "<", 0.5)
check("losses.3", "with Adam, default-init tanh escapes (lowest loss / variance)", min(curves["tanh, Adam"]) / target_var, "<", 0.5)
check("losses.3", "after about 40 steps", first_below["tanh, Adam"], "between", (25, 60))
control("losses.3", "under the same Adam the sigmoid net stays on its plateau (lowest loss / variance)",
        min(curves["sigmoid (losses.2), Adam"]) / target_var, ">", 0.98)

moved = {name: float((trained[0].weight - start[0].weight).detach().norm() / start[0].weight.detach().norm())
         for name, trained, start in (("tanh", tanh_adam, variants["tanh, default init"]),
                                      ("sigmoid", sigmoid_adam, mlpirate))}
with gradient_flow(tanh_adam) as trained_flow:
    F.mse_loss(tanh_adam(X), Y).backward()
print(f"first layer's relative weight change under Adam: tanh {moved['tanh']:.1e}, sigmoid {moved['sigmoid']:.1e}; "
      f"tanh after training: first/last gradient norm {first_to_last(trained_flow):.2f}")
check("losses.3", "Adam moves default-init tanh's first layer by over 10 %", moved["tanh"], ">", 0.1)
control("losses.3", "but leaves the sigmoid net's first layer practically unchanged", moved["sigmoid"], "<", 1e-4)
check("losses.3", "after Adam's training the tanh net's gradient no longer vanishes: first/last about 0.2 (log10)",
      math.log10(first_to_last(trained_flow)), "~", math.log10(0.2), tol=0.5)

# %% [markdown]
# ### losses.4 · ReLU true or false
# Regarding the ReLU activation, state whether the following sentences are **true or false**
# and explain:
# - A. In a model using exclusively ReLU activations, there can be no vanishing gradients.
# - B. The gradient of ReLU is linear with its input when the input is positive.
# - C. ReLU can cause "dead" neurons, i.e. activations that remain at a constant value of zero.

# %% [markdown]
# **Answer:**
#
# **A. False.** ReLU's slope is 1 where a unit is active, but the backward pass also multiplies by the weight matrices and the 0/1 masks of inactive units. Per layer the squared gradient norm scales by $\tfrac12 n\operatorname{Var}(W_{ij})$ (fan-in $n$), $1/6$ with PyTorch's default $\operatorname{Var}(W_{ij})=1/(3n)$: about $0.41$ per layer in norm, so a 25-layer ReLU network loses about $10^{10}$ on the way to its first layer. He initialisation, $\operatorname{Var}(W_{ij})=2/n$, makes the factor 1.
#
# **B. False.** ReLU itself is linear for $x>0$ ($\operatorname{ReLU}(x)=x$); its gradient there is the constant 1 (0 for $x<0$).
#
# **C. True.** If a unit's pre-activation $\mathbf w^\top\mathbf x+b$ is negative for every input, it outputs 0 and its gradients $\partial L/\partial\mathbf w$, $\partial L/\partial b$ are exactly 0, so gradient descent never revives it. Causes: a too-large update or a large negative bias; leaky ReLU, moderate learning rates and normalised inputs prevent it.

# %% [markdown]
# **Why, in detail.** A: $\mathbb{E}\lVert\mathbf{g}_{l-1}\rVert^2\approx \frac{1}{2}\,n\operatorname{Var}(W_{ij})\,\mathbb{E}\lVert\mathbf{g}_l\rVert^2$ because half the units are active; $1/\sqrt6\approx0.41$ per layer gives $0.41^{25}\approx10^{-10}$. Fewer active units than half (many dead units, C) or smaller weights make it worse (not measured here). Measured: with the default initialisation a 25-layer ReLU network's gradient falls about $10^{10}$-fold, $0.41$ per layer as derived; with He initialisation it stays within a small factor.
#
# B: autograd's derivative of ReLU is exactly 1 at every positive input tried, from $10^{-3}$ to $10^{3}$, and 0 at and below 0 (PyTorch's convention at 0). ReLU's *value* over the same inputs grows a million-fold, as a linear function does: the constant slope is why ReLU does not shrink gradients in active units.
#
# C: one over-large SGD step (learning rate 30) kills about a fifth of a ReLU layer's units on the digits data (pixel intensities, all non-negative). In 20 further ordinary steps their incoming weights receive exactly zero gradient, do not change by a single bit, and the units stay dead, while the live units keep learning. With leaky ReLU (slope 0.01 below 0), the same step leaves units that are negative on every input, but they still receive a gradient.

# %%
# A. vanishing gradients in a network with only ReLU activations
def relu_net(depth: int, init=None) -> nn.Sequential:
    seed_everything(0)
    layers = [nn.Linear(N, H), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(H, H), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(H, 1))
    for m in net.modules():
        if init is not None and isinstance(m, nn.Linear):
            init(m.weight)
            nn.init.zeros_(m.bias)
    return net


relu_folds = {}
for name, init in {"default init": None, "He init": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")}.items():
    net = relu_net(25, init)
    with gradient_flow(net) as f:
        F.mse_loss(net(X), Y).backward()
    relu_folds[name] = first_to_last(f)
    print(f"25 ReLU layers, {name}: first/last gradient norm {relu_folds[name]:.1e}")
per_layer_relu = relu_folds["default init"] ** (1 / 25)
print(f"per-layer factor with default init: {per_layer_relu:.2f} (predicted 1/sqrt(6) = {1 / math.sqrt(6):.2f})")
check("losses.4.A", "a ReLU-only network's gradient vanishes about 1e10-fold (log10 first/last)",
      math.log10(relu_folds["default init"]), "~", -10, tol=1)
check("losses.4.A", "about 1/sqrt(6) = 0.41 per layer", per_layer_relu, "~", 1 / math.sqrt(6), rel=0.1)
control("losses.4.A", "with He init the same network keeps its gradient within 10-fold",
        abs(math.log10(relu_folds["He init"])), "<", 1)

# B. the derivative of ReLU at positive inputs
xs = torch.tensor([1e-3, 0.5, 1.0, 7.0, 1e3], requires_grad=True)
out = torch.relu(xs)
(slope,) = torch.autograd.grad(out.sum(), xs)
print("d ReLU/dx at", xs.tolist(), "=", slope.tolist())
check("losses.4.B", "ReLU's gradient is 1 at every positive input (largest deviation from 1)",
      float((slope - 1).abs().max()), "==", 0.0)
control("losses.4.B", "ReLU's value, which is linear there, grows a million-fold over the same inputs",
        float(out.detach()[-1] / out.detach()[0]), "~", 1e6, rel=1e-3)
xs_off = torch.tensor([-5.0, -1e-3, 0.0], requires_grad=True)
(slope_off,) = torch.autograd.grad(torch.relu(xs_off).sum(), xs_off)
check("losses.4.B", "the slope is 0 at and below 0", float(slope_off.abs().max()), "==", 0.0)

# %%
# C. dead neurons: a too-large step kills units, and they never come back
seed_everything(0)
images, digit_labels = digits()
images = images.flatten(1)  # raw pixel intensities in [0, 1], all non-negative
net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
leaky = copy.deepcopy(net)
leaky[1] = nn.LeakyReLU(0.01)


def dead_units(model: nn.Sequential) -> torch.Tensor:
    """Units whose pre-activation is negative or zero on every image."""
    with torch.no_grad():
        return (model[0](images) <= 0).all(0)


def big_step(model: nn.Sequential) -> None:
    opt = SGD(model.parameters(), lr=30.0)  # one far too large step
    opt.zero_grad()
    F.cross_entropy(model(images), digit_labels).backward()
    opt.step()


before = float(dead_units(net).float().mean())
big_step(net)
big_step(leaky)
dead = dead_units(net)
after = float(dead.float().mean())
w_dead, b_dead = net[0].weight[dead].detach().clone(), net[0].bias[dead].detach().clone()
w_live = net[0].weight[~dead].detach().clone()
opt = SGD(net.parameters(), lr=0.05)
max_dead_grad = 0.0
for _ in range(20):
    opt.zero_grad()
    F.cross_entropy(net(images), digit_labels).backward()
    max_dead_grad = max(max_dead_grad, net[0].weight.grad[dead].abs().max().item(), net[0].bias.grad[dead].abs().max().item())
    opt.step()
still_dead = dead_units(net)
leaky_negative = dead_units(leaky)
leaky.zero_grad()
F.cross_entropy(leaky(images), digit_labels).backward()
leaky_grad = float(leaky[0].weight.grad[leaky_negative].abs().max())
print(f"dead units: {before:.1%} at init, {after:.1%} after one step at lr 30, "
      f"{float(still_dead.float().mean()):.1%} after 20 more steps at lr 0.05")
print(f"largest gradient any dead unit's weights received: {max_dead_grad}; leaky ReLU: "
      f"{float(leaky_negative.float().mean()):.1%} of units negative on every image, largest gradient {leaky_grad:.1e}")
check("losses.4.C", "one too-large step kills over 10 % more of the units", after - before, ">", 0.1)
check("losses.4.C", "dead units get exactly zero gradient over 20 steps", max_dead_grad, "==", 0.0)
check("losses.4.C", "their weights do not change by a single bit",
      bool(torch.equal(net[0].weight[dead], w_dead) and torch.equal(net[0].bias[dead], b_dead)), "==", True)
check("losses.4.C", "every dead unit is still dead after 20 steps (count revived)", int((dead & ~still_dead).sum()), "==", 0)
control("losses.4.C", "the live units' weights do change (largest change)",
        float((net[0].weight.detach()[~dead] - w_live).abs().max()), ">", 1e-4)
control("losses.4.C", "with leaky ReLU, units negative on every image still get a gradient", leaky_grad, ">", 1e-8)
