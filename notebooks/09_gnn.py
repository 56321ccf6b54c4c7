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
# ## Graph Neural Networks

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn

from dlsummary import plot_style, seed_everything
from dlsummary.evidence import check, control
from dlsummary.graph import (
    PolynomialGraphConv,
    grid_graph,
    hop_distances,
    laplacian,
    node_influence,
)

plot_style()
seed_everything(0)
torch.set_default_dtype(torch.float64)

ROWS = COLS = 7                          # a 7x7 grid graph: its receptive fields can be drawn
A = grid_graph(ROWS, COLS)
DELTA = laplacian(A, normalized=True)    # Delta = I - D^{-1/2} A D^{-1/2}
N, M, M_OUT, Q = A.shape[0], 3, 4, 2     # nodes, input and output features, order q

# %% [markdown]
# ### gnn.1 · what a graph convolution computes
# You have implemented a graph convolutional layer based on the following formula, for a graph
# with $N$ nodes:
# $$
# \mat{Y}=\varphi\left( \sum_{k=1}^{q} \mat{\Delta}^k \mat{X} \mat{\alpha}_k + \vec{b} \right).
# $$
# - A. Assuming $\mat{X}$ is the input feature matrix of shape $(N, M)$: what does $\mat{Y}$
#   contain in it's rows?
# - B. Unfortunately, due to a bug in your calculation of the Laplacian matrix, you accidentally
#   zeroed the row and column $i=j=5$ (assume more than 5 nodes in the graph). What would be the
#   effect of this bug on the output of your layer, $\mat{Y}$?

# %% [markdown]
# **Answer:**
#
# **A.** Row $i$ of $\mat{Y}$ (shape $(N, M')$) is the new feature vector of node $i$:
# $$\vec{y}_i = \varphi\Big(\sum_{k=1}^{q}\sum_{j} (\mat{\Delta}^k)_{ij}\, \mat{\alpha}_k^\top \vec{x}_j + \vec{b}\Big),$$
# a combination of the features of node $i$ and of the nodes within $q$ hops of it
# ($(\mat{\Delta}^k)_{ij} = 0$ beyond $k$ hops), weighted by the graph structure, with weights
# $\mat{\alpha}_k$, $\vec{b}$ shared by all nodes, like a convolution kernel shared by all pixels.
#
# **B.** Every power $\mat{\Delta}^k$ then has row and column 5 zero
# ($(\mat{\Delta}^k)_{5,:} = \mat{\Delta}_{5,:}\mat{\Delta}^{k-1}$), so $\vec{y}_5 = \varphi(\vec{b})$
# whatever the input: node 5's output carries no information, and its features reach no other
# node. Walks through node 5 are cut, so the outputs of nodes within $q$ hops of it change;
# farther nodes are unaffected. Nothing fails: the bug is silent.

# %% [markdown]
# **Why, in detail.** $(\mat{\Delta}^k)_{ij}$ is a weighted sum over walks of length $k$
# from $i$ to $j$ in the graph (a Laplacian, $\mat{D}-\mat{A}$ or its normalised form
# $\mat{I}-\mat{D}^{-1/2}\mat{A}\mat{D}^{-1/2}$, is non-zero only on the diagonal and on edges),
# so it vanishes when $j$ is more than $k$ hops away; for $j$ exactly $k$ hops away every
# shortest walk contributes a term of the same sign, so it is never zero. Row $i$ of $\mat{\Delta}^k\mat{X}$
# is therefore an aggregate of the $k$-hop neighbourhood's features, and the layer is the graph
# version of a convolution with a kernel of radius $q$.
#
# The bug removes node 5 from the operator: a product $\mat{\Delta}^k$ with a zero row and
# column keeps it zero, so node 5's row of the pre-activation is $\vec{0}$ and its output
# $\varphi(\vec{b})$. The other entries of $\mat{\Delta}$ are unchanged (the degrees in them
# still count node 5), but every walk through node 5 now contributes
# nothing: a node $i$ at distance $d \le q$ from node 5 loses $\vec{x}_5$ (reached by walks of
# length $\ge d$), and walks of length $\le q$ through node 5 exist only for $d \le q-1$; nodes
# farther than $q$ hops are untouched.
#
# The experiment builds the layer on a $7\times7$ grid graph (normalised Laplacian, $q = 2$,
# $\varphi = \tanh$),
# recomputes every row from the node-wise formula above, measures which input nodes influence
# one output row (the Jacobian's footprint), and compares the buggy layer with the correct one
# node by node. Controls: shuffling the rows of $\mat{X}$ without renumbering the graph changes
# the outputs, and the boundary of the bug's effect moves with $q$.

# %%
layer = PolynomialGraphConv(DELTA, M, M_OUT, Q)
X = torch.randn(N, M)
Y = layer(X)

