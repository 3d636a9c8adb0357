"""Audit someone else's kernel: their dumped loss (and gradient) against the reference.

A kernel author dumps the logits and labels they fed their cross-entropy, and what it returned:
the loss (one value per row, or one number for ``reduction="mean"``/``"sum"``) and optionally
the gradient dL/dz (N, C). :func:`compare` rounds the logits to the working dtype exactly as
their kernel saw them, computes the high-precision reference on those rounded numbers
(:mod:`smcheck.reference`, accurate to eps * 2**-20) and measures, per row:

* the loss error in ulps of the working dtype at the reference value L* (``max_ulp_err``, the
  distribution: max, p99, median, a histogram, and bits of error log2(ulps + 1)); the gate uses
  ulps of max(|L*|, 1) instead, so that a confident row whose loss is 1e-9 is not held to
  ulps of 1e-9 (as ``eval``'s ``--max-loss-ulp``);
* the gradient error: max_j |g_j - g*_j| per row, and the normwise relative error;
* rows where they are NaN/inf but the reference is finite (a bug in their kernel), and the
  reverse (their kernel hides a non-finite input behind a finite number).

PyTorch's loss options (class ``weight``, ``label_smoothing``) go to
:func:`smcheck.prepare.prepare_input`, so the reference is PyTorch's weighted/smoothed loss per row.
Reductions follow PyTorch: ignored rows (``ignore_index``) are left out, ``mean`` divides by the
summed weight of the counted rows' labels (their number without weights,
``Prepared.mean_denominator``); when that is 0 (every row ignored) PyTorch's mean is NaN (0/0) and
optax's is 0, and ``convention="torch"|"jax"`` picks the reference. The reference's sum is exact to
~2**-106 (``math.fsum`` over the double-double row values), the weight sum exact (integers), and
their error is formed with exact rationals, so the reference contributes nothing measurable to the
error of a float64 mean. With a reduction their gradient is the gradient of the reduced loss: for
``mean`` it is compared after multiplying by that denominator (exactly, as a double-double product),
so gradient errors are always in per-row units.

Everything but :func:`load_values` and :func:`compare_files` is pure (arrays in, report out).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from .compare_measure import (
    _CELLS_PER_BLOCK,
    _block,
    _Blocks,
    _check_weight,
    _empty_mean,
    _grad_rows,
    _grad_stats,
    _loss_rows,
    _loss_stats,
    _LossRows,
    _mean_denominator,
    _reduced_loss_rows,
)
from .compare_report import (
    HIST_EDGES,
    Check,
    CompareReport,
    GradStats,
    HistBin,
    LossStats,
    WorstRow,
    _checks,
    _report_notes,
    _summary,
    _underflow_hint,
    _verdict,
    _worst_rows,
)
from .errors import InputError, UsageError
from .loading import LoadedValues, load_input, load_values
from .loading.common import dims
from .metrics import (
    kernel_thresholds,
)
from .options import merge_options
from .precisions import Precision
from .prepare import (
    CheckedInput,
    check_input,
    file_dtype,
    prepare_input,
)
from .reference import ScaledLow, reference_precision_name
from .variants import Variant, variant_fields

__all__ = [
    "CONVENTIONS",
    "DEFAULT_FAIL_ON",
    "FAIL_ON",
    "FAIL_ON_ALIASES",
    "HIST_EDGES",
    "REDUCTIONS",
    "Check",
    "CompareOptions",
    "CompareReport",
    "GradStats",
    "HistBin",
    "LoadedValues",
    "LossStats",
    "WorstRow",
    "compare",
    "compare_files",
    "default_tolerances",
    "load_values",
]

#: Loss reductions, as PyTorch's ``CrossEntropyLoss(reduction=...)``.
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")

#: Whose mean over no counted rows the reference follows: PyTorch's NaN (0/0) or optax's 0.
CONVENTIONS: tuple[str, ...] = ("torch", "jax")

#: Findings ``fail_on`` can gate: their value non-finite where the reference is finite; the
#: reference non-finite where theirs is finite; an ignored row with a non-zero loss/gradient.
FAIL_ON: tuple[str, ...] = ("nonfinite", "ref-nonfinite", "ignored")
DEFAULT_FAIL_ON: tuple[str, ...] = ("nonfinite", "ignored")
#: ``eval``'s findings, accepted so that one ``fail-on`` in a config file serves every command:
#: their kernel's intermediates are invisible here; an overflow or underflow inside it shows up
#: as NaN/inf in what it returns.
FAIL_ON_ALIASES: dict[str, str] = {"overflow": "nonfinite", "underflow": "nonfinite"}


# --------------------------------------------------------------------------- report


# --------------------------------------------------------------------------- loading


def _as_loss(got: LoadedValues, n: int, lead: tuple[int, ...], reduction: str) -> np.ndarray:
    """Their loss as float64 (N,) (or (1,) for a reduction); InputError on a wrong shape."""
    a = np.asarray(got.values)
    shape = tuple(int(d) for d in a.shape)
    if reduction != "none":
        if a.size != 1:
            raise InputError(
                f"{got.name}: holds {a.size} values (shape {dims(shape)}), expected one number "
                f"(the {reduction} of the loss) for --reduction {reduction}; use --reduction none "
                "for one loss per row"
            )
        return a.reshape(1).astype(np.float64)
    if shape not in ((n,), (n, 1), lead) and not (n == 1 and a.size == 1):
        raise InputError(
            f"{got.name}: shape {dims(shape)}, expected {n}: one loss per row of the logits "
            f"(reduction none)"
        )
    return a.reshape(n).astype(np.float64)


def _as_grad(got: LoadedValues, n: int, c: int, original: tuple[int, ...]) -> np.ndarray:
    """Their gradient as (N, C) in its stored dtype (maybe memory-mapped); InputError on shape."""
    a = got.values
    shape = tuple(int(d) for d in a.shape)
    if shape not in ((n, c), original):
        raise InputError(f"{got.name}: shape {dims(shape)}, expected {n} x {c} like the logits")
    return a.reshape(n, c)


# --------------------------------------------------------------------------- tolerances


def default_tolerances(
    working: Precision, accum: Precision, classes: int, reduction: str = "none", counted: int = 1
) -> tuple[float, float]:
    """Default ``(max_loss_ulp, max_grad_err)`` for their kernel:
    :func:`smcheck.metrics.kernel_thresholds` (eval's formula, with their sum over classes taken
    as a pairwise tree, and a reduction's sum over rows added).

    >>> from smcheck.precisions import get_precision
    >>> f32 = get_precision("float32")
    >>> default_tolerances(f32, f32, 1024)
    (14.0, 1.6689300537109375e-06)
    """
    return kernel_thresholds(working, accum, classes, reduction, counted)


# --------------------------------------------------------------------------- analysis


def _check_options(
    reduction: str, fail_on: Sequence[str], label_smoothing: float = 0.0, convention: str = "torch"
) -> None:
    if reduction not in REDUCTIONS:
        expected = ", ".join(REDUCTIONS)
        raise UsageError(f"unknown reduction {reduction!r}; expected one of: {expected}")
    if not 0.0 <= label_smoothing <= 1.0:  # NaN fails both comparisons
        raise UsageError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if convention not in CONVENTIONS:
        expected = ", ".join(CONVENTIONS)
        raise UsageError(f"unknown convention {convention!r}; expected one of: {expected}")
    bad = [f for f in fail_on if f not in FAIL_ON]
    if bad:
        expected = ", ".join(FAIL_ON)
        raise UsageError(f"fail_on: unknown value {bad[0]!r}; expected one of: {expected}")


#: Old keyword names of :func:`compare` and :func:`compare_files` -> :class:`CompareOptions`'.
RENAMED = {"cast_mode": "cast", "worst": "top"}


@dataclass(frozen=True)
class CompareOptions:
    """What :func:`compare` does, named as ``smcheck compare``'s flags and config keys.

    ``dtype`` is the working dtype their kernel read the logits in (default: the logits'
    own float dtype); ``accum`` the precision it summed in (it only sets the default limits,
    :func:`default_tolerances`). ``weight`` (C class weights, finite and >= 0; ``weight_name``
    names them in messages) and ``label_smoothing`` are PyTorch's ``CrossEntropyLoss`` options;
    ``reduction`` says what their loss is (one value per row, or their mean/sum);
    ``convention`` whose mean over no counted row the reference follows (PyTorch's NaN, optax's
    0). ``max_loss_ulp`` (ulps of max(|L*|, 1)) and ``max_grad_err`` (absolute) gate ``ok``
    with ``fail_on``; ``top`` worst rows are listed. ``names`` (logits, labels, loss, grad),
    ``their_dtypes`` (as stored) and ``notes`` are reported as given.

    >>> CompareOptions(reduction="avg")
    Traceback (most recent call last):
    ...
    smcheck.errors.UsageError: unknown reduction 'avg'; expected one of: none, mean, sum
    """

    dtype: str | np.dtype | Precision | None = None
    accum: str | np.dtype | Precision | None = None
    cast: str = "ieee"
    ignore_index: int = -100
    reduction: str = "none"
    weight: np.ndarray | None = None
    label_smoothing: float = 0.0
    convention: str = "torch"
    max_loss_ulp: float | None = None
    max_grad_err: float | None = None
    fail_on: Sequence[str] = DEFAULT_FAIL_ON
    top: int = 10
    names: tuple[str, str | None, str, str | None] = ("logits", "labels", "loss", "grad")
    their_dtypes: tuple[str, str | None] | None = None
    notes: Sequence[str] = ()
    weight_name: str = "weight"
    #: the loss variant their kernel computes (see :mod:`smcheck.variants`); defaults: plain
    z_loss: float = 0.0
    softcap: float | None = None
    logit_scale: float = 1.0
    smoothing_convention: str = "torch"

    def __post_init__(self) -> None:
        _check_options(self.reduction, self.fail_on, self.label_smoothing, self.convention)
        variant_fields(self)  # UsageError naming the option


@dataclass(frozen=True)
class _Setup:
    """The checked arrays and what follows from them before any reference is computed."""

    ci: CheckedInput
    labels: np.ndarray  # int64 (N,)
    theirs: np.ndarray  # float64 (N,), or (1,) for a reduction
    their_loss_dtype: str
    their_grad_dtype: str | None
    weight: np.ndarray | None
    ignored: np.ndarray
    counted: int
    denominator: Fraction  # what mean divides by, exactly
    loss_limit: float
    grad_limit: float | None
    grad_scale: float  # their gradient times this is in per-row units


def compare(
    logits: np.ndarray,
    labels: np.ndarray,
    loss: np.ndarray,
    grad: np.ndarray | None = None,
    options: CompareOptions | None = None,
    **fields: Any,
) -> CompareReport:
    """Compare their ``loss`` (N,) - or one number for a reduction - and optional ``grad``
    (N, C) with the reference on ``logits`` (N, C) rounded to the working dtype.

    ``options`` is a :class:`CompareOptions`, or give its fields as keywords (both: the
    keywords replace those fields); the old names ``cast_mode`` and ``worst`` still work, with
    a DeprecationWarning. Shapes must already be right (:func:`compare_files` checks files).
    Logits of any float dtype smcheck knows are accepted as they are, bfloat16 and float8
    included (the front door, :func:`smcheck.prepare.check_input`).

    A loss one float32 ulp above the correctly rounded value, and a gradient that forgot the
    -onehot term:

    >>> import numpy as np
    >>> z = np.array([[2.0, 1.0, 0.1]], dtype=np.float32)
    >>> L = np.log(np.exp(z.astype(np.float64)).sum()) - 2.0
    >>> theirs = np.nextafter(np.float32(L), np.float32(np.inf))
    >>> p = np.exp(z) / np.exp(z).sum()
    >>> r = compare(z, np.array([0]), np.array([theirs]), p)
    >>> round(r.loss.max_ulp_err, 2), round(r.grad.max_abs_err, 6), r.grad.worst_row, r.verdict
    (0.67, 1.0, 0, 'broken')
    """
    opts = merge_options(CompareOptions, options, fields, RENAMED, "compare")
    st = _setup(logits, labels, loss, grad, opts)
    blocks = _measure(st, grad, opts)
    working = st.ci.working
    per_row = opts.reduction == "none"
    lr = _loss_measures(st, blocks, opts)
    loss_stats = _loss_stats(lr, per_row)
    gr = None if grad is None else _grad_rows(blocks, st.ignored)
    grad_stats = None if gr is None else _grad_stats(gr, st.grad_scale)
    empty = opts.convention if _empty_mean(opts.reduction, st.denominator) else None
    checks = _checks(
        loss_stats, grad_stats, st.loss_limit, st.grad_limit, tuple(opts.fail_on),
        opts.reduction, empty,
    )  # fmt: skip
    verdict = _verdict(loss_stats, grad_stats, lr, checks, empty)
    summary = _summary(checks)
    if per_row and lr.their_bad.any():
        summary += _underflow_hint(blocks, lr.their_bad, working)
    n_bad_in = int(st.ci.rows - np.count_nonzero(blocks.cat("finite_input")))
    worst = _worst_rows(
        opts.top, st.labels, ~st.ignored, lr if per_row else None, gr, blocks, working
    )
    return CompareReport(
        logits=opts.names[0],
        labels=opts.names[1],
        loss_file=opts.names[2],
        grad_file=opts.names[3] if grad is not None else None,
        rows=st.ci.rows,
        classes=st.ci.classes,
        dtype=working.name,
        accum=st.ci.accum.name,
        cast_mode=opts.cast,
        reference_precision=reference_precision_name(working, _variant(opts, working)),
        reduction=opts.reduction,
        counted_rows=st.counted,
        ignored_rows=st.ci.rows - st.counted,
        nonfinite_input_rows=n_bad_in,
        cast_changed=blocks.cast_changed,
        cast_overflowed=blocks.cast_overflowed,
        their_loss_dtype=st.their_loss_dtype,
        their_grad_dtype=st.their_grad_dtype if grad is not None else None,
        loss=loss_stats,
        grad=grad_stats,
        worst=worst,
        max_loss_ulp=st.loss_limit,
        max_grad_err=st.grad_limit,
        fail_on=tuple(opts.fail_on),
        checks=checks,
        verdict=verdict,
        summary=summary,
        ok=loss_stats.measured > 0 and all(ch.ok for ch in checks if ch.gated),
        notes=_report_notes(st, opts, n_bad_in, blocks.cast_overflowed, empty),
        weight=None if st.weight is None else opts.weight_name,
        label_smoothing=float(opts.label_smoothing),
        convention=opts.convention,
        variant=_variant(opts, working),
    )


def _variant(opts: CompareOptions, working: Precision) -> Variant | None:
    """The loss variant with its constants as the front door rounds them; None when plain."""
    v = variant_fields(opts)
    return v.rounded(working.carrier) if v.active else None


def _setup(
    logits: np.ndarray,
    labels: np.ndarray,
    loss: np.ndarray,
    grad: np.ndarray | None,
    opts: CompareOptions,
) -> _Setup:
    """Check the arrays through the front door and fix the limits (InputError naming the file)."""
    names = opts.names
    ci = check_input(
        logits, labels, dtype=opts.dtype, accum=opts.accum, cast=opts.cast,
        ignore_index=opts.ignore_index, soft=False, require_labels=True, names=names[:2],
    )  # fmt: skip
    assert ci.labels is not None
    n, c = ci.rows, ci.classes
    loss_in = np.asarray(loss)
    theirs = loss_in.astype(np.float64).reshape(-1)
    want = n if opts.reduction == "none" else 1
    if theirs.shape != (want,):
        raise InputError(f"{names[2]}: {theirs.size} loss values, expected {want}")
    if grad is not None and tuple(np.shape(grad)) != (n, c):
        raise InputError(f"{names[3]}: gradient shape {dims(np.shape(grad))}, expected {n} x {c}")
    w = _check_weight(opts.weight, c, opts.weight_name)
    ignored = ci.labels == opts.ignore_index
    counted = int(n - np.count_nonzero(ignored))
    denominator = _mean_denominator(ci.labels, ignored, w, c)
    default_loss, default_grad = default_tolerances(
        ci.working, ci.accum, c, opts.reduction, counted
    )
    if w is not None:  # gradient entries lie in [-max w, max w] rather than [-1, 1]
        default_grad *= max(1.0, float(w.max(initial=0.0)))
    grad_limit = None
    if grad is not None:
        grad_limit = default_grad if opts.max_grad_err is None else opts.max_grad_err
    grad_scale: float = 1
    if opts.reduction == "mean" and denominator > 0:
        grad_scale = counted if w is None else float(denominator)
    t_loss_dtype, t_grad_dtype = opts.their_dtypes or (loss_in.dtype.name, None)
    if grad is not None and opts.their_dtypes is None:
        t_grad_dtype = np.asarray(grad[:0]).dtype.name
    return _Setup(
        ci=ci,
        labels=ci.labels,
        theirs=theirs,
        their_loss_dtype=t_loss_dtype,
        their_grad_dtype=t_grad_dtype,
        weight=w,
        ignored=ignored,
        counted=counted,
        denominator=denominator,
        loss_limit=default_loss if opts.max_loss_ulp is None else float(opts.max_loss_ulp),
        grad_limit=grad_limit,
        grad_scale=grad_scale,
    )


def _measure(st: _Setup, grad: np.ndarray | None, opts: CompareOptions) -> _Blocks:
    """The reference and the per-row measures, block of rows by block of rows."""
    blocks = _Blocks()
    n, c = st.ci.rows, st.ci.classes
    step = max(1, _CELLS_PER_BLOCK // c)
    for i in range(0, n, step):
        g_block = None if grad is None else grad[i : i + step]
        prep = prepare_input(
            st.ci.x[i : i + step], st.labels[i : i + step], dtype=st.ci.working, cast=opts.cast,
            ignore_index=opts.ignore_index, weight=st.weight,
            label_smoothing=opts.label_smoothing, row_offset=i, z_loss=opts.z_loss,
            softcap=opts.softcap, logit_scale=opts.logit_scale,
            smoothing_convention=opts.smoothing_convention,
        )  # fmt: skip
        _block(prep, g_block, st.grad_scale, blocks)
    return blocks


def _loss_measures(st: _Setup, blocks: _Blocks, opts: CompareOptions) -> _LossRows:
    """Their loss against the reference: per row, or their one reduced number."""
    hi, lo = blocks.cat("ref_hi"), blocks.cat("ref_lo")
    if opts.reduction == "none":
        scaled = ScaledLow(blocks.cat("ref_lo_scaled"), blocks.cat("ref_exp"))
        return _loss_rows(st.theirs, hi, lo, st.ignored, st.ci.working, scaled)
    return _reduced_loss_rows(
        st.theirs, hi, lo, st.ignored, opts.reduction, st.ci.working, st.denominator,
        opts.convention,
    )  # fmt: skip


# --------------------------------------------------------------------------- files


def compare_files(
    logits: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    *,
    loss: str | os.PathLike[str],
    grad: str | os.PathLike[str] | None = None,
    logits_key: str | None = None,
    labels_key: str | None = None,
    label_column: str | int | None = None,
    loss_key: str | None = None,
    grad_key: str | None = None,
    weight: str | os.PathLike[str] | None = None,
    options: CompareOptions | None = None,
    **fields: Any,
) -> CompareReport:
    """Load the dump (logits/labels with :func:`smcheck.loading.load_input`, their loss and
    gradient with :func:`load_values`), check shapes, and :func:`compare`.

    ``weight`` is a file of C class weights (``.npy``, ``.npz`` array ``weight``, text one per
    line), checked against the logits' classes (InputError naming the file). ``options`` and
    ``fields`` are :func:`compare`'s (``names``, ``their_dtypes`` and the weight come from the
    files).

    The working dtype defaults to the logits file's float dtype (float32 for text and integer
    files). Labels are required (a file, the ``labels`` array of an ``.npz``, or a text column).
    """
    # before reading any file: bad options are a usage error whatever the files hold
    opts = merge_options(CompareOptions, options, fields, RENAMED, "compare_files")
    got = load_input(
        logits, labels, logits_key=logits_key, labels_key=labels_key, label_column=label_column,
        ignore_index=opts.ignore_index,
    )  # fmt: skip
    if got.labels is None:
        raise UsageError(
            f"{got.logits_name}: compare needs labels (--labels FILE, a 'labels' array in the "
            ".npz, or --label-column for text)"
        )
    notes = list(got.notes)
    dtype = opts.dtype
    if dtype is None:
        dtype, assumed = file_dtype(got.file_dtype, None)
        if assumed:
            notes.append(f"{got.logits_name} is {got.file_dtype}: working dtype float32 assumed")
    n, c = got.n_rows, got.n_classes
    lead = tuple(got.original_shape[:-1])
    their_loss = load_values(loss, key=loss_key, default_key="loss")
    loss_arr = _as_loss(their_loss, n, lead, opts.reduction)
    grad_arr = None
    grad_name = None
    grad_dtype = None
    if grad is not None:
        their_grad = load_values(grad, key=grad_key, default_key="grad")
        grad_arr = _as_grad(their_grad, n, c, tuple(got.original_shape))
        grad_name, grad_dtype = their_grad.name, their_grad.dtype
    w, w_name = opts.weight, opts.weight_name
    if weight is not None:
        got_w = load_values(weight, key=None, default_key="weight")
        w, w_name = _check_weight(got_w.values, c, got_w.name), got_w.name
    opts = dataclasses.replace(
        opts, dtype=dtype, weight=w, weight_name=w_name,
        names=(got.logits_name, got.labels_name, their_loss.name, grad_name),
        their_dtypes=(their_loss.dtype, grad_dtype), notes=(*opts.notes, *notes),
    )  # fmt: skip
    return compare(got.logits, got.labels, loss_arr, grad_arr, opts)
