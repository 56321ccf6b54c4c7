# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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
# This section contains summary questions about various topics from the course material.
# Every answer below is followed by an experiment that measures what the answer claims and
# `assert`s it: if a claim stopped being true, this notebook would fail.
#
# **Notes**
#
# - Clearly mark where your answer begins, e.g. write "**Answer:**" in the beginning of your cell.
# - Provide a full explanation, even if the question doesn't explicitly state so. We will reduce points for partial explanations!
# - This notebook should be runnable from start to end without any errors.
#
# <div class="dls-summary-here"></div>

# %%
# Every section below imports what it needs and fixes its own random seed, so that any
# section can be run on its own; this cell only makes the plots crisp and small.
import matplotlib.pyplot as plt

plt.rcParams.update({"figure.figsize": (7.0, 3.2), "figure.dpi": 90, "axes.grid": True,
                     "grid.alpha": 0.3})
# %% [markdown]
# ## CNNs

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlsummary import digits, seed_everything
from dlsummary.receptive_field import empirical_receptive_field, receptive_field

seed_everything(0)

# %% [markdown]
# ### cnn.1
# Explain the meaning of the term "receptive field" in the context of CNNs.

# %% [markdown]
# **Answer:** The receptive field of a unit in a CNN (one element of some layer's feature map) is the region of the input image whose pixels can influence that unit's value; every pixel outside it could change arbitrarily without changing the unit.
#
# A convolution computes each output from a small window of its input ($k\times k$ for a
# $k\times k$ kernel), so a unit in layer 1 sees $k\times k$ pixels. A unit in layer 2 sees a
# window of layer-1 units, each of which sees its own window of pixels, so its receptive
# field is the union of theirs: it grows with depth. For a stack of layers with kernel
# sizes $k_l$, strides $s_l$ and dilations $d_l$ the receptive field size $r$ and the
# distance $j$ in the input between neighbouring units (the effective stride, or "jump")
# obey
# $$r_l = r_{l-1} + d_l\,(k_l-1)\, j_{l-1}, \qquad j_l = j_{l-1}\, s_l, \qquad r_0 = j_0 = 1,$$
# so $r_L = 1 + \sum_{l=1}^{L} d_l (k_l-1)\prod_{i<l} s_i$. Pooling layers count as layers
# with their window and stride; element-wise layers (activations, batch norm in eval mode,
# dropout) do not change it; a global pooling or a fully connected layer on the flattened
# map makes it the whole image.
#
# Why it matters: a unit can only detect a pattern that fits in its receptive field, so the
# deepest layers' receptive field must cover the objects to be recognised (or, for dense
# prediction, enough context around each pixel). Two refinements: near the border part of
# the field lies in the zero padding; and inside the field the influence is not uniform:
# central pixels reach the unit through many more paths than peripheral ones, so the
# *effective* receptive field (where the gradient is large) is a roughly Gaussian blob much
# smaller than the theoretical one.
#
# The experiment takes a three-layer stack of $3\times3$ convolutions with a stride-2 layer,
# computes the field from the geometry ($3 \to 5 \to 9$ pixels), and checks it on the real,
# randomly initialised network twice: changing a pixel just outside the computed box leaves
# the centre output unchanged, and the input pixels with non-zero gradient fill exactly the
# box. The right panel shows the effective receptive field: the gradient magnitude is
# concentrated in the middle.

# %%
stack = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
    nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
    nn.Conv2d(8, 1, 3, padding=1),
).double()
shape = (1, 1, 32, 32)
rf = receptive_field(stack, shape)
print(rf)
centre = (8, 8)
box = rf.input_coordinates(centre)
print("input box of output", centre, ":", box)

x = torch.randn(shape, dtype=torch.float64)
y0 = stack(x)[0, 0, 8, 8]
changed = {}
for name, (r, c) in {"just outside (row above)": (box[0].start - 1, 12),
                     "just inside (top row)": (box[0].start, 12)}.items():
    x2 = x.clone()
    x2[0, 0, r, c] += 10.0
    changed[name] = (stack(x2)[0, 0, 8, 8] - y0).abs().item()
print({k: f"{v:.3g}" for k, v in changed.items()})

footprint = empirical_receptive_field(stack, shape, centre)
x_req = x.clone().requires_grad_(True)
stack(x_req)[0, 0, 8, 8].backward()
saliency = x_req.grad[0, 0].abs()

fig, axes = plt.subplots(1, 2, figsize=(6.4, 3))
footprint.plot(axes[0]).set_title(f"receptive field {rf.size[0]}x{rf.size[1]}", fontsize=9)
axes[1].imshow(saliency, cmap="magma")
axes[1].set_title("|gradient| (effective RF)", fontsize=9)
plt.tight_layout()
plt.show()

assert rf.size == (9, 9) and rf.stride == (2, 2), "3x3, 3x3 stride 2, 3x3 gives a 9x9 field"
assert changed["just outside (row above)"] == 0.0, "a pixel outside the field cannot change the unit"
assert changed["just inside (top row)"] > 0.0, "a pixel inside the field does change it"
assert footprint.bbox == tuple((s.start, s.stop) for s in box), "measured footprint == computed box"
inner = saliency[box[0].start + 2:box[0].stop - 2, box[1].start + 2:box[1].stop - 2].sum()
share = (inner / saliency.sum()).item()
print(f"share of |gradient| in the central 5x5 of the 9x9 box: {share:.2f} (its area share: 25/81 = 0.31)")
assert share > 0.4, "the gradient is concentrated in the centre: well above the area share 0.31"

# %% [markdown]
# ### cnn.2
# Explain and elaborate about three different ways to control the rate at which the
# receptive field grows from layer to layer. Compare them to each other in terms of how they
# combine input features.

# %% [markdown]
# **Answer:** The receptive field grows per layer by $d\,(k-1)\,j$, so it is controlled by (1) the kernel size $k$ (and the number of layers), (2) the stride of convolutions or pooling, which multiplies the jump $j$ of all later layers, and (3) the dilation $d$; they differ in parameters, output resolution and in which input features are combined.
#
# From $r_l = r_{l-1} + d_l (k_l-1) j_{l-1}$ and $j_l = j_{l-1} s_l$:
#
# **1. Kernel size (and depth).** A $k\times k$ kernel adds $(k-1)\,j$ per layer: the field
# grows *linearly* with depth. Every pixel of the window is combined by its own learned
# weight: a dense, fully learned combination of neighbouring features, which keeps full
# resolution. The cost is parameters ($k^2 C_{in} C_{out}$ per layer, quadratic in $k$) and
# compute. Stacking small kernels is cheaper than one big one for the same field (three
# $3\times3$ layers see $7\times7$ with $27C^2$ weights against $49C^2$), and puts
# non-linearities in between, so the combination is richer than one linear filter.
#
# **2. Stride / pooling (downsampling).** A layer with stride $s$ multiplies the jump of all
# subsequent layers by $s$, so each later $3\times3$ kernel adds $2 s^L$ rather than $2$: the
# field grows *exponentially* with the number of strided layers, at no extra parameters
# (pooling has none). The price is resolution: the output map shrinks by $s$ per layer,
# losing the precise location of features. The combination is different too: max pooling
# keeps only the strongest response in each window (a fixed, non-learned choice that gives
# some invariance to small shifts), average pooling a fixed uniform average; a strided
# convolution is learned but evaluates only every $s$-th position.
#
# **3. Dilation.** A kernel with dilation $d$ places its $k$ taps $d$ pixels apart, so it
# spans $d(k-1)+1$ pixels with only $k$ weights; with $d_l = 2^l$ the field grows
# exponentially while resolution and parameter count stay those of a plain $3\times3$
# stack. But it combines *sparse* samples: the pixels between the taps are skipped, and a
# stack with the same dilation everywhere sees only a lattice of pixels (the "gridding"
# artefact: neighbouring outputs depend on disjoint sets of inputs). Growing dilations
# ($1,2,4,\dots$) fill the gaps, since the lower layers have already mixed the skipped pixels.
#
# In short: larger kernels/depth combine all nearby features with learned weights (slow
# growth, many parameters); strides and pooling summarise neighbourhoods into fewer positions
# (fast growth, lost resolution, fixed or subsampled combination); dilation combines
# far-apart features at full resolution with few weights (fast growth, sparse sampling).
#
# The experiment builds four-layer stacks with $3\times3$ kernels and 16 channels: plain,
# stride 2 in every layer, dilation $2^{l-1}$, and a constant dilation 2, on a
# $64\times64$ input, and measures the receptive field per layer, the parameters, the output
# resolution and the density of the measured footprint (the fraction of pixels in the box
# that actually influence the output).

# %%
def stack_of(kind: str, depth: int = 4, width: int = 16) -> nn.Sequential:
    """Four 3x3 conv layers whose receptive field grows by one mechanism."""
    layers: list[nn.Module] = []
    for l in range(depth):
        c_in = 1 if l == 0 else width
        if kind == "plain":
            conv = nn.Conv2d(c_in, width, 3, padding=1)
        elif kind == "stride 2":
            conv = nn.Conv2d(c_in, width, 3, stride=2, padding=1)
        elif kind == "dilation 2^l":
            conv = nn.Conv2d(c_in, width, 3, padding=2**l, dilation=2**l)
        else:  # constant dilation 2
            conv = nn.Conv2d(c_in, width, 3, padding=2, dilation=2)
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers)


