"""``evaluate``: audit a logits array - every method against the reference - as one report.

The analysis behind ``smcheck eval``: :class:`EvalOptions` in, :class:`EvalReport` out. The
input goes through the front door (:func:`smcheck.prepare.check_input`: working dtype,
accumulation, labels); the chosen methods and the reference then run on the same rounded values
in row chunks (:mod:`smcheck.engine`: bounded memory, results identical for any chunk size), and
the merged statistics become the report (:mod:`smcheck.eval_report`: the verdicts in words).
Default thresholds: :func:`smcheck.metrics.default_thresholds`.

The ``per_row`` sink that writes files, :class:`smcheck.output.PerRowWriter`, is re-exported
here under its old address.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import EngineConfig, chunk_rows_for, run
from .errors import UsageError
from .eval_report import (
    SCHEMA,
    EvalReport,
    GateConfig,
    InputSummary,
    MethodReport,
    MethodReports,
    WorstRow,
    build_report,
    input_summary,
)
from .frameworks import FRAMEWORK_METHODS
from .loading import ZarrLogits
from .methods import DEFAULT_METHODS, METHODS
from .metrics import default_thresholds
from .options import merge_options
from .output import PerRowWriter  # re-exported: it lives in smcheck.output now
from .prepare import CheckedInput, DtypeLike, check_input
from .reference import reference_precision_name
from .rows import PerRowBlock, per_row_columns  # per_row_columns: re-exported
from .stats import ChunkStats
from .variants import Variant, variant_fields

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "FAIL_ON",
    "SCHEMA",
    "EvalOptions",
    "EvalReport",
    "GateConfig",
    "InputSummary",
    "MethodReport",
    "MethodReports",
    "PerRowWriter",
    "WorstRow",
    "default_thresholds",
    "evaluate",
    "per_row_columns",
]

#: Working-array budget of one chunk (bytes): rows per chunk = budget / (cost of one row).
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: Findings ``fail_on`` can turn into a gated method's failure.
FAIL_ON = ("overflow", "underflow", "nonfinite")
#: Old keyword names of :func:`evaluate` -> the names of :class:`EvalOptions` (the CLI's).
RENAMED = {"top_k": "top", "cast_mode": "cast"}
ENGINES = ("local", "dask")


@dataclass(frozen=True)
class EvalOptions:
    """What :func:`evaluate` does, named as ``smcheck eval``'s flags and config keys.

    ``methods`` run (plus any in ``gate``, which gate ``ok``); ``max_loss_ulp`` (ulps of
    max(|L*|, 1)) and ``max_grad_err`` (absolute) default to
    :func:`~smcheck.metrics.default_thresholds`; ``fail_on`` names the findings that fail a gated
    method; ``top`` worst rows are listed. Work runs in chunks of ``chunk_rows`` rows (default:
    what fits ``chunk_bytes``) on ``workers`` processes or threads, or on Dask
    (``engine="dask"``, ``scheduler`` address). ``progress(done, total)`` and ``per_row`` (each
    chunk's per-row values, in row order) are called as chunks finish. ``logits_name``,
    ``labels_name``, ``notes`` and ``original_shape`` are reported as given (a loader's words).

    >>> EvalOptions(methods=("fused", "naive")).run_methods  # registry order, gate included
    ('naive', 'fused')
    >>> EvalOptions(gate=("fast",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    smcheck.errors.UsageError: unknown gated method 'fast'; expected one of: naive, ...
    """

    dtype: DtypeLike | None = None
    accum: DtypeLike | None = None
    cast: str = "ieee"
    methods: Sequence[str] = DEFAULT_METHODS
    ignore_index: int = -100
    gate: Sequence[str] = ("fused",)
    max_loss_ulp: float | None = None
    max_grad_err: float | None = None
    fail_on: Sequence[str] = ("overflow", "nonfinite")
    top: int = 10
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    chunk_rows: int | None = None
    workers: int = 1
    engine: str = "local"
    scheduler: str | None = None
    progress: Callable[[int, int], None] | None = None
    per_row: Callable[[PerRowBlock], None] | None = None
    logits_name: str = "<array>"
    labels_name: str | None = None
    notes: Sequence[str] = ()
    original_shape: Sequence[int] | None = None
    #: the loss variant checked (see :mod:`smcheck.variants`); the defaults are the plain loss
    z_loss: float = 0.0
    softcap: float | None = None
    logit_scale: float = 1.0
    smoothing_convention: str = "torch"

    def __post_init__(self) -> None:
        variant_fields(self)  # UsageError naming the option
        known = (*METHODS, *FRAMEWORK_METHODS)
        for what, items in (("method", self.methods), ("gated method", self.gate)):
            for m in items:
                if m not in known:
                    raise UsageError(f"unknown {what} {m!r}; expected one of: {', '.join(known)}")
        for f in self.fail_on:
            if f not in FAIL_ON:
                expected = ", ".join(FAIL_ON)
                raise UsageError(f"unknown fail-on check {f!r}; expected one of: {expected}")
        if not self.run_methods:
            raise UsageError("no method to run")
        limits = (("--max-loss-ulp", self.max_loss_ulp), ("--max-grad-err", self.max_grad_err))
        for flag, value in limits:
            if value is not None and not (0 <= float(value) < math.inf):
                raise UsageError(f"{flag} must be a finite number >= 0, got {value}")
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; expected 'local' or 'dask'")

    @property
    def run_methods(self) -> tuple[str, ...]:
        """The methods run: ``methods`` and ``gate`` together, in registry order."""
        chosen = set(self.methods) | set(self.gate)
        return tuple(m for m in (*METHODS, *FRAMEWORK_METHODS) if m in chosen)


def evaluate(
    logits: np.ndarray | ZarrLogits,
    labels: np.ndarray | None = None,
    options: EvalOptions | None = None,
    **fields: Any,
) -> EvalReport:
    """Audit ``logits`` (N, C) - or (..., C), leading axes flattened - with optional labels.

    ``options`` is an :class:`EvalOptions`, or give its fields as keywords (both: the keywords
    replace those fields). Every method in ``methods`` (plus any in ``gate``) and the reference
    run on the logits rounded to ``dtype``; ``labels=None`` is the label-free mode (every
    (row, class) pair). ``engine="dask"`` needs ``logits`` memory-mapped from a ``.npy`` file or
    a :class:`~smcheck.loading.ZarrLogits` store, which each worker opens itself; the result is
    the same as the local engine's. The old keyword ``top_k`` still works, with a
    DeprecationWarning.

    >>> import numpy as np
    >>> z = np.array([[12.0, 0.0], [1.0, 2.0]], dtype=np.float16)
    >>> rep = evaluate(z, np.array([0, 1]))
    >>> rep.methods["naive"].overflow_rows, rep.methods["fused"].verdict, rep.ok
    (1, 'ok', True)
    """
    opts = merge_options(EvalOptions, options, fields, RENAMED, "evaluate")
    ci = check_input(
        logits, labels, dtype=opts.dtype, accum=opts.accum, cast=opts.cast,
        ignore_index=opts.ignore_index, soft=False,
    )  # fmt: skip
    gate = _gate_config(opts, ci)
    stats = _run_chunks(ci, opts)
    shape = ci.original_shape if opts.original_shape is None else opts.original_shape
    inp = input_summary(
        stats, names=(opts.logits_name, opts.labels_name), shape=(ci.rows, ci.classes),
        working=ci.working, accum=ci.accum, cast=opts.cast, label_free=ci.labels is None,
        original_shape=tuple(int(s) for s in shape),
        notes=(*opts.notes, *_framework_notes(opts.run_methods)), variant=_variant(opts, ci),
    )  # fmt: skip
    reference = reference_precision_name(ci.working, _variant(opts, ci))
    return build_report(stats, inp, gate, opts.run_methods, ci.working, reference)


def _variant(opts: EvalOptions, ci: CheckedInput) -> Variant | None:
    """The loss variant with its constants as the front door rounds them; None when plain."""
    v = variant_fields(opts)
    return v.rounded(ci.working.carrier) if v.active else None


def _gate_config(opts: EvalOptions, ci: CheckedInput) -> GateConfig:
    """The gated methods and their thresholds: as given, else the defaults for the input."""
    loss_k, grad_k = default_thresholds(ci.working, ci.accum, ci.classes)
    return GateConfig(
        methods=tuple(m for m in opts.run_methods if m in set(opts.gate)),
        max_loss_ulp=loss_k if opts.max_loss_ulp is None else float(opts.max_loss_ulp),
        max_grad_err=grad_k if opts.max_grad_err is None else float(opts.max_grad_err),
        fail_on=tuple(f for f in FAIL_ON if f in set(opts.fail_on)),
        thresholds_default=opts.max_loss_ulp is None and opts.max_grad_err is None,
    )


def _run_chunks(ci: CheckedInput, opts: EvalOptions) -> ChunkStats:
    """The methods and the reference over every chunk of rows, merged (local or Dask)."""
    methods = opts.run_methods
    cfg = EngineConfig(
        ci.working, ci.accum, methods, opts.cast, opts.ignore_index, opts.top,
        variant=variant_fields(opts) if variant_fields(opts).active else None,
    )  # fmt: skip
    label_free = ci.labels is None
    rows_per_chunk = opts.chunk_rows or chunk_rows_for(
        ci.classes, len(methods), label_free, opts.chunk_bytes
    )
    x = ci.x
    if opts.engine == "local":  # run() needs shape and row slices only: a ZarrLogits has them
        return run(
            typing.cast(np.ndarray, x), ci.labels, cfg, chunk_rows=rows_per_chunk,
            workers=opts.workers, progress=opts.progress, per_row=opts.per_row,
        )  # fmt: skip
    source: str | ZarrLogits | None = getattr(x, "filename", None)
    if isinstance(x, ZarrLogits):
        source = x  # pickled as its path: each task opens the store and reads its rows
    elif not isinstance(x, np.memmap) or not source:
        raise UsageError(
            "--engine dask reads a .npy file or a zarr store (each worker opens it itself)"
        )
    from .dask_engine import run_dask

    return run_dask(
        source, ci.labels, cfg, rows=ci.rows, chunk_rows=rows_per_chunk,
        scheduler=opts.scheduler, workers=opts.workers, progress=opts.progress,
        per_row=opts.per_row,
    )  # fmt: skip


def _framework_notes(methods: Sequence[str]) -> tuple[str, ...]:
    """Where each framework method ran (CPU, or a GPU when one is present): part of the result."""
    from .frameworks import framework_device

    return tuple(
        f"method {m} ran on {framework_device(m)} (its own accumulation; --accum does not apply)"
        for m in methods
        if m in FRAMEWORK_METHODS
    )
