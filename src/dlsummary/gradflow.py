"""Gradient-flow diagnostics: how large the gradient is at every layer *call* of one
backward pass, whether it vanishes or explodes with depth, and which activations sit in
their flat regions (saturated sigmoid/tanh units, dead ReLU units).

Usage::

    with gradient_flow(model) as flow:
        loss = loss_fn(model(x), y)
        loss.backward()
    print(flow)            # one row per layer call, in forward order
    flow.diagnosis         # "vanishing" | "exploding" | "healthy"
    flow.reason            # the measurement behind the diagnosis

Why per *call* and not per module: a module object used at several places of the graph
(``[nn.Linear(H, H), nn.Sigmoid()] * 24`` puts the *same* two objects 24 times into a
``Sequential``) receives a different gradient at each place; the parameters' gradient is
the sum over all its calls. The table shows every call and points out the sharing.

Cost: statistics stay on the device as 0-d tensors while the passes run and are read back
once, when the ``with`` block exits (no synchronisation per layer).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dlsummary.errors import DLSummaryError

__all__ = ["GradientFlow", "LayerCall", "gradient_flow"]

#: Activations whose derivative is small at both ends: a unit is *saturated* when its
#: local derivative is below 9.75 % of the maximum (sigmoid output outside
#: [0.025, 0.975], tanh output outside [-0.95, 0.95]; the two thresholds are the same
#: point, since tanh(x) = 2 sigmoid(2x) - 1).
SATURATING = (nn.Sigmoid, nn.Tanh)
_SATURATION_EDGE = {nn.Sigmoid: (0.5, 0.475), nn.Tanh: (0.0, 0.95)}  # centre, half-width

#: Activations that output exactly zero on a half-line: a unit is *dead* when it is zero
#: for every example of the batch (its incoming weights then receive no gradient).
RECTIFYING = (nn.ReLU, nn.ReLU6)

#: Saturated fractions are counted on at most this many examples of the batch, evenly
#: spaced (every k-th): on a larger batch the fraction is an estimate from 512 x width
#: values, accurate to about a percent, which keeps the tool's overhead small. Dead units
#: are counted on the whole batch (a unit is dead only if *every* example leaves it at 0).
SATURATION_SAMPLE = 512


@dataclass(frozen=True)
class LayerCall:
    """What one call of one layer saw during the recorded forward and backward pass."""

    index: int
    """Position of this call in forward order (0 = first layer call)."""
    name: str
    """Qualified name of the module in the model (the first one, if it has several)."""
    type: str
    """The module's class name."""
    call: int
    """Which call of this module object this is (1-based)."""
    calls: int
    """How many times this module object was called in the pass."""
    output_shape: tuple[int, ...]
    grad_output_norm: float | None
    """L2 norm of the gradient reaching this call's output (None: none arrived)."""
    param_grad_norm: float | None
    """L2 norm of the module's parameter gradient from this backward pass, summed over
    all its calls (None: no parameters, or none received a gradient)."""
    weight_norm: float | None
    """L2 norm of the module's parameters (None: no parameters)."""
    ratio: float | None
    """param_grad_norm / weight_norm: the relative step size plain SGD would take at
    learning rate 1."""
    saturated_fraction: float | None
    """Sigmoid/Tanh only: fraction of output values whose derivative is < 9.75 % of its
    maximum (on an evenly spaced sample of at most 512 examples of the batch)."""
    dead_fraction: float | None
    """ReLU/ReLU6 only: fraction of units that are zero for every example in the batch."""
    shared: str
    """Empty, or a note that this module's weights are shared (several calls, or several
    names, or parameters that another module also owns)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (non-finite numbers become the strings 'inf'/'nan')."""
        return {key: _jsonable(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class GradientFlow:
    """Per-call gradient statistics of one forward and backward pass, and a diagnosis.

    Returned by ``gradient_flow(model).__enter__``; its fields are filled in when the
    ``with`` block exits.
    """

    layers: tuple[LayerCall, ...] = ()
    diagnosis: str = "not measured"
    """'vanishing', 'exploding' or 'healthy' (or 'not measured' before the block exits)."""
    reason: str = "the with-block has not finished"
    threshold: float = 1e3
    """Fold change of the gradient norm between the last and the first layer call above
    which the flow is called vanishing or exploding."""
    notes: tuple[str, ...] = field(default=())
    """Other findings: weight sharing, saturation, dead units."""

    @property
    def fold_change(self) -> float | None:
        """Gradient-output norm at the first layer call divided by the norm at the last
        (< 1: the gradient shrinks on its way back to the input)."""
        measured = [c for c in self.layers if c.grad_output_norm is not None]
        if len(measured) < 2:
            return None
        first, last = measured[0].grad_output_norm, measured[-1].grad_output_norm
        if last == 0:
            return math.inf if first > 0 else math.nan
        return first / last

    def grad_norms(self) -> list[float | None]:
        """Gradient-output norm of every layer call, in forward order."""
        return [c.grad_output_norm for c in self.layers]

    def __str__(self) -> str:
        header = ("#", "layer", "type", "call", "|grad out|", "|grad W|", "|W|",
                  "|grad W|/|W|", "saturated", "dead")
        rows = [header]
        for c in self.layers:
            rows.append((
                str(c.index),
                c.name or "(model)",
                c.type,
                f"{c.call}/{c.calls}",
                _fmt(c.grad_output_norm),
                _fmt(c.param_grad_norm),
                _fmt(c.weight_norm),
                _fmt(c.ratio),
                _pct(c.saturated_fraction),
                _pct(c.dead_fraction),
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w)
                           for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"diagnosis: {self.diagnosis} ({self.reason})")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def plot(self, ax: Any = None, label: str | None = None) -> Any:
        """Gradient norm at each layer call's output on a log scale, input side on the
        left; returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        xs = [c.index for c in self.layers if c.grad_output_norm]
        ys = [c.grad_output_norm for c in self.layers if c.grad_output_norm]
        ax.semilogy(xs, ys, marker=".", label=label or self.diagnosis)
        ax.set_xlabel("layer call (forward order)")
        ax.set_ylabel("|gradient at output|")
        ax.grid(True, which="major", alpha=0.3)
        return ax

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary, used by ``dlsummary gradflow --json``."""
        return {
            "diagnosis": self.diagnosis,
            "reason": self.reason,
            "threshold": self.threshold,
            "fold_change": _jsonable(self.fold_change),
            "notes": list(self.notes),
            "layers": [c.to_dict() for c in self.layers],
        }


class _Recorder(AbstractContextManager):
    """The context manager behind :func:`gradient_flow` (hooks in, statistics out)."""

    def __init__(self, model: nn.Module, threshold: float) -> None:
        self.model = model
        self.threshold = threshold
        self.result = GradientFlow(threshold=threshold)
        self.handles: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        self.call_count: dict[int, int] = {}
        self.param_norm: dict[int, torch.Tensor] = {}
        self.active = False
        self.entered = False
        self.passes = 0
        self.hint_rms: float | None = None

    # -- hooks --------------------------------------------------------------------------
    def _forward_hook(self, module: nn.Module, _inputs: Any, output: Any) -> None:
        if not self.active:
            return
        tensor = _first_float_tensor(output)
        count = self.call_count.get(id(module), 0) + 1
        self.call_count[id(module)] = count
        record: dict[str, Any] = {
            "module": module, "call": count,
            "shape": tuple(tensor.shape) if tensor is not None else (),
            "grad_norm": None, "saturated": None, "dead": None,
        }
        self.calls.append(record)
        if tensor is None:
            return
        with torch.no_grad():
            edge = _SATURATION_EDGE.get(type(module))
            if edge is not None and tensor.numel():
                sample = tensor
                if tensor.dim() > 1 and tensor.shape[0] > SATURATION_SAMPLE:
                    sample = tensor[::-(-tensor.shape[0] // SATURATION_SAMPLE)]
                centre, half_width = edge
                saturated = torch.count_nonzero(torch.sub(sample, centre).abs_() > half_width)
                record["saturated"] = (saturated, sample.numel())
            elif isinstance(module, RECTIFYING) and tensor.numel():
                units = tensor.detach().reshape(tensor.shape[0], -1) if tensor.dim() > 1 \
                    else tensor.detach().reshape(1, -1)
                # outputs are >= 0, so a unit's sum over the batch is 0 iff it is dead
                dead = torch.count_nonzero(units.sum(0) == 0)
                record["dead"] = (dead, units.shape[1])
        if tensor.requires_grad:
            def grad_hook(grad: torch.Tensor, record: dict[str, Any] = record) -> None:
                if self.active:
                    norm = _norm(grad, self.hint_rms)
                    record["grad_norm"] = norm
                    if isinstance(norm, float) and grad.numel():
                        self.hint_rms = norm / math.sqrt(grad.numel())
            self.handles.append(tensor.register_hook(grad_hook))

    def _count_pass(self, *_args: Any) -> None:
        if self.active:
            self.passes += 1

    def _param_hook(self, key: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if self.active:
                self.param_norm[key] = _norm(grad)
        return hook

    # -- context manager ----------------------------------------------------------------
    def __enter__(self) -> GradientFlow:
        if self.entered:
            raise DLSummaryError("a gradient_flow(...) context can be entered only once; "
                                 "write a new 'with gradient_flow(model) as flow:' block")
        self.entered = True
        self.names = _module_names(self.model)
        self.owners = _param_owners(self.model)
        self.active = True
        try:
            self.handles.append(self.model.register_forward_hook(self._count_pass))
            for module in _watched_modules(self.model):
                self.handles.append(module.register_forward_hook(self._forward_hook))
            seen: set[int] = set()
            for param in self.model.parameters():
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    self.handles.append(param.register_hook(self._param_hook(id(param))))
        except BaseException:
            self._remove_hooks()
            raise
        return self.result

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._remove_hooks()
        if exc_type is not None:
            object.__setattr__(self.result, "reason",
                               f"the with-block raised {exc_type.__name__} before finishing")
            return  # the user's exception propagates unchanged
        self._fill_result()

    def _remove_hooks(self) -> None:
        self.active = False
        handles, self.handles = self.handles, []
        for handle in handles:
            handle.remove()

    # -- summary ------------------------------------------------------------------------
    def _fill_result(self) -> None:
        model_type = type(self.model).__name__
        if not self.calls:
            raise DLSummaryError(
                f"gradient_flow({model_type}): no layer of the model ran inside the "
                "with-block; call the model there, e.g. 'loss = loss_fn(model(x), y)'")
        if all(c["grad_norm"] is None for c in self.calls):
            raise DLSummaryError(
                f"gradient_flow({model_type}): no gradient reached any layer; call "
                "loss.backward() inside the with-block, outside torch.no_grad(), on a loss "
                "computed from the model's output")
        values = self._read_back()
        layers = []
        for index, rec in enumerate(self.calls):
            module = rec["module"]
            params = [p for p in module.parameters(recurse=False)]
            weight_norm = param_norm = None
            if params:
                weight_norm = math.sqrt(sum(values[("weight", id(p))] ** 2 for p in params))
                norms = [values[("param", id(p))] for p in params if ("param", id(p)) in values]
                if norms:
                    param_norm = math.sqrt(sum(n * n for n in norms))
            ratio = None
            if param_norm is not None and weight_norm:
                ratio = param_norm / weight_norm
            saturated = dead = None
            if rec["saturated"] is not None:
                saturated = values[("saturated", index)] / max(rec["saturated"][1], 1)
            if rec["dead"] is not None:
                dead = values[("dead", index)] / max(rec["dead"][1], 1)
            grad_norm = values.get(("grad", index))
            layers.append(LayerCall(
                index=index,
                name=self.names.get(id(module), [""])[0],
                type=type(module).__name__,
                call=rec["call"],
                calls=self.call_count[id(module)],
                output_shape=rec["shape"],
                grad_output_norm=grad_norm,
                param_grad_norm=param_norm,
                weight_norm=weight_norm,
                ratio=ratio,
                saturated_fraction=saturated,
                dead_fraction=dead,
                shared=self._sharing_note(module),
            ))
        diagnosis, reason = _diagnose(layers, self.threshold)
        notes = _notes(layers)
        if self.passes > 1:
            notes.insert(0, f"the model ran {self.passes} forward passes inside the block; "
                            "every layer call of every pass is listed (record one pass for a "
                            "per-layer picture)")
        object.__setattr__(self.result, "layers", tuple(layers))
        object.__setattr__(self.result, "diagnosis", diagnosis)
        object.__setattr__(self.result, "reason", reason)
        object.__setattr__(self.result, "notes", tuple(notes))

    def _read_back(self) -> dict[tuple[str, int], float]:
        """All 0-d statistics, read back with one transfer per device."""
        keys: list[tuple[str, int]] = []
        tensors: list[torch.Tensor | float] = []
        for index, rec in enumerate(self.calls):
            if rec["grad_norm"] is not None:
                keys.append(("grad", index))
                tensors.append(rec["grad_norm"])
            if rec["saturated"] is not None:
                keys.append(("saturated", index))
                tensors.append(rec["saturated"][0])
            if rec["dead"] is not None:
                keys.append(("dead", index))
                tensors.append(rec["dead"][0])
        for key, value in self.param_norm.items():
            keys.append(("param", key))
            tensors.append(value)
        weights = {id(p): p for rec in self.calls for p in rec["module"].parameters(recurse=False)}
        for key, param in weights.items():
            keys.append(("weight", key))
            tensors.append(_norm(param))
        out: dict[tuple[str, int], float] = {}
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            if isinstance(t, torch.Tensor):
                by_device.setdefault(t.device, []).append(i)
            else:
                out[keys[i]] = float(t)
        for positions in by_device.values():
            wide = torch.float32 if tensors[positions[0]].device.type == "mps" else torch.float64
            stacked = torch.stack([tensors[i].to(wide) for i in positions]).cpu()
            for i, value in zip(positions, stacked.tolist(), strict=True):
                out[keys[i]] = value
        return out

    def _sharing_note(self, module: nn.Module) -> str:
        calls = self.call_count[id(module)]
        if self.passes > 1 and calls % self.passes == 0:
            calls //= self.passes  # several forward passes ran in the block: calls per pass
        names = self.names.get(id(module), [])
        params = list(module.parameters(recurse=False))
        parts = []
        if calls > 1:
            parts.append(f"called {calls} times in one pass")
        if len(names) > 1:
            shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"one object registered under {len(names)} names ({shown})")
        others = sorted({owner for p in params for owner in self.owners.get(id(p), [])
                         if owner not in names})
        if others:
            parts.append("parameters also owned by " + ", ".join(repr(o) for o in others[:3]))
        if not parts:
            return ""
        note = "shared: " + "; ".join(parts)
        if params and (calls > 1 or others):
            note += "; its parameter gradient is the sum over all uses"
        return note


def gradient_flow(model: nn.Module, *, threshold: float = 1e3,
                  ) -> AbstractContextManager[GradientFlow]:
    """Record per-layer-call gradient statistics of one forward and backward pass.

    Use as ``with gradient_flow(model) as flow: ...``: run the forward pass and
    ``loss.backward()`` inside the block; ``flow`` (a :class:`GradientFlow`) is complete
    when the block exits. Hooks are removed on exit, also when the block raises; the model
    is not changed. The diagnosis is 'vanishing' ('exploding') when the gradient norm at
    the first layer call is more than ``threshold`` times smaller (larger) than at the
    last one, or 'exploding' when a gradient is not finite.
    """
    if not isinstance(model, nn.Module):
        raise DLSummaryError(
            f"gradient_flow expects a torch.nn.Module, got {type(model).__name__}; pass "
            "the model itself, e.g. 'with gradient_flow(model) as flow:'")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not threshold > 1 or math.isinf(threshold):
        raise DLSummaryError(
            f"gradient_flow(threshold={threshold!r}): the threshold is a fold change of the "
            "gradient norm and must be a finite number > 1, e.g. threshold=1e3")
    return _Recorder(model, float(threshold))


# -- helpers ----------------------------------------------------------------------------
def _norm(tensor: torch.Tensor, hint_rms: float | None = None) -> torch.Tensor | float:
    """L2 norm (a 0-d float64 tensor on accelerators, a float on the CPU) without the
    underflow of a float32 norm.

    Gradients of 1e-20 (common in a vanishing flow) square to below float32's smallest
    normal number: a float32 norm returns 0 (and, on the CPU, slowly: subnormal arithmetic).
    On accelerators the sum is taken in float64 (one pass, no synchronisation). On the CPU,
    where reading a number back is free: a float32 dot product when the gradient one layer
    later (``hint_rms``, its root-mean-square) and the result show it is safely in range,
    else BLAS ``snrm2``, which scales as it goes and is exact at any magnitude.
    """
    tensor = tensor.detach()
    if tensor.dtype == torch.float64:
        return torch.linalg.vector_norm(tensor)
    if tensor.device.type == "mps":  # no float64 there: scale by the largest magnitude
        largest = tensor.abs().amax().to(torch.float32)
        safe = torch.where(largest > 0, largest, torch.ones_like(largest))
        return torch.linalg.vector_norm(tensor.to(torch.float32) / safe) * safe
    if tensor.device.type != "cpu":
        return torch.linalg.vector_norm(tensor, dtype=torch.float64)
    if not tensor.numel():
        return 0.0
    flat = tensor.to(torch.float32).contiguous().view(-1)
    if hint_rms is None or _SAFE_LOW < hint_rms < _SAFE_HIGH:
        norm = float(torch.dot(flat, flat)) ** 0.5  # BLAS sdot: the fastest pass
        if norm / math.sqrt(flat.numel()) >= _SAFE_LOW and norm <= _SAFE_HIGH:
            return norm
    return float(_snrm2()(flat.numpy()))


@functools.lru_cache(maxsize=1)
def _snrm2() -> Any:
    from scipy.linalg.blas import snrm2  # scipy comes with scikit-learn

    return snrm2


#: A float32 sum of squares is trusted when the root-mean-square value is at least
#: _SAFE_LOW and the norm at most _SAFE_HIGH. Only elements below 1.1e-19 square to
#: subnormals and get lost; they hold at most (1.1e-19 / RMS)^2 of the total, below 1e-8
#: of it for an RMS of 1e-15. Squares overflow float32 above 1.8e19.
_SAFE_LOW, _SAFE_HIGH = 1e-15, 1e18


def _first_float_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_float_tensor(item)
            if found is not None:
                return found
    return None


def _watched_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Leaf modules, and modules that own parameters directly (their calls are layers)."""
    seen: set[int] = set()
    for module in model.modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        has_children = any(True for _ in module.children())
        has_params = any(True for _ in module.parameters(recurse=False))
        if not has_children or has_params:
            yield module


def _module_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _param_owners(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> qualified names of every distinct module object that owns it."""
    owners: dict[int, list[str]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    return owners


def _diagnose(layers: list[LayerCall], threshold: float) -> tuple[str, str]:
    for c in layers:
        for label, value in (("gradient at the output", c.grad_output_norm),
                             ("parameter gradient", c.param_grad_norm)):
            if value is not None and not math.isfinite(value):
                return "exploding", (f"the {label} of layer call #{c.index} "
                                     f"({c.name or '(model)'}, {c.type}) is {value}")
    measured = [c for c in layers if c.grad_output_norm is not None]
    if len(measured) < 2:
        return "healthy", "only one layer call received a gradient; nothing to compare"
    first, last = measured[0], measured[-1]
    where = (f"from the last layer call (#{last.index}, {last.type}) "
             f"to the first (#{first.index}, {first.type})")
    a, b = first.grad_output_norm, last.grad_output_norm
    if b == 0 and a == 0:
        return "vanishing", "the gradient is exactly zero at every layer call"
    if a == 0:
        return "vanishing", f"gradient norm falls to exactly zero {where}"
    if b == 0:
        return "exploding", f"gradient norm grows from exactly zero {where}"
    fold = a / b
    if fold < 1 / threshold:
        return "vanishing", f"gradient norm falls {_fold(1 / fold)}-fold {where}"
    if fold > threshold:
        return "exploding", f"gradient norm grows {_fold(fold)}-fold {where}"
    change = "falls" if fold < 1 else "grows"
    return "healthy", (f"gradient norm {change} only {_fold(max(fold, 1 / fold))}-fold {where}, "
                       f"within the threshold of {_fold(threshold)}")


def _notes(layers: list[LayerCall]) -> list[str]:
    notes = []
    seen: set[str] = set()
    for c in layers:
        if c.shared and c.name not in seen:
            seen.add(c.name)
            notes.append(f"{c.name or '(model)'} ({c.type}) {c.shared}")
    saturating = [c.saturated_fraction for c in layers if c.saturated_fraction is not None]
    if saturating:
        notes.append(f"saturated units: {_pct(max(saturating))} at most, "
                     f"{_pct(sum(saturating) / len(saturating))} on average over "
                     f"{len(saturating)} saturating activation calls")
    dead = [c.dead_fraction for c in layers if c.dead_fraction is not None]
    if dead and max(dead) > 0:
        notes.append(f"dead units: {_pct(max(dead))} at most, over {len(dead)} ReLU calls")
    return notes


def _fold(value: float) -> str:
    if value >= 1e4:
        return f"10^{math.log10(value):.0f}"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, tuple):
        return list(value)
    return value
