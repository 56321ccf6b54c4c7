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
# ## Optimization

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dlsummary import argmin_layer, digits, gradient_flow, plot_style, seed_everything
from dlsummary.errors import DLSummaryError
from dlsummary.evidence import check, control
from dlsummary.gradients import check_gradients

plot_style()
seed_everything(0)


def saved_bytes(model: nn.Module, x: torch.Tensor, distinct: bool = True) -> int:
    """Activation memory of one training step: the bytes autograd keeps for the backward pass
    of ``model``'s forward on the batch ``x``, less what it keeps for an empty batch (the
    weights). A tensor saved by two operations (a ReLU's output, which the next layer saves
    as its input) is stored once; ``distinct=False`` counts every save, as if it were not."""

    def count(batch: torch.Tensor) -> int:
        total, seen = 0, set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            storage = t.untyped_storage()
            if not distinct or storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch)
        return total

    return count(x) - count(x[:0].clone())


def first_to_last(flow) -> float:
    """Gradient norm at the first layer call's output over the norm at the last one,
    read from the flow's per-call rows (< 1: the gradient shrinks towards the input)."""
    norms = [c.grad_output_norm for c in flow.layers if c.grad_output_norm is not None]
    return norms[0] / norms[-1]


# One least-squares problem shared by opt.1, opt.2 and opt.4:
# L(w) = 1/(2N) sum_i (x_i^T w - y_i)^2, whose exact minimiser we know.
gen = torch.Generator().manual_seed(0)
N, D = 1024, 10
X = torch.randn(N, D, generator=gen) * torch.linspace(0.3, 1.5, D)
Y = X @ torch.randn(D, generator=gen) + 0.5 * torch.randn(N, generator=gen)
HESSIAN = X.T @ X / N
W_OPT = torch.linalg.solve(HESSIAN, X.T @ Y / N)
LAMBDA_MAX = float(torch.linalg.eigvalsh(HESSIAN).max())


def excess_loss(w: torch.Tensor) -> float:
    """L(w) - L(w*), exactly (the loss is quadratic)."""
    d = w - W_OPT
    return float(0.5 * d @ HESSIAN @ d)


def per_sample_gradients(w: torch.Tensor) -> torch.Tensor:
    """Row i is the gradient of sample i's loss at w."""
    return X * (X @ w - Y)[:, None]


def train(batch: int, lr: float, epochs: int, seed: int = 0) -> dict[str, list[float]]:
    """(Mini-batch) SGD without replacement; batch = N is plain gradient descent."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(D)
    hist = {"updates": [0], "samples": [0], "excess": [excess_loss(w)]}
    for _ in range(epochs):
        order = torch.randperm(N, generator=g)
        for start in range(0, N, batch):
            idx = order[start:start + batch]
            w = w - lr * per_sample_gradients(w)[idx].mean(0)
            hist["updates"].append(hist["updates"][-1] + 1)
            hist["samples"].append(hist["samples"][-1] + len(idx))
            hist["excess"].append(excess_loss(w))
    return hist

# %% [markdown]
# ### opt.1 · GD, SGD and mini-batch SGD
# Explain the difference between: stochastic gradient descent (SGD), mini-batch SGD and
# regular gradient descent (GD).

# %% [markdown]
# **Answer:** All three minimise $L(\boldsymbol{\theta})=\frac{1}{N}\sum_{i=1}^{N}\ell_i(\boldsymbol{\theta})$ by steps $\boldsymbol{\theta}\leftarrow\boldsymbol{\theta}-\eta\,\hat{\boldsymbol{g}}$, differing in how many samples $\hat{\boldsymbol{g}}$ averages. **GD** uses all $N$: the exact gradient, a deterministic step that (for $\eta\le 1/\lambda_{\max}$) lowers the loss every time, but one update per pass over the data, each costing compute and memory for all $N$ samples. **SGD** uses one random sample: an unbiased but noisy estimate (covariance $\boldsymbol{\Sigma}$), $N$ cheap updates per pass, a jittering loss. **Mini-batch SGD** averages a random batch of $B$: unbiased, noise variance $\operatorname{tr}\boldsymbol{\Sigma}/B$ (times $\frac{N-B}{N-1}$ without replacement), $\lceil N/B\rceil$ updates per pass, compute and memory per step $\propto B$. It is what deep learning calls "SGD".

# %% [markdown]
# **Why, in detail.** SGD's estimate is unbiased, $\mathbb{E}_i[\nabla\ell_i]=\nabla L$, with covariance $\boldsymbol{\Sigma}$ (the per-sample gradient covariance); a step costs $1/N$ of a GD step. With a constant $\eta$ the iterate keeps jittering around the minimum (a noise floor, opt.4.B); an exact limit needs a decaying learning rate. For a mini-batch drawn without replacement, $\mathbb{E}\lVert\hat{\boldsymbol{g}}_B-\nabla L\rVert^2=\frac{\operatorname{tr}\boldsymbol{\Sigma}}{B}\cdot\frac{N-B}{N-1}$, which is 0 at $B=N$. `torch.optim.SGD` steps on whatever batch it is given, so in code "SGD" is mini-batch SGD.
#
# **The experiment** runs the three on one least-squares problem ($N=1024$). GD lowers the loss at every update, SGD's loss rises at a large fraction of its updates. Per update GD makes the most progress; per sample processed (per unit of compute) SGD and mini-batch SGD are far ahead. The measured gradient noise follows $\operatorname{tr}\boldsymbol{\Sigma}/B\cdot(N-B)/(N-1)$ within a few percent; the same formula without the finite-population factor overstates it by about a third at $B=256$, outside that band. FLOPs and activation memory of a training step of a small MLP are measured proportional to $B$.

# %%
runs = {
    "GD (B=N)": train(N, 1.0 / LAMBDA_MAX, epochs=3),
    "mini-batch SGD (B=32)": train(32, 0.5 / LAMBDA_MAX, epochs=3),
    "SGD (B=1)": train(1, 0.05 / LAMBDA_MAX, epochs=3),
}
fig, (ax_u, ax_s) = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for name, h in runs.items():
    ax_u.loglog([u + 1 for u in h["updates"]], h["excess"], label=name)
    ax_s.semilogy(h["samples"], h["excess"], label=name)
ax_u.set(xlabel="updates + 1", ylabel="L(w) - L(w*)", title="per update")
ax_s.set(xlabel="samples processed", title="per sample processed (= compute)")
ax_s.legend(fontsize=8)
plt.tight_layout()
plt.show()

after_one_epoch = {name: h["excess"][h["samples"].index(N)] for name, h in runs.items()}
print("updates per epoch:", {name: h["updates"][-1] // 3 for name, h in runs.items()})
print("excess loss after one epoch:", {k: f"{v:.3g}" for k, v in after_one_epoch.items()})
gd, mb, sgd = runs.values()
rises = {name: sum(b > a for a, b in zip(h["excess"], h["excess"][1:])) / (len(h["excess"]) - 1)
         for name, h in runs.items()}
print("fraction of updates that raise the loss:", {k: f"{v:.2f}" for k, v in rises.items()})
check("opt.1", "GD with lr <= 1/lambda_max lowers the loss at every step (fraction of rises)", rises["GD (B=N)"], "==", 0.0)
control("opt.1", "SGD's loss is noisy: it rises at over 20 % of its updates", rises["SGD (B=1)"], ">", 0.2)
check("opt.1", "per update, GD makes more progress (SGD's excess / GD's after 3 updates)",
      sgd["excess"][3] / gd["excess"][3], ">", 2)
control("opt.1", "per sample processed, SGD is over 10 times closer after one epoch (GD's excess / SGD's)",
        after_one_epoch["GD (B=N)"] / after_one_epoch["SGD (B=1)"], ">", 10)
control("opt.1", "and so is mini-batch SGD (GD's excess / mini-batch's)",
        after_one_epoch["GD (B=N)"] / after_one_epoch["mini-batch SGD (B=32)"], ">", 10)

# %%
# The noise of the mini-batch gradient: unbiased, with variance tr(Sigma)/B * (N-B)/(N-1).
w_probe = torch.zeros(D)
grads = per_sample_gradients(w_probe)
full_grad = grads.mean(0)
trace_sigma = float(((grads - full_grad) ** 2).sum(1).mean())
draws = 1000
noise = {}
print(f"{'B':>5} {'|mean - g|^2':>11} {'E|g_B - g|^2':>13} {'theory':>9}")
for batch in [1, 4, 16, 64, 256, N]:
    chosen = torch.rand(draws, N, generator=gen).argsort(dim=1)[:, :batch]  # no replacement
    mask = torch.zeros(draws, N).scatter_(1, chosen, 1.0)
    estimates = mask @ grads / batch  # one mini-batch gradient per draw
    bias = float(((estimates.mean(0) - full_grad) ** 2).sum())  # E[bias] = theory / draws
    noise[batch] = float(((estimates - full_grad) ** 2).sum(1).mean())
    theory = trace_sigma / batch * (N - batch) / (N - 1)
    print(f"{batch:>5} {bias:>11.3g} {noise[batch]:>13.4g} {theory:>9.4g}")
    if batch < N:
        check("opt.1", f"the B={batch} mini-batch gradient is unbiased (squared error of the mean / its expected size)",
              bias / (theory / draws), "<", 5)
        check("opt.1", f"gradient variance at B={batch} is tr(Sigma)/B (N-B)/(N-1) (measured / theory)",
              noise[batch] / theory, "between", (0.85, 1.15))
check("opt.1", "the full-batch (GD) gradient has no noise at all", noise[N], "<", 1e-10)
control("opt.1", "without the factor (N-B)/(N-1), tr(Sigma)/B overstates the noise at B=256 (measured / formula)",
        noise[256] / (trace_sigma / 256), "<", 0.85)

# %%
# Compute (FLOPs) and activation memory of one training step grow with the batch.
mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                    nn.Linear(256, 10))
step_cost = {}
for batch in [16, 256, 4096]:
    x = torch.randn(batch, 64)
    with FlopCounterMode(display=False) as flops:
        mlp(x).sum().backward()
    step_cost[batch] = (flops.get_total_flops(), saved_bytes(mlp, x))
    print(f"B={batch:>5}: {step_cost[batch][0] / 1e6:8.1f} MFLOP per step, "
          f"activation memory {step_cost[batch][1] / 2**20:7.2f} MiB")
check("opt.1", "a step's FLOPs grow in proportion to B (B=4096 over B=16, per sample)",
      step_cost[4096][0] / 4096 / (step_cost[16][0] / 16), "~", 1.0, rel=0.01)
check("opt.1", "a step's activation memory grows in proportion to B (B=4096 over B=16, per sample)",
      step_cost[4096][1] / 4096 / (step_cost[16][1] / 16), "~", 1.0, rel=0.01)

# %% [markdown]
# ### opt.2 · why SGD, and when GD is impossible
# Regarding SGD and GD:
# - A. Provide at least two reasons for why SGD is used more often in practice compared to GD.
# - B. In what cases can GD not be used at all?

# %% [markdown]
# **Answer:**
#
# **A.** (1) *Compute:* an update costs $B$ samples instead of $N$, and on redundant data a mini-batch gradient is nearly the full one, so SGD makes $N/B$ useful updates for the price of one GD update (after one pass it is about 50 times closer to the optimum). (2) *Memory:* a step holds the activations of $B$ samples only. (3) *Noise* helps it leave saddle points and shallow local minima. (4) *Online:* it updates as data arrives.
#
# **B.** When the full gradient $\nabla L=\frac{1}{N}\sum_i\nabla\ell_i$ cannot be computed: (1) the data is a stream or unlimited, so there is no finite sum (SGD on the stream minimises the expected loss); (2) the data set does not fit in memory for one step: a ResNet's first layer alone keeps about 3.6 MiB of activations per $224\times224$ image, 4.9 TB for ImageNet's 1.28 M images, against 80 GB on a large GPU.

# %% [markdown]
# **Why, in detail.** A: far from the minimum, the per-sample gradients agree (the signal $\lVert\nabla L\rVert^2$ dominates the noise $\operatorname{tr}\boldsymbol{\Sigma}/B$), so a cheap noisy step is almost as good as an exact one; close to the minimum the noise dominates, which is why the learning rate is decayed. In deep networks SGD's noise is also often credited with finding solutions that generalise better (not measured here).
#
# B: on a stream the objective is an expectation $\mathbb{E}_{(x,y)\sim p}[\ell]$ over a distribution we can only sample; SGD on fresh samples is SGD on that expected loss. The experiment trains a linear model on a stream, each sample seen once, with a decaying step, and recovers the true weights to within 1 %. For memory, autograd's saved tensors are counted for one $7\times7$, stride-2 convolution with 64 channels and a ReLU on one $224\times224$ image: the convolution keeps its input ($3\cdot224^2$ floats) and the ReLU its output ($64\cdot112^2$ floats), 3.6 MiB in all; the count is checked against that sum. Accumulating the gradient over chunks makes GD computable again, but at one full pass over the data per single update it is GD in name only. A stand-in loss that squares the output saves the ReLU's output once more, the same tensor: counted once, it adds nothing, while counting every save would nearly double the figure.

# %%
# A: compute and memory, measured in opt.1.
print(f"after one pass over the data, excess loss: GD {after_one_epoch['GD (B=N)']:.3g}, "
      f"SGD {after_one_epoch['SGD (B=1)']:.3g}")
check("opt.2.A", "after one pass SGD is about 50 times closer to the optimum than GD (GD's excess / SGD's)",
      after_one_epoch["GD (B=N)"] / after_one_epoch["SGD (B=1)"], "~", 50, rel=0.2)
check("opt.2.A", "a step on B=16 needs under 1 % of the activation memory of a step on B=4096",
      step_cost[16][1] / step_cost[4096][1], "<", 0.01)

# B, first case: a stream. SGD sees every sample once and still converges; GD has no sum.
true_w = torch.tensor([2.0, -1.0, 0.5])


def stream(seed: int):
    """An endless source of (x, y) pairs: there is no 'full data set' to sum over."""
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(3, generator=g)
        yield x, float(x @ true_w) + 0.1 * float(torch.randn(1, generator=g))


w = torch.zeros(3)
start_error = float((w - true_w).norm())
for t, (x, y) in enumerate(stream(1)):
    if t == 5000:
        break
    lr = 0.5 / (10 + t) ** 0.6  # decaying step size: SGD's convergence condition
    w -= lr * (x @ w - y) * x
print(f"SGD on the stream after 5000 samples: w = {w.numpy().round(3)}, true {true_w.numpy()}")
check("opt.2.B", "SGD on a data stream, each sample seen once, recovers the true weights (error / initial error)",
      float((w - true_w).norm()) / start_error, "<", 0.01)

# B, second case: memory. Activations saved by the first layer of a ResNet for one image.
stem = nn.Sequential(nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3), nn.ReLU())
image = torch.randn(1, 3, 224, 224)
per_image = saved_bytes(stem, image)
conv_input_and_relu_output = (image.numel() + stem(image).numel()) * 4
full_batch_tb = per_image * 1_281_167 / 1e12


class SquaredOutput(nn.Module):
    """A stand-in loss: autograd saves its input, the ReLU's output, once more."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.square()


