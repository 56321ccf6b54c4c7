"""Graph convolutions and their receptive fields.

A polynomial graph convolution (the course's layer) computes
``Y = phi(sum_{k=1..q} Delta^k X alpha_k + b)`` for a graph operator ``Delta`` (a
Laplacian) of an ``N``-node graph, node features ``X`` of shape ``(N, M)`` and weight
matrices ``alpha_k`` of shape ``(M, M')``. Since ``(Delta^k)_{ij} = 0`` whenever nodes ``i``
and ``j`` are more than ``k`` hops apart, row ``i`` of ``Y`` sees only the nodes within ``q``
hops of node ``i``: the graph analogue of a CNN's receptive field, measured here with
:func:`node_influence` and predicted with :func:`hop_distances`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from dlsummary.errors import DLSummaryError


def _square_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise DLSummaryError(f"an adjacency matrix is square (N, N); got shape "
                             f"{tuple(adjacency.shape)}")
    if not torch.equal(adjacency, adjacency.T):
        raise DLSummaryError("the adjacency matrix is not symmetric: give an undirected graph "
                             "(A + A.T clipped to 1 makes one)")
    return adjacency


def laplacian(adjacency: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """The graph Laplacian ``L = D - A``, or with ``normalized=True`` the symmetric
    normalised ``I - D^{-1/2} A D^{-1/2}`` (isolated nodes get a zero row and column)."""
    a = _square_adjacency(adjacency).to(torch.get_default_dtype()
                                        if not adjacency.is_floating_point() else adjacency.dtype)
    degree = a.sum(1)
    if not normalized:
        return torch.diag(degree) - a
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-300).rsqrt(), torch.zeros_like(degree))
    eye = torch.diag((degree > 0).to(a.dtype))
    return eye - inv_sqrt[:, None] * a * inv_sqrt[None, :]


def hop_distances(adjacency: torch.Tensor, source: int) -> torch.Tensor:
    """Shortest-path distance (number of edges) from ``source`` to every node, by
    breadth-first search; ``-1`` for nodes that cannot be reached."""
    a = _square_adjacency(adjacency)
    n = a.shape[0]
    if not 0 <= source < n:
        raise DLSummaryError(f"node {source} is not in a graph of {n} nodes")
    neighbours = [torch.nonzero(a[i]).flatten().tolist() for i in range(n)]
    distance = [-1] * n
    distance[source] = 0
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for other in neighbours[node]:
            if distance[other] < 0:
                distance[other] = distance[node] + 1
                queue.append(other)
    return torch.tensor(distance)


class PolynomialGraphConv(nn.Module):
    """``Y = phi(sum_{k=1..q} Delta^k X alpha_k + b)``, the course's graph convolution.

    ``operator`` is the ``(N, N)`` matrix ``Delta`` (a Laplacian), fixed at construction;
    ``alpha`` holds ``q`` weight matrices of shape ``(in_features, out_features)``.
    """

    def __init__(self, operator: torch.Tensor, in_features: int, out_features: int,
                 order: int, activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh):
        super().__init__()
        if order < 1:
            raise DLSummaryError(f"PolynomialGraphConv: order q must be >= 1, got {order}")
        self.register_buffer("operator", operator.clone())
        self.alpha = nn.Parameter(torch.randn(order, in_features, out_features,
                                              dtype=operator.dtype) / in_features ** 0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(out_features, dtype=operator.dtype))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.operator.shape[0]
        if x.dim() != 2 or x.shape[0] != n or x.shape[1] != self.alpha.shape[1]:
            raise DLSummaryError(f"PolynomialGraphConv: expected node features of shape "
                                 f"({n}, {self.alpha.shape[1]}), got {tuple(x.shape)}")
        total = torch.zeros(n, self.alpha.shape[2], dtype=x.dtype, device=x.device)
        power = x
        for alpha_k in self.alpha:  # Delta^k X, built one multiplication at a time
            power = self.operator @ power
            total = total + power @ alpha_k
        return self.activation(total + self.bias)


def node_influence(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   node: int) -> torch.Tensor:
    """How strongly each input node's features influence ``model(x)[node]``: the norm,
    per input node, of the Jacobian of that output row with respect to ``x`` (shape
    ``(N,)``). Nodes with influence 0 lie outside the node's receptive field."""
    if x.dim() != 2:
        raise DLSummaryError(f"node features have shape (N, M); got {tuple(x.shape)}")
    if not 0 <= node < x.shape[0]:
        raise DLSummaryError(f"node {node} is not in a graph of {x.shape[0]} nodes")
    x = x.detach().clone().requires_grad_(True)
    row = model(x)[node]
    jacobian = torch.stack([torch.autograd.grad(row[c], x, retain_graph=True)[0]
                            for c in range(row.shape[0])])  # (M', N, M)
    return jacobian.pow(2).sum((0, 2)).sqrt()


def grid_graph(rows: int, cols: int) -> torch.Tensor:
    """The adjacency matrix of a ``rows x cols`` grid (4-neighbourhood), node ``r*cols+c``:
    on a grid a graph convolution's receptive field can be drawn like an image's."""
    n = rows * cols
    a = torch.zeros(n, n)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                a[i, i + 1] = a[i + 1, i] = 1
            if r + 1 < rows:
                a[i, i + cols] = a[i + cols, i] = 1
    return a
