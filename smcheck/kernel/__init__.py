"""Audit a cross-entropy *implementation* by running it: a named probe suite against the reference.

A kernel is any function with :func:`torch.nn.functional.cross_entropy`'s interface,
``fn(logits, labels, **options) -> loss``: ``logits`` a framework tensor (N, V) in the working
dtype, ``labels`` int64 (N,), and of F.cross_entropy's keywords (``ignore_index``,
``reduction``, ``label_smoothing``) those its signature accepts. Gradients come from the
framework's autograd (torch ``backward``, ``jax.vjp``); a numpy kernel returns ``loss`` or
``(loss, grad)``. A probe that needs an option the kernel does not accept is *skipped*.

Each probe builds a few rows that provoke one known bug class (see :data:`PROBES`), rounds them
to the working dtype, hands the kernel fresh copies and compares its loss and gradient with
:func:`smcheck.core.reference_of` of *the same rounded rows*: the loss error in ulps of
``max(|L*|, 1)`` of the working dtype, the gradient as ``max_j |g_j - g*_j|`` (per row; the
gradient of a mean is multiplied back by its denominator). The framework's stock cross-entropy
runs on the same rows and is reported side by side.

Judge (``judge=``, ``--judge``; ``gate=`` before): ``"reference"`` - within the default
thresholds of ``smcheck eval`` (:func:`default_thresholds`); ``"stock"`` - no worse than the
stock cross-entropy plus :data:`STOCK_SLACK_ULP` ulps (and that many eps on the gradient);
``"either"`` (default) - one of the two, so a kernel as good as PyTorch's own passes where
PyTorch itself is outside the thresholds; ``"both"``. Non-finite output where the reference is
finite, a modified input, an exception or nondeterminism fail a probe whatever the judge. The
options are a :class:`KernelOptions` (or its fields as keywords).

The kernel is called, not trusted: each call gets fresh tensors, the inputs are compared bit
for bit afterwards, and an exception it raises is a finding (its one-line text in the probe's
detail), never smcheck's traceback.

>>> import numpy as np
>>> def naive(z, y):  # no max shift: exp overflows in float32 above 88.7
...     with np.errstate(over="ignore", invalid="ignore"):
...         e = np.exp(z.astype(np.float32))
...         return np.log(e.sum(1)) - z[np.arange(len(y)), y]
>>> r = kernel(naive, framework="numpy", vocab=(10,), probes=("first_last", "offset"))
>>> [(p.name, p.status) for p in r.probes]
[('first_last', 'pass'), ('offset', 'fail')]
"""

from __future__ import annotations

from ._base import (
    DEFAULT_DTYPES,
    DEFAULT_VOCAB,
    FRAMEWORKS,
    GATES,
    JUDGES,
    QUICK_VOCAB,
    STOCK_SLACK_ULP,
)
from .frameworks import detect_framework, jax_stock, numpy_stock
from .options import KernelOptions
from .probes import PROBES, Probe
from .report import KernelReport, ProbeResult, WorstRow
from .runner import assert_kernel, failure_message, kernel, parse_probes, rows_for
from .target import load_target, target_files

__all__ = [
    "DEFAULT_DTYPES",
    "DEFAULT_VOCAB",
    "FRAMEWORKS",
    "GATES",
    "JUDGES",
    "KernelOptions",
    "KernelReport",
    "PROBES",
    "Probe",
    "ProbeResult",
    "QUICK_VOCAB",
    "STOCK_SLACK_ULP",
    "WorstRow",
    "assert_kernel",
    "detect_framework",
    "failure_message",
    "jax_stock",
    "kernel",
    "load_target",
    "numpy_stock",
    "parse_probes",
    "rows_for",
    "target_files",
]