with_loss = saved_bytes(nn.Sequential(stem, SquaredOutput()), image)
with_loss_per_save = saved_bytes(nn.Sequential(stem, SquaredOutput()), image, distinct=False)
print(f"first layer only: {per_image / 2**20:.2f} MiB per image -> {full_batch_tb:.1f} TB "
      f"for a full-batch step over ImageNet; with a squared-output stand-in loss: {with_loss / 2**20:.2f} MiB "
      f"({with_loss_per_save / 2**20:.2f} MiB if every save were counted)")
check("opt.2.B", "the layer saves exactly its input and the ReLU's output (bytes measured / counted)",
      per_image / conv_input_and_relu_output, "==", 1.0)
check("opt.2.B", "about 3.6 MiB per image", per_image / 2**20, "~", 3.6, tol=0.1)
check("opt.2.B", "about 4.9 TB for a full-batch step over ImageNet", full_batch_tb, "~", 4.9, tol=0.1)
check("opt.2.B", "a full-batch step does not fit on an 80 GB GPU (TB needed / 0.08 TB)", full_batch_tb / 0.08, ">", 50)
check("opt.2.B", "a stand-in loss that squares the output adds no new tensor (bytes with / without it)",
      with_loss / per_image, "==", 1.0)
control("opt.2.B", "counting every save instead would inflate the figure by over 50 % (per-save count / distinct)",
        with_loss_per_save / per_image, ">", 1.5)

# %% [markdown]
# ### opt.3 · doubling the batch size
# You have trained a deep resnet to obtain SoTA results on ImageNet. While training using
# mini-batch SGD with a batch size of $B$, you noticed that your model converged to a loss
# value of $l_0$ within $n$ iterations (batches across all epochs) on average. Thanks to your
# amazing results, you secure funding for a new high-powered server with GPUs containing
# twice the amount of RAM. You're now considering to increase the mini-batch size from $B$
# to $2B$. Would you expect the number of of iterations required to converge to $l_0$ to
# decrease or increase when using the new batch size? explain in detail.

