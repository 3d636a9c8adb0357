"""The softmax cross-entropy formulations, each computed in the working precision.

Precision rule, the same for every method (T = working dtype, A = accumulation dtype):

* every elementwise operation takes T operands and its result is rounded to T (``exp``, ``-``,
  ``*``, ``log``...; numpy/ml_dtypes evaluate 16/8-bit ops in float32 and round once, which is
  correctly rounded for +, -, *, / since float32 has more than 2p + 2 bits);
* a sum over classes accumulates in A (:func:`smcheck.precisions.accumulate`, a pairwise tree
  with every partial sum rounded to A), and its result stays in A for the one operation that
  consumes it (the division of a softmax, the ``log`` of a log-sum-exp), whose result is then
  rounded to T - what a fused GPU softmax kernel does with its float32 accumulator.

Each method takes ``x`` (N, C) already rounded to T and labels ``y`` (N,) (or ``None`` for the
label-free mode, where every class is a label and the loss is the whole row ``-log p_k``) and
returns a :class:`MethodOutput`. Flags are per row:

* ``overflow`` - an intermediate became +-inf although the row's input is finite;
* ``underflow`` - the method's probability of the true class is exactly 0 (for finite input the
  exact one is always positive).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .precisions import Precision, accumulate, from_carrier, round_in, to_carrier
from .variants import Variant

__all__ = [
    "METHODS",
    "DEFAULT_METHODS",
    "SHARED_SOFTMAX_METHODS",
    "LossTargets",
    "MethodOutput",
    "MethodFn",
    "ShiftedSoftmax",
    "run_variant",
    "shifted_softmax",
]

#: Block width (classes) of the ``online`` method: one block is what a GPU thread block loads.
ONLINE_BLOCK = 128


@dataclass(frozen=True)
class MethodOutput:
    """Raw output of one method on one block of rows (arrays in the working dtype)."""

    loss: np.ndarray  # (N,) or (N, C) label-free
    grad: np.ndarray | None  # (N, C); None label-free
    overflow: np.ndarray  # (N,) bool
    underflow: np.ndarray  # (N,) bool, or (N, C) label-free
    z_loss: np.ndarray | None = None  # (N,) the z-loss term alone (in ``loss``); None without


MethodFn = Callable[..., MethodOutput]  # (x, y, working, accum, targets=None) -> MethodOutput


def _rows(n: int) -> np.ndarray:
    return np.arange(n)


def _overflow_rows(*checks: tuple[np.ndarray, Precision]) -> np.ndarray:
    """Rows (axis 0) where an intermediate overflowed: holds +-inf - or, in a dtype without inf
    (float8_e4m3fn), NaN, which is how it overflows. Each array is checked in its own dtype,
    by a max/min reduction per row (no N x C temporaries). Callers keep only rows with finite
    input, where these intermediates can become non-finite by overflow alone."""
    out: np.ndarray | None = None
    for a, prec in checks:
        if a.ndim == 1:
            hi = lo = a
        else:
            hi, lo = a.max(axis=1), a.min(axis=1)  # NaN propagates through max/min
        r = (np.isinf(hi) | np.isinf(lo)) if prec.has_inf else np.isnan(hi)
        out = r if out is None else out | r
    assert out is not None
    return out


def _shift_check(d: np.ndarray, t: Precision) -> tuple[tuple[np.ndarray, Precision], ...]:
    """Which shifted logits d = z - m to check for overflow.

    In a dtype with inf, a shift that overflows is -inf, and exp(-inf) = 0 is exp's exact limit;
    if the label sits there its loss exceeds the dtype's range anyway (|d_y| > max), so inf is
    the correctly rounded loss. That overflow changes no result and is not counted. Without inf
    (float8_e4m3fn) the overflow is NaN and poisons the row: counted.
    """
    return () if t.has_inf else ((d, t),)


def _overflowed(a: np.ndarray, prec: Precision) -> np.ndarray:
    """Elementwise: inf, or NaN in a dtype without inf (its overflow)."""
    return np.isinf(a) if prec.has_inf else np.isnan(a)


def _output(out: MethodOutput, t: Precision, carrier: bool) -> MethodOutput:
    """The method's loss and gradient in the working dtype - or left in its carrier (float32
    for 16/8-bit types; the same numbers) when the caller asked for ``carrier=True``."""
    if carrier:
        return out
    grad = None if out.grad is None else from_carrier(out.grad, t)
    zl = None if out.z_loss is None else from_carrier(out.z_loss, t)
    return MethodOutput(from_carrier(out.loss, t), grad, out.overflow, out.underflow, zl)


def _mul(p: np.ndarray, q: np.ndarray, t: Precision, unit: bool = False) -> np.ndarray:
    """p * q rounded to T (in T's carrier: the product of two 16/8-bit values is exact in
    float32, then rounded once). ``unit``: the caller knows p * q is in [0, 2] or NaN."""
    return round_in(p * q, t, unit=unit, overwrite=True)


def _softmax_div(e: np.ndarray, s: np.ndarray, t: Precision) -> np.ndarray:
    """p = e / s: the division runs in the accumulation dtype of ``s``, the result rounded to T."""
    q = np.divide(e.astype(s.dtype, copy=False), s[:, None])
    return round_in(q, t, unit=True, overwrite=True)  # 0 <= e <= s: p <= 1


def _chained_backward(
    p: np.ndarray, y: np.ndarray, t: Precision, a: Precision, suspect: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Backward through two separate layers (the seed article's "separate layers").

    The log-loss layer sends g = dL/dp with g_y = -1/p_y (T) and 0 elsewhere; the softmax layer
    returns p * (g - <p, g>), with <p, g> accumulated in A. Once p_y underflows to 0, g_y = -inf
    and p_y * g_y = 0 * inf = NaN: the whole gradient row becomes NaN.
    ``suspect`` (optional) lists the only rows where some p_j can be NaN or inf: p = e / s with
    0 <= e_j <= s (a rounded sum of non-negative terms is at least each term) is finite unless
    s is 0, inf or NaN. Returns (grad, g_y).
    """
    n = p.shape[0]
    rows = _rows(n)
    p_y = p[rows, y]
    g_y = round_in(np.divide(p.dtype.type(-1.0), p_y), t)  # -1/p_y, rounded to T
    # <p, g> accumulated in A over a g that is zero off the label: a sum of one product (T) and
    # exact zeros is that product exactly, unless some other p_j is NaN/inf (0 * inf = NaN).
    # Computed that way here - the same bits as the full reduction, without its C-wide passes.
    dot = _mul(p_y, g_y, t).astype(a.dtype)
    if suspect is None:
        other_bad = ~np.isfinite(p).all(axis=1) & np.isfinite(p_y)
    else:
        other_bad = np.zeros(n, bool)
        other_bad[suspect] = ~np.isfinite(p[suspect]).all(axis=1) & np.isfinite(p_y[suspect])
    dot = np.where(other_bad, a.dtype.type(np.nan), dot)
    # g - <p, g> rounded to T: -<p, g> off the label (exact: dot holds a T value or NaN/inf)
    off = round_in(-dot, t)
    # p in [0, 1] and off = -<p, g> = 1 up to rounding, or NaN/inf once something overflowed:
    # products in [0, 2] or non-finite (the fast rounding's promise) unless off is off the rails
    with np.errstate(invalid="ignore"):
        unit = bool(np.all(((off >= 0) & (off <= 2)) | ~np.isfinite(off)))
    grad = _mul(p, off[:, None], t, unit)
    grad[rows, y] = _mul(p_y, round_in(g_y.astype(a.dtype) - dot, t), t)
    return grad, g_y


