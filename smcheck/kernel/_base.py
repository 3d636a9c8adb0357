"""What every part of ``smcheck kernel`` shares: the imports from the rest of smcheck (the one
place to re-point them if those modules move), the suite's constants, and how a callee's
words are made safe to print."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# The only imports from the rest of smcheck (re-point them here if the modules move).
from ..core import reference_of
from ..errors import UsageError
from ..metrics import default_thresholds, loss_gate_err
from ..options import merge_options
from ..precisions import Precision, get_precision, resolve_accum
from ..prepare import Prepared, prepare_input
from ..synthetic import check_size

__all__ = [
    "Prepared",
    "Precision",
    "UsageError",
    "check_size",
    "default_thresholds",
    "get_precision",
    "loss_gate_err",
    "merge_options",
    "prepare_input",
    "reference_of",
    "resolve_accum",
]

#: Default vocabulary sizes: a small one, the common LLM sizes and a prime (65537 = 2**16 + 1,
#: not a multiple of any block size).
DEFAULT_VOCAB: tuple[int, ...] = (1000, 32000, 50257, 65537, 128256, 151936)
#: ``quick=True``: small sizes only (a prime among them).
QUICK_VOCAB: tuple[int, ...] = (10, 1000, 4099)
#: Default working dtypes per framework (numpy kernels get float32 arrays).
DEFAULT_DTYPES: dict[str, tuple[str, ...]] = {
    "torch": ("float32", "bfloat16"),
    "jax": ("float32", "bfloat16"),
    "numpy": ("float32",),
}
FRAMEWORKS: tuple[str, ...] = ("torch", "jax", "numpy")
#: How a probe is judged (``judge=``, ``--judge``): against the reference's thresholds, the
#: stock cross-entropy, either or both.
JUDGES: tuple[str, ...] = ("either", "reference", "stock", "both")
#: The old name of :data:`JUDGES` (``gate=`` means a list of methods everywhere else).
GATES = JUDGES
#: The stock judge's slack: ulps of max(|L*|, 1) on the loss, times eps(T) on the gradient.
STOCK_SLACK_ULP = 4.0
#: Logits per probe: rows = ROW_BUDGET // V, kept within [MIN_ROWS, MAX_ROWS]. At V = 151936
#: that is 6 rows: the reference (float64, ~10 temporaries) stays below 100 MB.
ROW_BUDGET = 1 << 19
MIN_ROWS, MAX_ROWS = 6, 64
#: Bytes per logit a probe holds at once (the rounded logits and their carrier, the float64
#: reference's loss/gradient with low parts, the kernel's and the stock's outputs): what
#: :func:`~smcheck.synthetic.check_size` weighs ``--rows`` x ``--vocab`` by before allocating.
KERNEL_BYTES_PER_VALUE = 64
#: Label value of ignored rows in the probes (PyTorch's default).
IGNORE_INDEX = -100
#: Label smoothing of the ``label_smoothing`` probe.
SMOOTHING = 0.1
#: Worst rows kept per probe.
WORST_ROWS = 3

KernelFn = Callable[..., Any]


def _printable(text: str) -> str:
    """Control characters (ANSI escapes, newlines) of a callee's text escaped: it reaches a
    terminal or a CI log."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Around a kernel's call: its warnings (numpy's on NaN input, a framework's deprecations)
    are its own business - its outputs are what the probes judge - and a test suite running
    with ``filterwarnings = error`` must not turn them into exceptions of the call."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = _printable(text)
    return text if len(text) <= 200 else text[:197] + "..."