# %% [markdown]
# **Answer:** Decrease, or stay about the same; not increase. The mini-batch gradient's noise variance is $\propto 1/B$, so $2B$ gives a more accurate step. With the learning rate re-tuned (about doubled, the linear-scaling rule) the iterations roughly halve while $B$ is below the critical batch size $B_{\text{noise}}=\operatorname{tr}(\boldsymbol{H}\boldsymbol{\Sigma})/\boldsymbol{G}^\top\boldsymbol{H}\boldsymbol{G}$; above it the curvature caps the step ($\eta<2/\lambda_{\max}$) and they stop falling: $n(B)\approx n_{\min}(1+B_{\text{noise}}/B)$. With the learning rate unchanged they do not increase either; if $l_0$ is near the noise floor of batch $B$ (which scales like $\eta/B$), $2B$ can need far fewer than half. Each iteration costs twice the compute, so total compute grows slowly below $B_{\text{noise}}$ and $\propto B$ above it.

# %% [markdown]
# **Why, in detail.** Write $\hat{\boldsymbol{g}}_B=\boldsymbol{G}+\boldsymbol{\xi}$ with $\boldsymbol{G}=\nabla L$ and noise covariance $\boldsymbol{\Sigma}/B$ (opt.1). To second order one step changes the loss on average by
# $$\mathbb{E}\left[L(\boldsymbol{\theta}-\eta\hat{\boldsymbol{g}}_B)\right]-L(\boldsymbol{\theta})\approx-\eta\left\|\boldsymbol{G}\right\|^2+\frac{\eta^2}{2}\left(\boldsymbol{G}^\top\boldsymbol{H}\boldsymbol{G}+\frac{\operatorname{tr}(\boldsymbol{H}\boldsymbol{\Sigma})}{B}\right),$$
# so the best step and the best decrease per step are
# $$\eta^*(B)=\frac{\eta_{\max}}{1+B_{\text{noise}}/B},\qquad \Delta^*(B)=\frac{\Delta_{\max}}{1+B_{\text{noise}}/B},$$
# with $\eta_{\max}=\left\|\boldsymbol{G}\right\|^2/\boldsymbol{G}^\top\boldsymbol{H}\boldsymbol{G}$ and $\Delta_{\max}$ the noise-free (GD) values. Hence $n(B)\approx n_{\min}(1+B_{\text{noise}}/B)$ (McCandlish et al., 2018):
# - $B\ll B_{\text{noise}}$: $n\propto 1/B$; doubling the batch halves the noise, which allows twice the learning rate (Goyal et al., 2017), so the iterations about halve and the samples processed, $n\cdot B=n_{\min}(B+B_{\text{noise}})$, grow only slowly.
# - $B\gg B_{\text{noise}}$: the gradient is nearly exact, the step is capped by the curvature, and $n\to n_{\min}$, the number of GD steps; doubling $B$ only doubles the work per iteration.
# - Learning rate unchanged: the expected step is the same and only its noise drops, so the iterations do not increase. Constant-step SGD stalls at a noise floor proportional to $\eta/B$; if $l_0$ lies near or below the floor of $B$, batch $B$ takes very long (or never arrives) while $2B$ arrives: then the iterations, and even the compute, fall by more than half. Otherwise they change little.
#
# On a GPU that batch $B$ did not saturate, the wall time per iteration grows by less than $2\times$, so the time to $l_0$ can fall almost in proportion to the iterations (not measured here). $B_{\text{noise}}$ grows as the loss falls (here it doubles from the start to $l_0$), so a lower $l_0$ rewards larger batches for longer. Beyond the question: very large batches need a learning-rate warm-up, and may generalise somewhat worse (neither is measured here).
#
# **The experiment** runs mini-batch SGD on a noisy least-squares problem, 8 seeds per setting, and counts the iterations until the loss is within 2 % of its initial excess over the minimum, for $B=1,\dots,1024$: once with the learning rate re-tuned for every $B$ from a grid of powers of two (the rescaling is found, not assumed), and once with the rate tuned for $B=4$ kept for all $B$. The counts follow $n_{\min}(1+B_{\text{noise}}/B)$ with $B_{\text{noise}}\approx 17$ computed from the gradient statistics. With re-tuning, doubling $B$ about halves the iterations and doubles the best rate up to the knee; the samples processed grow only 1.5-fold from $B=1$ to $B=16$; past the knee the iterations stay flat, the best rate stays at $1/\lambda_{\max}$ (at $2/\lambda_{\max}$ no run reaches $l_0$) and the samples processed grow $\propto B$. With the rate fixed, the iterations never increase; $B=2$ does not reach $l_0$ at that rate within 1000 iterations (its noise floor lies above it) while $B=4$ needs 35; past the knee they barely move.

# %%
gen3 = torch.Generator().manual_seed(3)
N3, D3, SEEDS = 4096, 16, 8
X3 = torch.randn(N3, D3, generator=gen3) * torch.logspace(0, -0.5, D3)
Y3 = X3 @ torch.randn(D3, generator=gen3) + 0.5 * torch.randn(N3, generator=gen3)
H3 = X3.T @ X3 / N3
W3 = torch.linalg.solve(H3, X3.T @ Y3 / N3)
lam_max3 = float(torch.linalg.eigvalsh(H3).max())


def excess3(W: torch.Tensor) -> torch.Tensor:
    d = W - W3
    return 0.5 * ((d @ H3) * d).sum(-1)


TARGET = 0.02 * float(excess3(torch.zeros(D3)))
LRS = torch.tensor([2.0 ** -k for k in range(-1, 9)]) / lam_max3  # 2/lambda_max down to /256


def sweep(batch: int, lrs: torch.Tensor = LRS, max_iter: int = 4000) -> torch.Tensor:
    """For each learning rate in lrs: mean iterations over SEEDS runs to reach the target
    (inf if a run never does). All rates see the same batches; the sweep stops at 1.5 times
    the iterations of the first rate to finish (a slower one cannot be the best)."""
    g = torch.Generator().manual_seed(batch)
    W = torch.zeros(len(lrs), SEEDS, D3)
    hit = torch.full((len(lrs), SEEDS), math.inf)
    stop = max_iter
    for k in range(1, max_iter + 1):
        idx = torch.randint(0, N3, (SEEDS, batch), generator=g)
        xb = X3[idx]
        residual = torch.einsum("sbd,lsd->lsb", xb, W) - Y3[idx]
        W = W - lrs[:, None, None] * torch.einsum("sbd,lsb->lsd", xb, residual) / batch
        hit = torch.where((excess3(W) <= TARGET) & hit.isinf(), float(k), hit)
        if stop == max_iter and (~hit.isinf().any(1)).any():
            stop = int(1.5 * k) + 1
        if k >= stop:
            break
    return hit.mean(1)


batches = [2**k for k in range(11)]
table = torch.stack([sweep(b) for b in batches])        # (batch, lr)
tuned, best_lr_index = table.min(1)                      # lr re-tuned for every batch size
best_lr = LRS[best_lr_index] * lam_max3                  # in units of 1/lambda_max
BASE = batches.index(4)
lr_base = LRS[best_lr_index[BASE]]                       # the lr tuned for B = 4, kept for all B
fixed = torch.cat([sweep(b, lr_base[None], max_iter=1000) for b in batches])

# B_noise = tr(H Sigma) / G^T H G at a point whose excess loss is the target
w_t = W3 * (1 - math.sqrt(TARGET / float(excess3(torch.zeros(D3)))))
g_i = X3 * (X3 @ w_t - Y3)[:, None]
G = g_i.mean(0)
b_noise = float(torch.trace(H3 @ torch.cov(g_i.T, correction=0)) / (G @ H3 @ G))
g_start = X3 * (X3 @ torch.zeros(D3) - Y3)[:, None]  # the same at the start, w = 0
G_start = g_start.mean(0)
b_noise_start = float(torch.trace(H3 @ torch.cov(g_start.T, correction=0)) / (G_start @ H3 @ G_start))
bs = torch.tensor(batches, dtype=torch.float32)
model_curve = tuned[-1] * (1 + b_noise / bs)             # n_min (1 + B_noise / B)

fig, (ax_i, ax_n) = plt.subplots(1, 2, figsize=(9, 3.2))
ax_i.loglog(batches, tuned, "o-", label="lr tuned for each B")
ax_i.loglog(batches, fixed, "s-", label="lr fixed (tuned for B=4)")
ax_i.loglog(batches, model_curve, "k:", label="n_min (1 + B_noise/B)")
ax_n.loglog(batches, tuned * bs, "o-", label="lr tuned for each B")
ax_n.loglog(batches, fixed * bs, "s-", label="lr fixed (tuned for B=4)")
for ax in (ax_i, ax_n):
    ax.axvline(b_noise, color="gray", ls="--", lw=1)
ax_i.set(xlabel="batch size B", ylabel="iterations to reach l_0")
ax_n.set(xlabel="batch size B", ylabel="samples processed to reach l_0")
ax_i.legend(fontsize=7)
plt.tight_layout()
plt.show()


def fmt(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) and v > 0 else "-"


