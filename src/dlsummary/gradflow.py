"""Gradient-flow diagnostics: how large the gradient is at every layer *call* of one
backward pass, whether it vanishes or explodes with depth (judged at every layer, per
unit and per layer of depth), which activations sit in their flat regions (saturated
sigmoid/tanh units, dead ReLU units), and, for recurrent layers on request, how the
gradient reaching the input changes over the time steps.

Usage::

    with gradient_flow(model) as flow:
        loss = loss_fn(model(x), y)
        loss.backward()        # flow is filled when backward() finishes
    print(flow)            # one row per layer call, in forward order
    flow.diagnosis         # "vanishing" | "exploding" | "healthy"
    flow.reason            # the worst layer call and the measurement behind the diagnosis

Why per *call* and not per module: a module object used at several places of the graph
(``[nn.Linear(H, H), nn.Sigmoid()] * 24`` puts the *same* two objects 24 times into a
``Sequential``) receives a different gradient at each place; the parameters' gradient is
the sum over all its calls. The table shows every call and points out the sharing.

Every trainable parameter is accounted for: a parameter of a module that never runs its
own ``forward`` (``nn.MultiheadAttention`` uses its ``out_proj`` through
``F.multi_head_attention_forward``) is counted in the row of its nearest ancestor that
ran, and named in a note; parameters that received no gradient are named too.

Cost: statistics stay on the device as 0-d tensors while the passes run and are read back
once, when a backward pass finishes (no synchronisation per layer).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlsummary.errors import DLSummaryError

__all__ = ["GradientFlow", "LayerCall", "gradient_flow"]

#: Activations whose derivative is small at both ends: a unit is *saturated* when its
#: local derivative is below 9.75 % of the maximum (sigmoid output outside
#: [0.025, 0.975], tanh output outside [-0.95, 0.95]; the two thresholds are the same
#: point, since tanh(x) = 2 sigmoid(2x) - 1).
SATURATING = (nn.Sigmoid, nn.Tanh)
#: Where the test is made, and the half-width of the non-saturated range around 0 there:
#: a sigmoid's output is outside [0.025, 0.975] exactly when its input is outside
#: [-ln 39, ln 39] (testing the input saves a subtraction), a tanh's output is tested as is.
_SATURATION_EDGE = {nn.Sigmoid: ("input", math.log(39.0)), nn.Tanh: ("output", 0.95)}

#: Activations that output exactly zero on a half-line: a unit is *dead* when it is zero
#: for every example of the batch (its incoming weights then receive no gradient).
RECTIFYING = (nn.ReLU, nn.ReLU6)

#: Saturated fractions are counted on an evenly spaced sample of the batch (every k-th
#: example): enough examples for about SATURATION_VALUES values, and at least
#: SATURATION_EXAMPLES examples (for a 128-unit layer: 128 of the batch's examples). The
#: estimate's standard error is below 0.4 percentage points for independent units (at most
#: 0.5/sqrt(64), 6 points, if all units of an example moved together); reading a small
#: sample keeps the tool's overhead small. Dead units are counted on the whole batch (a
#: unit is dead only if *every* example leaves it at 0).
SATURATION_VALUES = 2 ** 14
SATURATION_EXAMPLES = 64


#: A fall (or growth) of the per-unit gradient smaller than this is never called vanishing
#: (exploding), however few layers it took: two layers that halve the gradient each are fine.
MIN_FOLD = 10.0

#: The fields of a GradientFlow that are measured; reading one before any backward pass has
#: finished inside the ``with`` block is an error (they would still be empty).
_MEASURED = frozenset({"layers", "diagnosis", "reason", "notes", "worst", "no_gradient",
                       "fold_change", "grad_norms"})


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
    maximum (on an evenly spaced sample of the batch: see ``SATURATION_VALUES``); NaN
    outputs count as saturated (no useful gradient passes them either)."""
    dead_fraction: float | None
    """ReLU/ReLU6 only: fraction of units that are zero for every example in the batch."""
    shared: str
    """Empty, or a note that this module's weights are shared (several calls, or several
    names, or parameters that another module also owns)."""
    per_unit_ratio: float | None = None
    """This call's output gradient relative to the last layer call's, *per unit*: the
    milder of the ratio of norms and the ratio of root-mean-square values per element, so
    that neither a smaller tensor (a U-Net's bottleneck) nor a wider one (an MLP's hidden
    layer before a 1-unit head) passes for a vanishing or exploding gradient."""
    depth: int = 0
    """Parameterised layer calls between this call's output and the last call's output
    (inclusive of the last): how many layers the gradient went back through to get here."""
    parameters: tuple[str, ...] = ()
    """Qualified names of the parameters counted in param_grad_norm and weight_norm."""
    step_grad_norms: tuple[float, ...] | None = None
    """Recurrent layers with ``per_step=True`` only: L2 norm of the gradient reaching the
    layer's *input* at each time step (step 0 first)."""

    @property
    def per_layer(self) -> float | None:
        """per_unit_ratio ** (1 / depth): the average change of the gradient per layer on
        its way back from the last call to this one (< 1: it shrinks)."""
        if self.per_unit_ratio is None or not self.depth or not self.per_unit_ratio > 0 \
                or not math.isfinite(self.per_unit_ratio):
            return None
        return self.per_unit_ratio ** (1 / self.depth)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (non-finite numbers become the strings 'inf'/'nan')."""
        record = {key: _jsonable(value) for key, value in asdict(self).items()}
        record["per_layer"] = _jsonable(self.per_layer)
        if self.step_grad_norms is not None:
            record["step_grad_norms"] = [_jsonable(v) for v in self.step_grad_norms]
        return record


@dataclass(frozen=True)
class GradientFlow:
    """Per-call gradient statistics of one forward and backward pass, and a diagnosis.

    Returned by ``gradient_flow(model).__enter__``; its fields are filled in when a
    backward pass inside the ``with`` block finishes (and again when the block exits).
    Reading them earlier raises ``DLSummaryError``.
    """

    layers: tuple[LayerCall, ...] = ()
    diagnosis: str = "not measured"
    """'vanishing', 'exploding' or 'healthy' ('not measured' if the block raised)."""
    reason: str = "the with-block has not finished"
    """The measurement behind the diagnosis: the worst layer call, its per-unit ratio to
    the last layer call, over how many layers, and the thresholds."""
    threshold: float = 1e3
    """Per-unit fold change between any layer call and the last above which the flow is
    vanishing or exploding, whatever the depth."""
    per_layer_threshold: float = 1.5
    """Average fold change per layer of depth above which the flow is vanishing or
    exploding (when the change is also at least MIN_FOLD = 10-fold in all)."""
    worst: int | None = None
    """Index of the layer call named in the reason (the smallest or largest per-unit ratio)."""
    notes: tuple[str, ...] = field(default=())
    """Other findings: weight sharing, parameters used functionally or without gradient,
    saturation, dead units, the gradient over time steps."""
    no_gradient: tuple[str, ...] = ()
    """Qualified names of trainable parameters that received no gradient in the pass."""
    _pending: bool = field(default=False, repr=False, compare=False)

    def __getattribute__(self, name: str) -> Any:
        if name in _MEASURED and object.__getattribute__(self, "_pending"):
            raise DLSummaryError(
                f"GradientFlow.{name} is read before it is measured: it is filled when "
                "loss.backward() finishes inside the 'with gradient_flow(model) as flow:' "
                "block (or when the block exits); call backward() first, or read it after "
                "the block")
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        if object.__getattribute__(self, "_pending"):
            return "GradientFlow(<pending: filled when backward() finishes in the block>)"
        return (f"GradientFlow(diagnosis={self.diagnosis!r}, reason={self.reason!r}, "
                f"{len(self.layers)} layer calls, {len(self.notes)} notes)")

    @property
    def fold_change(self) -> float | None:
        """Gradient-output norm at the first layer call divided by the norm at the last
        (< 1: the gradient shrinks on its way back to the input). The diagnosis looks at
        every call, per unit (see ``LayerCall.per_unit_ratio``); this is the plain
        end-to-end figure."""
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
        header = ("#", "layer", "type", "call", "|grad out|", "per unit", "|grad W|", "|W|",
                  "|grad W|/|W|", "saturated", "dead")
        rows = [header]
        for c in self.layers:
            rows.append((
                str(c.index),
                c.name or "(model)",
                c.type,
                f"{c.call}/{c.calls}",
                _fmt(c.grad_output_norm),
                _fmt(c.per_unit_ratio),
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
        left, the worst call circled; returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        xs = [c.index for c in self.layers if c.grad_output_norm]
        ys = [c.grad_output_norm for c in self.layers if c.grad_output_norm]
        (line,) = ax.semilogy(xs, ys, marker=".", label=label or self.diagnosis)
        if self.worst is not None and self.layers[self.worst].grad_output_norm:
            ax.scatter([self.worst], [self.layers[self.worst].grad_output_norm], s=80,
                       facecolors="none", edgecolors=line.get_color(), zorder=3)
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
            "per_layer_threshold": self.per_layer_threshold,
            "worst": self.worst,
            "fold_change": _jsonable(self.fold_change),
            "notes": list(self.notes),
            "no_gradient": list(self.no_gradient),
            "layers": [c.to_dict() for c in self.layers],
        }


class _Recorder(AbstractContextManager):
    """The context manager behind :func:`gradient_flow` (hooks in, statistics out)."""

    def __init__(self, model: nn.Module, threshold: float, per_layer: float,
                 per_step: bool) -> None:
        self.model = model
        self.threshold = threshold
        self.per_layer = per_layer
        self.per_step = per_step
        self.result = GradientFlow(threshold=threshold, per_layer_threshold=per_layer,
                                   _pending=True)
        self.handles: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        self.call_count: dict[int, int] = {}
        self.param_norm: dict[int, Any] = {}
        self.steps: dict[int, list[dict[str, Any]]] = {}
        self.kinds: dict[int, Any] = {}  # module id -> saturation edge or "rectifying"
        self.active = False
        self.entered = False
        self.passes = 0
        self.hint_rms: float | None = None
        self.dirty = False
        self.callback_queued = False

    # -- hooks --------------------------------------------------------------------------
    def _forward_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        # the hot path: runs at every layer call, so it does as little as it can
        if not self.active:
            return
        tensor = _first_float_tensor(output)
        key = id(module)
        count = self.call_count.get(key, 0) + 1
        self.call_count[key] = count
        record: dict[str, Any] = {
            "module": module, "call": count,
            "shape": tuple(tensor.shape) if tensor is not None else (),
            "grad_norm": None, "saturated": None, "dead": None, "steps": None,
        }
        self.calls.append(record)
        if self.steps:
            pending_steps = self.steps.get(key)
            if pending_steps:
                record["steps"] = pending_steps.pop()
        if tensor is None:
            return
        kind = self.kinds.get(key)
        if kind is not None and tensor.numel():
            values = tensor.detach()  # no graph is recorded for the statistics
            if kind == "rectifying":
                units = values.reshape(values.shape[0], -1) if values.dim() > 1 \
                    else values.reshape(1, -1)
                # outputs are >= 0, so a unit's sum over the batch is 0 iff it is dead;
                # the live units are counted here (one operation fewer), the dead ones later
                record["dead"] = (torch.count_nonzero(units.sum(0)), units.shape[1])
            else:
                where, half_width = kind
                if where == "input":
                    given = _first_float_tensor(inputs)
                    if given is not None and given.shape == values.shape:
                        values = given.detach()
                    else:  # called with a keyword (the hook sees no input): the output
                        values, half_width = torch.sub(values, 0.5), 0.475
                if values.dim() > 1:
                    width = values.numel() // values.shape[0]
                    examples = max(SATURATION_EXAMPLES, -(-SATURATION_VALUES // max(width, 1)))
                    if values.shape[0] > examples:
                        values = values[::-(-values.shape[0] // examples)]
                # hardshrink zeroes exactly the values with |v| <= half_width: the saturated
                # ones (and NaN) are what stays non-zero (each operation between two layers
                # costs far more than its arithmetic, the caches being cold: use few)
                saturated = torch.count_nonzero(F.hardshrink(values, half_width))
                record["saturated"] = (saturated, values.numel())
        if tensor.requires_grad:
            node = tensor.grad_fn
            if node is None:  # a leaf (an input passed through): a tensor hook
                self.handles.append(tensor.register_hook(
                    functools.partial(self._record_grad, record)))
            else:
                # a pre-hook on the node that receives this output's gradient: the same
                # gradient a tensor hook sees, for less (on mlpirate a tensor hook per call
                # cost 3 to 5 % of the pass more than these pre-hooks)
                self.handles.append(node.register_prehook(functools.partial(
                    self._record_output_grad, record, tensor.output_nr)))

    def _record_output_grad(self, record: dict[str, Any], slot: int,
                            grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
        grad = grad_outputs[slot]
        if grad is not None:
            self._record_grad(record, grad)

    def _record_grad(self, record: dict[str, Any], grad: torch.Tensor) -> None:
        """The gradient reaching one layer call's output: its norm, kept on the device."""
        if self.active:
            if not self.callback_queued:
                self._backward_seen()
            self.dirty = True
            norm = _norm(grad, self.hint_rms)
            record["grad_norm"] = norm
            if isinstance(norm, float) and grad.numel():
                self.hint_rms = norm / math.sqrt(grad.numel())

    def _step_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        """Recurrent layers with per_step: watch the gradient reaching the input sequence."""
        if not self.active or not args or not isinstance(args[0], torch.Tensor) \
                or not args[0].is_floating_point() or not torch.is_grad_enabled():
            return None
        x = args[0]
        time_dim = 0 if x.dim() == 2 or not getattr(module, "batch_first", False) else 1
        steps: dict[str, Any] = {"norms": None, "time_dim": time_dim}
        self.steps.setdefault(id(module), []).append(steps)
        if not x.requires_grad:  # an input from the data: give autograd a reason to reach it
            x = x + torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
            args = (x, *args[1:])

        def hook(grad: torch.Tensor) -> None:
            if self.active:
                self._backward_seen()
                other = [d for d in range(grad.dim()) if d != time_dim]
                steps["norms"] = torch.linalg.vector_norm(
                    grad.detach().to(torch.float64 if grad.device.type != "mps"
                                     else torch.float32), dim=other)
        self.handles.append(x.register_hook(hook))
        return args

    def _count_pass(self, *_args: Any) -> None:
        if self.active:
            self.passes += 1

    def _param_hook(self, key: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if self.active:
                self._backward_seen()
                self.param_norm[key] = _norm(grad)
        return hook

    def _backward_seen(self) -> None:
        """A backward pass is running: fill the result when it finishes."""
        self.dirty = True
        if not self.callback_queued:
            self.callback_queued = True
            # no engine callbacks (another torch): the result is filled on exit instead
            with contextlib.suppress(AttributeError, RuntimeError):
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)

    def _backward_done(self) -> None:
        self.callback_queued = False
        if self.active and self.dirty:
            # never break the user's backward(): whatever fails here, the exit fills the
            # result again (the flow stays pending) and reports it
            with contextlib.suppress(Exception):
                self._fill_result()

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
                kind = _SATURATION_EDGE.get(type(module))
                if kind is None and isinstance(module, RECTIFYING):
                    kind = "rectifying"
                if kind is not None:
                    self.kinds[id(module)] = kind
                if self.per_step and isinstance(module, nn.RNNBase):
                    self.handles.append(module.register_forward_pre_hook(self._step_pre_hook))
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
        try:
            if exc_type is not None:
                self._remove_hooks()
                object.__setattr__(self.result, "_pending", False)
                object.__setattr__(self.result, "diagnosis", "not measured")
                object.__setattr__(
                    self.result, "reason",
                    f"the with-block raised {exc_type.__name__} before finishing")
                return  # the user's exception propagates unchanged
            if self.dirty or object.__getattribute__(self.result, "_pending"):
                self._fill_result()
        finally:
            self._remove_hooks()

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
        if all(c["grad_norm"] is None for c in self.calls) and not self.param_norm:
            raise DLSummaryError(
                f"gradient_flow({model_type}): no gradient reached any layer; call "
                "loss.backward() inside the with-block, outside torch.no_grad(), on a loss "
                "computed from the model's output")
        self.dirty = False
        row_params, functional, unused = self._attribute_parameters()
        values = self._read_back(row_params)
        param_names = _param_names(self.model)
        depth_after = _depths([rec["module"] for rec in self.calls], row_params)
        per_module: dict[int, tuple[Any, ...]] = {}
        layers = []
        measured = [i for i, rec in enumerate(self.calls) if ("grad", i) in values]
        last = measured[-1] if measured else None
        last_norm = values[("grad", last)] if last is not None else None
        last_shape = self.calls[last]["shape"] if last is not None else ()
        for index, rec in enumerate(self.calls):
            module = rec["module"]
            key = id(module)
            fixed = per_module.get(key)
            if fixed is None:  # what every call of this module shares, worked out once
                params = row_params.get(key, [])
                weight_norm = param_norm = ratio = None
                if params:
                    weight_norm = math.sqrt(sum(values[("weight", id(p))] ** 2 for p in params))
                    norms = [values[("param", id(p))] for p in params
                             if ("param", id(p)) in values]
                    if norms:
                        param_norm = math.sqrt(sum(n * n for n in norms))
                    if param_norm is not None and weight_norm:
                        ratio = param_norm / weight_norm
                fixed = per_module[key] = (
                    self.names.get(key, [""])[0], type(module).__name__,
                    self.call_count[key], self._sharing_note(module),
                    tuple(param_names.get(id(p), "?") for p in params),
                    weight_norm, param_norm, ratio)
            name, type_name, calls, shared, parameters, weight_norm, param_norm, ratio = fixed
            saturated = dead = None
            if rec["saturated"] is not None:
                saturated = values[("saturated", index)] / max(rec["saturated"][1], 1)
            if rec["dead"] is not None:
                units = rec["dead"][1]
                dead = (units - values[("dead", index)]) / max(units, 1)
            grad_norm = values.get(("grad", index))
            per_unit = None
            if grad_norm is not None and last is not None:
                per_unit = _per_unit_ratio(grad_norm, rec["shape"], last_norm, last_shape)
            steps = values.get(("steps", index))
            layers.append(LayerCall(
                index=index,
                name=name,
                type=type_name,
                call=rec["call"],
                calls=calls,
                output_shape=rec["shape"],
                grad_output_norm=grad_norm,
                param_grad_norm=param_norm,
                weight_norm=weight_norm,
                ratio=ratio,
                saturated_fraction=saturated,
                dead_fraction=dead,
                shared=shared,
                per_unit_ratio=per_unit,
                depth=(depth_after[index] - depth_after[last]
                       if last is not None and index <= last else 0),
                parameters=parameters,
                step_grad_norms=tuple(steps) if steps is not None else None,
            ))
        no_gradient = tuple(name for key, name in param_names.items()
                            if key in self.param_ids and ("param", key) not in values)
        diagnosis, reason, worst = _diagnose(layers, self.threshold, self.per_layer)
        step_verdict = _diagnose_steps(layers, self.threshold, self.per_layer)
        notes = _notes(layers)
        if step_verdict is not None:
            step_diagnosis, step_reason = step_verdict
            if diagnosis == "healthy" and step_diagnosis != "healthy":
                diagnosis, reason = step_diagnosis, step_reason
            else:
                notes.insert(0, f"over time steps: {step_diagnosis} ({step_reason})")
        if self.passes > 1:
            notes.insert(0, f"the model ran {self.passes} forward passes inside the block; "
                            "every layer call of every pass is listed (record one pass for a "
                            "per-layer picture)")
        notes.extend(_parameter_notes(functional, unused, no_gradient, self.names, param_names))
        object.__setattr__(self.result, "layers", tuple(layers))
        object.__setattr__(self.result, "diagnosis", diagnosis)
        object.__setattr__(self.result, "reason", reason)
        object.__setattr__(self.result, "worst", worst)
        object.__setattr__(self.result, "notes", tuple(notes))
        object.__setattr__(self.result, "no_gradient", no_gradient)
        object.__setattr__(self.result, "_pending", False)

    @functools.cached_property
    def param_ids(self) -> set[int]:
        return {id(p) for p in self.model.parameters() if p.requires_grad}

    def _attribute_parameters(self) -> tuple[dict[int, list[nn.Parameter]],
                                             dict[int, list[nn.Module]], list[nn.Module]]:
        """Which parameters each called module's rows count: its own, and those of
        descendants that never ran their own forward (used functionally by it). Returns
        (module id -> parameters, called module id -> functionally used descendants,
        modules with parameters and no called ancestor)."""
        called = {id(rec["module"]): rec["module"] for rec in self.calls}
        rows: dict[int, list[nn.Parameter]] = {}
        functional: dict[int, list[nn.Module]] = {}
        unused: list[nn.Module] = []
        counted: set[int] = set()
        by_name = dict(self.model.named_modules(remove_duplicate=False))
        for name, module in self.model.named_modules():
            own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
            if not own:
                continue
            if id(module) in called:
                owner = module
            else:
                owner = None
                parts = name.split(".") if name else []
                while parts:
                    parts.pop()
                    ancestor = by_name.get(".".join(parts))
                    if ancestor is not None and id(ancestor) in called:
                        owner = ancestor
                        break
                if owner is None:
                    unused.append(module)
                    continue
                functional.setdefault(id(owner), []).append(module)
            counted.update(id(p) for p in own)
            rows.setdefault(id(owner), []).extend(own)
        return rows, functional, unused

    def _read_back(self, row_params: dict[int, list[nn.Parameter]],
                   ) -> dict[tuple[str, int], Any]:
        """All statistics, read back with one transfer per device."""
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
        weights = {id(p): p for params in row_params.values() for p in params}
        for key, param in weights.items():
            keys.append(("weight", key))
            tensors.append(_norm(param))
        out: dict[tuple[str, int], Any] = {}
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
        for index, rec in enumerate(self.calls):
            if rec["steps"] is not None and rec["steps"]["norms"] is not None:
                out[("steps", index)] = rec["steps"]["norms"].cpu().tolist()
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


