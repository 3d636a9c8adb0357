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

from .precisions import Precision, accumulate, round_to

__all__ = [
    "METHODS",
    "DEFAULT_METHODS",
    "SHARED_SOFTMAX_METHODS",
    "LossTargets",
    "MethodOutput",
    "MethodFn",
    "ShiftedSoftmax",
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


def _mul(p: np.ndarray, q: np.ndarray, t: Precision) -> np.ndarray:
    """p * q rounded to T. float16 products are formed in float32 and rounded once: the same
    bits (float32 has more than 2p + 2 bits), without numpy's per-element underflow flag."""
    if t.dtype == np.float16:
        return round_to(p.astype(np.float32) * q.astype(np.float32), t)
    return p * q


def _softmax_div(e: np.ndarray, s: np.ndarray, t: Precision) -> np.ndarray:
    """p = e / s: the division runs in the accumulation dtype of ``s``, the result rounded to T."""
    q = np.divide(e.astype(s.dtype, copy=False), s[:, None])
    return round_to(q, t)


def _chained_backward(
    p: np.ndarray, y: np.ndarray, t: Precision, a: Precision
) -> tuple[np.ndarray, np.ndarray]:
    """Backward through two separate layers (the seed article's "separate layers").

    The log-loss layer sends g = dL/dp with g_y = -1/p_y (T) and 0 elsewhere; the softmax layer
    returns p * (g - <p, g>), with <p, g> accumulated in A. Once p_y underflows to 0, g_y = -inf
    and p_y * g_y = 0 * inf = NaN: the whole gradient row becomes NaN.
    Returns (grad, g_y).
    """
    n = p.shape[0]
    rows = _rows(n)
    p_y = p[rows, y]
    g_y = np.divide(t.dtype.type(-1.0), p_y).astype(t.dtype)  # -1/p_y, rounded to T
    # <p, g> accumulated in A over a g that is zero off the label: a sum of one product (T) and
    # exact zeros is that product exactly, unless some other p_j is NaN/inf (0 * inf = NaN).
    # Computed that way here - the same bits as the full reduction, without its C-wide passes.
    dot = (p_y * g_y).astype(a.dtype)
    other_bad = ~np.isfinite(p).all(axis=1) & np.isfinite(p_y)
    dot = np.where(other_bad, a.dtype.type(np.nan), dot)
    # g - <p, g> rounded to T: -<p, g> off the label (exact: dot holds a T value or NaN/inf)
    off = (-dot).astype(t.dtype)
    grad = _mul(p, off[:, None], t)
    grad[rows, y] = p_y * (g_y.astype(a.dtype) - dot).astype(t.dtype)
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
    terms = np.where(coeff != 0, coeff * nll, t.dtype.type(0.0))
    return accumulate(terms, a).astype(t.dtype)


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
    c = targets.coeff
    loss = _weighted_loss(nll, c, t, a)
    total = accumulate(c, a)  # sum_k c_k in A
    grad = (p.astype(a.dtype) * total[:, None]).astype(t.dtype) - c
    if argmax_fix is not None:
        k, rest_ratio = argmax_fix
        rows = _rows(p.shape[0])
        c_k = c[rows, k].astype(a.dtype)
        p_k = p[rows, k].astype(a.dtype)
        grad[rows, k] = (-c_k * rest_ratio + p_k * (total - c_k)).astype(t.dtype)
    return MethodOutput(loss, grad, forward_inf, ((p == 0) & (c != 0)).any(axis=1))


def _weighted_chained(
    p: np.ndarray, targets: LossTargets, t: Precision, a: Precision, forward_inf: np.ndarray
) -> MethodOutput:
    """Separate layers with coefficients: loss = sum c_k (-log p_k); the log-loss layer sends
    g_k = -c_k / p_k (T, only where c_k != 0) and the softmax layer returns p (g - <p, g>)."""
    c = targets.coeff
    loss = _weighted_loss(-np.log(p), c, t, a)
    g = np.where(c != 0, np.divide(-c, p).astype(t.dtype), t.dtype.type(0.0))
    dot = accumulate(p * g, a)
    diff = (g.astype(a.dtype) - dot[:, None]).astype(t.dtype)
    overflow = forward_inf | (_overflowed(g, t) & (p != 0) & np.isfinite(p)).any(axis=1)
    return MethodOutput(loss, p * diff, overflow, ((p == 0) & (c != 0)).any(axis=1))


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


def shifted_softmax(x: np.ndarray, t: Precision, a: Precision) -> ShiftedSoftmax:
    """d = z - max(z) (T), exp(d) (T), their sum (A) and p = exp(d) / sum (A -> T)."""
    # exp(-inf) = 0 for masked logits is intended; inf appears only from overflowing shifts
    with np.errstate(all="ignore"):
        m = x.max(axis=1)
        d = x - m[:, None]
        e = np.exp(d)
        e_a = e.astype(a.dtype)  # the terms in A: exact, shared by the sum and the division
        s = accumulate(e_a, a)
        p = _softmax_div(e_a, s, t)
        inf_rows = _overflow_rows(*_shift_check(d, t), (e_a, t))
    return ShiftedSoftmax(m, d, e_a, s, p, inf_rows)


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
    with np.errstate(all="ignore"):
        e = np.exp(x)
        e_a = e.astype(a.dtype)  # the terms in A: exact, shared by the sum and the division
        s = accumulate(e_a, a)
        p = _softmax_div(e_a, s, t)
        forward_inf = _overflow_rows((e_a, t), (s, a))
        # every exp(z) underflowed: s = 0 and p = 0/0 = NaN - an underflow, not an overflow
        sum_under = s == 0
        if targets is not None:
            out = _weighted_chained(p, targets, t, a, forward_inf)
            return MethodOutput(out.loss, out.grad, out.overflow, out.underflow | sum_under)
        if y is None:
            loss = -np.log(p)
            return MethodOutput(loss, None, forward_inf, (p == 0) | sum_under[:, None])
        rows = _rows(x.shape[0])
        p_y = p[rows, y]
        loss = -np.log(p_y)
        grad, g_y = _chained_backward(p, y, t, a)
    overflow = forward_inf | (_overflowed(g_y, t) & (p_y != 0) & np.isfinite(p_y))
    return MethodOutput(loss, grad, overflow, (p_y == 0) | sum_under)


def shifted(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    shared: ShiftedSoftmax | None = None,
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
            return _weighted_chained(p, targets, t, a, forward_inf)
        if y is None:
            return MethodOutput(-np.log(p), None, forward_inf, p == 0)
        rows = _rows(x.shape[0])
        p_y = p[rows, y]
        loss = -np.log(p_y)
        grad, g_y = _chained_backward(p, y, t, a)
    overflow = forward_inf | (_overflowed(g_y, t) & (p_y != 0) & np.isfinite(p_y))
    return MethodOutput(loss, grad, overflow, p_y == 0)


def fused(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    shared: ShiftedSoftmax | None = None,
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
        lse = np.log(sm.s).astype(t.dtype)
        if targets is not None:
            return _weighted_fused(lse[:, None] - d, p, targets, t, a, forward_inf)
        if y is None:
            return MethodOutput(lse[:, None] - d, None, forward_inf, p == 0)
        rows = _rows(x.shape[0])
        loss = lse - d[rows, y]
        grad = p.copy()
        grad[rows, y] = p[rows, y] - t.dtype.type(1.0)
    return MethodOutput(loss, grad, forward_inf, p[rows, y] == 0)


def log1p(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    shared: ShiftedSoftmax | None = None,
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
        k = x.argmax(axis=1)
        rest = e_a.copy()
        rest[rows, k] = 0  # exp(z_k - m) = 1 is the "1" of log1p
        s_rest = accumulate(rest, a)
        s = s_rest + a.dtype.type(1.0)  # in A
        lse = np.log1p(s_rest).astype(t.dtype)
        p = _softmax_div(e_a, s, t)
        forward_inf = sm.shift_exp_inf | _overflow_rows((s, a))
        if targets is not None:
            fix = (k, s_rest / s)
            return _weighted_fused(lse[:, None] - d, p, targets, t, a, forward_inf, fix)
        if y is None:
            return MethodOutput(lse[:, None] - d, None, forward_inf, p == 0)
        d_y = d[rows, y]
        loss = lse - d_y
        grad = p.copy()
        at_max = d_y == 0  # ties: exp(z_k - m) = exp(z_y - m) = 1, so s' is also sum_{j != y}
        label_entry = np.where(
            at_max, (-(s_rest / s)).astype(t.dtype), p[rows, y] - t.dtype.type(1.0)
        )
        grad[rows, y] = label_entry
    return MethodOutput(loss, grad, forward_inf, p[rows, y] == 0)


def online(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
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
    n, c = x.shape
    one_t = t.dtype.type(1.0)
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
            scale = np.where(same, one_t, np.exp(m - m_new))  # m == m_new: exp(0) exactly
            db = block - m_new[:, None]
            eb = np.where(live[:, None], np.exp(db), t.dtype.type(0.0))
            s = np.where(live, s * scale.astype(a.dtype) + accumulate(eb, a), s)
            seen_inf |= _overflow_rows(*_shift_check(db, t), (eb, t), (s, a))
            m = m_new
        d = x - m[:, None]
        e = np.exp(d)
        lse = np.log(s).astype(t.dtype)
        p = _softmax_div(e, s, t)
        forward_inf = seen_inf | _overflow_rows(*_shift_check(d, t), (e, t))
        if targets is not None:
            return _weighted_fused(lse[:, None] - d, p, targets, t, a, forward_inf)
        if y is None:
            return MethodOutput(lse[:, None] - d, None, forward_inf, p == 0)
        rows = _rows(n)
        loss = lse - d[rows, y]
        grad = p.copy()
        grad[rows, y] = p[rows, y] - one_t
    return MethodOutput(loss, grad, forward_inf, p[rows, y] == 0)


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