print(f"B_noise at the target = {b_noise:.1f}, at the start = {b_noise_start:.2f}")
print(f"{'B':>5} {'best lr':>8} {'iters':>7} {'model':>6} {'2B/B':>5} {'iters (fixed lr)':>17} {'2B/B':>5}")
ratio_t = tuned[1:] / tuned[:-1]
ratio_f = fixed[1:] / fixed[:-1]
for i, b in enumerate(batches):
    rt = fmt(float(ratio_t[i - 1])) if i else ""
    rf = fmt(float(ratio_f[i - 1])) if i else ""
    print(f"{b:>5} {float(best_lr[i]):>8.3f} {float(tuned[i]):>7.1f} {float(model_curve[i]):>6.1f} "
          f"{rt:>5} {float(fixed[i]):>17.1f} {rf:>5}")
print("iterations at lr = 2/lambda_max, per batch size:", table[:, 0].tolist())

small = [i for i, b in enumerate(batches[:-1]) if 2 * b <= b_noise]
large = [i for i, b in enumerate(batches[:-1]) if b >= 4 * b_noise]
samples_t = tuned * bs
check("opt.3", "the sweep covers both regimes (doublings below B_noise / 2 and above 4 B_noise)",
      min(len(small), len(large)), ">=", 2)
check("opt.3", "B_noise computed from the gradient statistics is about 17", b_noise, "~", 17, rel=0.1)
check("opt.3", "B_noise grows as the loss falls: it about doubles from the start to l_0 (at the target / at the start)",
      b_noise / b_noise_start, "~", 2, rel=0.2)
check("opt.3", "iterations follow n_min (1 + B_noise/B) (largest relative deviation)",
      float(((tuned - model_curve) / model_curve).abs().max()), "<", 0.25)
check("opt.3", "below the critical batch, doubling B (lr re-tuned) about halves the iterations (largest 2B/B)",
      max(float(ratio_t[i]) for i in small), "<", 0.65)
check("opt.3", "and never by more than half, apart from noise (smallest 2B/B)", min(float(ratio_t[i]) for i in small), ">", 0.45)
control("opt.3", "beyond the critical batch, doubling B no longer reduces the iterations (smallest 2B/B)",
        min(float(ratio_t[i]) for i in large), ">", 0.9)
check("opt.3", "the best learning rate grows with the batch below the knee (best lr at B / at B=1)",
      float(best_lr[small[-1] + 1] / best_lr[0]), ">=", 4)
control("opt.3", "past the knee the best learning rate stops growing (distinct best rates)",
        len(set(best_lr[large[0]:].tolist())), "==", 1)
check("opt.3", "the curvature caps the step: at 2/lambda_max not one batch size reaches l_0 (finite counts)",
      int(table[:, 0].isfinite().sum()), "==", 0)
check("opt.3", "with a re-tuned lr, below the knee the samples processed grow only about 1.5-fold from B=1 to B=16",
      float(samples_t[batches.index(16)] / samples_t[0]), "~", 1.5, rel=0.15)
control("opt.3", "past the critical batch, reaching l_0 costs over 20 times more samples",
        float(samples_t[-1] / samples_t[small[0]]), ">", 20)
check("opt.3", "with the lr unchanged, a larger batch never needs more iterations (largest 2B/B from B=4 on)",
      max(float(ratio_f[i]) for i in range(BASE, len(batches) - 1)), "<=", 1.05)
check("opt.3", "at the lr tuned for B=4, B=2 does not reach l_0 in 1000 iterations and B=4 does (iterations B=4 / B=2)",
      float(fixed[BASE] / fixed[BASE - 1]), "<", 0.5)
check("opt.3", "B=4 at its own tuned lr needs about 35 iterations", float(fixed[BASE]), "~", 35, rel=0.1)
control("opt.3", "with the lr unchanged and past the knee, a larger batch barely helps (smallest 2B/B)",
        min(float(ratio_f[i]) for i in large), ">", 0.85)

# %% [markdown]
# ### opt.4 · SGD versus GD, true or false
# For each of the following statements, state whether they're **true or false** and explain why.
# - A. When training a neural network with SGD, every epoch we perform an optimization step
#   for each sample in our dataset.
# - B. Gradients obtained with SGD have less variance and lead to quicker convergence
#   compared to GD.
# - C. SGD is less likely to get stuck in local minima, compared to GD.
# - D. Training with SGD requires more memory than with GD.
# - E. Assuming appropriate learning rates, SGD is guaranteed to converge to a local minimum,
#   while GD is guaranteed to converge to the global minimum.
# - F. Given a loss surface with a narrow ravine (high curvature in one direction): SGD with
#   momentum will converge more quickly than Newton's method which doesn't have momentum.

# %% [markdown]
# **Answer:**
#
# **A. True**, for SGD as defined in opt.1 (one sample per update): $N$ steps per epoch over $N$ samples. For mini-batch SGD it is false: $\lceil N/B\rceil$ steps.
#
# **B. False.** Both halves are backwards: GD's gradient is exact (zero variance), SGD's has variance $\operatorname{tr}\boldsymbol{\Sigma}/B\cdot\frac{N-B}{N-1}>0$, and per update GD converges faster while constant-step SGD stalls at a noise floor. SGD wins only per unit of compute.
#
# **C. True** (a tendency, not a guarantee). Deterministic GD stays in the basin it reaches; SGD's gradient noise can carry it over a low barrier out of a shallow basin, more so for small batches.
#
# **D. False.** An SGD step holds the activations of $B$ samples, a GD step those of all $N$; parameters and gradients are equal in size.
#
# **E. False.** Neither is guaranteed the global minimum of a non-convex loss: both converge (SGD with a decaying step) to a stationary point, typically a local minimum of the starting basin; GD finds the global one only for convex losses.
#
# **F. False.** Newton's step $-\boldsymbol{H}^{-1}\nabla L$ rescales each direction by its curvature, exactly what a ravine needs: on a quadratic ravine it reaches the minimum in one step whatever $\kappa=\lambda_{\max}/\lambda_{\min}$, while optimally tuned momentum needs $O(\sqrt{\kappa}\log(1/\epsilon))$ steps. Newton's drawback is cost ($O(d^3)$ per step), not speed.

# %% [markdown]
# **Why, in detail.** A: the count is the definition of an update; the experiment counts the steps a `DataLoader` yields per epoch at $B=1$ and $B=32$.
#
# B: on opt.1's problem the measured variance is about 155 at $B=1$ and 0 up to rounding at $B=N$; GD reaches an excess loss of 0.05 in 10 updates, SGD at a constant step needs over ten times as many, and SGD's floor over its last epoch is orders of magnitude above where GD goes.
#
# C and E: on a one-dimensional finite-sum loss $L(x)=\frac1{100}\sum_i[f(x)+a_ix]$ with $\sum_i a_i=0$ (so $L=f$), a shallow local minimum near $x=0.79$ sits next to the global one near $x=-1.13$. All 200 GD runs started in the shallow basin end in it; SGD with $B=1$ escapes in every run, with $B=4$ in most, and with $B=16$ the noise is too weak and it stays too. GD started in the global basin does reach the global minimum: where GD ends depends on where it starts.
#
# D: SGD with momentum adds one buffer the size of the parameters, small next to full-batch activations (measured below).
#
# F: momentum only damps GD's zig-zag across the ravine, $O(\sqrt{\kappa})$ instead of $O(\kappa)$ iterations. Measured on a rotated quadratic with $\kappa=100$: GD 767 iterations, optimal heavy-ball momentum 103, Newton 1; on the curved Rosenbrock ravine, Newton converges in under 10 steps and momentum, tuned over a grid, needs hundreds. On a round bowl ($\kappa=1$) momentum needs as few steps as Newton: the gap is the ravine's doing. Newton is also attracted to saddle points of non-convex losses (not measured here).

# %%
from torch.utils.data import DataLoader, TensorDataset

# A: optimizer steps per epoch.
steps = {batch: sum(1 for _ in DataLoader(TensorDataset(torch.zeros(1000, 1)), batch_size=batch))
         for batch in [1, 32]}
print("optimizer steps per epoch of 1000 samples:", steps)
check("opt.4.A", "single-sample SGD makes one step per sample (steps per epoch of 1000)", steps[1], "==", 1000)
control("opt.4.A", "mini-batch SGD (B=32) makes one step per mini-batch, not per sample", steps[32], "==", 32)

# B: variance, and convergence per update.
check("opt.4.B", "SGD's (B=1) gradient variance on opt.1's problem is about 155", noise[1], "~", 155, rel=0.05)
check("opt.4.B", "GD's gradient has zero variance (up to rounding)", noise[N], "<", 1e-10)
gd_long = train(N, 1.0 / LAMBDA_MAX, epochs=300)
level = 0.05


def updates_to(h: dict[str, list[float]], level: float) -> float:
    return next((u for u, e in zip(h["updates"], h["excess"]) if e <= level), math.inf)


