"""Receptive fields of PyTorch CNNs: computed from the layers' geometry, and measured.

``receptive_field(model, input_size)`` traces the model with ``torch.fx`` for the given input
size (shapes are concrete while tracing, so ``x.size()``, shape arithmetic and ``if`` on
shapes, as in TF-"SAME" padding, just work) and composes, per spatial dimension, where each
output element looks in the input. A layer maps output index ``o`` to the input interval
``[lo(o), hi(o)]``; a convolution with kernel ``k``, stride ``s``, dilation ``d`` and left
padding ``p`` has ``lo(o) = s o - p`` and ``hi(o) = s o - p + d (k - 1)``, and the field of
the network is the composition of these maps. Upsampling and transposed convolutions have
maps with fractional slopes (``lo(o) = floor(o / 2)`` for nearest x2), so every map is kept
exactly as a periodic table: ``f(o + P) = f(o) + Q``, the effective stride being ``Q / P``.

Multi-path graphs (residual additions, concatenations, U-Net skips) take the union of the
paths' intervals. Outputs that depend on the whole input (global pooling, flatten + linear,
squeeze-excitation, GroupNorm/InstanceNorm statistics) are reported as global, naming the
layer. Axis bookkeeping follows ``view``/``reshape``/``permute``/``transpose`` etc., so
channel shuffles and channels-last blocks (ConvNeXt) are understood.

``empirical_receptive_field(model, input_size)`` measures the same thing: the input pixels
whose gradient is non-zero for one output element, on a geometry-faithful copy of the
model (positive weights, max-pooling replaced by average pooling of the same geometry,
activations and batch norm made identities) so that nothing can hide a pixel.
"""

from __future__ import annotations

import copy
import inspect
import linecache
import math
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.stateless import _reparametrize_module

from dlsummary.errors import DLSummaryError

__all__ = [
    "EmpiricalReceptiveField",
    "LayerGeometry",
    "ReceptiveField",
    "Span",
    "empirical_receptive_field",
    "receptive_field",
]

_MAX_PERIOD = 4096  # a map whose period exceeds this is refused (odd scale factors)


# --------------------------------------------------------------------- periodic maps
class _Map:
    """A non-decreasing integer map with ``f(i + period) = f(i) + shift``."""

    __slots__ = ("period", "shift", "table")

    def __init__(self, period: int, shift: int, table: tuple[int, ...]):
        self.period, self.shift, self.table = period, shift, table

    def __call__(self, i: int) -> int:
        if self.period == 1:
            return self.table[0] + self.shift * i
        q, r = divmod(i, self.period)
        return self.table[r] + q * self.shift

    @property
    def slope(self) -> Fraction:
        return Fraction(self.shift, self.period)

    def after(self, g: _Map) -> _Map:
        """``self(g(i))``: this map applied to the output of ``g``."""
        if self.period == 1 and g.period == 1:
            return _Map(1, self.shift * g.shift, (self.table[0] + self.shift * g.table[0],))
        k = self.period // math.gcd(g.shift, self.period)
        period = k * g.period
        if period > _MAX_PERIOD:
            raise _Unsupported(f"the effective stride has a period of {period} outputs "
                               f"(more than {_MAX_PERIOD}); use simpler scale factors")
        shift = (k * g.shift // self.period) * self.shift
        return _Map(period, shift, tuple(self(g(i)) for i in range(period)))

    def merge(self, other: _Map, pick: Callable[[int, int], int]) -> _Map:
        """Pointwise min or max of two maps of the same slope."""
        if self.period == 1 and other.period == 1:
            return _Map(1, self.shift, (pick(self.table[0], other.table[0]),))
        period = math.lcm(self.period, other.period)
        shift = self.shift * (period // self.period)
        return _Map(period, shift, tuple(pick(self(i), other(i)) for i in range(period)))


def _affine(slope: int, offset: int) -> _Map:
    return _Map(1, slope, (offset,))


def _periodic(fn: Callable[[int], int], slope: Fraction) -> _Map:
    """The map ``fn`` (which satisfies ``fn(o + q) = fn(o) + p`` for ``slope = p/q``)."""
    if slope.denominator > _MAX_PERIOD:
        raise _Unsupported(f"scale {slope} has a period of {slope.denominator} outputs; use "
                           "simpler scale factors")
    period = slope.denominator
    return _Map(period, slope.numerator, tuple(fn(o) for o in range(period)))


# A spatial dim's geometry: (lo map, hi map), or None for global.
_Dim = tuple  # (lo: _Map, hi: _Map) | None
_IDENTITY_DIM = (_affine(1, 0), _affine(1, 0))


def _dim_then(dim: Any, lo: _Map, hi: _Map) -> Any:
    """The dim's geometry after a layer whose output ``o`` reads its input ``[lo(o), hi(o)]``."""
    if dim is None:
        return None
    return (dim[0].after(lo), dim[1].after(hi))


def _dim_sizes(dim: Any) -> list[int]:
    lo, hi = dim
    if lo.period == 1 and hi.period == 1:
        return [hi.table[0] - lo.table[0] + 1]
    period = math.lcm(lo.period, hi.period)
    return [hi(i) - lo(i) + 1 for i in range(period)]


def _fmt_number(v: Any) -> str:
    if v is None:
        return "global"
    if isinstance(v, Fraction) and v.denominator != 1:
        return f"{v.numerator}/{v.denominator}"
    return str(int(v)) if isinstance(v, Fraction) else str(v)


def _plain(v: Any) -> Any:
    """An int where the Fraction is whole (readable, JSON-friendly)."""
    if isinstance(v, Fraction) and v.denominator == 1:
        return int(v)
    return v


# ------------------------------------------------------------------ tensor geometry
class _Geo:
    """Geometry of one traced tensor: ``dims[d]`` per input spatial dim, and for each axis of
    the tensor its ``layout``: the factors ``(spatial dim or None, size)`` merged into it
    (row-major), so that view/reshape/permute can be followed. ``why[d]`` says which op
    merged or split spatial dim ``d``, when it is no longer an axis of its own."""

    __slots__ = ("axes", "dims", "why")

    def __init__(self, dims: tuple, axes: tuple, why: dict[int, str] | None = None):
        self.dims, self.axes, self.why = dims, axes, why or {}

    def pure_axis(self, d: int) -> int | None:
        """The tensor axis that is exactly spatial dim ``d``, if any."""
        if d in self.why:
            return None
        for a, layout in enumerate(self.axes):
            if len(layout) == 1 and layout[0][0] == d:
                return a
        return None

    def piece_axis(self, d: int) -> tuple[int, int] | None:
        """``(axis, step)`` where an axis is the outermost piece of spatial dim ``d`` alone
        (after space-to-depth: output index ``o`` covers input positions ``o step ..``)."""
        for a, layout in enumerate(self.axes):
            if len(layout) == 1 and len(layout[0]) == 4 and layout[0][0] == d and layout[0][3]:
                return a, layout[0][2]
        return None

    def spread_axis(self, d: int) -> tuple[int, int] | None:
        """``(axis, r)`` where an axis is spatial dim ``d`` followed by a channel factor of
        ``r`` (depth-to-space: output ``o`` reads input ``o // r``)."""
        for a, layout in enumerate(self.axes):
            if len(layout) == 2 and len(layout[0]) == 2 and layout[0][0] == d and \
                    layout[1][0] is None:
                return a, layout[1][1]
        return None

    def absorb_spread(self, d: int, axis: int, r: int) -> _Geo:
        dims = list(self.dims)
        up = _Map(r, 1, (0,) * r)
        dims[d] = _dim_then(dims[d], up, up)
        axes = tuple(((d, _layout_size(layout)),) if a == axis else layout
                     for a, layout in enumerate(self.axes))
        return _Geo(tuple(dims), axes, {k: w for k, w in self.why.items() if k != d})

    def absorb_pieces(self, d: int, axis: int, step: int) -> _Geo:
        """Spatial dim ``d`` read through its outermost piece at ``axis``: the field widens
        by the piece's ``step`` and the inner pieces become plain channel factors."""
        dims = list(self.dims)
        dims[d] = _dim_then(dims[d], _affine(step, 0), _affine(step, step - 1))
        axes = tuple(
            ((d, layout[0][1]),) if a == axis else
            tuple((None, f[1]) if f[0] == d else f for f in layout)
            for a, layout in enumerate(self.axes))
        return _Geo(tuple(dims), axes, {k: w for k, w in self.why.items() if k != d})

    def spatial_in(self, axis: int) -> set[int]:
        return {f[0] for f in self.axes[axis] if f[0] is not None}

    def with_global(self, which: Iterable[int]) -> _Geo:
        which = {d for d in which if self.dims[d] is not None}
        if not which:
            return self
        split = sorted(d for d in which if self.why.get(d, "").startswith("split"))
        if split:  # a mix over pieces of a dim (windows): neither global nor a plain field
            raise _Unsupported(
                f"it mixes positions along spatial dim {split[0]} after that dim was "
                f"{self.why[split[0]]}: a windowed field (as in window attention), which the "
                "analysis cannot follow")
        dims = tuple(None if d in which else g for d, g in enumerate(self.dims))
        axes = tuple(tuple((None, f[1]) if f[0] in which else f for f in layout)
                     for layout in self.axes)
        return _Geo(dims, axes, {d: w for d, w in self.why.items() if d not in which})


def _none_layout(size: int) -> tuple:
    return ((None, size),) if size != 1 else ()


def _layout_size(layout: tuple) -> int:
    return math.prod(f[1] for f in layout)


class _Unsupported(Exception):
    """Internal: the op at hand cannot be analysed (turned into a DLSummaryError)."""


class _Failed(Exception):
    """Internal: a finished user-facing message, raised out of fx's tracer."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ----------------------------------------------------------------------- the results
@dataclass(frozen=True)
class LayerGeometry:
    """One row of the per-layer table: the layer and the receptive field after it."""

    name: str
    kind: str
    kernel: tuple[int, ...] | None
    stride: tuple[Any, ...] | None
    dilation: tuple[int, ...] | None
    padding: tuple[int, ...] | None
    size: tuple[int | None, ...]
    jump: tuple[Any, ...]

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return str(v) if isinstance(v, Fraction) else v

        return {k: conv(v) for k, v in self.__dict__.items()}


class Span(NamedTuple):
    """Input pixels ``start`` .. ``stop - 1`` (``stop`` exclusive) and their centre."""

    start: int
    stop: int
    center: float


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of a model's output, per spatial dimension.

    ``size[d]`` is the number of input pixels one output element sees along dim ``d``
    (``None`` where it sees the whole input; the maximum where neighbouring outputs see
    different amounts, as after upsampling), ``stride[d]`` the distance in the input between
    adjacent outputs (a ``Fraction`` after upsampling), ``padding[d]`` the effective padding:
    output 0's field starts at input pixel ``-padding[d]``. ``method`` is ``"analytic"`` or,
    with ``fallback="measure"`` on a model the analysis refuses, ``"measured"``.
    """

    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    size: tuple[int | None, ...]
    stride: tuple[Any, ...]
    padding: tuple[int | None, ...]
    is_global: bool
    layers: tuple[LayerGeometry, ...] = field(repr=False)
    misaligned: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    method: str = "analytic"
    maps: tuple[Any, ...] = field(default=(), repr=False, compare=False)

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
            elif self.maps and self.maps[d] is not None:
                start, stop = self.maps[d][0](i), self.maps[d][1](i) + 1
            else:
                start = -self.padding[d] + int(self.stride[d] * i)  # type: ignore[operator]
                stop = start + self.size[d]  # type: ignore[operator]
            if clip:
                start, stop = max(start, 0), min(stop, spatial_in[d])
            spans.append(Span(start, stop, (start + stop - 1) / 2))
        return tuple(spans)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
            "size": list(self.size),
            "stride": [v if v is None or isinstance(v, int) else float(v) for v in self.stride],
            "stride_exact": [None if v is None else _fmt_number(v) for v in self.stride],
            "padding": list(self.padding),
            "is_global": self.is_global,
            "misaligned": list(self.misaligned),
            "notes": list(self.notes),
            "layers": [row.to_dict() for row in self.layers],
        }

    def __str__(self) -> str:
        def fmt(values: Sequence[Any] | None) -> str:
            if values is None:
                return "-"
            if values and all(v is None for v in values):
                return "global"
            return "x".join(_fmt_number(v) for v in values)

        lines: list[str] = []
        if self.layers:
            header = ("layer", "type", "kernel", "stride", "dilation", "padding", "rf", "jump")
            rows = [header] + [
                (r.name, r.kind, fmt(r.kernel), fmt(r.stride), fmt(r.dilation),
                 fmt(r.padding), fmt(r.size), fmt(r.jump))
                for r in self.layers
            ]
            widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
            lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)
                               ).rstrip() for row in rows]
            lines.insert(1, "  ".join("-" * w for w in widths))
            lines.append("")
        if all(v is None for v in self.size):
            summary = "receptive field global (every output depends on the whole input)"
        else:
            summary = (f"receptive field {fmt(self.size)}, effective stride {fmt(self.stride)}, "
                       f"effective padding {fmt(self.padding)}")
        summary += f"; input {fmt(self.input_size)} -> output spatial {fmt(self.output_size)}"
        if self.is_global and not all(v is None for v in self.size):
            summary += "; global along the dims marked 'global'"
        if self.method != "analytic":
            summary += f" ({self.method})"
        lines += [summary] + [f"note: {m}" for m in self.notes]
        lines += [f"warning: {m}" for m in self.misaligned]
        return "\n".join(lines)


