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
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlsummary import argmin_layer, digits, gradient_flow, plot_style, seed_everything

plot_style()
seed_everything(0)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Activation memory of one training step: the bytes autograd keeps for the backward pass
    of ``model`` on the batch ``x``, less what it keeps for an empty batch (the weights)."""

    def count(batch: torch.Tensor) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch).square().mean()
        return total

    return count(x) - count(x[:0])


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
# ### opt.1
# Explain the difference between: stochastic gradient descent (SGD), mini-batch SGD and
# regular gradient descent (GD).

# %% [markdown]
# **Answer:** All three minimise the training loss $L(\boldsymbol{\theta})=\frac{1}{N}\sum_{i=1}^{N}\ell_i(\boldsymbol{\theta})$ with steps $\boldsymbol{\theta}\leftarrow\boldsymbol{\theta}-\eta\,\hat{\boldsymbol{g}}$ and differ only in how many samples the gradient $\hat{\boldsymbol{g}}$ averages: GD uses all $N$ samples (the exact gradient, one update per pass over the data), SGD uses one random sample ($N$ cheap, noisy updates per pass) and mini-batch SGD uses a random batch of $B$ samples ($\lceil N/B\rceil$ updates per pass, gradient noise shrinking like $1/B$).
#
# - **GD** computes $\nabla L(\boldsymbol{\theta})=\frac{1}{N}\sum_{i=1}^{N}\nabla\ell_i(\boldsymbol{\theta})$. The step is deterministic, and with $\eta\le 1/\lambda_{\max}(\nabla^2 L)$ on a smooth loss every step lowers the loss. Each step costs a forward and backward pass over all $N$ samples, and (done in one go) memory for all of their activations.
# - **SGD** picks one index $i$ at random and uses $\hat{\boldsymbol{g}}=\nabla\ell_i(\boldsymbol{\theta})$. It is an *unbiased* estimate, $\mathbb{E}_i[\nabla\ell_i]=\nabla L$, but a noisy one: its covariance is the per-sample gradient covariance $\boldsymbol{\Sigma}$. A step costs $1/N$ of a GD step, so SGD makes $N$ updates for the price of one GD update. The loss does not decrease monotonically, and with a constant $\eta$ the iterate keeps jittering around the minimum (a noise floor proportional to $\eta$); an exact limit needs a decaying learning rate.
# - **Mini-batch SGD** averages a random batch $\mathcal{B}$ of $B$ samples, $\hat{\boldsymbol{g}}_B=\frac{1}{B}\sum_{i\in\mathcal{B}}\nabla\ell_i$. It is still unbiased, and the noise falls with the batch: sampling without replacement, $\mathbb{E}\left\|\hat{\boldsymbol{g}}_B-\nabla L\right\|^2=\frac{\operatorname{tr}\boldsymbol{\Sigma}}{B}\cdot\frac{N-B}{N-1}$. The cost and the activation memory of a step grow linearly in $B$. It interpolates between the two ($B=1$ is SGD, $B=N$ is GD), uses the parallel hardware well, and is what "SGD" means in deep-learning practice (`torch.optim.SGD` steps on whatever batch it is given).
#
# The experiment runs the three on one least-squares problem ($N=1024$): per update GD makes the most progress, but per sample processed (that is, per unit of compute) SGD and mini-batch SGD are far ahead; the measured gradient noise follows $\operatorname{tr}\boldsymbol{\Sigma}/B\cdot(N-B)/(N-1)$; and the cost and memory of a step grow with $B$.

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
plt.show()

after_one_epoch = {name: h["excess"][h["samples"].index(N)] for name, h in runs.items()}
print("updates per epoch:", {name: h["updates"][-1] // 3 for name, h in runs.items()})
print("excess loss after one epoch:", {k: f"{v:.3g}" for k, v in after_one_epoch.items()})
gd, mb, sgd = runs.values()
assert [gd["updates"][-1], mb["updates"][-1], sgd["updates"][-1]] == [3, 3 * 32, 3 * N], \
    "updates per epoch: GD 1, mini-batch N/B, SGD N"
assert all(b < a for a, b in zip(gd["excess"], gd["excess"][1:])), \
    "GD with lr <= 1/lambda_max lowers the loss at every step"
rises = sum(b > a for a, b in zip(sgd["excess"], sgd["excess"][1:]))
assert rises > 0.2 * len(sgd["excess"]), f"SGD's loss is noisy, not monotone ({rises} rises)"
assert gd["excess"][3] < sgd["excess"][3] / 2, "per update, GD makes more progress than SGD"
assert after_one_epoch["SGD (B=1)"] < after_one_epoch["GD (B=N)"] / 10 \
    and after_one_epoch["mini-batch SGD (B=32)"] < after_one_epoch["GD (B=N)"] / 10, \
    "per sample processed, SGD and mini-batch SGD are far ahead of GD"

# %%
# The noise of the mini-batch gradient: unbiased, with variance tr(Sigma)/B * (N-B)/(N-1).
w_probe = torch.zeros(D)
grads = per_sample_gradients(w_probe)
full_grad = grads.mean(0)
trace_sigma = float(((grads - full_grad) ** 2).sum(1).mean())
draws = 1000
print(f"{'B':>5} {'|mean - g|^2':>11} {'E|g_B - g|^2':>13} {'theory':>9}")
for batch in [1, 4, 16, 64, 256, N]:
    chosen = torch.rand(draws, N, generator=gen).argsort(dim=1)[:, :batch]  # no replacement
    mask = torch.zeros(draws, N).scatter_(1, chosen, 1.0)
    estimates = mask @ grads / batch  # one mini-batch gradient per draw
    bias = float(((estimates.mean(0) - full_grad) ** 2).sum())  # E[bias] = theory / draws
    measured = float(((estimates - full_grad) ** 2).sum(1).mean())
    theory = trace_sigma / batch * (N - batch) / (N - 1)
    print(f"{batch:>5} {bias:>11.3g} {measured:>13.4g} {theory:>9.4g}")
    assert bias <= 5 * theory / draws + 1e-10, \
        f"the B={batch} mini-batch gradient is unbiased (its mean error is sampling noise)"
    if batch < N:
        assert 0.85 < measured / theory < 1.15, \
            f"gradient variance at B={batch} is tr(Sigma)/B*(N-B)/(N-1)"
    else:
        assert measured < 1e-10, "the full-batch (GD) gradient has no noise at all"

# %%
# Cost and memory of one training step grow with the batch (a 3-layer MLP on 64 inputs).
mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                    nn.Linear(256, 10))
step_cost = {}
for batch in [16, 256, 4096]:
    x = torch.randn(batch, 64)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        mlp(x).square().mean().backward()
        times.append(time.perf_counter() - t0)
    step_cost[batch] = (min(times), saved_bytes(mlp, x))
    print(f"B={batch:>5}: step {min(times) * 1e3:7.2f} ms, "
          f"activation memory {step_cost[batch][1] / 2**20:7.2f} MiB")
bytes_per_sample = step_cost[16][1] / 16
assert all(step_cost[b][1] == b * bytes_per_sample for b in step_cost), \
    "activation memory of a step is proportional to the batch size"
assert step_cost[4096][0] > 5 * step_cost[16][0], "a step on a larger batch costs more time"

# %% [markdown]
# ### opt.2
# Regarding SGD and GD:
# - A. Provide at least two reasons for why SGD is used more often in practice compared to GD.
# - B. In what cases can GD not be used at all?

# %% [markdown]
# **Answer:** SGD gives far more progress per unit of compute and memory, and its noise helps on non-convex losses; GD cannot be used when the full gradient cannot be computed: data that arrives as a stream or is unlimited, and (in one step) data that does not fit in memory.
#
# **A.** Reasons to prefer (mini-batch) SGD:
# 1. *Compute.* An update costs $O(B)$ instead of $O(N)$, and because real data sets are redundant (many samples say nearly the same thing), a mini-batch gradient points almost where the full gradient points when far from the minimum. So SGD makes $N/B$ useful updates for the price of one GD update. In the opt.1 experiment, after one pass over the data SGD and mini-batch SGD are over ten times closer to the optimum than GD.
# 2. *Memory.* A step only needs the activations of $B$ samples. Memory grows linearly with $B$ (measured exactly above), so a batch fits on a GPU while the whole data set does not.
# 3. *Noise as a feature.* The gradient noise lets SGD leave saddle points and shallow or sharp minima that trap GD (opt.4.C), and in deep networks it tends to find solutions that generalise better.
# 4. *Online use.* SGD can update the model as data arrives, and can train on unlimited data (fresh augmentations, simulators, reinforcement learning).
#
# **B.** GD needs $\nabla L=\frac{1}{N}\sum_{i=1}^{N}\nabla\ell_i$ over a fixed, finite data set at every step. It cannot be used:
# - when the data is a *stream* or unlimited (online learning, data generated on the fly, non-stationary data). The objective is an expectation $\mathbb{E}_{(x,y)\sim p}[\ell]$ over a distribution we can only sample, so there is no finite sum to compute, while SGD on the stream is exactly SGD on the expected loss. The experiment trains on a stream, each sample seen once, and recovers the true weights.
# - when the data set *does not fit in memory* for one step. A full-batch step must hold the activations of all $N$ samples. We measure the activation memory that the first layer of a ResNet alone (a $7\times 7$ convolution and a ReLU) keeps for one $224\times 224$ image: about 7 MiB, which makes about 9 TB for the 1.28 M ImageNet images, for one layer, against 80 GB on a large GPU. Accumulating the gradient over chunks makes GD computable again, but at one full pass over the data per single update it is GD in name only; this is why one says it cannot be used in practice.
#
# (GD is also useless where no gradient exists, for a non-differentiable loss, but then SGD is too.)

# %%
# B, first case: a stream. SGD sees every sample once and still converges; GD has no sum.
true_w = torch.tensor([2.0, -1.0, 0.5])


def stream(seed: int):
    """An endless source of (x, y) pairs: there is no 'full data set' to sum over."""
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(3, generator=g)
        yield x, float(x @ true_w) + 0.1 * float(torch.randn(1, generator=g))


w = torch.zeros(3)
for t, (x, y) in enumerate(stream(1)):
    if t == 5000:
        break
    lr = 0.5 / (10 + t) ** 0.6  # decaying step size: SGD's convergence condition
    w -= lr * (x @ w - y) * x
print(f"SGD on the stream after 5000 samples: w = {w.numpy().round(3)}, true {true_w.numpy()}")
assert (w - true_w).norm() < 0.02, "SGD on a data stream recovers the true weights"

# B, second case: memory. Activations saved by the first layer of a ResNet for one image.
stem = nn.Sequential(nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3), nn.ReLU())
per_image = saved_bytes(stem, torch.randn(1, 3, 224, 224))
full_batch_tb = per_image * 1_281_167 / 1e12
print(f"first layer only: {per_image / 2**20:.2f} MiB per image -> {full_batch_tb:.1f} TB "
      "for a full-batch step over ImageNet")
assert 6 < per_image / 2**20 < 8 and 8 < full_batch_tb < 10, "about 7 MiB per image, 9 TB in all"
assert full_batch_tb > 100 * 0.08, "a full-batch step does not fit on an 80 GB GPU, by far"

# %% [markdown]
# ### opt.3
# You have trained a deep resnet to obtain SoTA results on ImageNet. While training using
# mini-batch SGD with a batch size of $B$, you noticed that your model converged to a loss
# value of $l_0$ within $n$ iterations (batches across all epochs) on average. Thanks to your
# amazing results, you secure funding for a new high-powered server with GPUs containing
# twice the amount of RAM. You're now considering to increase the mini-batch size from $B$
# to $2B$. Would you expect the number of of iterations required to converge to $l_0$ to
# decrease or increase when using the new batch size? explain in detail.

# %% [markdown]
# **Answer:** Decrease (or at worst stay about the same), but by at most a factor of two: with the learning rate scaled up with the batch, the number of iterations roughly halves while $B$ is below the "critical batch size" where gradient noise limits progress, and it stops improving once $B$ is beyond it, where the curvature of the loss limits the step size; each iteration costs twice the compute and activation memory, so the total compute to reach $l_0$ stays the same at best and grows beyond the critical batch.
#
# *Why.* The mini-batch gradient is $\hat{\boldsymbol{g}}_B=\boldsymbol{G}+\boldsymbol{\xi}$ with $\boldsymbol{G}=\nabla L$ and noise of covariance $\boldsymbol{\Sigma}/B$ (opt.1). To second order, one step of size $\eta$ changes the loss on average by
# $$\mathbb{E}\left[L(\boldsymbol{\theta}-\eta\hat{\boldsymbol{g}}_B)\right]-L(\boldsymbol{\theta})\approx-\eta\left\|\boldsymbol{G}\right\|^2+\frac{\eta^2}{2}\left(\boldsymbol{G}^\top\boldsymbol{H}\boldsymbol{G}+\frac{\operatorname{tr}(\boldsymbol{H}\boldsymbol{\Sigma})}{B}\right).$$
# The best step size and the best decrease per step are
# $$\eta^*(B)=\frac{\eta_{\max}}{1+B_{\text{noise}}/B},\qquad \Delta^*(B)=\frac{\Delta_{\max}}{1+B_{\text{noise}}/B},\qquad B_{\text{noise}}=\frac{\operatorname{tr}(\boldsymbol{H}\boldsymbol{\Sigma})}{\boldsymbol{G}^\top\boldsymbol{H}\boldsymbol{G}},$$
# where $\eta_{\max}=\left\|\boldsymbol{G}\right\|^2/\boldsymbol{G}^\top\boldsymbol{H}\boldsymbol{G}$ and $\Delta_{\max}$ are the noise-free (GD) values. So the number of iterations behaves like $S(B)\approx S_{\min}\left(1+B_{\text{noise}}/B\right)$ (McCandlish et al., 2018), and:
# - **Noise-dominated regime, $B\ll B_{\text{noise}}$:** $S\propto 1/B$. Doubling the batch halves the noise, which allows twice the learning rate (the "linear scaling rule", Goyal et al., 2017), so the iterations roughly halve while the samples processed, $S\cdot B$, stay the same.
# - **Curvature-dominated regime, $B\gg B_{\text{noise}}$:** the gradient is already nearly exact, the step size is capped by the curvature ($\eta<2/\lambda_{\max}$ for stability), and $S\to S_{\min}$, the number of GD steps. Doubling $B$ no longer reduces the iterations; it only doubles the work per iteration.
# - **Learning rate unchanged:** the expected step is the same, only its noise drops, so the iterations do not increase. They fall a lot only if $l_0$ sits near the noise floor of batch $B$ (the level, proportional to $\eta/B$, at which constant-step SGD stops improving), and change little otherwise.
#
# The cost of an iteration doubles in FLOPs and activation memory. On a GPU that batch $B$ did not saturate, the wall time per iteration grows by less than $2\times$, so the wall time to $l_0$ can drop almost in proportion to the iterations. $B_{\text{noise}}$ grows as the loss falls (the gradient shrinks, the noise does not), so a lower target $l_0$ rewards larger batches for longer. Two caveats beyond the question: very large batches need a learning-rate warm-up to be stable, and they may generalise somewhat worse at equal training loss.
#
# The experiment runs mini-batch SGD on a noisy least-squares problem, 8 seeds per setting, and counts the iterations until the loss is within 2 % of its initial excess over the minimum, for $B=1,\dots,1024$. It does this once with the learning rate re-tuned for every $B$ (from a grid of powers of two, so the rescaling is found rather than assumed), and once with the learning rate tuned for $B=4$ kept for all $B$. The iterations follow $S_{\min}(1+B_{\text{noise}}/B)$ with the $B_{\text{noise}}$ computed from the gradient statistics. With re-tuning, doubling $B$ about halves them, and the best learning rate grows with $B$ (the linear-scaling rule found by the grid search), up to the knee at $B_{\text{noise}}$; past it the iterations stay flat and the samples processed grow $\propto B$. With the learning rate unchanged, the iterations never increase, and past the noise floor they barely move.

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
fixed = torch.cat([sweep(b, lr_base[None]) for b in batches])

# B_noise = tr(H Sigma) / G^T H G at a point whose excess loss is the target
w_t = W3 * (1 - math.sqrt(TARGET / float(excess3(torch.zeros(D3)))))
g_i = X3 * (X3 @ w_t - Y3)[:, None]
G = g_i.mean(0)
b_noise = float(torch.trace(H3 @ torch.cov(g_i.T, correction=0)) / (G @ H3 @ G))
bs = torch.tensor(batches, dtype=torch.float32)
model_curve = tuned[-1] * (1 + b_noise / bs)             # S_min (1 + B_noise / B)

fig, (ax_i, ax_n) = plt.subplots(1, 2, figsize=(9, 3.2))
ax_i.loglog(batches, tuned, "o-", label="lr tuned for each B")
ax_i.loglog(batches, fixed, "s-", label="lr fixed (tuned for B=4)")
ax_i.loglog(batches, model_curve, "k:", label="S_min (1 + B_noise/B)")
ax_n.loglog(batches, tuned * bs, "o-", label="lr tuned for each B")
for ax in (ax_i, ax_n):
    ax.axvline(b_noise, color="gray", ls="--", lw=1)
ax_i.set(xlabel="batch size B", ylabel="iterations to reach l_0")
ax_n.set(xlabel="batch size B", ylabel="samples processed to reach l_0")
ax_i.legend(fontsize=7)
plt.show()


def fmt(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) and v > 0 else "-"


print(f"B_noise at the target = {b_noise:.1f}")
print(f"{'B':>5} {'best lr':>8} {'iters':>7} {'model':>6} {'2B/B':>5} {'iters (fixed lr)':>17} {'2B/B':>5}")
ratio_t = tuned[1:] / tuned[:-1]
ratio_f = fixed[1:] / fixed[:-1]
for i, b in enumerate(batches):
    rt = fmt(float(ratio_t[i - 1])) if i else ""
    rf = fmt(float(ratio_f[i - 1])) if i else ""
    print(f"{b:>5} {float(best_lr[i]):>8.3f} {float(tuned[i]):>7.1f} {float(model_curve[i]):>6.1f} "
          f"{rt:>5} {float(fixed[i]):>17.1f} {rf:>5}")

small = [i for i, b in enumerate(batches[:-1]) if 2 * b <= b_noise]
large = [i for i, b in enumerate(batches[:-1]) if b >= 4 * b_noise]
assert len(small) >= 3 and len(large) >= 2, "the sweep covers both regimes"
assert torch.allclose(tuned, model_curve, rtol=0.25), \
    "iterations follow S_min (1 + B_noise/B) with the measured B_noise"
assert all(0.45 < float(ratio_t[i]) < 0.65 for i in small), \
    "below the critical batch, doubling B (with a re-tuned lr) about halves the iterations"
assert all(float(ratio_t[i]) > 0.9 for i in large), \
    "beyond the critical batch, doubling B no longer reduces the iterations"
assert (best_lr[1:] >= best_lr[:-1]).all() and best_lr[small[-1] + 1] >= 4 * best_lr[0], \
    "the best learning rate grows with the batch (the linear-scaling rule)"
assert best_lr[-1] <= 2 and len(set(best_lr[large].tolist())) == 1, \
    "past the critical batch the best lr is capped by the curvature (< 2/lambda_max)"
assert all(float(ratio_f[i]) <= 1.05 for i in range(BASE, len(batches) - 1)), \
    "with the lr unchanged, a larger batch never needs more iterations"
assert all(float(ratio_f[i]) > 0.85 for i in large), \
    "with the lr unchanged and past the noise floor, a larger batch barely helps"
assert float(tuned[-1] * bs[-1]) > 20 * float(tuned[small[0]] * bs[small[0]]), \
    "past the critical batch, reaching l_0 costs many more samples (compute)"

# %% [markdown]
# ### opt.4
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
# **Answer:** A true, B false, C true, D false, E false, F false.
#
# **A. True**, for SGD as defined in opt.1: each update uses the gradient of a single sample, so one pass over the $N$ samples (an epoch) makes $N$ optimisation steps, one per sample. The statement is false for *mini-batch* SGD, which is what "SGD" usually means in deep-learning code: there a step is taken per mini-batch, $\lceil N/B\rceil$ per epoch. With $N=1000$: 1000 steps at $B=1$, but 32 steps at $B=32$ (counted below with a `DataLoader`).
#
# **B. False.** Both halves are backwards. The GD gradient is the exact gradient: its variance as an estimate of $\nabla L$ is zero. SGD's is $\operatorname{tr}\boldsymbol{\Sigma}/B\cdot(N-B)/(N-1)>0$ (in opt.1's problem: about 155 at $B=1$, and 0 up to rounding at $B=N$). Per update, GD also converges faster: on a smooth strongly convex loss it converges linearly, the error shrinking by a constant factor each step, while SGD's noise forces either a constant-step noise floor or a decaying step with the slower $O(1/k)$ rate. What SGD wins is the cost per update ($B$ samples instead of $N$), so it is usually faster per unit of compute or wall time (opt.1), not per step, and not because of lower variance. Measured on the opt.1 problem: GD needs far fewer updates than SGD to reach a given loss, and constant-step SGD stalls at a floor that GD goes far below.
#
# **C. True** (as a tendency, not a guarantee). GD is deterministic: once it is in the basin of a local minimum (or at a saddle point) it stays. SGD follows $\nabla L$ plus zero-mean noise whose size scales like $\eta/\sqrt{B}$, and the noise can carry it over a low barrier out of a shallow basin, while leaving a deep basin is exponentially less likely. On a one-dimensional finite-sum loss with a shallow local minimum and a deeper global one, all 200 GD runs started in the shallow basin end in it. SGD with $B=1$ escapes in every run and with $B=4$ in most, while with $B=16$ the noise is too weak and SGD stays too.
#
# **D. False.** The opposite: a step of SGD needs the activations of $B$ samples, a step of GD those of all $N$ (done in one pass). The activation memory is linear in the batch (measured exactly in opt.1), so with $B=32$ and $N=1797$ (the digits data set) SGD needs about $32/1797\approx 2\%$ of GD's activation memory. The parameters, gradients and optimizer state are the same size for both; SGD with momentum adds one buffer the size of the parameters, which is small next to full-batch activations.
#
# **E. False.** Neither is guaranteed to find the global minimum of a non-convex loss. GD with a suitable step ($\eta<2/L$ for an $L$-smooth loss) is guaranteed only to converge to a *stationary point*: the local minimum of the basin it starts in, or even a saddle point or maximum if it starts exactly on one. It reaches the global minimum only for convex losses (or from inside the global basin). SGD, with a decaying learning rate ($\sum_k\eta_k=\infty$, $\sum_k\eta_k^2<\infty$), converges to a stationary point too; with a constant step it does not converge at all but fluctuates around one. On the loss of C, GD converges to the local, not the global, minimum, and SGD with $B=16$ does as well.
#
# **F. False.** Newton's method multiplies the gradient by the inverse Hessian, $\boldsymbol{\theta}\leftarrow\boldsymbol{\theta}-\boldsymbol{H}^{-1}\nabla L$, which rescales every direction by its own curvature: a ravine, that is an ill-conditioned Hessian, is exactly what it undoes. On a quadratic ravine it lands on the minimum in *one* step, whatever the condition number $\kappa=\lambda_{\max}/\lambda_{\min}$. Momentum only damps the zig-zag of GD across the ravine: even with optimally tuned heavy-ball parameters it needs $O(\sqrt{\kappa}\log(1/\epsilon))$ steps, against GD's $O(\kappa\log(1/\epsilon))$, and the noise of SGD only slows it further. Newton "not having momentum" is irrelevant: it does not need it. On the curved Rosenbrock ravine, undamped Newton converges in 5 steps and tuned momentum needs hundreds. What is true is that Newton's method is impractical for large networks ($d^2$ memory and $O(d^3)$ work for the Hessian of $d$ parameters, and it is attracted to saddle points of non-convex losses), which is why one trains them with momentum SGD; but that is cost per step, not speed of convergence.

# %%
from torch.utils.data import DataLoader, TensorDataset

# A: steps per epoch.
steps = {batch: sum(1 for _ in DataLoader(TensorDataset(torch.zeros(1000, 1)), batch_size=batch))
         for batch in [1, 32]}
print("optimizer steps per epoch of 1000 samples:", steps)
assert steps == {1: 1000, 32: math.ceil(1000 / 32)}, \
    "single-sample SGD: one step per sample; mini-batch SGD: one step per mini-batch"

# B: per update, GD converges faster than SGD; constant-step SGD stalls at a noise floor.
gd_long = train(N, 1.0 / LAMBDA_MAX, epochs=300)
level = 0.05


def updates_to(h: dict[str, list[float]], level: float) -> float:
    return next((u for u, e in zip(h["updates"], h["excess"]) if e <= level), math.inf)


print(f"updates to reach excess loss {level}: GD {updates_to(gd_long, level)}, "
      f"SGD {updates_to(runs['SGD (B=1)'], level)}")
sgd_floor = sum(runs["SGD (B=1)"]["excess"][-N:]) / N
print(f"SGD's floor over its last epoch: {sgd_floor:.3g}; GD after 300 updates: "
      f"{gd_long['excess'][-1]:.3g}")
assert updates_to(gd_long, level) * 10 < updates_to(runs["SGD (B=1)"], level), \
    "per update, GD converges much faster than SGD"
assert gd_long["excess"][-1] < sgd_floor / 100, "constant-step SGD stalls at a noise floor"

# D: activation memory of one step, SGD (B=32) against GD (the 1797 digits at once).
mem_sgd, mem_gd = saved_bytes(mlp, torch.randn(32, 64)), saved_bytes(mlp, torch.randn(1797, 64))
print(f"activation memory: SGD step {mem_sgd / 2**20:.2f} MiB, GD step {mem_gd / 2**20:.2f} MiB")
assert mem_sgd * 1797 == mem_gd * 32, "a SGD step needs B/N = 32/1797 of GD's activation memory"

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
final = {}
for batch in [1, 4, 16, 100]:                        # B = 100 = N is GD
    x = torch.full((RUNS,), 1.5)                     # every run starts in the shallow basin
    for k in range(3000):
        lr = 0.1 if k < 1500 else 0.1 * (1 - (k - 1500) / 1500) + 1e-3  # then anneal
        noise = slopes[torch.randint(0, 100, (RUNS, batch), generator=gen4)].mean(1) \
            if batch < 100 else 0.0
        x = x - lr * (f_prime(x) + noise)
    final[batch] = x
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
plt.show()

global_x = grid[f(grid).argmin()]
assert escaped[100] == 0.0 and float((final[100] - 0.787).abs().max()) < 1e-2, \
    "C/E: GD stays in the local minimum of its basin, not the global one"
assert escaped[1] == 1.0 and escaped[4] > 0.5, "C: SGD's noise escapes the shallow local minimum"
assert escaped[16] < 0.1, "E: SGD is not guaranteed to reach the global minimum either"
assert float(f(final[1]).mean()) < float(f(global_x)) + 0.01, "C: escaped runs sit at the global min"

# %%
# F: the narrow ravine. GD, momentum (heavy ball, tuned optimally) and Newton's method.
def quad(u):
    x, y = u
    a, b = math.cos(0.5) * x + math.sin(0.5) * y, -math.sin(0.5) * x + math.cos(0.5) * y
    return 0.5 * (a * a + 100 * b * b)      # curvature 1 along the ravine, 100 across it


def quad_grad(u):
    x, y = u
    c, s = math.cos(0.5), math.sin(0.5)
    a, b = c * x + s * y, -s * x + c * y
    return (c * a - s * 100 * b, s * a + c * 100 * b)


def quad_hess(u):
    c, s = math.cos(0.5), math.sin(0.5)
    return ((c * c + 100 * s * s, c * s - 100 * c * s), (c * s - 100 * c * s, s * s + 100 * c * c))


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


kappa = 100.0
quad_runs = {
    "GD (lr 2/(L+mu))": minimise("gd", quad, quad_grad, None, (-8.0, 3.0), lr=2 / (kappa + 1)),
    "momentum (optimal)": minimise(
        "hb", quad, quad_grad, None, (-8.0, 3.0), lr=4 / (math.sqrt(kappa) + 1) ** 2,
        beta=((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)) ** 2),
    "Newton": minimise("newton", quad, quad_grad, quad_hess, (-8.0, 3.0)),
}
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
    ax.legend(fontsize=7, loc="lower right")
axes[0].set_title("quadratic ravine, kappa = 100")
axes[1].set_title("Rosenbrock ravine")
plt.show()

its = {k: v[0] for k, v in {**quad_runs, **{"R " + k: v for k, v in rosen_runs.items()}}.items()}
print("iterations to reach loss < 1e-10:", its)
q_gd, q_mom, q_newton = (v[0] for v in quad_runs.values())
r_gd, r_mom, r_newton = (v[0] for v in rosen_runs.values())
assert q_newton == 1, "Newton solves a quadratic ravine in one step"
assert q_newton < q_mom < q_gd, "momentum beats GD but not Newton on the quadratic ravine"
assert q_mom < 0.25 * q_gd, "momentum needs ~sqrt(kappa) instead of ~kappa steps"
assert r_newton <= 10 and r_mom > 10 * r_newton, "Newton also wins on the curved Rosenbrock ravine"

# %% [markdown]
# ### opt.5
# In tutorial 5 we saw an example of bi-level optimization in the context of deep learning,
# by embedding an optimization problem as a layer in the network. **True or false**: In order
# to train such a network, the inner optimization problem must be solved with a descent
# based method (such as SGD, LBFGS, etc). Provide a mathematical justification for your answer.
#
# (Context: the tutorial's layer outputs $\vec{y}^*(\vec{z})=\arg\min_{\vec{y}} f(\vec{y},\vec{z})$
# for the layer's input $\vec{z}$, and is trained end to end.)

# %% [markdown]
# **Answer:** **False.** Backpropagation needs only the Jacobian $\partial\boldsymbol{y}^*/\partial\boldsymbol{z}$, and the implicit function theorem gives it from the optimality condition at the solution alone, $\partial\boldsymbol{y}^*/\partial\boldsymbol{z}=-\left(\nabla^2_{\boldsymbol{y}\boldsymbol{y}}f\right)^{-1}\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f$ evaluated at $(\boldsymbol{y}^*,\boldsymbol{z})$; how $\boldsymbol{y}^*$ was found (closed form, bisection, an interior-point or black-box solver) does not enter.
#
# *Justification, step by step.* Let $f$ be twice continuously differentiable.
# 1. *Optimality condition.* An unconstrained minimiser satisfies $\boldsymbol{g}(\boldsymbol{y}^*,\boldsymbol{z}):=\nabla_{\boldsymbol{y}}f(\boldsymbol{y}^*,\boldsymbol{z})=\boldsymbol{0}$. This is a system of $m$ equations in $\boldsymbol{y}\in\mathbb{R}^m$ that holds at the solution, for every input $\boldsymbol{z}$.
# 2. *Implicit function theorem.* If the Jacobian of $\boldsymbol{g}$ in $\boldsymbol{y}$, the Hessian $\boldsymbol{H}=\nabla^2_{\boldsymbol{y}\boldsymbol{y}}f(\boldsymbol{y}^*,\boldsymbol{z}_0)$, is invertible (for example $f$ strictly convex in $\boldsymbol{y}$, so $\boldsymbol{H}\succ 0$), then near $\boldsymbol{z}_0$ there is a unique continuously differentiable function $\boldsymbol{y}^*(\boldsymbol{z})$ with $\boldsymbol{g}(\boldsymbol{y}^*(\boldsymbol{z}),\boldsymbol{z})=\boldsymbol{0}$.
# 3. *Differentiate the identity* in $\boldsymbol{z}$ with the chain rule:
# $$\nabla^2_{\boldsymbol{y}\boldsymbol{y}}f\,\frac{\partial\boldsymbol{y}^*}{\partial\boldsymbol{z}}+\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f=\boldsymbol{0}\quad\Longrightarrow\quad\frac{\partial\boldsymbol{y}^*}{\partial\boldsymbol{z}}=-\boldsymbol{H}^{-1}\,\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f(\boldsymbol{y}^*,\boldsymbol{z}).$$
# 4. *Backward pass.* With the upstream gradient $\boldsymbol{v}=\partial\mathcal{L}/\partial\boldsymbol{y}^*$ and $\boldsymbol{H}$ symmetric,
# $$\frac{\partial\mathcal{L}}{\partial\boldsymbol{z}}=\left(\frac{\partial\boldsymbol{y}^*}{\partial\boldsymbol{z}}\right)^{\top}\boldsymbol{v}=-\left(\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f\right)^{\top}\boldsymbol{u},\qquad \boldsymbol{H}\boldsymbol{u}=\boldsymbol{v}:$$
# one linear solve (directly, or by conjugate gradients or MINRES with Hessian-vector products) and one vector-Jacobian product of $\nabla_{\boldsymbol{y}}f$. Gradients for parameters $\boldsymbol{\phi}$ of the inner problem itself come the same way, with $\nabla^2_{\boldsymbol{y}\boldsymbol{\phi}}f$ in place of $\nabla^2_{\boldsymbol{y}\boldsymbol{z}}f$.
#
# Every quantity is evaluated at $(\boldsymbol{y}^*,\boldsymbol{z})$: the iterations of the solver never appear. The inner problem can therefore be solved by any method: in closed form (ridge regression, $\boldsymbol{y}^*=(\boldsymbol{X}^\top\boldsymbol{X}+\lambda\boldsymbol{I})^{-1}\boldsymbol{X}^\top\boldsymbol{t}$), by bisection or Newton's method on the optimality condition, by an interior-point or combinatorial solver, or by a black box. What the argument does need is (i) a point that really is stationary (the gradient's error grows with the residual $\nabla_{\boldsymbol{y}}f(\boldsymbol{y}^*)$), (ii) an invertible Hessian there, without which $\boldsymbol{y}^*$ need not be unique or differentiable (the solution of a linear program jumps between vertices), and (iii) for constrained problems, the KKT conditions in place of $\nabla_{\boldsymbol{y}}f=\boldsymbol{0}$ (as in OptNet). The one approach that does depend on the solver is *unrolling*, backpropagating through the solver's iterations, and that needs a differentiable iterative solver.
#
# *The experiment.* `dlsummary.argmin_layer` implements steps 1 to 4. A digits classifier has a hidden layer that outputs $\boldsymbol{y}^*(\boldsymbol{z},\lambda)=\operatorname{argmin}_{\boldsymbol{y}}\sum_j\left[\frac{1}{2}(y_j-z_j)^2+\lambda\log\cosh y_j\right]$, a smooth shrinkage with a learnable strength $\lambda>0$. The layer is solved by *bisection* on the optimality condition $y_j-z_j+\lambda\tanh y_j=0$, which uses only the sign of the derivative and is no descent method. The layer's implicit gradient agrees with `torch.autograd.gradcheck`, with finite differences, and with the closed-form implicit derivative $\partial y_j^*/\partial z_j=1/(1+\lambda\operatorname{sech}^2y_j^*)$, whereas backpropagating through the bisection steps gives a wrong number. The network then trains end to end, $\lambda$ included.

# %%
def shrink_objective(y: torch.Tensor, z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """f(y; z, lam) per sample: a batch of independent, strictly convex inner problems."""
    log_cosh = y.abs() + torch.log1p(torch.exp(-2 * y.abs())) - math.log(2)  # overflow-free
    return (0.5 * (y - z) ** 2 + lam * log_cosh).sum(1)


def shrink_bisection(z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Solve y - z + lam tanh(y) = 0 by bisection: y* lies between 0 and z (no descent)."""
    lo, hi = torch.minimum(z, torch.zeros_like(z)), torch.maximum(z, torch.zeros_like(z))
    for _ in range(60 if z.dtype == torch.float64 else 30):
        mid = (lo + hi) / 2
        positive = mid - z + lam * torch.tanh(mid) > 0
        lo, hi = torch.where(positive, lo, mid), torch.where(positive, mid, hi)
    return (lo + hi) / 2


