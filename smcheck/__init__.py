"""smcheck: softmax cross-entropy numerics, checked against a high-precision reference.

>>> import numpy as np, smcheck
>>> r = smcheck.cross_entropy(np.array([[12.0, 0.0]]), np.array([0]), method="naive",
...                           dtype="float16")
>>> r.loss.tolist(), bool(r.overflow[0])   # exp(12) > 65504: overflow in float16
([nan], True)

The analyses behind the commands are importable too: :func:`evaluate` (``smcheck eval``),
:func:`gradcheck`, :func:`sweep` and :func:`compare`, each returning a frozen report
dataclass; :func:`load_input` reads and validates files as the commands do.
"""

from __future__ import annotations

__version__ = "0.1.0"

# first: when this process is the smcheck CLI, its signal handlers must exist before numpy is
# imported (a Ctrl-C there would print a traceback); a library import changes nothing
from . import _entry  # noqa: F401, I001
from .compare import CompareReport, compare
from .core import CrossEntropyResult, ReferenceResult, cross_entropy, reference
from .errors import InputError, SmcheckError, UsageError
from .evaluate import EvalReport, evaluate
from .gradcheck import GradcheckReport, gradcheck
from .loading import LoadedInput, load_input
from .methods import DEFAULT_METHODS, METHODS
from .precisions import PRECISIONS, Precision, get_precision
from .sweep import SweepConfig, SweepReport, sweep

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "PRECISIONS",
    "CompareReport",
    "CrossEntropyResult",
    "EvalReport",
    "GradcheckReport",
    "InputError",
    "LoadedInput",
    "Precision",
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
    "load_input",
    "reference",
    "sweep",
]