@dataclass(frozen=True)
class LossTargets:
    """PyTorch's loss options folded into per-class coefficients (see ``core.loss_coefficients``).

    loss_i = sum_k c_ik (-log p_ik) over the classes with c_ik != 0 (a gather: a class with a
    zero coefficient contributes nothing, even where -log p is inf); the gradient is
    p_ij sum_k c_ik - c_ij. ``coeff`` is in the working dtype.
    """

    coeff: np.ndarray
    weight: np.ndarray | None = None
    label_smoothing: float = 0.0
    soft: np.ndarray | None = None
    labels: np.ndarray | None = None


def _weighted_loss(nll: np.ndarray, coeff: np.ndarray, t: Precision, a: Precision) -> np.ndarray:
    """sum_k c_k nll_k: products rounded to T, summed in A, the sum rounded to T."""
    terms = np.where(coeff != 0, _mul(coeff, nll, t), nll.dtype.type(0.0))
    return round_in(accumulate(terms, a), t)


def _weighted_fused(
    nll: np.ndarray,
    p: np.ndarray,
    targets: LossTargets,
    t: Precision,
    a: Precision,
    forward_inf: np.ndarray,
    argmax_fix: tuple[np.ndarray, np.ndarray] | None = None,
) -> MethodOutput:
    """Loss and gradient p * sum(c) - c of the fused family with coefficients.

    ``argmax_fix`` = (k, s'/s in A) makes the argmax entry -c_k s'/s + p_k (sum(c) - c_k),
    free of the cancellation in p_k sum(c) - c_k (the log1p method).
    """
    c = to_carrier(targets.coeff, t)
    loss = _weighted_loss(nll, c, t, a)
    total = accumulate(c, a)  # sum_k c_k in A
    grad = round_in(round_in(p.astype(a.dtype) * total[:, None], t) - c, t)
    if argmax_fix is not None:
        k, rest_ratio = argmax_fix
        rows = _rows(p.shape[0])
        c_k = c[rows, k].astype(a.dtype)
        p_k = p[rows, k].astype(a.dtype)
        grad[rows, k] = round_in(-c_k * rest_ratio + p_k * (total - c_k), t)
    return MethodOutput(loss, grad, forward_inf, ((p == 0) & (c != 0)).any(axis=1))


