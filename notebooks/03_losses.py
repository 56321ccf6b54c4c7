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

plot_style()
seed_everything(0)

# %% [markdown]
# ### losses.1
# You're training a an image classifier that, given an image, needs to classify it as either
# a dog (output 0) or a hotdog (output 1). Would you train this model with an L2 loss? if so,
# why? if not, demonstrate with a numerical example. What would you use instead?

# %% [markdown]
# **Answer:** No: with a sigmoid output the L2 loss is bounded by 1 and its gradient vanishes exactly where the model is confidently wrong (a hotdog scored with logit $z=-6$ gets an L2 gradient of $-0.005$, two hundred times weaker than cross-entropy's $-0.998$), so train with binary cross-entropy on the logit (`nn.BCEWithLogitsLoss`).
#
# Let the network output a logit $z$ and the probability of "hotdog" $p=\sigma(z)=1/(1+e^{-z})$, with label $y\in\{0,1\}$. Using $\sigma'(z)=p(1-p)$:
#
# $$
# \begin{aligned}
# \ell_{2}(z) &= (p-y)^2, & \frac{\partial \ell_{2}}{\partial z} &= 2(p-y)\,p(1-p),\\
# \ell_{\text{BCE}}(z) &= -y\log p-(1-y)\log(1-p), & \frac{\partial \ell_{\text{BCE}}}{\partial z} &= p-y .
# \end{aligned}
# $$
#
# For a hotdog ($y=1$) that the model confidently calls a dog ($z\to-\infty$, $p\to 0$), the L2 loss tends to the bounded value $1$ and its gradient is $2(p-1)p(1-p)\approx -2e^{z}\to 0$: the factor $\sigma'(z)$ switches the learning signal off exactly on the examples that most need it, and the loss surface is flat there. L2 after a sigmoid is not even convex: its second derivative in $z$ (for $y=1$), $-2p(1-p)^2(1-3p)$, is negative wherever $p<1/3$, while cross-entropy's, $p(1-p)$, is positive everywhere (for logistic regression, $z=\mathbf{w}^\top\mathbf{x}+b$, cross-entropy is convex in the weights). Cross-entropy grows like $|z|$ and its gradient tends to $-1$: the more confidently wrong, the full-strength push. The table below gives the numbers (each one is recomputed by autograd and checked against the formulas).
#
# There is also a statistical reason: cross-entropy is the negative log-likelihood of a Bernoulli model of the label, so minimising it is maximum-likelihood estimation of $P(\text{hotdog}\mid\text{image})$; L2 is the negative log-likelihood of Gaussian noise around a real-valued target, the wrong model for a 0/1 label. Without a sigmoid (regressing the raw output $\hat y$ onto 0/1), L2 goes wrong in the other direction too: an output $\hat y=3$ for a hotdog, confidently *correct*, costs $(3-1)^2=4$, more than the wrong guess $\hat y=0$ (cost 1), and its gradient pulls the prediction back towards 1, so far-away correct examples drag the decision boundary.
#
# What to use instead: a single logit with binary cross-entropy (`nn.BCEWithLogitsLoss`, which evaluates $\log\sigma$ stably), or equivalently two outputs with softmax cross-entropy (`nn.CrossEntropyLoss`). The training run below starts a logistic classifier confidently wrong (every example misclassified with a large margin): with cross-entropy, gradient descent fixes it within a few steps; with L2 it crawls on the flat part of the loss and is still wrong twenty steps later.

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