shrink = argmin_layer(shrink_objective, shrink_bisection)

# 1) the implicit gradient, checked four ways (float64)
z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradcheck(shrink, (z, lam)), "implicit gradient = finite differences"
y_star = shrink(z, lam)
(dz,) = torch.autograd.grad(y_star.sum(), z)
analytic = 1 / (1 + lam.detach() / torch.cosh(y_star.detach()) ** 2)
unrolled_y = shrink_bisection(z, lam)          # autograd through the 60 bisection steps
(dz_unrolled,) = torch.autograd.grad(unrolled_y.sum(), z)
print(f"max |implicit - analytic| = {float((dz - analytic).abs().max()):.1e}; "
      f"max |unrolled bisection - analytic| = {float((dz_unrolled - analytic).abs().max()):.2f}")
assert torch.allclose(dz, analytic, atol=1e-10), "implicit gradient = 1/(1 + lam sech^2 y*)"
assert float((dz_unrolled - analytic).abs().max()) > 0.05, \
    "differentiating through the bisection steps gives a wrong gradient"

# 2) a network with the layer, trained end to end on digits
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
        return self.classify(shrink(self.encode(x), F.softplus(self.raw_lam)))


net = ShrinkNet()
lam_start = float(F.softplus(net.raw_lam.detach()))
accuracy = lambda: float((net(test_x).detach().argmax(1) == test_y).float().mean())
acc_start = accuracy()
for _ in range(80):
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
assert abs(float(g_lam - fd)) < 1e-7 * max(1.0, abs(float(fd))), \
    "the network's gradient through the argmin layer matches finite differences"