def _weighted_chained(
    p: np.ndarray, targets: LossTargets, t: Precision, a: Precision, forward_inf: np.ndarray
) -> MethodOutput:
    """Separate layers with coefficients: loss = sum c_k (-log p_k); the log-loss layer sends
    g_k = -c_k / p_k (T, only where c_k != 0) and the softmax layer returns p (g - <p, g>)."""
    c = to_carrier(targets.coeff, t)
    loss = _weighted_loss(round_in(-np.log(p), t, overwrite=True), c, t, a)
    g = np.where(c != 0, round_in(np.divide(-c, p), t, overwrite=True), p.dtype.type(0.0))
    dot = accumulate(_mul(p, g, t), a)
    diff = round_in(g.astype(a.dtype) - dot[:, None], t)
    overflow = forward_inf | (_overflowed(g, t) & (p != 0) & np.isfinite(p)).any(axis=1)
    return MethodOutput(loss, _mul(p, diff, t), overflow, ((p == 0) & (c != 0)).any(axis=1))


@dataclass(frozen=True)
class ShiftedSoftmax:
    """The max-shifted softmax steps that :func:`shifted`, :func:`fused` and :func:`log1p` all
    take, in the same precisions: computed once by :func:`shifted_softmax` and passed to each
    (``shared=``), so a report running the three pays for them once. The results are the same
    bits as each method computing them itself (tested).

    ``p`` is exp(d) / sum, as :func:`shifted` and :func:`fused` use it (:func:`log1p` divides by
    its own 1 + s'). ``shift_exp_inf`` flags rows whose shift or exp overflowed.
    """

    m: np.ndarray  # (N,) row max, T
    d: np.ndarray  # (N, C) z - m, T
    e_a: np.ndarray  # (N, C) exp(d) in T, held in A (exact)
    s: np.ndarray  # (N,) sum of exp(d), accumulated in A
    p: np.ndarray  # (N, C) e_a / s in A, rounded to T
    shift_exp_inf: np.ndarray  # (N,) bool
    k: np.ndarray | None = None  # (N,) first argmax of z, when the caller knew it