# every printed number agrees with the closed forms above
assert torch.allclose(grad_l2, 2 * (pd - 1) * pd * (1 - pd)), "dL2/dz = 2(p-y)p(1-p)"
assert torch.allclose(grad_bce, pd - 1), "dBCE/dz = p - y"
assert torch.allclose(bce.detach(), -torch.log(pd)), "BCE = -log p for y = 1"
# the claims of the answer, at the confidently wrong z = -6
assert abs(grad_l2[0] + 0.005) < 0.0005 and abs(grad_bce[0] + 0.998) < 0.001, "quoted gradients"
assert grad_bce[0] / grad_l2[0] > 150, "L2's gradient is >150x weaker when confidently wrong"
assert l2.max() < 1 and bce[0] > 6, "L2 is bounded by 1, BCE grows like |z|"
assert abs(grad_l2[0]) < abs(grad_l2[2]), "L2's push *shrinks* as the prediction gets more wrong"
(curv_l2,) = torch.autograd.grad(torch.autograd.grad(((torch.sigmoid(z) - 1) ** 2).sum(), z, create_graph=True)[0].sum(), z)
(curv_bce,) = torch.autograd.grad(torch.autograd.grad(F.binary_cross_entropy_with_logits(z, y, reduction="sum"), z, create_graph=True)[0].sum(), z)
assert torch.allclose(curv_l2, -2 * pd * (1 - pd) ** 2 * (1 - 3 * pd)) and curv_l2[0] < 0, "L2 is concave where p < 1/3"
assert torch.allclose(curv_bce, pd * (1 - pd)) and (curv_bce > 0).all(), "BCE is convex in z"
y_hat = torch.tensor([3.0, 0.0])  # no sigmoid: raw regression outputs for a hotdog
assert ((y_hat - 1) ** 2).tolist() == [4.0, 1.0], "L2 on raw outputs punishes confident correct more than wrong"

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
# A logistic classifier that starts confidently wrong, trained by gradient descent with each loss.
g = torch.Generator().manual_seed(0)
x = torch.cat([torch.randn(200, generator=g) - 2, torch.randn(200, generator=g) + 2])
labels = torch.cat([torch.zeros(200), torch.ones(200)])  # dog = 0, hotdog = 1
losses = {"L2": lambda s: ((torch.sigmoid(s) - labels) ** 2).mean(),
          "BCE": lambda s: F.binary_cross_entropy_with_logits(s, labels)}