print(f"updates to reach excess loss {level}: GD {updates_to(gd_long, level)}, "
      f"SGD {updates_to(runs['SGD (B=1)'], level)}")
sgd_floor = sum(runs["SGD (B=1)"]["excess"][-N:]) / N
print(f"SGD's floor over its last epoch: {sgd_floor:.3g}; GD after 300 updates: "
      f"{gd_long['excess'][-1]:.3g}")
check("opt.4.B", "GD reaches an excess loss of 0.05 in about 10 updates", updates_to(gd_long, level), "<=", 12)
check("opt.4.B", "per update, GD converges over 10 times faster than SGD (updates SGD / GD)",
      updates_to(runs["SGD (B=1)"], level) / updates_to(gd_long, level), ">", 10)
check("opt.4.B", "constant-step SGD stalls at a floor over 100 times above GD's result",
      sgd_floor / gd_long["excess"][-1], ">", 100)
control("opt.4.B", "per sample processed, SGD is ahead (opt.1: GD's excess / SGD's after one epoch)",
        after_one_epoch["GD (B=N)"] / after_one_epoch["SGD (B=1)"], ">", 10)

# D: activation memory of one step, SGD (B=32) against GD (the 1797 digits at once).
mem_sgd, mem_gd = saved_bytes(mlp, torch.randn(32, 64)), saved_bytes(mlp, torch.randn(1797, 64))
momentum_buffer = sum(p.numel() * p.element_size() for p in mlp.parameters())
print(f"activation memory: SGD step {mem_sgd / 2**20:.3f} MiB, GD step {mem_gd / 2**20:.2f} MiB; "
      f"a momentum buffer {momentum_buffer / 2**20:.2f} MiB")
check("opt.4.D", "a SGD step (B=32) needs 32/1797 of GD's activation memory (measured ratio)",
      mem_sgd / mem_gd, "~", 32 / 1797, rel=0.01)
control("opt.4.D", "even with a momentum buffer, SGD's step needs under half of GD's memory",
        (mem_sgd + momentum_buffer) / mem_gd, "<", 0.5)

# %%
# C and E: a finite-sum loss L(x) = mean_i [f(x) + a_i x] with mean(a) = 0, so L = f, whose
# shallow local minimum (x ~ 0.79) sits next to the global one (x ~ -1.13).
def f(x: torch.Tensor) -> torch.Tensor:
    return 0.25 * x**4 - 0.5 * x**2 + 0.3 * x


def f_prime(x: torch.Tensor) -> torch.Tensor:
    return x**3 - x + 0.3


gen4 = torch.Generator().manual_seed(4)
slopes = torch.randn(100, generator=gen4)
slopes = (slopes - slopes.mean()) / slopes.std()      # per-sample perturbations, mean exactly 0
RUNS = 200


def descend(batch: int, start: float) -> torch.Tensor:
    """RUNS runs of (mini-batch) SGD on L from x = start; batch = 100 = N is GD."""
    x = torch.full((RUNS,), start)
    for k in range(3000):
        lr = 0.1 if k < 1500 else 0.1 * (1 - (k - 1500) / 1500) + 1e-3  # then anneal
        noise_k = slopes[torch.randint(0, 100, (RUNS, batch), generator=gen4)].mean(1) \
            if batch < 100 else 0.0
        x = x - lr * (f_prime(x) + noise_k)
    return x


final = {batch: descend(batch, 1.5) for batch in [1, 4, 16, 100]}  # every run starts in the shallow basin
gd_from_left = descend(100, -1.5)
escaped = {b: float((x < 0).float().mean()) for b, x in final.items()}
print("fraction of runs ending in the global minimum:", escaped)

grid = torch.linspace(-1.8, 1.8, 400)
fig, (ax_f, ax_e) = plt.subplots(1, 2, figsize=(9, 3))
ax_f.plot(grid, f(grid))
ax_f.axvline(1.5, color="gray", ls="--", lw=1, label="start")
ax_f.set(xlabel="x", ylabel="L(x)", title="shallow local vs deep global minimum")
ax_f.legend(fontsize=8)
ax_e.bar([f"B={b}" if b < 100 else "GD" for b in final], list(escaped.values()))
ax_e.set(ylabel="runs reaching the global min")
plt.tight_layout()
plt.show()

global_x = float(grid[f(grid).argmin()])
check("opt.4.C", "SGD with B=1 escapes the shallow local minimum in every run", escaped[1], "==", 1.0)
check("opt.4.C", "SGD with B=4 escapes in most runs", escaped[4], ">", 0.5)
control("opt.4.C", "GD, from the same start, escapes in none", escaped[100], "==", 0.0)
check("opt.4.C", "the escaped B=1 runs sit at the global minimum (mean loss above the global minimum's)",
      float(f(final[1]).mean() - f(torch.tensor(global_x))), "<", 0.01)
check("opt.4.E", "GD converges to the local minimum of its basin (largest distance from x = 0.787)",
      float((final[100] - 0.787).abs().max()), "<", 1e-2)
check("opt.4.E", "not the global one (loss gap, local minimum over global)",
      float(f(final[100]).mean() - f(torch.tensor(global_x))), ">", 0.3)
check("opt.4.E", "SGD with B=16 is not guaranteed the global minimum either (fraction reaching it)", escaped[16], "<", 0.1)
control("opt.4.E", "GD started in the global basin does reach the global minimum (largest distance)",
        float((gd_from_left - global_x).abs().max()), "<", 2e-2)

# %%
# F: the narrow ravine. GD, momentum (heavy ball, tuned optimally) and Newton's method.
def make_quad(kappa: float):
    """A quadratic ravine rotated by 0.5 rad: curvature 1 along it, kappa across it."""
    c, s = math.cos(0.5), math.sin(0.5)

    def fun(u):
        a, b = c * u[0] + s * u[1], -s * u[0] + c * u[1]
        return 0.5 * (a * a + kappa * b * b)

    def grad(u):
        a, b = c * u[0] + s * u[1], -s * u[0] + c * u[1]
        return (c * a - s * kappa * b, s * a + c * kappa * b)

    def hess(u):
        return ((c * c + kappa * s * s, c * s - kappa * c * s), (c * s - kappa * c * s, s * s + kappa * c * c))

    return fun, grad, hess


def rosen(u):
    x, y = u
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosen_grad(u):
    x, y = u
    return (-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x))


def rosen_hess(u):
    x, y = u
    return ((2 - 400 * (y - 3 * x * x), -400 * x), (-400 * x, 200.0))


def minimise(method, fun, grad, hess, start, lr=0.0, beta=0.0, tol=1e-10, max_iter=50_000):
    """Iterations until fun < tol (inf if never), and the path."""
    u, v, path = start, (0.0, 0.0), [start]
    for k in range(1, max_iter + 1):
        g = grad(u)
        if method == "newton":
            (a, b), (c, d) = hess(u)
            det = a * d - b * c
            u = (u[0] - (d * g[0] - b * g[1]) / det, u[1] - (a * g[1] - c * g[0]) / det)
        else:  # heavy ball; beta = 0 is plain GD
            v = (beta * v[0] - lr * g[0], beta * v[1] - lr * g[1])
            u = (u[0] + v[0], u[1] + v[1])
        path.append(u)
        if not math.isfinite(u[0]) or abs(u[0]) > 1e6:
            return math.inf, path
        if fun(u) < tol:
            return k, path
    return math.inf, path


def optimal_momentum(kappa: float) -> dict[str, float]:
    """Heavy-ball parameters that are optimal on a quadratic with curvatures 1 and kappa."""
    return {"lr": 4 / (math.sqrt(kappa) + 1) ** 2, "beta": ((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)) ** 2}


kappa = 100.0
quad, quad_grad, quad_hess = make_quad(kappa)
quad_runs = {
    "GD (lr 2/(L+mu))": minimise("gd", quad, quad_grad, None, (-8.0, 3.0), lr=2 / (kappa + 1)),
    "momentum (optimal)": minimise("hb", quad, quad_grad, None, (-8.0, 3.0), **optimal_momentum(kappa)),
    "Newton": minimise("newton", quad, quad_grad, quad_hess, (-8.0, 3.0)),
}
bowl, bowl_grad, bowl_hess = make_quad(1.0)
bowl_its = {"momentum": minimise("hb", bowl, bowl_grad, None, (-8.0, 3.0), **optimal_momentum(1.0))[0],
            "Newton": minimise("newton", bowl, bowl_grad, bowl_hess, (-8.0, 3.0))[0]}
# Rosenbrock: momentum tuned over a grid (the best of 6 settings), Newton undamped.
momentum_grid = {(lr, beta): minimise("hb", rosen, rosen_grad, None, (-1.2, 1.0), lr=lr, beta=beta)
                 for lr in [1e-3, 2e-3] for beta in [0.9, 0.95, 0.99]}