def shifted_softmax(
    x: np.ndarray, t: Precision, a: Precision, argmax: np.ndarray | None = None
) -> ShiftedSoftmax:
    """d = z - max(z) (T), exp(d) (T), their sum (A) and p = exp(d) / sum (A -> T).

    ``argmax``: each row's first argmax (``np.argmax(x, axis=1)``), if the caller has it - the
    max is then read there instead of reduced again, and :func:`log1p` reuses it."""
    # exp(-inf) = 0 for masked logits is intended; inf appears only from overflowing shifts
    x = to_carrier(x, t)
    with np.errstate(all="ignore"):
        # x at its first argmax is the max (NaN on a row with NaN, as np.max gives)
        m = x.max(axis=1) if argmax is None else x[np.arange(x.shape[0]), argmax]
        d = round_in(x - m[:, None], t, overwrite=True)
        e = round_in(np.exp(d), t, unit=True, overwrite=True)  # d <= 0
        e_a = e.astype(a.dtype, copy=False)  # the terms in A: exact, shared by sum and division
        s = accumulate(e_a, a)
        p = _softmax_div(e_a, s, t)
        # exp(d) of a shift d <= 0 is at most 1: only the shift itself can overflow (a NaN in a
        # dtype without inf; with inf, see _shift_check). Rows with +inf or NaN input have a
        # NaN shift and are not measured.
        checks = _shift_check(d, t)
        inf_rows = _overflow_rows(*checks) if checks else np.zeros(x.shape[0], bool)
    return ShiftedSoftmax(m, d, e_a, s, p, inf_rows, argmax)


def _shared_or_new(
    shared: ShiftedSoftmax | None, x: np.ndarray, t: Precision, a: Precision
) -> ShiftedSoftmax:
    return shifted_softmax(x, t, a) if shared is None else shared


def naive(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    carrier: bool = False,
) -> MethodOutput:
    """Unshifted softmax, then a separate log-loss layer; gradient chained through both.

    p = exp(z) / sum(exp(z)) (exp in T, sum in A, division in A rounded to T);
    loss = -log(p_y) (T); gradient as in :func:`_chained_backward`.
    exp(z) overflows as soon as some z > ln(max) of T (11.09 in float16), and then p = inf/inf
    = NaN. The seed's example z = [1000, 1] breaks it even in float64:

    >>> import numpy as np
    >>> from smcheck.precisions import get_precision
    >>> f64 = get_precision("float64")
    >>> out = naive(np.array([[1000.0, 1.0]]), np.array([0]), f64, f64)
    >>> out.loss.tolist(), bool(out.overflow[0])
    ([nan], True)
    """
    # overflow and 0*inf below are the findings this tool counts, not noise
    x = to_carrier(x, t)
    with np.errstate(all="ignore"):
        e = round_in(np.exp(x), t, nonneg=True, overwrite=True)  # exp >= 0, may overflow
        e_a = e.astype(a.dtype, copy=False)  # the terms in A: exact, shared by sum and division
        s = accumulate(e_a, a)
        p = _softmax_div(e_a, s, t)
        # the terms are >= 0: the sum is inf once a term overflowed to inf (or NaN, once one
        # overflowed to NaN in float8_e4m3fn) or once the sum itself overflowed
        forward_inf = ~np.isfinite(s)
        # every exp(z) underflowed: s = 0 and p = 0/0 = NaN - an underflow, not an overflow
        sum_under = s == 0
        if targets is not None:
            out = _weighted_chained(p, targets, t, a, forward_inf)
            out = MethodOutput(out.loss, out.grad, out.overflow, out.underflow | sum_under)
            return _output(out, t, carrier)
        if y is None:
            loss = round_in(-np.log(p), t, overwrite=True)
            out = MethodOutput(loss, None, forward_inf, (p == 0) | sum_under[:, None])
            return _output(out, t, carrier)
        rows = _rows(x.shape[0])
        p_y = p[rows, y]
        loss = round_in(-np.log(p_y), t)
        grad, g_y = _chained_backward(p, y, t, a, ~np.isfinite(s) | sum_under)
    overflow = forward_inf | (_overflowed(g_y, t) & (p_y != 0) & np.isfinite(p_y))
    return _output(MethodOutput(loss, grad, overflow, (p_y == 0) | sum_under), t, carrier)


