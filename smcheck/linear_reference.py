"""Fused linear cross-entropy: the reference loss and gradients of ``CE(h W^T + b, y)``.

A language model's last layer never stores its logits: the hidden states h (N, D) meet the
output weight W (V, D) inside a kernel that walks the vocabulary (or the rows) in chunks. Its
four outputs are the loss and the gradients dh = G W (N, D), dW = G^T h (V, D) and
db = 1^T G (V,), with G = dL/dz = c (softmax(z) - target) (N, V). This module computes them
to about eps(working) * 2**-20 of the exact values of the inputs rounded to the working dtype,
streamed over blocks of rows and of the vocabulary: memory is O(block) plus the outputs, never
an (N, V) matrix.

Why float64 matmuls are not enough on their own: a product of two float32 (or 16-bit) values is
exact in float64, but the sum over D of 1024 of them is rounded 1024 times; the error bound
gamma_D * sum_d |h_d W_vd| ~ 1e-13 * ||h|| ||W_v|| is 2**-43 relative only when no cancellation
happens, and logits far smaller than ||h|| ||W_v|| (the typical case: z ~ 5 from ||h|| ~ 30) or
large-norm hidden states make it much worse. So every product below goes through
:func:`matmul_dd`: a float64 BLAS matmul when its a-priori Cauchy-Schwarz bound
``gamma_k ||a|| ||b||`` already meets the accuracy the working dtype needs (16-bit types on
ordinary data), else an error-free split (Ozaki's scheme): each row of both operands is cut
into slices of ``beta`` bits on a per-row grid, chosen so that every slice-times-slice product
summed over k terms is an integer below 2**53 times the grid unit - exact in float64 whatever
order the BLAS adds in - and the slice products are summed in double-double.

Precision of each step (:func:`reference_linear`):

* z = h W^T + b: :func:`matmul_dd` (exact up to the omitted slice pairs, ~2**-80 relative to
  sum |h||W| for float32), kept as double-double (hi, lo); b is added in double-double;
* per row max m, s = sum_j exp(z_j - m) with the label's term apart (s_excl): the differences
  (z_hi - m) + z_lo in float64, exp and sums in float64 (relative error a few ulps of float64:
  a term's error u |z_j - m| is weighted by its own size exp(z_j - m) <= 1/e per unit);
* loss = log1p(s_excl / exp(z_y - m)) (no 1 + tiny rounding for confident rows), label
  smoothing's lse - mean(z) >= log V from double-double sums;
* G = c (p - target) in float64 with p_y - 1 = -s_excl / s (not the cancelling 1 - p_y);
* dh, dW, db: :func:`matmul_dd` per block, blocks accumulated in double-double, rounded to
  float64 once at the end.

For float64 work the logits are exact but the steps after them run in float64: the reference
is then good to a few ulps of float64 (~2**-50), not eps(float64) * 2**-20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, UsageError
from .precisions import Precision, get_precision, round_to

__all__ = [
    "LinearReference",
    "REDUCTIONS",
    "check_linear",
    "matmul_dd",
    "reference_linear",
    "target_rel_err",
]

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")

_U = 2.0**-53  # unit roundoff of float64


def target_rel_err(working: Precision) -> float:
    """The accuracy the reference promises: eps(working) * 2**-20 (float32: 2**-43)."""
    return working.eps * 2.0**-20


# -- double-double helpers ----------------------------------------------------------------


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s + e == a + b exactly (Knuth's TwoSum, no ordering needed)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _dd_add(
    ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """(ah + al) + (bh + bl) in double-double, renormalized (relative error ~2**-104)."""
    s, e = _two_sum(ah, bh)
    e = e + (al + bl)
    hi = s + e
    return hi, e - (hi - s)


# -- the exact matmul ------------------------------------------------------------------


def _beta(k: int) -> int:
    """Bits per slice: k products of two beta-bit integers sum below 2**53, exactly."""
    return (53 - max(0, math.ceil(math.log2(max(k, 1))))) // 2


def _slices(x: np.ndarray, beta: int, count: int) -> list[np.ndarray]:
    """``x`` (rows, k) = sum of the slices + a remainder below 2**(-beta*count) of each row's max.

    Slice t of row i is a multiple of 2**(e_it - beta) with |slice| <= 2**e_it (2**e_it > the
    row's remainder max): adding sigma = 0.75 * 2**(e + 53 - beta) puts the value where float64's
    spacing is exactly that unit, so (r + sigma) - sigma rounds r to the grid and r - slice is
    exact.
    """
    out = []
    r = np.array(x, dtype=np.float64)
    for _ in range(count):
        mx = np.max(np.abs(r), axis=1, keepdims=True)
        _, e = np.frexp(mx)  # mx < 2**e (e = 0 for an all-zero row: its slices are 0)
        sigma = np.ldexp(0.75, e + 53 - beta)
        s = (r + sigma) - sigma
        r -= s
        out.append(s)
    return out


#: Most slices per operand: 8 * 21 bits reach from float32's max to below its subnormals.
_MAX_SLICES = 8


def _split_pairs(
    a: np.ndarray, b: np.ndarray, tol: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int]]]:
    """Slices of ``a`` and ``b`` and the (s, t) pairs whose products ``a @ b.T`` needs, to an
    absolute error per entry below ``tol``, smallest pairs first.

    Slice s of a row is below 2**(e0 - beta s) (e0: the row's max exponent), so the pairs left
    out, s + t >= K, add at most k (K + 1) 2**(ea + eb - beta K) per entry. More slices are cut
    until that meets ``tol``, or until both remainders are 0 - then every pair is kept and the
    product is exact.
    """
    k = a.shape[1]
    beta = _beta(k)
    ea = int(np.frexp(np.max(np.abs(a)))[1])
    eb = int(np.frexp(np.max(np.abs(b)))[1])
    ra, rb = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    sa: list[np.ndarray] = []
    sb: list[np.ndarray] = []
    for count in range(1, _MAX_SLICES + 1):
        for r, out in ((ra, sa), (rb, sb)):
            (s,) = _slices(r, beta, 1)
            r -= s
            out.append(s)
        if not ra.any() and not rb.any():
            pairs = [(s, t) for s in range(count) for t in range(count)]
            break
        if k * (count + 2) * math.ldexp(1.0, ea + eb - beta * count) <= tol:
            pairs = [(s, t) for s in range(count) for t in range(count) if s + t < count]
            break
    else:
        count = _MAX_SLICES
        pairs = [(s, t) for s in range(count) for t in range(count)]
    pairs.sort(key=lambda st: -(st[0] + st[1]))
    return sa, sb, pairs


def matmul_dd(
    a: np.ndarray,
    b: np.ndarray,
    working: Precision,
    *,
    abs_tol: float | None = None,
    rel_tol: float | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``a @ b.T`` as double-double (hi, lo) and whether the exact split was needed.

    The float64 BLAS result is kept when its a-priori bound meets the tolerance: ``abs_tol``
    per entry against gamma_k ||a_i|| ||b_j|| (Cauchy-Schwarz on gamma_k sum |a||b|), or
    ``rel_tol`` normwise against gamma_k ||a||_F ||b||_F <= rel_tol (||c||_F - bound).
    Otherwise the rows are split (:func:`_slices`) and the pairs of slices whose product can
    matter are multiplied (each exactly) and summed in double-double.

    >>> a = np.array([[2.0**30, 1.0, -(2.0**30)]]); b = np.array([[1.0, 2.0**-30, 1.0]])
    >>> float((a @ b.T)[0, 0])                # 2**30 + 2**-30 rounds the small term away
    0.0
    >>> hi, lo, split = matmul_dd(a, b, get_precision("float32"), abs_tol=1e-20)
    >>> float(hi[0, 0]), split
    (9.313225746154785e-10, True)
    """
    k = a.shape[1]
    c = a @ b.T
    if k == 0 or c.size == 0:
        return c, np.zeros_like(c), False
    gamma = k * _U / (1 - k * _U)
    if abs_tol is not None:
        na = np.sqrt(np.einsum("ij,ij->i", a, a))
        nb = np.sqrt(np.einsum("ij,ij->i", b, b))
        if gamma * float(np.max(na)) * float(np.max(nb)) <= abs_tol:
            return c, np.zeros_like(c), False
    elif rel_tol is not None:
        bound = gamma * float(np.linalg.norm(a)) * float(np.linalg.norm(b))
        if bound <= rel_tol * (float(np.linalg.norm(c)) - bound):
            return c, np.zeros_like(c), False
    if abs_tol is not None:
        tol = abs_tol
    else:
        assert rel_tol is not None
        tol = rel_tol * float(np.linalg.norm(c)) / (2 * math.sqrt(c.size))
    sa, sb, pairs = _split_pairs(a, b, tol)
    hi = np.zeros_like(c)
    lo = np.zeros_like(c)
    for s, t in pairs:  # small pairs first
        p = sa[s] @ sb[t].T  # exact: integers below 2**53 times one unit
        hi, e = _two_sum(hi, p)
        lo += e
    hi, lo = _dd_add(hi, lo, np.zeros_like(hi), 0.0)
    return hi, lo, True


# -- the reference ------------------------------------------------------------------


@dataclass(frozen=True)
class LinearReference:
    """The reference outputs of fused linear cross-entropy (float64).

    ``loss`` is per row (0 for ignored rows), ``loss_reduced`` the reduction named; the
    gradients are of the reduced loss (of the sum for ``reduction="none"``). ``lse`` is
    log-sum-exp of each row's logits; ``split_blocks`` counts the block products for which a
    float64 matmul was not accurate enough and the exact split ran, of ``blocks`` in all.
    """

    loss: np.ndarray  # (N,)
    loss_reduced: float
    grad_hidden: np.ndarray  # (N, D)
    grad_weight: np.ndarray  # (V, D)
    grad_bias: np.ndarray | None  # (V,) or None without a bias
    lse: np.ndarray  # (N,)
    working: Precision
    reduction: str
    split_blocks: int
    blocks: int


#: Rows rounded at a time: the float64 copy of a block, never of a whole (V, D) weight.
_ROUND_ROWS = 8192


def _rounded(x: Any, working: Precision, name: str, ndim: int) -> np.ndarray:
    """``x`` rounded once to the working dtype, in that dtype (a block of rows at a time: the
    weight of a 128k vocabulary is 0.5 GB in float32 and would be 1 GB as float64)."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise InputError(f"{name} must have {ndim} axes, got shape {arr.shape}")
    if arr.dtype.kind not in "fViu":
        raise InputError(f"{name} must be numbers, got dtype {arr.dtype}")
    out = arr if arr.dtype == working.dtype else np.empty(arr.shape, dtype=working.dtype)
    for r0 in range(0, max(arr.shape[0], 1), _ROUND_ROWS):
        blk = arr[r0 : r0 + _ROUND_ROWS]
        if out is not arr:
            with np.errstate(over="ignore", invalid="ignore"):
                out[r0 : r0 + _ROUND_ROWS] = round_to(blk.astype(np.float64), working)
        bad = ~np.isfinite(out[r0 : r0 + _ROUND_ROWS])
        if bad.any():
            where = np.argwhere(bad)[0]
            where[0] += r0
            raise InputError(
                f"{name}{where.tolist()}: not finite in {working.name}"
                " (the reference needs finite inputs)"
            )
    return out


def check_linear(
    hidden: Any,
    weight: Any,
    labels: Any,
    bias: Any,
    dtype: Any,
    ignore_index: int,
    names: tuple[str, str, str, str] = ("hidden", "weight", "bias", "labels"),
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, Precision]:
    """(h, W, b, labels) rounded to the working dtype and checked (shapes, labels' range);
    ``names`` (file names, say) head the messages."""
    if dtype is None:
        dtype = np.asarray(hidden).dtype
        if np.dtype(dtype).kind not in "fV":
            raise UsageError(f"hidden states of dtype {dtype}: name a working dtype")
    working = get_precision(dtype)
    hn, wn, bn, yn = names
    h = _rounded(hidden, working, hn, 2)
    w = _rounded(weight, working, wn, 2)
    if h.shape[1] != w.shape[1]:
        raise InputError(
            f"{hn} has D = {h.shape[1]} columns but {wn} has {w.shape[1]} (shape (V, D))"
        )
    if w.shape[0] == 0:
        raise InputError(f"{wn} has no rows: the vocabulary is empty")
    b = None if bias is None else _rounded(bias, working, bn, 1)
    if b is not None and b.shape[0] != w.shape[0]:
        raise InputError(f"{bn} has {b.shape[0]} entries, expected V = {w.shape[0]}")
    from .prepare import check_labels

    try:
        lab = check_labels(labels, h.shape[0], w.shape[0], ignore_index)
    except InputError as exc:
        raise InputError(f"{yn}: {exc}") from None
    return h, w, b, lab, working


def reference_linear(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    dtype: Any = None,
    block_rows: int = 512,
    block_vocab: int = 512,
    names: tuple[str, str, str, str] = ("hidden", "weight", "bias", "labels"),
) -> LinearReference:
    """Loss and dh, dW, db of cross_entropy(hidden @ weight.T + bias, labels), to about
    eps(working) * 2**-20 relative (normwise for the gradients); see the module docstring.

    Inputs are rounded to ``dtype`` (default: the hidden states' own float dtype) first, as a
    kernel working in that dtype sees them. Memory: the outputs plus O(block_rows *
    block_vocab + (block_rows + block_vocab) * D) - the (N, V) logits never exist.

    A confident row shows why z must be exact: float64's own matmul gets these logits wrong.

    >>> h = np.array([[1.0, 2.0**-30, -1.0]]); w = np.array([[2.0**24, 1.0, 2.0**24], [0, 0, 0]])
    >>> r = reference_linear(h, w, np.array([0]), dtype="float32")
    >>> float((h @ w.T)[0, 0]), float(r.lse[0])   # z_0 = 2**-30, lost by float64
    (0.0, 0.6931471810256066)
    """
    if reduction not in REDUCTIONS:
        raise UsageError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise UsageError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if block_rows < 1 or block_vocab < 1:
        raise UsageError("block_rows and block_vocab must be >= 1")
    h32, w32, b32, lab, working = check_linear(
        hidden, weight, labels, bias, dtype, ignore_index, names
    )
    n, d = h32.shape
    v = w32.shape[0]
    eps_ls = float(label_smoothing)
    ignored = lab == ignore_index
    safe = np.where(ignored, 0, lab)
    counted = int(np.count_nonzero(~ignored))
    target = target_rel_err(working)
    h = h32  # blocks are converted to float64 as used: no N * D * 8 bytes copy
    bias64 = None if b32 is None else b32.astype(np.float64)
    stats = {"split": 0, "blocks": 0}

    def logits(rows: slice, w_blk: np.ndarray, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        # |dz| <= target / 16 keeps the loss and p (hence G) within target / 4 of their values
        hi, lo, split = matmul_dd(h[rows].astype(np.float64), w_blk, working, abs_tol=target / 16)
        stats["split"] += split
        stats["blocks"] += 1
        if bias64 is not None:
            hi, lo = _dd_add(hi, lo, np.broadcast_to(bias64[cols], hi.shape), 0.0)
        return hi, lo

    # pass 1: per row max m, s_excl = sum_{j != y} exp(z_j - m), z_y and sum_j z_j (online)
    m = np.full(n, -np.inf)
    s_excl = np.zeros(n)
    zy_hi = np.zeros(n)
    zy_lo = np.zeros(n)
    sz_hi = np.zeros(n)
    sz_lo = np.zeros(n)
    for r0 in range(0, n, block_rows):
        rows = slice(r0, min(n, r0 + block_rows))
        y = safe[rows]
        for c0 in range(0, v, block_vocab):
            cols = slice(c0, min(v, c0 + block_vocab))
            hi, lo = logits(rows, w32[cols].astype(np.float64), cols)
            in_blk = (y >= c0) & (y < cols.stop)
            idx = np.nonzero(in_blk)[0]
            zy_hi[r0 + idx] = hi[idx, y[idx] - c0]
            zy_lo[r0 + idx] = lo[idx, y[idx] - c0]
            m_new = np.maximum(m[rows], hi.max(axis=1))
            with np.errstate(invalid="ignore"):  # -inf - -inf on the first block: scale 0
                scale = np.where(np.isfinite(m[rows]), np.exp(m[rows] - m_new), 0.0)
            e = np.exp((hi - m_new[:, None]) + lo)
            e[idx, y[idx] - c0] = 0.0  # the label's term apart: 1 - p_y is s_excl / s
            s_excl[rows] = s_excl[rows] * scale + e.sum(axis=1)
            m[rows] = m_new
            if eps_ls > 0:
                bh, bl = _dd_add(hi.sum(axis=1), lo.sum(axis=1), np.zeros(hi.shape[0]), 0.0)
                sz_hi[rows], sz_lo[rows] = _dd_add(sz_hi[rows], sz_lo[rows], bh, bl)
    d_y = (zy_hi - m) + zy_lo  # <= 0 up to rounding
    e_y = np.exp(d_y)
    s_tot = s_excl + e_y
    log_s = np.log(s_tot)
    lse = m + log_s
    with np.errstate(divide="ignore", over="ignore"):
        # -log p_y = log(1 + s_excl / e_y): no 1 + tiny rounding when p_y is close to 1; for
        # d_y < -30 the loss is > 30 and -d_y + log s has no cancellation
        nll = np.where(d_y > -30, np.log1p(s_excl / np.where(d_y > -30, e_y, 1.0)), log_s - d_y)
    loss = nll
    if eps_ls > 0:
        # lse - mean(z) >= log V: (m - mean_hi) - mean_lo + log s cancels nothing dangerous
        smooth = (m - sz_hi / v) - sz_lo / v + log_s
        loss = (1 - eps_ls) * nll + eps_ls * smooth
    loss = np.where(ignored, 0.0, loss)
    if reduction == "mean":
        loss_reduced = math.fsum(loss.tolist()) / counted if counted else math.nan
        c_row = np.where(ignored, 0.0, 1.0 / max(counted, 1))
    else:
        loss_reduced = math.fsum(loss.tolist())
        c_row = np.where(ignored, 0.0, 1.0)

    # pass 2: G block by block; dW[cols] and db[cols] complete per vocabulary block, dh summed
    dh_hi = np.zeros((n, d))
    dh_lo = np.zeros((n, d))
    dw = np.empty((v, d))
    db = np.empty(v) if b32 is not None else None
    for c0 in range(0, v, block_vocab):
        cols = slice(c0, min(v, c0 + block_vocab))
        w_blk = w32[cols].astype(np.float64)
        w_blk_t = np.ascontiguousarray(w_blk.T)
        vb = w_blk.shape[0]
        dw_hi = np.zeros((vb, d))
        dw_lo = np.zeros((vb, d))
        db_hi = np.zeros(vb)
        db_lo = np.zeros(vb)
        for r0 in range(0, n, block_rows):
            rows = slice(r0, min(n, r0 + block_rows))
            y = safe[rows]
            hi, lo = logits(rows, w_blk, cols)
            p = np.exp((hi - m[rows, None]) + lo) / s_tot[rows, None]
            g = p - eps_ls / v
            idx = np.nonzero((y >= c0) & (y < cols.stop))[0]
            g[idx, y[idx] - c0] = -s_excl[r0 + idx] / s_tot[r0 + idx] + eps_ls * (1 - 1 / v)
            g *= c_row[rows, None]
            gt = np.ascontiguousarray(g.T)
            ht = np.ascontiguousarray(h[rows].T, dtype=np.float64)
            ph, pl, split = matmul_dd(gt, ht, working, rel_tol=target / 16)
            dw_hi, dw_lo = _dd_add(dw_hi, dw_lo, ph, pl)
            ph, pl, split2 = matmul_dd(g, w_blk_t, working, rel_tol=target / 16)
            dh_hi[rows], dh_lo[rows] = _dd_add(dh_hi[rows], dh_lo[rows], ph, pl)
            stats["split"] += split + split2
            stats["blocks"] += 2
            if db is not None:
                ones = np.ones((1, gt.shape[1]))
                ph, pl, _ = matmul_dd(gt, ones, working, rel_tol=target / 16)
                db_hi, db_lo = _dd_add(db_hi, db_lo, ph[:, 0], pl[:, 0])
        dw[cols] = dw_hi + dw_lo
        if db is not None:
            db[cols] = db_hi + db_lo
    return LinearReference(
        loss=loss,
        loss_reduced=loss_reduced,
        grad_hidden=dh_hi + dh_lo,
        grad_weight=dw,
        grad_bias=db,
        lse=lse,
        working=working,
        reduction=reduction,
        split_blocks=stats["split"],
        blocks=stats["blocks"],
    )
