"""smcheck: softmax cross-entropy numerics, checked against a high-precision reference.

>>> import numpy as np, smcheck
>>> r = smcheck.cross_entropy(np.array([[12.0, 0.0]]), np.array([0]), method="naive",
...                           dtype="float16")
>>> r.loss.tolist(), bool(r.overflow[0])   # exp(12) > 65504: overflow in float16
([nan], True)

The analyses behind the commands are importable too: :func:`evaluate` (``smcheck eval``),
:func:`gradcheck`, :func:`sweep` and :func:`compare`, each taking an options dataclass
(:class:`EvalOptions`, :class:`GradcheckOptions`, :class:`CompareOptions`, :class:`SweepConfig`)
or its fields as keywords, and returning a frozen report dataclass. Every entry point reads
arrays through one front door, :func:`prepare_input`; :func:`load_input` reads and validates
files as the commands do.
"""

from __future__ import annotations

__version__ = "0.1.0"

# first: when this process is the smcheck CLI, its signal handlers must exist before numpy is
# imported (a Ctrl-C there would print a traceback); a library import changes nothing
from . import _entry  # noqa: F401, I001
from .compare import CompareOptions, CompareReport, compare
from .core import CrossEntropyResult, ReferenceResult, cross_entropy, reference
from .errors import InputError, SmcheckError, UsageError
from .evaluate import EvalOptions, EvalReport, evaluate
from .gradcheck import GradcheckOptions, GradcheckReport, gradcheck
from .kernel import KernelReport, kernel
from .loading import LoadedInput, load_input
from .methods import DEFAULT_METHODS, METHODS
from .precisions import PRECISIONS, Precision, get_precision
from .prepare import Prepared, prepare_input
from .sweep import SweepConfig, SweepReport, sweep

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
    "load_input",
    "prepare_input",
    "reference",
    "sweep",
]