best_setting = min(momentum_grid, key=lambda key: momentum_grid[key][0])
rosen_runs = {
    "GD (lr 2e-3)": minimise("gd", rosen, rosen_grad, None, (-1.2, 1.0), lr=2e-3),
    f"momentum (best: lr {best_setting[0]}, beta {best_setting[1]})": momentum_grid[best_setting],
    "Newton": minimise("newton", rosen, rosen_grad, rosen_hess, (-1.2, 1.0)),
}

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, fun, runs_f, box in [(axes[0], quad, quad_runs, (-9, 9, -5, 5)),
                             (axes[1], rosen, rosen_runs, (-1.5, 1.5, -0.5, 1.5))]:
    gx, gy = torch.meshgrid(torch.linspace(box[0], box[1], 200),
                            torch.linspace(box[2], box[3], 200), indexing="xy")
    gz = torch.tensor([[fun((float(a), float(b))) for a, b in zip(ra, rb)] for ra, rb in zip(gx, gy)])
    ax.contour(gx, gy, torch.log10(gz + 1e-3), levels=20, cmap="Greys", linewidths=0.6)
    for name, (iters, path) in runs_f.items():
        px, py = zip(*path[:400])
        ax.plot(px, py, ".-", ms=2, lw=0.8, label=f"{name}: {iters} its")
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set(xlabel="x", ylabel="y")
    ax.legend(fontsize=7, loc="lower right")
axes[0].set_title("quadratic ravine, kappa = 100")
axes[1].set_title("Rosenbrock ravine")
plt.tight_layout()
plt.show()

its = {k: v[0] for k, v in {**quad_runs, **{"R " + k: v for k, v in rosen_runs.items()}}.items()}
print("iterations to reach loss < 1e-10:", its, "; round bowl (kappa = 1):", bowl_its)
q_gd, q_mom, q_newton = (v[0] for v in quad_runs.values())
r_gd, r_mom, r_newton = (v[0] for v in rosen_runs.values())
check("opt.4.F", "Newton solves the quadratic ravine in one step", q_newton, "==", 1)
check("opt.4.F", "optimal momentum needs about 100 steps there, ~sqrt(kappa) log(1/eps)", q_mom, "between", (50, 200))
check("opt.4.F", "momentum beats GD by over 4x (GD's iterations / momentum's)", q_gd / q_mom, ">", 4)
check("opt.4.F", "GD with its best constant step needs about 770 iterations (~kappa log(1/eps))", q_gd, "~", 770, rel=0.05)
check("opt.4.F", "optimal momentum needs about 100 (quoted 103)", q_mom, "~", 103, rel=0.05)
check("opt.4.F", "Newton converges within 10 steps on the curved Rosenbrock ravine", r_newton, "<=", 10)
check("opt.4.F", "the best momentum setting needs hundreds of steps there", r_mom, "between", (100, 1000))
check("opt.4.F", "over 10 times Newton's", r_mom / r_newton, ">", 10)
control("opt.4.F", "on a round bowl (kappa = 1) momentum is as fast as Newton (iterations momentum - Newton)",
        bowl_its["momentum"] - bowl_its["Newton"], "<=", 1)

# %% [markdown]
# ### opt.5 · solving the inner problem of an argmin layer
# In tutorial 5 we saw an example of bi-level optimization in the context of deep learning,
# by embedding an optimization problem as a layer in the network. **True or false**: In order
# to train such a network, the inner optimization problem must be solved with a descent
# based method (such as SGD, LBFGS, etc). Provide a mathematical justification for your answer.
#
# (Context: the tutorial's layer outputs $\vec{y}^*(\vec{z})=\arg\min_{\vec{y}} f(\vec{y},\vec{z})$
# for the layer's input $\vec{z}$, and is trained end to end.)

# %% [markdown]
# **Answer:** **False.** Backpropagation needs only the Jacobian $\partial\boldsymbol{y}^*/\partial\boldsymbol{z}$. The optimality condition $\nabla_{\boldsymbol{y}}f(\boldsymbol{y}^*(\boldsymbol{z}),\boldsymbol{z})=\boldsymbol{0}$ holds for every $\boldsymbol{z}$; if $\boldsymbol{H}=\nabla^2_{\boldsymbol{y}\boldsymbol{y}}f$ is invertible, the implicit function theorem makes $\boldsymbol{y}^*$ differentiable, and differentiating the condition gives $\boldsymbol{H}\,\frac{\partial\boldsymbol{y}^*}{\partial\boldsymbol{z}}+\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f=\boldsymbol{0}$, so $\frac{\partial\boldsymbol{y}^*}{\partial\boldsymbol{z}}=-\boldsymbol{H}^{-1}\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f$ at $(\boldsymbol{y}^*,\boldsymbol{z})$. The backward pass is $\frac{\partial\mathcal{L}}{\partial\boldsymbol{z}}=-(\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f)^\top\boldsymbol{u}$ with $\boldsymbol{H}\boldsymbol{u}=\frac{\partial\mathcal{L}}{\partial\boldsymbol{y}^*}$. Only the solution enters, not how it was found: a closed form, bisection, an interior-point or black-box solver all work, provided the point is truly stationary and $\boldsymbol{H}$ is invertible.

# %% [markdown]
# **Why, in detail.** Every quantity in the formula is evaluated at $(\boldsymbol{y}^*,\boldsymbol{z})$: the solver's iterations never appear. Gradients for parameters $\boldsymbol{\phi}$ of the inner problem come the same way, with $\nabla^2_{\boldsymbol{y}\boldsymbol{\phi}}f$ in place of $\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f$; the linear solve can be direct, or conjugate gradients/MINRES with Hessian-vector products. Ridge regression, $\boldsymbol{y}^*=(\boldsymbol{X}^\top\boldsymbol{X}+\lambda\boldsymbol{I})^{-1}\boldsymbol{X}^\top\boldsymbol{t}$, is an inner problem solved in closed form. The conditions are (i) a point that really is stationary (the gradient's error grows with the residual $\nabla_{\boldsymbol{y}}f(\boldsymbol{y}^*)$), (ii) an invertible Hessian there, without which $\boldsymbol{y}^*$ need not be unique or differentiable (a linear program's solution jumps between vertices; not measured here), and (iii) for constrained problems, the KKT conditions in place of $\nabla_{\boldsymbol{y}}f=\boldsymbol{0}$ (as in OptNet). Only *unrolling*, backpropagating through the solver's iterations, depends on the solver, and needs a differentiable iterative one.
#
# **The experiment.** `dlsummary.argmin_layer` implements the formula. A digits classifier has a hidden layer $\boldsymbol{y}^*(\boldsymbol{z},\lambda)=\operatorname{argmin}_{\boldsymbol{y}}\sum_j\left[\frac{1}{2}(y_j-z_j)^2+\lambda\log\cosh y_j\right]$, a smooth shrinkage with learnable strength $\lambda>0$, solved by *bisection* on $y_j-z_j+\lambda\tanh y_j=0$, which uses only the sign of the derivative and is no descent method. Its implicit gradient agrees with finite differences and with the closed form $\partial y_j^*/\partial z_j=1/(1+\lambda\operatorname{sech}^2y_j^*)$. A ridge-regression layer solved in closed form gets the same gradient as autograd through the formula. Two controls: backpropagating through the bisection steps gives a wrong gradient, and stopping the bisection after 5 steps (a point that is not stationary) makes the implicit gradient wrong too. The network trains end to end, $\lambda$ included, and its gradient for $\lambda$ matches a finite difference.