def shifted(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    shared: ShiftedSoftmax | None = None,
    carrier: bool = False,
) -> MethodOutput:
    """Max-shifted (stable) softmax, then a separate log-loss layer; chained gradient.

    d = z - max(z) (T); p = exp(d) / sum(exp(d)) (exp in T, sum in A, division in A -> T);
    loss = -log(p_y) (T). The shift removes the overflow, but when p_y underflows to 0 the loss
    is +inf and the chained gradient is NaN - the seed's [0, -800, 1], label 1:

    >>> import numpy as np
    >>> from smcheck.precisions import get_precision
    >>> f64 = get_precision("float64")
    >>> out = shifted(np.array([[0.0, -800.0, 1.0]]), np.array([1]), f64, f64)
    >>> out.loss.tolist(), bool(np.isnan(out.grad).all()), bool(out.underflow[0])
    ([inf], True, True)
    """
    sm = _shared_or_new(shared, x, t, a)
    p = sm.p
    forward_inf = sm.shift_exp_inf | _overflow_rows((sm.s, a))
    # underflow of p_y, log(0) and 0*inf are findings, not noise
    with np.errstate(all="ignore"):
        if targets is not None:
            return _output(_weighted_chained(p, targets, t, a, forward_inf), t, carrier)
        if y is None:
            out = MethodOutput(round_in(-np.log(p), t, overwrite=True), None, forward_inf, p == 0)
            return _output(out, t, carrier)
        rows = _rows(x.shape[0])
        p_y = p[rows, y]
        loss = round_in(-np.log(p_y), t)
        grad, g_y = _chained_backward(p, y, t, a, ~np.isfinite(sm.s) | (sm.s == 0))
    overflow = forward_inf | (_overflowed(g_y, t) & (p_y != 0) & np.isfinite(p_y))
    return _output(MethodOutput(loss, grad, overflow, p_y == 0), t, carrier)


def fused(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    shared: ShiftedSoftmax | None = None,
    carrier: bool = False,
) -> MethodOutput:
    """Fused softmax-loss (what frameworks do): loss = log(sum(exp(z - m))) - (z_y - m).

    d = z - m (T); s = sum(exp(d)) (exp in T, sum in A); lse = log(s) (in A, rounded to T);
    loss = lse - d_y (T); grad = p - onehot(y) with p = exp(d) / s (division in A -> T) and
    the label entry p_y - 1 (T). Finite on finite input, but a confident row's loss rounds to
    exactly 0 once s rounds to 1 (margin >= 17 in float32, 40 in float64):

    >>> import numpy as np
    >>> from smcheck.precisions import get_precision
    >>> f64 = get_precision("float64")
    >>> fused(np.array([[0.0, -800.0, 1.0]]), np.array([1]), f64, f64).loss.tolist()
    [801.3132616875182]
    >>> fused(np.array([[40.0, 0.0]]), np.array([0]), f64, f64).loss.tolist()
    [0.0]
    """
    sm = _shared_or_new(shared, x, t, a)
    d, p = sm.d, sm.p
    forward_inf = sm.shift_exp_inf | _overflow_rows((sm.s, a))
    # log(inf) of an overflowed sum is a finding (flagged above), not noise
    with np.errstate(all="ignore"):
        lse = round_in(np.log(sm.s), t)
        if targets is not None or y is None:  # -log p_k of every class
            nll = round_in(lse[:, None] - d, t, overwrite=True)
            if targets is not None:
                out = _weighted_fused(nll, p, targets, t, a, forward_inf)
                return _output(out, t, carrier)
            return _output(MethodOutput(nll, None, forward_inf, p == 0), t, carrier)
        rows = _rows(x.shape[0])
        loss = round_in(lse - d[rows, y], t)
        grad = p.copy()
        grad[rows, y] = round_in(p[rows, y] - p.dtype.type(1.0), t)
    return _output(MethodOutput(loss, grad, forward_inf, p[rows, y] == 0), t, carrier)


