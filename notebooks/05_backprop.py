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
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from dlsummary import check_gradients, numerical_gradient, plot_style, seed_everything

plot_style()
seed_everything(0)
torch.set_default_dtype(torch.float64)  # this section compares gradients to ~1e-10


def central_difference_loop(loss_fn, param: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The definition of the derivative, one coordinate at a time: perturb the tensor that
    ``loss_fn`` reads in place, evaluate twice, restore."""
    grad = torch.zeros_like(param)
    with torch.no_grad():
        flat, grad_flat = param.view(-1), grad.view(-1)
        for j in range(flat.numel()):
            original = flat[j].item()
            flat[j] = original + eps
            loss_plus = loss_fn().item()
            flat[j] = original - eps
            loss_minus = loss_fn().item()
            flat[j] = original  # restore
            grad_flat[j] = (loss_plus - loss_minus) / (2 * eps)
    return grad

# %% [markdown]
# ### backprop.1
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
# **Answer:** With $\delta^{(i)} = \frac{\hat y^{(i)} - y^{(i)}}{\hat y^{(i)}(1-\hat y^{(i)})}$ and $\boldsymbol{g}^{(i)} = \left(\boldsymbol{W}_2^\top \delta^{(i)}\right) \odot \varphi'(\boldsymbol{z}^{(i)})$, the gradients are $\frac{\partial L}{\partial \boldsymbol{W}_2} = \frac{1}{N}\sum_i \delta^{(i)} \boldsymbol{a}^{(i)\top} + \lambda \boldsymbol{W}_2$, $\frac{\partial L}{\partial b_2} = \frac{1}{N}\sum_i \delta^{(i)}$, $\frac{\partial L}{\partial \boldsymbol{W}_1} = \frac{1}{N}\sum_i \boldsymbol{g}^{(i)} \boldsymbol{x}^{(i)\top} + \lambda \boldsymbol{W}_1$, $\frac{\partial L}{\partial \boldsymbol{b}_1} = \frac{1}{N}\sum_i \boldsymbol{g}^{(i)}$ and $\frac{\partial L}{\partial \boldsymbol{x}^{(i)}} = \frac{1}{N}\boldsymbol{W}_1^\top \boldsymbol{g}^{(i)}$.
#
# **Setting and shapes.** For one sample $\boldsymbol{x}^{(i)} \in \mathbb{R}^{d}$ with $h$ hidden units: $\boldsymbol{W}_1 \in \mathbb{R}^{h\times d}$, $\boldsymbol{b}_1 \in \mathbb{R}^{h}$, and because the output is one number (binary classification), $\boldsymbol{W}_2 \in \mathbb{R}^{1\times h}$ and $b_2 \in \mathbb{R}$. Name the intermediate values
# $$
# \boldsymbol{z}^{(i)} = \boldsymbol{W}_1 \boldsymbol{x}^{(i)} + \boldsymbol{b}_1 \in \mathbb{R}^{h}, \qquad \boldsymbol{a}^{(i)} = \varphi(\boldsymbol{z}^{(i)}) \in \mathbb{R}^{h}, \qquad \hat y^{(i)} = \boldsymbol{W}_2 \boldsymbol{a}^{(i)} + b_2 \in \mathbb{R}.
# $$
#
# **Step 1, the loss.** $\frac{\partial \ell}{\partial \hat y} = -\frac{y}{\hat y} + \frac{1-y}{1-\hat y} = \frac{\hat y - y}{\hat y (1-\hat y)}$, and the mean brings a factor $\frac{1}{N}$ to every sample's term: $\frac{\partial L}{\partial \hat y^{(i)}} = \frac{1}{N}\delta^{(i)}$ (a scalar).
#
# **Step 2, the output layer.** $\hat y^{(i)}$ is linear in $\boldsymbol{W}_2$ and $b_2$ with $\frac{\partial \hat y^{(i)}}{\partial \boldsymbol{W}_2} = \boldsymbol{a}^{(i)\top}$ and $\frac{\partial \hat y^{(i)}}{\partial b_2} = 1$; the regulariser adds $\frac{\partial}{\partial \boldsymbol{W}_2}\frac{\lambda}{2}\lVert \boldsymbol{W}_2\rVert_F^2 = \lambda \boldsymbol{W}_2$:
# $$
# \frac{\partial L}{\partial \boldsymbol{W}_2} = \frac{1}{N}\sum_{i=1}^{N} \delta^{(i)} \boldsymbol{a}^{(i)\top} + \lambda \boldsymbol{W}_2 \in \mathbb{R}^{1\times h}, \qquad \frac{\partial L}{\partial b_2} = \frac{1}{N}\sum_{i=1}^{N} \delta^{(i)} \in \mathbb{R}.
# $$
#
# **Step 3, back through $\varphi$.** $\frac{\partial \hat y^{(i)}}{\partial \boldsymbol{a}^{(i)}} = \boldsymbol{W}_2^\top$ and $\varphi$ acts element-wise, so its Jacobian is $\operatorname{diag}(\varphi'(\boldsymbol{z}^{(i)}))$:
# $$
# \frac{\partial L}{\partial \boldsymbol{z}^{(i)}} = \frac{1}{N}\boldsymbol{g}^{(i)}, \qquad \boldsymbol{g}^{(i)} = \left(\boldsymbol{W}_2^\top \delta^{(i)}\right) \odot \varphi'(\boldsymbol{z}^{(i)}) \in \mathbb{R}^{h}.
# $$
#
# **Step 4, the first layer and the input.** $\boldsymbol{z}^{(i)}$ is linear in $\boldsymbol{W}_1$, $\boldsymbol{b}_1$ and $\boldsymbol{x}^{(i)}$:
# $$
# \frac{\partial L}{\partial \boldsymbol{W}_1} = \frac{1}{N}\sum_{i=1}^{N} \boldsymbol{g}^{(i)}\boldsymbol{x}^{(i)\top} + \lambda \boldsymbol{W}_1 \in \mathbb{R}^{h\times d}, \qquad \frac{\partial L}{\partial \boldsymbol{b}_1} = \frac{1}{N}\sum_{i=1}^{N} \boldsymbol{g}^{(i)} \in \mathbb{R}^{h}, \qquad \frac{\partial L}{\partial \boldsymbol{x}^{(i)}} = \frac{1}{N}\boldsymbol{W}_1^\top \boldsymbol{g}^{(i)} \in \mathbb{R}^{d}.
# $$
# The biases are not in the regulariser, so they get no $\lambda$ term, and neither does $\boldsymbol{x}$. The input gradient of sample $i$ involves only sample $i$: the other samples' terms do not depend on $\boldsymbol{x}^{(i)}$. In matrix form over a batch $\boldsymbol{X} \in \mathbb{R}^{N\times d}$ (rows are samples): $\boldsymbol{Z} = \boldsymbol{X}\boldsymbol{W}_1^\top + \boldsymbol{1}\boldsymbol{b}_1^\top$, $\boldsymbol{G} = \frac{1}{N}(\boldsymbol{\delta}\boldsymbol{W}_2) \odot \varphi'(\boldsymbol{Z}) \in \mathbb{R}^{N\times h}$, $\frac{\partial L}{\partial \boldsymbol{W}_1} = \boldsymbol{G}^\top \boldsymbol{X} + \lambda\boldsymbol{W}_1$, $\frac{\partial L}{\partial \boldsymbol{X}} = \boldsymbol{G}\boldsymbol{W}_1$.
#
# **What the formula as written implies.** $\hat y$ is an affine function of the hidden layer, so it can be any real number, but the binary cross-entropy is only defined for $\hat y \in (0, 1)$: outside it $\log$ of a negative number is NaN, and near 0 or 1 the factor $\frac{1}{\hat y(1-\hat y)}$ in $\delta$ explodes. The model as written is trainable only while every prediction stays inside $(0,1)$. The common variant puts a sigmoid on the output: $s^{(i)} = \boldsymbol{W}_2\boldsymbol{a}^{(i)} + b_2$, $\hat y^{(i)} = \sigma(s^{(i)})$. Since $\sigma'(s) = \hat y(1-\hat y)$ cancels the denominator, $\frac{\partial \ell}{\partial s} = \hat y - y$: every formula above holds with $\delta^{(i)} = \hat y^{(i)} - y^{(i)}$, which is bounded by 1 and never undefined (this is what `BCEWithLogitsLoss` computes).
#
# The experiment implements these formulas by hand for a batch and compares them with autograd: all five agree to about $10^{-15}$ for both variants, the difference without the regularisation terms is exactly $\lambda \boldsymbol{W}$, and a larger $\boldsymbol{W}_2$ pushes some affine outputs out of $(0,1)$ and makes the loss NaN.

# %%
N, d, h, lam = 32, 4, 6, 0.1
X = torch.randn(N, d)
y = (torch.rand(N) < 0.5).double()
W1, b1 = torch.randn(h, d) / 2, torch.randn(h) / 2
W2, b2 = torch.randn(1, h) / 20, torch.tensor([0.5])  # keeps the affine output in (0, 1)


def mlp_loss(W1, b1, W2, b2, X, sigmoid_output: bool):
    """L_S of the question; with sigmoid_output, the common variant y_hat = sigmoid(s)."""
    y_hat = (torch.tanh(X @ W1.T + b1) @ W2.T + b2).squeeze(1)
    if sigmoid_output:
        y_hat = torch.sigmoid(y_hat)
    bce = -(y * torch.log(y_hat) + (1 - y) * torch.log(1 - y_hat)).mean()
    return bce + lam / 2 * (W1.square().sum() + W2.square().sum())


def hand_gradients(W1, b1, W2, b2, X, sigmoid_output: bool, regularise: bool = True):
    """The formulas of the answer, in matrix form (phi = tanh, phi' = 1 - tanh^2)."""
    Z = X @ W1.T + b1                      # (N, h)
    A = torch.tanh(Z)                      # (N, h)
    y_hat = (A @ W2.T + b2).squeeze(1)     # (N,)
    if sigmoid_output:
        y_hat = torch.sigmoid(y_hat)
        delta = y_hat - y
    else:
        delta = (y_hat - y) / (y_hat * (1 - y_hat))
    delta = delta[:, None] / N             # (N, 1): dL/dy_hat of each sample
    G = (delta @ W2) * (1 - A**2)          # (N, h): dL/dz of each sample
    return {
        "W1": G.T @ X + lam * W1 * regularise,   # (h, d)
        "b1": G.sum(0),                          # (h,)
        "W2": delta.T @ A + lam * W2 * regularise,  # (1, h)
        "b2": delta.sum(0),                      # (1,)
        "x": G @ W1,                             # (N, d)
    }


names = ["W1", "b1", "W2", "b2", "x"]
for sigmoid_output in (False, True):
    leaves = [t.clone().requires_grad_() for t in (W1, b1, W2, b2, X)]
    loss = mlp_loss(*leaves, sigmoid_output=sigmoid_output)
    autograd = dict(zip(names, torch.autograd.grad(loss, leaves)))
    hand = hand_gradients(W1, b1, W2, b2, X, sigmoid_output)
    variant = "sigmoid output" if sigmoid_output else "affine output (as written)"
    errors = {k: float((hand[k] - autograd[k]).abs().max()) for k in names}
    print(f"{variant:28s} loss={loss.item():.4f}  max |hand - autograd|: "
          + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
    for k in names:
        assert hand[k].shape == autograd[k].shape, f"dL/d{k}: shape of the formula"
        assert torch.allclose(hand[k], autograd[k], rtol=1e-10, atol=1e-13), \
            f"dL/d{k} formula ({variant}) disagrees with autograd"
    unreg = hand_gradients(W1, b1, W2, b2, X, sigmoid_output, regularise=False)
    assert torch.allclose(autograd["W1"] - unreg["W1"], lam * W1, atol=1e-13) and \
        torch.allclose(autograd["W2"] - unreg["W2"], lam * W2, atol=1e-13), \
        "the regulariser contributes exactly lambda * W to the weight gradients"

y_affine = (torch.tanh(X @ W1.T + b1) @ W2.T + b2).squeeze(1)
assert bool(((y_affine > 0) & (y_affine < 1)).all()), "the affine outputs used above lie in (0, 1)"
big_W2 = W2 * 40
y_big = (torch.tanh(X @ W1.T + b1) @ big_W2.T + b2).squeeze(1)
loss_big = mlp_loss(W1, b1, big_W2, b2, X, sigmoid_output=False)
outside = int(((y_big <= 0) | (y_big >= 1)).sum())
print(f"with 40 x W2: {outside}/{N} affine outputs leave (0, 1) and the BCE loss is {float(loss_big)}")
assert outside > 0 and torch.isnan(loss_big), "an affine output outside (0,1) makes BCE undefined"
assert torch.isfinite(mlp_loss(W1, b1, big_W2, b2, X, sigmoid_output=True)), \
    "with a sigmoid output the same weights give a finite loss"

# %% [markdown]
# ### backprop.2
# The derivative of a function $f(\vec{x})$ at a point $\vec{x}_0$ is
# $$
# f'(\vec{x}_0)=\lim_{\Delta\vec{x}\to 0} \frac{f(\vec{x}_0+\Delta\vec{x})-f(\vec{x}_0)}{\Delta\vec{x}}
# $$
# - A. Explain how this formula can be used in order to compute gradients of neural network
#   parameters numerically, without automatic differentiation (AD).
# - B. What are the drawbacks of this approach? List at least two drawbacks compared to AD.

# %% [markdown]
# **Answer:** A: replace the limit by a small finite step along one parameter at a time (finite differences, $2n$ loss evaluations for $n$ parameters with central differences); B: this costs $O(n)$ forward passes per gradient where AD costs a small constant number, and it is inexact (truncation error for large $\epsilon$, round-off for small $\epsilon$, hopeless in float32), needs a hand-tuned $\epsilon$ and is wrong at kinks such as ReLU's.
#
# **A.** Dividing by a vector $\Delta\boldsymbol{x}$ has no meaning; the formula is read per coordinate. For a loss $L(\boldsymbol{\theta})$ with parameters $\boldsymbol{\theta}\in\mathbb{R}^n$, the gradient is the vector of partial derivatives, and each one is the 1-D derivative along a unit vector $\boldsymbol{e}_j$. Dropping the limit and taking a small step $\epsilon$:
# $$
# \frac{\partial L}{\partial \theta_j} \approx \frac{L(\boldsymbol{\theta} + \epsilon \boldsymbol{e}_j) - L(\boldsymbol{\theta})}{\epsilon} \quad \text{(forward)}, \qquad \frac{\partial L}{\partial \theta_j} \approx \frac{L(\boldsymbol{\theta} + \epsilon \boldsymbol{e}_j) - L(\boldsymbol{\theta} - \epsilon \boldsymbol{e}_j)}{2\epsilon} \quad \text{(central)}.
# $$
# In code: for each parameter entry, add $\epsilon$ in place, run the forward pass on the data, subtract $2\epsilon$, run it again, restore the entry, and store the difference quotient in the gradient tensor. By Taylor's theorem the forward quotient is off by $\frac{\epsilon}{2} L''$ and the central one by only $\frac{\epsilon^2}{6} L'''$ (the even terms cancel), so central differences are preferred. The result needs nothing but forward evaluations, which is why it is used to *check* an AD implementation (a hand-written `backward`) and for black-box functions.
#
# **B.** Drawbacks, each measured below:
#
# 1. **Cost.** One gradient takes $2n$ (central) or $n+1$ (forward) forward passes, so the time grows linearly with the number of parameters; reverse-mode AD gets the whole gradient for a small constant multiple (about 2 to 3) of one forward pass, whatever $n$ is. For a network with millions of parameters that is millions of forward passes per training step. Measured: the loop's time grows in proportion to $n$ and is hundreds of times autograd's already at a few thousand parameters.
# 2. **Accuracy.** The total error is about $C\epsilon^{p} + \frac{u\,|L|}{\epsilon}$: truncation ($p=1$ forward, $p=2$ central) plus round-off from subtracting two nearly equal numbers ($u$ the unit round-off). The best step is near $u^{1/2}$ (forward) or $u^{1/3}$ (central) and even there only about half (forward) or two thirds (central) of the digits survive. In float32 ($u \approx 6\times 10^{-8}$) that is 3 to 5 correct digits, so numerical gradients need float64 (twice the memory and time). AD is exact up to round-off in every dtype.
# 3. **The step must be tuned.** The right $\epsilon$ depends on the dtype and on the scale and curvature of $L$; too small and round-off dominates, too large and truncation does, with no warning either way.
# 4. **Kinks.** At a point where $L$ is not differentiable (ReLU at 0, a max with ties) the difference quotient straddles the kink and returns an average of the one-sided slopes (0.5 for ReLU at 0), while AD returns the framework's chosen subgradient (0 in PyTorch): numerical and analytic gradients disagree there even when both are right.
#
# It also needs a deterministic loss: dropout or random augmentation changes $L$ between the two evaluations by far more than $\epsilon\,\partial L/\partial\theta_j$.

# %%
class Counted:
    """Wraps a loss so that we can count its evaluations."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


x_data, y_data = torch.randn(64, 20), torch.randn(64, 1)
rows = []
for hidden in (2, 8, 32, 128):
    params = [torch.randn(hidden, 20) / 5, torch.randn(1, hidden) / 5]
    loss_of = Counted(lambda p=params: F.mse_loss(torch.tanh(x_data @ p[0].T) @ p[1].T, y_data))
    n = sum(p.numel() for p in params)
    start = time.perf_counter()
    for p in params:
        central_difference_loop(loss_of, p)
    numeric_s = time.perf_counter() - start
    leaves = [p.clone().requires_grad_() for p in params]
    start = time.perf_counter()
    for _ in range(20):
        loss = F.mse_loss(torch.tanh(x_data @ leaves[0].T) @ leaves[1].T, y_data)
        torch.autograd.grad(loss, leaves)
    autograd_s = (time.perf_counter() - start) / 20
    rows.append((n, loss_of.calls, numeric_s, autograd_s))
    print(f"n={n:5d}  loss evaluations {loss_of.calls:5d}  numerical {numeric_s * 1e3:8.1f} ms"
          f"  autograd {autograd_s * 1e3:6.3f} ms  ratio {numeric_s / autograd_s:7.0f}")

n_s, calls, numeric_times, autograd_times = map(list, zip(*rows))
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.loglog(n_s, numeric_times, "o-", label="central differences (loop)")
ax.loglog(n_s, autograd_times, "s-", label="autograd (forward + backward)")
ax.set_xlabel("number of parameters n")
ax.set_ylabel("seconds per gradient")
ax.legend()
plt.show()

assert calls == [2 * n for n in n_s], "central differences cost exactly 2 loss evaluations per parameter"
slope = math.log(numeric_times[-1] / numeric_times[0]) / math.log(n_s[-1] / n_s[0])
autograd_slope = math.log(autograd_times[-1] / autograd_times[0]) / math.log(n_s[-1] / n_s[0])
print(f"log-log slope: numerical {slope:.2f}, autograd {autograd_slope:.2f}")
assert slope > 0.7, f"numerical gradient time should grow about linearly with n (slope {slope:.2f})"
assert autograd_slope < slope - 0.4, "autograd's time should grow much slower than the loop's"
assert numeric_times[-1] > 50 * autograd_times[-1], "at a few thousand parameters the loop is far slower"

# %% [markdown]
# The accuracy of the difference quotient against the step, for $f(x) = e^{x}\sin x$ at $x_0 = 0.7$ (exact derivative $e^{x}(\sin x + \cos x)$), in float32 and float64:

# %%
def f_scalar(x):
    return torch.exp(x) * torch.sin(x)


x0 = 0.7
exact = math.exp(x0) * (math.sin(x0) + math.cos(x0))
steps = torch.logspace(-15, -1, 57, dtype=torch.float64)
curves = {}
for dtype in (torch.float32, torch.float64):
    x = torch.tensor(x0, dtype=dtype)
    for method in ("forward", "central"):
        errors = []
        for eps in steps.tolist():
            e = torch.tensor(eps, dtype=dtype)
            if method == "forward":
                quotient = (f_scalar(x + e) - f_scalar(x)) / e
            else:
                quotient = (f_scalar(x + e) - f_scalar(x - e)) / (2 * e)
            errors.append(max(abs(float(quotient) - exact), 1e-17))
        curves[(dtype, method)] = torch.tensor(errors)

fig, ax = plt.subplots(figsize=(5.5, 3.4))
for (dtype, method), errors in curves.items():
    ax.loglog(steps, errors, label=f"{method}, {str(dtype).removeprefix('torch.')}")
ax.set_xlabel(r"step $\epsilon$")
ax.set_ylabel("|error| of the derivative")
ax.legend(fontsize=8)
plt.show()

print(f"{'dtype':8s} {'method':8s} {'best error':>10s} {'best eps':>9s} {'predicted eps':>13s}")
for (dtype, method), errors in curves.items():
    unit = torch.finfo(dtype).eps
    predicted = unit ** (1 / 2) if method == "forward" else unit ** (1 / 3)
    best = int(errors.argmin())
    best_eps = float(steps[best])
    print(f"{str(dtype).removeprefix('torch.'):8s} {method:8s} {float(errors[best]):10.1e} "
          f"{best_eps:9.1e} {predicted:13.1e}")
    assert abs(math.log10(best_eps / predicted)) <= 1.5, \
        f"{dtype} {method}: the best step should be near u^(1/2) (forward) or u^(1/3) (central)"
    assert errors[0] > 100 * errors[best] and errors[-1] > 100 * errors[best], \
        f"{dtype} {method}: error grows on both sides (round-off for small, truncation for large eps)"

best = {key: float(errors.min()) for key, errors in curves.items()}
x32 = torch.tensor(x0, dtype=torch.float32, requires_grad=True)
(autograd_32,) = torch.autograd.grad(f_scalar(x32), x32)
autograd_error_32 = abs(float(autograd_32) - exact)
print(f"autograd in float32: error {autograd_error_32:.1e}")
assert best[(torch.float64, "central")] < 1e-9, "float64 central differences reach ~10 digits"
assert best[(torch.float64, "central")] < best[(torch.float64, "forward")] / 10, \
    "central differences beat forward differences"
assert min(best[(torch.float32, m)] for m in ("forward", "central")) > 1e-6, \
    "in float32 no step gives better than ~5 correct digits"
assert autograd_error_32 < min(best[(torch.float32, m)] for m in ("forward", "central")) / 10, \
    "autograd in float32 is exact up to round-off, far better than any finite difference"

# %% [markdown]
# At a kink, ReLU at 0:

# %%
x_kink = torch.zeros(1, requires_grad=True)
(relu_autograd,) = torch.autograd.grad(torch.relu(x_kink).sum(), x_kink)
(relu_numeric,) = numerical_gradient(lambda t: torch.relu(t).sum(), x_kink.detach())
print(f"d relu/dx at 0: autograd {float(relu_autograd)}, central difference {float(relu_numeric)}")
assert float(relu_autograd) == 0.0 and abs(float(relu_numeric) - 0.5) < 1e-12, \
    "at ReLU's kink the central difference averages the one-sided slopes (0.5), autograd says 0"

# %% [markdown]
# ### backprop.3
# Given the following code snippet:
# - A. Write a short snippet that implements that calculates gradient of `loss` w.r.t. `W`
#   and `b` using the approach of numerical gradients from the previous question.
# - B. Calculate the same derivatives with autograd.
# - C. Show, by calling `torch.allclose()` that your numerical gradient is close to
#   autograd's gradient.
#
# (The snippet's last lines are comments asking for parts A to C; they are answered below.)

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

# %% [markdown]
# **Answer:** Perturb each entry of the very tensor that the loss reads (in place, restoring it afterwards), take $\frac{L(\theta_j+\epsilon) - L(\theta_j-\epsilon)}{2\epsilon}$ per entry, get autograd's gradients with `torch.autograd.grad(loss, (W, b))`, and `torch.allclose` holds for both; the seed's draft instead perturbs a *copy* that the loss never reads and returns all zeros.
#
# **The draft's bug.** Its loop does `param_copy = param.clone()` and writes $\theta_j \pm \epsilon$ into `param_copy`, but `loss_fn = lambda: foo(W, b)` reads the original `W` and `b`. Both evaluations therefore see the same, unperturbed parameters, `pos_loss - neg_loss` is exactly 0, and every "gradient" entry is 0. The draft also never calls `torch.allclose`, so nothing flagged it (it also clones the whole tensor once per entry, an $O(n)$ copy per coordinate). The cell below runs the draft as written and shows the zeros and the failing comparison.
#
# **The fix.** Perturb the tensor the loss reads: under `torch.no_grad()`, write $\theta_j + \epsilon$ into `W` itself (through a flat view), evaluate, write $\theta_j - \epsilon$, evaluate, restore $\theta_j$. Since `foo` is linear in `W` and `b`, the central difference has no truncation error here and only round-off (about $10^{-11}$) remains. The exact gradients are known too: $\frac{\partial}{\partial W_{jk}} \frac{1}{Nd}\sum_{n,k}(\boldsymbol{X}\boldsymbol{W} + \boldsymbol{b})_{nk} = \frac{1}{Nd}\sum_n X_{nj}$ (the same for every column $k$) and $\frac{\partial}{\partial b_k} = \frac{1}{d}$. The library's batched `numerical_gradient` gives the same result without a Python loop.

# %%
def numerical_grad(loss_fn, param, eps=1e-4):
    """The seed's draft, verbatim apart from its docstring and comment."""
    with torch.no_grad():
        indices = torch.arange(param.numel())
        grad = torch.zeros_like(param)
        for idx in indices:
            orig_val = param.view(-1)[idx].item()
            param_copy = param.clone()
            param_copy.view(-1)[idx] = orig_val + eps
            pos_loss = loss_fn()
            param_copy.view(-1)[idx] = orig_val - eps
            neg_loss = loss_fn()
            grad.view(-1)[idx] = (pos_loss - neg_loss) / (2 * eps)
        return grad


draft_W = numerical_grad(loss_fn=lambda: foo(W, b), param=W)
draft_b = numerical_grad(loss_fn=lambda: foo(W, b), param=b)
autograd_W, autograd_b = torch.autograd.grad(loss, (W, b))
print("draft's grad_W:\n", draft_W, "\ndraft's grad_b:", draft_b)
print("autograd's grad_b:", autograd_b)
assert torch.count_nonzero(draft_W) == 0 and torch.count_nonzero(draft_b) == 0, \
    "the draft perturbs a copy the loss never reads, so all its differences are 0"
assert not torch.allclose(draft_W, autograd_W), "so the draft's gradient fails torch.allclose"

# %%
# A. Numerical gradients: perturb W and b themselves, one entry at a time.
grad_W = central_difference_loop(lambda: foo(W, b), W)
grad_b = central_difference_loop(lambda: foo(W, b), b)

# B. The same derivatives with autograd.
autograd_W, autograd_b = torch.autograd.grad(foo(W, b), (W, b))

# C. They agree.
print("max |numerical - autograd|:", float((grad_W - autograd_W).abs().max()),
      float((grad_b - autograd_b).abs().max()))
assert torch.allclose(grad_W, autograd_W), "numerical dL/dW matches autograd"
assert torch.allclose(grad_b, autograd_b), "numerical dL/db matches autograd"

# Both match the exact gradient, and the batched library version agrees.
exact_W = (X.sum(0) / (N * d))[:, None].expand(d, d)
assert torch.allclose(autograd_W, exact_W) and torch.allclose(autograd_b, torch.full((d,), 1 / d)), \
    "autograd gives dL/dW_jk = sum_n X_nj / (N d) and dL/db_k = 1/d"
batched_W, batched_b = numerical_gradient(foo, W, b)
assert torch.allclose(batched_W, autograd_W) and torch.allclose(batched_b, autograd_b), \
    "dlsummary.numerical_gradient agrees with autograd"
print(check_gradients(foo, W, b, names=["W", "b"]))
assert check_gradients(foo, W, b).passed, "the gradient check passes for foo"
torch.set_default_dtype(torch.float32)  # restore the default for later sections
