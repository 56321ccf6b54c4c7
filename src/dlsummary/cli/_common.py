"""What every CLI command shares: the MODEL spec, ``--input-size``, ``--kwargs``,
``--device``, ``--json`` and the error conventions (exit 0 success, 1 a check failed,
2 bad usage or input, with a one-line message)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlsummary.errors import DLSummaryError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `tool | head` elsewhere

DEVICE_KINDS = ("cpu", "cuda", "mps")
# names people type for a device torch calls otherwise
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0", "metal": "mps",
                   "apple": "mps", "m1": "mps", "m2": "mps"}


if TYPE_CHECKING:
    import torch


class CLIError(DLSummaryError):
    """A bad command line or input; printed as one line, exit code 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a pointer to --help), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``."""
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise CLIError(
            f"--input-size {text!r} is not a list of integers; write the input batch's "
            "shape, e.g. --input-size 1,3,224,224"
        ) from None
    if not size or any(s <= 0 for s in size):
        raise CLIError(
            f"--input-size {text!r} must list positive integers, e.g. --input-size 1,3,224,224"
        )
    return size


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--kwargs '{"depth": 3}'`` -> ``{"depth": 3}``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CLIError(f"--kwargs {text!r} is not valid JSON ({err.msg}); "
                       "write e.g. --kwargs '{\"depth\": 3}'") from None
    if not isinstance(value, dict):
        raise CLIError(f"--kwargs must be a JSON object such as '{{\"depth\": 3}}', got {text!r}")
    return value


def load_callable(spec: str) -> Any:
    """Resolve ``package.module:callable`` or ``path/to/file.py:callable``."""
    if ":" not in spec:
        raise CLIError(
            f"MODEL {spec!r} must be 'package.module:callable' or 'path/to/file.py:callable'"
        )
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise CLIError(
            f"MODEL {spec!r} must be 'package.module:callable' or 'path/to/file.py:callable'"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise CLIError(f"MODEL {spec!r}: file {str(path)!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise CLIError(f"MODEL {spec!r}: cannot import {str(path)!r} as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:  # the user's file failed to import
            raise CLIError(
                f"MODEL {spec!r}: importing {str(path)!r} raised {type(err).__name__}: {err}"
            ) from err
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise CLIError(f"MODEL {spec!r}: no module named {err.name!r}") from err
        except Exception as err:
            raise CLIError(
                f"MODEL {spec!r}: importing {target!r} raised {type(err).__name__}: {err}"
            ) from err
    try:
        return getattr(module, name)
    except AttributeError:
        raise CLIError(f"MODEL {spec!r}: {target!r} has no attribute {name!r}") from None


def load_model(
    spec: str, kwargs: dict[str, Any] | None = None, device: str | None = None, seed: int = 0
):
    """Build the ``nn.Module`` that MODEL names (calling it with ``kwargs`` when it is a
    callable), in eval mode, on ``device``. The random initialisation is seeded with
    ``seed``, so a command gives the same numbers on every run."""
    import torch
    from torch import nn

    dev = resolve_device(device) if device else None  # before minutes of model building
    obj = load_callable(spec)
    torch.manual_seed(seed)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise CLIError(f"MODEL {spec!r} is a module instance; --kwargs needs a callable")
        model = obj
    elif callable(obj):
        model = _call_factory(spec, obj, kwargs or {})
    else:
        raise CLIError(f"MODEL {spec!r} is a {type(obj).__name__}, not a callable or nn.Module")
    if not isinstance(model, nn.Module):
        raise CLIError(
            f"MODEL {spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    if dev is not None:
        model = model.to(dev)
    return model.eval()


def resolve_device(text: str) -> torch.device:
    """``--device`` text -> a ``torch.device`` that exists on this machine, or a one-line
    :class:`CLIError`: an unknown name gets a suggestion, an absent device says so."""
    import torch

    name = text.strip().lower()
    kind, colon, index = name.partition(":")
    if kind in _DEVICE_ALIASES:
        suggestion = _DEVICE_ALIASES[kind] + (f":{index}" if colon and ":" not in
                                              _DEVICE_ALIASES[kind] else "")
        raise CLIError(f"--device {text!r} is not a device name; did you mean "
                       f"--device {suggestion}? (devices: cpu, cuda, cuda:N, mps)")
    if kind not in DEVICE_KINDS or (colon and not index.isdigit()):
        close = difflib.get_close_matches(kind, DEVICE_KINDS, n=1)
        hint = f"did you mean --device {close[0]}? " if close and kind not in DEVICE_KINDS else ""
        raise CLIError(f"--device {text!r} is not a device name; {hint}"
                       "(devices: cpu, cuda, cuda:N, mps)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = ("this PyTorch is a CPU-only build" if torch.version.cuda is None
                     else "no CUDA device is visible")
            raise CLIError(f"--device {text!r}: no CUDA device is available here ({build}, "
                           f"torch {torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise CLIError(f"--device {text!r}: this machine has {count} CUDA device(s), "
                           f"cuda:0 to cuda:{count - 1}")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            other = " or --device cuda" if torch.cuda.is_available() else ""
            raise CLIError(f"--device {text!r}: the Apple-silicon GPU (MPS) is not available "
                           f"here; use --device cpu{other}")
        if index and index != "0":
            raise CLIError(f"--device {text!r}: MPS has one device, mps (or mps:0)")
    if kind == "cpu" and index and index != "0":
        raise CLIError(f"--device {text!r}: write --device cpu")
    return torch.device(name)


def _call_factory(spec: str, factory: Any, kwargs: dict[str, Any]) -> Any:
    """Call the MODEL callable with ``kwargs``; arguments it needs but was not given, or
    names it does not take, are a one-line error that points at ``--kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: just call it
        signature = None
    if signature is not None:
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [k for k in kwargs if k not in params and not takes_any]
        if unknown:
            names = [n for n, p in params.items()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(
                f"MODEL {spec!r} takes no argument {unknown[0]!r}{hint}; its arguments: "
                f"{', '.join(names) if names else 'none'}")
        missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
                   and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            example = ", ".join(f'"{n}": VALUE' for n in missing)
            raise CLIError(
                f"MODEL {spec!r} needs the argument{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}: give {'them' if len(missing) > 1 else 'it'} with "
                f"--kwargs '{{{example}}}'")
    try:
        return factory(**kwargs)
    except Exception as err:
        raise CLIError(
            f"MODEL {spec!r}: calling it with {kwargs} raised {type(err).__name__}: {err}"
        ) from err


def model_parent() -> argparse.ArgumentParser:
    """The arguments every command on a user's model takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "model", metavar="MODEL",
        help="'package.module:callable' or 'path/to/file.py:callable' returning an nn.Module",
    )
    parent.add_argument(
        "--input-size", required=True, type=str, metavar="N,C,H,W",
        help="shape of one input batch, e.g. 1,3,224,224",
    )
    parent.add_argument(
        "--kwargs", default=None, metavar="JSON",
        help="keyword arguments for the MODEL callable, as a JSON object",
    )
    parent.add_argument("--device", default=None, metavar="DEVICE",
                        help="cpu (default), cuda, cuda:N or mps; where the model and data live")
    parent.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parent


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