# A. Row i from the node-wise formula: only nodes j within k hops of i enter the k-th term.
powers = [torch.linalg.matrix_power(DELTA, k) for k in range(1, Q + 1)]
rows = []
for i in range(N):
    dist = hop_distances(A, i)
    pre = sum(powers[k - 1][i, j] * X[j] @ layer.alpha[k - 1]
              for k in range(1, Q + 1) for j in range(N) if dist[j] <= k)
    rows.append(torch.tanh(pre + layer.bias))
formula_error = (torch.stack(rows) - Y).abs().max().item()
print(f"Y has shape {tuple(Y.shape)}; largest difference to the node-wise formula: {formula_error:.1e}")

# Rows belong to nodes: renumber nodes (X and Delta together) -> rows renumbered.
perm = torch.randperm(N)
renumbered = PolynomialGraphConv(DELTA[perm][:, perm], M, M_OUT, Q)
renumbered.load_state_dict({"alpha": layer.alpha, "bias": layer.bias,
                            "operator": DELTA[perm][:, perm]})
equivariance_error = (renumbered(X[perm]) - Y[perm]).abs().max().item()
shuffled_only = (layer(X[perm]) - Y[perm]).abs().max().item()   # X shuffled, graph not
print(f"renumbering the nodes: rows move with them (error {equivariance_error:.1e}); "
      f"shuffling X alone: outputs differ by up to {shuffled_only:.2f}")

