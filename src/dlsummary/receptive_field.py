"""Receptive fields of PyTorch CNNs: computed from the layers' geometry, and measured.

``receptive_field(model, input_size)`` traces the model with ``torch.fx`` and composes, per
spatial dimension, the geometry of every layer an output depends on. One output element
of a layer with kernel ``k``, stride ``s``, dilation ``d`` and (left) padding ``p`` reads
``d (k - 1) + 1`` consecutive positions of its input, so with ``r``, ``j`` and ``start`` the
receptive field size, effective stride ("jump") and first input pixel before the layer::

    r'     = r + d (k - 1) j
    j'     = j s
    start' = start - p j

Multi-path graphs (residual additions, concatenations) take the union of the paths'
intervals. Outputs that depend on the whole input (global/adaptive pooling to one value,
flatten followed by a linear layer, spatial means) are reported as global, never as a
made-up finite number.

``empirical_receptive_field(model, input_size)`` measures the same thing: the input pixels
whose gradient is non-zero for one output element, on a geometry-faithful copy of the
model (positive averaging weights, max-pooling replaced by average pooling of the same
geometry, activations and batch norm made identities) so that nothing can hide a pixel.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from dlsummary.errors import DLSummaryError

__all__ = [
    "DimGeometry",
    "EmpiricalReceptiveField",
    "LayerGeometry",
    "ReceptiveField",
    "Span",
    "empirical_receptive_field",
    "receptive_field",
]


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class DimGeometry:
    """Where one output element of a tensor looks in the input, along one spatial dim.

    Output index ``i`` reads input pixels ``start + jump * i`` to
    ``start + jump * i + size - 1``; ``size is None`` means the whole input (global).
    """

    size: int | None
    jump: int | None
    start: int | None

    @property
    def is_global(self) -> bool:
        return self.size is None

    def then(self, kernel: int, stride: int, dilation: int, padding: int) -> DimGeometry:
        """The geometry after a sliding-window layer applied on top of this one."""
        if self.is_global:
            return self
        assert self.jump is not None and self.start is not None
        return DimGeometry(
            size=self.size + dilation * (kernel - 1) * self.jump,
            jump=self.jump * stride,
            start=self.start - padding * self.jump,
        )


GLOBAL = DimGeometry(None, None, None)
IDENTITY = DimGeometry(1, 1, 0)


@dataclass(frozen=True)
class _TensorGeo:
    """Geometry of one traced tensor: one DimGeometry per input spatial dim; ``flat`` when
    the spatial axes no longer sit at positions 2.. (flattened, reduced)."""

    dims: tuple[DimGeometry, ...]
    flat: bool = False


class _Seq(tuple):
    """Geometry of a tuple/list of tensors that share it (chunk, split)."""


@dataclass(frozen=True)
class LayerGeometry:
    """One row of the per-layer table: the layer and the receptive field after it."""

    name: str
    kind: str
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    dilation: tuple[int, ...] | None
    padding: tuple[int, ...] | None
    size: tuple[int | None, ...]
    jump: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class Span(NamedTuple):
    """Input pixels ``start`` .. ``stop - 1`` (``stop`` exclusive) and their centre."""

    start: int
    stop: int
    center: float


@dataclass(frozen=True)
class ReceptiveField:
    """The analytic receptive field of a model's output, per spatial dimension.

    ``size[d]`` is the number of input pixels one output element sees along dim ``d``
    (``None`` where it sees the whole input), ``stride[d]`` the distance in the input
    between adjacent outputs, ``padding[d]`` the effective padding: output 0's field starts
    at input pixel ``-padding[d]``.
    """

    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    size: tuple[int | None, ...]
    stride: tuple[int | None, ...]
    padding: tuple[int | None, ...]
    is_global: bool
    layers: tuple[LayerGeometry, ...] = field(repr=False)
    misaligned: tuple[str, ...] = ()

    def input_coordinates(
        self, output_index: Sequence[int], clip: bool = False
    ) -> tuple[Span, ...]:
        """The input region (start, stop exclusive, centre) per spatial dim that output
        element ``output_index`` (its spatial index) sees; ``clip`` crops it to the input."""
        index = tuple(int(i) for i in output_index)
        spatial_in = self.input_size[2:]
        if len(index) != len(self.size):
            raise DLSummaryError(
                f"output_index {index} has {len(index)} entries, but the output has "
                f"{len(self.size)} spatial dims {self.output_size}; give one index per spatial dim"
            )
        spans = []
        for d, i in enumerate(index):
            if not 0 <= i < self.output_size[d]:
                raise DLSummaryError(
                    f"output_index {index}: index {i} is outside spatial dim {d} of the "
                    f"output, whose size is {self.output_size[d]}"
                )
            if self.size[d] is None:
                start, stop = 0, spatial_in[d]
            else:
                start = -self.padding[d] + self.stride[d] * i  # type: ignore[operator]
                stop = start + self.size[d]  # type: ignore[operator]
            if clip:
                start, stop = max(start, 0), min(stop, spatial_in[d])
            spans.append(Span(start, stop, (start + stop - 1) / 2))
        return tuple(spans)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
            "size": list(self.size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "is_global": self.is_global,
            "misaligned": list(self.misaligned),
            "layers": [row.to_dict() for row in self.layers],
        }

    def __str__(self) -> str:
        def fmt(values: Sequence[Any] | None) -> str:
            if values is None:
                return "-"
            return "x".join("global" if v is None else str(v) for v in values)

        header = ("layer", "type", "kernel", "stride", "dilation", "padding", "rf", "jump")
        rows = [header] + [
            (r.name, r.kind, fmt(r.kernel), fmt(r.stride), fmt(r.dilation), fmt(r.padding),
             fmt(r.size), fmt(r.jump))
            for r in self.layers
        ]
        widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        summary = (
            f"receptive field {fmt(self.size)}, effective stride {fmt(self.stride)}, "
            f"effective padding {fmt(self.padding)}; input {fmt(self.input_size)} -> "
            f"output spatial {fmt(self.output_size)}"
        )
        if self.is_global:
            summary += "; global: every output depends on the whole input along 'global' dims"
        lines += ["", summary] + [f"warning: {m}" for m in self.misaligned]
        return "\n".join(lines)


# ------------------------------------------------------------------ what we can analyse
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
    nn.Threshold, nn.LogSigmoid, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.modules.batchnorm._BatchNorm,
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_PAD = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
        nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd)

_KNOWN_MODULES = (_ELEMENTWISE_MODULES + _CONV + _MAXPOOL + _AVGPOOL + _ADAPTIVE + _PAD + (
    nn.LPPool1d, nn.LPPool2d, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Flatten, nn.Linear,
    nn.Bilinear))

SUPPORTED = (
    "Conv1d/2d/3d, Max/AvgPool1d/2d/3d, AdaptiveAvg/MaxPool, padding layers, Flatten, "
    "Linear, element-wise activations, BatchNorm, Dropout, Softmax over channels, and "
    "the functions add/mul/cat/flatten/view/mean/pad/conv/pool"
)

_ELEMENTWISE_NAMES = frozenset([
    "add", "sub", "mul", "div", "true_divide", "truediv", "floordiv", "neg", "pos", "iadd",
    "isub", "imul", "itruediv", "rsub", "relu", "relu_", "relu6", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "gelu", "silu", "mish", "elu", "selu", "celu", "leaky_relu",
    "hardtanh", "hardswish", "hardsigmoid", "softplus", "softsign", "logsigmoid",
    "threshold", "hardshrink", "softshrink", "clamp", "clamp_", "clip", "abs", "exp", "log",
    "sqrt", "rsqrt", "pow", "square", "reciprocal", "sign", "erf", "sin", "cos", "maximum",
    "minimum", "where", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "batch_norm", "contiguous", "clone", "detach", "float",
    "double", "half", "bfloat16", "to", "type_as", "add_", "mul_", "div_", "sub_",
    "masked_fill", "expand_as",
])
_BROADCAST_NAMES = frozenset(["add", "sub", "mul", "truediv", "iadd", "isub", "imul",
                              "itruediv", "relu", "sigmoid", "tanh", "gelu", "silu"])
_REDUCTIONS = frozenset([
    "mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
])
_RESHAPES = frozenset(["flatten", "view", "reshape", "squeeze", "unsqueeze"])


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return tuple(int(value[0]) for _ in range(n))
        return tuple(int(v) for v in value)
    return tuple(int(value) for _ in range(n))


class _Unsupported(Exception):
    """Internal: the node at hand cannot be analysed (turned into a DLSummaryError)."""


class _Failed(Exception):
    """Internal: carries the user-facing message out of fx's interpreter (which appends
    graph details to the exception's args) to be raised as a clean DLSummaryError."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------------ the analysis
