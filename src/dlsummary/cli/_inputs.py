"""The inputs a CLI command feeds a user's model: ``--input SHAPE[:DTYPE[:LOW..HIGH]]``,
given once per argument of ``forward`` (token ids, masks, several tensors), or
``--input-fn FILE.py:callable`` returning the example inputs (as torchinfo's
``input_data``). Random values are drawn from a seeded generator, so a command gives the
same numbers on every run."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from dlsummary.cli._common import CLIError, load_callable, parse_input_size

#: dtype names accepted after the shape, and the kind of random values each gets
_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "bool": "bool",
}
DEFAULT_INT_RANGE = (0, 10)


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: the shape, the dtype and, for integers, the range ``[low, high)``."""

    shape: tuple[int, ...]
    dtype: str = "float64"
    low: int | None = None
    high: int | None = None

    def describe(self) -> str:
        text = f"{tuple(self.shape)} {self.dtype}"
        if self.dtype.startswith("int"):
            text += f" in [{self.low}, {self.high})"
        return text


def parse_input_spec(text: str) -> InputSpec:
    """``"4,12:long:0..1000"`` -> ``InputSpec((4, 12), "int64", 0, 1000)``."""
    parts = text.split(":")
    if len(parts) > 3:
        raise CLIError(f"--input {text!r} has too many ':'; write SHAPE[:DTYPE[:LOW..HIGH]], "
                       "e.g. --input 4,12:long:0..1000")
    try:
        shape = parse_input_size(parts[0])
    except CLIError:
        raise CLIError(f"--input {text!r}: {parts[0]!r} is not a shape; write "
                       "SHAPE[:DTYPE[:LOW..HIGH]], e.g. --input 1,3,16,16 or "
                       "--input 4,12:long:0..1000") from None
    dtype = _DTYPES.get(parts[1].strip().lower()) if len(parts) > 1 else "float64"
    if dtype is None:
        raise CLIError(f"--input {text!r}: unknown dtype {parts[1]!r}; use one of "
                       f"{', '.join(sorted(set(_DTYPES)))}")
    if len(parts) < 3:
        low, high = DEFAULT_INT_RANGE if dtype.startswith("int") else (None, None)
        return InputSpec(shape, dtype, low, high)
    if not dtype.startswith("int"):
        raise CLIError(f"--input {text!r}: a range LOW..HIGH is for integer inputs "
                       "(token ids), e.g. --input 4,12:long:0..1000")
    bounds = parts[2].split("..")
    try:
        low, high = int(bounds[0]), int(bounds[1])
        if len(bounds) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise CLIError(f"--input {text!r}: range {parts[2]!r} must be LOW..HIGH with "
                       "integers, e.g. 0..1000 (HIGH excluded)") from None
    if high <= low:
        raise CLIError(f"--input {text!r}: range {parts[2]!r} is empty; HIGH must exceed LOW")
    return InputSpec(shape, dtype, low, high)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input`` (repeatable) and ``--input-fn``, beside the common ``--input-size``."""
    parser.add_argument(
        "--input", action="append", default=None, metavar="SHAPE[:DTYPE[:LOW..HIGH]]",
        help="one argument of forward, e.g. 1,3,16,16 (float64, normal), 4,12:long:0..1000 "
             "(token ids), 4,12:bool (a mask); give it once per argument, in order",
    )
    parser.add_argument(
        "--input-fn", default=None, metavar="FILE.py:callable",
        help="a callable returning the example input (a tensor, or a tuple of them)",
    )


def make_inputs(args: argparse.Namespace, device: Any) -> tuple[tuple[Any, ...], list[str]]:
    """The example inputs from ``--input``, ``--input-fn`` or ``--input-size`` (exactly
    one), seeded by ``--seed``; and a short description of each."""
    import torch

    given = [name for name, value in (("--input", args.input), ("--input-fn", args.input_fn),
                                      ("--input-size", args.input_size)) if value]
    if len(given) != 1:
        raise CLIError(
            "give the model's input once: --input SHAPE[:DTYPE] (repeat it for several "
            "arguments), --input-fn FILE.py:callable or --input-size N,C,H,W"
            + (f"; got {' and '.join(given)}" if given else "")
        )
    generator = torch.Generator().manual_seed(args.seed)
    if args.input_fn:
        make = load_callable(args.input_fn)
        if not callable(make):
            raise CLIError(f"--input-fn {args.input_fn!r} is a {type(make).__name__}, "
                           "not a callable")
        torch.manual_seed(args.seed)
        try:
            value = make()
        except Exception as err:
            raise CLIError(f"--input-fn {args.input_fn!r} raised {type(err).__name__}: "
                           f"{err}") from err
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        moved = tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in values)
        return moved, [f"{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
                       if isinstance(v, torch.Tensor) else type(v).__name__ for v in moved]
    specs = ([parse_input_spec(t) for t in args.input] if args.input
             else [InputSpec(parse_input_size(args.input_size))])
    tensors = []
    for spec in specs:
        if spec.dtype.startswith("float"):
            tensor = torch.randn(spec.shape, generator=generator, dtype=getattr(torch, spec.dtype))
        elif spec.dtype == "bool":
            tensor = torch.rand(spec.shape, generator=generator) < 0.5
        else:
            tensor = torch.randint(spec.low, spec.high, spec.shape, generator=generator,
                                   dtype=getattr(torch, spec.dtype))
        tensors.append(tensor.to(device))
    return tuple(tensors), [s.describe() for s in specs]
