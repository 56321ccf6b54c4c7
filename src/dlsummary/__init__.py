"""dlsummary: an executable answer key to deep-learning summary questions, and the
PyTorch tools that produce its evidence.

The public tools are imported lazily, so that ``import dlsummary`` (and the CLI's
``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dlsummary.errors import DLSummaryError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "receptive_field": "dlsummary.receptive_field",
    "empirical_receptive_field": "dlsummary.receptive_field",
    "ReceptiveField": "dlsummary.receptive_field",
    "EmpiricalReceptiveField": "dlsummary.receptive_field",
    "gradient_flow": "dlsummary.gradflow",
    "GradientFlow": "dlsummary.gradflow",
    "numerical_gradient": "dlsummary.gradients",
    "check_gradients": "dlsummary.gradients",
    "check_module_gradients": "dlsummary.gradients",
    "GradientCheck": "dlsummary.gradients",
    "argmin_layer": "dlsummary.implicit",
    "ArgminLayer": "dlsummary.implicit",
    "seed_everything": "dlsummary.utils",
    "default_device": "dlsummary.utils",
    "digits": "dlsummary.utils",
    "plot_style": "dlsummary.utils",
    "check": "dlsummary.evidence",
    "control": "dlsummary.evidence",
    "render_report": "dlsummary.report",
}

__all__ = [
    "ArgminLayer",
    "DLSummaryError",
    "EmpiricalReceptiveField",
    "GradientCheck",
    "GradientFlow",
    "ReceptiveField",
    "__version__",
    "argmin_layer",
    "check_gradients",
    "check",
    "check_module_gradients",
    "control",
    "default_device",
    "digits",
    "empirical_receptive_field",
    "gradient_flow",
    "numerical_gradient",
    "plot_style",
    "receptive_field",
    "render_report",
    "seed_everything",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from dlsummary.evidence import check, control
    from dlsummary.gradflow import GradientFlow, gradient_flow
    from dlsummary.gradients import (
        GradientCheck,
        check_gradients,
        check_module_gradients,
        numerical_gradient,
    )
    from dlsummary.implicit import ArgminLayer, argmin_layer
    from dlsummary.receptive_field import (
        EmpiricalReceptiveField,
        ReceptiveField,
        empirical_receptive_field,
        receptive_field,
    )
    from dlsummary.report import render_report
    from dlsummary.utils import default_device, digits, plot_style, seed_everything


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dlsummary' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    # Importing a submodule sets it as an attribute of the package, which would shadow a
    # function of the same name (dlsummary.receptive_field): bind every name it exports.
    globals().update({n: getattr(loaded, n) for n, m in _EXPORTS.items() if m == module})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(__all__)
