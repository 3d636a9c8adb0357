"""The high-precision reference: loss and gradient of the *same rounded inputs*.

Formulas (z already rounded to the working dtype, m = max z, k = argmax z (first),
s' = sum_{j != k} exp(z_j - m), s = 1 + s'):

* loss   = (m - z_y) + log1p(s')                       (log1p form: no cancellation)
* p_j    = exp(z_j - m) / s
* grad_j = p_j - [j == y], except grad_y = -s'/s (= -sum_{j != y} p_j) when z_y = m.

Precision used:

* working dtype float32 or narrower: float64 arithmetic, with every shift z_j - m exact, so the
  only errors left are a few float64 roundings - relative error below 1e-15, far under the
  required eps(working) * 2**-20 (1.1e-13 for float32). Two nonzero values with p significand
  bits differ exactly in float64 when the larger magnitude is at most 2**(52 - p) times the
  smaller: both are multiples of the smaller one's spacing u > smaller / 2**p, so their
  difference is a multiple of u below 2 * larger < 2**53 u. A zero on either side is exact.
  float16 and float8 values span at most 41 bits, so their shifts are always exact. float32
  (2**28) and bfloat16 (2**44) rows are exact where max |z_j| <= 2**(52 - p) * min over nonzero
  |z_j| (finite entries; -inf shifts to -inf exactly) - ordinary logits. Only the rows where
  that fails (tiny nonzero logits next to large ones, e.g. 1e-30 beside 700) go through an
  error-free transformation (TwoSum): d + r = z_j - m exactly, and exp(d + r) = exp(d) (1 + r)
  to first order.
* working dtype float64: IEEE binary128 through numpy-quaddtype (113-bit significand, SLEEF's
  exp/log1p). The result is returned as a double-double: ``loss + loss_lo`` (and
  ``grad + grad_lo``), both float64 arrays, so errors of a float64 method can be measured
  below its own ulp. Below |L*| = 2**-968 (~2e-292) the low part would underflow (it is
  ~2**-53 |L*| and needs to be normal for its 53 bits; at a subnormal loss the high part alone is
  off by up to half its value): such losses also carry an exponent, :class:`ScaledLow`, so their
  relative error is measured right down to the smallest subnormal.

Rows whose input holds NaN or +inf give NaN; -inf logits are masked classes (probability 0),
a row of only -inf gives NaN, and a label on a -inf logit gives loss +inf.

Loss variants (:mod:`smcheck.variants`: logit scale s, softcap c, z-loss lambda) are computed
by :func:`_variant_core` in one of two arithmetics (:func:`variant_arithmetic`):

* float64, for working dtypes of at most 24 bits when the cap allows it: s z is exact in float64
  (two values of <= 24 bits), every shift is exact (TwoSum on every row: the capped logits have
  53 bits), and what is left is the capped logits' own rounding - u = s z / c rounds once, tanh
  and c tanh add a few ulps of |c tanh| <= c - so each logit difference is off by at most about
  18 * 2**-53 * c absolute, which bounds a row's loss error relative to the loss (the loss is
  at least the largest term's difference or log 2; a confident row's loss ~ sum exp(d_j) carries
  the differences' absolute error as a relative one). That meets eps(working) * 2**-20 on the
  loss for every cap up to c = 56.88 in float32 (Gemma's 30 and 50), 466033 in float16,
  3728270 in bfloat16, and for any scale or z-loss without a cap. The gradient's bound is
  absolute in units of its largest possible entry, max(1, |s| (1 + 2 lambda |lse|)): a float64
  number of size 2**10 has an ulp of 2**-42, so no stored gradient - binary128 rounded once
  either - is absolutely accurate to 2**-43 beyond that;
* binary128 otherwise (float64 work, larger caps): 113 bits keep every step's error near
  2**-112 relative to |z''| <= 1e4, far under eps(float64) * 2**-20.

The chain factor 1 - tanh(u)**2 is computed as 4 e^{-2|u|} / (1 + e^{-2|u|})**2, which has no
cancellation where tanh saturates. Both arithmetics are tested against mpmath at 60 digits.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from .precisions import Precision
from .variants import Variant

__all__ = [
    "LOSS_EXP",
    "TINY_LOSS",
    "ReferenceOutput",
    "ScaledLow",
    "quad_dtype",
    "reference_block",
    "reference_precision_name",
]

#: Below this |L*| a float64 double-double's low part underflows: it is ~2**-53 |L*| and keeps
#: its 53 bits only while it is at least 2**-1022, the smallest normal float64.
TINY_LOSS = 2.0**-968
#: The exponent such a loss is scaled by: 2**-1074 * 2**LOSS_EXP = 2**26 and
#: 2**-968 * 2**LOSS_EXP = 2**132, so the scaled low part is normal and nothing overflows.
LOSS_EXP = 1100


@functools.cache
def quad_dtype() -> np.dtype | None:
    """IEEE binary128 (numpy-quaddtype, SLEEF backend), imported on first use: only float64
    work needs it, and its import costs a command's start-up ~0.03 s. None if missing."""
    try:
        import numpy_quaddtype as nq
    except ImportError:  # pragma: no cover - numpy-quaddtype is a hard dependency
        return None
    return np.dtype(nq.QuadPrecDType(backend="sleef"))