def gradient_flow(model: nn.Module, *, threshold: float = 1e3, per_layer: float = 1.5,
                  per_step: bool = False) -> AbstractContextManager[GradientFlow]:
    """Record per-layer-call gradient statistics of one forward and backward pass.

    Use as ``with gradient_flow(model) as flow: ...``: run the forward pass and
    ``loss.backward()`` inside the block; ``flow`` (a :class:`GradientFlow`) is filled when
    backward() finishes, and reading it earlier is an error. Hooks are removed on exit,
    also when the block raises; the model is not changed.

    The diagnosis compares the gradient at *every* layer call with the one at the last
    call, per unit (``LayerCall.per_unit_ratio``), and relative to the number of layers in
    between: 'vanishing' ('exploding') when some call's gradient is more than ``threshold``
    times smaller (larger), or at least 10 times smaller (larger) *and* more than
    ``per_layer`` times smaller (larger) per layer on average; 'exploding' also when a
    gradient is not finite. The reason names the worst call. ``per_step=True`` also
    records, for recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``), the gradient
    reaching the input at each time step, and judges its fall from the last step to the
    first by the same rule (an input that does not require grad gets a zero added to it
    that does, so that autograd reaches it; the values are unchanged).
    """
    if not isinstance(model, nn.Module):
        raise DLSummaryError(
            f"gradient_flow expects a torch.nn.Module, got {type(model).__name__}; pass "
            "the model itself, e.g. 'with gradient_flow(model) as flow:'")
    for label, value, example in (("threshold", threshold, "threshold=1e3"),
                                  ("per_layer", per_layer, "per_layer=1.5")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not value > 1 or math.isinf(value):
            raise DLSummaryError(
                f"gradient_flow({label}={value!r}): the {label} is a fold change of the "
                f"gradient norm and must be a finite number > 1, e.g. {example}")
    if not isinstance(per_step, bool):
        raise DLSummaryError(f"gradient_flow(per_step={per_step!r}): give True or False")
    return _Recorder(model, float(threshold), float(per_layer), per_step)


# -- helpers ----------------------------------------------------------------------------
def _norm(tensor: torch.Tensor, hint_rms: float | None = None) -> torch.Tensor | float:
    """L2 norm (a 0-d float64 tensor on accelerators, a float on the CPU) without the
    underflow of a float32 norm.

    Gradients of 1e-20 (common in a vanishing flow) square to below float32's smallest
    normal number: a float32 norm returns 0 (and, on the CPU, slowly: subnormal arithmetic).
    On accelerators the sum is taken in float64 (one pass, no synchronisation). On the CPU,
    where reading a number back is free: a float32 norm when the gradient one layer
    later (``hint_rms``, its root-mean-square) and the result show it is safely in range,
    else BLAS ``snrm2``, which scales as it goes and is exact at any magnitude.
    """
    if tensor.requires_grad:  # a gradient of a create_graph=True backward
        tensor = tensor.detach()
    dtype = tensor.dtype
    if dtype is torch.float64:
        return torch.linalg.vector_norm(tensor)
    if tensor.device.type == "mps":  # no float64 there: scale by the largest magnitude
        largest = tensor.abs().amax().to(torch.float32)
        safe = torch.where(largest > 0, largest, torch.ones_like(largest))
        return torch.linalg.vector_norm(tensor.to(torch.float32) / safe) * safe
    if tensor.device.type != "cpu":
        return torch.linalg.vector_norm(tensor, dtype=torch.float64)
    size = tensor.numel()
    if not size:
        return 0.0
    if dtype is not torch.float32:
        tensor = tensor.to(torch.float32)
    if hint_rms is None or _SAFE_LOW < hint_rms < _SAFE_HIGH:
        # ATen's reduction: one pass, on all torch threads (BLAS sdot is as fast on one
        # thread but 10x slower than this on two, where its threads fight torch's)
        norm = float(torch.linalg.vector_norm(tensor))
        if norm >= _SAFE_LOW * math.sqrt(size) and norm <= _SAFE_HIGH:
            return norm
    return float(_snrm2()(tensor.reshape(-1).numpy()))


@functools.lru_cache(maxsize=1)
def _snrm2() -> Any:
    from scipy.linalg.blas import snrm2  # scipy comes with scikit-learn

    return snrm2


#: A float32 sum of squares is trusted when the root-mean-square value is at least
#: _SAFE_LOW and the norm at most _SAFE_HIGH. Only elements below 1.1e-19 square to
#: subnormals, rounded to a multiple of 1.4e-45: an error of at most 7e-46 / RMS^2 of the
#: total in all, 7e-14 for an RMS of 1e-16 (and they hold at most (1.1e-19 / RMS)^2
#: of it, 1.2e-6). Below that RMS, subnormal arithmetic makes the float32 norm slower than
#: snrm2. Squares overflow float32 above 1.8e19.
_SAFE_LOW, _SAFE_HIGH = 1e-16, 1e18


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


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters() if p.requires_grad}