class _Analyzer(fx.Interpreter):
    """Runs the traced graph on meta tensors (shapes only, no arithmetic) and composes the
    geometry of every node from its inputs'."""

    def __init__(self, gm: fx.GraphModule, n_spatial: int, names: dict[int, str]):
        super().__init__(gm)
        self.n_spatial = n_spatial
        self.geo: dict[fx.Node, Any] = {}
        self.rows: list[LayerGeometry] = []
        self.misaligned: list[str] = []
        self.names = names
        self.input_size: tuple[int, ...] = ()

    # -- shapes: known layers by formula (running meta kernels costs ~1 ms a node)
    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        m = self.fetch_attr(target)
        x = args[0] if len(args) == 1 and not kwargs else None
        if isinstance(x, torch.Tensor):
            shape = _shape_after(m, x)
            if shape is not None:
                return x if shape == tuple(x.shape) and isinstance(
                    m, _ELEMENTWISE_MODULES) else torch.empty(shape, dtype=x.dtype,
                                                              device=x.device)
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        name = getattr(target, "__name__", "")
        if name in _BROADCAST_NAMES:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if tensors:
                shape = torch.broadcast_shapes(*(t.shape for t in tensors))
                return torch.empty(shape, dtype=tensors[0].dtype, device=tensors[0].device)
        return super().call_function(target, args, kwargs)

    # the geometry of a node's argument tree
    def _arg_geos(self, node: fx.Node) -> list[Any]:
        found: list[Any] = []
        fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(self.geo.get(a)))
        return [g for g in found if g is not None]

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_module" and not isinstance(
                self.module.get_submodule(n.target), _KNOWN_MODULES):
            raise _Failed(
                f"receptive_field cannot analyse {self._describe(n)}: this layer type has no "
                f"known receptive-field geometry. Supported: {SUPPORTED}. Analyse the part of "
                "the model before it, or replace the layer by a supported equivalent."
            )
        try:
            value = super().run_node(n)
        except _Failed:
            raise
        except Exception as err:
            raise _Failed(
                f"receptive_field: {self._describe(n)} failed on an input of shape "
                f"{self.input_size} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "check that input_size is a shape the model accepts"
            ) from None
        if n.op == "placeholder":
            self.geo[n] = _TensorGeo(tuple(IDENTITY for _ in range(self.n_spatial)))
        elif n.op in ("call_module", "call_function", "call_method"):
            try:
                self.geo[n] = self._geometry(n, value)
            except _Unsupported as err:
                raise _Failed(
                    f"receptive_field cannot analyse {self._describe(n)}: {err}. "
                    f"Supported: {SUPPORTED}. Wrap the rest of the model out of the "
                    "analysis, or replace the layer by a supported equivalent."
                ) from None
        return value

    def _describe(self, n: fx.Node) -> str:
        if n.op == "call_module":
            module = self.module.get_submodule(n.target)
            name = self.names.get(id(module), str(n.target)) or "(the model)"
            return f"module '{name}' ({type(module).__module__}.{type(module).__qualname__})"
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", n.target)
        return f"the call {target!r} at graph node '{n.name}' ({n.op})"

    def _record(self, n: fx.Node, kind: str, geo: Any, kernel=None, stride=None, dilation=None,
                padding=None) -> None:
        if n.op == "call_module":
            module = self.module.get_submodule(n.target)
            name = self.names.get(id(module), str(n.target)) or "(the model)"
        else:
            name = n.name
        dims = geo.dims if isinstance(geo, _TensorGeo) else ()
        self.rows.append(LayerGeometry(
            name=name, kind=kind, kernel=kernel, stride=stride, dilation=dilation,
            padding=padding, size=tuple(d.size for d in dims), jump=tuple(d.jump for d in dims),
        ))

    # -- helpers
    def _union(self, n: fx.Node, geos: list[Any]) -> Any:
        tensors: list[_TensorGeo] = []
        for g in geos:
            tensors.extend(g if isinstance(g, _Seq) else [g])
        if len(tensors) == 1:
            return tensors[0]
        dims = []
        for d in range(self.n_spatial):
            parts = [t.dims[d] for t in tensors]
            if any(p.is_global for p in parts):
                dims.append(GLOBAL)
                continue
            jumps = {p.jump for p in parts}
            if len(jumps) > 1:
                raise _Unsupported(
                    f"its inputs have different effective strides {sorted(jumps)} along "
                    f"spatial dim {d}, so their pixels are not aligned (misaligned paths)")
            centers = {2 * p.start + p.size - 1 for p in parts}  # type: ignore[operator]
            if len(centers) > 1:
                self.misaligned.append(
                    f"'{n.name}' merges paths whose fields along spatial dim {d} are centred at "
                    f"different input pixels {sorted(c / 2 for c in centers)}: misaligned paths; "
                    "the union is reported")
            start = min(p.start for p in parts)  # type: ignore[type-var]
            stop = max(p.start + p.size for p in parts)  # type: ignore[operator]
            dims.append(DimGeometry(stop - start, parts[0].jump, start))
        return _TensorGeo(tuple(dims), flat=any(t.flat for t in tensors))

    def _spatial_input(self, n: fx.Node, geo: _TensorGeo, x: torch.Tensor) -> None:
        if geo.flat or x.dim() != self.n_spatial + 2:
            raise _Unsupported(
                f"it slides a window over a tensor of shape {tuple(x.shape)} whose spatial "
                f"axes are no longer dims 2.. of an (N, C, {self.n_spatial} spatial) tensor")

    def _window(self, n, geo, x, kind, kernel, stride, dilation, padding_left):
        self._spatial_input(n, geo, x)
        dims = tuple(g.then(k, s, d, p) for g, k, s, d, p in
                     zip(geo.dims, kernel, stride, dilation, padding_left, strict=False))
        out = _TensorGeo(dims)
        self._record(n, kind, out, kernel, stride, dilation, padding_left)
        return out

    def _global_dims(self, geo: _TensorGeo, which: Sequence[int], flat: bool) -> _TensorGeo:
        dims = tuple(GLOBAL if d in which else g for d, g in enumerate(geo.dims))
        return _TensorGeo(dims, flat=geo.flat or flat)

    def _spatial_axes(self, geo: _TensorGeo, x: torch.Tensor, axes: Sequence[int]) -> list[int]:
        """Which input spatial dims the tensor axes ``axes`` are."""
        if geo.flat:
            return list(range(self.n_spatial))  # they are mixed into the feature axes
        nd = x.dim()
        return sorted({a % nd - 2 for a in axes if a % nd >= 2})

    # -- the rules
    def _geometry(self, n: fx.Node, value: Any) -> Any:  # noqa: C901 - a rule table
        geos = self._arg_geos(n)
        if not geos:
            return None  # does not depend on the input (a constant, a parameter, a size)
        if not isinstance(value, (torch.Tensor, tuple, list)):
            return None  # x.size(), x.shape, x.dim(): no pixels flow through
        first = n.args[0] if n.args else None
        x_geo = self.geo.get(first) if isinstance(first, fx.Node) else None
        x_val = self.env.get(first) if isinstance(first, fx.Node) else None

        if n.op == "call_module":
            m = self.module.get_submodule(n.target)
            kind = type(m).__name__
            if isinstance(m, _CONV):
                nd = len(m.kernel_size)
                if isinstance(m.padding, str):
                    if m.padding == "same":
                        pad = tuple((d * (k - 1)) // 2
                                    for d, k in zip(m.dilation, m.kernel_size, strict=True))
                    else:
                        pad = (0,) * nd
                else:
                    pad = tuple(m.padding)
                return self._window(n, x_geo, x_val, kind, tuple(m.kernel_size), tuple(m.stride),
                                    tuple(m.dilation), pad)
            if isinstance(m, _MAXPOOL + _AVGPOOL + (nn.LPPool1d, nn.LPPool2d)):
                nd = int(kind[-2])
                k = _tuple(m.kernel_size, nd)
                s = _tuple(m.stride if m.stride is not None else m.kernel_size, nd)
                d = _tuple(getattr(m, "dilation", 1), nd)
                p = _tuple(getattr(m, "padding", 0), nd)
                return self._window(n, x_geo, x_val, kind, k, s, d, p)
            if isinstance(m, _ADAPTIVE):
                return self._adaptive(n, x_geo, x_val, value, kind)
            if isinstance(m, _PAD):
                return self._pad(n, x_geo, x_val, tuple(m.padding), kind)
            if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
                return self._along(n, x_geo, x_val, m.dim, kind)
            if isinstance(m, _ELEMENTWISE_MODULES):
                return self._union(n, geos)
            if isinstance(m, nn.Flatten):
                return self._reshape(n, x_geo, x_val, value, kind)
            if isinstance(m, (nn.Linear, nn.LazyLinear, nn.Bilinear)):
                out = self._global_dims(x_geo, self._spatial_axes(x_geo, x_val, [-1]), False)
                self._record(n, kind, out)
                return out
            raise _Unsupported("this layer type has no known receptive-field geometry")

        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        name = name.rstrip("_") if name.endswith("_") and name != "relu_" else name
        if n.op == "call_function" and n.target is operator.getitem:
            return self._getitem(n, x_geo, x_val)
        if name in _ELEMENTWISE_NAMES:
            out = self._union(n, geos)
            if len(geos) > 1:  # a merge of paths (residual addition, gating): show it
                self._record(n, name, out)
            return out
        if name in ("cat", "concat", "concatenate", "stack"):
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            tensors = n.args[0]
            t0 = self.env[tensors[0]]
            if name != "stack" and dim % t0.dim() >= 2 and not any(
                    g.flat for g in geos if isinstance(g, _TensorGeo)):
                raise _Unsupported(f"it concatenates along spatial dim {dim}")
            out = self._union(n, geos)
            self._record(n, name, out)
            return out
        if name in ("chunk", "split", "unbind", "tensor_split"):
            dim = n.kwargs.get("dim", n.args[2] if len(n.args) > 2 else 0)
            if dim % x_val.dim() >= 2 and not x_geo.flat:
                raise _Unsupported(f"it splits along spatial dim {dim}")
            return _Seq([x_geo])
        if name in _RESHAPES:
            return self._reshape(n, x_geo, x_val, value, name)
        if name in ("max", "min") and len(n.args) > 1 and isinstance(n.args[1], fx.Node):
            out = self._union(n, geos)  # torch.max(a, b): element-wise
            self._record(n, name, out)
            return out
        if name in _REDUCTIONS:
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
            if isinstance(dim, (tuple, list)) and not dim:
                dim = None
            keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
            if dim is None:
                out = self._global_dims(x_geo, range(self.n_spatial), True)
            else:
                axes = list(dim) if isinstance(dim, (tuple, list)) else [dim]
                out = self._global_dims(x_geo, self._spatial_axes(x_geo, x_val, axes),
                                        flat=not keep)
            self._record(n, name, out)
            return out
        if name in ("softmax", "log_softmax", "softmin"):
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
            return self._along(n, x_geo, x_val, dim, name)
        if name in ("linear", "matmul", "mm", "bmm", "__matmul__"):
            out = self._global_dims(x_geo, self._spatial_axes(x_geo, x_val, [-1]), False)
            self._record(n, name, out)
            return out
        if name in ("conv1d", "conv2d", "conv3d") and n.op == "call_function":
            a = _bind(n, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                      {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
            nd = int(name[-2])
            w = self.env[a["weight"]] if isinstance(a["weight"], fx.Node) else a["weight"]
            k = tuple(w.shape[2:])
            d = _tuple(a["dilation"], nd)
            if isinstance(a["padding"], str):
                same = a["padding"] == "same"
                p = tuple(di * (ki - 1) // 2 if same else 0 for di, ki in zip(d, k, strict=True))
            else:
                p = _tuple(a["padding"], nd)
            return self._window(n, x_geo, x_val, name, k, _tuple(a["stride"], nd), d, p)
        if name.startswith(("max_pool", "avg_pool", "lp_pool")) and n.op == "call_function":
            nd = int(name[-2])
            params = ["input", "kernel_size", "stride", "padding", "dilation"] if \
                name.startswith("max") else ["input", "kernel_size", "stride", "padding"]
            if name.startswith("lp"):
                params = ["input", "norm_type", "kernel_size", "stride"]
            a = _bind(n, params, {"stride": None, "padding": 0, "dilation": 1})
            k = _tuple(a["kernel_size"], nd)
            s = _tuple(a["stride"], nd) if a["stride"] not in (None, [], ()) else k
            return self._window(n, x_geo, x_val, name, k, s, _tuple(a.get("dilation", 1), nd),
                                _tuple(a.get("padding", 0), nd))
        if name.startswith("adaptive_") and n.op == "call_function":
            return self._adaptive(n, x_geo, x_val, value, name)
        if name == "pad" and n.op == "call_function":
            a = _bind(n, ["input", "pad"], {})
            return self._pad(n, x_geo, x_val, tuple(a["pad"]), name)
        raise _Unsupported("it is not a function with a known receptive-field geometry")

    def _along(self, n, geo, x, dim, kind):
        if dim is None:
            raise _Unsupported("softmax without an explicit dim")
        out = self._global_dims(geo, self._spatial_axes(geo, x, [dim]), False)
        self._record(n, kind, out)
        return out

    def _adaptive(self, n, geo, x, value, kind):
        if isinstance(value, tuple):  # return_indices
            value = value[0]
        self._spatial_input(n, geo, x)
        dims, ks = [], []
        for d in range(self.n_spatial):
            size_in, size_out = x.shape[2 + d], value.shape[2 + d]
            if size_out == 1 and size_in > 1:
                dims.append(GLOBAL)
                ks.append(size_in)
            elif size_in % size_out == 0:
                k = size_in // size_out
                dims.append(geo.dims[d].then(k, k, 1, 0))
                ks.append(k)
            else:
                raise _Unsupported(
                    f"adaptive pooling from {size_in} to {size_out} positions along spatial dim "
                    f"{d} uses windows of unequal size; choose an input size for which "
                    f"{size_in} is a multiple of {size_out}")
        out = _TensorGeo(tuple(dims))
        self._record(n, kind, out, kernel=tuple(ks), stride=tuple(ks))
        return out

    def _pad(self, n, geo, x, pad, kind):
        self._spatial_input(n, geo, x)
        left = [0] * self.n_spatial
        pairs = [pad[i:i + 2] for i in range(0, len(pad), 2)]  # last dim first
        for i, (lo, _hi) in enumerate(pairs):
            axis = x.dim() - 1 - i
            if axis < 2:
                raise _Unsupported("it pads a batch or channel axis")
            left[axis - 2] = lo
        out = _TensorGeo(tuple(g.then(1, 1, 1, p) for g, p in zip(geo.dims, left, strict=False)))
        self._record(n, kind, out, padding=tuple(left))
        return out

    def _reshape(self, n, geo, x, value, kind):
        if not isinstance(value, torch.Tensor):
            raise _Unsupported("it does not return a tensor")
        same = value.dim() == x.dim() and tuple(value.shape[2:]) == tuple(x.shape[2:])
        out = geo if same else _TensorGeo(geo.dims, flat=True)
        if not same:
            self._record(n, kind, out)
        return out

    def _getitem(self, n, geo, x):
        if isinstance(geo, _Seq):
            return geo[0]
        index = n.args[1]
        if not isinstance(x, torch.Tensor):
            return geo
        index = index if isinstance(index, tuple) else (index,)
        dims = list(geo.dims)
        for axis, item in enumerate(index):
            if item is Ellipsis:
                raise _Unsupported("indexing with '...'")
            if axis >= 2 and not geo.flat:
                d = axis - 2
                if not isinstance(item, slice) or item.step not in (None, 1) or (
                        item.start is not None and item.start < 0):
                    raise _Unsupported(f"it indexes spatial dim {d} with {item!r}")
                dims[d] = dims[d].then(1, 1, 1, -(item.start or 0))
            elif isinstance(item, slice) or item is None or axis >= 2 or geo.flat:
                pass
            else:
                raise _Unsupported(f"it indexes the batch/channel axes with {item!r}")
        out = _TensorGeo(tuple(dims), geo.flat)
        if out != geo:
            self._record(n, "crop", out)
        return out


def _window_length(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's output length of a sliding window (conv or pool) over ``n`` positions."""
    span = d * (k - 1) + 1
    if ceil_mode:
        out = -(-(n + 2 * p - span) // s) + 1
        if (out - 1) * s >= n + p:  # PyTorch drops a last window that starts in the padding
            out -= 1
    else:
        out = (n + 2 * p - span) // s + 1
    return out


def _shape_after(m: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """The output shape of the common layers, by formula; None: run the layer instead."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if x.dim() < 2 or x.shape[1] != m.num_features:
            raise ValueError(f"{type(m).__name__}({m.num_features}) got an input of shape "
                             f"{tuple(x.shape)}")
        return tuple(x.shape)
    if isinstance(m, _ELEMENTWISE_MODULES) and not isinstance(m, nn.PReLU):
        return tuple(x.shape)
    if isinstance(m, _CONV + _MAXPOOL + _AVGPOOL):
        nd = int(type(m).__name__[-2])
        if x.dim() != nd + 2:
            return None  # unbatched or wrong: let PyTorch say
        if isinstance(m, _CONV):
            if x.shape[1] != m.in_channels:
                raise ValueError(f"{type(m).__name__} expects {m.in_channels} input channels, "
                                 f"got an input of shape {tuple(x.shape)}")
            if m.padding == "same":
                return (x.shape[0], m.out_channels, *x.shape[2:])
            pad = (0,) * nd if m.padding == "valid" else m.padding
            k, s, d, ceil, channels = m.kernel_size, m.stride, m.dilation, False, m.out_channels
        else:
            k = _tuple(m.kernel_size, nd)
            s = _tuple(m.stride if m.stride is not None else m.kernel_size, nd)
            pad = _tuple(m.padding, nd)
            d = _tuple(getattr(m, "dilation", 1), nd)
            ceil, channels = bool(m.ceil_mode), x.shape[1]
        spatial = tuple(_window_length(n, *geom, ceil)
                        for n, *geom in zip(x.shape[2:], k, s, pad, d, strict=True))
        if any(v <= 0 for v in spatial):
            raise ValueError(f"{type(m).__name__} gets spatial size {tuple(x.shape[2:])}, too "
                             "small for its window")
        return (x.shape[0], channels, *spatial)
    return None


def _bind(n: fx.Node, params: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(params, n.args, strict=False))
    bound.update(n.kwargs)
    return bound


def _trace(model: nn.Module) -> fx.GraphModule:
    if fx.Tracer().is_leaf_module(model, ""):  # a bare torch.nn layer: analyse it as a layer
        if not isinstance(model, _KNOWN_MODULES):
            raise DLSummaryError(
                f"receptive_field cannot analyse the model itself ({type(model).__module__}."
                f"{type(model).__qualname__}): this layer type has no known receptive-field "
                f"geometry. Supported: {SUPPORTED}."
            )
        model = nn.Sequential(model)
    try:
        graph = fx.Tracer().trace(model)  # torch.nn layers stay leaves
    except Exception as err:  # fx raises many types for code it cannot see through
        raise DLSummaryError(
            f"receptive_field could not trace {type(model).__name__} with torch.fx "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Data-dependent control flow (if/for on tensor values) cannot be traced: move it "
            "out of forward(), or analyse the traceable part of the model."
        ) from None
    return fx.GraphModule(model, graph)


def _check_input(model: Any, input_size: Sequence[int], tool: str) -> tuple[int, ...]:
    if not isinstance(model, nn.Module):
        raise DLSummaryError(f"{tool} needs a torch.nn.Module, got {type(model).__name__}")
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        raise DLSummaryError(
            f"{tool}: input_size {input_size!r} must be the shape of an input batch, e.g. "
            "(1, 3, 224, 224)") from None
    if len(size) < 3 or any(s <= 0 for s in size):
        raise DLSummaryError(
            f"{tool}: input_size {size} must be (N, C, *spatial) with 1 to 3 positive spatial "
            "sizes, e.g. (1, 3, 224, 224) or (1, 1, 100) for a 1-D signal")
    if len(size) > 5:
        raise DLSummaryError(f"{tool}: input_size {size} has {len(size) - 2} spatial dims; "
                             "at most 3 are supported")
    return size


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def receptive_field(model: nn.Module, input_size: Sequence[int]) -> ReceptiveField:
    """The analytic receptive field of ``model``'s output on inputs of shape ``input_size``.

    The model is traced with ``torch.fx`` and run on meta tensors (no arithmetic, nothing
    changes in the model); each node's geometry is composed from its inputs'.
    """
    size = _check_input(model, input_size, "receptive_field")
    gm = _trace(model)
    names = {id(m): name for name, m in model.named_modules()}
    analyzer = _Analyzer(gm, len(size) - 2, names)
    analyzer.input_size = size
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in [*gm.named_parameters(remove_duplicate=False),
                            *gm.named_buffers(remove_duplicate=False)]}
    x = torch.empty(size, dtype=_model_dtype(model), device="meta")
    runner = _Runner(analyzer)
    try:
        out = torch.func.functional_call(runner, {f"gm.{k}": v for k, v in meta.items()}, (x,),
                                         tie_weights=False, strict=False)
    except _Failed as err:
        raise DLSummaryError(err.message) from None
    except Exception as err:
        raise DLSummaryError(
            f"receptive_field: running {type(model).__name__} on an input of shape {size} "
            f"failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "check that input_size is a shape the model accepts"
        ) from None
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    result_arg = output_node.args[0]
    if not isinstance(result_arg, fx.Node) or not isinstance(out, torch.Tensor):
        raise DLSummaryError(
            f"receptive_field: {type(model).__name__} returns a {type(out).__name__}, not "
            "one tensor; analyse a model (or wrapper) that returns the tensor you care about")
    geo = analyzer.geo.get(result_arg)
    if geo is None:
        raise DLSummaryError("receptive_field: the model's output does not depend on its input")
    if isinstance(geo, _Seq):
        geo = geo[0]
    dims = geo.dims
    is_global = any(d.is_global for d in dims)
    if geo.flat and not all(d.is_global for d in dims):
        raise DLSummaryError(
            f"receptive_field: the output of {type(model).__name__} (shape "
            f"{tuple(out.shape)}) has its spatial axes flattened but not mixed, so an output "
            "index names no spatial position; analyse the model up to the flatten")
    output_spatial = tuple(out.shape[2:]) if not geo.flat else (1,) * len(dims)
    return ReceptiveField(
        input_size=size,
        output_size=tuple(int(s) for s in output_spatial),
        size=tuple(d.size for d in dims),
        stride=tuple(d.jump for d in dims),
        padding=tuple(None if d.is_global else -d.start for d in dims),  # type: ignore[operator]
        is_global=is_global,
        layers=tuple(analyzer.rows),
        misaligned=tuple(dict.fromkeys(analyzer.misaligned)),
    )


class _Runner(nn.Module):
    """Holds the GraphModule so that ``functional_call`` can swap its tensors for meta
    ones while the analyzer interprets it."""

    def __init__(self, analyzer: _Analyzer):
        super().__init__()
        self.gm = analyzer.module
        self.analyzer = analyzer

    def forward(self, x: torch.Tensor) -> Any:
        return self.analyzer.run(x)


# ------------------------------------------------------------------------ measurement
@dataclass(frozen=True)
class EmpiricalReceptiveField:
    """The measured footprint of one output element: the input pixels with non-zero
    gradient. ``bbox[d] = (start, stop)`` (stop exclusive), ``size[d] = stop - start``."""

    input_size: tuple[int, ...]
    output_index: tuple[int, ...]
    mask: np.ndarray = field(repr=False)
    bbox: tuple[tuple[int, int], ...]
    size: tuple[int, ...]

    @property
    def center(self) -> tuple[float, ...]:
        return tuple((a + b - 1) / 2 for a, b in self.bbox)

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "output_index": list(self.output_index),
                "bbox": [list(b) for b in self.bbox], "size": list(self.size),
                "pixels": int(self.mask.sum())}

    def __str__(self) -> str:
        spans = ", ".join(f"[{a}, {b})" for a, b in self.bbox)
        return (f"measured footprint of output {self.output_index} on input "
                f"{self.input_size}: size {'x'.join(map(str, self.size))}, bbox {spans}, "
                f"{int(self.mask.sum())} pixels with non-zero gradient")

    def plot(self, ax: Any = None) -> Any:
        """Draw the footprint (2-D: an image with the bounding box; 1-D: a strip; 3-D: the
        projection along the first spatial dim) and return the Axes."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        if ax is None:
            _, ax = plt.subplots(figsize=(3.2, 3.2))
        mask = self.mask
        bbox = self.bbox
        if mask.ndim == 1:
            mask, bbox = mask[None, :], ((0, 1), bbox[0])
        elif mask.ndim == 3:
            mask, bbox = mask.any(axis=0), bbox[1:]
        ax.imshow(mask, cmap="Greys", vmin=0, vmax=1, interpolation="nearest", aspect="auto"
                  if self.mask.ndim == 1 else "equal")
        (r0, r1), (c0, c1) = bbox
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                               edgecolor="tab:red", linewidth=1.2))
        ax.set_title(f"footprint {'x'.join(map(str, self.size))}", fontsize=9)
        return ax


class _SumPool(nn.Module):
    """A positive, gradient-dense stand-in for max pooling with the same geometry."""

    def __init__(self, pool: nn.Module, nd: int):
        super().__init__()
        self.nd = nd
        self.kernel = _tuple(pool.kernel_size, nd)
        self.stride = _tuple(pool.stride if pool.stride is not None else pool.kernel_size, nd)
        self.padding = _tuple(getattr(pool, "padding", 0), nd)
        self.dilation = _tuple(getattr(pool, "dilation", 1), nd)
        self.ceil_mode = bool(getattr(pool, "ceil_mode", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads, sizes = [], []
        for n, k, s, p, d in zip(x.shape[2:], self.kernel, self.stride, self.padding,
                                 self.dilation, strict=True):
            span = d * (k - 1) + 1
            out = _window_length(n, k, s, p, d, self.ceil_mode)
            sizes.append(out)
            extra = max(0, (out - 1) * s + span - (n + 2 * p))
            pads.append((p, p + extra))
        flat_pad = [v for pair in reversed(pads) for v in pair]
        x = F.pad(x, flat_pad)
        c = x.shape[1]
        weight = torch.ones((c, 1, *self.kernel), dtype=x.dtype, device=x.device)
        weight = weight / math.prod(self.kernel)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        y = conv(x, weight, stride=self.stride, dilation=self.dilation, groups=c)
        return y[(slice(None), slice(None), *(slice(0, s) for s in sizes))]


def _faithful_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` whose gradient footprint is exactly its geometric one."""
    clone = copy.deepcopy(model).to(dtype=dtype).eval()
    replacements = []
    for name, m in clone.named_modules():
        if isinstance(m, _MAXPOOL):
            replacements.append((name, _SumPool(m, int(type(m).__name__[-2]))))
        elif isinstance(m, _ELEMENTWISE_MODULES):
            replacements.append((name, nn.Identity()))
        elif isinstance(m, _ADAPTIVE) and "Max" in type(m).__name__:
            avg = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
            replacements.append((name, avg[int(type(m).__name__[-2]) - 1](m.output_size)))
    for name, new in replacements:
        if not name:
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(clone.get_submodule(parent_name) if parent_name else clone, child, new)
    with torch.no_grad():
        for m in clone.modules():
            weight = getattr(m, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
                fan_in = weight[0].numel()
                weight.fill_(1.0 / fan_in)
            bias = getattr(m, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.zero_()
    return clone


def empirical_receptive_field(
    model: nn.Module, input_size: Sequence[int], output_index: Sequence[int] | None = None
) -> EmpiricalReceptiveField:
    """Measure the input footprint of one output element (default: the centre one) from the
    gradient, on a geometry-faithful float64 copy of ``model`` (the model is not changed)."""
    size = _check_input(model, input_size, "empirical_receptive_field")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    clone = _faithful_copy(model, torch.float64)
    x = torch.ones((1, *size[1:]), dtype=torch.float64, device=device, requires_grad=True)
    try:
        out = clone(x)
    except Exception as err:
        raise DLSummaryError(
            f"empirical_receptive_field: running {type(model).__name__} on an input of "
            f"shape {(1, *size[1:])} failed ({type(err).__name__}: {err}); check input_size"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != len(size):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DLSummaryError(
            f"empirical_receptive_field: the output {shape} is not an (N, C, *spatial) tensor "
            f"like the input {size}; analyse a model that keeps the spatial layout")
    spatial_out = tuple(out.shape[2:])
    if output_index is None:
        index = tuple(s // 2 for s in spatial_out)
    else:
        index = tuple(int(i) for i in output_index)
        if len(index) != len(spatial_out) or any(
                not 0 <= i < s for i, s in zip(index, spatial_out, strict=False)):
            raise DLSummaryError(
                f"empirical_receptive_field: output_index {index} is not a spatial index into "
                f"the output's spatial shape {spatial_out}; give one in-range index per dim")
    out[(0, slice(None), *index)].sum().backward()  # a "pixel": all channels at a position
    mask = (x.grad[0] != 0).any(dim=0).cpu().numpy()
    if not mask.any():
        raise DLSummaryError("empirical_receptive_field: no input pixel has a non-zero "
                             f"gradient for output {index}")
    bbox = []
    for d in range(mask.ndim):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d)))[0]
        bbox.append((int(hit[0]), int(hit[-1]) + 1))
    return EmpiricalReceptiveField(
        input_size=size, output_index=index, mask=mask, bbox=tuple(bbox),
        size=tuple(b - a for a, b in bbox),
    )
