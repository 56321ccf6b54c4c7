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
from matplotlib.patches import Rectangle

from dlsummary import plot_style, seed_everything
from dlsummary.evidence import check, control
from dlsummary.receptive_field import empirical_receptive_field, receptive_field

plot_style()
seed_everything(0)


def field_formula(layers: list[tuple[int, int, int]]) -> tuple[list[int], list[int]]:
    """r_l and j_l per layer from (kernel, stride, dilation): r_l = r_{l-1} + d (k-1) j_{l-1},
    j_l = j_{l-1} s."""
    r, j, sizes, jumps = 1, 1, [], []
    for k, s, d in layers:
        r, j = r + d * (k - 1) * j, j * s
        sizes.append(r)
        jumps.append(j)
    return sizes, jumps


def influencing_lines(model: nn.Module, x: torch.Tensor, out_index: tuple[int, int],
                      dim: int, candidates: range) -> list[int]:
    """The input rows (dim=0) or columns (dim=1) among ``candidates`` whose change moves
    output pixel ``out_index`` of the real ``model``: each line in turn is replaced by
    fresh noise, all channels and the whole width."""
    with torch.no_grad():
        y0 = model(x)[0, :, out_index[0], out_index[1]]
        hits = []
        for line in candidates:
            x2 = x.clone()
            view = x2[0, :, line, :] if dim == 0 else x2[0, :, :, line]
            view += 5 * torch.randn_like(view)
            if (model(x2)[0, :, out_index[0], out_index[1]] - y0).abs().max() > 0:
                hits.append(line)
    return hits

# %% [markdown]
# ### cnn.1 · what a receptive field is
# Explain the meaning of the term "receptive field" in the context of CNNs.

# %% [markdown]
# **Answer:** The receptive field of a unit (one element of a feature map) is the region of
# the input image whose pixels can influence its value; pixels outside it cannot change it.
# A unit sees a $k\times k$ window of units below, each with its own field, so the field
# grows with depth. With kernel size $k_l$, stride $s_l$ and dilation $d_l$,
# $$r_l = r_{l-1} + d_l\,(k_l-1)\,j_{l-1}, \qquad j_l = j_{l-1}\,s_l, \qquad r_0 = j_0 = 1,$$
# $j$ being the input distance between neighbouring units. Pooling counts as a layer,
# element-wise layers change nothing, a global pooling or fully connected layer makes it the
# whole image. A unit can only detect patterns within its field.

# %% [markdown]
# **Why, in detail.** So $r_L = 1 + \sum_{l} d_l (k_l-1)\prod_{i<l} s_i$. The deepest
# layers' field must cover the objects to be recognised (or, for dense prediction, enough
# context around each pixel). Two refinements: near the border part of the field lies in the
# zero padding; and inside the field the influence is not uniform: central pixels reach the
# unit through many more paths than peripheral ones, so the *effective* receptive field
# (where the gradient is large) is a roughly Gaussian blob, smaller than the theoretical one.
#
# The experiment takes a randomly initialised stack of three $3\times3$ convolutions, the
# second with stride 2, for which the formula gives $3 \to 5 \to 9$. On this real network it
# replaces, one at a time, each input row and column near the centre output's field by noise
# and records which ones move the output (exactly the 9 of the formula's box); it replaces
# *all* pixels outside the box at once (the output does not move; the control perturbs only
# the box's one-pixel border, and it does); and it checks that the network's gradient is zero
# outside the box. The measured footprint (`empirical_receptive_field`, on a copy with
# positive weights, so that no path cancels) fills the box. The right panel is the effective
# receptive field: the gradient of the real network, concentrated in the middle; the
# control is one $9\times9$ layer, whose every pixel has exactly one path.

# %%
stack = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
    nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
    nn.Conv2d(8, 1, 3, padding=1),
).double()
shape, centre = (1, 1, 32, 32), (8, 8)
sizes, jumps = field_formula([(3, 1, 1), (3, 2, 1), (3, 1, 1)])
rf = receptive_field(stack, shape)
box = rf.input_coordinates(centre)
print(f"formula: r = {sizes}, j = {jumps}; input box of output {centre}: rows "
      f"{box[0].start}..{box[0].stop - 1}, columns {box[1].start}..{box[1].stop - 1}")

