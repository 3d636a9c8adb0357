"""Gradient errors of several methods against one reference.

:func:`grad_errors_many` gives, per row and method, max |g - g*| and ||g - g*||_2 / ||g*||_2
(the same values as :func:`smcheck.metrics.grad_abs_err` and
:func:`smcheck.metrics.grad_rel_err`, bit for bit) and the rows whose gradient is not finite,
in one pass over the (N, C) differences instead of five per method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .accel import accelerator

__all__ = ["grad_errors", "grad_errors_many"]

#: Values per row block of :func:`grad_errors` (512 KiB of float64).
_ERR_BLOCK = 1 << 16


def grad_errors(
    grad: np.ndarray,
    ref: np.ndarray,
    ref_lo: np.ndarray | None = None,
    *,
    ref_norm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~smcheck.metrics.grad_abs_err` and :func:`~smcheck.metrics.grad_rel_err` in one
    pass over the (N, C) difference (the same values, bit for bit; tested), and the rows whose
    gradient is not finite. ``ref_norm`` (||g*||_2 per row) may be passed in when several
    methods share one reference (see :func:`grad_errors_many`)."""
    return grad_errors_many([grad], ref, ref_lo, ref_norm=ref_norm)[0]


def grad_errors_many(
    grads: Sequence[np.ndarray],
    ref: np.ndarray,
    ref_lo: np.ndarray | None = None,
    *,
    ref_norm: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`grad_errors` of several methods' gradients against one reference.

    The sums of squares and maxima come from :mod:`smcheck._accel` where it is built (one pass
    over each row for all methods), else from :func:`_numpy_sums` (row blocks of about 2**16
    values, so each difference's ~5 passes stay in the core's cache): the same values bit for
    bit either way, and for any block size.
    """
    ref = np.asarray(ref)
    n, c = ref.shape
    k = len(grads)
    sq = np.zeros((k, n))
    top = np.zeros((k, n))  # max_j d_j**2 per row
    ref_sq = np.zeros(n) if ref_norm is None else None
    if not _compiled_sums(grads, ref, ref_lo, ref_sq, sq, top):
        _numpy_sums(grads, ref, ref_lo, ref_sq, sq, top)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        gabs = _max_abs(top, grads, ref, ref_lo)
        den = np.sqrt(ref_sq) if ref_sq is not None else np.asarray(ref_norm)
        nums = np.sqrt(sq)
    # A non-finite entry of g or of the reference makes d non-finite there, and max() keeps NaN
    # and inf: only rows whose gabs is not finite can be bad, so only they are scanned again.
    # The reference's rows are scanned once for all methods.
    ref_bad = _nonfinite_rows(ref, np.asarray(~np.isfinite(gabs).all(axis=0)))
    out = []
    for m, g in enumerate(grads):
        bad = _nonfinite_rows(np.asarray(g), ~np.isfinite(gabs[m]))
        out.append(_finish_grad_errors(bad, ref_bad, gabs[m], nums[m], den))
    return out


def _compiled_sums(
    grads: Sequence[np.ndarray],
    ref: np.ndarray,
    ref_lo: np.ndarray | None,
    ref_sq: np.ndarray | None,
    sq: np.ndarray,
    top: np.ndarray,
) -> bool:
    """:func:`_numpy_sums` by :mod:`smcheck._accel` (one pass over memory for all methods, the
    same values bit for bit): True when it ran, False when the arrays are not what it takes
    (float32/float64 native C-contiguous gradients, float64 reference and low part) or it is
    not available."""
    n, c = ref.shape
    if n == 0 or c == 0 or not 1 <= len(grads) <= 32:
        return False
    mod = accelerator()
    if mod is None:
        return False
    f64, f32 = np.dtype(np.float64), np.dtype(np.float32)

    def takes(a: object, dtypes: tuple[np.dtype, ...]) -> bool:  # native, aligned, C order
        return (
            isinstance(a, np.ndarray)
            and a.shape == ref.shape
            and a.dtype in dtypes
            and a.flags.c_contiguous
            and a.flags.aligned
        )

    ok = takes(ref, (f64,)) and (ref_lo is None or takes(ref_lo, (f64,)))
    if not (ok and all(takes(g, (f32, f64)) for g in grads)):
        return False
    mod.grad_errors(list(grads), n, c, ref, ref_lo, ref_sq, sq, top)
    return True


def _numpy_sums(
    grads: Sequence[np.ndarray],
    ref: np.ndarray,
    ref_lo: np.ndarray | None,
    ref_sq: np.ndarray | None,
    sq: np.ndarray,
    top: np.ndarray,
) -> None:
    """Fill ``sq`` (sum of d**2 per method and row), ``top`` (max d**2) and ``ref_sq`` (sum of
    the reference's squares per row, when not None) with numpy: the reference implementation
    of :mod:`smcheck._accel`."""
    n, c = ref.shape
    k = len(grads)
    step = max(1, _ERR_BLOCK // max(c, 1))
    buf = np.empty((min(step, n), c))
    # Methods often agree to the last bit on a row (fused and log1p on ~90 % of rows whose label
    # is not the argmax): a row block equal to the previous method's takes its errors instead of
    # computing them. Compared block by block, while both are in the core's cache: a separate
    # comparison of the whole arrays would stream them from memory once more.
    compare = [False]
    for m in range(1, k):
        a, b = grads[m], grads[m - 1]
        eq = a.shape == b.shape and a.dtype == b.dtype
        with np.errstate(invalid="ignore"):
            # a look at a few rows first: methods that never agree (naive and shifted) are not
            # compared - a speed choice only, the errors are the same either way
            if eq and n > 8:
                eq = bool((a[:4] == b[:4]).all(axis=1).any())
        compare.append(eq)
    # inf - inf and NaN where the method's gradient is non-finite: those rows are set to inf
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        for i in range(0, n if c else 0, step):
            j = min(i + step, n)
            r = ref[i:j]
            if ref_sq is not None:
                d = np.multiply(r, r, out=buf[: j - i])
                np.add.reduce(d, axis=1, out=ref_sq[i:j])
            for m, g in enumerate(grads):
                gm = g[i:j]
                # NaN never compares equal: such rows are computed
                if compare[m] and (gm == grads[m - 1][i:j]).all():
                    sq[m, i:j], top[m, i:j] = sq[m - 1, i:j], top[m - 1, i:j]
                    continue
                d = np.subtract(gm, r, dtype=np.float64, out=buf[: j - i])  # one rounding
                if ref_lo is not None:
                    d -= ref_lo[i:j]
                # the squares serve both measures: max |d| is read off max d**2 below
                np.multiply(d, d, out=d)
                np.add.reduce(d, axis=1, out=sq[m, i:j])
                np.maximum.reduce(d, axis=1, out=top[m, i:j])  # NaN propagates


#: Where sqrt(max d**2) is max |d| exactly: fl(d**2) is normal and finite (see :func:`_max_abs`).
_SQ_SAFE = (2.0**-1000, float.fromhex("0x1.fffffffffffffp+1023"))


def _max_abs(
    top: np.ndarray, grads: Sequence[np.ndarray], ref: np.ndarray, ref_lo: np.ndarray | None
) -> np.ndarray:
    """max_j |d_j| per method and row from ``top`` = max_j fl(d_j**2), bit for bit.

    In binary floating point with round-to-nearest, sqrt(fl(x**2)) = |x| whenever fl(x**2) is
    normal and finite (radix 2: the square's rounding error is too small to move the root off
    |x|; checked exhaustively over float32's [1, 4) and on 4e8 float64 values in the tests).
    fl(x**2) grows with |x|, so max_j fl(d_j**2) = fl((max_j |d_j|)**2) and its root is max |d|:
    one pass over the squares, which the sum of squares needs anyway, replaces a max and a min
    pass over d. NaN stays NaN. Rows outside that range (all |d| below 2**-500: the square
    underflows; an |d| above 2**512 or inf: it overflows) take max |d| from d itself.
    """
    lo_safe, hi_safe = _SQ_SAFE
    gabs = np.sqrt(top)
    if ref.shape[1] == 0:
        return np.zeros_like(top)
    with np.errstate(invalid="ignore"):
        redo = (top < lo_safe) | (top > hi_safe)
    for m in np.flatnonzero(redo.any(axis=1)).tolist():
        rows = np.flatnonzero(redo[m])
        d = np.subtract(grads[m][rows], ref[rows], dtype=np.float64)
        if ref_lo is not None:
            d -= ref_lo[rows]
        # NaN propagates through max and min; an inf of either sign gives inf; -0.0 -> 0.0
        gabs[m, rows] = np.maximum(d.max(axis=1), -d.min(axis=1)) + 0.0
    return gabs


def _nonfinite_rows(a: np.ndarray, maybe: np.ndarray) -> np.ndarray:
    """Rows of ``a`` (among the ``maybe`` ones) holding a NaN or an inf: a row's max is NaN
    or +inf, or its min -inf, exactly then - two read-only passes, no boolean temporaries."""
    bad = np.zeros(a.shape[0], bool)
    if not maybe.any() or a.shape[1] == 0:
        return bad
    sub = a if np.count_nonzero(maybe) * 4 > a.shape[0] else a[maybe]  # a copy only if few
    with np.errstate(invalid="ignore"):
        hit = ~(np.isfinite(sub.max(axis=1)) & np.isfinite(sub.min(axis=1)))
    if sub is a:
        return hit & maybe
    bad[maybe] = hit
    return bad


def _finish_grad_errors(
    bad: np.ndarray, ref_bad: np.ndarray, gabs: np.ndarray, num: np.ndarray, den: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mark non-finite rows and divide the norms (see :func:`grad_errors`)."""
    gabs = np.where(bad, np.inf, gabs)
    num = np.where(bad, np.inf, num)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 0.0, np.inf))
    return np.where(ref_bad, np.nan, gabs), np.where(ref_bad, np.nan, rel), bad