# Which inputs influence row i: the nodes within q hops, no more.
centre = (ROWS // 2) * COLS + COLS // 2
influence = node_influence(layer, X, centre)
dist = hop_distances(A, centre)
outside_seen = int(((influence > 0) & (dist > Q)).sum())
inside_missed = int(((influence == 0) & (dist <= Q)).sum())
print(f"node {centre}: {int((influence > 0).sum())} input nodes influence its row; "
      f"{int((dist <= Q).sum())} lie within {Q} hops")

check("gnn.1.A", "row i is phi(sum_k sum_j (Delta^k)_ij alpha_k^T x_j + b), over nodes j within k hops",
      formula_error, "<", 1e-12)
check("gnn.1.A", "renumbering the nodes renumbers the rows of Y", equivariance_error, "<", 1e-12)
control("gnn.1.A", "shuffling X without renumbering the graph changes the outputs", shuffled_only, ">", 0.1)
check("gnn.1.A", "no node more than q hops away influences row i", outside_seen, "==", 0)
check("gnn.1.A", "every node within q hops influences row i", inside_missed, "==", 0)


# %%
def zero_node(operator: torch.Tensor, node: int) -> torch.Tensor:
    """The bug: row and column `node` of the Laplacian set to zero."""
    broken = operator.clone()
    broken[node, :] = 0
    broken[:, node] = 0
    return broken


def bug_effect(order: int, node: int = 5, trials: int = 10) -> dict:
    """Compare the correct layer with the buggy one (same weights) over random inputs."""
    good = PolynomialGraphConv(DELTA, M, M_OUT, order)
    bad = PolynomialGraphConv(zero_node(DELTA, node), M, M_OUT, order)
    bad.load_state_dict({**good.state_dict(), "operator": zero_node(DELTA, node)})
    inputs = [torch.randn(N, M) for _ in range(trials)]
    y_good = torch.stack([good(x) for x in inputs])
    y_bad = torch.stack([bad(x) for x in inputs])
    changed = (y_good - y_bad).abs().amax((0, 2)) > 1e-12           # per node
    others = [i for i in range(N) if i != node]
    return {
        "spread of y_5 (bug)": (y_bad[:, node] - torch.tanh(good.bias)).abs().max().item(),
        "spread of y_5 (correct)": y_good[:, node].std(0).max().item(),
        "influence of x_5 on other nodes (bug)": max(node_influence(bad, inputs[0], i)[node].item()
                                                     for i in others),
        "influence of x_5 on other nodes (correct)": max(node_influence(good, inputs[0], i)[node].item()
                                                         for i in others),
        "changed": changed, "distance": hop_distances(A, node),
    }


effects = {q: bug_effect(q) for q in (Q, Q + 1)}
for q, e in effects.items():
    d, changed = e["distance"], e["changed"]
    reach = [int(changed[d == r].sum()) for r in range(int(d.max()) + 1)]
    print(f"q={q}: nodes changed by the bug, by distance from node 5 (0, 1, 2, ...): {reach}; "
          f"nodes at each distance: {[int((d == r).sum()) for r in range(int(d.max()) + 1)]}")
e = effects[Q]
print({k: f"{v:.2e}" for k, v in e.items() if isinstance(v, float)})

fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.0))
for ax, q in zip(axes, (Q, Q + 1)):
    grid = effects[q]["changed"].double().reshape(ROWS, COLS)
    ax.imshow(grid, cmap="Reds", vmin=0, vmax=1.5)
    ax.scatter([5 % COLS], [5 // COLS], marker="x", color="k", label="node 5")
    ax.set_title(f"q = {q}: outputs changed by the bug", fontsize=9)
    ax.set_xlabel("grid column")
    ax.set_ylabel("grid row")
axes[0].legend(fontsize=8, loc="lower left")
plt.tight_layout()
plt.show()

d, changed = e["distance"], e["changed"]
check("gnn.1.B", "y_5 = phi(b) whatever the input", e["spread of y_5 (bug)"], "<=", 1e-15)
control("gnn.1.B", "with the correct Laplacian y_5 depends on the input", e["spread of y_5 (correct)"], ">", 0.05)
check("gnn.1.B", "node 5's features reach no other node", e["influence of x_5 on other nodes (bug)"], "==", 0.0)
control("gnn.1.B", "with the correct Laplacian they do", e["influence of x_5 on other nodes (correct)"], ">", 1e-3)
check("gnn.1.B", "every node within q hops of node 5 changes", int((~changed & (d <= Q)).sum()), "==", 0)
check("gnn.1.B", "no node farther than q hops from node 5 changes", int((changed & (d > Q)).sum()), "==", 0)
control("gnn.1.B", "with order q+1 the effect reaches q+1 hops", int((effects[Q + 1]["changed"] & (d == Q + 1)).sum()), ">", 0)

# %% [markdown]
# ### gnn.2 · receptive field of a graph network
# We have discussed the notion of a Receptive Field in the context of a CNN. How would you define
# a similar concept in the context of a GCN (i.e. a model comprised of multiple graph
# convolutional layers)?

# %% [markdown]
# **Answer:** The receptive field of a node is the set of input nodes whose features can
# influence its output. A layer of order $q$ moves information $q$ hops (one hop in the common
# first-order GCN), so after $L$ layers it is the node's $Lq$-hop neighbourhood: every node
# within shortest-path distance $Lq$. As in a CNN it grows linearly with depth, with $q$ in the
# role of the kernel size; unlike a CNN's fixed box, its size depends on where the node sits
# (a corner or low-degree node sees fewer nodes), and a global readout makes it the whole graph.

# %% [markdown]
# **Why, in detail.** Stacking layers composes operators: the output of $L$ layers depends on
# $\mat{\Delta}^{k_1}\cdots\mat{\Delta}^{k_L}\mat{X}$ with $k_l \le q$, whose entry $(i, j)$ is
# non-zero only if $j$ is within $k_1+\dots+k_L \le Lq$ hops of $i$; the element-wise
# non-linearity in between does not mix nodes. The experiment measures the field as the
# footprint of a node's Jacobian (the input nodes whose features have a non-zero gradient) on
# the grid graph, where it can be drawn like an image's: a diamond of radius $Lq$, clipped at
# the border. Control: with a global mean-pool added to each node's output the footprint is the
# whole graph.

# %%
class GlobalReadout(nn.Module):
    """Adds the mean over all nodes to every node: the field becomes the whole graph."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + h.mean(0, keepdim=True)


def gcn(layers: int, order: int, readout: bool = False) -> nn.Sequential:
    blocks = [PolynomialGraphConv(DELTA, M, M, order) for _ in range(layers)]
    return nn.Sequential(*blocks, *([GlobalReadout()] if readout else []))


corner = 0
radius, mismatches, sizes = {}, 0, {}
for layers in (1, 2, 3):
    for order in (1, 2):
        model = gcn(layers, order)
        for node in (centre, corner):
            seen = node_influence(model, X, node) > 0
            dist = hop_distances(A, node)
            mismatches += int((seen != (dist <= layers * order)).sum())
            sizes[(layers, order, node)] = int(seen.sum())
            if node == centre:
                radius[(layers, order)] = int(dist[seen].max())
print("measured radius (hops) of the centre node's field, by (layers L, order q):", radius)
global_seen = int((node_influence(gcn(1, 1, readout=True), X, centre) > 0).sum())
print(f"with a global readout, 1 layer: {global_seen} of {N} nodes influence the centre node")

fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.6))
for ax, layers in zip(axes, (1, 2, 3)):
    field = node_influence(gcn(layers, 1), X, centre).reshape(ROWS, COLS)
    ax.imshow(field > 0, cmap="Blues", vmin=0, vmax=1.3)
    ax.scatter([centre % COLS], [centre // COLS], marker="x", color="k")
    ax.set_title(f"L = {layers}, q = 1: {int((field > 0).sum())} nodes", fontsize=9)
    ax.set_xlabel("grid column")
axes[0].set_ylabel("grid row")
plt.tight_layout()
plt.show()

check("gnn.2", "the field after L layers of order q has radius L*q hops",
      [radius[k] - k[0] * k[1] for k in sorted(radius)], "==", [0] * len(radius))
check("gnn.2", "it is exactly the L*q-hop neighbourhood (nodes in one and not the other)", mismatches, "==", 0)
check("gnn.2", "a corner node's field holds fewer nodes than a central node's (L=2, q=1)",
      sizes[(2, 1, corner)], "<", sizes[(2, 1, centre)])
control("gnn.2", "with a global readout the field is the whole graph, not 1 hop", global_seen, "==", N)