assert acc_end > 0.8 and acc_end > acc_start + 0.5, "the network trains end to end"
assert abs(lam_end - lam_start) > 0.05, "the inner problem's own parameter is learned"

# %% [markdown]
# ### opt.6
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
# **Answer:** Backpropagation multiplies one Jacobian per layer, so with depth the gradient reaching the early layers shrinks or grows exponentially (vanishing or exploding). Exploding shows as a loss that blows up (huge, spiking, inf/NaN) and parameters that jump; vanishing shows as a loss stuck on a plateau while the early layers' parameters hardly move from their initial values.
#
# **A.** By the chain rule the gradient for layer $l$'s parameters is
# $$\frac{\partial\mathcal{L}}{\partial\boldsymbol{\theta}_l}=\frac{\partial\mathcal{L}}{\partial\boldsymbol{y}_L}\,\boldsymbol{J}_L\boldsymbol{J}_{L-1}\cdots\boldsymbol{J}_{l+1}\,\frac{\partial\boldsymbol{y}_l}{\partial\boldsymbol{\theta}_l},\qquad \boldsymbol{J}_k=\frac{\partial\boldsymbol{y}_k}{\partial\boldsymbol{y}_{k-1}}.$$
# *Vanishing gradients:* the product of Jacobians becomes tiny, so the layers far from the output receive gradients many orders of magnitude smaller than the last ones. Their updates are negligible (or underflow to exactly zero), they stay at their random initialisation, and training stalls on a plateau. *Exploding gradients:* the product becomes huge, so the early layers get enormous gradients. One SGD step throws the parameters far away, the loss jumps up or oscillates, and the numbers overflow to inf and NaN.
#
# **B.** The number of factors grows with depth, and a product of $L$ factors behaves like $\rho^{L}$, where $\rho$ is the typical gain $\left\|\boldsymbol{J}_k\right\|$ of a layer. If $\rho<1$ the gradient vanishes exponentially in $L$, and if $\rho>1$ it explodes exponentially in $L$. A gain slightly off 1 is harmless in a shallow net and fatal in a deep one: $0.9^{100}\approx 3\cdot 10^{-5}$ and $1.1^{100}\approx 1.4\cdot 10^{4}$. For $\boldsymbol{y}_k=\varphi(\boldsymbol{W}_k\boldsymbol{y}_{k-1})$, $\boldsymbol{J}_k=\operatorname{diag}(\varphi')\boldsymbol{W}_k$, so:
# - *vanishing:* saturating activations ($\sigma'\le\frac{1}{4}$ everywhere and $\approx 0$ when saturated; $\tanh'\approx 0$ when saturated), small weights, or many layers with $\rho<1$;
# - *exploding:* weights too large for the activation (for ReLU, an initialisation variance above $2/\text{fan-in}$ gives $\rho>1$), or the same matrix applied again and again (recurrent networks: powers of $\boldsymbol{W}$ with spectral radius above 1).
#
# The usual remedies keep $\rho\approx 1$ or give the gradient a path without the product: variance-preserving initialisation (Xavier, He), normalisation layers, residual connections, non-saturating activations, and, against explosion only, gradient clipping.
#
# **C.** Scalar chains show the arithmetic. For $y_l=\sigma(y_{l-1})$ with 20 layers, $\partial y_{20}/\partial y_0=\prod_l\sigma'(y_{l-1})\le 4^{-20}\approx 9\cdot10^{-13}$ (vanishing). For $y_l=2y_{l-1}$ with 50 layers, $\partial y_{50}/\partial y_0=2^{50}\approx 1.1\cdot10^{15}$ (exploding). In real 20-layer MLPs on the digits data set, a sigmoid network with PyTorch's default initialisation loses 16 orders of magnitude of gradient norm from the last layer to the first, and a ReLU network initialised with twice the He standard deviation gains 6. The exploding one really explodes: its loss at initialisation is about $10^{6}$, and a single SGD step at a learning rate that trains a He-initialised network of the same depth turns it into NaN.
#
# **D.** Look at what training does, not at gradients:
# - *Exploding:* the loss is huge, jumps up or oscillates, and soon becomes inf or NaN; the parameters, their update sizes $\left\|\Delta\boldsymbol{\theta}\right\|$ and the activations or outputs become enormous or non-finite.
# - *Vanishing:* the loss is finite but stuck on a plateau near its initial value (here chance level, $\ln 10\approx 2.30$). The relative change $\left\|\boldsymbol{\theta}_l^{(t)}-\boldsymbol{\theta}_l^{(0)}\right\|/\left\|\boldsymbol{\theta}_l^{(0)}\right\|$ of the early layers is orders of magnitude smaller than that of the last layers (for the sigmoid net it is exactly 0: the updates underflow). Raising the learning rate tenfold does not wake the early layers up.
#
# The experiment trains the two deep networks of C, and a He-initialised ReLU network as a healthy reference, for 30 SGD steps, and records only the loss and the weights. A rule using only these observables names all three correctly; and the sigmoid network's first layer stays frozen at a ten times larger learning rate too.