def log1p(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    shared: ShiftedSoftmax | None = None,
    carrier: bool = False,
) -> MethodOutput:
    """Fused loss in log1p form (Blanchard, Higham & Higham 2021; scipy's logsumexp >= 1.15).

    With k = argmax(z) and s' = sum_{j != k} exp(z_j - m) (exp in T, sum in A):
    loss = log1p(s') - (z_y - m) (log1p in A rounded to T, then T). The gradient is p - onehot(y)
    with p = exp(d) / (1 + s') (A -> T), except that when y is at the max its entry is
    -sum_{j != y} p_j, evaluated as -s' / (1 + s') in A: no cancellation in 1 - p_y. A confident
    row keeps its tiny loss where :func:`fused` rounds it to 0:

    >>> import numpy as np
    >>> from smcheck.precisions import get_precision
    >>> f64 = get_precision("float64")
    >>> float(log1p(np.array([[40.0, 0.0]]), np.array([0]), f64, f64).loss[0])
    4.248354255291589e-18
    """
    # exp(-inf) = 0 for masked logits is intended; inf appears only from overflowing shifts
    with np.errstate(all="ignore"):
        n = x.shape[0]
        rows = _rows(n)
        sm = _shared_or_new(shared, x, t, a)
        d, e_a = sm.d, sm.e_a
        # the first argmax of z itself: in a type without inf an overflowing shift is NaN, where
        # d's argmax would stop
        k = to_carrier(x, t).argmax(axis=1) if sm.k is None else sm.k
        # exp(z_k - m) = 1 is the "1" of log1p: left out of the sum, then put back (e_a may be
        # shared with other methods; this saves copying it)
        e_k = e_a[rows, k]
        e_a[rows, k] = 0
        try:
            s_rest = accumulate(e_a, a)
        finally:
            e_a[rows, k] = e_k
        s = s_rest + a.dtype.type(1.0)  # in A
        lse = round_in(np.log1p(s_rest), t)
        p = _softmax_div(e_a, s, t)
        forward_inf = sm.shift_exp_inf | _overflow_rows((s, a))
        if targets is not None:
            fix = (k, s_rest / s)
            nll = round_in(lse[:, None] - d, t, overwrite=True)
            return _output(_weighted_fused(nll, p, targets, t, a, forward_inf, fix), t, carrier)
        if y is None:
            nll = round_in(lse[:, None] - d, t, overwrite=True)
            out = MethodOutput(nll, None, forward_inf, p == 0)
            return _output(out, t, carrier)
        d_y = d[rows, y]
        loss = round_in(lse - d_y, t)
        p_y = p[rows, y]
        at_max = d_y == 0  # ties: exp(z_k - m) = exp(z_y - m) = 1, so s' is also sum_{j != y}
        label_entry = np.where(
            at_max, round_in(-(s_rest / s), t), round_in(p_y - p.dtype.type(1.0), t)
        )
        grad = p  # this method's own p: the gradient takes it over
        grad[rows, y] = label_entry
    return _output(MethodOutput(loss, grad, forward_inf, p_y == 0), t, carrier)


