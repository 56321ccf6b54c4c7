"""Sequence-model building blocks, written out so that what they do can be seen and tested.

- :class:`Embedding`: ``nn.Embedding`` with plain tensors (a row lookup in a weight matrix),
  with clear errors for float ids and ids outside the vocabulary.
- Truncated backpropagation through time: :func:`batchify` cuts one long stream into
  parallel contiguous streams (so that row ``b`` of segment ``k + 1`` continues row ``b`` of
  segment ``k``), :func:`detach_state` cuts the graph between segments while keeping the
  state's value, :func:`train_tbptt` runs the whole procedure and :func:`run_in_segments`
  evaluates a model the same way.

A recurrent model used with these helpers is any callable ``model(x, state) -> (output,
state)`` on batch-first tensors, ``state`` being ``None`` at the start; ``nn.GRU`` /
``nn.LSTM`` with ``batch_first=True`` already have this signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dlsummary.errors import DLSummaryError

State = Any  # a tensor, a tuple/list of tensors (LSTM's (h, c)), or None
RecurrentModel = Callable[[Tensor, State], tuple[Tensor, State]]

_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# --------------------------------------------------------------------------- embedding
class Embedding(nn.Module):
    """A lookup table of ``num_embeddings`` learned vectors of size ``embedding_dim``.

    ``forward(ids)`` returns ``weight[ids]``: an output of shape ``ids.shape +
    (embedding_dim,)`` whose entry ``[..., :]`` is the weight row named by the id there. It
    equals ``one_hot(ids) @ weight`` (a linear layer on one-hot inputs) without building the
    one-hot tensor; in the backward pass only the rows that were looked up receive gradient
    (each the sum of the output gradients at its positions). The weight starts as
    ``N(0, 1)``, as in ``nn.Embedding``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hint = "pass the vocabulary size and the vector size, e.g. Embedding(10_000, 64)"
        _require_positive_int(num_embeddings, "num_embeddings", "Embedding", hint)
        _require_positive_int(embedding_dim, "embedding_dim", "Embedding", hint)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(
            torch.randn(num_embeddings, embedding_dim, device=device, dtype=dtype)
        )

    def forward(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor):
            raise DLSummaryError(
                f"Embedding expects a tensor of integer token ids, got {type(ids).__name__}; "
                "wrap it with torch.as_tensor(ids, dtype=torch.long)"
            )
        if ids.dtype not in _INTEGER_DTYPES:
            raise DLSummaryError(
                f"Embedding expects integer token ids, got a {ids.dtype} tensor of shape "
                f"{tuple(ids.shape)}; ids are row numbers, not features: convert with "
                "ids.long() (or feed a float feature through nn.Linear instead)"
            )
        if ids.numel() > 0:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.num_embeddings:
                raise DLSummaryError(
                    f"Embedding(num_embeddings={self.num_embeddings}) got token ids in "
                    f"[{low}, {high}] (input shape {tuple(ids.shape)}); ids must lie in "
                    f"[0, {self.num_embeddings - 1}]: map unknown tokens to a reserved id or "
                    "enlarge num_embeddings"
                )
        if ids.device != self.weight.device:
            raise DLSummaryError(
                f"Embedding's weight is on {self.weight.device} but the ids are on "
                f"{ids.device}; move one of them, e.g. ids.to({str(self.weight.device)!r})"
            )
        return self.weight[ids.long()]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


# --------------------------------------------------------------------------- TBPTT helpers
def batchify(stream: Tensor, batch_size: int) -> Tensor:
    """Cut one long sequence of shape ``(T, ...)`` into ``batch_size`` contiguous streams of
    shape ``(batch_size, T // batch_size, ...)`` (the remainder is dropped).

    Row ``b`` is the ``b``-th consecutive chunk of the stream, so cutting the time axis into
    segments keeps each row's segments in order: the state a model ends a segment with is
    the right state to start the row's next segment with. Shuffling segments breaks this.
    """
    if not isinstance(stream, Tensor) or stream.dim() < 1:
        raise DLSummaryError(
            f"batchify expects a tensor of shape (T, ...), got {_describe(stream)}"
        )
    _require_positive_int(batch_size, "batch_size", "batchify", "the number of parallel rows")
    steps = stream.shape[0] // batch_size
    if steps == 0:
        raise DLSummaryError(
            f"batchify: a stream of length {stream.shape[0]} cannot fill {batch_size} rows; "
            "use a smaller batch_size or a longer stream"
        )
    return stream[: steps * batch_size].reshape(batch_size, steps, *stream.shape[1:])