x = torch.randn(shape, dtype=torch.float64)
rows_hit = influencing_lines(stack, x, centre, 0, range(box[0].start - 3, box[0].stop + 3))
cols_hit = influencing_lines(stack, x, centre, 1, range(box[1].start - 3, box[1].stop + 3))
print("input rows that move the output:", rows_hit, "\ninput columns:", cols_hit)

inside = torch.zeros(32, 32, dtype=torch.bool)
inside[box[0].start:box[0].stop, box[1].start:box[1].stop] = True
border = inside.clone()
border[box[0].start + 1:box[0].stop - 1, box[1].start + 1:box[1].stop - 1] = False
with torch.no_grad():
    y0 = stack(x)[0, 0, centre[0], centre[1]]
    moved = {}
    for name, region in {"outside": ~inside, "border": border}.items():
        x2 = x.clone()
        x2[0, 0][region] += 5 * torch.randn(int(region.sum()), dtype=torch.float64)
        moved[name] = (stack(x2)[0, 0, centre[0], centre[1]] - y0).abs().item()
print(f"output change when every pixel outside the box is replaced: {moved['outside']:.3g}; "
      f"when only the box's border is: {moved['border']:.3g}")

x_req = x.clone().requires_grad_(True)
stack(x_req)[0, 0, centre[0], centre[1]].backward()
saliency = x_req.grad[0, 0].abs()
footprint = empirical_receptive_field(stack, shape, centre)
core = inside.clone()
core[box[0].start:box[0].start + 2] = core[box[0].stop - 2:box[0].stop] = False
core[:, box[1].start:box[1].start + 2] = core[:, box[1].stop - 2:box[1].stop] = False
share = (saliency[core].sum() / saliency.sum()).item()

pooled = nn.Sequential(stack, nn.AdaptiveAvgPool2d(1))  # global pooling on top
pooled_fp = empirical_receptive_field(pooled, shape, (0, 0))
print(f"with global average pooling on top the footprint is {pooled_fp.size}, "
      f"analytic global: {receptive_field(pooled, shape).is_global}")

one_layer = nn.Conv2d(1, 1, 9, padding=4).double()  # the same 9x9 field, one path per pixel
x_one = x.clone().requires_grad_(True)
one_layer(x_one)[0, 0, 16, 16].backward()
one_saliency = x_one.grad[0, 0].abs()
one_core = torch.zeros(32, 32, dtype=torch.bool)
one_core[14:19, 14:19] = True
one_share = (one_saliency[one_core].sum() / one_saliency.sum()).item()
print(f"share of |gradient| in the central 5x5 of the 9x9 box: three layers {share:.2f}, "
      f"one 9x9 layer {one_share:.2f} (area share 25/81 = {25 / 81:.2f})")

fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.3))
window = (box[0].start - 4, box[0].stop + 4)
axes[0].imshow(footprint.mask, cmap="Greys", vmin=0, vmax=2, interpolation="nearest")
axes[1].imshow(saliency, cmap="magma", interpolation="nearest")
for ax, title in zip(axes, [f"measured footprint, formula box {sizes[-1]}x{sizes[-1]}",
                            "|gradient| of the real network"]):
    ax.add_patch(Rectangle((box[1].start - 0.5, box[0].start - 0.5), sizes[-1], sizes[-1],
                           fill=False, edgecolor="tab:red", linestyle="--", linewidth=1.2))
    ax.set(xlim=(window[0] - 0.5, window[1] - 0.5), ylim=(window[1] - 0.5, window[0] - 0.5),
           xlabel="input column", ylabel="input row")
    ax.set_title(title, fontsize=9)
    ax.grid(False)
plt.tight_layout()
plt.show()

expected_lines = list(range(box[0].start, box[0].stop))
check("cnn.1", "on the real network exactly the 9 input rows of the formula's box move the "
      "output", rows_hit, "==", expected_lines)
check("cnn.1", "and exactly the 9 columns", cols_hit, "==", list(range(box[1].start, box[1].stop)))
check("cnn.1", "replacing every pixel outside the field leaves the unit unchanged",
      moved["outside"], "==", 0.0)
control("cnn.1", "replacing only the field's one-pixel border does change it",
        moved["border"], ">", 1e-6)