# %%
def shrink_objective(y: torch.Tensor, z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """f(y; z, lam) per sample: a batch of independent, strictly convex inner problems."""
    log_cosh = y.abs() + torch.log1p(torch.exp(-2 * y.abs())) - math.log(2)  # overflow-free
    return (0.5 * (y - z) ** 2 + lam * log_cosh).sum(1)


def shrink_bisection(z: torch.Tensor, lam: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """Solve y - z + lam tanh(y) = 0 by bisection: y* lies between 0 and z (no descent)."""
    lo, hi = torch.minimum(z, torch.zeros_like(z)), torch.maximum(z, torch.zeros_like(z))
    if steps is None:
        steps = 60 if z.dtype == torch.float64 else 30
    for _ in range(steps):
        mid = (lo + hi) / 2
        positive = mid - z + lam * torch.tanh(mid) > 0
        lo, hi = torch.where(positive, lo, mid), torch.where(positive, mid, hi)
    return (lo + hi) / 2


shrink = argmin_layer(shrink_objective, shrink_bisection)

# 1) the implicit gradient, checked against finite differences and the closed form (float64)
z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
upstream = torch.randn(5, 4, dtype=torch.float64)
fd_check = check_gradients(lambda z_, lam_: (shrink(z_, lam_) * upstream).sum(), z, lam, names=["z", "lam"])
print(fd_check)
check("opt.5", "the implicit gradient (z and lam) matches central finite differences (largest abs error)",
      max(t.max_abs_error for t in fd_check.tensors), "<", 1e-7)
y_star = shrink(z, lam)
(dz,) = torch.autograd.grad(y_star.sum(), z)
analytic = 1 / (1 + lam.detach() / torch.cosh(y_star.detach()) ** 2)
unrolled_y = shrink_bisection(z, lam)          # autograd through the 60 bisection steps
(dz_unrolled,) = torch.autograd.grad(unrolled_y.sum(), z)
five_steps = lambda z_, lam_: shrink_bisection(z_, lam_, steps=5)  # noqa: E731  (not converged)
sloppy = argmin_layer(shrink_objective, five_steps, stationarity_tol=1e3)  # accepts the residual
(dz_sloppy,) = torch.autograd.grad(sloppy(z, lam).sum(), z)
try:
    argmin_layer(shrink_objective, five_steps)(z, lam)
    refused = False
except DLSummaryError:
    refused = True
print(f"max |implicit - analytic| = {float((dz - analytic).abs().max()):.1e}; "
      f"max |unrolled bisection - analytic| = {float((dz_unrolled - analytic).abs().max()):.2f}")
check("opt.5", "the implicit gradient equals 1/(1 + lam sech^2 y*) (largest abs error)",
      float((dz - analytic).abs().max()), "<", 1e-10)
control("opt.5", "differentiating through the bisection steps instead gives a wrong gradient (largest abs error)",
        float((dz_unrolled - analytic).abs().max()), ">", 0.05)
control("opt.5", "at a point that is not stationary (bisection stopped after 5 steps) the implicit gradient is wrong",
        float((dz_sloppy - analytic).abs().max()), ">", 1e-3)
check("opt.5", "so the layer refuses a non-stationary solution by default", refused, "==", True)

# a closed-form inner problem: ridge regression y* = (A^T A + I)^-1 A^T t, solved by one linear solve
A = torch.randn(6, 3, dtype=torch.float64)
ridge_objective = lambda y, t: 0.5 * ((A @ y - t) ** 2).sum() + 0.5 * (y**2).sum()  # noqa: E731
ridge_closed_form = lambda t: torch.linalg.solve(A.T @ A + torch.eye(3, dtype=A.dtype), A.T @ t)  # noqa: E731
ridge = argmin_layer(ridge_objective, ridge_closed_form)
t_in = torch.randn(6, dtype=torch.float64, requires_grad=True)
(dt_implicit,) = torch.autograd.grad((ridge(t_in) * torch.arange(1.0, 4.0, dtype=A.dtype)).sum(), t_in)
(dt_direct,) = torch.autograd.grad((ridge_closed_form(t_in) * torch.arange(1.0, 4.0, dtype=A.dtype)).sum(), t_in)
check("opt.5", "with a closed-form solver the implicit gradient equals autograd through the formula (largest abs error)",
      float((dt_implicit - dt_direct).abs().max()), "<", 1e-10)

# 2) a network with the layer, trained end to end on digits; its backward pass solves
# H u = v by MINRES on Hessian-vector products (faster here than building H)
shrink_fast = argmin_layer(shrink_objective, shrink_bisection, linear_solver="minres")
seed_everything(5)
images, labels = digits()
flat = images.flatten(1)
train_x, train_y, test_x, test_y = flat[:1500], labels[:1500], flat[1500:], labels[1500:]


class ShrinkNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(64, 24)
        self.raw_lam = nn.Parameter(torch.tensor(0.0))  # lam = softplus(raw_lam) > 0
        self.classify = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(shrink_fast(self.encode(x), F.softplus(self.raw_lam)))


net = ShrinkNet()
lam_start = float(F.softplus(net.raw_lam.detach()))
accuracy = lambda: float((net(test_x).detach().argmax(1) == test_y).float().mean())
acc_start = accuracy()
for _ in range(50):
    batch = torch.randint(0, 1500, (128,))
    loss = F.cross_entropy(net(train_x[batch]), train_y[batch])
    net.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 1.0 * p.grad  # plain SGD (avoids importing torch.optim)
acc_end, lam_end = accuracy(), float(F.softplus(net.raw_lam.detach()))
print(f"test accuracy {acc_start:.2f} -> {acc_end:.2f}; learned lam {lam_start:.3f} -> {lam_end:.3f}")

# 3) the whole network's gradient for lam, against a central finite difference (float64)
net64 = ShrinkNet().double()
x64, y64 = test_x[:50].double(), test_y[:50]
loss_of = lambda: F.cross_entropy(net64(x64), y64)
(g_lam,) = torch.autograd.grad(loss_of(), net64.raw_lam)
with torch.no_grad():
    h = 1e-6
    net64.raw_lam += h
    up = loss_of()
    net64.raw_lam -= 2 * h
    down = loss_of()
    net64.raw_lam += h
fd = (up - down) / (2 * h)
print(f"d loss / d raw_lam: implicit {float(g_lam):.8f}, finite difference {float(fd):.8f}")
check("opt.5", "the network's gradient for lam through the argmin layer matches a finite difference (relative error)",
      abs(float(g_lam - fd)) / abs(float(fd)), "<", 1e-6)
check("opt.5", "the network with a bisection-solved layer trains end to end (test accuracy)", acc_end, ">", 0.8)
control("opt.5", "before training it is at chance level (test accuracy)", acc_start, "<", 0.2)
check("opt.5", "the inner problem's own parameter lam is learned (change)", abs(lam_end - lam_start), ">", 0.05)

# %% [markdown]
# ### opt.6 · vanishing and exploding gradients
# You have trained a neural network, where each layer $l$ is represented by the mapping
# $\vec{y}_l=f_l(\vec{x};\vec{\theta}_l)$ for some arbitrary parametrized functions
# $f_l(\cdot;\vec{\theta}_l)$. Unfortunately while trying to break the record for the
# world's deepest network, you discover that you are unable to train your network with more
# than $L$ layers.
# - A. Explain the concepts of "vanishing gradients", and "exploding gradients".
# - B. How can each of these problems be caused by increased depth?
# - C. Provide a numerical example demonstrating each.
# - D. Assuming your problem is either of these, how can you tell which of them it is
#   without looking at the gradient tensor(s)?

# %% [markdown]
# **Answer:**
#
# **A.** By the chain rule the gradient for layer $l$ is a product of all later layers' Jacobians, $\frac{\partial\mathcal{L}}{\partial\boldsymbol{\theta}_l}=\frac{\partial\mathcal{L}}{\partial\boldsymbol{y}_L}\boldsymbol{J}_L\cdots\boldsymbol{J}_{l+1}\frac{\partial\boldsymbol{y}_l}{\partial\boldsymbol{\theta}_l}$, $\boldsymbol{J}_k=\frac{\partial\boldsymbol{y}_k}{\partial\boldsymbol{y}_{k-1}}$. *Vanishing:* the product is tiny, early layers barely move, training stalls. *Exploding:* it is huge, updates throw the parameters far away, the loss jumps or becomes inf/NaN.
#
# **B.** A product of $L$ factors of typical gain $\rho=\lVert\boldsymbol{J}_k\rVert$ behaves like $\rho^{L}$: exponentially small if $\rho<1$ (saturating activations, $\sigma'\le 1/4$; small weights), exponentially large if $\rho>1$ (e.g. ReLU weights with variance above $2/\text{fan-in}$).
#
# **C.** 20 sigmoids in a row: $\partial y_{20}/\partial y_0=\prod_l\sigma'(y_{l-1})\le 4^{-20}\approx10^{-12}$ (vanishing). In 20-layer MLPs: sigmoid with default initialisation, first-layer gradient $10^{-16}$ of the last's; ReLU with twice the He standard deviation, $10^{6}$ times larger, NaN after one SGD step.
#
# **D.** From training behaviour. *Exploding:* the loss and the weights become huge, spike, or become inf/NaN. *Vanishing:* the loss is finite but stuck on a plateau (here chance level, $\ln 10$), and the early layers' weights hardly change while the last layers' do.

# %% [markdown]
# **Why, in detail.** For $\boldsymbol{y}_k=\varphi(\boldsymbol{W}_k\boldsymbol{y}_{k-1})$, $\boldsymbol{J}_k=\operatorname{diag}(\varphi')\boldsymbol{W}_k$: vanishing comes from saturating activations ($\sigma'\le\frac{1}{4}$ everywhere, $\approx 0$ when saturated; $\tanh'\approx 0$ when saturated), small weights, or many layers with $\rho<1$; exploding from weights too large for the activation, or from the same matrix applied again and again (recurrent networks: powers of $\boldsymbol{W}$ with spectral radius above 1). The remedies keep $\rho\approx 1$ or give the gradient a path around the product: variance-preserving initialisation (Xavier, He), normalisation layers, residual connections, non-saturating activations, and, against explosion only, gradient clipping.
#
# **The experiments.** B: the sigmoid MLP's first-to-last gradient ratio, in orders of magnitude, doubles when the depth doubles from 10 to 20 (exponential in depth), while a He-initialised ReLU MLP keeps its gradient within 10-fold at both depths. C: the scalar chain of sigmoids is differentiated by autograd; the real 20-layer networks are measured with `dlsummary.gradient_flow`. D: the two deep networks of C and a He-initialised ReLU network (the healthy control) are trained for 30 SGD steps while only the loss and the weights are recorded; a rule that uses only these observables names all three correctly, and the sigmoid network's first layer stays frozen at a ten times larger learning rate too.

# %%
# C, a scalar chain: the product of 20 sigmoid derivatives.
y0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
y = y0
for _ in range(20):
    y = torch.sigmoid(y)
(d_sigmoid,) = torch.autograd.grad(y, y0)
print(f"d y20/d y0 through 20 sigmoids: {float(d_sigmoid):.2e} (bound 4^-20 = {0.25**20:.2e})")
check("opt.6.C", "20 sigmoids: the derivative stays below the bound 4^-20 = 9e-13", float(d_sigmoid), "<=", 0.25**20)

# C, real networks: 20-layer MLPs on digits, measured with dlsummary.gradient_flow.
seed_everything(6)
images, labels = digits()
x6, y6 = images.flatten(1)[:512], labels[:512]


def deep_mlp(activation: type[nn.Module], he_gain: float | None = None, depth: int = 20) -> nn.Sequential:
    """depth Linear layers of width 64; he_gain scales the He standard deviation sqrt(2/fan_in)
    (None keeps PyTorch's default initialisation)."""
    layers: list[nn.Module] = [nn.Linear(64, 64), activation()]
    for _ in range(depth - 2):
        layers += [nn.Linear(64, 64), activation()]
    net = nn.Sequential(*layers, nn.Linear(64, 10))
    if he_gain is not None:
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=he_gain * math.sqrt(2 / m.in_features))
                nn.init.zeros_(m.bias)
    return net


def measured_fold(net: nn.Sequential) -> tuple[float, object]:
    with gradient_flow(net) as flow:
        F.cross_entropy(net(x6), y6).backward()
    net.zero_grad()
    return first_to_last(flow), flow


nets6 = {"sigmoid, default init": deep_mlp(nn.Sigmoid),
         "ReLU, 2 x He init": deep_mlp(nn.ReLU, he_gain=2.0),
         "ReLU, He init (healthy)": deep_mlp(nn.ReLU, he_gain=1.0)}
folds6, flows6 = {}, {}
for name, net in nets6.items():
    folds6[name], flows6[name] = measured_fold(net)
    print(f"{name:>24}: first/last layer gradient norm = {folds6[name]:.1e}")
fig, ax = plt.subplots(figsize=(6.5, 3.2))
for name, flow in flows6.items():
    flow.plot(ax=ax, label=name)
ax.set_title("gradient norm per layer call, one backward pass")
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()
check("opt.6.C", "the deep sigmoid net's first-layer gradient is about 1e-16 of the last's (log10)",
      math.log10(folds6["sigmoid, default init"]), "~", -16, tol=1)
check("opt.6.C", "the over-scaled ReLU net's is about 1e6 times larger (log10)",
      math.log10(folds6["ReLU, 2 x He init"]), "~", 6, tol=1)
control("opt.6.C", "the He-initialised ReLU net keeps it within 10-fold (|log10|)",
        abs(math.log10(folds6["ReLU, He init (healthy)"])), "<", 1)

# B: the effect is exponential in depth.
depth_folds = {(kind, depth): measured_fold(deep_mlp(act, he_gain=gain, depth=depth))[0]
               for kind, act, gain in (("sigmoid", nn.Sigmoid, None), ("He ReLU", nn.ReLU, 1.0))
               for depth in (10, 20)}
print("first/last gradient norm at depth 10 and 20:", {k: f"{v:.1e}" for k, v in depth_folds.items()})
check("opt.6.B", "doubling the depth doubles the sigmoid net's orders of magnitude of vanishing (log ratio 20 / 10)",
      math.log10(depth_folds["sigmoid", 20]) / math.log10(depth_folds["sigmoid", 10]), "~", 2, rel=0.25)
control("opt.6.B", "with gain-1 (He) init, depth 20 stays within 10-fold as well (|log10|)",
        abs(math.log10(depth_folds["He ReLU", 20])), "<", 1)

# %%
# D: train each net for 30 SGD steps, recording only the loss and the weights.
def observe(net: nn.Sequential, lr: float = 0.05, steps: int = 30) -> dict:
    linears = [m for m in net if isinstance(m, nn.Linear)]
    start = [m.weight.detach().clone() for m in linears]
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(net(x6), y6)
        losses.append(loss.item())
        net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= lr * p.grad
    change = [float((m.weight.detach() - w0).norm() / w0.norm()) for m, w0 in zip(linears, start)]
    return {"loss": losses, "weight_change": change}


def diagnose(obs: dict) -> str:
    """Exploding or vanishing, from the loss curve and the weights only."""
    loss, change = obs["loss"], obs["weight_change"]
    if not all(math.isfinite(v) for v in loss + change) or max(loss) > 10 * math.log(10):
        return "exploding"            # non-finite or huge loss / weights
    stuck = loss[-1] > 0.97 * loss[0]  # less than 3 % progress
    early_frozen = change[0] < 1e-3 * change[-1]
    return "vanishing" if stuck and early_frozen else "healthy"


observations = {name: observe(net) for name, net in nets6.items()}
fig, (ax_l, ax_w) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
for name, obs in observations.items():
    finite = [v if math.isfinite(v) else float("nan") for v in obs["loss"]]
    ax_l.semilogy(finite, marker=".", label=name)
    ax_w.semilogy([max(c, 1e-12) if math.isfinite(c) else float("nan") for c in obs["weight_change"]],
                  marker=".", label=name)
    print(f"{name:>24}: loss {obs['loss'][0]:.3g} -> {obs['loss'][-1]:.3g}, weight change "
          f"first {obs['weight_change'][0]:.1e} last {obs['weight_change'][-1]:.1e} "
          f"-> {diagnose(obs)}")
ax_l.set(xlabel="SGD step", ylabel="training loss", title="loss (NaN not drawn)")
ax_w.set(xlabel="Linear layer (input side first)", ylabel="relative weight change",
         title=r"$\|W_{30}-W_0\|/\|W_0\|$ (0 drawn at $10^{-12}$)")
ax_l.legend(fontsize=7)
plt.show()

verdicts = {name: diagnose(obs) for name, obs in observations.items()}
vanishing_obs, exploding_obs = observations["sigmoid, default init"], observations["ReLU, 2 x He init"]
check("opt.6.A", "vanishing: the early layers stay at their initialisation (first-layer change / last-layer change)",
      vanishing_obs["weight_change"][0] / vanishing_obs["weight_change"][-1], "<", 1e-6)
check("opt.6.A", "exploding: the updates throw the weights to non-finite values (first layer's change finite?)",
      math.isfinite(exploding_obs["weight_change"][0]), "==", False)
check("opt.6.D", "vanishing is recognised: plateau while the first layer does not move",
      verdicts["sigmoid, default init"], "==", "vanishing")
check("opt.6.D", "exploding is recognised: the loss is huge and turns non-finite", verdicts["ReLU, 2 x He init"], "==", "exploding")
control("opt.6.D", "the rule does not misfire on the healthy net", verdicts["ReLU, He init (healthy)"], "==", "healthy")
explode_loss = observations["ReLU, 2 x He init"]["loss"]
check("opt.6.C", "the exploding net's loss at init is about 1e6 (log10)", math.log10(explode_loss[0]), "~", 6, tol=0.5)
check("opt.6.C", "and one SGD step makes it non-finite", math.isfinite(explode_loss[1]), "==", False)
check("opt.6.D", "the vanishing net sits at chance level, ln 10 (final loss)",
      observations["sigmoid, default init"]["loss"][-1], "~", math.log(10), tol=0.05)
check("opt.6.D", "the sigmoid net's first-layer updates underflow to exactly zero",
      observations["sigmoid, default init"]["weight_change"][0], "==", 0.0)
control("opt.6.D", "the healthy net's first layer moves as much as its last, within 10x (first / last)",
        observations["ReLU, He init (healthy)"]["weight_change"][0] / observations["ReLU, He init (healthy)"]["weight_change"][-1], ">", 0.1)
faster = observe(deep_mlp(nn.Sigmoid), lr=0.5)
check("opt.6.D", "a 10x larger learning rate does not move the sigmoid net's first layer either (first / last)",
      faster["weight_change"][0] / faster["weight_change"][-1], "<", 1e-6)
