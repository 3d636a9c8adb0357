"""Error-free products for the fused linear cross-entropy reference: TwoSum, TwoProduct,
double-double sums, and :func:`matmul_dd` - ``a @ b.T`` to a chosen accuracy whatever order the
BLAS adds in (Ozaki's exact split of both operands into slices whose products are exact in
float64, summed in double-double), with the norms the a-posteriori bounds need.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .precisions import Precision

__all__ = ["matmul_dd", "two_prod", "two_sum"]

_U = 2.0**-53  # unit roundoff of float64


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s + e == a + b exactly (Knuth's TwoSum, no ordering needed)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


#: Veltkamp's splitter for float64: 2**27 + 1.
_SPLITTER = 134217729.0


def two_prod(a: Any, b: Any) -> tuple[Any, Any]:
    """p + e == a * b exactly (Dekker's TwoProduct, |a|, |b| < 2**996; numpy has no fma)."""
    p = a * b
    t = _SPLITTER * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLITTER * b
    bh = t - (t - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def _dd_add(
    ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """(ah + al) + (bh + bl) in double-double, renormalized (relative error ~2**-104)."""
    s, e = two_sum(ah, bh)
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
    >>> from smcheck.precisions import get_precision
    >>> hi, lo, split = matmul_dd(a, b, get_precision("float32"), abs_tol=1e-20)
    >>> float(hi[0, 0]), split
    (9.313225746154785e-10, True)
    """
    hi, lo, split = _matmul_dd(a, b, abs_tol=abs_tol, rel_tol=rel_tol)
    return hi, np.zeros_like(hi) if lo is None else lo, split


def _fro(x: np.ndarray) -> float:
    """||x||_F without copying a transposed view (norm(x) == norm(x.T))."""
    return float(np.linalg.norm(x.T if x.T.flags.c_contiguous else x))


def _matmul_dd(
    a: np.ndarray, b: np.ndarray, *, abs_tol: float | None = None, rel_tol: float | None = None
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """:func:`matmul_dd` with ``lo`` None where the float64 product is kept (no zeros made:
    at D = 1024 each such array is 4 MiB of the pass's peak). ``a`` and ``b`` may be
    transposed views: BLAS takes them as they are."""
    k = a.shape[1]
    c = a @ b.T
    if k == 0 or c.size == 0:
        return c, None, False
    gamma = k * _U / (1 - k * _U)
    if abs_tol is not None:
        na = np.sqrt(np.einsum("ij,ij->i", a, a))
        nb = np.sqrt(np.einsum("ij,ij->i", b, b))
        if gamma * float(np.max(na)) * float(np.max(nb)) <= abs_tol:
            return c, None, False
    elif rel_tol is not None:
        bound = gamma * _fro(a) * _fro(b)
        if bound <= rel_tol * (_fro(c) - bound):
            return c, None, False
    if abs_tol is not None:
        tol = abs_tol
    else:
        assert rel_tol is not None
        tol = rel_tol * _fro(c) / (2 * math.sqrt(c.size))
    del c
    sa, sb, pairs = _split_pairs(a, b, tol)
    hi = np.zeros((a.shape[0], b.shape[0]))
    lo = np.zeros_like(hi)
    for s, t in pairs:  # small pairs first
        p = sa[s] @ sb[t].T  # exact: integers below 2**53 times one unit
        hi, e = two_sum(hi, p)
        lo += e
    hi, lo = _dd_add(hi, lo, np.zeros_like(hi), 0.0)
    return hi, lo, True


def _dd_acc(
    ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray | None, t1: np.ndarray,
    t2: np.ndarray,
) -> None:  # fmt: skip
    """(ah, al) += (bh, bl) in place, renormalized (:func:`_dd_add`'s arithmetic); ``bh`` is
    overwritten, ``t1`` and ``t2`` are scratch of the same shape. ``al`` may be float32: the
    low part is below 2**-53 |ah|, so its 24 bits keep it to 2**-77 |ah| (at D = 1024 that
    halves dh's 32 MiB low part); the arithmetic itself is float64."""
    np.add(ah, bh, out=t1)  # s
    np.subtract(t1, ah, out=t2)  # bb = s - a
    np.subtract(bh, t2, out=bh)  # b - bb
    np.subtract(t1, t2, out=t2)  # s - bb
    np.subtract(ah, t2, out=t2)  # a - (s - bb)
    t2 += bh  # e: s + e == a + b exactly
    t2 += al
    if bl is not None:
        t2 += bl
    np.add(t1, t2, out=ah)  # hi
    np.subtract(ah, t1, out=t1)  # hi - s
    np.subtract(t2, t1, out=al, casting="same_kind")  # lo = e - (hi - s)


def _spectral_norm(x: np.ndarray, block: int) -> float:
    """An upper bound on ||x||_2 (x: (rows, D) in its working dtype): the largest eigenvalue of
    x^T x (D, D), summed in float64 a block of rows at a time, plus that sum's rounding bound
    gamma_rows ||x||_F**2 and the eigensolver's D 2**-53 ||x^T x||."""
    k = x.shape[1]
    gram = np.zeros((k, k))
    fro2 = 0.0
    for r0 in range(0, x.shape[0], max(block, 1)):
        blk = x[r0 : r0 + block].astype(np.float64)
        gram += blk.T @ blk
        fro2 += float(np.einsum("ij,ij->", blk, blk))
    if k == 0 or fro2 == 0.0:
        return 0.0
    lam = float(np.linalg.eigvalsh(gram)[-1])
    gamma = x.shape[0] * _U / (1 - x.shape[0] * _U)
    return math.sqrt(max(lam, 0.0) * (1 + k * _U) + gamma * fro2 + k * _U * fro2)