def _depths(modules: list[nn.Module], row_params: dict[int, list[nn.Parameter]]) -> list[int]:
    """For every call: how many parameterised calls come after it in forward order."""
    after, count = [0] * len(modules), 0
    for i in range(len(modules) - 1, -1, -1):
        after[i] = count
        if row_params.get(id(modules[i])):
            count += 1
    return after


def _per_unit_ratio(norm: float, shape: tuple[int, ...], ref_norm: float,
                    ref_shape: tuple[int, ...]) -> float | None:
    """The milder of the norm ratio and the per-element RMS ratio (see LayerCall)."""
    if not ref_norm > 0 or not math.isfinite(ref_norm) or not math.isfinite(norm):
        return None
    by_norm = norm / ref_norm
    if by_norm == 0:
        return 0.0
    by_element = by_norm * math.sqrt(max(math.prod(ref_shape), 1) / max(math.prod(shape), 1))
    return min(by_norm, by_element, key=lambda r: abs(math.log(r)))


def _judge(ratio: float, depth: int, threshold: float, per_layer: float) -> str:
    """'vanishing', 'exploding' or 'healthy' for one ratio over ``depth`` layers."""
    rate = ratio ** (1 / max(depth, 1))
    if ratio < 1 / threshold or (ratio < 1 / MIN_FOLD and rate < 1 / per_layer):
        return "vanishing"
    if ratio > threshold or (ratio > MIN_FOLD and rate > per_layer):
        return "exploding"
    return "healthy"