kinds = ["plain", "stride 2", "dilation 2^l", "dilation 2 (const)"]
shape = (1, 1, 64, 64)
table = {}
for kind in kinds:
    model = stack_of(kind)
    rf = receptive_field(model, shape)
    out = model(torch.zeros(shape))
    index = tuple(s // 2 for s in rf.output_size)
    fp = empirical_receptive_field(model, shape, index)
    table[kind] = {
        "rf per layer": [r.size[0] for r in rf.layers],
        "params": sum(p.numel() for p in model.parameters()),
        "output": tuple(out.shape[2:]),
        "density": fp.mask.sum() / np.prod(fp.size),
        "footprint": fp,
    }
print(f"{'mechanism':20s} {'rf per layer':18s} {'params':>7s} {'output':>9s} {'density':>8s}")
for kind, row in table.items():
    print(f"{kind:20s} {str(row['rf per layer']):18s} {row['params']:7d} "
          f"{'x'.join(map(str, row['output'])):>9s} {row['density']:8.2f}")

fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
for kind in kinds:
    axes[0].plot(range(1, 5), table[kind]["rf per layer"], marker="o", label=kind)
axes[0].set(xlabel="layer", ylabel="receptive field", title="growth")
axes[0].legend(fontsize=7)
table["dilation 2^l"]["footprint"].plot(axes[1]).set_title("dilation 1,2,4,8: dense", fontsize=9)
table["dilation 2 (const)"]["footprint"].plot(axes[2]).set_title("dilation 2,2,2,2: gridding",
                                                                  fontsize=9)
plt.tight_layout()
plt.show()

plain, strided, dilated, grid = (table[k] for k in kinds)
assert plain["rf per layer"] == [3, 5, 7, 9], "kernel/depth: linear growth, +2 per 3x3 layer"
assert strided["rf per layer"] == [3, 7, 15, 31], "stride 2: growth doubles each layer"
assert dilated["rf per layer"] == [3, 7, 15, 31], "dilation 2^l: the same exponential growth"
assert plain["params"] == strided["params"] == dilated["params"], "stride/dilation add no weights"
assert strided["output"] == (4, 4) and plain["output"] == dilated["output"] == (64, 64), \
    "only striding loses resolution"
assert plain["density"] == strided["density"] == dilated["density"] == 1.0, \
    "dense combination: every pixel in the box matters"
assert grid["density"] < 0.3, "constant dilation combines only a sparse lattice (gridding)"

# %% [markdown]
# ### cnn.3
# Imagine a CNN with three convolutional layers, defined as follows:

# %%
import torch
import torch.nn as nn

cnn = nn.Sequential(
    nn.Conv2d(in_channels=3, out_channels=4, kernel_size=3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(in_channels=4, out_channels=16, kernel_size=5, stride=2, padding=2),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(in_channels=16, out_channels=32, kernel_size=7, dilation=2, padding=3),
    nn.ReLU(),
)

cnn(torch.rand(size=(1, 3, 1024, 1024), dtype=torch.float32)).shape

# %% [markdown]
# What is the size (spatial extent) of the receptive field of each "pixel" in the output
# tensor?

# %% [markdown]
# **Answer:** Each output pixel has a $112\times112$ receptive field in the input (neighbouring output pixels are 8 input pixels apart), and the output is $1\times32\times122\times122$.
#
# With $r_l = r_{l-1} + d_l (k_l-1) j_{l-1}$ and $j_l = j_{l-1}s_l$ (ReLUs change nothing;
# a `MaxPool2d(2)` is a layer with kernel 2 and stride 2; the dilated $7\times7$ kernel spans
# $d(k-1)+1 = 2\cdot6+1 = 13$ pixels):
#
# | layer | $k$ | $s$ | $d$ | $p$ | added $d(k-1)j_{l-1}$ | $r_l$ | $j_l$ | output size |
# |---|---|---|---|---|---|---|---|---|
# | input | | | | | | 1 | 1 | 1024 |
# | Conv 3x3 | 3 | 1 | 1 | 1 | $2\cdot1=2$ | 3 | 1 | 1024 |
# | MaxPool 2 | 2 | 2 | 1 | 0 | $1\cdot1=1$ | 4 | 2 | 512 |
# | Conv 5x5, stride 2 | 5 | 2 | 1 | 2 | $4\cdot2=8$ | 12 | 4 | 256 |
# | MaxPool 2 | 2 | 2 | 1 | 0 | $1\cdot4=4$ | 16 | 8 | 128 |
# | Conv 7x7, dilation 2 | 7 | 1 | 2 | 3 | $2\cdot6\cdot8=96$ | 112 | 8 | 122 |
#
# So $r = 1 + 2 + 1 + 8 + 4 + 96 = 112$. The last layer contributes most, because its
# 13-pixel span is multiplied by the jump 8 accumulated by the three downsampling layers
# before it. (Adding kernel sizes, $3+5+7$, or ignoring the pools or the dilation, gives
# wrong answers.)
#
# The output shape follows from $n_{out} = \lfloor (n_{in} + 2p - d(k-1) - 1)/s \rfloor + 1$:
# $1024 \to 1024$ (padding 1 keeps the size) $\to 512$ (pool) $\to \lfloor(512+4-5)/2\rfloor+1
# = 256 \to 128$ (pool) $\to 128 + 6 - 13 + 1 = 122$: the last layer's padding 3 is less than
# the $6$ a dilated $7\times7$ kernel needs to keep the size, so it trims 3 pixels on each
# side. The shape is therefore `torch.Size([1, 32, 122, 122])`; the receptive field does not
# depend on the input size.
#
# The effective padding is $1 + 2\cdot2 + 3\cdot8 = 29$: output pixel $i$ sees input rows
# $8i-29$ to $8i+82$. Interior outputs see a full $112\times112$ patch of the image; those
# near the border see part of it in the zero padding (output $(0,0)$ sees only input rows and
# columns $0$ to $82$ of the actual image).
#
# The experiment computes the table with `receptive_field` and measures the footprint of an
# interior output of this very network (on a copy whose max-pools route gradient to the
# whole window, so that no pixel is hidden), and checks on the real network that a pixel just
# outside the box has no effect.

# %%
shape = (1, 3, 1024, 1024)
rf = receptive_field(cnn, shape)
print(rf)
out_shape = tuple(cnn(torch.rand(shape)).shape)

index = (30, 40)
box = rf.input_coordinates(index)
small = (1, 3, 512, 512)  # the footprint is the same on a smaller input; faster to measure
fp = empirical_receptive_field(cnn, small, index)
print(fp)

x = torch.rand(small)
with torch.no_grad():
    y0 = cnn(x)[0, :, index[0], index[1]]
    x[0, :, box[0].stop, box[1].start:box[1].stop] += 5.0  # the row just below the box
    moved = (cnn(x)[0, :, index[0], index[1]] - y0).abs().max().item()

fp.plot().set_xlim(box[1].start - 40, box[1].stop + 40)
plt.gca().set_ylim(box[0].stop + 40, box[0].start - 40)
plt.show()

assert out_shape == (1, 32, 122, 122), "output shape 1x32x122x122"
assert [r.size[0] for r in rf.layers] == [3, 4, 12, 16, 112], "the table's r_l column"
assert [r.jump[0] for r in rf.layers] == [1, 2, 4, 8, 8], "the table's j_l column"
assert rf.size == (112, 112) and rf.stride == (8, 8) and rf.padding == (29, 29), "112x112 field"
assert fp.size == (112, 112), "measured footprint of an interior output is 112x112"
assert fp.bbox == ((8 * 30 - 29, 8 * 30 + 83), (8 * 40 - 29, 8 * 40 + 83)), "rows 8i-29 .. 8i+82"
assert moved == 0.0, "a pixel outside the field does not affect the output"

# %% [markdown]
# ### cnn.4
# You have trained a CNN, where each layer $l$ is represented by the mapping
# $\vec{y}_l=f_l(\vec{x};\vec{\theta}_l)$, and $f_l(\cdot;\vec{\theta}_l)$ is a convolutional
# layer (not including the activation function).
#
# After hearing that residual networks can be made much deeper, you decide to change each
# layer in your network you used the following residual mapping instead
# $\vec{y}_l=f_l(\vec{x};\vec{\theta}_l)+\vec{x}$, and re-train.
#
# However, to your surprise, by visualizing the learned filters $\vec{\theta}_l$ you observe
# that the original network and the residual network produce completely different filters.
# Explain the reason for this.

# %% [markdown]
# **Answer:** The filters represent different functions: if a layer should compute some mapping $H_l$, the plain layer's filter must represent $H_l$ itself, while the residual layer's filter must represent only the residual $F_l = H_l - I$, i.e. the plain filter minus an identity (delta) kernel; since good layers are close to the identity, the plain filters look like deltas and the residual ones like small correction (edge-like) patterns.
#
# In the plain network $\vec{y}_l = f_l(\vec{x};\vec{\theta}_l)$, so to realise a desired
# layer mapping $H_l$ the convolution must satisfy $f_l = H_l$. In the residual network
# $\vec{y}_l = f_l(\vec{x};\vec{\theta}_l) + \vec{x}$, so the same mapping needs
# $f_l = H_l - I$. A convolution is linear in its filter, and the identity is itself a
# convolution, with the delta filter $\boldsymbol{\delta}$ (1 at the centre tap of the
# matching input channel, 0 elsewhere). Hence, for the same layer mapping,
# $$\vec{\theta}_l^{\text{res}} = \vec{\theta}_l^{\text{plain}} - \boldsymbol{\delta}.$$
# Subtracting a delta turns, for example, a blur filter (all positive, peak in the centre)
# into a Laplacian-like filter (negative centre, positive ring): a completely different
# picture, although both layers compute exactly the same function. Deep networks work best
# when each layer changes its input only a little ($H_l \approx I$), so the plain filters are
# dominated by the delta, and the residual filters are small and show only the change the
# layer makes. This is exactly why ResNets train more easily: "do nothing" is the zero
# filter, which the weights start near (and weight decay pulls towards), instead of a
# precise delta that the plain layer has to learn.
#
# The same reparametrisation also changes training: with different starting points of the
# *function* (random $f$ versus identity plus random $f$), different gradients (the skip
# connection passes $\partial L/\partial\vec{y}$ straight to lower layers) and, in a deep
# network with non-linearities, a different split of the work among layers, the optimiser
# ends up in different solutions; but even in the simplest case where both networks reach
# the same functions, the filters must differ by the identity.
#
# The experiment trains one convolutional layer in both forms, from the same initial
# filter and for the same 600 Adam steps, to the same target mapping (a mild blur, $H = I + 0.05\,\Delta$ with the discrete
# Laplacian $\Delta$) on the bundled digits images, then compares the filters and what they
# represent. The plain filter comes out as the blur itself (a positive blob), the residual
# one as $0.05\,\Delta$ (a negative centre in a positive ring), anti-correlated with it; their
# difference is the delta. The residual form also fits the target faster (after 100
# steps its error is over ten times smaller): its function starts at $I$ plus a small random filter, near
# the target, while the plain layer must first build the identity.

# %%
seed_everything(0)
images = digits()[0][:512]
laplacian = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
delta = torch.zeros(3, 3)
delta[1, 1] = 1.0
target_kernel = delta + 0.05 * laplacian  # H = I + 0.05 * Laplacian: a mild blur
targets = F.conv2d(images, target_kernel.view(1, 1, 3, 3), padding=1)

init = nn.Conv2d(1, 1, 3, padding=1, bias=False).weight.detach().clone()
learned, early_mse = {}, {}
for form in ("plain", "residual"):
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    conv.weight.data.copy_(init)
    opt = torch.optim.Adam(conv.parameters(), lr=0.02)
    for step in range(600):
        y = conv(images) if form == "plain" else conv(images) + images
        loss = F.mse_loss(y, targets)
        if step == 100:
            early_mse[form] = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned[form] = conv.weight.detach()[0, 0]
    print(f"{form:8s} mse after 100 steps {early_mse[form]:.1e}, after 600 {loss.item():.1e}\n{learned[form].numpy().round(3)}")

plain_w, res_w = learned["plain"], learned["residual"]
cosine = F.cosine_similarity(plain_w.flatten(), res_w.flatten(), dim=0).item()
print(f"cosine similarity of the two filters: {cosine:.2f}")

fig, axes = plt.subplots(1, 3, figsize=(7, 2.5))
for ax, (title, w) in zip(axes, [("plain filter = H", plain_w), ("residual filter = H - I", res_w),
                                  ("plain - residual", plain_w - res_w)]):
    ax.imshow(w, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

assert (plain_w - target_kernel).abs().max() < 0.01, "the plain filter represents H itself"
assert (res_w - (target_kernel - delta)).abs().max() < 0.01, "the residual filter represents H - I"
assert (plain_w - res_w - delta).abs().max() < 0.02, "they differ by the identity (delta) kernel"
assert cosine < -0.5, "the two filters look completely different (here anti-correlated)"
assert res_w.norm() < 0.5 * plain_w.norm(), "the residual filter is the small correction"
assert early_mse["residual"] < 0.1 * early_mse["plain"], "residual form: closer start, faster fit"
# %% [markdown]
# ## Dropout

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlsummary import seed_everything

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
# %% [markdown]
# ## Losses and Activation functions

# %%
import copy
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from dlsummary import digits, gradient_flow, seed_everything

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
# %% [markdown]
# ## Optimization

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlsummary import argmin_layer, digits, gradient_flow, seed_everything

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
# %% [markdown]
# ## Backpropagation

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from dlsummary import check_gradients, numerical_gradient, seed_everything

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
# %% [markdown]
# ## Sequence models

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from dlsummary import seed_everything
from dlsummary.sequence import Embedding, batchify, run_in_segments, train_tbptt

seed_everything(0)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Fraction of argmax predictions equal to the targets (targets of -100 are ignored)."""
    keep = targets != -100 if mask is None else mask & (targets != -100)
    return (logits.argmax(-1)[keep] == targets[keep]).float().mean().item()


# %% [markdown]
# ### seq.1
# Regarding word embeddings:
# - A. Explain this term and why it's used in the context of a language model.
# - B. Can a language model like the sentiment analysis example from the tutorials be
#   trained without an embedding (i.e. trained directly on sequences of tokens)? If yes,
#   what would be the consequence for the trained model? if no, why not?

# %% [markdown]
# **Answer:** A word embedding is a learned lookup table that maps each token id to a dense vector of $d$ numbers, so that the model works on vectors whose geometry it can learn (tokens that play similar roles get similar vectors); a model can be trained on raw token ids without it, but either it is an embedding in disguise (one-hot inputs: the first linear layer *is* an embedding, computed wastefully) or it gets a much worse model (ids fed as numbers impose an arbitrary order and distance between tokens).
#
# **A.** A tokenizer turns text into integer ids $x_t \in \{0, \dots, V-1\}$ ($V$ = vocabulary size). An id is a *name*, not a quantity: token 17 is not "more" than token 16, and nothing about the numbering says which words are related. An embedding is a matrix $\boldsymbol{E} \in \mathbb{R}^{V \times d}$ with one learned row per token; the input id $x_t$ is replaced by the row $\boldsymbol{e}_{x_t} = \boldsymbol{E}[x_t, :] \in \mathbb{R}^{d}$, with $d \ll V$ in practice (hundreds against tens of thousands). Because the rows are trained with the rest of the model, tokens that the task treats alike end up with similar vectors (synonyms, words with the same sentiment, the same grammatical role), which lets the layers that follow share what they learn across tokens and lets a language model generalise to word combinations it never saw. It is also cheap: the lookup is an index operation, and it replaces a $V$-dimensional sparse input with a dense $d$-dimensional one. The experiment below shows both: with an embedding the model solves the task, and the vectors it learned for words of the same sentiment are similar to each other and unlike those of the opposite sentiment, while neutral words contribute almost nothing.
#
# **B.** Yes, but what "without an embedding" means decides the consequence.
# (i) If tokens are fed as one-hot vectors $\boldsymbol{o}_{x_t} \in \{0,1\}^V$, the first layer is a linear map $\boldsymbol{W} \in \mathbb{R}^{d \times V}$ and $\boldsymbol{W}\boldsymbol{o}_{x_t} = \boldsymbol{W}[:, x_t]$: it selects one column, exactly an embedding with $\boldsymbol{E} = \boldsymbol{W}^\top$ (the experiment checks that the outputs are identical). Such a model trains as well as one with an embedding, but it multiplies a $V$-vector of zeros per token ($V d$ multiply-adds instead of a $d$-row copy, and $V$ floats of input per token), which is why nobody does it at real vocabulary sizes.
# (ii) If the ids are fed as numbers ($x_t$ as a scalar feature), the first layer computes $x_t \boldsymbol{a} + \boldsymbol{b}$: every token is placed on one line, in the order of the arbitrary numbering, so tokens with neighbouring ids look alike whatever they mean and the task must be solved by carving arbitrary sets of ids out of that line with nonlinear units. Such a model trains, but to a much lower accuracy, it generalises poorly, and what it learns depends on how the vocabulary happened to be numbered. The experiment: a sentiment task on random token sequences, the same model (per-token vector, ReLU, mean over the sequence, linear classifier) fed through an embedding, through one-hot vectors, and through raw ids.

# %%
# A sentiment task: 40 token ids; 8 random ids are positive words, 8 negative, the rest
# neutral. A sequence of 10 tokens is positive when it has more positive than negative words.
V, LENGTH, DIM = 40, 10, 16
sentiment = torch.zeros(V)
word_ids = torch.randperm(V)
sentiment[word_ids[:8]], sentiment[word_ids[8:16]] = 1.0, -1.0


def sentiment_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, V, (3 * n, LENGTH))
    score = sentiment[tokens].sum(1)
    keep = score != 0  # no ties
    return tokens[keep][:n], (score[keep][:n] > 0).long()


class BagClassifier(nn.Module):
    """token -> vector (the front end under test) -> ReLU -> mean over time -> 2 logits."""

    def __init__(self, front_end: str) -> None:
        super().__init__()
        self.front_end = front_end
        in_features = {"embedding": None, "one-hot": V, "raw id": 1}[front_end]
        if in_features is None:
            self.first = nn.Embedding(V, DIM)
        else:  # raw ids get a bias, so that their line need not pass through the origin
            self.first = nn.Linear(in_features, DIM, bias=front_end == "raw id")
        self.head = nn.Linear(DIM, 2)

    def token_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.front_end == "embedding":
            return self.first(tokens)
        if self.front_end == "one-hot":
            return self.first(F.one_hot(tokens, V).float())
        return self.first((tokens.float() / (V - 1)).unsqueeze(-1))  # the id as a number in [0, 1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.token_vectors(tokens)).mean(1))


def fit_classifier(front_end: str, seed: int, steps: int = 100) -> tuple[BagClassifier, float]:
    torch.manual_seed(seed)
    model = BagClassifier(front_end)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model, accuracy(model(test_x), test_y)


train_x, train_y = sentiment_data(1000)
test_x, test_y = sentiment_data(2000)
front_ends = ("embedding", "one-hot", "raw id")
results = {fe: [fit_classifier(fe, seed) for seed in (0, 1)] for fe in front_ends}
print(f"{'front end':>10} | test accuracy (seed 0, seed 1)")
for fe in front_ends:
    print(f"{fe:>10} | " + ", ".join(f"{acc:.3f}" for _, acc in results[fe]))

# the first linear layer on one-hot inputs is an embedding lookup with E = W^T, exactly
one_hot_model = results["one-hot"][0][0]
as_lookup = one_hot_model.first.weight.T[test_x]
assert torch.equal(one_hot_model.token_vectors(test_x), as_lookup), "Linear(one_hot(x)) == W^T[x]"

worst = {fe: min(acc for _, acc in results[fe]) for fe in front_ends}
best_raw = max(acc for _, acc in results["raw id"])
assert worst["embedding"] > 0.97 and worst["one-hot"] > 0.97, f"embedding / one-hot solve the task: {worst}"
assert best_raw < worst["embedding"] - 0.10, f"raw ids are clearly worse: {best_raw:.3f} vs {worst['embedding']:.3f}"

# %% [markdown]
# What the learned vectors look like. The model uses each word through $\operatorname{ReLU}(\boldsymbol{e}_i)$; left, the cosine similarity of these vectors between all pairs of words (sorted by sentiment); right, each word's contribution to the "positive" logit margin, $(\boldsymbol{w}_{+} - \boldsymbol{w}_{-})^\top \operatorname{ReLU}(\boldsymbol{e}_i)$, the direction the classifier reads.

# %%
embedding_model = results["embedding"][0][0]
used_vectors = F.relu(embedding_model.first.weight.detach())
unit = F.normalize(used_vectors, dim=1)
cosine = unit @ unit.T
head_weight = embedding_model.head.weight.detach()
word_score = used_vectors @ (head_weight[1] - head_weight[0])
groups = {"negative": sentiment == -1, "neutral": sentiment == 0, "positive": sentiment == 1}


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    block = cosine[a][:, b]
    if torch.equal(a, b):  # leave out each word's similarity to itself
        return ((block.sum() - block.diagonal().sum()) / (block.numel() - block.shape[0])).item()
    return block.mean().item()


same_pos = mean_cosine(groups["positive"], groups["positive"])
same_neg = mean_cosine(groups["negative"], groups["negative"])
opposite = mean_cosine(groups["positive"], groups["negative"])
print(f"mean cosine: positive-positive {same_pos:.2f}, negative-negative {same_neg:.2f}, "
      f"positive-negative {opposite:.2f}")
for name, mask in groups.items():
    print(f"{name:>8} words: margin contribution from {word_score[mask].min():7.2f} to {word_score[mask].max():6.2f}")

order = torch.argsort(sentiment)
fig, (ax_cos, ax_score) = plt.subplots(1, 2, figsize=(8, 3.2))
image = ax_cos.imshow(cosine[order][:, order], cmap="RdBu_r", vmin=-1, vmax=1)
ax_cos.set_title("cosine of ReLU(e_i): negative | neutral | positive", fontsize=9)
ax_cos.set_xticks([])
ax_cos.set_yticks([])
fig.colorbar(image, ax=ax_cos, fraction=0.046)
for row, (name, colour) in enumerate(zip(groups, ("tab:red", "tab:gray", "tab:green"))):
    ax_score.scatter(word_score[groups[name]], [row] * int(groups[name].sum()), c=colour, s=18)
ax_score.set_yticks(range(3), list(groups))
ax_score.set_xlabel("contribution to the positive-class margin")
plt.tight_layout()
plt.show()

assert min(same_pos, same_neg) > opposite + 0.25, f"same-sentiment words get similar vectors: {same_pos:.2f}, {same_neg:.2f} vs {opposite:.2f}"
neutral_size = word_score[groups["neutral"]].abs().max()
assert word_score[groups["positive"]].min() > 3 * neutral_size, "positive words all push towards 'positive'"
assert word_score[groups["negative"]].max() < -3 * neutral_size, "negative words all push towards 'negative'"

# %% [markdown]
# ### seq.2
# Considering the following snippet, explain:
# - A. What does `Y` contain? why this output shape?
# - B. How you would implement `nn.Embedding` yourself using only torch tensors.

# %%
import torch.nn as nn

X = torch.randint(low=0, high=42, size=(5, 6, 7, 8))
embedding = nn.Embedding(num_embeddings=42, embedding_dim=42000)
Y = embedding(X)
print(f"{Y.shape=}")

# %% [markdown]
# **Answer:** `Y[b, i, j, k, :]` is row `X[b, i, j, k]` of the embedding's weight $\boldsymbol{W} \in \mathbb{R}^{42 \times 42000}$, so `Y` has shape `X.shape + (42000,)` = (5, 6, 7, 8, 42000); `nn.Embedding` is a learned $V \times d$ parameter indexed by the ids, `W[X]`, which autograd differentiates by adding each output gradient into the row it was read from.
#
# **A.** `nn.Embedding(42, 42000)` holds one parameter, `weight`, of shape $(42, 42000)$: one vector of length 42000 for each of the 42 possible ids, initialised $\mathcal{N}(0, 1)$. Calling it on an integer tensor of *any* shape replaces every id by its row:
# $$
# Y_{b,i,j,k,:} = \boldsymbol{W}_{X_{b,i,j,k},\,:} ,
# $$
# so the output keeps all of the input's axes (here 4, whatever they mean: batch, sequence, ...) and appends one axis of size `embedding_dim`. `X` holds $5 \cdot 6 \cdot 7 \cdot 8 = 1680$ ids, each drawn from $\{0, \dots, 41\}$, hence `Y.shape = (5, 6, 7, 8, 42000)`. `Y` contains nothing new: it holds at most 42 distinct vectors (each row of $\boldsymbol{W}$ repeated about $1680 / 42 = 40$ times), so as a $1680 \times 42000$ matrix its rank is at most 42. It is nonetheless large: $1680 \cdot 42000 = 70\,560\,000$ float32 numbers, $282\,240\,000$ bytes (282 MB), 40 times the weight's 7 MB. This configuration is unusual: an embedding normally has $d \ll V$ (it compresses a huge vocabulary into short vectors); here $d = 1000\,V$: the 42000 coordinates describe only 42 points, which span at most 42 dimensions, so whatever the next layer computes from them it could compute from a 42-dimensional code, at a thousandth of the memory. The cell below checks the lookup on all 1680 positions (in chunks, so as not to make a second copy of `Y`) and measures the memory `Y` occupies.
#
# **B.** An embedding is a parameter matrix and an index: `self.weight = nn.Parameter(torch.randn(V, d))` and `forward(ids) = self.weight[ids]` (advanced indexing with an integer tensor returns `ids.shape + (d,)`). The same result is `one_hot(ids, V).float() @ self.weight`, but that builds and multiplies a $V$-times larger tensor. Autograd handles the backward pass: the gradient of `weight[ids]` is an `index_add`, so row $r$ receives $\sum_{p:\, \text{ids}_p = r} \partial L / \partial Y_p$, the sum of the output gradients at the positions where $r$ was looked up, and rows of ids that did not occur get exactly zero. `dlsummary.sequence.Embedding` is this module (plus clear errors for float ids and ids outside $[0, V)$, where `nn.Embedding` says only "index out of range in self"); the cell after next shows it gives bit-identical outputs and gradients to `nn.Embedding` with the same weight.

# %%
weight = embedding.weight
flat_ids, flat_rows = X.reshape(-1), Y.view(-1, Y.shape[-1])  # views: no copy of Y
with torch.no_grad():
    lookup_holds = all(torch.equal(flat_rows[start:start + 168], weight[flat_ids[start:start + 168]])
                       for start in range(0, flat_ids.numel(), 168))
y_bytes = Y.untyped_storage().nbytes()
expected_bytes = math.prod(X.shape) * embedding.embedding_dim * Y.element_size()
print(f"Y[b,i,j,k] == weight[X[b,i,j,k]] at all {flat_ids.numel()} positions: {lookup_holds}")
print(f"Y: {Y.dtype}, {y_bytes:,} bytes = {y_bytes / 1e6:.1f} MB; weight: "
      f"{weight.untyped_storage().nbytes() / 1e6:.2f} MB; distinct ids in X: {X.unique().numel()}")
assert Y.shape == (*X.shape, 42000), "the output shape is X.shape + (embedding_dim,)"
assert lookup_holds, "every entry of Y is the weight row named by the id at that position"
assert y_bytes == expected_bytes == 282_240_000, "Y stores 1680 x 42000 float32 numbers"
assert y_bytes == 40 * weight.untyped_storage().nbytes(), "Y is 40 times the size of the weight it copies"
Y = flat_rows = None  # release the 282 MB (assigning, not del: the names stay bound for later cells)

# %%
# Our Embedding against nn.Embedding with the same weight (a smaller d keeps this light).
reference = nn.Embedding(42, 16)
ours = Embedding(42, 16)
with torch.no_grad():
    ours.weight.copy_(reference.weight)
ids = torch.randint(0, 30, (5, 6, 7, 8))  # ids 30..41 never occur
upstream = torch.randn(5, 6, 7, 8, 16)
out_ref, out_ours = reference(ids), ours(ids)
(out_ref * upstream).sum().backward()
(out_ours * upstream).sum().backward()

counts = torch.bincount(ids.reshape(-1), minlength=42)
by_hand = torch.zeros(42, 16).index_add_(0, ids.reshape(-1), upstream.reshape(-1, 16))
rows_with_gradient = (ours.weight.grad != 0).any(1)
print(f"outputs identical: {torch.equal(out_ref, out_ours)}, "
      f"gradients identical: {torch.equal(reference.weight.grad, ours.weight.grad)}")
print(f"rows with nonzero gradient: {rows_with_gradient.sum().item()} of 42 "
      f"(ids present in the input: {(counts > 0).sum().item()})")
assert torch.equal(out_ref, out_ours), "our Embedding's output equals nn.Embedding's"
assert torch.equal(reference.weight.grad, ours.weight.grad), "our Embedding's gradient equals nn.Embedding's"
assert torch.equal(rows_with_gradient, counts > 0), "only rows that were looked up receive gradient"
assert torch.allclose(ours.weight.grad, by_hand), "row r's gradient is the sum of the output gradients where id r occurs"
assert torch.equal(out_ours, F.one_hot(ids, 42).float() @ ours.weight), "lookup == one_hot(ids) @ weight"

# %% [markdown]
# ### seq.3
# Regarding truncated backpropagation through time (TBPTT) with a sequence length of S:
# State whether the following sentences are **true or false**, and explain.
# - A. TBPTT uses a modified version of the backpropagation algorithm.
# - B. To implement TBPTT we only need to limit the length of the sequence provided to the
#   model to length S.
# - C. TBPTT allows the model to learn relations between input that are at most S timesteps
#   apart.

# %% [markdown]
# **Answer:** A false, B false, C false.
#
# A recurrent network applies the same step $\boldsymbol{h}_t = f_\theta(\boldsymbol{h}_{t-1}, \boldsymbol{x}_t)$ along a sequence of length $T$; backpropagation through time (BPTT) is ordinary backpropagation on this unrolled graph, whose gradient $\frac{\partial L_t}{\partial \theta}$ contains products $\prod_{k} \frac{\partial \boldsymbol{h}_k}{\partial \boldsymbol{h}_{k-1}}$ reaching back to $t = 0$. TBPTT cuts the long sequence into segments of $S$ steps and processes them in order: each segment's forward pass *starts from the state the previous segment ended with* (so information flows forward across the whole stream), but that state is treated as a constant (`h.detach()`), so the backward pass stops at the segment start, and the weights are updated after every segment.
#
# **A. False.** The backward pass is the same reverse-mode backpropagation, run on a different graph: the unrolled graph with the edges into each segment's initial state removed. It computes the *exact* gradient of a well-defined function, the sum of the segment losses with every segment's initial state held fixed at its value, not an approximation produced by a different algorithm. It differs from the full BPTT gradient only by the terms that cross segment boundaries. The experiment differentiates both functions numerically (finite differences, an independent method): TBPTT's gradient matches the cut graph's derivative to about $10^{-9}$, differs from the full gradient by a clearly nonzero amount (about 10 % for this small network), and equals it exactly when $S = T$; the loss value itself is unchanged, since the forward pass is the same.
#
# **B. False.** Only chopping the sequence into pieces of length $S$ and feeding them as independent sequences (each starting from a zero state) is not TBPTT: the model then never sees anything before its segment, targets early in a segment that depend on earlier inputs become noise, and the model learns to expect a zero state at every segment start. TBPTT needs three things: (1) carry the final state of segment $k$ as the initial state of segment $k+1$; (2) detach it, so that memory and time do not grow with the stream; (3) order the data so that this carried state belongs to the same stream: cut the corpus into $B$ contiguous streams (`batchify`), so that row $b$ of batch $k+1$ continues row $b$ of batch $k$, and never shuffle segments. On a delayed-recall task ($y_t = x_{t-2}$, $S = 4$), proper TBPTT is right everywhere; "chop only" is at chance on the first two steps of every segment, and run on the stream with its state carried it does no better, because it learned to expect a zero state at every segment start; carrying the state through shuffled segments fails at the same positions during training, since the state it starts from belongs to another stretch of text.
#
# **C. False** (in both directions, for different reasons). *Using* information: because the state's value is carried forward, a TBPTT-trained model's prediction can depend on inputs arbitrarily far back; on a "latch" task (output the value of the last marker seen) a model trained with $S = 4$ recalls markers 12 or more steps old. *Learning*: the gradient never spans more than $S$ steps, so no update links a target to an input more than $S$ steps earlier; a dependency longer than $S$ is learned only when the mechanism that carries it can be learned from shorter spans (the latch: keeping a value 3 steps is the same weights as keeping it 30). A pure long dependency with no shorter counterpart is not learned: delayed recall with delay 6 and $S = 4$ stays close to chance while delay 2 is learned perfectly, and the same delay-6 task trained with $S = 8$ is learned. So "at most $S$ apart" is neither a limit on what the model uses nor a guarantee of what it learns; it is the span of the gradient, which makes longer dependencies hard to learn.

# %%
# A: the same backpropagation, on the graph with each segment's initial state cut.
f64 = torch.float64
torch.manual_seed(0)
cell = nn.RNN(2, 3, batch_first=True, dtype=f64)
readout = nn.Linear(3, 1, dtype=f64)
parameters = [*cell.parameters(), *readout.parameters()]
T_SEQ, S_SEG = 12, 4
xs, ys = torch.randn(2, T_SEQ, 2, dtype=f64), torch.randn(2, T_SEQ, 1, dtype=f64)


def segment_loss(start: int, stop: int, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    out, h_last = cell(xs[:, start:stop], h0)
    return ((readout(out) - ys[:, start:stop]) ** 2).sum(), h_last


def flat_grad() -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in parameters])


def tbptt_gradient(seg: int) -> tuple[torch.Tensor, float]:
    """What TBPTT computes: segments in order, state carried but detached, loss.backward() each."""
    for p in parameters:
        p.grad = None
    h, total = None, 0.0
    for start in range(0, T_SEQ, seg):
        loss, h = segment_loss(start, start + seg, h)
        loss.backward()  # gradients of all segments add up in .grad
        h, total = h.detach(), total + loss.item()
    return flat_grad(), total


def full_bptt_gradient() -> tuple[torch.Tensor, float]:
    for p in parameters:
        p.grad = None
    loss, _ = segment_loss(0, T_SEQ, None)
    loss.backward()
    return flat_grad(), loss.item()


with torch.no_grad():  # the segment-start states of the forward pass, as constants
    starts = [None] + [cell(xs[:, :k])[1] for k in range(S_SEG, T_SEQ, S_SEG)]
cut_graph_loss = lambda: sum(segment_loss(k * S_SEG, (k + 1) * S_SEG, h0)[0] for k, h0 in enumerate(starts))
full_loss = lambda: segment_loss(0, T_SEQ, None)[0]


def finite_difference(loss_fn, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of loss_fn over all parameters: no backpropagation involved."""
    vector = nn.utils.parameters_to_vector(parameters).detach()
    grad = torch.zeros_like(vector)
    with torch.no_grad():
        for j in range(vector.numel()):
            for sign in (1, -1):
                shifted = vector.clone()
                shifted[j] += sign * eps
                nn.utils.vector_to_parameters(shifted, parameters)
                grad[j] += sign * loss_fn().item() / (2 * eps)
        nn.utils.vector_to_parameters(vector, parameters)
    return grad


rel = lambda a, b: ((a - b).norm() / b.norm()).item()
g_tbptt, loss_tbptt = tbptt_gradient(S_SEG)
g_full, loss_full = full_bptt_gradient()
g_whole, _ = tbptt_gradient(T_SEQ)
fd_cut, fd_full = finite_difference(cut_graph_loss), finite_difference(full_loss)
print(f"loss: TBPTT sum of segments {loss_tbptt:.10f}, full sequence {loss_full:.10f}")
print(f"TBPTT gradient vs finite differences of the cut-graph loss: rel. error {rel(g_tbptt, fd_cut):.1e}")
print(f"full BPTT gradient vs finite differences of the full loss:  rel. error {rel(g_full, fd_full):.1e}")
print(f"TBPTT (S={S_SEG}) vs full BPTT gradient: rel. difference {rel(g_tbptt, g_full):.2f}; "
      f"TBPTT with S=T vs full: {rel(g_whole, g_full):.1e}")
assert abs(loss_tbptt - loss_full) < 1e-12, "the forward pass (the loss) is unchanged by truncation"
assert rel(g_tbptt, fd_cut) < 1e-6, "TBPTT's gradient is the exact derivative of the cut-graph loss"
assert rel(g_full, fd_full) < 1e-6, "full BPTT is the exact derivative of the full loss"
assert rel(g_tbptt, g_full) > 0.05, "truncation changes the gradient (the graph), not the algorithm"
assert rel(g_whole, g_full) < 1e-12, "with S = T, TBPTT is plain BPTT"

# %%
# B and C: recurrent models on long token streams, trained with dlsummary.sequence.train_tbptt.
SYMBOLS, ROWS, UPDATES = 4, 32, 400


class Recaller(nn.Module):
    """embedding -> GRU -> linear, with the (x, state) -> (logits, state) signature."""

    def __init__(self, vocabulary: int, hidden: int = 32) -> None:
        super().__init__()
        self.embed, self.gru = nn.Embedding(vocabulary, 8), nn.GRU(8, hidden, batch_first=True)
        self.out = nn.Linear(hidden, SYMBOLS)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        h, state = self.gru(self.embed(x), state)
        return self.out(h), state


def delayed_recall(n: int, delay: int, g: torch.Generator):
    """x_t uniform over the symbols; target y_t = x_{t - delay}."""
    x = torch.randint(0, SYMBOLS, (n,), generator=g)
    y = torch.full((n,), -100)
    y[delay:] = x[:-delay]
    return x, y


def latch(n: int, g: torch.Generator, p_marker: float = 0.12):
    """Token 0 is a blank, token 1+v a marker of value v; target: the value of the last
    marker. Also returns each target's age (steps since that marker)."""
    is_marker = torch.rand(n, generator=g) < p_marker
    value = torch.randint(0, SYMBOLS, (n,), generator=g)
    last = torch.where(is_marker, torch.arange(n), -1).cummax(0).values
    y = torch.where(last >= 0, value[last.clamp(min=0)], -100)
    return torch.where(is_marker, value + 1, 0), y, torch.arange(n) - last


def shuffle_segments(streams: torch.Tensor, seg: int, g: torch.Generator) -> torch.Tensor:
    """The classic mistake: a dataset of windows with shuffle=True (segment order lost)."""
    rows, steps = streams.shape
    order = torch.randperm(steps // seg, generator=g)
    return streams.view(rows, steps // seg, seg)[:, order].reshape(rows, steps)


cross_entropy = lambda logits, y: F.cross_entropy(logits.reshape(-1, SYMBOLS), y.reshape(-1), ignore_index=-100)


def train_recaller(stream, seg: int, seed: int, carry_state: bool = True, shuffle: bool = False):
    """Train on one long stream (cut into ROWS contiguous rows) for UPDATES segments."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = (batchify(s, ROWS) for s in stream(ROWS * UPDATES * seg, g)[:2])
    if shuffle:
        x, y = shuffle_segments(x, seg, torch.Generator().manual_seed(seed)), shuffle_segments(y, seg, torch.Generator().manual_seed(seed))
    model = Recaller(vocabulary=SYMBOLS + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_tbptt(model, x, y, seg, cross_entropy, optimizer, carry_state=carry_state)
    return model


test_g = torch.Generator().manual_seed(1234)
x_test, y_test = (batchify(s, 16) for s in delayed_recall(16 * 400, 2, test_g))
position = (torch.arange(x_test.shape[1]) % 4).expand_as(x_test)  # position inside a segment of S = 4
regimes = {  # name: (training options, how the test stream is run: carried state?, shuffled?)
    "TBPTT (carry, ordered)": ({}, True, False),
    "chop only (reset)": ({"carry_state": False}, False, False),
    "carry, shuffled segments": ({"shuffle": True}, True, True),
}
table = {}
for name, (options, carry, shuffled) in regimes.items():
    model = train_recaller(lambda n, g: delayed_recall(n, 2, g), 4, seed=0, **options)
    xs_run, ys_run = x_test, y_test
    if shuffled:
        xs_run, ys_run = shuffle_segments(x_test, 4, torch.Generator().manual_seed(7)), shuffle_segments(y_test, 4, torch.Generator().manual_seed(7))
    as_trained = run_in_segments(model, xs_run, 4, carry_state=carry)
    streamed = run_in_segments(model, x_test, 4, carry_state=True)
    table[name] = {
        "per position": [accuracy(as_trained, ys_run, position == p) for p in range(4)],
        "first 2 steps": accuracy(as_trained, ys_run, position < 2),
        "last 2 steps": accuracy(as_trained, ys_run, position >= 2),
        "streamed": accuracy(streamed, y_test),
    }
print("delayed recall y_t = x_{t-2}, S = 4, accuracy (chance 0.25)")
print(f"{'regime':>26} | first 2 steps of a segment | last 2 steps | run as one stream")
for name, row in table.items():
    print(f"{name:>26} | {row['first 2 steps']:26.3f} | {row['last 2 steps']:12.3f} | {row['streamed']:.3f}")

fig, ax = plt.subplots(figsize=(5, 2.8))
for name, row in table.items():
    ax.plot(range(4), row["per position"], marker="o", label=name)
ax.axhline(1 / SYMBOLS, color="gray", ls=":", label="chance")
ax.set_xticks(range(4))
ax.set_xlabel("position inside the segment (S = 4)")
ax.set_ylabel("test accuracy")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

proper, chopped, shuffled_row = table.values()
assert min(proper["first 2 steps"], proper["last 2 steps"]) > 0.95, "TBPTT solves the task at every position"
assert chopped["first 2 steps"] < 0.35 < 0.95 < chopped["last 2 steps"], "chop only: chance where the cause lies in the previous segment"
assert chopped["streamed"] < proper["streamed"] - 0.2, "a chopped model also fails when run as a stream"
assert shuffled_row["first 2 steps"] < 0.35, "with shuffled segments the carried state belongs to another stream"

# %%
# C: using information older than S (latch) vs learning a dependency longer than S (delayed recall).
recall = {}
for delay, seg in ((2, 4), (6, 4), (6, 8)):
    model = train_recaller(lambda n, g, d=delay: delayed_recall(n, d, g), seg, seed=0)
    xr, yr = (batchify(s, 16) for s in delayed_recall(16 * 400, delay, torch.Generator().manual_seed(99)))
    recall[(delay, seg)] = accuracy(run_in_segments(model, xr, seg), yr)

xl, yl, age = (batchify(s, 16) for s in latch(16 * 400, torch.Generator().manual_seed(99)))
age_bins = [(1, 4), (4, 8), (8, 12), (12, 20), (20, 1000)]
latch_acc = {}
for name, carry in (("TBPTT, S = 4", True), ("chop only, S = 4", False)):
    model = train_recaller(latch, 4, seed=0, carry_state=carry)
    logits = run_in_segments(model, xl, 4, carry_state=carry)
    latch_acc[name] = [accuracy(logits, yl, (age >= lo) & (age < hi)) for lo, hi in age_bins]

print("delayed recall, accuracy (chance 0.25): " + ", ".join(f"delay {d}, S = {s}: {a:.3f}" for (d, s), a in recall.items()))
print("latch, accuracy by the age of the marker to recall:")
for name, accs in latch_acc.items():
    print(f"  {name:>17}: " + ", ".join(f"age {lo}-{hi - 1 if hi < 1000 else '...'}: {a:.3f}" for (lo, hi), a in zip(age_bins, accs)))

fig, (ax_latch, ax_recall) = plt.subplots(1, 2, figsize=(8, 2.9))
labels = [f"{lo}-{hi - 1}" if hi < 1000 else f"{lo}+" for lo, hi in age_bins]
for name, accs in latch_acc.items():
    ax_latch.plot(labels, accs, marker="o", label=name)
ax_latch.axhline(1 / SYMBOLS, color="gray", ls=":")
ax_latch.set_xlabel("age of the marker (steps)")
ax_latch.set_ylabel("accuracy")
ax_latch.set_title("latch: using information older than S", fontsize=9)
ax_latch.legend(fontsize=8)
ax_recall.bar([f"delay {d}\nS = {s}" for d, s in recall], list(recall.values()), color=["tab:green", "tab:red", "tab:blue"])
ax_recall.axhline(1 / SYMBOLS, color="gray", ls=":")
ax_recall.set_title("delayed recall: learning a dependency", fontsize=9)
plt.tight_layout()
plt.show()

tbptt_latch, chop_latch = latch_acc.values()
assert min(tbptt_latch[2:]) > 0.8, f"a TBPTT model (S = 4) uses markers 8 to 20+ steps old: {tbptt_latch}"
assert max(chop_latch[2:]) < 0.5, f"without the carried state those markers are out of reach: {chop_latch}"
assert recall[(2, 4)] > 0.95, "a dependency shorter than S is learned"
assert recall[(6, 4)] < 0.45, "a pure dependency longer than S is not learned (near chance 0.25)"
assert recall[(6, 8)] > recall[(6, 4)] + 0.25, "the same dependency is learnable once S exceeds it"

# %% [markdown]
# ## Attention

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from dlsummary import seed_everything

seed_everything(0)

# %% [markdown]
# ### attn.1
# In tutorial 7 (part 2) we learned how to use attention to perform alignment between a
# source and target sequence in machine translation.
# - A. Explain qualitatively what the addition of the attention mechanism between the
#   encoder and decoder does to the hidden states that the encoder and decoder each learn to
#   generate (for their language). How are these hidden states different from the model
#   without attention?
# - B. After learning that self-attention is gaining popularity thanks to the shiny new
#   transformer models, you decide to change the model from the tutorial: instead of the
#   queries being equal to the decoder hidden states, you use self-attention, so that the
#   keys, queries and values are all equal to the encoder's hidden states (with learned
#   projections). What influence do you expect this will have on the learned hidden states?
#
# (Context: the tutorial's model is a recurrent encoder-decoder; the encoder's outputs are
# the keys and values, the decoder's hidden state is the query, and the context vector feeds
# the next decoder step.)

# %% [markdown]
# **Answer:** Attention frees the encoder's final state from having to hold the whole sentence: the encoder learns per-position states that describe each token in its context and can be *found* by a query, and the decoder's state learns to carry where it is in the translation (what to look up next) instead of the whole source; with self-attention in place of decoder queries, the attention no longer depends on what the decoder is producing, so the alignment is lost and the decoder's state (fed by a fixed summary of the source) must again carry the source content and the alignment itself, as in the model without attention, while the encoder states become mixtures of the whole sentence.
#
# **A.** Without attention, the decoder sees the source only through the encoder's last state $\boldsymbol{h}_L$ (its initial state). That one vector must encode *every* source token and its position, and the decoder state $\boldsymbol{s}_t$ must carry everything not yet emitted, step after step: a fixed-size bottleneck whose quality falls with sentence length. With attention, at every step the decoder's state is the query $\boldsymbol{q}_t = \boldsymbol{W}_q \boldsymbol{s}_{t-1}$, the weights $\alpha_{t,j} = \operatorname{softmax}_j\left(\boldsymbol{q}_t^\top \boldsymbol{W}_k \boldsymbol{h}_j / \sqrt{d}\right)$ pick source positions and the context $\boldsymbol{c}_t = \sum_j \alpha_{t,j} \boldsymbol{W}_v \boldsymbol{h}_j$ delivers their content. The hidden states change accordingly. The **encoder states** $\boldsymbol{h}_j$ become a memory that is read position by position: each must describe its own token in context (and give it a key that a query can find), while the final state no longer has to summarise the sentence. The **decoder state** no longer has to store the source: it carries what it has produced and where it is, which is what it needs to ask for the next position; the content arrives through $\boldsymbol{c}_t$. The experiment (reversing random token sequences, where target token $t$ is source token $L-1-t$; a bidirectional GRU encoder and a GRU decoder, trained on lengths 2 to 12) shows this: without attention, accuracy falls steadily with length; with attention, it stays high, and the attention map is the anti-diagonal alignment (the peak sits on the source token being emitted or on its right neighbour, whose forward-GRU state read that token one step earlier and so delivers the same content). Replacing the decoder's initial state (the encoder summary) with that of another sentence sends the no-attention model to chance, since the summary carried the whole sentence, while the attention model still emits several times more correct tokens, since much of the content now arrives through attention; the summary is still used (for the length and the first steps), so it does not survive unharmed.
#
# **B.** With queries, keys and values all projections of the encoder states, the attention computes $\boldsymbol{h}'_i = \sum_j \operatorname{softmax}_j\left((\boldsymbol{W}_q \boldsymbol{h}_i)^\top \boldsymbol{W}_k \boldsymbol{h}_j / \sqrt{d}\right) \boldsymbol{W}_v \boldsymbol{h}_j$: one new vector per *source* position, mixing information from the whole sentence into each (contextualised encoder states, as in a transformer encoder). But nothing in it depends on the decoder: the weights are the same whatever the decoder has produced, so the decoder can no longer choose where to look, and the model loses the alignment that attention provided. The decoder receives the same context at every step (here the average of the $\boldsymbol{h}'_i$, in the slot where the tutorial's model receives $\boldsymbol{c}_t$), so its hidden state must again track its position and carry the source content, as without attention; the encoder states are trained to make the fixed summary informative rather than to be addressable. (Pairing decoder step $t$ with $\boldsymbol{h}'_t$ would only make sense if source and target had the same length and a known alignment, which translation does not have.) Expected, and measured: the self-attention variant behaves like the model without attention: its accuracy falls with length and ends, for the longest sentences, where the no-attention model ends, far below decoder-query attention (the extra summary vector helps a little at medium lengths), and it falls to near chance when its initial state is swapped. Its learned self-attention weights are close to uniform: with no decoder query there is nothing for them to align, so they settle for an average, a bag-of-tokens summary of the sentence, and the map is the same at every decoder step.

# %%
VOCAB, SOS = 8, 8  # tokens 0..7, and a start-of-sequence token for the decoder's first input


class Seq2Seq(nn.Module):
    """Bidirectional GRU encoder, GRU decoder. kind: 'none' (no attention), 'decoder'
    (query = decoder state, the tutorial's model), 'self' (queries, keys and values from
    the encoder states)."""

    def __init__(self, kind: str, hidden: int = 48, emb: int = 16) -> None:
        super().__init__()
        self.kind = kind
        self.src_embed, self.tgt_embed = nn.Embedding(VOCAB, emb), nn.Embedding(VOCAB + 1, emb)
        self.encoder = nn.GRU(emb, hidden // 2, batch_first=True, bidirectional=True)
        self.W_q, self.W_k, self.W_v = (nn.Linear(hidden, hidden, bias=False) for _ in range(3))
        self.decoder = nn.GRU(emb + (0 if kind == "none" else hidden), hidden, batch_first=True)
        self.out = nn.Linear(hidden, VOCAB)

    def attend(self, queries, keys, values):
        weights = torch.softmax(self.W_q(queries) @ keys.transpose(1, 2) / math.sqrt(keys.shape[-1]), -1)
        return weights @ values, weights

    def forward(self, src, tgt_in, swap_summary: bool = False):
        enc, last = self.encoder(self.src_embed(src))
        h = torch.cat([last[0], last[1]], -1).unsqueeze(0)  # the encoder's summary of the sentence
        if swap_summary:  # give every sentence the summary of another sentence
            h = h.roll(1, dims=1)
        keys, values = self.W_k(enc), self.W_v(enc)
        x = self.tgt_embed(tgt_in)
        if self.kind == "none":
            return self.out(self.decoder(x, h)[0]), None
        if self.kind == "self":
            mixed, weights = self.attend(enc, keys, values)  # (B, L, H), (B, L, L)
            context = mixed.mean(1, keepdim=True).expand(-1, x.shape[1], -1)  # same at every step
            return self.out(self.decoder(torch.cat([x, context], -1), h)[0]), weights
        outputs, maps = [], []
        for t in range(x.shape[1]):  # the query is the decoder state, so step by step
            context, weights = self.attend(h.transpose(0, 1), keys, values)
            step, h = self.decoder(torch.cat([x[:, t:t + 1], context], -1), h)
            outputs.append(step)
            maps.append(weights)
        return self.out(torch.cat(outputs, 1)), torch.cat(maps, 1)  # maps: (B, T, L)

    @torch.no_grad()
    def translate(self, src, swap_summary: bool = False):
        """Greedy decoding: feed back the model's own outputs."""
        tokens = torch.full((src.shape[0], 1), SOS)
        for _ in range(src.shape[1]):
            logits, maps = self(src, tokens, swap_summary)
            tokens = torch.cat([tokens, logits[:, -1:].argmax(-1)], 1)
        return tokens[:, 1:], maps


def reversal_batch(n: int, length: int, g: torch.Generator):
    src = torch.randint(0, VOCAB, (n, length), generator=g)
    target = src.flip(1)
    return src, torch.cat([torch.full((n, 1), SOS), target[:, :-1]], 1), target


def train_seq2seq(kind: str, seed: int = 0, steps: int = 300, batch: int = 128):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Seq2Seq(kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for length in torch.randint(2, 13, (steps,), generator=g).tolist():  # lengths 2..12
        src, tgt_in, target = reversal_batch(batch, length, g)
        loss = F.cross_entropy(model(src, tgt_in)[0].reshape(-1, VOCAB), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


kinds = {"none": "no attention", "decoder": "query = decoder state", "self": "self-attention (encoder)"}
models = {kind: train_seq2seq(kind) for kind in kinds}
lengths = (2, 4, 6, 8, 10, 12)
test = {L: reversal_batch(256, L, torch.Generator().manual_seed(100 + L)) for L in lengths}
by_length = {k: [(m.translate(test[L][0])[0] == test[L][2]).float().mean().item() for L in lengths]
             for k, m in models.items()}
swapped = {k: sum((m.translate(test[L][0], swap_summary=True)[0] == test[L][2]).float().mean().item()
                  for L in (4, 8)) / 2 for k, m in models.items()}
print("token accuracy of greedy decoding, by source length (chance 0.125)")
print(f"{'model':>26} | " + " ".join(f"L={L:<4}" for L in lengths) + " | summary swapped (L = 4, 8)")
for k, name in kinds.items():
    print(f"{name:>26} | " + " ".join(f"{a:6.3f}" for a in by_length[k]) + f" | {swapped[k]:.3f}")

src8 = test[8][0]
_, cross_maps = models["decoder"].translate(src8)  # (256, 8 decoder steps, 8 source positions)
_, self_maps = models["self"].translate(src8)  # (256, 8 query positions, 8 key positions)
copied = torch.arange(7, -1, -1)  # decoder step t emits source token 7 - t
offset = cross_maps.argmax(-1) - copied
aligned = (offset.abs() <= 1).float().mean().item()
peak_cross, peak_self = cross_maps.max(-1).values.mean().item(), self_maps.max(-1).values.mean().item()
print(f"query = decoder state: attention peak within one position of the token being emitted in "
      f"{aligned:.1%} of steps (exactly on it: {(offset == 0).float().mean():.1%}, on its right "
      f"neighbour: {(offset == 1).float().mean():.1%}); mean peak weight {peak_cross:.2f}")
print(f"self-attention: mean peak weight {peak_self:.2f} (uniform over 8 positions: 0.125)")

fig, (ax_acc, ax_cross, ax_self) = plt.subplots(1, 3, figsize=(10, 3.1))
for k, name in kinds.items():
    ax_acc.plot(lengths, by_length[k], marker="o", label=name)
ax_acc.set_xlabel("source length")
ax_acc.set_ylabel("token accuracy")
ax_acc.legend(fontsize=7)
ax_cross.imshow(cross_maps[0], cmap="viridis", vmin=0, vmax=1)
ax_cross.set_title("query = decoder state", fontsize=9)
ax_cross.set_xlabel("source position")
ax_cross.set_ylabel("decoder step")
ax_self.imshow(self_maps[0], cmap="viridis", vmin=0, vmax=1)
ax_self.set_title("self-attention (any decoder step)", fontsize=9)
ax_self.set_xlabel("source position (key)")
ax_self.set_ylabel("source position (query)")
plt.tight_layout()
plt.show()

acc = {k: dict(zip(lengths, v)) for k, v in by_length.items()}
assert min(a[4] for a in acc.values()) > 0.9, "short sequences are easy for every variant"
assert acc["decoder"][12] > acc["none"][12] + 0.25, "attention removes the bottleneck at long lengths"
assert acc["self"][12] < acc["decoder"][12] - 0.25, "self-attention without decoder queries loses that benefit"
assert acc["none"][12] < acc["none"][4] - 0.3, "without attention, accuracy falls with length"
assert aligned > 0.9 and peak_cross > 0.5, "the decoder's attention aligns step t with source position L-1-t"
assert peak_self < 0.3, "the self-attention weights carry no alignment: close to uniform"
assert swapped["none"] < 0.2, "without attention, the encoder summary carries the whole sentence"
assert swapped["decoder"] > swapped["none"] + 0.15, "with attention, content comes from the per-position encoder states"
assert swapped["self"] < swapped["decoder"] - 0.1, "self-attention variant depends on the summary like no attention"
# %% [markdown]
# ## Unsupervised learning

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import chi2

from dlsummary import digits, seed_everything

seed_everything(0)

# Binarised 8x8 digits: a Bernoulli decoder then defines a proper likelihood p(x|z), so the
# ELBO and log p(x) below are true log-probabilities (in nats) that can be compared.
images, labels = digits()
x_all = (images.flatten(1) > 0.5).float()
split = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
x_train, x_test = x_all[split[:1500]], x_all[split[1500:]]
y_train = labels[split[:1500]]


class VAE(nn.Module):
    """An MLP VAE: q(z|x) = N(mu(x), diag sigma(x)^2), p(z) = N(0, I), p(x|z) Bernoulli."""

    def __init__(self, latent: int = 2, hidden: int = 128, pixels: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and standard deviation, one row per image."""
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        return mu, (0.5 * log_var).exp()

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z), summed over pixels; z may carry extra leading sample dimensions."""
        logits = self.decoder(z)
        return -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag std^2), summed over the last dimension."""
    return (-0.5 * ((z - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def elbo_terms(model: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the reconstruction term -log p(x|z) at one reparameterised sample
    z = mu + sigma * eps, and the closed-form KL(q(z|x) || N(0, I))."""
    mu, std = model.encode(x)
    z = mu + std * torch.randn_like(mu)
    kl = 0.5 * (mu ** 2 + std ** 2 - 1 - 2 * std.log()).sum(-1)
    return -model.log_likelihood(x, z), kl


def train_vae(kl_weight: float, latent: int = 2, steps: int = 800, seed: int = 0) -> VAE:
    """Minimise reconstruction + kl_weight * KL with Adam (kl_weight=1 is the VAE loss)."""
    seed_everything(seed)
    model = VAE(latent)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, fused=True)
    for _ in range(steps):
        batch = x_train[torch.randint(len(x_train), (128,))]
        reconstruction, kl = elbo_terms(model, batch)
        loss = (reconstruction + kl_weight * kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def show_images(ax: plt.Axes, pixels: torch.Tensor, rows: int, title: str) -> None:
    """Tile a batch of 64-pixel images into a grid with `rows` rows."""
    grid = pixels.reshape(rows, -1, 8, 8).permute(0, 2, 1, 3).reshape(rows * 8, -1)
    ax.imshow(grid.detach(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


# %% [markdown]
# ### vae.1
# As we have seen, a variational autoencoder's loss is comprised of a reconstruction term and
# a KL-divergence term. While training your VAE, you accidentally forgot to include the
# KL-divergence term. What would be the qualitative effect of this on:
# - A. Images reconstructed by the model during training ($x\to z \to x'$)?
# - B. Images generated by the model ($z \to x'$)?

# %% [markdown]
# **Answer:** A: reconstructions stay good and even get sharper and more accurate, because the model degenerates into a plain (deterministic) autoencoder; B: generating from the prior breaks, because nothing ties the codes to $\mathcal{N}(\mathbf{0},\mathbf{I})$ any more, so prior draws land where the decoder was never trained and the samples are off-distribution or unrepresentative.
#
# The VAE minimises, per image,
# $$\mathcal{L}(\mathbf{x}) = \underbrace{\mathbb{E}_{q_\phi(\mathbf{z}|\mathbf{x})}\left[-\log p_\theta(\mathbf{x}|\mathbf{z})\right]}_{\text{reconstruction}} + \underbrace{D_{\mathrm{KL}}\left(q_\phi(\mathbf{z}|\mathbf{x})\,\|\,p(\mathbf{z})\right)}_{\text{KL}},\qquad q_\phi(\mathbf{z}|\mathbf{x})=\mathcal{N}\left(\boldsymbol{\mu}(\mathbf{x}),\operatorname{diag}\boldsymbol{\sigma}^2(\mathbf{x})\right),\quad p(\mathbf{z})=\mathcal{N}(\mathbf{0},\mathbf{I}).$$
# The KL term does two jobs: it keeps every posterior from shrinking to a point (it charges $-\log\sigma_j$ per coordinate) and it pulls the codes towards the origin with unit scale, so that the *aggregate* posterior $q(\mathbf{z})=\frac{1}{N}\sum_i q_\phi(\mathbf{z}|\mathbf{x}_i)$ fills the prior.
#
# **A.** Without the KL term only the reconstruction term remains. The sampling noise $\boldsymbol{\sigma}\odot\boldsymbol{\epsilon}$ can only hurt reconstruction, so the encoder learns $\boldsymbol{\sigma}\to\mathbf{0}$, and the codes $\boldsymbol{\mu}(\mathbf{x})$ are free to spread out as far apart as helps the decoder. The model becomes an ordinary autoencoder: reconstructions of training images become *better* (lower error, sharper), not worse. The latent space loses its structure (arbitrary scale, gaps between clusters, meaningless interpolation), but that does not show in $\mathbf{x}\to\mathbf{z}\to\mathbf{x}'$.
#
# **B.** Generation means decoding $\mathbf{z}\sim p(\mathbf{z})=\mathcal{N}(\mathbf{0},\mathbf{I})$, but the decoder was only ever trained on codes drawn from the posteriors of the training images. Without the KL term those posteriors are tiny points scattered over a region whose scale and position nothing controls, so almost every prior draw falls in a gap between codes. What comes out depends on the decoder's behaviour there: images that look like no digit (with an 8-D latent), or, with a 2-D latent where the prior covers only the middle of the code cloud, a few digit classes over and over instead of the data's variety. Either way the samples do not follow the data distribution.
#
# The experiment trains the same VAE (same architecture, seed, data and budget) with and without the KL term, with a 2-D latent (for pictures) and an 8-D one. Without the KL term the training reconstruction error drops, the posterior standard deviation collapses by orders of magnitude, the codes spread several times wider than the prior, and only a few percent of prior draws land inside any training image's 95% posterior region (with the KL term nearly all do). The generated samples then cover the real digits worse; in 2-D they concentrate on a few classes (lower class entropy), in 8-D they lie far from every real digit.

# %%
@torch.no_grad()
def latent_report(model: VAE, n_prior: int = 2000) -> dict[str, float]:
    """What the encoder does with the training images, and what the decoder makes of
    draws from the prior z ~ N(0, I) (the generation recipe)."""
    mu, std = model.encode(x_train)
    reconstruction, _ = elbo_terms(model, x_train)
    z_prior = torch.randn(n_prior, mu.shape[1])
    # A prior draw is "near a code" if it lies inside the 95% ellipsoid of some training
    # image's posterior q(z|x): the region the decoder was trained to decode.
    nearest_code = ((z_prior[:, None] - mu[None]) / std[None]).norm(dim=-1).min(1).values
    inside_95 = float(chi2.ppf(0.95, df=mu.shape[1])) ** 0.5  # radius of a 95% ellipsoid
    samples = torch.sigmoid(model.decoder(z_prior))
    sample_to_data = torch.cdist(samples, x_test).min(1).values  # fidelity of each sample
    data_to_sample = torch.cdist(x_test, samples).min(1).values  # is each real digit covered?
    sample_class = y_train[torch.cdist(samples, x_train).argmin(1)]  # 1-nearest-neighbour label
    share = torch.bincount(sample_class, minlength=10).float() / n_prior
    return {
        "reconstruction -log p(x|z) (nats)": reconstruction.mean().item(),
        "median posterior std": std.median().item(),
        "spread of codes (std of mu)": mu.std(0).mean().item(),
        "prior draws near a code (%)": 100 * (nearest_code < inside_95).float().mean().item(),
        "sample -> nearest real digit": sample_to_data.mean().item(),
        "real digit -> nearest sample": data_to_sample.mean().item(),
        "class entropy of samples (max 2.30)": -(share[share > 0] * share[share > 0].log()).sum().item(),
        "largest class share of samples (%)": 100 * share.max().item(),
    }


# Same architecture, seed, data and budget; the only difference is the KL term.
with_kl, without_kl = train_vae(kl_weight=1.0), train_vae(kl_weight=0.0)
with_kl_8d, without_kl_8d = train_vae(1.0, latent=8), train_vae(0.0, latent=8)
seed_everything(1)
reports = {"2-D, with KL": latent_report(with_kl), "2-D, no KL": latent_report(without_kl),
           "8-D, with KL": latent_report(with_kl_8d), "8-D, no KL": latent_report(without_kl_8d)}
print(f"{'':37s}" + "".join(f"{name:>14s}" for name in reports))
for key in reports["2-D, with KL"]:
    print(f"{key:37s}" + "".join(f"{r[key]:14.3f}" for r in reports.values()))

fig, axes = plt.subplot_mosaic([["real", "rec_kl", "rec_ae"], ["gen_kl", "gen_ae", "gen_ae8"]],
                               figsize=(9, 4.2))
with torch.no_grad():
    show_images(axes["real"], x_test[:16], 2, "test digits")
    for key, model in (("rec_kl", with_kl), ("rec_ae", without_kl)):
        mu, std = model.encode(x_test[:16])
        recon = torch.sigmoid(model.decoder(mu + std * torch.randn_like(std)))
        show_images(axes[key], recon, 2, "reconstructed, " + ("with KL" if model is with_kl else "no KL"))
    for key, model, name in (("gen_kl", with_kl, "2-D, with KL"), ("gen_ae", without_kl, "2-D, no KL"),
                             ("gen_ae8", without_kl_8d, "8-D, no KL")):
        z = torch.randn(32, model.decoder[0].in_features)
        show_images(axes[key], torch.sigmoid(model.decoder(z)), 4, f"generated from N(0, I), {name}")
plt.tight_layout()
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
with torch.no_grad():
    for ax, model, name in ((axes[0], with_kl, "with KL"), (axes[1], without_kl, "no KL")):
        mu, _ = model.encode(x_train)
        points = ax.scatter(mu[:, 0], mu[:, 1], c=y_train, cmap="tab10", s=3)
        ax.add_patch(plt.Circle((0, 0), 2, fill=False, color="k", lw=1.5, label="prior, radius 2"))
        ax.set_title(f"posterior means of training digits, {name}", fontsize=9)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=8)
fig.colorbar(points, ax=axes, label="digit")
plt.show()

for size in ("2-D", "8-D"):
    kl, ae = reports[f"{size}, with KL"], reports[f"{size}, no KL"]
    assert ae["reconstruction -log p(x|z) (nats)"] < 0.9 * kl["reconstruction -log p(x|z) (nats)"], \
        f"A ({size}): without the KL term, training reconstructions should be better"
    assert ae["median posterior std"] < 0.05 * kl["median posterior std"], \
        f"A ({size}): without the KL term, the encoder's noise should collapse towards zero"
    assert ae["prior draws near a code (%)"] < 15 < 90 < kl["prior draws near a code (%)"], \
        f"B ({size}): without the KL term, prior draws should land where no training code is"
    assert ae["real digit -> nearest sample"] > kl["real digit -> nearest sample"] + 0.1, \
        f"B ({size}): without the KL term, samples should cover the real digits worse"
assert reports["2-D, with KL"]["prior draws near a code (%)"] > 90, "B: with KL, the prior is covered"
assert (reports["2-D, no KL"]["class entropy of samples (max 2.30)"]
        < reports["2-D, with KL"]["class entropy of samples (max 2.30)"] - 0.3), \
    "B (2-D): without the KL term, samples should concentrate on fewer digit classes"
assert (reports["8-D, no KL"]["sample -> nearest real digit"]
        > reports["8-D, with KL"]["sample -> nearest real digit"] + 0.4), \
    "B (8-D): without the KL term, samples should lie far from every real digit"

# %% [markdown]
# ### vae.2
# Regarding VAEs, state whether each of the following statements is **true or false**, and explain:
# - A. The latent-space distribution generated by the model for a specific input image is
#   $\mathcal{N}(\vec{0},\vec{I})$.
# - B. If we feed the same image to the encoder multiple times, then decode each result,
#   we'll get the same reconstruction.
# - C. Since the real VAE loss term is intractable, what we actually minimize instead is it's
#   upper bound, in the hope that the bound is tight.

# %% [markdown]
# **Answer:** A false, B false, C true.
#
# **A. False.** The encoder gives each image its *own* posterior $q_\phi(\mathbf{z}|\mathbf{x})=\mathcal{N}\left(\boldsymbol{\mu}(\mathbf{x}),\operatorname{diag}\boldsymbol{\sigma}^2(\mathbf{x})\right)$, with a mean and spread that depend on $\mathbf{x}$; if it were $\mathcal{N}(\mathbf{0},\mathbf{I})$ for every image, $\mathbf{z}$ would carry no information about $\mathbf{x}$ and the decoder could not reconstruct anything. $\mathcal{N}(\mathbf{0},\mathbf{I})$ is the *prior* $p(\mathbf{z})$. The KL term pulls each posterior towards it, but the reconstruction term pulls the other way, so at the optimum the posteriors are narrow and placed at different points, while their *average* over the data set, the aggregate posterior, is close to $\mathcal{N}(\mathbf{0},\mathbf{I})$. The experiment shows the posteriors of a 0 and a 1: each is several times narrower than the prior and a few nats of KL away from it, and the two means are many posterior standard deviations apart. The average over all training images has mean near $\mathbf{0}$ and second moment near $\mathbf{I}$.
#
# **B. False.** The encoder is deterministic: it returns the same $\boldsymbol{\mu}(\mathbf{x}),\boldsymbol{\sigma}(\mathbf{x})$ every time. But the VAE then *samples* a code, $\mathbf{z}=\boldsymbol{\mu}+\boldsymbol{\sigma}\odot\boldsymbol{\epsilon}$ with $\boldsymbol{\epsilon}\sim\mathcal{N}(\mathbf{0},\mathbf{I})$ (the reparameterisation trick), and each pass draws a fresh $\boldsymbol{\epsilon}$. The codes differ, and so do their decodings: they are variations of the input. (If the decoder output is read as a distribution $p_\theta(\mathbf{x}|\mathbf{z})$ and sampled as well, there is yet more randomness.) The reconstruction is the same every time only if we decode the mean $\boldsymbol{\mu}(\mathbf{x})$ instead of a sample, as is often done at test time, or if $\boldsymbol{\sigma}\to\mathbf{0}$, which is what happens without the KL term (vae.1). The experiment encodes one digit 200 times: identical encoder outputs, reconstructions that differ, visibly and pixel by pixel, an identical image when the mean is decoded, and almost no spread for the model trained without the KL term.
#
# **C. True.** What we would like to minimise is the negative log-likelihood $-\log p_\theta(\mathbf{x})=-\log\int p_\theta(\mathbf{x}|\mathbf{z})\,p(\mathbf{z})\,d\mathbf{z}$, an integral over all codes with no closed form for a neural decoder. For any $q_\phi(\mathbf{z}|\mathbf{x})$,
# $$\log p_\theta(\mathbf{x}) = \underbrace{\mathbb{E}_{q_\phi(\mathbf{z}|\mathbf{x})}\left[\log p_\theta(\mathbf{x}|\mathbf{z})\right]-D_{\mathrm{KL}}\left(q_\phi(\mathbf{z}|\mathbf{x})\,\|\,p(\mathbf{z})\right)}_{\text{ELBO}} + D_{\mathrm{KL}}\left(q_\phi(\mathbf{z}|\mathbf{x})\,\|\,p_\theta(\mathbf{z}|\mathbf{x})\right),$$
# and the last term is $\ge 0$. So $\text{ELBO}\le\log p_\theta(\mathbf{x})$ (the evidence *lower* bound), and the VAE loss we minimise, $-\text{ELBO}$ (reconstruction + KL), is an *upper* bound on $-\log p_\theta(\mathbf{x})$. Minimising it pushes $-\log p_\theta(\mathbf{x})$ down, and the gap, $D_{\mathrm{KL}}(q_\phi(\mathbf{z}|\mathbf{x})\,\|\,p_\theta(\mathbf{z}|\mathbf{x}))$, is small exactly when the encoder's Gaussian matches the true posterior: the bound is tight. "Lower bound" (ELBO, on $\log p$) and "upper bound" (the loss, on $-\log p$) are the same statement. The experiment checks the direction on the trained model. With a 2-D latent, $\log p_\theta(\mathbf{x})$ can be computed by quadrature over a fine grid, and importance sampling with $K$ samples from $q_\phi$, $\log\frac{1}{K}\sum_k \frac{p_\theta(\mathbf{x}|\mathbf{z}_k)p(\mathbf{z}_k)}{q_\phi(\mathbf{z}_k|\mathbf{x})}$ (a lower bound in expectation that tightens as $K$ grows), climbs from the ELBO ($K=1$) to it. On every test digit the ELBO lies below $\log p_\theta(\mathbf{x})$, by a measurable gap (about 0.7 nats) that is small next to $|\log p_\theta(\mathbf{x})|$ (about 19 nats).

# %%
# A. The posterior q(z|x) of two different digits, against the prior N(0, I).
seed_everything(2)
y_test = labels[split[1500:]]
pair = [int((y_test == digit).nonzero()[0]) for digit in (0, 1)]
with torch.no_grad():
    mu, std = with_kl.encode(x_test[pair])
    kl_to_prior = 0.5 * (mu ** 2 + std ** 2 - 1 - 2 * std.log()).sum(-1)
    all_mu, all_std = with_kl.encode(x_train)
    # The aggregate posterior, the average of q(z|x) over the data, is what the KL term
    # pulls towards N(0, I): its mean and second moment E[z z^T].
    aggregate_mean = all_mu.mean(0)
    aggregate_moment = (all_mu.T @ all_mu + torch.diag((all_std ** 2).sum(0))) / len(all_mu)
for i, digit in enumerate((0, 1)):
    print(f"digit {digit}: mu = {mu[i].numpy().round(2)}, sigma = {std[i].numpy().round(3)}, "
          f"KL(q(z|x) || N(0,I)) = {kl_to_prior[i]:.2f} nats")
separation = ((mu[0] - mu[1]) / std.max(0).values).norm()
print(f"the two posterior means are {separation:.1f} posterior standard deviations apart")
print(f"aggregate posterior: mean {aggregate_mean.numpy().round(3)}, E[z z^T] =\n{aggregate_moment.numpy().round(3)}")

fig, ax = plt.subplots(figsize=(4.2, 3.6))
ax.scatter(all_mu[:, 0], all_mu[:, 1], s=2, c="lightgray", label="other training digits")
angle = torch.linspace(0, 2 * math.pi, 100)
ax.plot(2 * angle.cos(), 2 * angle.sin(), "k", lw=1.5, label="prior N(0, I), 2 std")
for i, (digit, colour) in enumerate(((0, "tab:blue"), (1, "tab:red"))):
    ax.plot(mu[i, 0] + 2 * std[i, 0] * angle.cos(), mu[i, 1] + 2 * std[i, 1] * angle.sin(),
            color=colour, lw=2, label=f"q(z|x) of a {digit}, 2 std")
ax.set_aspect("equal")
ax.legend(fontsize=7, loc="upper right")
ax.set_title("A: each image has its own posterior", fontsize=9)
plt.show()

assert (kl_to_prior > 1.0).all(), "A: each image's posterior should be far from N(0, I)"
assert (std < 0.5).all(), "A: each image's posterior should be much narrower than the prior"
assert separation > 3, "A: two different digits should get clearly different posteriors"
assert aggregate_mean.abs().max() < 0.2 and (aggregate_moment - torch.eye(2)).abs().max() < 0.3, \
    "A: the average over images of q(z|x), not each q(z|x), should be close to N(0, I)"

# %%
# B. Encode one image many times and decode each result.
with torch.no_grad():
    image = x_test[pair[0]][None]
    (mu_1, std_1), (mu_2, std_2) = with_kl.encode(image), with_kl.encode(image)
    z = mu_1 + std_1 * torch.randn(200, 2)            # the reparameterised samples
    decoded = torch.sigmoid(with_kl.decoder(z))       # pixel probabilities, one row per pass
    from_mean = [torch.sigmoid(with_kl.decoder(mu_1)) for _ in range(2)]
    mu_ae, std_ae = without_kl.encode(image)
    decoded_ae = torch.sigmoid(without_kl.decoder(mu_ae + std_ae * torch.randn(200, 2)))
spread = decoded.std(0).max().item()           # the most variable pixel
spread_ae = decoded_ae.std(0).max().item()
distinct = len(torch.unique((decoded > 0.5).int(), dim=0))
print(f"encoder outputs identical on two passes: {torch.equal(mu_1, mu_2) and torch.equal(std_1, std_2)}")
print(f"200 encode-sample-decode passes: largest pixel std {spread:.3f}, "
      f"{distinct} distinct thresholded reconstructions")
print(f"decoding the mean twice: identical = {torch.equal(*from_mean)}")
print(f"the same with the no-KL model (sigma ~ {std_ae.mean():.4f}): largest pixel std {spread_ae:.4f}")

fig, axes = plt.subplots(1, 3, figsize=(8, 1.8), gridspec_kw={"width_ratios": [1, 8, 1]})
show_images(axes[0], image, 1, "input")
show_images(axes[1], decoded[:8], 1, "8 passes: encode, sample z, decode")
show_images(axes[2], from_mean[0], 1, "decode mu")
plt.show()

assert torch.equal(mu_1, mu_2) and torch.equal(std_1, std_2), "B: the encoder itself is deterministic"
assert spread > 0.1 and distinct >= 3, "B: sampling z should give different reconstructions"
assert torch.equal(*from_mean), "B: decoding the posterior mean should be deterministic"
assert spread_ae < 0.2 * spread, "B: the spread should come from the posterior's noise"

# %%
# C. The bound: ELBO, importance-sampled estimates and (2-D latent) quadrature of log p(x).
seed_everything(3)


@torch.no_grad()
def importance_log_likelihood(model: VAE, x: torch.Tensor, samples: int) -> torch.Tensor:
    """log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) with z_k ~ q(z|x), per image (K=1: the ELBO
    at one sample). In expectation a lower bound on log p(x) that tightens as K grows."""
    mu, std = model.encode(x)
    z = mu + std * torch.randn(samples, *mu.shape)
    log_weights = (model.log_likelihood(x, z) + gaussian_log_density(z, torch.zeros(()), torch.ones(()))
                   - gaussian_log_density(z, mu, std))
    return torch.logsumexp(log_weights, dim=0) - math.log(samples)


@torch.no_grad()
def quadrature_log_likelihood(model: VAE, x: torch.Tensor, step: float = 0.05) -> torch.Tensor:
    """log p(x) = log of the integral of p(x|z) p(z) over a fine grid of the 2-D latent plane."""
    axis = torch.arange(-6, 6 + step / 2, step)
    z = torch.cartesian_prod(axis, axis)
    logits = model.decoder(z)
    log_px_given_z = x @ logits.T - F.softplus(logits).sum(-1)   # Bernoulli log-likelihood
    log_prior = gaussian_log_density(z, torch.zeros(()), torch.ones(()))
    return torch.logsumexp(log_px_given_z + log_prior, dim=1) + 2 * math.log(step)


with torch.no_grad():
    reconstruction, kl = zip(*(elbo_terms(with_kl, x_test) for _ in range(200)))
    elbo = -(torch.stack(reconstruction) + torch.stack(kl)).mean(0)   # E_q over 200 draws
log_px = quadrature_log_likelihood(with_kl, x_test)
estimates = {k: importance_log_likelihood(with_kl, x_test, k) for k in (1, 10, 100, 1000)}
print(f"{'mean over test digits (nats)':34s}{'value':>9s}")
print(f"{'ELBO':34s}{elbo.mean():9.3f}")
for k, estimate in estimates.items():
    print(f"{f'importance-sampled, K = {k}':34s}{estimate.mean():9.3f}")
print(f"{'log p(x) by quadrature':34s}{log_px.mean():9.3f}")
print(f"loss we minimise, -ELBO = {-elbo.mean():.3f} >= -log p(x) = {-log_px.mean():.3f}; "
      f"gap = mean KL(q(z|x) || p(z|x)) = {(log_px - elbo).mean():.3f} nats")

fig, ax = plt.subplots(figsize=(4.5, 2.8))
ax.semilogx(list(estimates), [e.mean() for e in estimates.values()], "o-", label="importance-sampled")
ax.axhline(log_px.mean(), color="k", ls="--", label="log p(x), quadrature")
ax.axhline(elbo.mean(), color="tab:red", ls=":", label="ELBO")
ax.set_xlabel("samples K")
ax.set_ylabel("nats per digit")
ax.legend(fontsize=8)
plt.show()

means = [e.mean().item() for e in estimates.values()]
assert (elbo <= log_px + 0.05).float().mean() > 0.99, "C: ELBO <= log p(x) for every digit"
assert (log_px - elbo).mean() > 0.3, "C: the bound is not tight for free: the gap is measurable"
assert (log_px - elbo).mean() < 0.15 * log_px.abs().mean(), "C: but the bound is fairly tight"
assert all(a < b for a, b in zip(means, means[1:])), "C: more importance samples, tighter bound"
assert abs(means[-1] - log_px.mean()) < 0.1, "C: K=1000 and quadrature agree on log p(x)"

# %% [markdown]
# ### gan.1
# Regarding GANs, state whether each of the following statements is **true or false**, and explain:
# - A. Ideally, we want the generator's loss to be low, and the discriminator's loss to be
#   high so that it's fooled well by the generator.
# - B. It's crucial to backpropagate into the generator when training the discriminator.
# - C. To generate a new image, we can sample a latent-space vector from $\mathcal{N}(\vec{0},\vec{I})$.
# - D. It can be beneficial for training the generator if the discriminator is trained for a
#   few epochs first, so that it's output isn't arbitrary.
# - E. If the generator is generating plausible images and the discriminator reaches a
#   stable state where it has 50% accuracy (for both image types), training the generator
#   more will further improve the generated images.

# %% [markdown]
# **Answer:** A false, B false, C true, D true, E false.
#
# The GAN game: the discriminator $D$ outputs the probability that its input is real and minimises $\mathcal{L}_D=-\mathbb{E}_{\mathbf{x}\sim p_{\text{data}}}\left[\log D(\mathbf{x})\right]-\mathbb{E}_{\mathbf{z}\sim p(\mathbf{z})}\left[\log\left(1-D(G(\mathbf{z}))\right)\right]$; the generator minimises $\mathbb{E}\left[\log\left(1-D(G(\mathbf{z}))\right)\right]$ (minimax form) or, in practice, the non-saturating $\mathcal{L}_G=-\mathbb{E}\left[\log D(G(\mathbf{z}))\right]$. For a fixed $G$ the best discriminator is $D^*(\mathbf{x})=\frac{p_{\text{data}}(\mathbf{x})}{p_{\text{data}}(\mathbf{x})+p_g(\mathbf{x})}$, and then
# $$\mathcal{L}_D(D^*) = 2\log 2 - 2\,\mathrm{JSD}\left(p_{\text{data}}\,\|\,p_g\right)\le 2\log 2,$$
# with equality exactly when $p_g=p_{\text{data}}$, where $D^*\equiv\frac{1}{2}$.
#
# **A. False.** The ideal end point is the equilibrium $p_g=p_{\text{data}}$, where even the best discriminator outputs $\frac{1}{2}$ everywhere and is right half the time. There $\mathcal{L}_D=2\log 2\approx 1.386$ (or $\log 2$ per term, if the two terms are averaged) and $\mathcal{L}_G=-\log\frac{1}{2}=\log 2\approx 0.693$. Neither is "low" or "high" in the naive sense. The generator's loss is not low: it could only approach $0$ if $D$ confidently called the fakes real, which a good discriminator never does (its loss would then exceed $2\log 2$), so a low $\mathcal{L}_G$ signals a failing discriminator, not a good generator. The discriminator's loss should not be "high" either: $2\log 2$ is the most an *optimal* discriminator can be forced to, and a loss above it means a badly wrong $D$ that gives $G$ useless gradients. Each loss only means something relative to the current opponent, so GAN losses are not measures of sample quality. In the 1-D experiment (data $\mathcal{N}(2,0.5^2)$, affine generator) training ends with the losses hovering at $2\log 2$ and $\log 2$, and a freshly trained discriminator reaches only chance accuracy. Training the generator alone against the frozen final discriminator then *lowers* its loss while the generated distribution drifts far away from the data.
#
# **B. False.** In the discriminator's step the generator is held fixed: the fakes are detached (`fake.detach()`), and $G$ is updated only in its own step, on its own loss. The gradient of $\mathcal{L}_D$ with respect to $G$'s parameters points *against* $G$'s objective: for the minimax loss it is exactly its negative (cosine $-1$), for the non-saturating loss it is strongly opposed. Applying it would teach $G$ to make its fakes *easier* to detect. Backpropagating into $G$ there is therefore at best wasted computation (if the gradients are zeroed before $G$'s step) and at worst harmful (if they accumulate into $G$'s update). The experiment measures both cosines and shows that one step along $\mathcal{L}_D$'s gradient moves $G$ away from the data, while a step along $\mathcal{L}_G$'s moves it closer.
#
# **C. True.** A trained generator is a deterministic map from the latent space to images; a new image is $G(\mathbf{z})$ for a fresh $\mathbf{z}$ drawn from the latent distribution used in training, which is usually $\mathcal{N}(\mathbf{0},\mathbf{I})$. Each new draw gives a new sample. (The prior is a design choice: a GAN trained with uniform noise must be sampled with uniform noise; $G$ has learned to map *that* distribution onto the data.) Measured: $z\sim\mathcal{N}(0,1)$ gives samples with the data's mean and spread, while drawing $z$ from a different distribution ($\mathcal{N}(0,3^2)$) gives samples three times too spread out.
#
# **D. True.** $G$ learns only through $D$: its gradient is $\nabla_{\mathbf{x}}\log D$ at the fakes. A randomly initialised $D$ is an arbitrary function, so that gradient points in an arbitrary direction. A few discriminator steps first, or $k$ discriminator steps per generator step as in the original GAN algorithm (and 5 critic steps in WGAN), make $D$'s slope point from the fakes towards the data, so $G$'s first steps are useful. It must not be overdone with the original minimax loss: a discriminator trained to saturation has $D(G(\mathbf{z}))\approx 0$, where $\log(1-D)$ is flat, so the generator's gradient fades. This is why the non-saturating loss is used (its gradient stays strong, even grows), and why a far too strong $D$ is still unhelpful. Measured on a generator that starts far from the data: with an untrained $D$ the direction of $G$'s gradient is a coin toss across initialisations, after 50 $D$ steps it points to the data in every one, and after 300 steps $D(G(\mathbf{z}))\approx 0.01$ and the minimax gradient has faded relative to the non-saturating one.
#
# **E. False.** If $D$ is at 50% for both kinds of images because $p_g=p_{\text{data}}$, then $D\equiv\frac{1}{2}$ is constant, $\nabla_{\mathbf{x}}D=0$, and the generator's gradient is exactly zero: there is nothing left to improve, and no signal to improve it with. If $D$ is merely *stuck* at 50% (too weak to tell the images apart) while $G$ is still imperfect, $G$'s gradient reflects $D$'s arbitrary small slopes, not the data, and further generator training only exploits them. Either way more generator training does not improve the images; progress needs a discriminator that can again tell real from fake. Measured: with $D\equiv\frac{1}{2}$ the gradient on $G$ is exactly zero; at the trained equilibrium the gradient reaching $G$ is many times smaller than far from it; and 500 more generator steps against the 50% discriminator move the generated distribution far away from the data.

# %%
# A one-dimensional GAN: the data are N(2, 0.5^2) and the generator G(z) = a z + b with
# z ~ N(0, 1) can match them exactly, so the equilibrium is reachable and measurable: the
# generated distribution is N(b, a^2), and its exact 2-Wasserstein distance to the data is
# sqrt((b - 2)^2 + (|a| - 0.5)^2).
seed_everything(4)
DATA_MEAN, DATA_STD, BATCH = 2.0, 0.5, 256
LOG2 = math.log(2)


def real_batch(n: int = BATCH) -> torch.Tensor:
    return DATA_MEAN + DATA_STD * torch.randn(n, 1)


def make_discriminator(width: int = 16) -> nn.Module:
    """D(x) = sigmoid(logit(x)); the network returns the logit (piecewise linear in x)."""
    return nn.Sequential(nn.Linear(1, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))


def make_generator() -> nn.Linear:
    """G(z) = z - 2: a generator that starts far from the data, at N(-2, 1)."""
    generator = nn.Linear(1, 1)
    with torch.no_grad():
        generator.weight.fill_(1.0)
        generator.bias.fill_(-2.0)
    return generator


def distance_to_data(generator: nn.Linear) -> float:
    return math.hypot(generator.bias.item() - DATA_MEAN, abs(generator.weight.item()) - DATA_STD)


def discriminator_loss(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))], the 'sum form' of the binary cross-entropy."""
    return F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()


def generator_loss(d: nn.Module, fake: torch.Tensor, saturating: bool = False) -> torch.Tensor:
    """Non-saturating -E[log D(G(z))] (the default), or the minimax E[log(1 - D(G(z)))]."""
    return -F.softplus(d(fake)).mean() if saturating else F.softplus(-d(fake)).mean()


def accuracy(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    return 0.5 * ((d(real) > 0).float().mean() + (d(fake) < 0).float().mean()).item()


def adam(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(module.parameters(), lr=5e-3, betas=(0.5, 0.999))


def train_discriminator(d: nn.Module, generator: nn.Module, steps: int) -> nn.Module:
    """Train D alone against a fixed generator (the fakes carry no graph back into G)."""
    optimizer = adam(d)
    for _ in range(steps):
        with torch.no_grad():
            fake = generator(torch.randn(BATCH, 1))
        loss = discriminator_loss(d, real_batch(), fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return d


@torch.no_grad()
def game_state(d: nn.Module, generator: nn.Module, n: int = 20000) -> dict[str, float]:
    """Both losses and D's accuracy, measured on fresh samples."""
    real, fake = real_batch(n), generator(torch.randn(n, 1))
    return {"D loss": discriminator_loss(d, real, fake).item(),
            "G loss": generator_loss(d, fake).item(), "D accuracy": accuracy(d, real, fake)}


# The game's D is wider (64 units): to see a wrong spread, not only a wrong mean, the
# piecewise-linear logit needs kinks near the data, and with 16 units G's spread often
# stalled for thousands of steps after an early collapse (seed-dependent). 2000 steps.
generator, discriminator = make_generator(), make_discriminator(64)
g_optimizer, d_optimizer = adam(generator), adam(discriminator)
history = []
for _ in range(2000):
    real, fake = real_batch(), generator(torch.randn(BATCH, 1))
    d_loss = discriminator_loss(discriminator, real, fake.detach())   # D step: G fixed
    d_optimizer.zero_grad()
    d_loss.backward()
    d_optimizer.step()
    g_loss = generator_loss(discriminator, generator(torch.randn(BATCH, 1)))   # G step
    g_optimizer.zero_grad()
    g_loss.backward()
    g_optimizer.step()
    history.append((d_loss.item(), g_loss.item(), distance_to_data(generator)))
history = torch.tensor(history)

# At the end: the trained D, and a fresh D trained to convergence against the final G
# (the best response: if it cannot beat 50%, nothing can tell the fakes apart).
best_response = train_discriminator(make_discriminator(), generator, 500)
final = {"trained D": game_state(discriminator, generator),
         "fresh best-response D": game_state(best_response, generator)}
# A low generator loss is easy to get without a good generator: train G alone against the
# frozen final D.
exploiting = nn.Linear(1, 1)
exploiting.load_state_dict(generator.state_dict())
optimizer = adam(exploiting)
for _ in range(500):
    loss = generator_loss(discriminator, exploiting(torch.randn(BATCH, 1)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
final["trained D, G trained alone"] = game_state(discriminator, exploiting)
distances = {"trained D": distance_to_data(generator), "fresh best-response D": distance_to_data(generator),
             "trained D, G trained alone": distance_to_data(exploiting)}

print(f"theory at equilibrium: D loss 2 log 2 = {2 * LOG2:.3f}, G loss log 2 = {LOG2:.3f}, accuracy 0.5")
print(f"{'':28s}{'D loss':>8s}{'G loss':>8s}{'D acc':>8s}{'W2 to data':>12s}")
for name, state in final.items():
    print(f"{name:28s}{state['D loss']:8.3f}{state['G loss']:8.3f}{state['D accuracy']:8.3f}{distances[name]:12.3f}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(history[:, 0], lw=0.8, label="D loss")
axes[0].plot(history[:, 1], lw=0.8, label="G loss (non-saturating)")
axes[0].axhline(2 * LOG2, color="k", ls="--", lw=1, label="2 log 2")
axes[0].axhline(LOG2, color="gray", ls="--", lw=1, label="log 2")
axes[0].set_xlabel("step")
axes[0].legend(fontsize=7)
axes[1].semilogy(history[:, 2])
axes[1].set_xlabel("step")
axes[1].set_title("distance of generated from real distribution (W2)", fontsize=9)
plt.tight_layout()
plt.show()

best = final["fresh best-response D"]
assert abs(best["D loss"] - 2 * LOG2) < 0.03, "A: at equilibrium D's loss is 2 log 2"
assert abs(best["G loss"] - LOG2) < 0.05, "A: at equilibrium G's loss is log 2, not low"
assert abs(best["D accuracy"] - 0.5) < 0.05, "A: at equilibrium even the best D is at chance"
tail = history[-200:].mean(0)
assert abs(tail[0] - 2 * LOG2) < 0.05 and abs(tail[1] - LOG2) < 0.05, \
    "A: during the last steps the losses hover at 2 log 2 and log 2"
alone = final["trained D, G trained alone"]
# (each loss is a mean over 20000 samples: its standard error is below 0.002, and below 0.0003
# where the frozen D is nearly flat and the drop is small, so a drop of 0.005 is no accident)
assert (alone["G loss"] < final["trained D"]["G loss"] - 0.005
        and distances["trained D, G trained alone"] > 10 * distances["trained D"]), \
    "A: a lower generator loss should be reachable while the generator gets worse"

# %%
# B. The discriminator's step, with the fakes NOT detached: what gradient would reach G?
seed_everything(5)
start = make_generator()
warm_d = train_discriminator(make_discriminator(), start, 50)
z, real = torch.randn(4096, 1), real_batch(4096)


def gradient_on_generator(loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(start.parameters()))])


grad_from_d_loss = gradient_on_generator(discriminator_loss(warm_d, real, start(z)))
grad_from_g_loss = gradient_on_generator(generator_loss(warm_d, start(z)))
grad_from_minimax = gradient_on_generator(generator_loss(warm_d, start(z), saturating=True))
cosine = F.cosine_similarity(grad_from_d_loss, grad_from_g_loss, dim=0).item()
cosine_minimax = F.cosine_similarity(grad_from_d_loss, grad_from_minimax, dim=0).item()
# One small step (length 0.1 in parameter space) along each negative gradient: where does
# the generated distribution's mean b go? (The data's mean is +2, G's starts at -2.)
mean_after = {name: start.bias.item() - 0.1 * (grad / grad.norm())[1].item()
              for name, grad in (("along D's loss", grad_from_d_loss), ("along G's loss", grad_from_g_loss))}
print("cosine, w.r.t. G's parameters, of the gradient of D's loss and of G's loss: "
      f"{cosine:.3f} (non-saturating G loss), {cosine_minimax:.3f} (minimax G loss)")
print(f"mean of G(z): before {start.bias.item():.3f}, after one step "
      + ", ".join(f"{name} {m:.3f}" for name, m in mean_after.items()))
assert cosine < -0.5 and cosine_minimax < -0.999, "B: D's loss pushes G against G's own objective"
assert mean_after["along D's loss"] < start.bias.item() < mean_after["along G's loss"], \
    "B: stepping G on D's loss moves its samples away from the data"

# %%
# C. New samples: draw z from the prior the generator was trained with.
seed_everything(6)
with torch.no_grad():
    samples = {"z ~ N(0, 1) (the training prior)": generator(torch.randn(20000, 1)),
               "z ~ N(0, 3^2) (another prior)": generator(3 * torch.randn(20000, 1))}
grid = torch.linspace(-1, 5, 200)
fig, ax = plt.subplots(figsize=(5, 2.6))
for name, x in samples.items():
    ax.hist(x.squeeze().numpy(), bins=80, range=(-1, 5), density=True, alpha=0.5, label=name)
ax.plot(grid, torch.exp(-0.5 * ((grid - DATA_MEAN) / DATA_STD) ** 2) / (DATA_STD * math.sqrt(2 * math.pi)),
        "k", label="data density")
ax.legend(fontsize=7)
plt.show()
moments = {name: (x.mean().item(), x.std().item()) for name, x in samples.items()}
for name, (mean, std) in moments.items():
    print(f"{name:34s} mean {mean:6.3f}, std {std:6.3f}   (data: {DATA_MEAN}, {DATA_STD})")
(mean_ok, std_ok), (_, std_other) = moments.values()
assert abs(mean_ok - DATA_MEAN) < 0.1 and abs(std_ok - DATA_STD) < 0.1, \
    "C: G(z) with z from N(0, 1) reproduces the data distribution"
assert std_other > 2 * DATA_STD, "C: a different prior than the training one gives wrong samples"

# %%
# D. Before the generator's first step: train D for k steps and look at G's gradient on its
# offset b (G starts at N(-2, 1), the data sit at +2, so b must grow: dLoss/db < 0).
# Six D initialisations per k (24 for k = 0, where each costs nothing: a coin toss needs more).
def generator_gradient(d: nn.Module, generator: nn.Linear, saturating: bool) -> float:
    loss = generator_loss(d, generator(torch.randn(4096, 1)), saturating=saturating)
    return torch.autograd.grad(loss, generator.bias)[0].item()


seed_everything(7)
warmup = {}
for k, inits in ((0, 24), (50, 6), (300, 6)):
    rows = []
    for _ in range(inits):
        d = train_discriminator(make_discriminator(), start, k)
        with torch.no_grad():
            d_on_fakes = torch.sigmoid(d(start(torch.randn(4096, 1)))).mean().item()
        rows.append((generator_gradient(d, start, False), generator_gradient(d, start, True), d_on_fakes))
    rows = torch.tensor(rows)
    warmup[k] = {"right direction (%)": 100 * (rows[:, 0] < 0).float().mean().item(),
                 "mean D(G(z))": rows[:, 2].mean().item(),
                 "|grad| non-saturating": rows[:, 0].abs().mean().item(),
                 "|grad| minimax": rows[:, 1].abs().mean().item()}
print(f"{'D steps first':>14s}" + "".join(f"{key:>22s}" for key in warmup[0]))
for k, row in warmup.items():
    print(f"{k:14d}" + "".join(f"{value:22.4f}" for value in row.values()))
ratio = {k: row["|grad| minimax"] / row["|grad| non-saturating"] for k, row in warmup.items()}
assert 25 <= warmup[0]["right direction (%)"] <= 75, "D: an untrained D gives an arbitrary direction"
assert warmup[50]["right direction (%)"] == 100, "D: a few D steps make G's gradient point to the data"
assert warmup[300]["mean D(G(z))"] < 0.05 and ratio[300] < 0.25 * ratio[50], \
    "D: too many D steps saturate D; the minimax loss's gradient then fades (relative to the non-saturating one)"

# %%
# E. G's gradient when D sits at 50%: how large it is, and where following it leads.
def mean_generator_gradient(d: nn.Module, generator: nn.Linear) -> float:
    """Norm of G's (non-saturating) loss gradient, averaged over 30 batches."""
    grads = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        generator_loss(d, generator(torch.randn(BATCH, 1))), list(generator.parameters()))])
        for _ in range(30)])
    return grads.mean(0).norm().item()


seed_everything(8)
constant_half = nn.Linear(1, 1)
nn.init.zeros_(constant_half.weight)
nn.init.zeros_(constant_half.bias)                      # D(x) = sigmoid(0) = 1/2 everywhere
exact_zero = torch.autograd.grad(generator_loss(constant_half, generator(torch.randn(BATCH, 1))),
                                 list(generator.parameters()))
gradient_norm = {"far from equilibrium (D trained 50 steps)": mean_generator_gradient(warm_d, start),
                 "at equilibrium (best-response D, ~50%)": mean_generator_gradient(best_response, generator)}
print(f"D = 1/2 everywhere: gradient on G = {[g.item() for g in exact_zero]}")
for name, value in gradient_norm.items():
    print(f"{name:45s} |mean gradient on G| = {value:.4f}")
print(f"G trained 500 more steps against the 50% D: W2 to data {distances['trained D']:.3f} -> "
      f"{distances['trained D, G trained alone']:.3f}")
assert all(torch.all(g == 0) for g in exact_zero), "E: at D = 1/2 everywhere G gets no gradient at all"
assert (gradient_norm["at equilibrium (best-response D, ~50%)"]
        < 0.2 * gradient_norm["far from equilibrium (D trained 50 steps)"]), \
    "E: at 50% accuracy the gradient reaching G is small"
assert distances["trained D, G trained alone"] > 10 * distances["trained D"], \
    "E: training G more against the 50% discriminator makes it worse, not better"
