"""smcheck: softmax cross-entropy numerics, checked against a high-precision reference."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import InputError, SmcheckError, UsageError
from .precisions import PRECISIONS, Precision, get_precision

__all__ = [
    "PRECISIONS",
    "InputError",
    "Precision",
    "SmcheckError",
    "UsageError",
    "__version__",
    "get_precision",
]