def _where(c: LayerCall) -> str:
    return f"#{c.index} ({c.name or '(model)'}, {c.type})"


def _diagnose(layers: list[LayerCall], threshold: float, per_layer: float,
              ) -> tuple[str, str, int | None]:
    """Diagnosis, reason and the worst call, from every layer call's per-unit ratio."""
    for c in layers:
        for label, value in (("gradient at the output", c.grad_output_norm),
                             ("parameter gradient", c.param_grad_norm)):
            if value is not None and not math.isfinite(value):
                return "exploding", f"the {label} of layer call {_where(c)} is {value}", c.index
    measured = [c for c in layers if c.grad_output_norm is not None]
    if len(measured) < 2:
        return "healthy", "only one layer call received a gradient; nothing to compare", None
    last, earlier = measured[-1], measured[:-1]
    source = f"the last layer call (#{last.index}, {last.type})"
    if last.grad_output_norm == 0:
        if all(c.grad_output_norm == 0 for c in earlier):
            return ("vanishing", "the gradient is exactly zero at every layer call",
                    earlier[0].index)
        grown = next(c for c in earlier if c.grad_output_norm)
        return ("exploding", f"gradient norm grows from exactly zero at {source} to "
                f"{grown.grad_output_norm:.2e} at {_where(grown)}", grown.index)
    zeros = [c for c in earlier if c.grad_output_norm == 0]
    if zeros:
        more = f" (and at {len(zeros) - 1} other calls)" if len(zeros) > 1 else ""
        return ("vanishing", f"gradient norm falls to exactly zero from {source} to "
                f"{_where(zeros[-1])}{more}: no gradient reaches it", zeros[-1].index)
    judged = [(c, _judge(c.per_unit_ratio, c.depth, threshold, per_layer))
              for c in earlier if c.per_unit_ratio is not None]
    if not judged:
        return "healthy", "no layer call's gradient could be compared with the last one's", None
    limits = f"thresholds {_fold(threshold)} in all or {per_layer:.3g} per layer"
    bad = [(c, v) for c, v in judged if v != "healthy"]
    pool = bad or judged
    worst, verdict = max(pool, key=lambda cv: abs(math.log(cv[0].per_unit_ratio)))
    ratio = worst.per_unit_ratio
    fold = max(ratio, 1 / ratio)
    change = "falls" if ratio < 1 else "grows"
    layers_word = "layer" if max(worst.depth, 1) == 1 else "layers"
    rate = fold ** (1 / max(worst.depth, 1))
    detail = (f"gradient norm {change} {_fold(fold)}-fold per unit from {source} to "
              f"{_where(worst)}, over {max(worst.depth, 1)} {layers_word}: "
              f"{rate:.3g}-fold per layer")
    if verdict != "healthy":
        return verdict, f"{detail} ({limits})", worst.index
    return "healthy", f"at worst, {detail}, within the {limits}", worst.index


