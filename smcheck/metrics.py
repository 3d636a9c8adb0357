"""Per-row error measures: plain functions of (method output, reference), all in float64.

The reference may be a double-double (``hi + lo``, for float64 work); differences are formed as
``(value - hi) - lo`` - exact in the first step when value and hi are within a factor 2
(Sterbenz), so errors far below one ulp of float64 are measured correctly.
"""

from __future__ import annotations

import math

import numpy as np

from .precisions import Precision, get_precision, resolve_accum
from .reference import ScaledLow, quad_dtype

__all__ = [
    "bits_of_error",
    "condition_number",
    "default_thresholds",
    "gate_ulps",
    "loss_gate_err",
    "grad_abs_err",
    "grad_rel_err",
    "kernel_thresholds",
    "loss_abs_err",
    "loss_rel_err",
    "loss_ulp_err",
    "sum_roundings",
]


def _diff(value: np.ndarray, hi: np.ndarray, lo: np.ndarray | None) -> np.ndarray:
    v = np.asarray(value).astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: a non-finite value, reported apart
        d = v - hi
        if lo is not None:
            d = d - lo
    return d


def loss_abs_err(loss: np.ndarray, ref: np.ndarray, ref_lo: np.ndarray | None = None) -> np.ndarray:
    """|L - L*|; NaN where either is non-finite (those rows are counted, not measured)."""
    d = np.abs(_diff(loss, ref, ref_lo))
    both = np.isfinite(np.asarray(loss, dtype=np.float64)) & np.isfinite(ref)
    return np.where(both, d, np.nan)


