"""Tests for dlsummary.sequence: the hand-written Embedding and the TBPTT helpers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlsummary.errors import DLSummaryError
from dlsummary.sequence import (
    Embedding,
    TBPTTResult,
    batchify,
    detach_state,
    run_in_segments,
    segments,
    train_tbptt,
)


# --------------------------------------------------------------------------- Embedding
def _pair(vocab: int, dim: int, seed: int = 0) -> tuple[nn.Embedding, Embedding]:
    torch.manual_seed(seed)
    reference, ours = nn.Embedding(vocab, dim), Embedding(vocab, dim)
    with torch.no_grad():
        ours.weight.copy_(reference.weight)
    return reference, ours


@settings(max_examples=30, deadline=None)
@given(
    vocab=st.integers(1, 30),
    dim=st.integers(1, 8),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_embedding_matches_nn_embedding_outputs_and_gradients(vocab, dim, shape, seed):
    reference, ours = _pair(vocab, dim, seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, tuple(shape), generator=g)
    upstream = torch.randn(*shape, dim, generator=g)
    out_ref, out_ours = reference(ids), ours(ids)
    assert out_ours.shape == (*shape, dim)
    assert torch.equal(out_ref, out_ours)
    (out_ref * upstream).sum().backward()
    (out_ours * upstream).sum().backward()
    assert torch.equal(reference.weight.grad, ours.weight.grad)


def test_embedding_is_a_linear_layer_on_one_hot_inputs():
    _, ours = _pair(12, 5)
    ids = torch.tensor([[0, 3, 3], [11, 7, 0]])
    assert torch.equal(ours(ids), F.one_hot(ids, 12).float() @ ours.weight)


def test_only_looked_up_rows_get_gradient_and_it_is_the_sum_over_positions():
    _, ours = _pair(10, 3)
    ids = torch.tensor([1, 4, 4, 4, 9])
    ours(ids).sum().backward()
    expected = torch.zeros(10, 3)
    expected[1], expected[4], expected[9] = 1.0, 3.0, 1.0
    assert torch.equal(ours.weight.grad, expected)


def test_embedding_accepts_int32_ids_and_empty_input():
    _, ours = _pair(6, 2)
    assert torch.equal(ours(torch.tensor([5, 0], dtype=torch.int32)), ours.weight[[5, 0]])
    assert ours(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 2)


def test_embedding_follows_the_requested_dtype():
    ours = Embedding(4, 3, dtype=torch.float64)
    assert ours(torch.tensor([1, 2])).dtype == torch.float64
    assert "4, 3" in repr(ours)


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        (torch.tensor([0.0, 1.0]), "integer token ids"),
        (torch.tensor([0, 7]), "[0, 6]"),
        (torch.tensor([-1, 2]), "got token ids in [-1, 2]"),
        ([1, 2], "wrap it with torch.as_tensor"),
    ],
)
def test_embedding_bad_ids_give_a_clear_error(ids, fragment):
    with pytest.raises(DLSummaryError, match=None) as info:
        Embedding(7, 2)(ids)
    assert fragment in str(info.value)


@pytest.mark.parametrize("args", [(0, 3), (5, -1), (5.0, 3), (True, 3)])
def test_embedding_bad_sizes_are_refused(args):
    with pytest.raises(DLSummaryError, match="positive int"):
        Embedding(*args)


# --------------------------------------------------------------------------- batchify & co
def test_batchify_rows_are_contiguous_chunks():
    stream = torch.arange(23)
    rows = batchify(stream, 4)
    assert rows.shape == (4, 5)
    assert torch.equal(rows[2], torch.arange(10, 15))  # row b continues where row b left off
    features = batchify(torch.arange(24.0).reshape(12, 2), 3)
    assert features.shape == (3, 4, 2)


@pytest.mark.parametrize(
    ("stream", "batch", "fragment"),
    [
        (torch.arange(3), 5, "cannot fill 5 rows"),
        (torch.tensor(1.0), 2, "shape (T, ...)"),
        (torch.arange(8), 0, "batch_size must be a positive int"),
    ],
)
def test_batchify_errors(stream, batch, fragment):
    with pytest.raises(DLSummaryError) as info:
        batchify(stream, batch)
    assert fragment in str(info.value)


def test_detach_state_keeps_values_and_cuts_the_graph():
    h = torch.randn(2, 3, requires_grad=True) * 2
    c = torch.randn(2, 3, requires_grad=True) * 3
    assert detach_state(None) is None
    single = detach_state(h)
    assert torch.equal(single, h) and not single.requires_grad
    pair = detach_state((h, c))
    assert isinstance(pair, tuple) and all(not s.requires_grad for s in pair)
    assert torch.equal(pair[1], c)
    with pytest.raises(DLSummaryError, match="tensor or a tuple/list"):
        detach_state({"h": h})


def test_segments_cover_the_sequence_in_order():
    x = torch.arange(20).reshape(2, 10)
    pieces = list(segments(x, x + 100, segment_length=4))
    assert [p[0].shape[1] for p in pieces] == [4, 4, 2]
    assert torch.equal(torch.cat([p[0] for p in pieces], 1), x)
    assert torch.equal(pieces[1][1], x[:, 4:8] + 100)


# --------------------------------------------------------------------------- train_tbptt
class CumulativeSum(nn.Module):
    """h_t = h_{t-1} + w * x_t, output h_t: the gradient of sum_t h_t w.r.t. w is
    sum_t sum_{s <= t} x_s, restricted under TBPTT to s in the same segment as t."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, x, state):
        h = torch.zeros(x.shape[0], dtype=x.dtype) if state is None else state
        outputs = []
        for t in range(x.shape[1]):
            h = h + self.w * x[:, t]
            outputs.append(h)
        return torch.stack(outputs, 1), h


