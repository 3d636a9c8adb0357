"""Per-row overflow diagnosis: which intermediate of a method's definition overflowed first.

Beside :mod:`smcheck.methods`: for the rows a method flags as overflowed, the intermediates of
its definition (shift, exp, sum of exps, the chained backward's -1/p_y) are recomputed in their
own dtypes, or read off the shared :class:`~smcheck.methods.ShiftedSoftmax`, and the first one
that overflowed names the cause. :func:`underflow_margin` is the matching threshold for
underflow: the margin past which every non-maximal probability rounds to 0.
"""

from __future__ import annotations

import math

import numpy as np

from .methods import ShiftedSoftmax
from .precisions import Precision, accumulate, round_in, to_carrier

__all__ = ["OVERFLOW_CAUSES", "overflow_causes", "underflow_margin"]


def underflow_margin(working: Precision) -> float:
    """The margin beyond which exp(-margin) rounds to 0 in ``working``: -ln(smallest subnormal / 2).

    Round to nearest sends a value to 0 only below half the smallest subnormal (exactly half
    ties to the even 0; exp of a nonzero rational is never exactly that), so p = exp(d) / s
    with s >= 1 is 0 once d < ln(smallest subnormal) - ln 2: 17.33 in float16, 103.97 in float32.

    >>> from smcheck.precisions import get_precision
    >>> round(underflow_margin(get_precision("float16")), 2)
    17.33
    """
    return math.log(2.0) - working.ln_smallest_subnormal


#: What overflowed first in a row a method flags: z - max(z) (only a dtype without inf shows it:
#: NaN), exp(z) (naive's unshifted exp), the sum of exps in the accumulation dtype, the chained
#: backward's -1/p_y, or something else (none of these reproduced).
OVERFLOW_CAUSES = ("shift", "exp", "sum", "grad", "other")


def _over(a: np.ndarray, prec: Precision) -> np.ndarray:
    """Elementwise overflow: inf, or NaN in a dtype without inf (how it overflows there)."""
    return np.isinf(a) if prec.has_inf else np.isnan(a)


def overflow_causes(
    name: str,
    x: np.ndarray,
    labels: np.ndarray | None,
    flagged: np.ndarray,
    working: Precision,
    accum: Precision,
    shared: ShiftedSoftmax | None = None,
) -> np.ndarray:
    """Per row, the index in :data:`OVERFLOW_CAUSES` of what overflowed first; -1 if not flagged.

    Recomputes, on the ``flagged`` rows of ``x`` (already in the working dtype T) only, the
    intermediates of the method's definition in their own dtypes: d = z - max(z) (T; the
    unshifted naive has none), exp (T), the sum of exps (accumulation dtype A; log1p's is
    1 + the sum without the argmax term) and, for the chained methods (naive, shifted), the
    label's -1/p_y (T) with p = exp / sum (division in A, rounded to T). Frameworks' methods and
    the online method's running sum are not recomputed: their rows fall back to "sum" when the
    plain sum overflows, else "other". ``shared``, the :func:`~smcheck.methods.shifted_softmax`
    of ``x`` the methods used, saves recomputing it for shifted and fused.
    """
    t, a = working, accum
    code = np.full(x.shape[0], -1, np.int8)
    rows = np.flatnonzero(flagged)
    if rows.size == 0:
        return code
    if shared is not None and name in ("shifted", "fused"):
        code[rows] = _shared_causes(name, shared, labels, rows, working, accum)
        return code
    z = x[rows]
    found = np.zeros(rows.size, bool)
    cause = np.full(rows.size, OVERFLOW_CAUSES.index("other"), np.int8)

    def mark(hit: np.ndarray | np.bool_, what: str) -> None:
        new = np.asarray(hit) & ~found
        cause[new] = OVERFLOW_CAUSES.index(what)
        found[:] |= new

    # overflow is what is being diagnosed here: inf/NaN intermediates are expected
    z = to_carrier(z, t)  # every step rounded to T, in T's carrier, as the methods compute
    with np.errstate(all="ignore"):
        # exp, subtraction and rounding are monotone: a row's largest exp(z) is exp(max z), its
        # most negative shift min z - max z. Rows settled by these are not recomputed in full.
        zmax = z.max(axis=1)
        if name == "naive":
            mark(_over(round_in(np.exp(zmax), t), t), "exp")
        elif not t.has_inf:  # with inf, a shift to -inf only makes exp exactly 0
            mark(_over(round_in(z.min(axis=1) - zmax, t), t), "shift")
        if found.all():
            code[rows] = cause
            return code
        todo = np.flatnonzero(~found)
        z, zmax = z[todo], zmax[todo]
        if name == "naive":
            e = round_in(np.exp(z), t)
        else:
            d = round_in(z - zmax[:, None], t)
            e = round_in(np.exp(d), t)
        hit = np.zeros(rows.size, bool)

        def mark_todo(h: np.ndarray | np.bool_, what: str) -> None:
            hit[:] = False
            hit[todo] = h
            mark(hit, what)

        mark_todo(_over(e, t).any(axis=1), "exp")
        if name == "log1p":
            rest = e.copy()
            rest[np.arange(todo.size), np.argmax(z, axis=1)] = 0
            s = accumulate(rest, a) + a.dtype.type(1.0)
        else:
            s = accumulate(e, a)
        mark_todo(_over(s, a), "sum")
        if name in ("naive", "shifted") and labels is not None:
            p_y = round_in(e[np.arange(todo.size), labels[rows[todo]]].astype(s.dtype) / s, t)
            g_y = round_in(np.divide(p_y.dtype.type(-1.0), p_y), t)
            mark_todo(_over(g_y, t) & (p_y != 0) & np.isfinite(p_y), "grad")
    code[rows] = cause
    return code


def _shared_causes(
    name: str,
    sm: ShiftedSoftmax,
    labels: np.ndarray | None,
    rows: np.ndarray,
    working: Precision,
    accum: Precision,
) -> np.ndarray:
    """:func:`overflow_causes` of shifted or fused on ``rows``, read off the intermediates they
    computed: the shift d (T), exp(d) (T, at most 1: it cannot overflow), their sum (A) and,
    for shifted, the label's -1/p_y (T)."""
    t, a = working, accum
    cause = np.full(rows.size, OVERFLOW_CAUSES.index("other"), np.int8)
    found = np.zeros(rows.size, bool)

    def mark(hit: np.ndarray, what: str) -> None:
        new = hit & ~found
        cause[new] = OVERFLOW_CAUSES.index(what)
        found[:] |= new

    # overflow is what is being diagnosed here: inf/NaN intermediates are expected
    with np.errstate(all="ignore"):
        if not t.has_inf:  # with inf, a shift to -inf only makes exp exactly 0
            mark(_over(sm.d[rows].min(axis=1), t), "shift")  # NaN propagates through min
        s = sm.s[rows]
        mark(_over(s, a), "sum")
        if name == "shifted" and labels is not None:
            p_y = round_in(sm.e_a[rows, labels[rows]].astype(s.dtype) / s, t)
            g_y = round_in(np.divide(p_y.dtype.type(-1.0), p_y), t)
            mark(_over(g_y, t) & (p_y != 0) & np.isfinite(p_y), "grad")
    return cause