check("cnn.1", "the real network's gradient is zero outside the box",
      saliency[~inside].sum(), "==", 0.0)
check("cnn.1", "the measured footprint fills the formula's box exactly",
      [list(b) for b in footprint.bbox] + [int(footprint.mask.sum())], "==",
      [[box[0].start, box[0].stop], [box[1].start, box[1].stop], sizes[-1] ** 2])
check("cnn.1", "global pooling makes the field the whole 32x32 image (measured footprint)",
      list(pooled_fp.size), "==", list(shape[2:]))
check("cnn.1", "effective field: the central 5x5 holds well over its area share (0.31) "
      "of the gradient", share, ">", 0.4)
control("cnn.1", "one 9x9 layer (one path per pixel) shows no such concentration",
        one_share, "<", 0.36)

# %% [markdown]
# ### cnn.2 · three ways to grow the receptive field
# Explain and elaborate about three different ways to control the rate at which the
# receptive field grows from layer to layer. Compare them to each other in terms of how they
# combine input features.

# %% [markdown]
# **Answer:** By $r_l = r_{l-1} + d_l(k_l-1)\,j_{l-1}$ and $j_l = j_{l-1}s_l$:
#
# 1. **Kernel size (and depth).** Each layer adds $(k-1)j$: linear growth. A dense, learned
#    combination of all window pixels at full resolution, at $k^2$ weights per channel pair.
# 2. **Stride or pooling.** Stride $s$ multiplies the jump of all later layers: exponential
#    growth without extra weights, but resolution drops $s$-fold. Max pooling keeps the
#    strongest response, average pooling a fixed mean (neither learned); a strided
#    convolution is learned but evaluated only every $s$ pixels.
# 3. **Dilation.** $k$ taps spaced $d$ apart span $d(k-1)+1$ pixels: with $d_l = 2^{l}$
#    exponential growth at full resolution, no extra weights, but it combines sparse,
#    far-apart samples; constant dilation sees only a lattice ("gridding").

# %% [markdown]
# **Why, in detail.** Stacking small kernels is cheaper than one big one for the same field
# (three $3\times3$ layers see $7\times7$ with $27C^2$ weights, one $7\times7$ layer needs
# $49C^2$) and puts non-linearities in between. Both are measured on real layers ($C = 16$):
# the footprints of the two stacks, their counted parameters, and how often one output bends
# along a straight line through input space (once at most for a $7\times7$ convolution and
# its ReLU; several times for three $3\times3$ layers with ReLUs; never for the same three
# without them, which compose to a single linear $7\times7$ map). In short: larger kernels and depth combine
# all nearby features with learned weights (slow growth, many parameters); strides and
# pooling summarise neighbourhoods into fewer positions
# (fast growth, lost resolution, a fixed or subsampled combination); dilation combines
# far-apart features at full resolution with few weights (fast growth, sparse sampling).
# With growing dilations $1, 2, 4, \dots$ the lower layers have already mixed the pixels that
# a higher layer's taps skip, so the footprint is dense; with a constant dilation
# neighbouring outputs depend on disjoint lattices of inputs.
#
# The experiment builds four-layer stacks of $3\times3$ convolutions with 16 channels:
# plain, stride 2 in every layer, dilation $2^{l-1}$, and a constant dilation 2, on a
# $64\times64$ input. For each it *measures* the footprint of the centre output after every
# layer (the input pixels with non-zero gradient), the parameters and the output resolution.
# The controls: a plain stack with $9\times9$ kernels that reaches about the same field as
# the stride and dilation stacks, and what max and average pooling pass back to their window.