def loss_rel_err(
    loss: np.ndarray,
    ref: np.ndarray,
    ref_lo: np.ndarray | None = None,
    ref_scaled: ScaledLow | None = None,
) -> np.ndarray:
    """|L - L*| / |L*|, with 0/0 = 0 (C = 1: both exactly 0) and x/0 = inf; NaN if non-finite.

    ``ref_scaled`` (the float64 reference's :attr:`~smcheck.reference.ReferenceOutput.loss_scaled`)
    carries the low parts of losses below 2**-968 with an exponent; without it such a loss's
    reference is only its subnormal high part, and at the smallest subnormal a correctly rounded
    method would show 0 where its relative error is ~0.3:

    >>> float(loss_rel_err(np.array([1.5]), np.array([1.0]))[0])
    0.5
    """
    err = loss_abs_err(loss, ref, ref_lo)
    den = np.abs(ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(den > 0, err / np.where(den > 0, den, 1.0), np.where(err == 0, 0.0, np.inf))
    rel = np.where(np.isnan(err), np.nan, rel)
    if ref_scaled is not None:
        tiny = (ref_scaled.exp != 0) & ~np.isnan(err)
        if tiny.any():
            rel[tiny] = _tiny_rel_err(
                np.asarray(loss, dtype=np.float64)[tiny],
                ref[tiny],
                ref_scaled.lo[tiny],
                ref_scaled.exp[tiny],
            )
    return rel


def _tiny_rel_err(v: np.ndarray, hi: np.ndarray, lo: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """|v - L*| / |L*| with L* = hi + lo * 2**-exp, in binary128: L* and v - L* are exact there
    (its exponent reaches 2**-16382), so only the final quotient rounds. The rows are rare
    (losses below 2**-968)."""
    quad = quad_dtype()
    if quad is None:  # pragma: no cover - numpy-quaddtype is a hard dependency
        raise RuntimeError("numpy-quaddtype is required for a float64 reference")
    # 2**-exp as two float64 factors: 2**-1100 is below float64's range
    half = exp.astype(np.int64) // 2
    one = np.ones(exp.shape)
    scale = np.ldexp(one, -half).astype(quad) * np.ldexp(one, half - exp).astype(quad)
    truth = hi.astype(quad) + lo.astype(quad) * scale
    with np.errstate(over="ignore"):  # a method far off a tiny loss: inf relative error
        return (np.abs(v.astype(quad) - truth) / np.abs(truth)).astype(np.float64)


def loss_ulp_err(
    loss: np.ndarray, ref: np.ndarray, working: Precision, ref_lo: np.ndarray | None = None
) -> np.ndarray:
    """|L - L*| in units of the working dtype's spacing at L* (ulps); NaN if non-finite.

    >>> from smcheck.precisions import get_precision
    >>> float(loss_ulp_err(np.array([1.0 + 2**-10]), np.array([1.0]), get_precision("float16"))[0])
    1.0
    """
    err = loss_abs_err(loss, ref, ref_lo)
    return err / working.ulp(ref)


def gate_ulps(abs_err: np.ndarray, ref: np.ndarray, working: Precision) -> np.ndarray:
    """The gate metric from an absolute loss error: |L - L*| in ulps of max(|L*|, 1) of the
    working dtype - relative above a loss of 1, absolute (in eps) below it.

    Why not ulps at L*: a confident row's loss of 1e-20 that a kernel returns as 0 costs
    training nothing, yet is 2**60 float32 ulps off at L*; the gate holds every row to the
    spacing of the numbers its loss is computed from, at least that of 1. A non-finite
    reference (whose error is NaN anyway) is measured on the scale of 1.

    >>> from smcheck.precisions import get_precision
    >>> gate_ulps(np.array([2.0**-23, 2.0**-23]), np.array([1e-20, 3.0]), get_precision("float32"))
    array([1. , 0.5])
    """
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.abs(np.nan_to_num(ref, nan=1.0, posinf=1.0, neginf=1.0)), 1.0)
    return abs_err / working.ulp(scale)


def loss_gate_err(
    loss: np.ndarray, ref: np.ndarray, working: Precision, ref_lo: np.ndarray | None = None
) -> np.ndarray:
    """|L - L*| in ulps of max(|L*|, 1) (:func:`gate_ulps`), what ``--max-loss-ulp`` bounds;
    NaN where either is non-finite.

    >>> from smcheck.precisions import get_precision
    >>> float(loss_gate_err(np.array([0.0]), np.array([2.0**-12]), get_precision("float16"))[0])
    0.25
    """
    return gate_ulps(loss_abs_err(loss, ref, ref_lo), ref, working)


#: numpy's pairwise summation (``pairwise_sum`` in numpy/_core/src/umath/loops_utils.h.src):
#: up to this many terms are summed by 8 running partial sums, longer runs are halved.
_PAIRWISE_BLOCK = 128
_UNROLL = 8


def _pairwise_depth(n: int) -> int:
    """Roundings on the longest path of numpy's ``pairwise_sum`` of ``n`` terms.

    Below 8 terms: ``res = 0; res += a[i]`` (the first addition is exact); up to 128: 8 running
    sums ``r[j] += a[i + j]`` (n // 8 - 1 additions each), combined as a tree of 3 levels, then
    the n % 8 leftover terms added one by one; above: two halves (the first a multiple of 8)
    added once.
    """
    if n < _UNROLL:
        return max(n - 1, 0)
    if n <= _PAIRWISE_BLOCK:
        return (n // _UNROLL - 1) + 3 + n % _UNROLL
    half = n // 2
    half -= half % _UNROLL
    return 1 + max(_pairwise_depth(half), _pairwise_depth(n - half))


def sum_roundings(n: int, accum: str | np.dtype | Precision) -> int:
    """Roundings on the longest path of smcheck's sum of ``n`` terms in ``accum``
    (:func:`smcheck.precisions.accumulate`): the relative error of a sum of positive terms is
    at most that many times eps(accum) / 2 (to first order).

    16/8-bit sums are an explicit pairwise tree padded to a power of two: ceil(log2 n). float32
    and float64 sums are numpy's ``add.reduce`` over a contiguous row, its pairwise sum of the
    n terms (the order is checked bit for bit in the tests) - 8-way unrolled blocks of up to 128
    terms make its chains longer than log2 n:

    >>> [sum_roundings(c, "float32") for c in (10, 100, 1000, 32000)]
    [5, 18, 21, 26]
    >>> [sum_roundings(c, "bfloat16") for c in (10, 100, 1000, 32000)]
    [4, 7, 10, 15]
    """
    if n <= 1:
        return 0
    if get_precision(accum).bits < 32:
        return math.ceil(math.log2(n))
    return _pairwise_depth(n)


def default_thresholds(
    dtype: str | np.dtype | Precision,
    accum: str | np.dtype | Precision | None,
    classes: int,
) -> tuple[float, float]:
    """Default ``(max_loss_ulp, max_grad_err)`` of the gate for C ``classes`` in ``dtype`` T
    with sums in ``accum`` A (None: float32 for 16/8-bit types, else T).

    ``max_loss_ulp = k = 4 + R(C) * eps(A) / eps(T)``, rounded to 2 decimals: a fused
    loss ``log(sum exp(z - m)) - (z_y - m)`` rounds about four times in T (the shift, the
    ``exp``, the ``log``, the final subtraction), each at most half an ulp of max(|L|, 1) -
    4 ulps is twice that; the sum of C terms in A adds at most R(C) =
    :func:`sum_roundings` roundings of relative size eps(A) / 2 (numpy's pairwise sum: 21 at
    C = 1000, not ceil(log2 C) = 10), which move log(s) by as much in absolute terms.
    ``max_grad_err = k * eps(T)``: p_j = exp(d_j) / s carries the same relative error as s plus
    two roundings in T, and gradient entries lie in [-1, 1] (eps(T) is one ulp of the largest).
    A real defect (overflow, a lost -onehot, a missing shift) is off by orders of magnitude more.

    >>> default_thresholds("float32", "float32", 1000)
    (25.0, 2.9802322387695312e-06)
    >>> default_thresholds("float16", None, 32000)  # + 26 * 2**-13 ulps for the float32 sum
    (4.0, 0.00390625)
    """
    working = get_precision(dtype)
    acc = resolve_accum(working, accum)
    k = round(4 + sum_roundings(classes, acc) * acc.eps / working.eps, 2)
    return k, k * working.eps


def kernel_thresholds(
    dtype: str | np.dtype | Precision,
    accum: str | np.dtype | Precision | None,
    classes: int,
    reduction: str = "none",
    counted: int = 1,
) -> tuple[float, float]:
    """Default ``(max_loss_ulp, max_grad_err)`` for a kernel that is *not* smcheck's own
    (``smcheck compare``, ``smcheck kernel``): the formula of :func:`default_thresholds`, but
    with the sum over C classes taken as a pairwise tree - what a GPU block reduction does - so
    R(C) = ceil(log2 C) roundings, since how their sum runs is not known. A reduction over rows
    adds ceil(log2 counted) roundings of its sum in A and one final rounding in T.

    >>> kernel_thresholds("float32", "float32", 1024)
    (14.0, 1.6689300537109375e-06)
    >>> kernel_thresholds("float32", "float32", 1024, "mean", 1000)
    (25.0, 1.6689300537109375e-06)
    """
    working = get_precision(dtype)
    acc = resolve_accum(working, accum)
    ratio = acc.eps / working.eps
    per_row = round(4 + _tree_depth(classes) * ratio, 2)
    loss = per_row
    if reduction != "none":
        loss = round(per_row + _tree_depth(counted) * ratio + 1.0, 2)
    return loss, per_row * working.eps


def _tree_depth(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def bits_of_error(ulps: np.ndarray) -> np.ndarray:
    """Herbie-style bits of error: log2(ulps + 1) (0 when exact, 1 at one ulp)."""
    return np.log2(np.asarray(ulps, dtype=np.float64) + 1.0)


def grad_abs_err(grad: np.ndarray, ref: np.ndarray, ref_lo: np.ndarray | None = None) -> np.ndarray:
    """Per row max_j |g_j - g*_j|; inf where the method's gradient row is non-finite."""
    d = np.abs(_diff(grad, ref, ref_lo))
    with np.errstate(invalid="ignore"):
        m = np.max(np.where(np.isnan(d), np.inf, d), axis=1)
    ref_bad = ~np.isfinite(ref).all(axis=1)
    return np.where(ref_bad, np.nan, m)


def grad_rel_err(grad: np.ndarray, ref: np.ndarray, ref_lo: np.ndarray | None = None) -> np.ndarray:
    """Per row normwise ||g - g*||_2 / ||g*||_2 (||g*|| > 0 whenever C >= 2); inf if non-finite."""
    d = _diff(grad, ref, ref_lo)
    with np.errstate(invalid="ignore", over="ignore"):
        num = np.sqrt(np.sum(np.where(np.isnan(d), np.inf, d) ** 2, axis=1))
        den = np.sqrt(np.sum(ref**2, axis=1))
    ref_bad = ~np.isfinite(ref).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 0.0, np.inf))
    return np.where(ref_bad, np.nan, rel)


def condition_number(x: np.ndarray, ref_grad: np.ndarray, ref_loss: np.ndarray) -> np.ndarray:
    """kappa = sum_i |z_i| |dL/dz_i| / |L|: relative error the problem itself forces, per eps.

    A method that rounds its inputs' relative perturbations of size eps can be off by about
    kappa * eps without being unstable. inf when L = 0 and some z_i |g_i| != 0.
    """
    z = np.asarray(x).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        num = np.sum(np.abs(z) * np.abs(ref_grad), axis=1)
    den = np.abs(ref_loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 0, np.inf))
