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
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from .core import reference_of
from .errors import InputError, UsageError
from .loading import LoadedValues, load_input, load_values
from .loading.common import dims
from .metrics import (
    bits_of_error,
    gate_ulps,
    grad_abs_err,
    grad_rel_err,
    kernel_thresholds,
    loss_abs_err,
    loss_rel_err,
)
from .options import merge_options
from .precisions import PRECISIONS, Precision
from .prepare import (
    CheckedInput,
    Prepared,
    check_input,
    file_dtype,
    loss_coefficients,
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

#: Upper edges (ulps, inclusive) of the loss-error histogram; a last bin holds the rest.
HIST_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 65536.0)

#: Row ids kept per finding (the counts are complete).
MAX_ROW_IDS = 20

# rows per block: about 2**20 logits, so the reference's float64 temporaries stay near 64 MiB
_CELLS_PER_BLOCK = 1 << 20

#: An error of at least half the value's scale is a wrong result, not an imprecise one:
#: |L - L*| >= max(|L*|, 1) / 2, or a gradient entry off by 0.5 (entries lie in [-1, 1]).
BROKEN_FRACTION = 0.5


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class HistBin:
    """Rows whose loss error (ulps) is in (previous upper, ``upper``]; ``upper`` None = above."""

    upper: float | None
    count: int


@dataclass(frozen=True)
class LossStats:
    """Their loss against the reference. Errors are None when no value could be measured.

    ``measured`` counts the values compared (both finite, row not ignored); for a reduction it
    is 1 or 0. ``*_ulp_err`` are in ulps of the working dtype at L*, ``*_bits`` are
    log2(ulps + 1), ``max_gate_ulp_err`` is in ulps of max(|L*|, 1) (what the gate bounds).
    """

    measured: int
    max_ulp_err: float | None
    p99_ulp_err: float | None
    median_ulp_err: float | None
    max_bits: float | None
    p99_bits: float | None
    median_bits: float | None
    max_rel_err: float | None
    median_rel_err: float | None
    max_abs_err: float | None
    max_gate_ulp_err: float | None
    worst_row: int | None
    histogram: tuple[HistBin, ...]
    nonfinite_rows: int
    nonfinite_row_ids: tuple[int, ...]
    nan_rows: int  # of the nonfinite rows: NaN
    inf_rows: int  # of the nonfinite rows: +-inf
    ref_nonfinite_rows: int
    ref_nonfinite_row_ids: tuple[int, ...]
    both_nonfinite_rows: int
    ignored_nonzero_rows: int
    their_value: float | None  # reductions: their number
    ref_value: float | None  # reductions: the reference mean/sum (rounded to float64)


@dataclass(frozen=True)
class GradStats:
    """Their gradient against the reference, per row (max over entries / normwise), in
    per-row units: for ``mean`` their gradient is multiplied by ``scale`` (the counted rows, or
    the summed weight of their labels with class weights)."""

    measured: int
    max_abs_err: float | None
    p99_abs_err: float | None
    median_abs_err: float | None
    max_rel_err: float | None
    median_rel_err: float | None
    worst_row: int | None
    nonfinite_rows: int
    nonfinite_row_ids: tuple[int, ...]
    ref_nonfinite_rows: int
    ref_nonfinite_row_ids: tuple[int, ...]
    both_nonfinite_rows: int
    ignored_nonzero_rows: int
    scale: float  # an int without class weights


@dataclass(frozen=True)
class WorstRow:
    """One of the worst rows, with the logit statistics that explain it."""

    row: int
    label: int
    issue: str  # "nonfinite", "ref-nonfinite" or "" (an error, ranked by size)
    their_loss: float | None  # None with a reduction
    ref_loss: float | None
    loss_ulp_err: float | None
    loss_rel_err: float | None
    grad_abs_err: float | None
    grad_worst_class: int | None  # the class where their gradient is furthest off
    max_logit: float
    min_logit: float
    label_logit: float
    margin: float  # max(z) - z_y: the loss is about this large when it is large
    ref_p_label: float  # reference probability of the label


@dataclass(frozen=True)
class Check:
    """One pass/fail check; only ``gated`` ones decide ``ok``."""

    name: str
    ok: bool
    gated: bool
    value: float | None
    limit: float | None
    message: str