@dataclass(frozen=True)
class ScaledLow:
    """Low parts of a double-double reference ``hi`` that hold down to the smallest subnormal:
    L* = hi + lo * 2**-exp, entry by entry.

    ``exp`` is 0 where the ordinary low part is normal (``lo`` is then that low part) and
    :data:`LOSS_EXP` where |L*| < :data:`TINY_LOSS`. Why: for L* = 1e-310 the ordinary pair is
    hi = fl(L*), a subnormal of 45 bits, and lo = fl(L* - hi) = 0 (underflow), so a method
    returning hi looks exact although it is off by up to 2**-45 relative; at the smallest
    subnormal hi is off by up to half of L*. Scaled by 2**1100 the same low part is an ordinary
    float64 again.
    """

    lo: np.ndarray
    exp: np.ndarray  # int16, the shape of lo


@dataclass(frozen=True)
class ReferenceOutput:
    """Reference values for one block of rows (float64; ``*_lo`` add the low parts)."""

    loss: np.ndarray  # (N,) or (N, C) label-free
    loss_lo: np.ndarray | None
    grad: np.ndarray | None  # (N, C); None label-free
    grad_lo: np.ndarray | None
    prob: np.ndarray  # (N, C) softmax probabilities (float64, rounded once); see keep_prob
    prob_rest: np.ndarray  # (N,) s'/s = sum of p_j over j != argmax (float64)
    precision: str
    #: (N,) the z-loss term lambda * lse**2 alone (already in ``loss``); None without z-loss
    z_loss: np.ndarray | None = None
    # the loss's low parts with an exponent, where some loss is below TINY_LOSS (else None)
    loss_scaled: ScaledLow | None = None


#: The reference's two arithmetics, as reports name them.
FLOAT64_TWOSUM = "float64 with exact shifts (TwoSum)"
BINARY128 = "binary128 (numpy-quaddtype)"


def reference_precision_name(working: Precision, variant: Variant | None = None) -> str:
    """Which arithmetic the reference uses for this working dtype (and loss variant)."""
    if working.mantissa_bits > 24:
        return BINARY128
    if variant is not None and variant.changes_values:
        return variant_arithmetic(working, variant)
    return FLOAT64_TWOSUM


#: Absolute error of a capped logits difference in float64, in units of 2**-53 * c (see the
#: module docstring): u = s z / c (1), tanh (<= 4, libm or numpy's SIMD tanh), c * tanh (1),
#: both sides of the difference (x 2), the propagated error of u (c sech^2(u) |u| <= 0.45 c),
#: doubled for margin.
_CAP_ULPS = 18


def variant_arithmetic(working: Precision, variant: Variant) -> str:
    """The arithmetic of a variant's reference: float64 where its error bound (module
    docstring) meets eps(working) * 2**-20, else binary128.

    >>> from smcheck.precisions import get_precision
    >>> variant_arithmetic(get_precision("float32"), Variant(softcap=30.0))
    'float64 with exact shifts (TwoSum)'
    >>> variant_arithmetic(get_precision("float32"), Variant(softcap=100.0))
    'binary128 (numpy-quaddtype)'
    """
    if working.mantissa_bits > 24:
        return BINARY128
    cap = variant.softcap
    if cap is None or _CAP_ULPS * cap * 2.0**-53 <= working.eps * 2.0**-20:
        return FLOAT64_TWOSUM
    return BINARY128


