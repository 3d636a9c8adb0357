"""smcheck: softmax cross-entropy numerics, checked against a high-precision reference.

>>> import numpy as np, smcheck
>>> r = smcheck.cross_entropy(np.array([[12.0, 0.0]]), np.array([0]), method="naive",
...                           dtype="float16")
>>> r.loss.tolist(), bool(r.overflow[0])   # exp(12) > 65504: overflow in float16
([nan], True)

The analyses behind the commands are importable too: :func:`evaluate` (``smcheck eval``),
:func:`gradcheck`, :func:`sweep`, :func:`compare` and :func:`kernel`, each taking an options
dataclass (:class:`EvalOptions`, :class:`GradcheckOptions`, :class:`CompareOptions`,
:class:`SweepConfig`, :class:`KernelOptions`) or its fields as keywords, and returning a frozen
report dataclass. Every entry point reads arrays through one front door, :func:`prepare_input`;
:func:`load_input` reads and validates files as the commands do.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# first: when this process is the smcheck CLI, its signal handlers must exist before numpy is
# imported (a Ctrl-C there would print a traceback); a library import changes nothing
from . import _entry  # noqa: F401, I001
from .errors import InputError, SmcheckError, UsageError

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers
    from .compare import CompareOptions, CompareReport, compare
    from .core import CrossEntropyResult, ReferenceResult, cross_entropy, reference
    from .evaluate import EvalOptions, EvalReport, evaluate
    from .gradcheck import GradcheckOptions, GradcheckReport, gradcheck
    from .kernel import KernelOptions, KernelReport, kernel
    from .linear import LinearReference, LinearResult, linear_cross_entropy, reference_linear
    from .loading import LoadedInput, load_input
    from .methods import DEFAULT_METHODS, METHODS
    from .precisions import PRECISIONS, Precision, get_precision
    from .prepare import Prepared, prepare_input
    from .sweep import SweepConfig, SweepReport, sweep

#: The public names and the module each lives in, imported on first use: ``import smcheck``
#: (and so every ``smcheck`` command's start-up) would otherwise import every analysis, ~0.5 s
#: before a command's first line runs.
_LAZY: dict[str, str] = {
    "CompareOptions": ".compare",
    "CompareReport": ".compare",
    "compare": ".compare",
    "CrossEntropyResult": ".core",
    "ReferenceResult": ".core",
    "cross_entropy": ".core",
    "reference": ".core",
    "EvalOptions": ".evaluate",
    "EvalReport": ".evaluate",
    "evaluate": ".evaluate",
    "GradcheckOptions": ".gradcheck",
    "GradcheckReport": ".gradcheck",
    "gradcheck": ".gradcheck",
    "KernelOptions": ".kernel",
    "KernelReport": ".kernel",
    "kernel": ".kernel",
    "LinearReference": ".linear",
    "LinearResult": ".linear",
    "linear_cross_entropy": ".linear",
    "reference_linear": ".linear",
    "LoadedInput": ".loading",
    "load_input": ".loading",
    "DEFAULT_METHODS": ".methods",
    "METHODS": ".methods",
    "PRECISIONS": ".precisions",
    "Precision": ".precisions",
    "get_precision": ".precisions",
    "Prepared": ".prepare",
    "prepare_input": ".prepare",
    "SweepConfig": ".sweep",
    "SweepReport": ".sweep",
    "sweep": ".sweep",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (see :data:`_LAZY`)."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # later look-ups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package module, keeping its public functions over same-named submodules.

    Importing a submodule binds it as an attribute of the package: after ``smcheck.evaluate``
    (the module) is first imported, ``smcheck.evaluate`` would be that module instead of the
    function. The eager imports this file used to do rebound the function afterwards; lazily,
    this hook declines the binding for the public names (the submodule stays in sys.modules).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "PRECISIONS",
    "CompareOptions",
    "CompareReport",
    "CrossEntropyResult",
    "EvalOptions",
    "EvalReport",
    "GradcheckOptions",
    "GradcheckReport",
    "KernelOptions",
    "LinearReference",
    "LinearResult",
    "KernelReport",
    "InputError",
    "LoadedInput",
    "Precision",
    "Prepared",
    "ReferenceResult",
    "SmcheckError",
    "SweepConfig",
    "SweepReport",
    "UsageError",
    "__version__",
    "compare",
    "cross_entropy",
    "evaluate",
    "get_precision",
    "gradcheck",
    "kernel",
    "linear_cross_entropy",
    "load_input",
    "prepare_input",
    "reference",
    "reference_linear",
    "sweep",
]