def online(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    carrier: bool = False,
) -> MethodOutput:
    """One pass with a running max and a rescaled running sum (Milakov & Gimelshein 2018).

    Classes are read in blocks of ``ONLINE_BLOCK``; for each block b with max m_b (T):
    m' = max(m, m_b); s = s * exp(m - m') + sum_b exp(z - m') (differences and exp in T, the
    running sum and its rescaling in A). An all -inf prefix keeps s = 0 instead of computing
    exp(-inf - -inf) = NaN. Then loss = log(s) - (z_y - m) and grad = exp(z - m) / s - onehot(y)
    as in :func:`fused` (a second pass, as the backward kernel does).

    >>> import numpy as np
    >>> from smcheck.precisions import get_precision
    >>> f32 = get_precision("float32")
    >>> z = np.array([[-np.inf] * 200 + [0.0, 1.0]], dtype=np.float32)
    >>> float(online(z, np.array([201]), f32, f32).loss[0])  # log(1 + e^-1)
    0.31326165795326233
    """
    x = to_carrier(x, t)
    n, c = x.shape
    one_t = x.dtype.type(1.0)
    s = np.zeros(n, dtype=a.dtype)
    seen_inf = np.zeros(n, dtype=bool)
    # overflowing shifts are findings; -inf - -inf is guarded explicitly below; NaN input rows
    # make max() complain, and they are input findings
    with np.errstate(all="ignore"):
        # the running max starts at the first block's max (float8_e4m3fn has no -inf)
        m = x[:, :ONLINE_BLOCK].max(axis=1)
        for start in range(0, c, ONLINE_BLOCK):
            block = x[:, start : start + ONLINE_BLOCK]
            m_new = np.maximum(m, block.max(axis=1))
            live = m_new != -np.inf  # still all -inf so far: nothing to add, nothing to rescale
            same = m == m_new
            # m == m_new: exp(0) = 1 exactly
            scale = np.where(same, one_t, round_in(np.exp(round_in(m - m_new, t)), t))
            db = round_in(block - m_new[:, None], t, overwrite=True)
            eb = round_in(np.exp(db), t, unit=True, overwrite=True)  # db <= 0
            eb = np.where(live[:, None], eb, x.dtype.type(0.0))
            s = np.where(live, s * scale.astype(a.dtype) + accumulate(eb, a), s)
            seen_inf |= _overflow_rows(*_shift_check(db, t), (eb, t), (s, a))
            m = m_new
        d = round_in(x - m[:, None], t, overwrite=True)
        e = round_in(np.exp(d), t, unit=True, overwrite=True)  # d <= 0
        lse = round_in(np.log(s), t)
        p = _softmax_div(e, s, t)
        forward_inf = seen_inf | _overflow_rows(*_shift_check(d, t), (e, t))
        if targets is not None:
            nll = round_in(lse[:, None] - d, t, overwrite=True)
            return _output(_weighted_fused(nll, p, targets, t, a, forward_inf), t, carrier)
        if y is None:
            nll = round_in(lse[:, None] - d, t, overwrite=True)
            out = MethodOutput(nll, None, forward_inf, p == 0)
            return _output(out, t, carrier)
        rows = _rows(n)
        loss = round_in(lse - d[rows, y], t)
        p_y = p[rows, y]
        grad = p  # this method's own p: the gradient takes it over
        grad[rows, y] = round_in(p_y - one_t, t)
    return _output(MethodOutput(loss, grad, forward_inf, p_y == 0), t, carrier)


#: Every formulation, by name. Order is the order reports list them in.
METHODS: dict[str, MethodFn] = {
    "naive": naive,
    "shifted": shifted,
    "fused": fused,
    "log1p": log1p,
    "online": online,
}

#: The methods that accept ``shared=`` (a :class:`ShiftedSoftmax` of the same input).
SHARED_SOFTMAX_METHODS: frozenset[str] = frozenset({"shifted", "fused", "log1p"})

#: What ``eval`` runs unless told otherwise (``all`` adds the rest).
DEFAULT_METHODS: tuple[str, ...] = ("naive", "shifted", "fused", "log1p")


#: How each method forms log-sum-exp for the z-loss, as a kernel of that formulation would:
#: naive from the unshifted sum (overflows with its softmax), log1p as m + log1p(s'), every
#: other as m + log(s).
LSE_FORM: dict[str, str] = {"naive": "unshifted", "log1p": "log1p"}


def _lse_and_prob(
    z: np.ndarray, t: Precision, a: Precision, form: str
) -> tuple[np.ndarray, np.ndarray]:
    """(lse rounded to T, p rounded to T) of carrier values ``z``, in the form ``form``."""
    if form == "unshifted":
        e = round_in(np.exp(z), t, nonneg=True)
        e_a = e.astype(a.dtype, copy=False)
        s = accumulate(e_a, a)
        return round_in(np.log(s), t), _softmax_div(e_a, s, t)
    sm = shifted_softmax(z, t, a)
    if form == "log1p":
        rows = _rows(z.shape[0])
        k = z.argmax(axis=1)
        e_a = sm.e_a.copy()
        e_a[rows, k] = 0
        s_rest = accumulate(e_a, a)
        e_a[rows, k] = sm.e_a[rows, k]
        lse = round_in(sm.m + round_in(np.log1p(s_rest), t), t)
        return lse, _softmax_div(e_a, s_rest + a.dtype.type(1.0), t)
    return round_in(sm.m + round_in(np.log(sm.s), t), t), sm.p