accuracy = {}
for name, loss_fn in losses.items():
    w, b = torch.tensor(-3.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    curve = []
    for _ in range(60):
        scores = w * x + b
        curve.append(((scores > 0).float() == labels).float().mean().item())
        loss = loss_fn(scores)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= 1.0 * gw
            b -= 1.0 * gb
    accuracy[name] = curve
    fixed_at = next(i for i, a in enumerate(curve) if a > 0.9)
    print(f"{name}: accuracy at step 0, 10, 20, 59 = {curve[0]:.2f}, {curve[10]:.2f}, {curve[20]:.2f}, "
          f"{curve[-1]:.2f}; first step above 90 %: {fixed_at}")
    accuracy[name + " fixed at"] = fixed_at
assert accuracy["BCE"][10] > 0.95 and accuracy["L2"][20] < 0.1, "BCE recovers from a confidently wrong start, L2 is still wrong"
assert accuracy["L2 fixed at"] > 3 * accuracy["BCE fixed at"], "L2 takes over 3x as many steps to recover"

# %% [markdown]
# ### losses.2
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
# **Answer:** Vanishing gradients: 25 stacked sigmoid layers with PyTorch's default initialisation multiply the backward signal by about $0.14$ per layer, so the first layer receives a gradient $10^{21}$ times smaller than the last; the same contraction erases the input from the forward signal, so the network can only learn a constant (the mean temperature), which it does in a few steps and then stops.
#
# **Why.** For a layer $\mathbf{h}_{l}=\sigma(\mathbf{a}_l)$, $\mathbf{a}_l=\mathbf{W}_l\mathbf{h}_{l-1}+\mathbf{b}_l$, backpropagation multiplies the gradient by one Jacobian per layer:
#
# $$
# \frac{\partial L}{\partial \mathbf{h}_{0}}=\left(\prod_{l=1}^{25}\mathbf{W}_l^\top\operatorname{diag}\left(\sigma'(\mathbf{a}_l)\right)\right)\frac{\partial L}{\partial \mathbf{h}_{25}},\qquad \sigma'(a)=\sigma(a)\left(1-\sigma(a)\right)\le\frac{1}{4}.
# $$
#
# Every factor has $\sigma'\le 1/4$, and PyTorch's default `nn.Linear` initialisation, $W_{ij}\sim U\left(-1/\sqrt{H},1/\sqrt{H}\right)$, gives $\operatorname{Var}(W_{ij})=1/(3H)$, so $\mathbf{W}^\top$ scales a random vector by about $\sqrt{H\operatorname{Var}(W_{ij})}=1/\sqrt{3}\approx 0.58$. Together: about $0.58\times 0.24\approx 0.14$ per layer, and $0.14^{24}\approx 10^{-20}$ over the stack (measured below: $10^{21}$ from the output layer to the first). Note that the sigmoids here are *not* saturated (the tool finds 0 % of units in the flat tails): the derivative is at its maximum $\approx 1/4$ and that maximum is already too small. With Adam the tiny gradients are not rescued either: its update $m/(\sqrt{v}+\epsilon)$ is negligible when the gradient, $10^{-21}$, is far below $\epsilon=10^{-8}$.
#
# **What `[...]*24` creates.** Multiplying a list repeats *references*: the 24 "hidden layers" are one `nn.Linear(H, H)` object and one `nn.Sigmoid` object, registered 24 times. The model has 22,145 parameters instead of the 401,921 of 24 distinct layers, and the hidden stack applies the *same* map $\mathbf{h}\mapsto\sigma(\mathbf{W}\mathbf{h}+\mathbf{b})$ 24 times. That map is a contraction: its Lipschitz constant is at most $\lVert\mathbf{W}\rVert_2/4<1$, so iterating it drives every input to the same fixed point $\mathbf{h}^*$ (Banach's fixed-point theorem), whatever the pirates say. The network's output is then practically independent of its input, the best it can do is predict the mean temperature, and the loss plateaus at the variance of the targets. The parameter gradient of the shared layer is the sum of its 24 calls' contributions $\mathbf{g}_k\mathbf{h}_{k-1}^\top$, each proportional to the gradient $\mathbf{g}_k$ reaching that call, so only the last few calls effectively teach the shared weights, and nothing tells them how to make the early layers carry information about the input. Writing 24 distinct layers (a list comprehension) fixes the sharing but not the vanishing gradient (measured below).
#
# A second, data-side cause makes it worse: raw pirate counts (tens of thousands) fed into the first sigmoid saturate it (measured: most units in the flat tails), which vanishes the gradient of the first layer too; standardise the inputs. The cures are those of losses.3: fewer layers, an activation and initialisation that keep the per-layer gain near 1 (ReLU with He initialisation), normalisation layers, residual connections. (And pirates do not cause the temperature: the chart is a correlation through time.)
#
# **What the experiments show.** On synthetic pirate data the tool reports a vanishing flow with the 24-fold sharing, the forward spread between examples shrinks to float32 rounding, and training with Adam plateaus at the target variance within a few steps while a one-hidden-layer network, trained the same way, learns the data (its loss falls below a fifth of the variance).

# %%
hidden_linear, hidden_sigmoid = mlpirate[2], mlpirate[3]
shared = all(mlpirate[i] is hidden_linear and mlpirate[i + 1] is hidden_sigmoid for i in range(2, 50, 2))
n_params = sum(p.numel() for p in mlpirate.parameters())
n_distinct = (N * H + H) + 24 * (H * H + H) + (H + 1)
print(f"layers in the Sequential: {len(mlpirate)}, distinct hidden Linear objects: "
      f"{len({id(m) for m in mlpirate[2:50:2]})}, parameters: {n_params:,} (24 distinct layers: {n_distinct:,})")
assert shared and n_params == 22_145 and n_distinct == 401_921, "[...]*24 repeats one Linear and one Sigmoid"


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
print("\n".join(lines[:6] + ["..."] + lines[-9:]))  # the first and last layer calls, the verdict
per_layer = flow.fold_change ** (1 / 25)
sat = max(c.saturated_fraction for c in flow.layers if c.type == "Sigmoid")
print(f"gradient shrinks by {per_layer:.3f} per Linear+Sigmoid layer; saturated sigmoid units: {sat:.1%}")
assert flow.diagnosis == "vanishing" and flow.fold_change < 1e-18, "gradient vanishes >1e18-fold"
assert 0.08 < per_layer < 0.2, "about 0.58 x 0.24 = 0.14 per layer"
assert sat < 0.01, "the sigmoids are not saturated: the small maximum slope 1/4 is enough"
assert "called 24 times" in flow.layers[2].shared and flow.layers[2].calls == 24, "tool points out the sharing"
flow.plot(label="mlpirate").set_title("mlpirate: gradient norm at each layer call's output")
plt.show()

# %%
with gradient_flow(mlpirate) as raw_flow:  # un-normalised pirate counts
    F.mse_loss(mlpirate(counts), Y).backward()
mlpirate.zero_grad()
raw_sat = raw_flow.layers[1].saturated_fraction
print(f"raw counts as input: {raw_sat:.0%} of the first sigmoid's units saturated")
assert raw_sat > 0.5, "raw pirate counts saturate the first sigmoid"

untied = nn.Sequential(nn.Linear(N, H), nn.Sigmoid(), *[m for _ in range(24) for m in (nn.Linear(H, H), nn.Sigmoid())], nn.Linear(H, 1))
with gradient_flow(untied) as untied_flow:
    F.mse_loss(untied(X), Y).backward()
print("24 distinct layers:", untied_flow.reason)
assert untied_flow.diagnosis == "vanishing" and untied_flow.fold_change < 1e-15, "untying does not cure it"

# %%
# The forward signal: how different are the hidden vectors of different examples?
spread, h = [], X
with torch.no_grad():
    for layer in mlpirate:
        h = layer(h)
        if isinstance(layer, nn.Sigmoid):
            spread.append(h.std(0).mean().item())  # std across examples, averaged over units
lipschitz = torch.linalg.matrix_norm(hidden_linear.weight.detach(), ord=2).item() / 4
print(f"spread across examples after sigmoid 1, 5, 10, 25: {spread[0]:.1e}, {spread[4]:.1e}, {spread[9]:.1e}, {spread[24]:.1e}")
print(f"Lipschitz bound of the shared hidden map: ||W||_2 / 4 = {lipschitz:.2f}")
assert lipschitz < 1, "the shared hidden map is a contraction"
assert spread[24] < 1e-6 * spread[0], "all inputs collapse to one hidden vector"
plt.figure(figsize=(5, 2.6))
plt.semilogy(range(1, 26), spread, marker=".")
plt.xlabel("sigmoid layer")
plt.ylabel("std across examples")
plt.title("mlpirate's forward signal collapses")
plt.show()

# %%
def train(model: nn.Module, steps: int = 150, make_opt=lambda ps: torch.optim.Adam(ps, lr=1e-3)) -> list[float]:
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
deep_curve = train(copy.deepcopy(mlpirate))
shallow_curve = train(nn.Sequential(nn.Linear(N, H), nn.Sigmoid(), nn.Linear(H, 1)))
target_var = Y.var(unbiased=False).item()
print(f"target variance {target_var:.3f}; final loss: mlpirate {deep_curve[-1]:.3f}, one hidden layer {shallow_curve[-1]:.3f}")
plt.figure(figsize=(5, 2.8))
plt.plot(deep_curve, label="mlpirate")
plt.plot(shallow_curve, label="one hidden layer")
plt.axhline(target_var, ls=":", c="gray", label="variance of the target")
plt.xlabel("Adam step")
plt.ylabel("MSE")
plt.legend()
plt.show()
plateau_step = next(i for i, v in enumerate(deep_curve) if v < 1.02 * target_var)
print(f"mlpirate is within 2 % of the target variance from step {plateau_step} on")
assert plateau_step <= 15 and min(deep_curve[plateau_step:]) > 0.98 * target_var, "mlpirate plateaus at the target variance within a few steps"
assert shallow_curve[-1] < 0.2 * target_var, "a shallow network learns the same data (loss < a fifth of the variance)"

# %% [markdown]
# ### losses.3
# Referring to question 2 above: A friend suggests that if you replace the `sigmoid`
# activations with `tanh`, it will solve your problem. Is he correct? Explain why or why not.

# %% [markdown]
# **Answer:** Not by itself: tanh's steeper, zero-centred curve shrinks the gradient far less per layer (measured: $10^{6}$-fold over the stack instead of $10^{21}$-fold), but with the default initialisation it still vanishes and plain SGD still plateaus; what solves it is keeping every layer's gain near 1 (initialisation matched to the activation, such as Glorot/Xavier with gain $5/3$ for tanh or He for ReLU, normalisation, residual connections, fewer layers).
#
# **Why tanh helps.** $\tanh(a)=2\sigma(2a)-1$, so $\tanh'(a)=1-\tanh^2(a)\le 1$, four times sigmoid's maximum slope $1/4$, and its outputs are centred at 0 (sigmoid's are all positive, which shifts the next layer's pre-activations and, for each example, gives all incoming weight gradients of a unit the same sign). Per layer the backward factor becomes $\approx\sqrt{H\operatorname{Var}(W_{ij})}\cdot 1=1/\sqrt{3}\approx0.58$ instead of $\approx 0.14$.
#
# **Why it does not solve it.** $0.58^{24}\approx 10^{-6}$: the gradient still vanishes with depth, and the forward signal still shrinks towards the fixed point $\mathbf{0}$ by the same factor per layer. tanh also still saturates ($\tanh'\to0$ for $|a|\gtrsim 2$), e.g. on un-normalised inputs. The problem is the per-layer gain $\left\lVert\mathbf{W}^\top\operatorname{diag}(f'(\mathbf{a}))\right\rVert$ being below 1, which the activation only partly controls. With plain SGD the tanh network stays on the plateau. With Adam it escapes after a few dozen steps: Adam divides each parameter's step by the running RMS of its gradient, so parameters whose gradients are small but not negligible ($10^{-6}$ relative, not $10^{-21}$) still move at the full learning rate, and the shared matrix's leading directions grow (measured: its two largest singular values go from about 1.1 to about 1.5) until the gradient no longer vanishes (after training the tool calls the flow healthy). The rescue comes from the optimiser, not from tanh. The durable fix is to make the gain 1: Glorot/Xavier initialisation with gain $5/3$ for tanh, or ReLU with He initialisation $\operatorname{Var}(W_{ij})=2/\text{fan-in}$ (the factor 2 compensates for ReLU zeroing half its inputs), plus normalisation layers or residual connections for very deep stacks.
#
# **What the experiments show.** The tool diagnoses tanh with the default initialisation as vanishing ($10^{6}$-fold, and the forward spread between examples shrinks about as much), and tanh with Xavier (gain $5/3$) and ReLU with He initialisation as healthy; SGD leaves default-tanh on the plateau, and with Adam the well-initialised networks fit the data fastest.

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
    "sigmoid, default init": pirate_net(nn.Sigmoid),
    "tanh, default init": pirate_net(nn.Tanh),
    "tanh, Xavier gain 5/3": pirate_net(nn.Tanh, lambda w: nn.init.xavier_normal_(w, gain=5 / 3)),
    "ReLU, He init": pirate_net(nn.ReLU, lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
}
flows = {}
fig, ax = plt.subplots(figsize=(6, 3))
for name, net in variants.items():
    with gradient_flow(net) as flows[name]:
        F.mse_loss(net(X), Y).backward()
    net.zero_grad()
    flows[name].plot(ax=ax, label=name)
    print(f"{name:24s} {flows[name].diagnosis:9s} first/last gradient norm = {flows[name].fold_change:.1e}")
ax.legend(fontsize=8)
plt.show()
assert flows["tanh, default init"].diagnosis == "vanishing", "tanh alone still vanishes"
assert 1e-9 < flows["tanh, default init"].fold_change < 1e-4, "tanh: roughly 0.58^24 = 1e-6"
assert flows["tanh, default init"].fold_change > 1e10 * flows["sigmoid, default init"].fold_change, "tanh vanishes far less than sigmoid"
assert flows["tanh, Xavier gain 5/3"].diagnosis == "healthy" and flows["ReLU, He init"].diagnosis == "healthy", "gain-1 init is healthy"
with torch.no_grad():
    hidden = variants["tanh, default init"][:-1]
    shrink = hidden(X).std(0).mean() / hidden[:2](X).std(0).mean()
print(f"tanh, default init: spread between examples at the last hidden layer = {shrink:.1e} x the first's")
assert shrink < 1e-4, "tanh's forward signal still collapses with the default init"

# %%
tanh_adam = copy.deepcopy(variants["tanh, default init"])
curves = {
    "tanh, SGD": train(copy.deepcopy(variants["tanh, default init"]), make_opt=lambda ps: torch.optim.SGD(ps, lr=0.01)),
    "tanh, Adam": train(tanh_adam),
    "tanh Xavier 5/3, Adam": train(copy.deepcopy(variants["tanh, Xavier gain 5/3"])),
    "ReLU He, Adam": train(copy.deepcopy(variants["ReLU, He init"])),
}
plt.figure(figsize=(5, 2.8))
for name, curve in curves.items():
    plt.plot(curve, label=name)
plt.axhline(target_var, ls=":", c="gray")
plt.xlabel("step")
plt.ylabel("MSE")
plt.legend(fontsize=8)
plt.show()
first_below = {name: next((i for i, v in enumerate(c) if v < 0.5 * target_var), None) for name, c in curves.items()}
print("first step with loss < half the variance:", first_below)
assert min(curves["tanh, SGD"]) > 0.98 * target_var, "default-init tanh with SGD stays on the plateau"
assert curves["tanh, Adam"][-1] < 0.5 * target_var, "Adam's rescaling lets default-init tanh escape"
assert first_below["tanh Xavier 5/3, Adam"] < first_below["tanh, Adam"], "proper init learns sooner than tanh alone"
assert first_below["ReLU He, Adam"] < first_below["tanh, Adam"], "ReLU + He init learns sooner than tanh alone"
assert curves["ReLU He, Adam"][-1] < 0.1 * target_var, "ReLU + He init trains"
with gradient_flow(tanh_adam) as trained_flow:
    F.mse_loss(tanh_adam(X), Y).backward()
top_sv = {name: torch.linalg.svdvals(net[2].weight.detach())[:2].tolist()
          for name, net in (("before", variants["tanh, default init"]), ("after", tanh_adam))}
print(f"tanh + Adam after training: {trained_flow.diagnosis} ({trained_flow.reason})")
print(f"two largest singular values of the shared hidden matrix: before {top_sv['before'][0]:.2f}, {top_sv['before'][1]:.2f}; "
      f"after {top_sv['after'][0]:.2f}, {top_sv['after'][1]:.2f}")
assert trained_flow.diagnosis == "healthy", "after Adam's training the gradient no longer vanishes"
assert min(top_sv["after"]) > 1.25 * max(top_sv["before"]), "Adam grew the shared matrix's leading directions"

# %% [markdown]
# ### losses.4
# Regarding the ReLU activation, state whether the following sentences are **true or false**
# and explain:
# - A. In a model using exclusively ReLU activations, there can be no vanishing gradients.
# - B. The gradient of ReLU is linear with its input when the input is positive.
# - C. ReLU can cause "dead" neurons, i.e. activations that remain at a constant value of zero.

# %% [markdown]
# **Answer:** A false, B false, C true.
#
# **A. False.** ReLU's derivative is exactly 1 where it is active, so the activation itself does not shrink the gradient the way a sigmoid does, but the backward pass also multiplies by the weight matrices and by the 0/1 masks of inactive units. For a ReLU layer of fan-in $n$ with i.i.d. weights, $\mathbb{E}\lVert\mathbf{g}_{l-1}\rVert^2\approx \frac{1}{2}\,n\operatorname{Var}(W_{ij})\,\mathbb{E}\lVert\mathbf{g}_l\rVert^2$ (half the units are active). PyTorch's default $\operatorname{Var}(W_{ij})=1/(3n)$ gives a factor $1/6$ in squared norm, $1/\sqrt6\approx0.41$ per layer: $0.41^{25}\approx10^{-10}$: a 25-layer ReLU network loses about ten orders of magnitude of gradient on the way back to its first layer. The formula also shows what else does it: fewer active units than half (many dead units, C) or smaller weights. He initialisation, $\operatorname{Var}(W_{ij})=2/n$, makes the factor 1; that is why it exists.
#
# **B. False.** ReLU *itself* is linear for positive inputs, $\operatorname{ReLU}(x)=x$, so its gradient there is the constant $1$, not linear in $x$ (and $0$ for $x<0$; at $x=0$ PyTorch uses $0$). The constant slope is exactly why it does not shrink gradients in active units.
#
# **C. True.** If a unit's pre-activation $\mathbf{w}^\top\mathbf{x}+b$ is negative for every input, its output is 0 for all of them and so is its local derivative, so $\partial L/\partial\mathbf{w}=\partial L/\partial b=0$: gradient descent never changes its weights and it stays dead for good. A large update (a too-high learning rate) that pushes $b$ or $\mathbf{w}$ far negative, or inputs that are all positive, cause it. The usual remedies: leaky ReLU or ELU, whose non-zero slope for $x<0$ keeps a gradient flowing to such a unit, moderate learning rates, and normalised (zero-centred) inputs.
#
# **What the experiments show.** A: with default initialisation a 25-layer ReLU network's gradient falls about $10^{10}$-fold (0.4 per layer, as derived), with He initialisation it stays within a small factor. B: autograd's derivative of ReLU is exactly 1 at every positive input tried, from $10^{-3}$ to $10^{3}$ (and 0 at and below 0). C: one over-large SGD step kills a fifth of a ReLU layer's units on the digits data; in 50 further ordinary steps their incoming weights receive exactly zero gradient, do not change by a single bit, and the units stay dead.

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


relu_flows = {}
for name, init in {"default init": None, "He init": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")}.items():
    net = relu_net(25, init)
    with gradient_flow(net) as relu_flows[name]:
        F.mse_loss(net(X), Y).backward()
    print(f"25 ReLU layers, {name}: {relu_flows[name].diagnosis} ({relu_flows[name].reason})")
per_layer_relu = relu_flows["default init"].fold_change ** (1 / 25)
print(f"per-layer factor with default init: {per_layer_relu:.2f} (predicted 1/sqrt(6) = {1 / math.sqrt(6):.2f})")
assert relu_flows["default init"].diagnosis == "vanishing" and relu_flows["default init"].fold_change < 1e-7, "A is false"
assert 0.3 < per_layer_relu < 0.5, "about 1/sqrt(6) per layer"
assert relu_flows["He init"].diagnosis == "healthy", "He init keeps the gain near 1"

# B. the derivative of ReLU at positive inputs
xs = torch.tensor([1e-3, 0.5, 1.0, 7.0, 1e3], requires_grad=True)
(slope,) = torch.autograd.grad(torch.relu(xs).sum(), xs)
print("d ReLU/dx at", xs.tolist(), "=", slope.tolist())
assert torch.equal(slope, torch.ones_like(xs)), "B is false: the gradient is constant 1, not linear in x"
xs_off = torch.tensor([-5.0, -1e-3, 0.0], requires_grad=True)
(slope_off,) = torch.autograd.grad(torch.relu(xs_off).sum(), xs_off)
assert torch.equal(slope_off, torch.zeros(3)), "the slope is 0 at and below 0"

# %%
# C. dead neurons: a too-large step kills units, and they never come back
seed_everything(0)
images, digit_labels = digits()
images = images.flatten(1)  # raw pixel intensities in [0, 1], all non-negative
net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def dead_fraction() -> tuple[float, torch.Tensor]:
    with gradient_flow(net) as f:
        F.cross_entropy(net(images), digit_labels).backward()
    net.zero_grad()
    with torch.no_grad():
        dead = net[1](net[0](images)).sum(0) == 0
    return f.layers[1].dead_fraction, dead


before, _ = dead_fraction()
opt = torch.optim.SGD(net.parameters(), lr=30.0)  # one far too large step
opt.zero_grad()
F.cross_entropy(net(images), digit_labels).backward()
opt.step()
after, dead = dead_fraction()
w_dead, b_dead = net[0].weight[dead].detach().clone(), net[0].bias[dead].detach().clone()
opt = torch.optim.SGD(net.parameters(), lr=0.05)
max_dead_grad = 0.0
for _ in range(50):
    opt.zero_grad()
    F.cross_entropy(net(images), digit_labels).backward()
    max_dead_grad = max(max_dead_grad, net[0].weight.grad[dead].abs().max().item(), net[0].bias.grad[dead].abs().max().item())
    opt.step()
later, _ = dead_fraction()
print(f"dead units: {before:.1%} at init, {after:.1%} after one step at lr 30, {later:.1%} after 50 more steps at lr 0.05")
print(f"largest gradient any dead unit's weights received: {max_dead_grad}")
assert after > before + 0.1, "a large step kills many units"
assert max_dead_grad == 0.0, "dead units get exactly zero gradient"
assert torch.equal(net[0].weight[dead], w_dead) and torch.equal(net[0].bias[dead], b_dead), "their weights never change"
assert later >= after, "dead units stay dead"