# %%
# C, scalar chains: the product of 20 sigmoid derivatives, and of 50 factors of 2.
y0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
y = y0
for _ in range(20):
    y = torch.sigmoid(y)
(d_sigmoid,) = torch.autograd.grad(y, y0)
y0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
y = y0
for _ in range(50):
    y = 2.0 * y
(d_double,) = torch.autograd.grad(y, y0)
print(f"d y20/d y0 through 20 sigmoids: {float(d_sigmoid):.2e} (bound 4^-20 = {0.25**20:.2e})")
print(f"d y50/d y0 through 50 doublings: {float(d_double):.3e} (= 2^50)")
assert float(d_sigmoid) <= 0.25**20 and float(d_sigmoid) < 1e-12, "vanishing: <= (1/4)^L"
assert float(d_double) == 2.0**50, "exploding: 2^L"

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


nets6 = {"sigmoid, default init": deep_mlp(nn.Sigmoid),
         "ReLU, 2 x He init": deep_mlp(nn.ReLU, he_gain=2.0),
         "ReLU, He init (healthy)": deep_mlp(nn.ReLU, he_gain=1.0)}
flows = {}
for name, net in nets6.items():
    with gradient_flow(net) as flow:
        F.cross_entropy(net(x6), y6).backward()
    net.zero_grad()
    flows[name] = flow
    print(f"{name:>24}: {flow.diagnosis:>9}, first/last layer gradient norm = {flow.fold_change:.1e}")
