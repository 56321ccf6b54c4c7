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
# ## CNNs

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlsummary import digits, plot_style, seed_everything
from dlsummary.receptive_field import empirical_receptive_field, receptive_field

plot_style()
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