# %%
def stack_of(kind: str, depth: int = 4, width: int = 16, kernel: int = 3) -> nn.Sequential:
    """Four conv layers whose receptive field grows by one mechanism."""
    layers: list[nn.Module] = []
    for l in range(depth):
        c_in = 1 if l == 0 else width
        if kind == "plain":
            conv = nn.Conv2d(c_in, width, kernel, padding=kernel // 2)
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
    per_layer = [empirical_receptive_field(model[:2 * l], shape) for l in range(1, 5)]
    fp = per_layer[-1]
    rows_hit = np.nonzero(fp.mask.any(axis=1))[0]
    table[kind] = {
        "rf per layer": [f.size[0] for f in per_layer],
        "params": sum(p.numel() for p in model.parameters()),
        "output": tuple(model(torch.zeros(shape)).shape[2:]),
        "density": float(fp.mask.sum() / np.prod(fp.size)),
        "row spacing": sorted(set(np.diff(rows_hit).tolist())),
        "footprint": fp,
    }
big_kernels = stack_of("plain", kernel=9)
big = {"rf": empirical_receptive_field(big_kernels, shape).size[0],
       "params": sum(p.numel() for p in big_kernels.parameters())}

print(f"{'mechanism':20s} {'measured rf per layer':22s} {'params':>7s} {'output':>7s} "
      f"{'density':>8s}")
for kind, row in table.items():
    print(f"{kind:20s} {str(row['rf per layer']):22s} {row['params']:7d} "
          f"{'x'.join(map(str, row['output'])):>7s} {row['density']:8.2f}")
print(f"{'plain, 9x9 kernels':20s} {'[.., .., .., ' + str(big['rf']) + ']':22s} "
      f"{big['params']:7d}")

three_small = nn.Sequential(nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(),
                            nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(),
                            nn.Conv2d(16, 16, 3, bias=False), nn.ReLU())
one_large = nn.Sequential(nn.Conv2d(16, 16, 7, bias=False), nn.ReLU())
no_relu = nn.Sequential(*[m for m in three_small if isinstance(m, nn.Conv2d)])  # same weights
small_rf = empirical_receptive_field(three_small, (1, 16, 32, 32)).size[0]
large_rf = empirical_receptive_field(one_large, (1, 16, 32, 32)).size[0]
weights_small = sum(p.numel() for p in three_small.parameters())
weights_large = sum(p.numel() for p in one_large.parameters())


def kinks_along_a_line(model: nn.Module, points: int = 1001) -> int:
    """Corners of the centre output (channel 0) along a straight line through a 7x7x16
    input: the runs of non-zero second differences of a piecewise-linear function."""
    gen = torch.Generator().manual_seed(3)
    start, direction = (torch.randn(16, 7, 7, generator=gen, dtype=torch.float64)
                        for _ in range(2))
    t = torch.linspace(-3, 3, points, dtype=torch.float64).view(-1, 1, 1, 1)
    with torch.no_grad():
        out = model.double()(start + t * direction)[:, 0].flatten()
    bent = ((out[2:] - 2 * out[1:-1] + out[:-2]).abs() > 1e-9 * out.abs().max()).int()
    return int(bent[0]) + int((bent[1:] - bent[:-1] == 1).sum())


kinks = {name: kinks_along_a_line(m)
         for name, m in [("three 3x3 + ReLU", three_small), ("one 7x7 + ReLU", one_large),
                         ("three 3x3, no ReLU", no_relu)]}
print(f"three 3x3 layers: field {small_rf}, {weights_small} weights = "
      f"{weights_small / 16**2:g} C^2; one 7x7 layer: field {large_rf}, "
      f"{weights_large} weights = {weights_large / 16**2:g} C^2")
print("corners of one output along a line through input space:", kinks)

window = torch.arange(16.0).view(1, 1, 4, 4).requires_grad_(True)
routed = {}
for name, pool in {"max": F.max_pool2d, "average": F.avg_pool2d}.items():
    (grad,) = torch.autograd.grad(pool(window, 2).sum(), window)
    routed[name] = sorted({int(c) for c in (grad[0, 0] != 0).view(2, 2, 2, 2)
                           .permute(0, 2, 1, 3).reshape(4, 4).sum(1)})
print("input pixels per 2x2 window that receive gradient:", routed)

fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.0))
styles = {"plain": "o-", "stride 2": "s--", "dilation 2^l": "o-", "dilation 2 (const)": "^-"}
labels = {"dilation 2^l": "dilation $2^{l-1}$", "stride 2": "stride 2 (same as dilation $2^{l-1}$)"}
for kind in kinds:
    axes[0].plot(range(1, 5), table[kind]["rf per layer"], styles[kind],
                 label=labels.get(kind, kind), markersize=5, zorder=3 if kind == "stride 2" else 2)