@dataclass(frozen=True)
class CompareReport:
    """What :func:`compare` found. ``verdict``: ok, lossy (imprecise), broken (wrong or
    non-finite) or inconclusive (nothing measurable); ``ok`` is the gate's answer."""

    SCHEMA: ClassVar[str] = "smcheck.compare/1"

    logits: str
    labels: str | None
    loss_file: str
    grad_file: str | None
    rows: int
    classes: int
    dtype: str
    accum: str
    cast_mode: str
    reference_precision: str
    reduction: str
    counted_rows: int
    ignored_rows: int
    nonfinite_input_rows: int
    cast_changed: int
    cast_overflowed: int
    their_loss_dtype: str
    their_grad_dtype: str | None
    loss: LossStats
    grad: GradStats | None
    worst: tuple[WorstRow, ...]
    max_loss_ulp: float
    max_grad_err: float | None
    fail_on: tuple[str, ...]
    checks: tuple[Check, ...]
    verdict: str
    summary: str
    ok: bool
    notes: tuple[str, ...] = ()
    weight: str | None = None  # where the class weights came from; None without weights
    label_smoothing: float = 0.0
    convention: str = "torch"
    #: the loss variant checked (constants as used); None for the plain loss
    variant: Variant | None = None

    @property
    def cast(self) -> str:
        """How the logits were rounded (the CLI's and :class:`CompareOptions`' name)."""
        return self.cast_mode


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


def _two_prod(a: np.ndarray, b: float) -> tuple[np.ndarray, np.ndarray]:
    """p, e with p = fl(a * b) and a * b = p + e exactly (Dekker's product; finite values)."""
    split = 134217729.0  # 2**27 + 1: splits a float64 into two 26-bit halves
    p = a * b
    c = split * a
    a_hi = c - (c - a)
    a_lo = a - a_hi
    d = split * b
    b_hi = d - (d - b)
    b_lo = b - b_hi
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, np.where(np.isfinite(e), e, 0.0)


