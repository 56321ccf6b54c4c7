"""Graph convolutions: a node's measured receptive field is its L*q-hop neighbourhood."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlsummary.errors import DLSummaryError
from dlsummary.graph import (
    PolynomialGraphConv,
    grid_graph,
    hop_distances,
    laplacian,
    node_influence,
)


@st.composite
def graphs(draw):
    n = draw(st.integers(3, 12))
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                          min_size=1, max_size=3 * n))
    a = torch.zeros(n, n, dtype=torch.float64)
    for i, j in edges:
        if i != j:
            a[i, j] = a[j, i] = 1
    return a


@settings(max_examples=40, deadline=None)
@given(graphs(), st.integers(1, 3), st.integers(1, 3), st.booleans(), st.data())
def test_influence_support_is_the_lq_hop_neighbourhood(a, order, layers, normalized, data):
    torch.manual_seed(0)
    node = data.draw(st.integers(0, a.shape[0] - 1))
    op = laplacian(a, normalized=normalized)
    model = nn.Sequential(*(PolynomialGraphConv(op, 3, 3, order) for _ in range(layers)))
    influence = node_influence(model, torch.randn(a.shape[0], 3, dtype=torch.float64), node)
    dist = hop_distances(a, node)
    # an isolated node's Laplacian row is zero: it sees nothing, not even itself
    predicted = (dist >= 0) & (dist <= layers * order) & (a[node].sum() > 0)
    assert torch.equal(influence > 1e-12, predicted)


def test_laplacian_and_distances_on_a_path():
    a = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
    assert torch.equal(laplacian(a), torch.tensor([[1., -1, 0], [-1, 2, -1], [0, -1, 1]],
                                                  dtype=torch.float64))
    assert hop_distances(a, 0).tolist() == [0, 1, 2]
    assert torch.allclose(laplacian(a, normalized=True).diagonal(), torch.ones(3, dtype=a.dtype))


def test_grid_graph_degrees():
    degree = grid_graph(3, 4).sum(1)
    assert degree.min() == 2 and degree.max() == 4 and degree.sum() == 2 * (3 * 3 + 2 * 4)


@pytest.mark.parametrize(("call", "words"), [
    (lambda: laplacian(torch.zeros(2, 3)), "square"),
    (lambda: laplacian(torch.tensor([[0., 1], [0, 0]])), "not symmetric"),
    (lambda: hop_distances(torch.zeros(2, 2), 5), "node 5"),
    (lambda: PolynomialGraphConv(torch.eye(3), 2, 2, 0), "order"),
    (lambda: PolynomialGraphConv(torch.eye(3), 2, 2, 1)(torch.zeros(4, 2)), r"\(3, 2\)"),
])
def test_bad_input_is_a_clear_error(call, words):
    with pytest.raises(DLSummaryError, match=words):
        call()
