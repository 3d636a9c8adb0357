"""smcheck: softmax cross-entropy numerics, checked against a high-precision reference.

>>> import numpy as np, smcheck
>>> r = smcheck.cross_entropy(np.array([[12.0, 0.0]]), np.array([0]), method="naive",
...                           dtype="float16")
>>> r.loss.tolist(), bool(r.overflow[0])   # exp(12) > 65504: overflow in float16
([nan], True)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .core import CrossEntropyResult, ReferenceResult, cross_entropy, reference
from .errors import InputError, SmcheckError, UsageError
from .methods import DEFAULT_METHODS, METHODS
from .precisions import PRECISIONS, Precision, get_precision

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "PRECISIONS",
    "CrossEntropyResult",
    "InputError",
    "Precision",
    "ReferenceResult",
    "SmcheckError",
    "UsageError",
    "__version__",
    "cross_entropy",
    "get_precision",
    "reference",
]