def run_variant(
    fn: MethodFn,
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None,
    variant: Variant,
    *,
    form: str = "shifted",
    carrier: bool = False,
) -> MethodOutput:
    """Method ``fn`` on the loss variant, every step in the working dtype as a kernel does it.

    Forward: z' = s z (T), u = z' / c (T), z'' = c tanh(u) (tanh in the carrier, rounded to T;
    c tanh rounded to T), then ``fn`` on z'' (its own precisions), then the z-loss
    lambda lse**2 (the square and the product each rounded to T; lse formed as
    :data:`LSE_FORM` says) added to the loss in T. Backward: dz'' = g + (2 lambda lse) p (T),
    dz' = dz'' (1 - th**2) (th**2 and 1 - th**2 each rounded to T: the kernel's form, which
    is exactly 0 once tanh rounds to +-1), dz = s dz' (T). ``s``, ``c`` and ``lambda`` are
    carrier values (rounded at the front door). Where 1 - tanh**2 cancels, the exact factor
    4 e^{-2|u|} / (1 + e^{-2|u|})**2 is tiny, so the absolute error stays below eps(T):

    >>> import numpy as np
    >>> from smcheck.precisions import get_precision
    >>> from smcheck.variants import Variant
    >>> f32 = get_precision("float32")
    >>> out = run_variant(fused, np.array([[1e4, 0.0]], np.float32), np.array([1]), f32, f32,
    ...                   None, Variant(softcap=30.0))
    >>> out.loss.tolist(), out.grad.tolist()  # 30 tanh(1e4 / 30) = 30; 1 - 1**2 = 0
    ([30.0], [[0.0, -1.0]])
    """
    z = to_carrier(x, t)
    one = z.dtype.type(1.0)
    # overflow of the scaled logits, of exp in the naive form and of the z-loss square are
    # findings this tool counts, not noise
    with np.errstate(all="ignore"):
        s = z.dtype.type(variant.logit_scale)
        scaled_inf = np.zeros(z.shape[0], bool)
        if variant.logit_scale != 1.0:
            z = round_in(z * s, t)
            # s z can overflow T where z did not (a scale > 1); a cap would then map inf to c
            scaled_inf = _overflow_rows((z, t))
        th = None
        if variant.softcap is not None:
            c = z.dtype.type(variant.softcap)
            th = round_in(np.tanh(round_in(z / c, t)), t)
            z = round_in(c * th, t)
        if targets is not None:
            out = fn(z, y, t, a, targets, carrier=True)
        else:
            out = fn(z, y, t, a, carrier=True)
        loss, grad, overflow = out.loss, out.grad, out.overflow
        zl = None
        if variant.z_loss != 0.0:
            lam = z.dtype.type(variant.z_loss)
            lse, p = _lse_and_prob(z, t, a, form)
            zl = round_in(lam * round_in(lse * lse, t), t)
            loss = round_in(loss + (zl if loss.ndim == 1 else zl[:, None]), t)
            overflow = overflow | (_overflowed(zl, t) & ~_overflowed(lse, t))
            if grad is not None:
                coef = round_in(2 * lam * lse, t)  # 2 lambda exact: a power-of-two scaling
                grad = round_in(grad + round_in(coef[:, None] * p, t), t)
        if grad is not None and th is not None:
            grad = round_in(grad * round_in(one - round_in(th * th, t), t), t)
        if grad is not None and variant.logit_scale != 1.0:
            grad = round_in(grad * s, t)
    res = MethodOutput(loss, grad, overflow | scaled_inf, out.underflow, zl)
    return _output(res, t, carrier)