ax = None
for name, flow in flows.items():
    ax = flow.plot(ax=ax, label=name)
ax.set_title("gradient norm per layer call, one backward pass")
ax.legend(fontsize=7)
plt.show()

assert flows["sigmoid, default init"].diagnosis == "vanishing" and \
    flows["sigmoid, default init"].fold_change < 1e-14, "the deep sigmoid net's gradient vanishes"
assert flows["ReLU, 2 x He init"].diagnosis == "exploding" and \
    flows["ReLU, 2 x He init"].fold_change > 1e5, "the over-scaled ReLU net's gradient explodes"
assert flows["ReLU, He init (healthy)"].diagnosis == "healthy", "He init keeps the gradient"

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
fig, (ax_l, ax_w) = plt.subplots(1, 2, figsize=(10, 3.2))
for name, obs in observations.items():
    finite = [v if math.isfinite(v) else float("nan") for v in obs["loss"]]
    ax_l.semilogy(finite, marker=".", label=name)
    ax_w.semilogy([max(c, 1e-12) if math.isfinite(c) else float("nan") for c in obs["weight_change"]],
                  marker=".", label=name)
    print(f"{name:>24}: loss {obs['loss'][0]:.3g} -> {obs['loss'][-1]:.3g}, weight change "
          f"first {obs['weight_change'][0]:.1e} last {obs['weight_change'][-1]:.1e} "
          f"-> {diagnose(obs)}")
