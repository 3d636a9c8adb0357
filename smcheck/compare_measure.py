"""How far their loss and gradient are from the reference, block by block: the per-row
measures and their distributions (:mod:`smcheck.compare` runs it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .compare_report import (
    HIST_EDGES,
    GradStats,
    HistBin,
    LossStats,
    _ids,
)
from .core import reference_of
from .errors import InputError
from .exact_products import two_prod
from .loading.common import dims
from .metrics import (
    bits_of_error,
    gate_ulps,
    grad_abs_err,
    grad_rel_err,
    loss_abs_err,
    loss_rel_err,
)
from .precisions import Precision
from .prepare import (
    Prepared,
    loss_coefficients,
)
from .reference import ScaledLow

# rows per block: about 2**20 logits, so the reference's float64 temporaries stay near 64 MiB
_CELLS_PER_BLOCK = 1 << 20


def _two_prod(a: np.ndarray, b: float) -> tuple[np.ndarray, np.ndarray]:
    """p, e with p = fl(a * b) and a * b = p + e exactly (:func:`~smcheck.exact_products.two_prod`
    on finite values; e = 0 where a is not finite or the product overflows)."""
    p, e = two_prod(a, b)
    return p, np.where(np.isfinite(e), e, 0.0)


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
