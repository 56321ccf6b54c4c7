"""Checks as first-class objects: the answer key's evidence, one claim at a time.

Every evidence cell states its claims with :func:`check` (the claim holds here) or
:func:`control` (the same measurement where the claim should *not* hold, so that the check
is seen to be able to fail). Each call compares a measured value with a threshold, and

- on success shows one line (in a notebook also a machine-readable record of the mime type
  :data:`MIME_TYPE`, which the report turns into the "Checked" list under each answer and
  into ``checks.json``), and returns the :class:`Check`;
- on failure raises :class:`CheckFailed` whose message has the item, the claim, the
  measured value and the threshold: ``losses.4.A: ReLU nets can have vanishing gradients:
  measured 3e-09, expected < 0.001``.

No state is kept between calls: the executed notebook's outputs are the record.

>>> check("cnn.3", "the receptive field is 9 pixels wide", 9, "==", 9).passed
True
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from dlsummary.errors import DLSummaryError

MIME_TYPE = "application/vnd.dlsummary.check+json"
Kind = Literal["check", "control"]
_OPERATORS = ("<", "<=", ">", ">=", "==", "!=", "between", "~", "in")
_ITEM = re.compile(r"^[a-z]+\.\d+(\.[A-Z])?$")


class CheckFailed(DLSummaryError, AssertionError):
    """A claim of the answer key did not hold: the measurement contradicts it."""

    def __init__(self, check: Check):
        self.check = check
        super().__init__(check.message())


@dataclass(frozen=True)
class Check:
    """One claim, measured: what was claimed, the value measured and what it had to be."""

    question: str  # "losses.4"
    item: str  # "losses.4.A", or the question id for a question without sub-items
    claim: str
    measured: Any  # a number, bool, string, or a list of them (JSON-able)
    expected: str  # the threshold in words: "< 0.001", "in [0.9, 1.1]"
    kind: Kind
    passed: bool

    def message(self) -> str:
        return (f"{self.item}: {self.claim}: measured {_fmt(self.measured)}, "
                f"expected {self.expected}")

    def __str__(self) -> str:
        mark = "ok" if self.passed else "FAILED"
        tag = " (control)" if self.kind == "control" else ""
        return f"[{mark}] {self.message()}{tag}"

    def to_dict(self) -> dict:
        return asdict(self)

    def _ipython_display_(self) -> None:
        """A check left as a cell's last expression was shown when it ran: show nothing
        more (no dataclass repr under the check's own line)."""


def check(item: str, claim: str, measured: Any, op: str, threshold: Any = None, *,
          tol: float | None = None, rel: float | None = None) -> Check:
    """Assert that ``measured op threshold`` holds, as evidence for ``claim`` of ``item``.

    ``op`` is one of ``<  <=  >  >=  ==  !=``; ``"between"`` with ``threshold=(lo, hi)``
    (inclusive); ``"~"`` (approximately) with ``threshold=target`` and an absolute ``tol``
    or a relative ``rel`` tolerance; ``"in"`` with a collection of allowed values.
    ``measured`` is what the experiment produced (tensors and numpy scalars are converted),
    never a constant typed into the cell.
    """
    return _record("check", item, claim, measured, op, threshold, tol, rel)


def control(item: str, claim: str, measured: Any, op: str, threshold: Any = None, *,
            tol: float | None = None, rel: float | None = None) -> Check:
    """Like :func:`check`, for a negative control: the same measurement where the claim
    should not hold. ``claim`` says what the control shows ("without the residual the ratio
    falls below 1e-3"); it must hold too, or the check beside it proves nothing."""
    return _record("control", item, claim, measured, op, threshold, tol, rel)


# --------------------------------------------------------------------------- internals

def _record(kind: Kind, item: str, claim: str, measured: Any, op: str, threshold: Any,
            tol: float | None, rel: float | None) -> Check:
    if not isinstance(item, str) or not _ITEM.match(item):
        raise DLSummaryError(f"check item {item!r} is not a question id like 'cnn.3' or "
                             "'losses.4.A'")
    if not claim or not isinstance(claim, str):
        raise DLSummaryError(f"check {item}: the claim must be a sentence, got {claim!r}")
    if op not in _OPERATORS:
        raise DLSummaryError(f"check {item}: unknown operator {op!r}; use one of "
                             f"{', '.join(_OPERATORS)}")
    value = _plain(measured)
    passed, expected = _compare(item, value, op, _plain(threshold), tol, rel)
    result = Check(question=".".join(item.split(".")[:2]), item=item, claim=claim,
                   measured=value, expected=expected, kind=kind, passed=passed)
    if not passed:
        raise CheckFailed(result)
    _show(result)
    return result


def _plain(value: Any) -> Any:
    """Tensors, numpy values and tuples as plain JSON-able Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (Sequence, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)


def _each(item: str, value: Any, threshold: Any, test) -> bool:
    """``test(v, t)`` for every element: a list of measurements is compared element by
    element (never lexicographically), against one threshold or a list of the same length."""
    if not isinstance(value, list):
        if isinstance(threshold, list):
            raise DLSummaryError(f"check {item}: a single measured value against a list "
                                 f"threshold {_fmt(threshold)}")
        return bool(test(value, threshold))
    if isinstance(threshold, list):
        if len(threshold) != len(value):
            raise DLSummaryError(f"check {item}: {len(value)} measured values against "
                                 f"{len(threshold)} thresholds")
        pairs = zip(value, threshold, strict=True)
    else:
        pairs = ((v, threshold) for v in value)
    return all(_each(item, v, t, test) for v, t in pairs)


def _compare(item: str, value: Any, op: str, threshold: Any, tol: float | None,
             rel: float | None) -> tuple[bool, str]:
    each = "each " if isinstance(value, list) and op not in ("==", "!=", "in") else ""
    try:
        if op == "between":
            lo, hi = threshold
            ok = (_each(item, value, lo, lambda v, t: v >= t)
                  and _each(item, value, hi, lambda v, t: v <= t))
            return ok, f"{each}in [{_fmt(lo)}, {_fmt(hi)}]"
        if op == "~":
            if (tol is None) == (rel is None):
                raise DLSummaryError(f"check {item}: '~' needs exactly one of tol= or rel=")

            def close(v: Any, t: Any) -> bool:
                margin = tol if tol is not None else rel * abs(t)
                return math.isfinite(v) and abs(v - t) <= margin

            spread = f"± {_fmt(tol)}" if tol is not None else f"± {_fmt(100 * rel)}%"
            return _each(item, value, threshold, close), f"{each}≈ {_fmt(threshold)} {spread}"
        if op == "in":
            return value in threshold, f"one of {_fmt(threshold)}"
        if tol is not None or rel is not None:
            raise DLSummaryError(f"check {item}: tol=/rel= only go with '~'")
        if op in ("==", "!="):
            ok = (value == threshold) if op == "==" else (value != threshold)
            return bool(ok), f"{op} {_fmt(threshold)}"
        test = {"<": lambda v, t: v < t, "<=": lambda v, t: v <= t,
                ">": lambda v, t: v > t, ">=": lambda v, t: v >= t}[op]
        return _each(item, value, threshold, test), f"{each}{op} {_fmt(threshold)}"
    except TypeError as err:
        raise DLSummaryError(f"check {item}: cannot compare measured {_fmt(value)} "
                             f"{op} {_fmt(threshold)}: {err}") from None


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        inner = ", ".join(_fmt(v) for v in value[:8])
        return f"[{inner}{', ...' if len(value) > 8 else ''}]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _show(result: Check) -> None:
    """One line of text; in a Jupyter kernel also the JSON record for the report."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display({MIME_TYPE: result.to_dict(), "text/plain": str(result)}, raw=True)
    else:
        print(result)