# ------------------------------------------------------------------ what we can analyse
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
    nn.Threshold, nn.LogSigmoid, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.modules.batchnorm._BatchNorm,
    nn.LocalResponseNorm, nn.ChannelShuffle,
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_PAD = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
        nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd)
_NORM_GLOBAL = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)

_KNOWN_MODULES = (_ELEMENTWISE_MODULES + _CONV + _CONV_T + _MAXPOOL + _AVGPOOL + _ADAPTIVE
                  + _PAD + _NORM_GLOBAL + (
                      nn.LPPool1d, nn.LPPool2d, nn.Softmax, nn.LogSoftmax, nn.Softmin,
                      nn.Flatten, nn.Unflatten, nn.Linear, nn.Bilinear, nn.Upsample,
                      nn.PixelShuffle, nn.PixelUnshuffle))

SUPPORTED = (
    "Conv/ConvTranspose 1d/2d/3d, Max/Avg/LP pooling, adaptive pooling, padding layers, "
    "Upsample/interpolate, PixelShuffle, Flatten/Unflatten, Linear, element-wise "
    "activations, BatchNorm, LayerNorm, GroupNorm/InstanceNorm (global), Dropout, Softmax, "
    "and the shape ops view/reshape/permute/transpose/cat/stack/chunk/split/indexing"
)

_ELEMENTWISE_NAMES = frozenset([
    "add", "sub", "mul", "div", "true_divide", "truediv", "floordiv", "floor_divide", "neg",
    "pos", "iadd", "isub", "imul", "itruediv", "rsub", "radd", "rmul", "rtruediv", "relu",
    "relu6", "sigmoid", "tanh", "gelu", "silu", "mish", "elu", "selu", "celu", "leaky_relu",
    "hardtanh", "hardswish", "hardsigmoid", "softplus", "softsign", "logsigmoid", "prelu",
    "rrelu", "threshold", "hardshrink", "softshrink", "tanhshrink", "clamp", "clip", "abs",
    "exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "pow", "square",
    "reciprocal", "sign", "erf", "erfc", "sin", "cos", "tan", "atan", "sinh", "cosh",
    "maximum", "minimum", "fmax", "fmin", "where", "dropout", "dropout1d", "dropout2d",
    "dropout3d", "alpha_dropout", "feature_alpha_dropout", "batch_norm", "contiguous",
    "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as",
    "masked_fill", "nan_to_num", "floor", "ceil", "round", "trunc", "frac", "remainder",
    "fmod", "mod", "lerp", "addcmul", "addcdiv", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_not", "and_", "or_", "invert", "requires_grad",
    "channel_shuffle", "native_channel_shuffle", "local_response_norm", "stochastic_depth",
    "drop_path", "logit", "sigmoid_", "relu_", "softmax2d_never",
])
_CONSTANT_NAMES = frozenset([
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
])
_BROADCAST_NAMES = frozenset(["add", "sub", "mul", "truediv", "iadd", "isub", "imul",
                              "itruediv", "relu", "sigmoid", "tanh", "gelu", "silu"])
# reductions: the positional parameters after the input, by name (torch's signatures)
_REDUCTIONS: dict[str, tuple[str, ...]] = {
    **{n: ("dim", "keepdim") for n in (
        "mean", "sum", "nansum", "nanmean", "amax", "amin", "max", "min", "logsumexp", "prod",
        "argmax", "argmin", "median", "nanmedian", "mode", "all", "any", "count_nonzero",
        "aminmax")},
    **{n: ("dim", "unbiased", "keepdim") for n in ("std", "var", "std_mean", "var_mean")},
    "norm": ("p", "dim", "keepdim"),
    "vector_norm": ("ord", "dim", "keepdim"),
}
_VIEWS = frozenset(["view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
                    "view_as", "reshape_as", "ravel"])
_PERMUTES = frozenset(["permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis",
                       "t"])
_SIZE_METHODS = frozenset(["size", "dim", "numel", "nelement", "ndimension", "element_size",
                           "is_contiguous", "get_device", "is_floating_point"])


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return tuple(int(value[0]) for _ in range(n))
        return tuple(int(v) for v in value)
    return tuple(int(value) for _ in range(n))


def _bind(args: tuple, kwargs: dict, params: Sequence[str], defaults: dict[str, Any]
          ) -> dict[str, Any]:
    """Bind positional and keyword arguments to parameter names (the input first)."""
    bound = dict(defaults)
    bound.update(zip(params, args, strict=False))
    bound.update(kwargs)
    return bound