def _two_diff_residual(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """r with a - b = d + r exactly, where d = fl(a - b) (Knuth's TwoSum; finite entries).

    Written with in-place operations: this runs on every logit of every row.
    """
    bb = a - d
    r = d + bb
    np.subtract(a, r, out=r)  # a - (d + bb)
    np.subtract(bb, b, out=bb)  # bb - b
    np.add(r, bb, out=r)
    return r


def _inexact_shift_rows(z: np.ndarray, p: int) -> np.ndarray:
    """Indices of the rows of ``z`` where some shift z_j - m may round in float64.

    ``z`` holds values with ``p`` significand bits (subnormals included). The test is the
    sufficient condition max |z_j| <= 2**(52 - p) * min over nonzero |z_j| (see the module
    docstring), over finite entries; a zero gives an exact shift, and so does -inf. Rows with
    NaN or +inf may be listed: they are NaN by definition, whatever the shift.
    """
    a = np.abs(z)  # on float32 storage these reductions run at float32 speed
    hi = a.max(axis=1)
    lo = a.min(axis=1)
    # rare rows get the slower masked reductions: -inf entries leave the largest *finite*
    # magnitude to bound the shifts, and zeros leave the smallest nonzero one
    inf_rows = np.flatnonzero(hi == np.inf)
    if inf_rows.size:
        sub = a[inf_rows]
        hi[inf_rows] = np.max(sub, axis=1, where=np.isfinite(sub), initial=0)
    zero_rows = np.flatnonzero(lo == 0)
    if zero_rows.size:
        sub = a[zero_rows]
        lo[zero_rows] = np.min(sub, axis=1, where=sub > 0, initial=np.inf)
    # in float64 the scaling by a power of two is exact (2**44 times float32's max is far below
    # float64's); a NaN hi fails the comparison and lists its row
    exact = hi.astype(np.float64) <= lo.astype(np.float64) * 2.0 ** (52 - p)
    return np.flatnonzero(~exact)


def _core(
    z: np.ndarray,
    y: np.ndarray | None,
    twosum_rows: np.ndarray | None = None,
    coeff: np.ndarray | None = None,
    keep_prob: bool = True,
    k: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Loss, grad, prob, prob_rest of ``z``: float32 or float64 storage computes in float64,
    binary128 in binary128. ``twosum_rows`` lists the rows whose shifts need TwoSum; ``k`` is
    each row's first argmax if the caller has it; ``keep_prob=False`` (labels, no ``coeff``)
    builds the gradient in the probabilities' place and returns only the labels' ones (N,)."""
    n = z.shape[0]
    rows = np.arange(n)
    fast = z.dtype in (np.float32, np.float64)
    if k is None:
        k = z.argmax(axis=1)
    if fast:
        # numpy's argmax stops at the first NaN, so m = z_k is NaN on NaN rows, as max would be;
        # float32's max is exact in float64, which does the arithmetic from here on (float32 z
        # promotes exactly)
        m = z[rows, k].astype(np.float64)
    else:
        m = z.max(axis=1)
    e = z - m[:, None]
    r = None
    if twosum_rows is not None and twosum_rows.size:
        # d + r = z_j - m exactly, on the listed rows only (d = fl(z_j - m) = e there)
        r = _two_diff_residual(z[twosum_rows].astype(m.dtype), m[twosum_rows, None], e[twosum_rows])
    np.exp(e, out=e)
    if r is not None:
        # exp(d + r) = exp(d) (1 + r) to first order; |r| <= ulp(d)/2 so r**2 is negligible.
        # -inf entries (and non-finite rows) give a NaN residual: their exp(d) is already right
        # (0), or the row is NaN by definition below
        e_t = e[twosum_rows]
        np.multiply(r, e_t, out=r)
        np.add(e_t, np.where(np.isnan(r), 0.0, r), out=e_t)
        e[twosum_rows] = e_t
    # s' excludes the argmax term exp(0) = 1: zero it for the sum, then put it back
    e_k = e[rows, k].copy()
    e[rows, k] = 0
    s_rest = e.sum(axis=1)
    e[rows, k] = e_k
    s = s_rest + 1
    prob = np.divide(e, s[:, None], out=e)
    prob_rest = s_rest / s
    lse = np.log1p(s_rest)
    # NaN or +inf anywhere makes the row undefined (inf - inf); say so with NaN everywhere.
    # numpy's max is NaN on NaN rows and +inf on +inf rows, so m alone tells; binary128 keeps
    # the full test
    if fast:
        undefined = np.isnan(m) | (m == np.inf)
    else:
        undefined = (np.isnan(z) | (z == np.inf)).any(axis=1)
    if undefined.any():
        nan = np.zeros((), dtype=prob.dtype) / 0
        prob[undefined] = nan
        prob_rest = np.where(undefined, nan, prob_rest)
        lse = np.where(undefined, nan, lse)
    if coeff is not None:
        # loss_i = sum_k c_ik (-log p_ik): non-negative terms (classes with c = 0 skipped, as a
        # gather would), so the sum is accurate; gradient p * sum(c) - c, and at the argmax
        # -c_k s'/s + p_k (sum(c) - c_k), free of cancellation
        nll = (m[:, None] - z) + lse[:, None]
        zero = np.zeros((), dtype=prob.dtype)
        loss = np.where(coeff != 0, coeff * nll, zero).sum(axis=1)
        total = coeff.sum(axis=1)
        grad = prob * total[:, None] - coeff
        c_k = coeff[rows, k]
        grad[rows, k] = -c_k * prob_rest + prob[rows, k] * (total - c_k)
        return loss, grad, prob, prob_rest
    if y is None:
        loss = (m[:, None] - z) + lse[:, None]
        return loss, None, prob, prob_rest
    z_y = z[rows, y]
    loss = (m - z_y) + lse
    p_y = prob[rows, y]
    grad = prob.copy() if keep_prob else prob
    grad[rows, y] = np.where(z_y == m, -prob_rest, p_y - 1)
    return loss, grad, prob if keep_prob else p_y, prob_rest


def _split(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """binary128 -> (hi, lo) float64 with hi + lo = q to ~2**-106 relative (|q| >= 2**-968;
    below, lo underflows: see :func:`_scaled_low`)."""
    hi = q.astype(np.float64)
    finite = np.isfinite(hi)
    lo = np.where(finite, (q - np.where(finite, hi, 0).astype(q.dtype)).astype(np.float64), 0.0)
    return hi, lo


def _pow2(e: int, like: np.ndarray) -> np.ndarray:
    """2**e in ``like``'s dtype (binary128), as two float64 factors: 2**1100 has no float64."""
    half = e // 2
    one = np.ones((), dtype=np.float64)
    return np.ldexp(one, half).astype(like.dtype) * np.ldexp(one, e - half).astype(like.dtype)


def _scaled_low(q: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> ScaledLow | None:
    """The low parts of ``q`` (binary128) with an exponent where |q| < :data:`TINY_LOSS`:
    lo' = fl((q - hi) * 2**LOSS_EXP), exact scalings by a power of two in binary128 (its
    exponent reaches 2**-16382). None when no entry needs one."""
    tiny = np.isfinite(hi) & (np.abs(hi) < TINY_LOSS) & (q != 0)
    if not tiny.any():
        return None
    qt = q[tiny]
    scale = _pow2(LOSS_EXP, qt)
    lo_t = ((qt - hi[tiny].astype(q.dtype)) * scale).astype(np.float64)
    # below 2**-2174 even the scaled value underflows (hi = lo' = 0): beyond float64 on any
    # scale, such a loss keeps the ordinary pair (0, 0), as before
    keep = (hi[tiny] != 0) | (lo_t != 0)
    rows = np.flatnonzero(tiny)[keep]
    if not rows.size:
        return None
    lo_s = lo.copy()
    exp = np.zeros(hi.shape, dtype=np.int16)
    lo_s.flat[rows] = lo_t[keep]
    exp.flat[rows] = LOSS_EXP
    return ScaledLow(lo_s, exp)


def reference_block(
    x: np.ndarray,
    y: np.ndarray | None,
    working: Precision,
    coeff: np.ndarray | None = None,
    *,
    keep_prob: bool = True,
    row_argmax: np.ndarray | None = None,
    carrier: bool = False,
    variant: Variant | None = None,
) -> ReferenceOutput:
    """Reference loss and gradient of ``x`` (N, C), values already rounded to ``working``.

    ``y`` (N,) holds valid class indices (ignored rows must be replaced by any valid index by the
    caller), or is ``None`` for the label-free mode (loss (N, C) = -log p_k for every k).
    ``coeff`` (N, C), the loss options folded into coefficients (already rounded to the working
    dtype), replaces ``y``: loss_i = sum_k c_ik (-log p_ik).

    Two savings for a caller that needs less: ``keep_prob=False`` (with ``y``, without
    ``coeff``) returns as ``prob`` only the labels' probabilities (N,), the gradient taking the
    softmax's memory; ``row_argmax`` is each row's first argmax (``np.argmax`` of ``x``) if the
    caller has computed it already (float32 and narrower only). ``carrier=True`` says that
    ``x``, stored in a wider dtype (float32 for 16/8-bit types), holds values of ``working``.
    ``variant`` (its constants already rounded, see :class:`smcheck.prepare.Prepared`) selects
    a loss variant; the smoothing convention is already in ``coeff``.
    """
    if variant is not None and variant.changes_values:
        out = _variant_reference(x, y, working, coeff, variant)
        if keep_prob or y is None or coeff is not None:
            return out
        # the caller asked for the labels' probabilities only
        return replace(out, prob=out.prob[np.arange(out.prob.shape[0]), y])
    keep_prob = keep_prob or y is None or coeff is not None
    name = reference_precision_name(working)
    # NaN/+inf rows and all -inf rows give NaN by definition (inf - inf); that is not noise
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if working.mantissa_bits <= 24:
            z = np.asarray(x)
            if z.dtype not in (np.float32, np.float64):
                # every float16, bfloat16 and float8 value is a float32 value (exact), and
                # float32 reductions are fast where numpy's float16 and ml_dtypes' are not
                z = z.astype(np.float32)
            c64 = None if coeff is None else np.asarray(coeff).astype(np.float64)
            # float16 and float8 values span at most 2**16 / 2**-24: any difference of two of
            # them fits float64's 53 bits, so no row needs TwoSum
            span_bits = math.log2(working.max) - math.log2(working.smallest_subnormal) + 1
            twosum_rows = None
            if span_bits > 53:
                # values stored in the working dtype have its p bits; any other storage is
                # trusted for its own width only (float64: 53 bits, so every row is tested
                # inexact and gets TwoSum)
                same = carrier or np.asarray(x).dtype == working.dtype
                p = working.mantissa_bits if same else int(np.finfo(z.dtype).nmant) + 1
                twosum_rows = _inexact_shift_rows(z, p)
            loss, grad, prob, prob_rest = _core(z, y, twosum_rows, c64, keep_prob, row_argmax)
            return ReferenceOutput(loss, None, grad, None, prob, prob_rest, name)
        quad = quad_dtype()
        if quad is None:  # pragma: no cover
            raise RuntimeError("numpy-quaddtype is required for a float64 reference")
        zq = np.asarray(x).astype(np.float64).astype(quad)
        cq = None if coeff is None else np.asarray(coeff).astype(np.float64).astype(quad)
        loss_q, grad_q, prob_q, rest_q = _core(zq, y, coeff=cq, keep_prob=keep_prob)
        loss, loss_lo = _split(loss_q)
        loss_scaled = _scaled_low(loss_q, loss, loss_lo)
        if grad_q is None:
            grad = grad_lo = None
        else:
            grad, grad_lo = _split(grad_q)
        return ReferenceOutput(
            loss,
            loss_lo,
            grad,
            grad_lo,
            prob_q.astype(np.float64),
            rest_q.astype(np.float64),
            name,
            loss_scaled=loss_scaled,
        )


def _sech2(u: np.ndarray) -> np.ndarray:
    """1 - tanh(u)**2 = 4 e^{-2|u|} / (1 + e^{-2|u|})**2: no cancellation where tanh(u) rounds
    to +-1 (|u| > 40 in binary128), and no overflow (e^{-2|u|} <= 1); 0 at +-inf."""
    e = np.exp(-2 * np.abs(u))
    return 4 * e / ((1 + e) * (1 + e))


def _variant_core(
    zq: np.ndarray,
    y: np.ndarray | None,
    cq: np.ndarray | None,
    variant: Variant,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
    """Loss, gradient (w.r.t. the original logits), prob, prob_rest and the z-loss term of the
    variant, all in ``zq``'s dtype: binary128, or float64 (``cq`` the same; constants rounded
    by the caller; see :func:`variant_arithmetic` for when float64 is enough).

    s z is exact in binary128 (53 + 53 bits) and in float64 for values of <= 24 bits; u = s z / c
    and tanh(u) round once each, the rest as in :func:`_core` (with TwoSum shifts on every row in
    float64). The z-loss term lambda lse**2 uses lse = m + log1p(s') (s' = sum over j != argmax
    of exp(z_j - m)), and adds 2 lambda lse p_j to the gradient.
    """
    q = zq.dtype
    s = np.asarray(variant.logit_scale, dtype=np.float64).astype(q)
    z = zq * s if variant.logit_scale != 1.0 else zq
    chain: np.ndarray | None = None
    if variant.softcap is not None:
        c = np.asarray(variant.softcap, dtype=np.float64).astype(q)
        u = z / c
        z = c * np.tanh(u)
        chain = _sech2(u)
    twosum = np.arange(z.shape[0]) if z.dtype == np.float64 else None
    loss, grad, prob, prob_rest = _core(z, y, twosum, coeff=cq, keep_prob=True)
    zl = None
    if variant.z_loss != 0.0:
        lam = np.asarray(variant.z_loss, dtype=np.float64).astype(q)
        n = z.shape[0]
        rows = np.arange(n)
        k = z.argmax(axis=1)
        m = z[rows, k]
        e = np.exp(z - m[:, None])
        e[rows, k] = 0
        lse = m + np.log1p(e.sum(axis=1))
        zl = lam * lse * lse
        loss = loss + (zl if loss.ndim == 1 else zl[:, None])
        if grad is not None:
            grad = grad + (2 * lam * lse)[:, None] * prob
    if grad is not None:
        if chain is not None:
            grad = grad * chain
        if variant.logit_scale != 1.0:
            grad = grad * s
    return loss, grad, prob, prob_rest, zl


def _variant_reference(
    x: np.ndarray,
    y: np.ndarray | None,
    working: Precision,
    coeff: np.ndarray | None,
    variant: Variant,
) -> ReferenceOutput:
    """:func:`reference_block` for a variant that changes values, in the arithmetic
    :func:`variant_arithmetic` names; the low parts are returned for float64 work only."""
    name = reference_precision_name(working, variant)
    if name == FLOAT64_TWOSUM:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
            z64 = np.asarray(x).astype(np.float64)
            c64 = None if coeff is None else np.asarray(coeff).astype(np.float64)
            loss64, grad64, prob64, rest64, zl64 = _variant_core(z64, y, c64, variant)
        return ReferenceOutput(loss64, None, grad64, None, prob64, rest64, name, z_loss=zl64)
    quad = quad_dtype()
    if quad is None:  # pragma: no cover
        raise RuntimeError("numpy-quaddtype is required for a loss variant's reference")
    # NaN/+inf rows and all -inf rows give NaN by definition (inf - inf); that is not noise
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        zq = np.asarray(x).astype(np.float64).astype(quad)
        cq = None if coeff is None else np.asarray(coeff).astype(np.float64).astype(quad)
        loss_q, grad_q, prob_q, rest_q, zl_q = _variant_core(zq, y, cq, variant)
        wide = working.mantissa_bits > 24
        if wide:
            loss, loss_lo = _split(loss_q)
        else:
            loss, loss_lo = loss_q.astype(np.float64), None
        grad = grad_lo = None
        if grad_q is not None:
            if wide:
                grad, grad_lo = _split(grad_q)
            else:
                grad = grad_q.astype(np.float64)
        return ReferenceOutput(
            loss,
            loss_lo,
            grad,
            grad_lo,
            prob_q.astype(np.float64),
            rest_q.astype(np.float64),
            name,
            z_loss=None if zl_q is None else zl_q.astype(np.float64),
            loss_scaled=None if loss_lo is None else _scaled_low(loss_q, loss, loss_lo),
        )