def _diagnose_steps(layers: list[LayerCall], threshold: float, per_layer: float,
                    ) -> tuple[str, str] | None:
    """The gradient at recurrent layers' inputs over time, last step back to the first."""
    verdicts = []
    for c in layers:
        norms = c.step_grad_norms
        if not norms or len(norms) < 2:
            continue
        if any(not math.isfinite(n) for n in norms):
            verdicts.append(("exploding", f"the input gradient of {_where(c)} is not finite "
                                          "at some time step", math.inf))
            continue
        ref_step = max((t for t, n in enumerate(norms) if n > 0), default=None)
        if ref_step is None:
            verdicts.append(("vanishing", f"the input gradient of {_where(c)} is exactly "
                                          "zero at every time step", math.inf))
            continue
        ref = norms[ref_step]
        zero = [t for t in range(ref_step) if norms[t] == 0]
        if zero:
            verdicts.append(("vanishing", f"the input gradient of {_where(c)} is exactly zero "
                                          f"at step {zero[0]} (of {len(norms)} steps; "
                                          f"{ref:.2e} at step {ref_step})", math.inf))
            continue
        worst_t = max(range(ref_step + 1), key=lambda t: abs(math.log(norms[t] / ref)))
        ratio = norms[worst_t] / ref
        steps = ref_step - worst_t
        verdict = _judge(ratio, steps, threshold, per_layer) if steps else "healthy"
        change = "falls" if ratio < 1 else "grows"
        fold = max(ratio, 1 / ratio)
        verdicts.append((verdict, f"the input gradient of {_where(c)} {change} "
                                  f"{_fold(fold)}-fold from step {ref_step} to step {worst_t}"
                                  f" ({fold ** (1 / max(steps, 1)):.3g}-fold per step)",
                         abs(math.log(fold))))
    if not verdicts:
        return None
    bad = [v for v in verdicts if v[0] != "healthy"] or verdicts
    verdict, reason, _ = max(bad, key=lambda v: v[2])
    return verdict, reason