def _target_name(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    if name.endswith("_") and not name.endswith("__") and name not in ("and_", "or_"):
        name = name[:-1]  # in-place variants: relu_, add_
    return name


def _user_line(frames: Iterable[Any] | None = None) -> str:
    """``file:line `code``` of the innermost frame in the user's code (not torch, not this
    module), looking no further out than the trace itself."""
    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.abspath(__file__)
    if frames is None:
        found, f = [], inspect.currentframe()
        while f is not None:
            found.append(f)
            f = f.f_back
        frames = found
    for f in frames:
        name = f.f_code.co_filename
        if f.f_code.co_name == "_trace_model" and os.path.abspath(name) == here:
            return ""
        if name.startswith(("<", torch_dir)) or os.path.abspath(name) == here:
            continue
        code = linecache.getline(name, f.f_lineno).strip()
        return f"{os.path.basename(name)}:{f.f_lineno} `{code}`"
    return ""


def _where() -> str:
    line = _user_line()
    return f" (at {line})" if line else ""


# ------------------------------------------------------------------------- the tracer
class _ShapeProxy(fx.Proxy):
    """An fx Proxy whose shape queries answer with the concrete (meta) shape, so that
    shape arithmetic, ``if`` on shapes and ``len`` trace as plain Python."""

    def __getattr__(self, k: str) -> Any:
        if k in ("shape", "ndim", "dtype", "device", "is_cuda", "layout"):
            value = self.tracer.meta.get(self.node)  # type: ignore[attr-defined]
            if isinstance(value, torch.Tensor):
                return getattr(value, k)
        return super().__getattr__(k)

    def __len__(self) -> int:
        value = self.tracer.meta.get(self.node)  # type: ignore[attr-defined]
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
        if isinstance(value, (tuple, list)):
            return len(value)
        return super().__len__()

    def __iter__(self) -> Any:
        value = self.tracer.meta.get(self.node)  # type: ignore[attr-defined]
        if isinstance(value, (torch.Tensor, tuple, list)):
            return iter([self[i] for i in range(len(self))])
        return super().__iter__()


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.device.type != "meta":
        return torch.empty_like(value, device="meta")
    return value


class _Tracer(fx.Tracer):
    """Traces ``model`` while computing, for every node as it is created, its meta value
    (shape) and its geometry; errors are raised while the user's frame is on the stack."""

    def __init__(self, model: nn.Module, x: torch.Tensor, elementwise: Sequence[Any]):
        super().__init__()
        self.model = model
        self.x = x
        self.n_spatial = x.dim() - 2
        self.meta: dict[fx.Node, Any] = {}
        self.geo: dict[fx.Node, Any] = {}
        self.rows: list[LayerGeometry] = []
        self.misaligned: list[str] = []
        self.notes: list[str] = []
        self.placeholders = 0
        self.declared_fns = {e for e in elementwise if callable(e) and not isinstance(e, type)}
        self.declared_names = {e for e in elementwise if isinstance(e, str)}
        self.declared_modules = tuple(e for e in elementwise if isinstance(e, type))
        self.names = {id(m): name for name, m in model.named_modules()}
        self._modules_by_name: dict[str, nn.Module] = {}
        self._known_types: set[type] = set()

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def _submodule(self, target: str) -> nn.Module:
        m = self._modules_by_name.get(target)
        if m is None:
            m = self._modules_by_name[target] = self.root.get_submodule(target)
        return m

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.declared_modules and isinstance(m, self.declared_modules):
            return True
        return super().is_leaf_module(m, qualname)

    # -- the hook every op goes through
    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None):  # noqa: ANN001 - fx's signature
        if kind == "placeholder":
            self.placeholders += 1
            if self.placeholders > 1:
                if args:  # a parameter with a default: keep the default
                    return args[0]
                raise _Failed(f"receptive_field: {type(self.model).__name__}.forward takes "
                              f"more than one input ({target!r} has no default); analyse a "
                              "wrapper whose forward takes the one input tensor")
        if kind == "call_method" and target in _SIZE_METHODS and isinstance(args[0], fx.Proxy):
            value = self.meta.get(args[0].node)
            if isinstance(value, torch.Tensor):
                return getattr(value, target)(*args[1:], **kwargs)
        margs = fx.node.map_aggregate(args, self._meta_of)
        mkwargs = fx.node.map_aggregate(kwargs, self._meta_of)
        value = self._evaluate(kind, target, margs, mkwargs)
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        node = proxy.node
        self.meta[node] = value
        if kind == "placeholder":
            self.geo[node] = _Geo(tuple(_IDENTITY_DIM for _ in range(self.n_spatial)),
                                  tuple(_none_layout(s) for s in self.x.shape[:2])
                                  + tuple(((d, s),) for d, s in enumerate(self.x.shape[2:])))
        elif kind != "get_attr":
            gargs = fx.node.map_aggregate(args, self._geo_of)
            gkwargs = fx.node.map_aggregate(kwargs, self._geo_of)
            found: list[Any] = []
            fx.node.map_aggregate((gargs, gkwargs), lambda g: found.append(g) if isinstance(
                g, (_Geo, _GeoSeq)) else None)
            if found:
                try:
                    self.geo[node] = self._geometry(node, kind, target, args, gargs, gkwargs,
                                                    margs, mkwargs, value)
                except _Unsupported as err:
                    raise _Failed(
                        f"receptive_field cannot analyse {self._describe(kind, target)}"
                        f"{_where()}: {err}. Supported: {SUPPORTED}."
                    ) from None
                except (_Failed, RecursionError):
                    raise
                except Exception as err:  # a form of call the rules did not foresee
                    raise _Failed(
                        f"receptive_field cannot analyse {self._describe(kind, target)}"
                        f"{_where()}: its arguments take a form the analysis does not know "
                        f"({type(err).__name__}: {err}); analyse the part of the model "
                        "before it, or use fallback='measure' (CLI: --measure)"
                    ) from None
        return proxy

    def _meta_of(self, a: Any) -> Any:
        if isinstance(a, fx.Proxy):
            return self.meta.get(a.node)
        return a

    def _geo_of(self, a: Any) -> Any:
        if isinstance(a, fx.Proxy):
            return self.geo.get(a.node)
        return None

    def _describe(self, kind: str, target: Any) -> str:
        if kind == "call_module":
            m = self._submodule(target)
            name = self.names.get(id(m), str(target)) or "(the model)"
            return f"module '{name}' ({type(m).__module__}.{type(m).__qualname__})"
        return f"the call {_target_name(target)!r}"

    # -- shapes
    def _evaluate(self, kind: str, target: Any, margs: tuple, mkwargs: dict) -> Any:
        if kind == "placeholder":
            return self.x
        if kind == "get_attr":
            obj: Any = self.root
            for part in str(target).split("."):  # not getattr: fx patches it on modules
                if isinstance(obj, nn.Module):
                    for table in (obj._parameters, obj._buffers, obj._modules, obj.__dict__):
                        if part in table:
                            obj = table[part]
                            break
                else:
                    obj = getattr(obj, part)
            return _to_meta(obj)
        try:
            if kind == "call_module":
                m = self._submodule(target)
                self._check_module(target, m)
                x = margs[0] if len(margs) == 1 and not mkwargs else None
                if isinstance(x, torch.Tensor):
                    shape = _shape_after(m, x)
                    if shape is not None:
                        return x if shape == tuple(x.shape) else torch.empty(
                            shape, dtype=x.dtype, device="meta")
                params = {k: _to_meta(v) for k, v in [*m.named_parameters(),
                                                      *m.named_buffers()]}
                # m.forward, not m(): fx patches Module.__call__ while it traces
                with _reparametrize_module(m, params):
                    return m.forward(*margs, **mkwargs)
            if kind == "call_function":
                if _target_name(target) in _BROADCAST_NAMES:
                    tensors = [a for a in (*margs, *mkwargs.values())
                               if isinstance(a, torch.Tensor)]
                    if len(tensors) == len(margs) + len(mkwargs) or (
                            tensors and all(isinstance(a, (torch.Tensor, int, float))
                                            for a in margs)):
                        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
                        return torch.empty(shape, dtype=tensors[0].dtype, device="meta")
                return target(*margs, **mkwargs)
            if kind == "call_method":
                return getattr(margs[0], target)(*margs[1:], **mkwargs)
        except _Failed:
            raise
        except Exception as err:
            shapes = [tuple(a.shape) for a in margs if isinstance(a, torch.Tensor)]
            first = str(err).splitlines()[0] if str(err) else ""
            raise _Failed(
                f"receptive_field: {self._describe(kind, target)}{_where()} failed on an "
                f"input of shape {shapes[0] if len(shapes) == 1 else shapes} "
                f"({type(err).__name__}: {first}); the model was given input_size "
                f"{tuple(self.x.shape)}: check that it is a shape the model accepts"
            ) from None
        return None

    def _check_module(self, target: str, m: nn.Module) -> None:
        if type(m) in self._known_types:
            return
        if isinstance(m, _KNOWN_MODULES) or (
                self.declared_modules and isinstance(m, self.declared_modules)):
            self._known_types.add(type(m))
            return
        raise _Failed(
            f"receptive_field cannot analyse {self._describe('call_module', target)}"
            f"{_where()}: this layer type has no known receptive-field geometry. Supported: "
            f"{SUPPORTED}. If it is element-wise (each output position depends only on the "
            "same input position), declare it: receptive_field(model, input_size, "
            f"elementwise=[{type(m).__name__}]); otherwise analyse the part of the model "
            "before it."
        )

    # -- rows of the table
    def _record(self, node: fx.Node, kind: str, geo: Any, kernel=None, stride=None,
                dilation=None, padding=None) -> None:
        if node.op == "call_module":
            m = self._submodule(node.target)
            name = self.names.get(id(m), str(node.target)) or "(the model)"
        else:
            name = node.name
        sizes, jumps = [], []
        if isinstance(geo, _Geo):
            for dim in geo.dims:
                if dim is None:
                    sizes.append(None)
                    jumps.append(None)
                else:
                    sizes.append(max(_dim_sizes(dim)))
                    jumps.append(_plain(dim[0].slope))
        self.rows.append(LayerGeometry(name, kind, kernel, stride, dilation, padding,
                                       tuple(sizes), tuple(jumps)))

    # ---------------------------------------------------------------- the rules
    def _geometry(self, node, kind, target, args, gargs, gkwargs, margs, mkwargs, value):  # noqa: C901
        if not isinstance(value, (torch.Tensor, tuple, list)):
            return None  # a shape, a flag, an assertion: no pixels flow through it
        g = gargs[0] if gargs and isinstance(gargs[0], (_Geo, _GeoSeq)) else None
        x = margs[0] if margs else None
        if kind == "call_module":
            return self._module_rule(node, self._submodule(target), g, x, margs,
                                     mkwargs, gargs, value)
        name = _target_name(target)
        if kind == "call_function" and target is operator.getitem:
            return self._getitem(node, g, x, margs[1], value)
        if name in _CONSTANT_NAMES:
            return None  # a tensor of the same shape that does not depend on the values
        if kind == "call_function" and target is getattr:
            if margs[1] in ("values", "indices") and isinstance(g, _GeoSeq):
                return g[0 if margs[1] == "values" else 1]
            if margs[1] in ("T", "mT") and isinstance(g, _Geo):
                perm = list(range(x.dim()))
                if margs[1] == "T":
                    perm.reverse()
                else:
                    perm[-2:] = perm[-1], perm[-2]
                return _Geo(g.dims, tuple(g.axes[p] for p in perm), g.why)
            raise _Unsupported(f"attribute {margs[1]!r} of a tensor")
        if target in self.declared_fns or name in self.declared_names or \
                name in _ELEMENTWISE_NAMES:
            return self._elementwise(node, name, gargs, gkwargs, margs, mkwargs, value)
        if not isinstance(g, _Geo) and name not in ("cat", "concat", "concatenate", "stack",
                                                    "max", "min", "matmul"):
            return self._elementwise(node, name, gargs, gkwargs, margs, mkwargs, value)
        if name in ("cat", "concat", "concatenate", "stack"):
            return self._cat(node, name, gargs, margs, mkwargs, value)
        if name in ("chunk", "split", "unbind", "tensor_split", "split_with_sizes"):
            return self._split(node, name, g, x, margs, mkwargs, value)
        if name in _VIEWS:
            return self._reshape(node, name, g, x, value)
        if name in _PERMUTES:
            return self._permute(node, name, g, x, margs, mkwargs)
        if name in ("expand", "expand_as", "broadcast_to"):
            return self._union(node, name, [(g, x)], tuple(value.shape), record=False)
        if name in ("max", "min") and len(margs) > 1 and isinstance(margs[1], torch.Tensor):
            return self._elementwise(node, name, gargs, gkwargs, margs, mkwargs, value)
        if name in _REDUCTIONS:
            return self._reduce(node, name, g, x, margs, mkwargs, value)
        if name == "normalize":
            a = _bind(margs, mkwargs, ("input", "p", "dim"), {"dim": 1})
            return self._mix_axes(node, name, g, x, [a["dim"]], value, "normalizes over")
        if name in ("softmax", "log_softmax", "softmin"):
            a = _bind(margs, mkwargs, ("input", "dim"), {"dim": None})
            if a["dim"] is None:
                raise _Unsupported("softmax without an explicit dim")
            return self._mix_axes(node, name, g, x, [a["dim"]], value, "normalizes over")
        if name in ("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"):
            a = _bind(margs, mkwargs, ("input", "dim"), {})
            if g.spatial_in(a["dim"] % x.dim()):
                raise _Unsupported(f"it accumulates along axis {a['dim']}, a spatial axis")
            return g
        if name == "layer_norm":
            a = _bind(margs, mkwargs, ("input", "normalized_shape"), {})
            axes = range(x.dim() - len(a["normalized_shape"]), x.dim())
            return self._mix_axes(node, name, g, x, list(axes), value, "normalizes over")
        if name == "group_norm":
            return self._mix_axes(node, name, g, x, list(range(1, x.dim())), value,
                                  "normalizes over")
        if name == "instance_norm":
            a = _bind(margs, mkwargs, ("input", "running_mean", "running_var", "weight",
                                       "bias", "use_input_stats"), {"use_input_stats": True})
            if not a["use_input_stats"]:
                return g
            return self._mix_axes(node, name, g, x, list(range(2, x.dim())), value,
                                  "normalizes over")
        if name == "linear":
            return self._mix_axes(node, name, g, x, [-1], value, "mixes")
        if name in ("matmul", "mm", "bmm"):
            return self._matmul(node, name, gargs, margs, value)
        if name in ("conv1d", "conv2d", "conv3d"):
            a = _bind(margs, mkwargs, ("input", "weight", "bias", "stride", "padding",
                                       "dilation", "groups"),
                      {"stride": 1, "padding": 0, "dilation": 1})
            nd = int(name[-2])
            k = tuple(a["weight"].shape[2:])
            d = _tuple(a["dilation"], nd)
            p = _conv_padding(a["padding"], k, d, nd)
            return self._window(node, name, g, x, value, nd, k, _tuple(a["stride"], nd), d, p)
        if name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
            a = _bind(margs, mkwargs, ("input", "weight", "bias", "stride", "padding",
                                       "output_padding", "groups", "dilation"),
                      {"stride": 1, "padding": 0, "dilation": 1})
            nd = int(name[-2])
            return self._transposed(node, name, g, x, value, nd, tuple(a["weight"].shape[2:]),
                                    _tuple(a["stride"], nd), _tuple(a["dilation"], nd),
                                    _tuple(a["padding"], nd))
        if name.startswith(("max_pool", "avg_pool", "lp_pool")):
            nd = int(name[len("max_pool")]) if name.startswith("max") else int(name[-2])
            params = ("input", "kernel_size", "stride", "padding", "dilation")
            if name.startswith("lp"):
                params = ("input", "norm_type", "kernel_size", "stride")
            a = _bind(margs, mkwargs, params, {"stride": None, "padding": 0, "dilation": 1})
            k = _tuple(a["kernel_size"], nd)
            s = _tuple(a["stride"], nd) if a["stride"] not in (None, [], ()) else k
            return self._window(node, name, g, x, value, nd, k, s,
                                _tuple(a.get("dilation", 1), nd), _tuple(a.get("padding", 0), nd))
        if name.startswith("adaptive_"):
            return self._adaptive(node, name, g, x, value)
        if name == "pad":
            a = _bind(margs, mkwargs, ("input", "pad"), {})
            return self._pad(node, name, g, x, value, tuple(a["pad"]))
        if name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
            a = _bind(margs, mkwargs, ("input", "size", "scale_factor", "mode", "align_corners"),
                      {"size": None, "scale_factor": None,
                       "mode": "bilinear" if name == "upsample_bilinear" else "nearest",
                       "align_corners": True if name == "upsample_bilinear" else None})
            return self._interpolate(node, name, g, x, value, a["scale_factor"], a["mode"],
                                     bool(a["align_corners"]))
        if name in ("pixel_shuffle", "pixel_unshuffle"):
            a = _bind(margs, mkwargs, ("input", "factor"), {})
            return self._pixel_shuffle(node, name, g, x, value, int(a["factor"]),
                                       name == "pixel_shuffle")
        if name in ("flip", "roll", "rot90", "fliplr", "flipud"):
            raise _Unsupported("it flips or rolls the tensor: outputs no longer slide with "
                               "their inputs")
        return self._probe(node, kind, target, name, gargs, margs, mkwargs, value)

    def _module_rule(self, node, m, g, x, margs, mkwargs, gargs, value):  # noqa: C901
        kind = type(m).__name__
        if self.declared_modules and isinstance(m, self.declared_modules) and not isinstance(
                m, _KNOWN_MODULES):
            return self._elementwise(node, kind, gargs, {}, margs, mkwargs, value)
        if not isinstance(g, _Geo):
            return self._elementwise(node, kind, gargs, {}, margs, mkwargs, value)
        if isinstance(m, _CONV):
            nd = len(m.kernel_size)
            p = _conv_padding(m.padding, m.kernel_size, m.dilation, nd)
            return self._window(node, kind, g, x, value, nd, tuple(m.kernel_size),
                                tuple(m.stride), tuple(m.dilation), p)
        if isinstance(m, _CONV_T):
            nd = len(m.kernel_size)
            return self._transposed(node, kind, g, x, value, nd, tuple(m.kernel_size),
                                    tuple(m.stride), tuple(m.dilation), tuple(m.padding))
        if isinstance(m, _MAXPOOL + _AVGPOOL + (nn.LPPool1d, nn.LPPool2d)):
            nd = int(kind[-2])
            k = _tuple(m.kernel_size, nd)
            s = _tuple(m.stride if m.stride is not None else m.kernel_size, nd)
            return self._window(node, kind, g, x, value, nd, k, s,
                                _tuple(getattr(m, "dilation", 1), nd),
                                _tuple(getattr(m, "padding", 0), nd))
        if isinstance(m, _ADAPTIVE):
            return self._adaptive(node, kind, g, x, value)
        if isinstance(m, _PAD):
            return self._pad(node, kind, g, x, value, tuple(m.padding))
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            if m.dim is None:
                raise _Unsupported("softmax without an explicit dim")
            return self._mix_axes(node, kind, g, x, [m.dim], value, "normalizes over")
        if isinstance(m, nn.Upsample):
            return self._interpolate(node, kind, g, x, value, m.scale_factor, m.mode,
                                     bool(m.align_corners))
        if isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
            r = m.upscale_factor if isinstance(m, nn.PixelShuffle) else m.downscale_factor
            return self._pixel_shuffle(node, kind, g, x, value, r,
                                       isinstance(m, nn.PixelShuffle))
        if isinstance(m, nn.LayerNorm):
            axes = range(x.dim() - len(m.normalized_shape), x.dim())
            return self._mix_axes(node, kind, g, x, list(axes), value, "normalizes over")
        if isinstance(m, nn.GroupNorm):
            return self._mix_axes(node, kind, g, x, list(range(1, x.dim())), value,
                                  "normalizes over")
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            if m.track_running_stats and not m.training:
                return g  # running statistics: an affine map per channel
            return self._mix_axes(node, kind, g, x, list(range(2, x.dim())), value,
                                  "normalizes over")
        if isinstance(m, _ELEMENTWISE_MODULES):
            if isinstance(value, torch.Tensor) and value.shape == x.shape:
                return g
            return self._elementwise(node, kind, gargs, {}, margs, mkwargs, value)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self._reshape(node, kind, g, x, value)
        if isinstance(m, (nn.Linear, nn.Bilinear)):
            return self._mix_axes(node, kind, g, x, [-1], value, "mixes")
        raise _Unsupported("this layer type has no known receptive-field geometry")

    # -- element-wise and unions of paths
    def _elementwise(self, node, name, gargs, gkwargs, margs, mkwargs, value):
        parts: list[tuple[_Geo, torch.Tensor]] = []

        def collect(geo: Any, meta: Any) -> None:
            if isinstance(geo, _Geo) and isinstance(meta, torch.Tensor):
                parts.append((geo, meta))
            elif isinstance(geo, (list, tuple)) and isinstance(meta, (list, tuple)):
                for gi, mi in zip(geo, meta, strict=False):
                    collect(gi, mi)

        collect(list(gargs) + list(gkwargs.values()), list(margs) + list(mkwargs.values()))
        if not parts:
            return None
        if not isinstance(value, torch.Tensor):
            raise _Unsupported(f"it returns a {type(value).__name__}, not a tensor")
        return self._union(node, name, parts, tuple(value.shape), record=len(parts) > 1)

    def _union(self, node, name, parts, out_shape, record=True):
        if len(parts) == 1 and tuple(parts[0][1].shape) == out_shape:
            return parts[0][0]
        nd = len(out_shape)
        axes = []
        for a in range(nd):
            chosen = None
            for geo, meta in parts:
                k = a - (nd - meta.dim())
                if k < 0 or meta.shape[k] != out_shape[a]:
                    continue
                layout = geo.axes[k]
                if not any(f[0] is not None for f in layout):
                    continue
                if chosen is None:
                    chosen = layout
                elif chosen != layout:
                    raise _Unsupported(
                        f"it combines tensors whose axis {a} holds different spatial positions "
                        f"({_show(chosen)} and {_show(layout)}): the axes were moved differently")
            axes.append(chosen if chosen is not None else _none_layout(out_shape[a]))
        dims = []
        for d in range(self.n_spatial):
            got = [geo.dims[d] for geo, _ in parts]
            if any(p is None for p in got):
                dims.append(None)
                continue
            lo, hi = got[0]
            for plo, phi in got[1:]:
                if plo.slope != lo.slope:
                    raise _Unsupported(
                        f"its inputs have different effective strides {_fmt_number(lo.slope)} "
                        f"and {_fmt_number(plo.slope)} along spatial dim {d}, so their pixels "
                        "are not aligned (misaligned paths)")
                lo, hi = lo.merge(plo, min), hi.merge(phi, max)
            period = math.lcm(*(m.period for p in got for m in p))
            centres = {p[0].table[0] + p[1].table[0] for p in got} if period == 1 else {
                tuple(p[0](i) + p[1](i) for i in range(period)) for p in got}
            if len(centres) > 1:
                shown = sorted({(p[0](0) + p[1](0)) / 2 for p in got})
                self.misaligned.append(
                    f"'{node.name}' merges paths whose fields along spatial dim {d} are "
                    f"centred at different input pixels {shown}: misaligned paths; the union "
                    "is reported")
            dims.append((lo, hi))
        why: dict[int, str] = {}
        for geo, _ in parts:
            why.update({d: w for d, w in geo.why.items() if dims[d] is not None})
        out = _Geo(tuple(dims), tuple(axes), why)
        if record:
            self._record(node, name, out)
        return out

    # -- sliding windows
    def _window_axes(self, node, kind, g, x, value, nd, maps):
        """Apply per-axis (lo, hi) maps to the last ``nd`` axes of ``x``."""
        out_t = value[0] if isinstance(value, (tuple, list)) else value
        if x.dim() != nd + 2:
            hint = ""
            if x.shape == self.x.shape:
                hint = (f"; input_size {tuple(self.x.shape)} gives it {x.dim() - 2} spatial "
                        f"dims: a {nd}-D layer needs (N, C, {', '.join(['size'] * nd)}), "
                        "e.g. with a batch axis of 1 in front")
            raise _Unsupported(f"it is a {nd}-D layer and needs an input of rank {nd + 2}, "
                               f"but gets shape {tuple(x.shape)}{hint}")
        for t in range(nd):  # space-to-depth: a window axis that is a block of a dim
            a = x.dim() - nd + t
            spatial = {f[0] for f in g.axes[a] if f[0] is not None}
            if len(spatial) != 1:
                continue
            d = next(iter(spatial))
            piece, spread = g.piece_axis(d), g.spread_axis(d)
            if piece is not None and piece[0] == a:
                g = g.absorb_pieces(d, a, piece[1])
            elif spread is not None and spread[0] == a and g.pure_axis(d) is None:
                g = g.absorb_spread(d, a, spread[1])
        dims, axes = list(g.dims), list(g.axes)
        for t in range(nd):
            a = x.dim() - nd + t
            layout = g.axes[a]
            spatial = sorted({f[0] for f in layout if f[0] is not None})
            if not spatial:
                axes[a] = _none_layout(out_t.shape[a])
                continue
            d = spatial[0]
            if g.pure_axis(d) != a:
                reason = "; ".join(g.why[s] for s in spatial if s in g.why)
                raise _Unsupported(
                    f"it slides a window over axis {a} of a tensor of shape {tuple(x.shape)}, "
                    f"which is not one spatial axis but merges spatial dims {spatial} with "
                    f"other axes{' (' + reason + ')' if reason else ''}")
            dims[d] = _dim_then(dims[d], *maps[t])
            axes[a] = ((d, out_t.shape[a]),) if dims[d] is not None else _none_layout(
                out_t.shape[a])
        mixed = {d for d in g.spatial_in(1) if dims[d] is not None}
        axes[1] = _none_layout(out_t.shape[1])
        out = _Geo(tuple(dims), tuple(axes), g.why).with_global(mixed)
        return _GeoSeq((out, out)) if isinstance(value, (tuple, list)) else out

    def _window(self, node, kind, g, x, value, nd, kernel, stride, dilation, padding):
        maps = [(_affine(s, -p), _affine(s, -p + d * (k - 1)))
                for k, s, d, p in zip(kernel, stride, dilation, padding, strict=True)]
        out = self._window_axes(node, kind, g, x, value, nd, maps)
        self._record(node, kind, out[0] if isinstance(out, _GeoSeq) else out,
                     tuple(kernel), tuple(stride), tuple(dilation), tuple(padding))
        return out

    def _transposed(self, node, kind, g, x, value, nd, kernel, stride, dilation, padding):
        maps = []
        for k, s, d, p in zip(kernel, stride, dilation, padding, strict=True):
            lo, hi = [], []
            for o in range(s):
                reads = [(o + p - d * t) // s for t in range(k) if (o + p - d * t) % s == 0]
                if not reads:
                    raise _Unsupported(
                        f"with kernel {k} smaller than stride {s}, some outputs receive no "
                        "input at all (their field is empty)")
                lo.append(min(reads))
                hi.append(max(reads))
            maps.append((_Map(s, 1, tuple(lo)), _Map(s, 1, tuple(hi))))
        out = self._window_axes(node, kind, g, x, value, nd, maps)
        self._record(node, kind, out, tuple(kernel), tuple(Fraction(1, s) for s in stride),
                     tuple(dilation), tuple(padding))
        return out

    def _adaptive(self, node, kind, g, x, value):
        out_t = value[0] if isinstance(value, (tuple, list)) else value
        nd = x.dim() - 2 if kind[-2:] not in ("1d", "2d", "3d") else int(kind[-2])
        maps, glob, kernels = [], set(), []
        for t in range(nd):
            a = x.dim() - nd + t
            n, m = x.shape[a], out_t.shape[a]
            if m == 1 and n > 1:
                for d in g.spatial_in(a):
                    glob.add(d)
                maps.append((_affine(1, 0), _affine(1, 0)))
                kernels.append(n)
                continue
            # PyTorch: window o covers [floor(o n / m), ceil((o + 1) n / m))
            slope = Fraction(n, m)
            maps.append((_periodic(lambda o, s=slope: math.floor(o * s), slope),
                         _periodic(lambda o, s=slope: math.ceil((o + 1) * s) - 1, slope)))
            kernels.append(math.ceil(slope) if slope.denominator == 1 else
                           math.ceil(slope) + 1)
        out = self._window_axes(node, kind, g.with_global(glob), x, value, nd, maps)
        self._record(node, kind, out[0] if isinstance(out, _GeoSeq) else out,
                     kernel=tuple(kernels))
        return out

    def _pad(self, node, kind, g, x, value, pad):
        dims, axes = list(g.dims), list(g.axes)
        left = []
        for i in range(0, len(pad), 2):
            a = x.dim() - 1 - i // 2
            spatial = g.spatial_in(a)
            if spatial:
                d = next(iter(spatial))
                if g.pure_axis(d) != a:
                    raise _Unsupported(f"it pads axis {a}, which merges spatial dims "
                                       f"{sorted(spatial)} with other axes")
                dims[d] = _dim_then(dims[d], _affine(1, -pad[i]), _affine(1, -pad[i]))
                axes[a] = ((d, value.shape[a]),)
                left.append(pad[i])
            else:
                axes[a] = _none_layout(value.shape[a])
        out = _Geo(tuple(dims), tuple(axes), g.why)
        self._record(node, kind, out, padding=tuple(reversed(left)))
        return out

    def _interpolate(self, node, kind, g, x, value, scale_factor, mode, align_corners):
        nd = x.dim() - 2
        if mode == "area":
            return self._adaptive(node, f"{kind} (area)", g, x, value)
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else \
            [scale_factor] * nd
        maps = []
        for t in range(nd):
            n, m = x.shape[2 + t], value.shape[2 + t]
            sf = factors[t]
            if mode in ("nearest", "nearest-exact"):
                scale = (1 / Fraction(sf).limit_denominator(1000)) if sf else Fraction(n, m)
                shift = Fraction(1, 2) if mode == "nearest-exact" else Fraction(0)

                def near(o, s=scale, h=shift):
                    return math.floor((o + h) * s)

                maps.append((_periodic(near, scale), _periodic(near, scale)))
                continue
            if mode not in ("linear", "bilinear", "trilinear", "bicubic"):
                raise _Unsupported(f"interpolation mode {mode!r}")
            cubic = mode == "bicubic"
            if align_corners:
                scale = Fraction(n - 1, m - 1) if m > 1 else Fraction(0)
                offset = Fraction(0)
            else:
                scale = (1 / Fraction(sf).limit_denominator(1000)) if sf else Fraction(n, m)
                offset = scale / 2 - Fraction(1, 2)
            if scale == 0:
                raise _Unsupported("interpolation to a single position")

            def low(o, s=scale, c=offset, cub=cubic):
                src = o * s + c
                whole = math.floor(src)
                return whole - 1 if cub and src != whole else whole

            def high(o, s=scale, c=offset, cub=cubic):
                src = o * s + c
                whole = math.floor(src)
                return whole if src == whole else whole + (2 if cub else 1)

            maps.append((_periodic(low, scale), _periodic(high, scale)))
        out = self._window_axes(node, kind, g, x, value, nd, maps)
        self._record(node, f"{kind} ({mode})",
                     out, stride=tuple(_plain(Fraction(x.shape[2 + t], value.shape[2 + t]))
                                       for t in range(nd)))
        return out

    def _pixel_shuffle(self, node, kind, g, x, value, r, up):
        if up:
            maps = [(_Map(r, 1, (0,) * r), _Map(r, 1, (0,) * r))] * 2
        else:
            maps = [(_affine(r, 0), _affine(r, r - 1))] * 2
        out = self._window_axes(node, kind, g, x, value, 2, maps) if x.dim() == 4 else None
        if out is None:
            raise _Unsupported("pixel shuffle of a tensor that is not (N, C, H, W)")
        self._record(node, kind, out, kernel=(1, 1) if up else (r, r),
                     stride=(Fraction(1, r),) * 2 if up else (r, r))
        return out

    # -- axis bookkeeping
    def _mix_axes(self, node, kind, g, x, axes, value, verb):
        """An op whose outputs depend on every position along ``axes`` (normalisation over
        them, softmax, a linear layer over the last axis): spatial dims there go global."""
        nd = x.dim()
        which = set()
        for a in axes:
            which |= g.spatial_in(a % nd)
        which = {d for d in which if g.dims[d] is not None}
        out = g.with_global(which)
        if isinstance(value, torch.Tensor) and value.shape != x.shape:
            out = _Geo(out.dims, tuple(
                layout if value.shape[a] == x.shape[a] else _none_layout(value.shape[a])
                for a, layout in enumerate(out.axes)), out.why)
        if which:
            label = self.names.get(id(self._submodule(node.target)), node.target) \
                if node.op == "call_module" else node.name
            self.notes.append(
                f"'{label}' ({kind}) {verb} spatial positions of the same sample (spatial dims "
                f"{sorted(which)}): every output depends on the whole input there (global)")
        self._record(node, kind, out)
        return out

    def _permute(self, node, name, g, x, margs, mkwargs):
        nd = x.dim()
        if name == "permute":
            perm = margs[1] if len(margs) == 2 and isinstance(margs[1], (tuple, list)) else \
                margs[1:] or mkwargs.get("dims")
            perm = [p % nd for p in perm]
        elif name == "t":
            perm = list(range(nd))[::-1]
        elif name in ("movedim", "moveaxis"):
            a = _bind(margs, mkwargs, ("input", "source", "destination"), {})
            src = a["source"] if isinstance(a["source"], (tuple, list)) else [a["source"]]
            dst = a["destination"] if isinstance(a["destination"], (tuple, list)) else \
                [a["destination"]]
            src, dst = [s % nd for s in src], [d % nd for d in dst]
            rest = iter([i for i in range(nd) if i not in src])
            placed = dict(zip(dst, src, strict=True))
            perm = [placed[i] if i in placed else next(rest) for i in range(nd)]
        else:
            a = _bind(margs, mkwargs, ("input", "dim0", "dim1"), {})
            perm = list(range(nd))
            i, j = a["dim0"] % nd, a["dim1"] % nd
            perm[i], perm[j] = perm[j], perm[i]
        return _Geo(g.dims, tuple(g.axes[p] for p in perm), g.why)

    def _reshape(self, node, kind, g, x, value):  # noqa: C901 - one careful walk
        """Follow view/reshape/flatten/unflatten/squeeze: the row-major factors of the old
        axes are regrouped into the new ones. A spatial dim split into pieces is kept as
        ``(dim, size, step, outermost)`` factors (merged back when they meet again in
        order), so space-to-depth and depth-to-space can be followed."""
        if not isinstance(value, torch.Tensor):
            raise _Unsupported("it does not return a tensor")
        label = f"'{node.name}' ({kind}{_where()})"
        factors = [f if len(f) == 4 else (f[0], f[1], 1, True)
                   for layout in g.axes for f in layout]
        lost: set[int] = set()
        out_axes, pos = [], 0
        for size in value.shape:
            axis: list = []
            need = size
            while need > 1 and pos < len(factors):
                ent, fs, step, outer = factors[pos]
                if need % fs == 0:
                    axis.append(factors[pos])
                    need //= fs
                    pos += 1
                    continue
                piece = math.gcd(fs, need)
                if piece == 1:  # the axes interleave: give up on this and the rest
                    lost |= {f[0] for f in factors[pos:] if f[0] is not None
                             and g.dims[f[0]] is not None}
                    rest = math.prod(f[1] for f in factors[pos:])
                    factors = factors[:pos] + [(None, rest, 1, True)]
                    continue
                if ent is None:
                    axis.append((None, piece, 1, True))
                    factors[pos] = (None, fs // piece, 1, True)
                else:  # the outer piece goes first (row-major)
                    axis.append((ent, piece, step * (fs // piece), outer))
                    factors[pos] = (ent, fs // piece, step, False)
                need //= piece
            out_axes.append(axis)
        for f in factors[pos:]:  # trailing size-1 spatial factors
            if out_axes:
                out_axes[-1].append(f)
        axes = []
        for axis in out_axes:
            merged: list = []
            for f in axis:
                if f[0] is None and f[1] == 1:
                    continue
                if merged and f[0] is not None and merged[-1][0] == f[0] and not f[3] \
                        and merged[-1][2] == f[1] * f[2]:
                    prev = merged.pop()
                    f = (f[0], prev[1] * f[1], f[2], prev[3])
                merged.append(f)
            axes.append(tuple((f[0], f[1]) if f[2] == 1 and f[3] else f for f in merged))
        why = {d: w for d, w in g.why.items() if w.startswith("concatenated")}
        why.update({d: f"split by {label}" for d in lost})
        for layout in axes:
            for f in layout:
                d = f[0]
                if d is None or g.dims[d] is None:
                    continue
                old = g.why.get(d, "")
                if len(f) == 4:
                    why.setdefault(d, old if old.startswith("split") else f"split by {label}")
                elif len(layout) > 1:
                    why.setdefault(d, old if old.startswith("merged") else
                                   f"merged with other axes by {label}")
        out = _Geo(g.dims, tuple(axes), why)
        if any(d not in g.why for d in why):
            self._record(node, kind, out)
        return out

    def _getitem(self, node, g, x, index, value):
        if isinstance(g, _GeoSeq):
            return g[index] if isinstance(index, int) else _GeoSeq(g[index])
        if not isinstance(x, torch.Tensor) or not isinstance(g, _Geo):
            return g
        index = index if isinstance(index, tuple) else (index,)
        real = sum(1 for i in index if i is not None and i is not Ellipsis)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (x.dim() - real) + index[at + 1:]
        dims, axes, a = list(g.dims), [], 0
        for item in index:
            if item is None:
                axes.append(())
                continue
            layout, size = g.axes[a], x.shape[a]
            spatial = sorted(d for d in g.spatial_in(a) if g.dims[d] is not None)
            if isinstance(item, slice):
                start, stop, step = item.indices(size)
                length = len(range(start, stop, step))
                if spatial and (start, step, length) != (0, 1, size):
                    d = spatial[0]
                    if g.pure_axis(d) != a:
                        raise _Unsupported(f"it slices axis {a}, which merges spatial dims "
                                           f"{spatial} with other axes")
                    dims[d] = _dim_then(dims[d], _affine(step, start), _affine(step, start))
                    axes.append(((d, length),))
                else:
                    axes.append(layout if length == size else _none_layout(length))
            elif spatial:
                raise _Unsupported(
                    f"it indexes spatial axis {a} with {item!r}: a fixed position or a "
                    "gathered set does not slide with the output")
            elif isinstance(item, torch.Tensor) and item.dim() > 0:
                axes.append(None)  # advanced indexing: filled from the result's shape below
            a += 1
        axes += list(g.axes[a:])
        if len(axes) != value.dim() or sum(ax is None for ax in axes) > 1:
            raise _Unsupported("this indexing pattern (advanced indexing) is not understood")
        axes = [_none_layout(value.shape[i]) if ax is None else ax for i, ax in enumerate(axes)]
        out = _Geo(tuple(dims), tuple(axes), g.why)
        if out.dims != g.dims:
            self._record(node, "crop", out)
        return out

    def _cat(self, node, name, gargs, margs, mkwargs, value):
        a = _bind(margs, mkwargs, ("tensors", "dim"), {"dim": 0})
        tensors, geos = margs[0], gargs[0]
        nd = value.dim()
        axis = a["dim"] % nd
        if not isinstance(tensors, (list, tuple)):
            raise _Unsupported("it concatenates the slices of one tensor, not a list of tensors")
        parts, joined = [], set()
        for geo, meta in zip(geos, tensors, strict=True):
            if not isinstance(geo, _Geo):
                continue
            if name == "stack":
                axes = geo.axes[:axis] + ((),) + geo.axes[axis:]
                shape = (*meta.shape[:axis], 1, *meta.shape[axis:])
            else:
                joined |= {d for d in geo.spatial_in(axis) if geo.dims[d] is not None}
                axes = geo.axes[:axis] + ((),) + geo.axes[axis + 1:]
                shape = (*meta.shape[:axis], 1, *meta.shape[axis + 1:])
            parts.append((_Geo(geo.dims, axes, geo.why), torch.empty(shape, device="meta")))
        out = self._union(node, name, parts, tuple(value.shape), record=len(parts) > 1)
        if joined:  # along a spatial axis (a class token before patch tokens): the dims are
            # no longer axes of their own, but stay tagged so that a later mix over this axis
            # (attention) still makes them global
            why = dict(out.why)
            for d in joined:
                why.setdefault(d, f"concatenated with other entries along its axis by "
                                  f"'{node.name}'{_where()}")
            layout = _none_layout(value.shape[axis]) + tuple((d, 1) for d in sorted(joined))
            out = _Geo(out.dims, out.axes[:axis] + (layout,) + out.axes[axis + 1:], why)
        return out

    def _split(self, node, name, g, x, margs, mkwargs, value):
        second = "chunks" if name == "chunk" else "sections"
        params = ("input", "dim") if name == "unbind" else ("input", second, "dim")
        a = _bind(margs, mkwargs, params, {"dim": 0})
        axis = a["dim"] % x.dim()
        if [d for d in g.spatial_in(axis) if g.dims[d] is not None]:
            raise _Unsupported(f"it splits along axis {a['dim']}, a spatial axis")
        pieces = []
        for v in value:
            if name == "unbind":
                axes = g.axes[:axis] + g.axes[axis + 1:]
            else:
                axes = g.axes[:axis] + (_none_layout(v.shape[axis]),) + g.axes[axis + 1:]
            pieces.append(_Geo(g.dims, axes, g.why))
        return _GeoSeq(pieces)

    def _reduce(self, node, name, g, x, margs, mkwargs, value):
        a = _bind(margs, mkwargs, ("input", *_REDUCTIONS[name]), {"dim": None})
        dim = a["dim"]
        nd = x.dim()
        if dim is None or (isinstance(dim, (tuple, list)) and not dim):
            reduced = set(range(nd))
        else:
            reduced = {int(d) % nd for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
        out_t = value[0] if isinstance(value, (tuple, list)) else value
        which = set()
        for ax in reduced:
            which |= g.spatial_in(ax)
        geo = g.with_global(which)
        if out_t.dim() == nd:
            axes = tuple(() if ax in reduced else geo.axes[ax] for ax in range(nd))
        elif out_t.dim() == nd - len(reduced):
            axes = tuple(geo.axes[ax] for ax in range(nd) if ax not in reduced)
        else:
            raise _Unsupported(f"its result shape {tuple(out_t.shape)} does not match a "
                               f"reduction over axes {sorted(reduced)} of {tuple(x.shape)}")
        out = _Geo(geo.dims, axes, geo.why)
        self._record(node, name, out)
        return _GeoSeq((out, out)) if isinstance(value, (tuple, list)) else out

    def _matmul(self, node, name, gargs, margs, value):
        a, b = margs[0], margs[1]
        ga, gb = gargs[0], gargs[1]
        if a.dim() < 2 or b.dim() < 2:
            raise _Unsupported("matmul with a 1-D operand")
        parts = []
        nd = value.dim()
        if isinstance(ga, _Geo):
            geo = ga.with_global(ga.spatial_in(a.dim() - 1))
            parts.append((_Geo(geo.dims, geo.axes[:-1] + ((),), geo.why),
                          torch.empty((*a.shape[:-1], 1), device="meta")))
        if isinstance(gb, _Geo):
            geo = gb.with_global(gb.spatial_in(b.dim() - 2))
            parts.append((_Geo(geo.dims, geo.axes[:-2] + ((),) + geo.axes[-1:], geo.why),
                          torch.empty((*b.shape[:-2], 1, b.shape[-1]), device="meta")))
        out = self._union(node, name, parts, tuple(value.shape), record=False)
        self._record(node, name, out)
        del nd
        return out

    def _probe(self, node, kind, target, name, gargs, margs, mkwargs, value):
        """An unknown function: element-wise if changing one input pixel changes only the
        output at that pixel (run for real on random data, the same random stream twice)."""
        declare = (f"if it is element-wise, declare it: receptive_field(model, input_size, "
                   f"elementwise=[{name!r}])")
        at = next((i for i, ga in enumerate(gargs) if isinstance(ga, _Geo)), None)
        x = margs[at] if at is not None else None
        if at is None or not isinstance(value, torch.Tensor) or value.shape != x.shape:
            raise _Unsupported(f"it is not a function with a known receptive-field geometry "
                               f"and it changes the tensor's shape; {declare}")
        g = gargs[at]
        gen = torch.Generator().manual_seed(0)

        def real(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                if t.is_floating_point():
                    return torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5
                return torch.zeros(t.shape, dtype=t.dtype)
            return t

        args = list(fx.node.map_aggregate(margs, real))
        kwargs = fx.node.map_aggregate(mkwargs, real)
        centre = tuple(x.shape[ax] // 2 if any(f[0] is not None for f in g.axes[ax])
                       else slice(None) for ax in range(x.dim()))
        spatial_axes = [ax for ax in range(x.dim()) if not isinstance(centre[ax], slice)]
        bumped = args[at].clone()
        bumped[centre] += 1.0

        def call(inputs: list) -> Any:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                if kind == "call_method":
                    return getattr(inputs[0], target)(*inputs[1:], **kwargs)
                return target(*inputs, **kwargs)

        try:
            base = call(args)
            moved = call(args[:at] + [bumped] + args[at + 1:])
            changed = (base != moved)
            others = tuple(ax for ax in range(x.dim()) if ax not in spatial_axes)
            where_changed = changed.any(dim=others) if others else changed
            where_changed[tuple(centre[ax] for ax in spatial_axes)] = False
            local = not bool(where_changed.any())
        except Exception as err:
            raise _Unsupported(f"it is not a function with a known receptive-field geometry, "
                               f"and probing it failed ({type(err).__name__}); {declare}"
                               ) from None
        if not local:
            raise _Unsupported("it is not a function with a known receptive-field geometry, "
                               "and a probe found it is not element-wise (changing one input "
                               f"pixel changed outputs at other positions); {declare}")
        self.notes.append(f"'{name}' is not in the table of known functions; a probe found it "
                          "element-wise (one changed input pixel changes only that output "
                          "pixel)")
        return self._elementwise(node, name, gargs, {}, margs, mkwargs, value)


class _GeoSeq(tuple):
    """Geometry of a tuple/list of tensors (chunk, split, pooling with indices)."""


def _show(layout: tuple) -> str:
    return "x".join(f"{'spatial ' + str(f[0]) if f[0] is not None else 'channels'}({f[1]})"
                    for f in layout) or "1"


def _conv_padding(padding: Any, kernel: Sequence[int], dilation: Sequence[int], nd: int
                  ) -> tuple[int, ...]:
    if isinstance(padding, str):
        if padding == "same":  # PyTorch pads total // 2 on the left
            return tuple((d * (k - 1)) // 2 for d, k in zip(dilation, kernel, strict=True))
        return (0,) * nd
    return _tuple(padding, nd)


# ------------------------------------------------------------------ shapes by formula
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
    """The output shape of the common layers, by formula (running meta kernels costs about
    a millisecond a layer); None: run the layer on meta tensors instead."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if x.dim() < 2 or x.shape[1] != m.num_features:
            raise ValueError(f"{type(m).__name__}({m.num_features}) got an input of shape "
                             f"{tuple(x.shape)}")
        return tuple(x.shape)
    if isinstance(m, _ELEMENTWISE_MODULES) and not isinstance(m, (nn.PReLU, nn.ChannelShuffle)):
        return tuple(x.shape)
    if isinstance(m, _CONV + _MAXPOOL + _AVGPOOL):
        nd = int(type(m).__name__[-2])
        if x.dim() != nd + 2 or getattr(m, "return_indices", False):
            return None  # unbatched, wrong, or a tuple: let PyTorch (and the rules) say
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


# ------------------------------------------------------------------------ the analysis
def _trace_model(tracer: _Tracer, model: nn.Module) -> fx.Graph:
    try:
        return tracer.trace(model)
    except _Failed as err:
        raise DLSummaryError(err.message) from None
    except fx.proxy.TraceError as err:
        line = _user_line(_tb_frames(err))
        raise DLSummaryError(
            f"receptive_field could not trace {type(model).__name__} with torch.fx"
            f"{' at ' + line if line else ''}: data-dependent control flow (an if/for on "
            "tensor values, not shapes) cannot be traced; move it out of forward(), or "
            "analyse the traceable part of the model"
        ) from None
    except Exception as err:  # the user's forward raised (on our meta stand-ins)
        line = _user_line(_tb_frames(err))
        first = str(err).splitlines()[0] if str(err) else ""
        raise DLSummaryError(
            f"receptive_field: {type(model).__name__}.forward raised {type(err).__name__}"
            f"{' at ' + line if line else ''}: {first}"
        ) from None


def _tb_frames(err: BaseException) -> list[Any]:
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]  # innermost first


def _check_input(model: Any, input_size: Any, tool: str) -> tuple[int, ...]:
    if not isinstance(model, nn.Module):
        raise DLSummaryError(f"{tool} needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(input_size, torch.Tensor):
        input_size = tuple(input_size.shape)
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        shown = repr(input_size)
        shown = shown if len(shown) < 60 else f"of type {type(input_size).__name__}"
        raise DLSummaryError(
            f"{tool}: input_size {shown} must be the shape of an input batch, e.g. "
            "(1, 3, 224, 224), or an example input tensor") from None
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


def receptive_field(
    model: nn.Module,
    input_size: Sequence[int] | torch.Tensor,
    *,
    elementwise: Iterable[Callable | str | type[nn.Module]] = (),
    fallback: str | None = None,
) -> ReceptiveField:
    """The receptive field of ``model``'s output on inputs of shape ``input_size`` (a shape,
    or an example input tensor).

    The model is traced with ``torch.fx`` on meta tensors of that shape (no arithmetic;
    nothing in the model changes). ``elementwise`` declares functions, method names or
    module types that act per position (custom activations). ``fallback="measure"``: where
    the analysis refuses, measure the field from gradient footprints instead
    (``method == "measured"``, the refusal in ``notes``).
    """
    if fallback not in (None, "measure"):
        raise DLSummaryError(f"receptive_field: fallback={fallback!r}; use None or 'measure'")
    size = _check_input(model, input_size, "receptive_field")
    try:
        return _analyse(model, size, tuple(elementwise))
    except DLSummaryError as err:
        if fallback is None:
            raise
        return _measured_field(model, size, str(err))


def _analyse(model: nn.Module, size: tuple[int, ...], elementwise: tuple) -> ReceptiveField:
    declared = tuple(e for e in elementwise if isinstance(e, type))
    if fx.Tracer().is_leaf_module(model, ""):  # a bare torch.nn layer: analyse it as a layer
        if not isinstance(model, _KNOWN_MODULES + declared):
            raise DLSummaryError(
                f"receptive_field cannot analyse the model itself ({type(model).__module__}."
                f"{type(model).__qualname__}): this layer type has no known receptive-field "
                f"geometry. Supported: {SUPPORTED}."
            )
        model = nn.Sequential(model)
    x = torch.empty(size, dtype=_model_dtype(model), device="meta")
    tracer = _Tracer(model, x, elementwise)
    graph = _trace_model(tracer, model)
    name = type(model).__name__
    output_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    result = output_node.args[0]
    value = tracer.meta.get(result) if isinstance(result, fx.Node) else None
    if not isinstance(value, torch.Tensor):
        raise DLSummaryError(
            f"receptive_field: {name} returns a {type(value or result).__name__}, not one "
            "tensor; analyse a model (or wrapper) that returns the tensor you care about")
    geo = tracer.geo.get(result)
    if not isinstance(geo, _Geo):
        raise DLSummaryError(f"receptive_field: the output of {name} does not depend on its "
                             "input")
    sizes, strides, pads, outs, maps = [], [], [], [], []
    uneven = []
    for d, dim in enumerate(geo.dims):
        if dim is None:
            sizes.append(None)
            strides.append(None)
            pads.append(None)
            outs.append(1)
            maps.append(None)
            continue
        axis = geo.pure_axis(d)
        piece = geo.piece_axis(d) if axis is None else None
        spread = geo.spread_axis(d) if axis is None and piece is None else None
        if piece is not None:  # a space-to-depth output: each position is a block
            geo = geo.absorb_pieces(d, *piece)
            dim, axis = geo.dims[d], piece[0]
        elif spread is not None:  # a depth-to-space output: positions share a source
            geo = geo.absorb_spread(d, *spread)
            dim, axis = geo.dims[d], spread[0]
        if axis is None:
            reason = geo.why.get(d, "it is no longer an axis of its own")
            raise DLSummaryError(
                f"receptive_field: the output of {name} (shape {tuple(value.shape)}) has "
                f"spatial dim {d} flattened or merged but not mixed ({reason}), so an output "
                "index names no spatial position; analyse the model up to that op")
        per_output = _dim_sizes(dim)
        if len(set(per_output)) > 1:
            uneven.append(
                f"the fields of neighbouring outputs along spatial dim {d} differ in size "
                f"({', '.join(map(str, sorted(set(per_output))))} input pixels; upsampling "
                "or uneven windows): the maximum is reported")
        sizes.append(max(per_output))
        strides.append(_plain(dim[0].slope))
        pads.append(-dim[0](0))
        outs.append(int(value.shape[axis]))
        maps.append(dim)
    return ReceptiveField(
        input_size=size,
        output_size=tuple(outs),
        size=tuple(sizes),
        stride=tuple(strides),
        padding=tuple(pads),
        is_global=any(s is None for s in sizes),
        layers=tuple(tracer.rows),
        misaligned=tuple(dict.fromkeys(tracer.misaligned + uneven)),
        notes=tuple(dict.fromkeys(tracer.notes)),
        maps=tuple(maps),
    )


def _measured_field(model: nn.Module, size: tuple[int, ...], refusal: str) -> ReceptiveField:
    """The field from gradient footprints: the centre output and its next neighbour along
    each spatial dim (their offset is the effective stride)."""
    try:
        spatial_out, centre, found = _footprints(model, size, None, neighbours=True)
    except DLSummaryError as err:
        raise DLSummaryError(f"{refusal}; measuring instead failed too: {err}") from None
    spatial_in = size[2:]
    sizes, strides, pads = [], [], []
    base = found[0][2]
    for d in range(len(spatial_in)):
        (a0, b0) = base[d]
        others = [f for f in found[1:] if f[0][d] != centre[d]]
        covers = (a0, b0) == (0, spatial_in[d])
        if others:
            (a1, b1) = others[0][2][d]
            step = others[0][0][d] - centre[d]
            covers = covers and (a1, b1) == (0, spatial_in[d])
            stride = Fraction(a1 - a0, step)
        else:
            stride = None
        if covers:
            sizes.append(None)
            strides.append(None)
            pads.append(None)
            continue
        sizes.append(max(b0 - a0, *(f[2][d][1] - f[2][d][0] for f in others)))
        strides.append(_plain(stride) if stride is not None else None)
        pads.append(int(stride * centre[d] - a0) if stride is not None else None)
    first = refusal.splitlines()[0]
    note = (f"the analysis refused ({first}); measured from the gradient footprints of "
            f"outputs {[f[0] for f in found]}")
    if any(s is None for s in sizes):
        note += "; 'global' means the footprint covers the whole input"
    return ReceptiveField(
        input_size=size, output_size=tuple(spatial_out), size=tuple(sizes),
        stride=tuple(strides), padding=tuple(pads), is_global=any(s is None for s in sizes),
        layers=(), notes=(note,), method="measured")
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


class _Nudged(nn.Module):
    """``x + 0.001 norm(x)``: the normalisation's gradient footprint (global where its
    statistics span positions), but values that stay positive, so that a functional ReLU
    after it cannot hide a pixel as a sign-changing normalisation would."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1e-3 * self.norm(x)


def _faithful_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` whose gradient footprint is exactly its geometric one: positive
    random weights (seeded; no symmetry can cancel a gradient), zero biases, max pooling as
    average pooling of the same geometry, element-wise layers as identities, normalisations
    nudged to keep values positive."""
    clone = copy.deepcopy(model).to(dtype=dtype).eval()
    replacements = []
    for name, m in clone.named_modules():
        if isinstance(m, _MAXPOOL) and not m.return_indices:
            replacements.append((name, _SumPool(m, int(type(m).__name__[-2]))))
        elif isinstance(m, _ELEMENTWISE_MODULES) and not isinstance(m, nn.ChannelShuffle):
            replacements.append((name, nn.Identity()))
        elif isinstance(m, _NORM_GLOBAL):
            replacements.append((name, _Nudged(m)))
        elif isinstance(m, _ADAPTIVE) and "Max" in type(m).__name__ and not m.return_indices:
            avg = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
            replacements.append((name, avg[int(type(m).__name__[-2]) - 1](m.output_size)))
    for name, new in replacements:
        if not name:
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(clone.get_submodule(parent_name) if parent_name else clone, child, new)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in clone.modules():
            weight = getattr(m, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
                fan_in = weight[0].numel()
                noise = torch.rand(weight.shape, generator=generator, dtype=weight.dtype)
                weight.copy_((0.5 + noise) / fan_in)
            elif isinstance(weight, nn.Parameter):
                weight.fill_(1.0)
            bias = getattr(m, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.zero_()
    return clone


def _footprints(model: nn.Module, size: tuple[int, ...], output_index: Sequence[int] | None,
                neighbours: bool = False) -> tuple[tuple[int, ...], tuple[int, ...], list]:
    """One forward pass of the faithful copy, then one backward pass per output "pixel" (all
    channels at one position): the centre (or ``output_index``) and, with ``neighbours``, the
    next position along each spatial dim. Returns (output spatial shape, index, [(index,
    mask, bbox)])."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    clone = _faithful_copy(model, torch.float64)
    generator = torch.Generator().manual_seed(0)
    x = (0.5 + torch.rand((1, *size[1:]), generator=generator, dtype=torch.float64)).to(device)
    x.requires_grad_(True)
    try:
        out = clone(x)
    except Exception as err:
        raise DLSummaryError(
            f"empirical_receptive_field: running {type(model).__name__} on an input of "
            f"shape {(1, *size[1:])} failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); check input_size"
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
    indices = [index]
    if neighbours:
        for d, s in enumerate(spatial_out):
            if s > 1:
                step = 1 if index[d] + 1 < s else -1
                indices.append(tuple(i + step if k == d else i for k, i in enumerate(index)))
    found = []
    for n, idx in enumerate(indices):
        (grad,) = torch.autograd.grad(out[(0, slice(None), *idx)].sum(), x,
                                      retain_graph=n + 1 < len(indices))
        mask = (grad[0] != 0).any(dim=0).cpu().numpy()
        if not mask.any():
            raise DLSummaryError("empirical_receptive_field: no input pixel has a non-zero "
                                 f"gradient for output {idx}")
        bbox = []
        for d in range(mask.ndim):
            hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d)))[0]
            bbox.append((int(hit[0]), int(hit[-1]) + 1))
        found.append((idx, mask, tuple(bbox)))
    return spatial_out, index, found


def empirical_receptive_field(
    model: nn.Module, input_size: Sequence[int] | torch.Tensor,
    output_index: Sequence[int] | None = None,
) -> EmpiricalReceptiveField:
    """Measure the input footprint of one output element (default: the centre one) from the
    gradient, on a geometry-faithful float64 copy of ``model`` (the model is not changed)."""
    size = _check_input(model, input_size, "empirical_receptive_field")
    _, index, found = _footprints(model, size, output_index)
    _, mask, bbox = found[0]
    return EmpiricalReceptiveField(
        input_size=size, output_index=index, mask=mask, bbox=bbox,
        size=tuple(b - a for a, b in bbox),
    )