def _ids(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask)[:MAX_ROW_IDS])


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _histogram(ulps: np.ndarray) -> tuple[HistBin, ...]:
    edges = np.array(HIST_EDGES)
    # bin i holds (edges[i-1], edges[i]]; the last, index len(edges), everything above
    idx = np.searchsorted(edges, ulps, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    uppers: list[float | None] = [*HIST_EDGES, None]
    return tuple(HistBin(u, int(k)) for u, k in zip(uppers, counts, strict=True))


def _dist(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(max, p99, median) of the finite-or-inf values given; Nones when there are none.

    Exact quantiles: compare holds one error per row in memory. ``eval`` streams its input in
    chunks and reports quantiles from log-spaced histograms instead (:mod:`smcheck.eval_report`).
    """
    if values.size == 0:
        return None, None, None
    return (
        float(values.max()),
        float(np.quantile(values, 0.99)),
        float(np.median(values)),
    )


def _reduced_reference(
    hi: np.ndarray, lo: np.ndarray, reduction: str, denominator: Fraction, convention: str
) -> tuple[Fraction | None, float]:
    """The reference mean/sum of the counted rows: (exact-ish Fraction or None, float64 value).

    ``denominator`` is what the mean divides by (:func:`_mean_denominator`). None when a row's
    reference is non-finite (the float value then follows IEEE: NaN wins, else the infinity)
    or, for ``mean`` with a denominator of 0, NaN as PyTorch's 0/0 (``convention="torch"``);
    optax's convention (``"jax"``) is an exact 0 there.
    """
    if np.isnan(hi).any():
        return None, math.nan
    if np.isinf(hi).any():
        return None, math.inf if (hi == math.inf).any() else -math.inf
    if reduction == "mean" and denominator == 0:
        return (Fraction(0), 0.0) if convention == "jax" else (None, math.nan)
    terms = [*hi.tolist(), *lo.tolist()]
    s = math.fsum(terms)
    s_lo = math.fsum([*terms, -s])  # what fsum rounded away: the sum is s + s_lo to ~2**-106
    exact = Fraction(s) + Fraction(s_lo)
    if reduction == "mean":
        exact /= denominator
    return exact, float(exact)


def _mean_denominator(
    labels: np.ndarray, ignored: np.ndarray, weight: np.ndarray | None, classes: int
) -> Fraction:
    """What ``mean`` divides by, exactly: the counted rows, or with class weights the sum of
    their labels' weights (``Prepared.mean_denominator``, which rounds it to float64).

    Labels outside [0, C) are skipped here; :func:`smcheck.prepare.prepare_input` reports them.
    """
    ids = labels[~ignored]
    if weight is None:
        return Fraction(int(ids.shape[0]))
    if ids.dtype.kind == "f":
        ids = np.where(np.isfinite(ids), ids, -1)
    ids = ids.astype(np.int64)
    counts = np.bincount(ids[(ids >= 0) & (ids < classes)], minlength=classes)
    used = np.flatnonzero(counts)
    # each weight is m / 2**k: summed as integers over the largest 2**k, so exactly
    ratios = [float(v).as_integer_ratio() for v in weight[used].tolist()]
    big = max((d for _, d in ratios), default=1)
    total = sum(m * (big // d) * int(k) for (m, d), k in zip(ratios, counts[used], strict=True))
    return Fraction(total, big)


def _check_weight(weight: np.ndarray | None, classes: int, name: str) -> np.ndarray | None:
    """Class weights as float64 (C,): one per class, finite and >= 0; InputError naming ``name``."""
    if weight is None:
        return None
    try:
        w = np.asarray(weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name}: class weights must be numbers") from None
    if w.ndim == 2 and 1 in w.shape:  # a column (text one per line) or a row
        w = w.reshape(-1)
    if w.shape != (classes,):
        raise InputError(
            f"{name}: {w.size} class weight(s) (shape {dims(w.shape)}), expected {classes}: one "
            "per class of the logits"
        )
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise InputError(
            f"{name}: the weight of class {k} is {float(w[k])!r}; class weights must be finite "
            "and >= 0"
        )
    return w


@dataclass
class _Blocks:
    """Per-row arrays gathered block by block; :meth:`cat` joins one of them."""

    ref_hi: list[np.ndarray] = field(default_factory=list)
    ref_lo: list[np.ndarray] = field(default_factory=list)
    # the low parts with an exponent (losses below 2**-968; exponent 0 elsewhere)
    ref_lo_scaled: list[np.ndarray] = field(default_factory=list)
    ref_exp: list[np.ndarray] = field(default_factory=list)
    finite_input: list[np.ndarray] = field(default_factory=list)
    max_logit: list[np.ndarray] = field(default_factory=list)
    min_logit: list[np.ndarray] = field(default_factory=list)
    label_logit: list[np.ndarray] = field(default_factory=list)
    p_label: list[np.ndarray] = field(default_factory=list)
    grad_abs: list[np.ndarray] = field(default_factory=list)
    grad_rel: list[np.ndarray] = field(default_factory=list)
    grad_cls: list[np.ndarray] = field(default_factory=list)
    grad_their_bad: list[np.ndarray] = field(default_factory=list)
    grad_ref_bad: list[np.ndarray] = field(default_factory=list)
    grad_ign_nonzero: list[np.ndarray] = field(default_factory=list)
    cast_changed: int = 0
    cast_overflowed: int = 0

    def cat(self, name: str) -> np.ndarray:
        return np.concatenate(getattr(self, name))


def _block(prep: Prepared, grad: np.ndarray | None, grad_scale: float, out: _Blocks) -> None:
    """Reference and per-row measures of one block of rows, appended to ``out``."""
    if prep.coeff is not None:
        # prepare rounds the loss coefficients to the working dtype, so that eval's methods and
        # its reference share them; their kernel's truth is the loss itself: keep them in float64
        # (eps / C = 0.1 / 7 is off by 2**-12 relative in float16, 2**-53 here)
        n_rows, classes = prep.x.shape
        coeff = loss_coefficients(
            n_rows, classes, prep.safe_labels, prep.ignored, prep.weight, prep.label_smoothing,
            prep.soft_targets,
            "torch" if prep.variant is None else prep.variant.smoothing_convention,
        )  # fmt: skip
        prep = dataclasses.replace(prep, coeff=coeff)
    ref = reference_of(prep)
    n = prep.x.shape[0]
    rows = np.arange(n)
    y = prep.safe_labels
    assert y is not None and ref.grad is not None
    z = prep.x.astype(np.float64)
    out.cast_changed += prep.cast_report.changed
    out.cast_overflowed += prep.cast_report.overflowed
    out.ref_hi.append(ref.loss)
    out.ref_lo.append(np.zeros(n) if ref.loss_lo is None else ref.loss_lo)
    scaled = ref.loss_scaled or ScaledLow(out.ref_lo[-1], np.zeros(n, np.int16))
    out.ref_lo_scaled.append(scaled.lo)
    out.ref_exp.append(scaled.exp)
    out.finite_input.append(prep.finite_input)
    out.max_logit.append(np.max(np.where(np.isnan(z), -np.inf, z), axis=1))
    out.min_logit.append(np.min(np.where(np.isnan(z), np.inf, z), axis=1))
    out.label_logit.append(z[rows, y])
    out.p_label.append(ref.prob[rows, y])
    if grad is None:
        return
    g = np.asarray(grad).astype(np.float64)
    lo = np.zeros_like(ref.grad) if ref.grad_lo is None else ref.grad_lo
    if grad_scale != 1:
        # their gradient is of the mean: compare D * g (kept exact as p + e) in per-row units,
        # D the counted rows (with weights: their labels' summed weight, rounded to float64)
        with np.errstate(over="ignore", invalid="ignore"):  # huge/NaN entries: findings
            g, e = _two_prod(g, float(grad_scale))
        lo = lo - e
    with np.errstate(invalid="ignore"):  # inf - inf on non-finite entries: ranked as inf
        d = np.abs((g - ref.grad) - lo)
    out.grad_abs.append(grad_abs_err(g, ref.grad, lo))
    out.grad_rel.append(grad_rel_err(g, ref.grad, lo))
    out.grad_cls.append(np.argmax(np.where(np.isnan(d), np.inf, d), axis=1))
    out.grad_their_bad.append(np.asarray(~np.isfinite(g).all(axis=1)))
    out.grad_ref_bad.append(~np.isfinite(ref.grad).all(axis=1))
    out.grad_ign_nonzero.append(prep.ignored & (g != 0).any(axis=1))


@dataclass(frozen=True)
class _LossRows:
    """Loss measures per row (reduction none) or of the one reduced value (arrays of 1)."""

    theirs: np.ndarray
    measured: np.ndarray  # both finite, row counted
    abs_err: np.ndarray
    rel_err: np.ndarray
    ulp_err: np.ndarray  # ulps at L*
    gate_err: np.ndarray  # ulps of max(|L*|, 1)
    scaled_err: np.ndarray  # |L - L*| / max(|L*|, 1)
    their_bad: np.ndarray
    ref_bad: np.ndarray
    both_bad: np.ndarray
    ignored_nonzero: int = 0
    their_value: float | None = None
    ref_value: float | None = None


def _loss_rows(
    theirs: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    ignored: np.ndarray,
    working: Precision,
    ref_scaled: ScaledLow | None = None,
) -> _LossRows:
    """Per-row measures, reduction none (ignored rows are left out but must be 0)."""
    counted = ~ignored
    t_fin, r_fin = np.isfinite(theirs), np.isfinite(hi)
    abs_err = loss_abs_err(theirs, hi, lo)
    scale = np.maximum(np.abs(hi), 1.0)
    with np.errstate(invalid="ignore"):  # NaN where not measurable (NaN reference)
        scaled = abs_err / scale
    return _LossRows(
        theirs=theirs,
        measured=counted & t_fin & r_fin,
        abs_err=abs_err,
        rel_err=loss_rel_err(theirs, hi, lo, ref_scaled),
        ulp_err=abs_err / working.ulp(hi),
        gate_err=gate_ulps(abs_err, hi, working),
        scaled_err=scaled,
        their_bad=counted & ~t_fin & r_fin,
        ref_bad=counted & t_fin & ~r_fin,
        both_bad=counted & ~t_fin & ~r_fin,
        ignored_nonzero=int(np.count_nonzero(ignored & (theirs != 0))),
    )


def _reduced_loss_rows(
    theirs: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    ignored: np.ndarray,
    reduction: str,
    working: Precision,
    denominator: Fraction,
    convention: str,
) -> _LossRows:
    """Measures of their one reduced number against the exact reference mean/sum."""
    counted = ~ignored
    exact, ref = _reduced_reference(hi[counted], lo[counted], reduction, denominator, convention)
    value = float(theirs[0])
    if _empty_mean(reduction, denominator) and convention == "torch" and math.isnan(value):
        # PyTorch's mean over nothing is 0/0 = NaN: their NaN is exactly the reference
        zero, no = np.array([0.0]), np.array([False])
        return _LossRows(
            theirs=theirs,
            measured=np.array([True]),
            abs_err=zero,
            rel_err=zero,
            ulp_err=zero,
            gate_err=zero,
            scaled_err=zero,
            their_bad=no,
            ref_bad=no,
            both_bad=no,
            their_value=value,
            ref_value=ref,
        )
    t_ok, r_ok = math.isfinite(value), math.isfinite(ref)
    # the error from the exact rationals, not from ref (which is rounded to float64)
    a = abs(float(Fraction(value) - exact)) if t_ok and exact is not None else math.nan
    if math.isnan(a):
        rel = math.nan
    elif ref != 0:
        rel = a / abs(ref)
    else:
        rel = 0.0 if a == 0 else math.inf
    scale = max(abs(ref), 1.0) if r_ok else math.nan
    return _LossRows(
        theirs=theirs,
        measured=np.array([t_ok and r_ok]),
        abs_err=np.array([a]),
        rel_err=np.array([rel]),
        ulp_err=np.array([a]) / working.ulp(np.array([ref])),
        gate_err=gate_ulps(np.array([a]), np.array([ref]), working),
        scaled_err=np.array([a / scale if r_ok else math.nan]),
        their_bad=np.array([not t_ok and r_ok]),
        ref_bad=np.array([t_ok and not r_ok]),
        both_bad=np.array([not t_ok and not r_ok]),
        their_value=value,
        ref_value=ref,
    )


def _empty_mean(reduction: str, denominator: Fraction) -> bool:
    """A mean over nothing (every row ignored, or their labels weigh 0): PyTorch's 0/0."""
    return reduction == "mean" and denominator == 0


def _loss_stats(lr: _LossRows, per_row: bool) -> LossStats:
    m = lr.measured
    ulps = lr.ulp_err[m]
    umax, up99, umed = _dist(ulps)
    bmax, bp99, bmed = _dist(bits_of_error(ulps))
    rmax, _, rmed = _dist(lr.rel_err[m])
    return LossStats(
        measured=int(np.count_nonzero(m)),
        max_ulp_err=umax,
        p99_ulp_err=up99,
        median_ulp_err=umed,
        max_bits=bmax,
        p99_bits=bp99,
        median_bits=bmed,
        max_rel_err=rmax,
        median_rel_err=rmed,
        max_abs_err=_dist(lr.abs_err[m])[0],
        max_gate_ulp_err=_dist(lr.gate_err[m])[0],
        worst_row=int(np.flatnonzero(m)[np.argmax(ulps)]) if ulps.size and per_row else None,
        histogram=_histogram(ulps),
        nonfinite_rows=int(np.count_nonzero(lr.their_bad)),
        nonfinite_row_ids=_ids(lr.their_bad) if per_row else (),
        nan_rows=int(np.count_nonzero(lr.their_bad & np.isnan(lr.theirs))),
        inf_rows=int(np.count_nonzero(lr.their_bad & np.isinf(lr.theirs))),
        ref_nonfinite_rows=int(np.count_nonzero(lr.ref_bad)),
        ref_nonfinite_row_ids=_ids(lr.ref_bad) if per_row else (),
        both_nonfinite_rows=int(np.count_nonzero(lr.both_bad)),
        ignored_nonzero_rows=lr.ignored_nonzero,
        their_value=lr.their_value,
        ref_value=lr.ref_value,
    )


@dataclass(frozen=True)
class _GradRows:
    """Gradient measures per row (counted rows only in the masks)."""

    abs_err: np.ndarray  # max over entries; inf where theirs is non-finite
    rel_err: np.ndarray
    worst_class: np.ndarray
    measured: np.ndarray
    their_bad: np.ndarray
    ref_bad: np.ndarray
    both_bad: np.ndarray
    ignored_nonzero: int


def _grad_rows(blocks: _Blocks, ignored: np.ndarray) -> _GradRows:
    counted = ~ignored
    abs_err = blocks.cat("grad_abs")
    tb, rb = blocks.cat("grad_their_bad"), blocks.cat("grad_ref_bad")
    return _GradRows(
        abs_err=abs_err,
        rel_err=blocks.cat("grad_rel"),
        worst_class=blocks.cat("grad_cls"),
        measured=counted & np.isfinite(abs_err),
        their_bad=counted & tb & ~rb,
        ref_bad=counted & rb & ~tb,
        both_bad=counted & tb & rb,
        ignored_nonzero=int(np.count_nonzero(blocks.cat("grad_ign_nonzero"))),
    )


def _grad_stats(gr: _GradRows, scale: float) -> GradStats:
    m = gr.measured
    amax, ap99, amed = _dist(gr.abs_err[m])
    rmax, _, rmed = _dist(gr.rel_err[m])
    return GradStats(
        measured=int(np.count_nonzero(m)),
        max_abs_err=amax,
        p99_abs_err=ap99,
        median_abs_err=amed,
        max_rel_err=rmax,
        median_rel_err=rmed,
        worst_row=int(np.flatnonzero(m)[np.argmax(gr.abs_err[m])]) if amax is not None else None,
        nonfinite_rows=int(np.count_nonzero(gr.their_bad)),
        nonfinite_row_ids=_ids(gr.their_bad),
        ref_nonfinite_rows=int(np.count_nonzero(gr.ref_bad)),
        ref_nonfinite_row_ids=_ids(gr.ref_bad),
        both_nonfinite_rows=int(np.count_nonzero(gr.both_bad)),
        ignored_nonzero_rows=gr.ignored_nonzero,
        scale=scale,
    )


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


def _verdict(
    loss: LossStats,
    grad: GradStats | None,
    lr: _LossRows,
    checks: tuple[Check, ...],
    empty: str | None,
) -> str:
    """broken (wrong or non-finite), inconclusive (nothing measured), lossy or ok."""
    broken = (
        loss.nonfinite_rows > 0
        or loss.ignored_nonzero_rows > 0
        or bool(np.any(lr.scaled_err[lr.measured] >= BROKEN_FRACTION))
        # a number where PyTorch's mean over nothing is NaN: wrong under this convention
        or (empty == "torch" and loss.ref_nonfinite_rows > 0)
    )
    if grad is not None:
        broken = broken or grad.nonfinite_rows > 0 or grad.ignored_nonzero_rows > 0
        broken = broken or (grad.max_abs_err or 0.0) >= BROKEN_FRACTION
    if broken:
        return "broken"
    if loss.measured == 0:
        return "inconclusive"
    if any(not ch.ok for ch in checks if ch.name in ("loss-error", "grad-error")):
        return "lossy"
    return "ok"


def _report_notes(
    st: _Setup, opts: CompareOptions, nonfinite_input: int, overflowed: int, empty: str | None
) -> tuple[str, ...]:
    """The caller's notes, then the input's and the stored dtypes' (errors are in T's ulps)."""
    working = st.ci.working
    out = [
        *opts.notes,
        *_notes(working, opts.cast, nonfinite_input, overflowed, empty, st.counted),
    ]
    for what, dt in (("loss", st.their_loss_dtype), ("gradient", st.their_grad_dtype)):
        if dt in PRECISIONS and dt != working.name:
            out.append(
                f"their {what} is stored as {dt} but the working dtype is {working.name}: "
                f"errors are in {working.name} ulps"
            )
    return tuple(out)


def _summary(checks: tuple[Check, ...]) -> str:
    """The failed checks, most severe first; else what the error checks measured."""
    severity = ("nonfinite", "grad-error", "loss-error", "ignored", "ref-nonfinite")
    failed = sorted((ch for ch in checks if not ch.ok), key=lambda ch: severity.index(ch.name))
    if failed:
        return "; ".join(ch.message for ch in failed)
    return "; ".join(ch.message for ch in checks if ch.name in ("loss-error", "grad-error"))


def _notes(
    working: Precision,
    cast_mode: str,
    nonfinite_input: int,
    overflowed: int,
    empty: str | None,
    counted: int,
) -> list[str]:
    out = []
    if nonfinite_input:
        out.append(
            f"{nonfinite_input} row(s) of the logits hold NaN/inf after rounding to "
            f"{working.name}: the reference is NaN there (or +inf for a label on a -inf logit)"
        )
    if overflowed:
        out.append(
            f"{overflowed} logit(s) overflowed when rounded to {working.name} (cast {cast_mode})"
        )
    if empty is not None:
        why = "every row is ignored" if counted == 0 else "the counted rows' labels weigh 0"
        out.append(
            f"{why}: the reference mean is NaN (0/0), as PyTorch's (--convention torch)"
            if empty == "torch"
            else f"{why}: the reference mean is 0, optax's convention (--convention jax)"
        )
    return out


def _underflow_hint(blocks: _Blocks, their_bad: np.ndarray, working: Precision) -> str:
    """Why their loss is inf, when the margins say so: p_y = exp(-margin) underflows to 0 in
    the working dtype once margin > -ln(smallest subnormal / 2) (17.33 in float16: round to
    nearest sends only values below half the smallest subnormal to 0), and a kernel that takes
    -log(softmax(z)_y) then returns -log(0) = inf."""
    with np.errstate(invalid="ignore"):  # inf - inf on rows with non-finite logits
        margin = blocks.cat("max_logit") - blocks.cat("label_logit")
    worst = float(np.nanmax(np.where(their_bad, margin, np.nan), initial=-np.inf))
    limit = -(working.ln_smallest_subnormal - math.log(2))
    if not worst > limit:
        return ""
    return (
        f". Margins max(z) - z_y reach {worst:.3g} > {limit:.4g} = -ln(smallest {working.name} "
        "subnormal / 2): p_y underflows to 0 there, so -log(softmax(z)_y) is inf; compute the loss "
        "as logsumexp(z) - z_y (a fused log-softmax)"
    )


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _rows_text(count: int, ids: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in ids[:5]) + (", ..." if count > 5 else "")
    return f"{count} row(s) ({shown})" if ids else f"{count} value(s)"


def _checks(
    loss: LossStats,
    grad: GradStats | None,
    loss_limit: float,
    grad_limit: float | None,
    fail_on: tuple[str, ...],
    reduction: str,
    empty: str | None = None,
) -> tuple[Check, ...]:
    """The five checks, in report order: loss error, gradient error (with a gradient), their
    values non-finite, the reference non-finite, ignored rows non-zero. ``empty``: the
    convention, when the mean is over nothing (PyTorch NaN, optax 0)."""
    what = "their loss" if reduction == "none" else f"their {reduction} loss"
    out = [_loss_check(loss, loss_limit, what, empty)]
    if grad is not None and grad_limit is not None:
        out.append(_grad_check(grad, grad_limit))
    out.append(_nonfinite_check(loss, grad, "nonfinite" in fail_on))
    out.append(_ref_nonfinite_check(loss, grad, "ref-nonfinite" in fail_on))
    ig = loss.ignored_nonzero_rows + (grad.ignored_nonzero_rows if grad else 0)
    message = (
        f"{ig} ignored row(s) have a non-zero loss or gradient (PyTorch gives 0)"
        if ig
        else "ignored rows are 0"
    )
    out.append(Check("ignored", ig == 0, "ignored" in fail_on, float(ig), 0.0, message))
    return tuple(out)


def _loss_check(loss: LossStats, limit: float, what: str, empty: str | None) -> Check:
    """Their loss error in ulps of max(|L*|, 1) against ``limit`` (always gated)."""
    if empty is not None:
        # a mean over nothing: under torch a measured value is their NaN matching 0/0
        ok = loss.measured > 0 and (loss.max_gate_ulp_err or 0.0) <= limit
        nothing = "with nothing to divide by (no counted rows, or their labels weigh 0)"
        ref = {"torch": "PyTorch's mean is NaN (0/0)", "jax": "optax's mean is 0"}
        alt = {
            "torch": "optax returns 0 (--convention jax)",
            "jax": "PyTorch returns NaN (--convention torch)",
        }
        message = (
            f"{what} is {loss.their_value!r}{':' if ok else ' but'} {nothing} {ref[empty]}, the "
            f"reference under --convention {empty}" + ("" if ok else f"; {alt[empty]}")
        )
        return Check("loss-error", ok, True, 0.0 if ok else None, limit, message)
    if loss.measured == 0:
        message = f"{what}: nothing to measure (every row ignored or non-finite)"
        return Check("loss-error", False, True, None, limit, message)
    v = loss.max_gate_ulp_err
    assert v is not None
    ok = v <= limit
    rel = "over" if not ok else "within"
    message = (
        f"{what} is off by up to {_g(v)} ulps of max(|L|, 1) ({rel} the limit "
        f"{_g(limit)}; {_g(loss.max_ulp_err)} ulps at L)"
    )
    return Check("loss-error", ok, True, v, limit, message)


def _grad_check(grad: GradStats, limit: float) -> Check:
    """Their gradient's largest absolute error against ``limit`` (always gated)."""
    v = grad.max_abs_err
    ok = v is not None and v <= limit
    msg = (
        "their gradient: nothing to measure"
        if v is None
        else f"their gradient is off by up to {_g(v)} ({'within' if ok else 'over'} the "
        f"limit {_g(limit)})"
    )
    return Check("grad-error", ok, True, v, limit, msg)


def _nonfinite_check(loss: LossStats, grad: GradStats | None, gated: bool) -> Check:
    """Their values NaN/inf where the reference is finite (a bug in their kernel)."""
    nf = loss.nonfinite_rows + (grad.nonfinite_rows if grad else 0)
    parts = []
    if loss.nonfinite_rows:
        parts.append(f"loss on {_rows_text(loss.nonfinite_rows, loss.nonfinite_row_ids)}")
    if grad is not None and grad.nonfinite_rows:
        parts.append(f"gradient on {_rows_text(grad.nonfinite_rows, grad.nonfinite_row_ids)}")
    message = (
        "their " + " and ".join(parts) + " is NaN/inf where the reference is finite"
        if nf
        else "no NaN/inf where the reference is finite"
    )
    return Check("nonfinite", nf == 0, gated, float(nf), 0.0, message)


def _ref_nonfinite_check(loss: LossStats, grad: GradStats | None, gated: bool) -> Check:
    """Their values finite where the reference is not (a non-finite input hidden)."""
    rn = loss.ref_nonfinite_rows + (grad.ref_nonfinite_rows if grad else 0)
    parts = []
    if loss.ref_nonfinite_rows:
        parts.append(f"loss on {_rows_text(loss.ref_nonfinite_rows, loss.ref_nonfinite_row_ids)}")
    if grad is not None and grad.ref_nonfinite_rows:
        ids = grad.ref_nonfinite_row_ids
        parts.append(f"gradient on {_rows_text(grad.ref_nonfinite_rows, ids)}")
    message = (
        "their " + " and ".join(parts) + " is finite where the reference is NaN/inf "
        "(non-finite input hidden)"
        if rn
        else "finite only where the reference is"
    )
    return Check("ref-nonfinite", rn == 0, gated, float(rn), 0.0, message)


def _worst_rows(
    k: int,
    labels: np.ndarray,
    counted: np.ndarray,
    lr: _LossRows | None,
    gr: _GradRows | None,
    blocks: _Blocks,
    working: Precision,
) -> tuple[WorstRow, ...]:
    """The ``k`` worst counted rows: non-finite where the reference is finite first, then finite
    where it is not, then by error (loss in ulps of max(|L|, 1), gradient in ulps of 1).
    ``lr`` is None with a reduction (no per-row loss): the gradient alone ranks the rows."""
    if k <= 0 or (lr is None and gr is None):
        return ()
    n = counted.shape[0]
    issue = np.zeros(n, dtype=np.int8)
    score = np.zeros(n)
    if lr is not None:
        issue = np.where(lr.their_bad, 2, np.where(lr.ref_bad, 1, 0)).astype(np.int8)
        score = np.where(np.isnan(lr.gate_err), 0.0, lr.gate_err)
    if gr is not None:
        issue = np.maximum(issue, np.where(gr.their_bad, 2, np.where(gr.ref_bad, 1, 0)))
        score = np.maximum(score, np.where(np.isfinite(gr.abs_err), gr.abs_err, 0.0) / working.eps)
    cand = np.flatnonzero(counted & ((issue > 0) | (score > 0)))
    order = cand[np.lexsort((cand, -score[cand], -issue[cand]))][:k]
    max_logit, min_logit = blocks.cat("max_logit"), blocks.cat("min_logit")
    label_logit, p_label = blocks.cat("label_logit"), blocks.cat("p_label")
    ref_hi = blocks.cat("ref_hi")
    names = {2: "nonfinite", 1: "ref-nonfinite", 0: ""}
    out = []
    for r in order.tolist():
        with np.errstate(invalid="ignore"):  # inf - inf for rows with non-finite logits
            margin = float(max_logit[r] - label_logit[r])
        out.append(
            WorstRow(
                row=r,
                label=int(labels[r]),
                issue=names[int(issue[r])],
                their_loss=None if lr is None else float(lr.theirs[r]),
                ref_loss=None if lr is None else float(ref_hi[r]),
                loss_ulp_err=None if lr is None else _opt(float(lr.ulp_err[r])),
                loss_rel_err=None if lr is None else _opt(float(lr.rel_err[r])),
                grad_abs_err=None if gr is None else _opt(float(gr.abs_err[r])),
                grad_worst_class=None if gr is None else int(gr.worst_class[r]),
                max_logit=float(max_logit[r]),
                min_logit=float(min_logit[r]),
                label_logit=float(label_logit[r]),
                margin=margin,
                ref_p_label=float(p_label[r]),
            )
        )
    return tuple(out)


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