def _gradients_seen_by_the_optimizer(model, x, seg, carry_state=True):
    grads = []
    model.w.register_hook(lambda g: grads.append(g.item()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    result = train_tbptt(
        model,
        x,
        torch.zeros_like(x),
        seg,
        lambda out, _y: out.sum(),
        optimizer,
        carry_state=carry_state,
    )
    return grads, result


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 12), seg=st.integers(1, 6), seed=st.integers(0, 1000))
def test_tbptt_gradient_spans_at_most_one_segment(length, seg, seed):
    x = torch.randn(2, length, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    grads, result = _gradients_seen_by_the_optimizer(CumulativeSum(), x, seg)
    expected = []
    for start in range(0, length, seg):
        piece = x[:, start : start + seg]
        expected.append(piece.cumsum(1).sum().item())  # only inputs of the same segment
    assert grads == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # the forward pass still sees the whole past: the losses add up to the full loss
    assert sum(result.segment_losses) == pytest.approx(x.cumsum(1).sum().item(), rel=1e-9)


def test_tbptt_with_one_segment_is_plain_bptt_and_reset_drops_the_past():
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads, _ = _gradients_seen_by_the_optimizer(CumulativeSum(), x, 8)
    assert grads == pytest.approx([x.cumsum(1).sum().item()], rel=1e-12)
    _, carried = _gradients_seen_by_the_optimizer(CumulativeSum(), x, 4, carry_state=True)
    _, reset = _gradients_seen_by_the_optimizer(CumulativeSum(), x, 4, carry_state=False)
    second_half_alone = x[:, 4:].cumsum(1).sum().item()
    assert reset.segment_losses[1] == pytest.approx(second_half_alone)
    assert carried.segment_losses[1] == pytest.approx(x.cumsum(1)[:, 4:].sum().item())
    assert not reset.carry_state and carried.carry_state


def test_train_tbptt_learns_and_reports():
    torch.manual_seed(0)
    gru, readout = nn.GRU(1, 8, batch_first=True), nn.Linear(8, 1)

    def model(x, state):
        h, state = gru(x, state)
        return readout(h), state

    x = torch.randn(4, 60, 1)
    y = torch.zeros_like(x)
    y[:, 1:] = x[:, :-1]  # predict the previous input
    params = [*gru.parameters(), *readout.parameters()]
    result = train_tbptt(model, x, y, 6, F.mse_loss, torch.optim.Adam(params, lr=0.03), epochs=8)
    assert len(result.segment_losses) == 8 * 10
    assert result.final_loss < 0.3 * result.segment_losses[0]
    assert "80 updates" in str(result) and "carried" in str(result)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["segment_length"] == 6 and len(data["segment_losses"]) == 80


def test_result_plot_draws_the_losses():
    import matplotlib

    matplotlib.use("Agg")
    ax = TBPTTResult((3.0, 2.0, 1.0), 4, True).plot()
    assert list(ax.lines[0].get_ydata()) == [3.0, 2.0, 1.0]


def test_run_in_segments_with_carried_state_equals_one_pass():
    torch.manual_seed(0)
    gru = nn.GRU(2, 5, batch_first=True)
    x = torch.randn(3, 11, 2)
    whole, _ = gru(x)
    carried = run_in_segments(gru, x, 4)
    reset = run_in_segments(gru, x, 4, carry_state=False)
    assert torch.allclose(carried, whole, atol=1e-6)
    assert not torch.allclose(reset, whole, atol=1e-3)
    assert torch.allclose(reset[:, :4], whole[:, :4], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"segment_length": 0}, "segment_length must be a positive int"),
        ({"targets": torch.zeros(2, 5)}, "must share (batch, time)"),
        ({"inputs": torch.zeros(6)}, "batch-first tensors"),
        ({"loss_fn": lambda out, y: (out - y).abs()}, "scalar tensor"),
        ({"model": lambda x, state: x}, "must return (output, state)"),
        ({"epochs": 0}, "epochs must be a positive int"),
    ],
)
def test_train_tbptt_errors(kwargs, fragment):
    gru = nn.GRU(1, 2, batch_first=True)

    def model(x, state):
        out, state = gru(x.unsqueeze(-1), state)
        return out.sum(-1), state

    arguments = {
        "model": model,
        "inputs": torch.zeros(2, 6),
        "targets": torch.zeros(2, 6),
        "segment_length": 3,
        "loss_fn": F.mse_loss,
        "optimizer": torch.optim.SGD(gru.parameters(), lr=0.1),
    }
    arguments.update(kwargs)
    with pytest.raises(DLSummaryError) as info:
        train_tbptt(**arguments)
    assert fragment in str(info.value)