ax_l.set(xlabel="SGD step", ylabel="training loss (NaN not drawn)")
ax_w.set(xlabel="layer", ylabel="|W_t - W_0| / |W_0|  (0 drawn at 1e-12)")
ax_l.legend(fontsize=7)
plt.show()

assert diagnose(observations["sigmoid, default init"]) == "vanishing", \
    "vanishing: plateau at chance level while the first layer does not move"
assert diagnose(observations["ReLU, 2 x He init"]) == "exploding", \
    "exploding: the loss is huge and turns non-finite"
assert diagnose(observations["ReLU, He init (healthy)"]) == "healthy", "the rule does not misfire"
explode_loss = observations["ReLU, 2 x He init"]["loss"]
assert explode_loss[0] > 1e5 and not math.isfinite(explode_loss[1]), \
    "the exploding net really explodes: loss ~1e6 at init, NaN after one SGD step"
assert abs(observations["sigmoid, default init"]["loss"][-1] - math.log(10)) < 0.05, \
    "the vanishing net sits at chance level, ln 10"
assert observations["sigmoid, default init"]["weight_change"][0] == 0.0, \
    "the sigmoid net's first-layer updates underflow to exactly zero"
faster = observe(deep_mlp(nn.Sigmoid), lr=0.5)
assert faster["weight_change"][0] < 1e-6 * faster["weight_change"][-1], \
    "vanishing: a 10x larger learning rate does not move the first layer either"