axes[0].set(xlabel="layer", ylabel="receptive field (pixels)", title="measured growth")
axes[0].legend(fontsize=7)
for ax, kind, title in [(axes[1], "dilation 2^l", "dilation 1, 2, 4, 8: dense"),
                        (axes[2], "dilation 2 (const)", "dilation 2, 2, 2, 2: gridding")]:
    fp = table[kind]["footprint"]
    (r0, r1), (c0, c1) = fp.bbox
    ax.imshow(fp.mask, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set(xlim=(c0 - 2.5, c1 + 1.5), ylim=(r1 + 1.5, r0 - 2.5), xlabel="input column",
           ylabel="input row")
    ax.set_title(f"{title} ({fp.size[0]}x{fp.size[1]})", fontsize=9)
    ax.grid(False)
plt.tight_layout()
plt.show()

plain, strided, dilated, grid = (table[k] for k in kinds)


def increments(sizes: list[int]) -> list[int]:
    return [b - a for a, b in zip([1] + sizes, sizes)]


check("cnn.2", "kernel size/depth: linear growth, the same +2 per 3x3 layer",
      increments(plain["rf per layer"]), "==", [2, 2, 2, 2])
check("cnn.2", "stride 2: each layer's growth doubles (ratios of increments)",
      sorted({b / a for a, b in zip(increments(strided["rf per layer"]),
                                    increments(strided["rf per layer"])[1:])}), "==", [2.0])
check("cnn.2", "dilation 2^l: the same exponential growth",
      sorted({b / a for a, b in zip(increments(dilated["rf per layer"]),
                                    increments(dilated["rf per layer"])[1:])}), "==", [2.0])
check("cnn.2", "stride and dilation add no weights: parameter counts of the three stacks",
      len({plain["params"], strided["params"], dilated["params"]}), "==", 1)
control("cnn.2", "reaching about the same field with bigger kernels (9x9) costs over 8x the "
        "weights", big["params"] / plain["params"], ">", 8)
check("cnn.2", "that 9x9 stack's field is comparable (33 vs 31)", big["rf"], "between", (31, 35))
check("cnn.2", "three 3x3 layers see 7x7, as one 7x7 layer does", [small_rf, large_rf], "==",
      [7, 7])
check("cnn.2", "with fewer weights: the parameters of the two stacks, counted, per C^2 "
      "(27 against 49)", [weights_small / 16**2, weights_large / 16**2], "==", [27, 49])
check("cnn.2", "and more non-linearities: one output of the 3x3 stack bends more than once "
      "along a line through input space (corners)", kinks["three 3x3 + ReLU"], ">", 3)
control("cnn.2", "one 7x7 layer with its ReLU bends at most once along the same line",
        kinks["one 7x7 + ReLU"], "<=", 1)
control("cnn.2", "and without the ReLUs in between the 3x3 stack is linear: no corners",
        kinks["three 3x3, no ReLU"], "==", 0)
check("cnn.2", "only striding loses resolution: output sizes (stride, plain, dilated)",
      [strided["output"][0], plain["output"][0], dilated["output"][0]], "==", [4, 64, 64])
check("cnn.2", "dense combination: every pixel in the box matters (kernel, stride, dilation "
      "2^l)", min(plain["density"], strided["density"], dilated["density"]), "==", 1.0)
control("cnn.2", "constant dilation combines only a lattice: rows every 2 pixels",
        grid["row spacing"], "==", [2])
control("cnn.2", "and leaves most of its box unused (density)", grid["density"], "<", 0.5)
check("cnn.2", "max pooling passes gradient to one pixel of each 2x2 window (a selection)",
      routed["max"], "==", [1])
control("cnn.2", "average pooling to all four (a fixed mean)", routed["average"], "==", [4])

# %% [markdown]
# ### cnn.3 · receptive field of a given CNN
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
# **Answer:** $112\times112$ input pixels. With $r_l = r_{l-1} + d_l(k_l-1)\,j_{l-1}$,
# $j_l = j_{l-1}s_l$, ReLUs changing nothing, each `MaxPool2d(2)` a layer with $k = s = 2$:
#
# | layer | $r_l$ | $j_l$ |
# |---|---|---|
# | Conv $3\times3$ | $1 + 2\cdot1 = 3$ | 1 |
# | MaxPool 2 | $3 + 1\cdot1 = 4$ | 2 |
# | Conv $5\times5$, stride 2 | $4 + 4\cdot2 = 12$ | 4 |
# | MaxPool 2 | $12 + 1\cdot4 = 16$ | 8 |
# | Conv $7\times7$, dilation 2 | $16 + 2\cdot6\cdot8 = 112$ | 8 |
#
# The dilated last layer dominates: it spans $13$ positions, 8 input pixels apart.

# %% [markdown]
# **Why, in detail.** Adding kernel sizes ($3+5+7$), or ignoring the pools or the dilation,
# gives wrong answers. The output shape follows from
# $n_{out} = \lfloor (n_{in} + 2p - d(k-1) - 1)/s \rfloor + 1$: $1024 \to 1024$ (padding 1
# keeps the size) $\to 512$ (pool) $\to \lfloor(512+4-5)/2\rfloor+1 = 256 \to 128$ (pool)
# $\to 128 + 6 - 13 + 1 = 122$, so the output is $1\times32\times122\times122$, with
# neighbouring output pixels 8 input pixels apart: the last layer's padding 3 is less than
# the 6 a dilated $7\times7$ kernel needs to keep the size, so it trims 3 positions on each
# side. The
# receptive field does not depend on the input size.
#
# The effective padding is $P = \sum_l p_l\,j_{l-1} = 1 + 2\cdot2 + 3\cdot8 = 29$, so output
# pixel $i$'s box runs from input row $8i - 29$ to $8i + 82$. Interior outputs see a full $112\times112$
# patch of the image. Near the border part of the box lies in the zero padding, and the image
# part of the field is *not* simply the clipped box: output $(0, 0)$ sees input rows and
# columns $3$ to $82$, not $0$ to $82$. Its dilated kernel's first two taps fall on rows
# $-3$ and $-1$ of the padded $128\times128$ map, the next on row $1$; row $0$ lies between
# taps, and row $1$ reaches back, through the pool, the strided convolution, the pool and
# the first convolution, to input rows $3$ and up.
#
# The experiment computes the table with `receptive_field`, measures the output shape, and
# then works on the real network: replacing every input pixel outside an interior output's
# box by noise leaves that output unchanged (control: the box's border moves it), and, for
# output $(0, 0)$, rows $0$ to $2$ of the image do not move it while row $3$ does. The
# measured footprint (`empirical_receptive_field`: max pools pass gradient to their window)
# gives the same boxes; the plot draws it with the analytic box over it.

# %%
shape = (1, 3, 1024, 1024)
rf = receptive_field(cnn, shape)
print(rf)
out_shape = tuple(cnn(torch.rand(shape)).shape)
table_sizes, table_jumps = field_formula([(3, 1, 1), (2, 2, 1), (5, 2, 1), (2, 2, 1), (7, 1, 2)])

small = (1, 3, 512, 512)  # the field does not depend on the input size; faster to measure
interior, corner = (30, 40), (0, 0)
box = rf.input_coordinates(interior)
fp = empirical_receptive_field(cnn, small, interior)
fp_corner = empirical_receptive_field(cnn, small, corner)
print(fp, "\n", fp_corner, sep="")

x = torch.rand(small)
inside = torch.zeros(small[2:], dtype=torch.bool)
inside[box[0].start:box[0].stop, box[1].start:box[1].stop] = True
border = inside.clone()
border[box[0].start + 1:box[0].stop - 1, box[1].start + 1:box[1].stop - 1] = False
with torch.no_grad():
    y0 = cnn(x)[0, :, interior[0], interior[1]]
    moved = {}
    for name, region in {"outside": ~inside, "border": border}.items():
        x2 = x.clone()
        x2[0][:, region] = torch.rand(3, int(region.sum()))
        moved[name] = (cnn(x2)[0, :, interior[0], interior[1]] - y0).abs().max().item()
print(f"output {interior}: change when every pixel outside its box is replaced "
      f"{moved['outside']:.3g}, when only the box's border is {moved['border']:.3g}")
corner_rows = influencing_lines(cnn, x, corner, 0, range(0, 8))
print("of the image rows 0..7, those that move output (0, 0):", corner_rows)

fig, axes = plt.subplots(1, 2, figsize=(8.6, 4.0))
views = [(axes[0], fp, interior, "interior output (30, 40)"),
         (axes[1], fp_corner, corner, "corner output (0, 0)")]
for ax, footprint, index, title in views:
    spans = rf.input_coordinates(index)
    lo = min(spans[0].start, spans[1].start) - 12
    hi = max(spans[0].stop, spans[1].stop) + 12
    ax.imshow(footprint.mask, cmap="Blues", vmin=0, vmax=1.6, interpolation="nearest",
              extent=(-0.5, small[3] - 0.5, small[2] - 0.5, -0.5))
    ax.add_patch(Rectangle((spans[1].start - 0.5, spans[0].start - 0.5), rf.size[1],
                           rf.size[0], fill=False, edgecolor="tab:red", linestyle="--",
                           linewidth=1.3, label="analytic box (112x112)"))
    if index == interior:
        right = rf.input_coordinates((interior[0], interior[1] + 1))
        ax.add_patch(Rectangle((right[1].start - 0.5, right[0].start - 0.5), rf.size[1],
                               rf.size[0], fill=False, edgecolor="tab:orange",
                               linestyle=":", linewidth=1.3,
                               label="box of output (30, 41): 8 px right"))
    else:
        ax.axhspan(lo, -0.5, color="0.85", zorder=0)
        ax.axvspan(lo, -0.5, color="0.85", zorder=0)
        ax.text(lo + 3, lo + 8, "zero padding", fontsize=8, color="0.3")
    (r0, r1), (c0, c1) = footprint.bbox
    ax.set(xlim=(lo, hi), ylim=(hi, lo), xlabel="input column", ylabel="input row")
    ax.set_title(f"{title}: footprint rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(False)
plt.tight_layout()
plt.show()

check("cnn.3", "output shape 1x32x122x122 (measured)", list(out_shape), "==", [1, 32, 122, 122])
check("cnn.3", "the table's r_l column, as traced from the network's layers",
      [r.size[0] for r in rf.layers], "==", table_sizes)
check("cnn.3", "the table's j_l column", [r.jump[0] for r in rf.layers], "==", table_jumps)
check("cnn.3", "the receptive field is 112x112 with stride 8", [*rf.size, *rf.stride], "==",
      [table_sizes[-1]] * 2 + [table_jumps[-1]] * 2)
check("cnn.3", "the measured footprint of an interior output is 112x112 and dense",
      [*fp.size, int(fp.mask.sum())], "==", [112, 112, 112 * 112])
check("cnn.3", "output i's box is input rows 8i-29 .. 8i+82 (measured bbox)",
      [list(b) for b in fp.bbox], "==",
      [[8 * interior[0] - 29, 8 * interior[0] + 83], [8 * interior[1] - 29, 8 * interior[1] + 83]])
check("cnn.3", "real network: replacing every pixel outside the box leaves the output unchanged",
      moved["outside"], "==", 0.0)
control("cnn.3", "replacing only the box's border does change it", moved["border"], ">", 1e-6)
check("cnn.3", "output (0, 0) sees image rows and columns 3 to 82 (measured footprint)",
      [list(b) for b in fp_corner.bbox], "==", [[3, 83], [3, 83]])
check("cnn.3", "real network: image rows 0 to 2 do not move output (0, 0), row 3 does",
      corner_rows[:1], "==", [3])
control("cnn.3", "the clipped analytic box would start at row 0, not 3",
        max(rf.input_coordinates(corner, clip=True)[0].start, 0), "<", fp_corner.bbox[0][0])

# %% [markdown]
# ### cnn.4 · why residual filters look different
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
# **Answer:** The filters represent different functions. To compute a mapping $H_l$, the
# plain layer's convolution must be $f_l = H_l$, the residual layer's only $f_l = H_l - I$.
# The identity is itself a convolution, with the delta filter $\boldsymbol{\delta}$ (1 at
# the centre tap of the matching channel, 0 elsewhere), so for the same mapping
# $$\boldsymbol{\theta}_l^{\text{res}} = \boldsymbol{\theta}_l^{\text{plain}} - \boldsymbol{\delta}.$$
# Deep-network layers stay close to the identity ($H_l \approx I$), so plain filters are
# dominated by a delta (a positive peak), while residual filters are small corrections that
# look completely different (e.g. a negative centre in a positive ring).

# %% [markdown]
# **Why, in detail.** Subtracting a delta turns a blur (all positive, peak in the centre)
# into a Laplacian-like filter (negative centre, positive ring). This is also why ResNets
# train more easily: "do nothing" is the zero filter, near which the weights start, instead
# of a precise delta that the plain layer must first build. In a deep network with
# non-linearities the different starting function and gradients can also lead training to a
# different split of the work among layers (not measured here); but even where both
# networks learn the same functions, the filters must differ by the identity.
#
# The experiment trains one convolutional layer in both forms, from the same initial filter
# and by the same 200 steps of gradient descent, to the same target mapping, a mild blur
# $H = I + 0.05\,\Delta$ ($\Delta$ the discrete Laplacian), on random images. The control
# trains the plain form twice from different initial filters: those two agree, so the
# difference between plain and residual comes from the parametrisation, not from training.

# %%
images = torch.randn(64, 1, 16, 16)
laplacian = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
delta = torch.zeros(3, 3)
delta[1, 1] = 1.0
target_kernel = delta + 0.05 * laplacian  # H = I + 0.05 * Laplacian: a mild blur
targets = F.conv2d(images, target_kernel.view(1, 1, 3, 3), padding=1)


def train_filter(form: str, init: torch.Tensor, steps: int = 200, lr: float = 0.2):
    """Gradient descent on the filter of one 3x3 convolution, plain or residual."""
    weight = init.clone().requires_grad_(True)
    losses = []
    for _ in range(steps):
        y = F.conv2d(images, weight, padding=1)
        loss = F.mse_loss(y + images if form == "residual" else y, targets)
        losses.append(loss.item())
        (grad,) = torch.autograd.grad(loss, weight)
        with torch.no_grad():
            weight -= lr * grad
    return weight.detach()[0, 0], losses


init = nn.Conv2d(1, 1, 3, padding=1, bias=False).weight.detach().clone()
other_init = nn.Conv2d(1, 1, 3, padding=1, bias=False).weight.detach().clone()
plain_w, plain_losses = train_filter("plain", init)
res_w, res_losses = train_filter("residual", init)
plain_again, _ = train_filter("plain", other_init)
for name, w, losses in [("plain", plain_w, plain_losses), ("residual", res_w, res_losses)]:
    print(f"{name:8s} mse at the start {losses[0]:.1e}, at the end {losses[-1]:.1e}\n"
          f"{w.numpy().round(3)}")
cosine = F.cosine_similarity(plain_w.flatten(), res_w.flatten(), dim=0).item()
cosine_again = F.cosine_similarity(plain_w.flatten(), plain_again.flatten(), dim=0).item()
print(f"cosine similarity: plain vs residual {cosine:.2f}; plain vs plain from another "
      f"start {cosine_again:.3f}")

fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.6))
for ax, (title, w) in zip(axes, [("plain filter = H", plain_w),
                                 ("residual filter = H - I", res_w),
                                 ("plain - residual", plain_w - res_w)]):
    image = ax.imshow(w, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
fig.colorbar(image, ax=axes, shrink=0.8)
plt.show()

check("cnn.4", "the plain filter represents H itself", (plain_w - target_kernel).abs().max(),
      "<", 0.01)
check("cnn.4", "the residual filter represents H - I",
      (res_w - (target_kernel - delta)).abs().max(), "<", 0.01)
check("cnn.4", "they differ by the identity (delta) filter: theta_res = theta_plain - delta",
      (plain_w - res_w - delta).abs().max(), "<", 1e-3)
check("cnn.4", "the two filters look completely different (here anti-correlated)", cosine,
      "<", -0.5)
control("cnn.4", "two plain runs from different starts learn the same filter", cosine_again,
        ">", 0.99)
check("cnn.4", "the residual filter is the small correction: norm ratio residual / plain",
      (res_w.norm() / plain_w.norm()), "<", 0.5)
check("cnn.4", "the residual form starts near the target: initial mse ratio residual / plain",
      res_losses[0] / plain_losses[0], "<", 0.2)