def _parameter_notes(functional: dict[int, list[nn.Module]], unused: list[nn.Module],
                     no_gradient: tuple[str, ...], names: dict[int, list[str]],
                     param_names: dict[int, str]) -> list[str]:
    notes = []
    if functional:
        pairs = [(names.get(id(m), ["?"])[0], type(m).__name__) for ms in functional.values()
                 for m in ms]
        shown = ", ".join(f"{n} ({t})" for n, t in pairs[:4])
        more = f" and {len(pairs) - 4} more" if len(pairs) > 4 else ""
        notes.append(f"used functionally (no call of their own; their parameters are counted "
                     f"in the row of the nearest ancestor that ran): {shown}{more}")
    if unused:
        shown = ", ".join(f"{names.get(id(m), ['?'])[0] or '(model)'} ({type(m).__name__})"
                          for m in unused[:4])
        more = f" and {len(unused) - 4} more" if len(unused) > 4 else ""
        notes.append(f"modules with parameters that neither ran nor sit inside a module "
                     f"that ran: {shown}{more}")
    if no_gradient:
        shown = ", ".join(no_gradient[:6]) + (f" and {len(no_gradient) - 6} more"
                                              if len(no_gradient) > 6 else "")
        notes.append(f"{len(no_gradient)} trainable parameter(s) received no gradient: {shown}")
    return notes


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