def detach_state(state: State) -> State:
    """The same state (same values) cut from the graph that produced it: a tensor, or a
    tuple/list of tensors such as an LSTM's ``(h, c)``; ``None`` stays ``None``."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    raise DLSummaryError(
        f"detach_state: the recurrent state must be a tensor or a tuple/list of tensors, got "
        f"{type(state).__name__}; return the state as tensors from the model"
    )


def segments(*sequences: Tensor, segment_length: int) -> Iterator[tuple[Tensor, ...]]:
    """Yield consecutive time slices ``seq[:, t:t + segment_length]`` of batch-first
    tensors (all sharing the first two dims); the last slice may be shorter."""
    batch_time = _check_sequences(sequences, segment_length, "segments")
    for start in range(0, batch_time[1], segment_length):
        yield tuple(s[:, start : start + segment_length] for s in sequences)


@dataclass(frozen=True)
class TBPTTResult:
    """Losses of one run of :func:`train_tbptt`, one per segment (i.e. per update)."""

    segment_losses: tuple[float, ...]
    segment_length: int
    carry_state: bool

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the updates (at least one)."""
        tail = self.segment_losses[-max(1, len(self.segment_losses) // 10) :]
        return sum(tail) / len(tail)

    def __str__(self) -> str:
        mode = "carried (detached)" if self.carry_state else "reset to None"
        losses = self.segment_losses
        return (
            f"TBPTT: {len(losses)} updates, segment length {self.segment_length}, "
            f"state between segments {mode}\n"
            f"  loss first {losses[0]:.4f}  last-10% mean {self.final_loss:.4f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment_losses": list(self.segment_losses),
            "segment_length": self.segment_length,
            "carry_state": self.carry_state,
            "final_loss": self.final_loss,
        }

    def plot(self, ax: Any = None, **line_kwargs: Any) -> Any:
        """Loss per update on the given matplotlib Axes (or a new one)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        ax.plot(self.segment_losses, **line_kwargs)
        ax.set_xlabel("update (segment)")
        ax.set_ylabel("loss")
        return ax


def train_tbptt(
    model: RecurrentModel,
    inputs: Tensor,
    targets: Tensor,
    segment_length: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    carry_state: bool = True,
) -> TBPTTResult:
    """Truncated backpropagation through time over batch-first streams.

    ``inputs`` and ``targets`` have shape ``(batch, T, ...)`` with row ``b`` one contiguous
    stream (see :func:`batchify`). Each segment of ``segment_length`` steps gets a forward
    pass started from the previous segment's final state, an ordinary ``loss.backward()``
    and an optimizer step. The state's *value* is carried to the next segment but it is
    detached, so gradients never flow more than ``segment_length`` steps back. With
    ``carry_state=False`` every segment starts from ``None`` (what merely chopping the
    sequence into length-S pieces does). Each epoch restarts the streams from ``None``.
    """
    _check_sequences((inputs, targets), segment_length, "train_tbptt")
    _require_positive_int(epochs, "epochs", "train_tbptt", "the passes over the streams")
    losses: list[float] = []
    for _ in range(epochs):
        state: State = None
        for x, y in segments(inputs, targets, segment_length=segment_length):
            output, new_state = _call(model, x, state if carry_state else None)
            loss = loss_fn(output, y)
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise DLSummaryError(
                    f"train_tbptt: loss_fn must return a scalar tensor, got {_describe(loss)}; "
                    "reduce it, e.g. with reduction='mean'"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            state = detach_state(new_state)
    return TBPTTResult(tuple(losses), segment_length, carry_state)


@torch.no_grad()
def run_in_segments(
    model: RecurrentModel, inputs: Tensor, segment_length: int, *, carry_state: bool = True
) -> Tensor:
    """The model's outputs over whole streams, computed segment by segment exactly as
    :func:`train_tbptt` does (state carried or reset), concatenated along time."""
    _check_sequences((inputs,), segment_length, "run_in_segments")
    state: State = None
    outputs = []
    for (x,) in segments(inputs, segment_length=segment_length):
        output, state = _call(model, x, state if carry_state else None)
        outputs.append(output)
    return torch.cat(outputs, dim=1)


# --------------------------------------------------------------------------- internals
def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"a {obj.dtype} tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def _require_positive_int(value: Any, name: str, where: str, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DLSummaryError(f"{where}: {name} must be a positive int ({meaning}), got {value!r}")


def _check_sequences(
    sequences: tuple[Tensor, ...], segment_length: int, where: str
) -> tuple[int, int]:
    _require_positive_int(segment_length, "segment_length", where, "the S of TBPTT")
    if not sequences:
        raise DLSummaryError(f"{where}: give at least one (batch, time, ...) tensor")
    for s in sequences:
        if not isinstance(s, Tensor) or s.dim() < 2:
            raise DLSummaryError(
                f"{where} expects batch-first tensors of shape (batch, time, ...), got "
                f"{_describe(s)}; cut a single stream into rows with batchify(stream, batch)"
            )
    first = tuple(sequences[0].shape[:2])
    for s in sequences[1:]:
        if tuple(s.shape[:2]) != first:
            raise DLSummaryError(
                f"{where}: inputs and targets must share (batch, time) = {first}, got "
                f"{tuple(s.shape[:2])}; targets need one entry per input step"
            )
    return first


def _call(model: RecurrentModel, x: Tensor, state: State) -> tuple[Tensor, State]:
    result = model(x, state)
    if not (isinstance(result, tuple) and len(result) == 2):
        name = type(model).__qualname__
        raise DLSummaryError(
            f"the model ({name}) must return (output, state) for model(x, state), got "
            f"{_describe(result)}; nn.GRU/nn.LSTM(batch_first=True) do, or wrap yours"
        )
    return result
