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
* the loss variant (logit scale s, softcap c, z-loss lambda, the smoothing convention) and the
  per-row statistics (pass 1: an online shift, S = sum_j exp(z''_j - M) with the label's term
  apart, the smoothing sums) and G (pass 2): :mod:`smcheck.linear_rows`, in float64 for working
  float32 and narrower (shifted differences s ((z_hi - m) + z_lo), for float32 work
  compensated: TwoSum, TwoProduct and exp(d) (1 + r), ~2**-52 relative whatever |d|; a cap
  c tanh(u), off by ~c 2**-48 in float64, only for 16/8-bit work and c <= 300), in binary128
  for float64 work and for a float32 cap above c = 8;
* loss = log1p(s_excl / exp(d_y)) (no 1 + tiny rounding for confident rows), label
  smoothing's lse - mean(z'') >= 0 from k m - sum z formed exactly (binary128 sums), + lambda
  lse**2;
* G = c s sech**2(u) (p (1 + 2 lambda lse) - target) with p_y - t_y = -s_excl / S + (1 - t_y)
  (not the cancelling p_y - 1); binary128 G is split into two float64 parts (hi + lo);
* dh, dW, db: :func:`matmul_dd` per block and part (the low part needs only target/32 of the
  block: float64 BLAS), each block to target / (16 sqrt(blocks summed into the output)) of
  its own norm, blocks accumulated in double-double in place; dW and db are complete per
  vocabulary block, dh's low part is float32 unless float64 work (it is < 2**-53 |dh|, so
  24 bits keep it to 2**-77).

For float64 work the outputs carry low parts (``loss_lo``, ``grad_*_lo``): hi + lo is within
eps(float64) * 2**-20 = 2**-72, which no float64 value can be.

The gradients are products, and products cancel: a component common to W's rows meets rows of
G that sum to 0 (dh = G W), rows of G cancel each other in db = 1^T G and dW = G^T h, or the
vocabulary blocks' products cancel in their sum. G's own rounding (2**-52 of its entries in
float64 rows) and the per-block tolerances are then amplified by kappa ~ ||G|| ||W|| / ||dh||
(measured: 569x the target at ||w0|| = 2e4). So every run bounds its gradients' errors a
posteriori (``LinearReference.grad_*_bound``) and, where a bound exceeds the target, redoes
the whole computation once: G in binary128 rows kept as two float64 parts (2**-104), the
products to absolute tolerances from the first run's norms, the logits tighter by the
amplification seen. binary128 rows are ~50x slower, so that costs much more than the first
run - only on inputs that cancel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, UsageError
from .exact_products import _U, _dd_acc, _dd_add, _fro, _matmul_dd, _spectral_norm, matmul_dd
from .linear_rows import RowStats, row_math
from .precisions import Precision, get_precision, round_to
from .reference import _split
from .variants import Variant, check_variant

__all__ = [
    "LinearReference",
    "REDUCTIONS",
    "check_linear",
    "matmul_dd",
    "reference_linear",
    "target_rel_err",
]

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def target_rel_err(working: Precision) -> float:
    """The accuracy the reference promises: eps(working) * 2**-20 (float32: 2**-43)."""
    return working.eps * 2.0**-20


# -- double-double helpers ----------------------------------------------------------------


# -- the reference ------------------------------------------------------------------


@dataclass(frozen=True)
class LinearReference:
    """The reference outputs of fused linear cross-entropy (float64).

    ``loss`` is per row (0 for ignored rows), ``loss_reduced`` the reduction named; the
    gradients are of the reduced loss (of the sum for ``reduction="none"``). ``lse`` is
    log-sum-exp of each row's (transformed) logits; ``split_blocks`` counts the block products
    for which a float64 matmul was not accurate enough and the exact split ran, of ``blocks``
    in all. ``variant`` is the loss variant with its constants as used (None for the plain
    loss), ``z_loss_term`` the z-loss lambda lse**2 per row (already in ``loss``; None without
    z-loss), ``precision`` the arithmetic after the logits. For float64 work the ``*_lo``
    fields hold the low parts (value = hi + lo, to eps(float64) * 2**-20); else None.

    ``grad_hidden_bound``, ``grad_weight_bound``, ``grad_bias_bound`` (None without a bias)
    bound each gradient's normwise relative error, a posteriori: max(target, E / (||out||_F -
    E) + u_out) with E = E_prod + E_G (inf where E >= ||out||_F: an output that is not
    resolved, e.g. an exactly 0 dh from identical weight rows), target = eps(working) * 2**-20,

    * E_prod: the products' own error bounds (a block kept from BLAS: gamma_k ||a||_F ||b||_F
      <= its tolerance times its norm; a split block: its tolerance per entry), added over the
      blocks summed into the same entries, root-sum-square over disjoint ones; for dh also its
      float32 low part's rounding, 2**-76 of the running sum per block (float64 for float64
      work and in the redo);
    * E_G = u (||(A_iy ||W_y||)_i|| + ||A_off||_F ||W||) for dh, the same with h's rows for dW
      (A_iy ||h_i|| summed per class), u ||1^T A|| for db: G's entries are within u A_ij of the
      exact ones, A the magnitudes :meth:`~smcheck.linear_rows.RowStats.grad_block` returns
      (|G| plus the targets' terms), split into the label entries and the rest; ||W|| is
      ||W||_F, or an upper bound on the spectral norm (:func:`_spectral_norm`) where ||W||_F
      alone would exceed the target; u = u_g (:meth:`~smcheck.linear_rows.RowMath.u_g`: G's
      rounding, 2**-104 in binary128 rows) + 2 |s| (1 + 1/c) dz, dz the logits' error bound
      that held (both passes: pass 1's moves S);
    * u_out: the output's rounding to float64, 2**-53 (2**-104 for hi + lo, float64 work).

    First order in the roundings, and u_g takes numpy's float64 exp within 2 ulps. The bound
    equals the target unless a product cancels; the reference is then redone once (module
    docstring) and returns the redo's bounds, which exceed the target only past kappa ~ 2**60
    or where an output is not resolved (inf).
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
    variant: Variant | None = None
    z_loss_term: np.ndarray | None = None  # (N,)
    precision: str = "float64"
    loss_lo: np.ndarray | None = None
    loss_reduced_lo: float | None = None
    grad_hidden_lo: np.ndarray | None = None
    grad_weight_lo: np.ndarray | None = None
    grad_bias_lo: np.ndarray | None = None
    grad_hidden_bound: float = math.nan
    grad_weight_bound: float = math.nan
    grad_bias_bound: float | None = None


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
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
    dtype: Any = None,
    block_rows: int = 512,
    block_vocab: int = 512,
    names: tuple[str, str, str, str] = ("hidden", "weight", "bias", "labels"),
) -> LinearReference:
    """Loss and dh, dW, db of cross_entropy(hidden @ weight.T + bias, labels), to about
    eps(working) * 2**-20 relative (normwise for the gradients, as their a-posteriori bounds
    ``grad_*_bound`` state; a run whose products cancel past that is redone once in binary128
    rows); see the module docstring and :class:`LinearReference`.

    Inputs are rounded to ``dtype`` (default: the hidden states' own float dtype) first, as a
    kernel working in that dtype sees them. ``z_loss``, ``softcap``, ``logit_scale`` and
    ``smoothing_convention`` select a loss variant (:mod:`smcheck.variants`; constants rounded
    to the working dtype's carrier, as every other command holds them). Memory: the outputs
    plus O(block_rows * block_vocab + (block_rows + block_vocab) * D) - the (N, V) logits
    never exist.

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
    h, w32, b32, lab, working = check_linear(
        hidden, weight, labels, bias, dtype, ignore_index, names
    )
    run = functools.partial(
        _reference, h, w32, b32, lab, working, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        logit_scale=logit_scale, smoothing_convention=smoothing_convention,
        block_rows=block_rows, block_vocab=block_vocab,
    )  # fmt: skip
    target = target_rel_err(working)
    # the logits (both passes): BLAS where its bound meets target / 16 (16-bit inputs of
    # ordinary size, whose actual bound - the one counted - is far smaller), else the split, to
    # target * 2**-10: the slices reach that at about the same count, and G's share of the
    # logits' error is then 2**-9 target times the amplification of a cancelling product
    ref, amp = run(quad=False, abs_tols=None, z_tol=target * 2.0**-10)
    bounds = (ref.grad_hidden_bound, ref.grad_weight_bound, ref.grad_bias_bound or 0.0)
    if max(bounds) <= target:
        return ref
    # A product cancels (a component common to W's rows; rows of G that cancel in db): G's
    # rounding (~2**-52 of its entries in float64 rows) and the products' per-block
    # tolerances are amplified past the target. Redo it with G in binary128 (kept to 2**-104
    # as two float64 parts; ~50x slower, only for such inputs), the products to absolute
    # tolerances from this run's norms (an estimate: the redo's bounds use its own) and the
    # logits tighter by the amplification of G's relative error this run measured.
    n, d = h.shape
    v = w32.shape[0]
    nbc, nbr = -(-v // block_vocab), -(-n // block_rows)
    norms = (
        _fro(ref.grad_hidden) / (nbc * math.sqrt(n * d)),
        _fro(ref.grad_weight) / (nbr * math.sqrt(v * d)),
        0.0
        if ref.grad_bias is None
        else float(np.linalg.norm(ref.grad_bias)) / (nbr * math.sqrt(v)),
    )
    # G's share of the logits' error, 2 |s| (1 + 1/c) dz relative, times the amplification
    # seen: to target / 16
    z_tol = target / (32 * max(1.0, abs(logit_scale)) * max(1.0, amp))
    del ref  # dW is 1 GB at V = 128256, D = 1024: not two of them
    abs_tols = (norms[0] * target / 8, norms[1] * target / 8, norms[2] * target / 8)
    return run(quad=True, abs_tols=abs_tols, z_tol=min(z_tol, target * 2.0**-10))[0]


def _reference(
    h: np.ndarray,
    w32: np.ndarray,
    b32: np.ndarray | None,
    lab: np.ndarray,
    working: Precision,
    *,
    quad: bool,
    abs_tols: tuple[float, float, float] | None,
    z_tol: float,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    logit_scale: float,
    smoothing_convention: str,
    block_rows: int,
    block_vocab: int,
) -> tuple[LinearReference, float]:
    """:func:`reference_linear` on checked inputs, in binary128 rows if ``quad``; ``abs_tols``
    (per entry of dh, dW, db) replace the products' relative tolerances and ``z_tol`` is the
    logits' tolerance where they are split (in the redo of a cancelling product, everywhere:
    no BLAS at target / 16). Also returns the largest
    amplification of G's relative error seen in a gradient (kappa, see LinearReference)."""
    n, d = h.shape
    v = w32.shape[0]
    var = check_variant(
        z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
        smoothing_convention=smoothing_convention, classes=v,
    )  # fmt: skip
    var = var.rounded(working.carrier) if var.active else var
    rm = row_math(var, label_smoothing, v, working, quad=quad)
    wide = working.mantissa_bits > 24  # float64 work: low parts kept and returned
    ignored = lab == ignore_index
    safe = np.where(ignored, 0, lab)
    counted = int(np.count_nonzero(~ignored))
    target = target_rel_err(working)
    bias64 = None if b32 is None else b32.astype(np.float64)
    stats = {"split": 0, "blocks": 0}

    # the logits' error bound that held, both passes (pass 1's moves S, hence all of p): BLAS
    # where its bound meets z_kept, else the split to z_tol
    z_err = [0.0]
    z_kept = target / 16 if abs_tols is None else z_tol

    def logits(
        h_blk: np.ndarray, w_blk: np.ndarray, cols: slice, tol: float, tol_split: float
    ) -> tuple[np.ndarray, np.ndarray]:
        # |dz| <= target / 16 keeps the loss and p (hence G) within target / 4 of their values;
        # BLAS where its bound gamma_D max ||h_i|| max ||W_j|| meets ``tol`` (16-bit inputs of
        # ordinary size), else the split to ``tol_split``
        kept = math.inf
        if d:
            k_h = float(np.max(np.einsum("ij,ij->i", h_blk, h_blk), initial=0.0))
            k_w = float(np.max(np.einsum("ij,ij->i", w_blk, w_blk), initial=0.0))
            kept = d * _U / (1 - d * _U) * math.sqrt(k_h * k_w)
        hi, lo, split = matmul_dd(
            h_blk, w_blk, working, abs_tol=tol if kept <= tol else min(tol, tol_split)
        )
        stats["split"] += split
        stats["blocks"] += 1
        z_err[0] = max(z_err[0], min(tol, tol_split) if split else kept)  # the bound that held
        if bias64 is not None:
            hi, lo = _dd_add(hi, lo, np.broadcast_to(bias64[cols], hi.shape), 0.0)
        return hi, lo

    def label_cols(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        y = safe[rows]
        idx = np.nonzero((y >= cols.start) & (y < cols.stop))[0]
        return idx, y[idx] - cols.start

    # pass 1: per row the online shift, s_excl = sum_{j != y} exp(d_j), z_y, smoothing sums
    rs = RowStats(rm, n)
    h_norm = np.empty(n)  # the rows' norms, for the a-posteriori gradient bounds
    hbuf = np.empty((min(n, block_rows), d))  # h's block in float64, filled in place
    for r0 in range(0, n, block_rows):
        rows = slice(r0, min(n, r0 + block_rows))
        h_blk = hbuf[: rows.stop - r0]
        h_blk[...] = h[rows]
        h_norm[rows] = np.sqrt(np.einsum("ij,ij->i", h_blk, h_blk))
        for c0 in range(0, v, block_vocab):
            cols = slice(c0, min(v, c0 + block_vocab))
            hi, lo = logits(h_blk, w32[cols].astype(np.float64), cols, z_kept, z_tol)
            rs.add_block(rows, hi, lo, *label_cols(rows, cols))
            del hi, lo
    rs.finish(ignored)
    ft = rm.ft
    c_row = np.zeros(n, dtype=ft)
    if counted:
        one = rm.const(1.0)  # 1/N in the rows' arithmetic: float64's 1/N is 2**-53 off
        c_row[~ignored] = one / rm.const(float(counted)) if reduction == "mean" else one
    if wide:
        loss, loss_lo = _split(rs.loss)
        total = rs.loss.sum(keepdims=True) if n else np.zeros(1, dtype=rm.ft)  # no identity
        if reduction == "mean":
            total = total / rm.const(float(max(counted, 1)))
        red_hi, red_lo = _split(total)
        loss_reduced, loss_reduced_lo = float(red_hi[0]), float(red_lo[0])
        if reduction == "mean" and not counted:
            loss_reduced, loss_reduced_lo = math.nan, math.nan
    else:
        loss, loss_lo, loss_reduced_lo = rs.loss.astype(np.float64), None, None
        loss_reduced = math.fsum(loss.tolist())
        if reduction == "mean":
            loss_reduced = loss_reduced / counted if counted else math.nan

    # pass 2: G block by block; dW[cols] and db[cols] complete per vocabulary block, dh summed
    # in place in double-double over the blocks (its low part float32 unless float64 work)
    dh_hi = np.zeros((n, d))
    # float32 keeps the low part to 2**-24 of itself, 2**-77 of the running sum - which a sum
    # of blocks that cancel does not forgive: float64 in the redo of a cancelling product
    lo64 = wide or abs_tols is not None
    dh_lo = np.zeros((n, d), dtype=np.float64 if lo64 else np.float32)
    acc_u = 2.0**-104 if lo64 else 2.0**-76  # per block added, of the running sum's norm
    dw = np.empty((v, d))
    dw_lo = np.empty((v, d)) if wide else None
    db = np.empty(v) if b32 is not None else None
    db_lo_out = np.empty(v) if wide and b32 is not None else None
    # scratch for the in-place double-double sums, a slab of rows at a time: two (64, D)
    # float64 arrays (0.5 MiB at D = 1024) instead of two more (512, D) blocks (8 MiB)
    slab = 64
    t1, t2 = np.empty((slab, d)), np.empty((slab, d))
    wbuf = np.empty((min(v, block_vocab), d))  # W's block in float64, filled in place
    dwl_buf = np.empty((0, d) if wide else wbuf.shape)  # a block's low part of dW, reused
    # a posteriori (see LinearReference): the products' error bounds per output block, and
    # ||A||_F, 1^T A for G's rounding
    nbc, nbr = -(-v // block_vocab), -(-n // block_rows)  # blocks summed into dh; dW, db
    rel_h = target / (16 * math.sqrt(max(nbc, 1)))  # random-signed errors add up as sqrt(nb)
    rel_w = target / (16 * math.sqrt(max(nbr, 1)))
    err_h, err_w, err_b = np.zeros(nbr), np.zeros(nbc), np.zeros(nbc)
    run_h = np.zeros(nbr)  # sum of dh's block products' norms so far, per row block
    w_sq = 0.0  # ||W||_F**2
    mag_sq = 0.0  # ||A||_F**2 off the labels
    mag_b = np.zeros(v)  # 1^T A
    # the label entries apart: one per row, so its error reaches dh_i as A_iy ||W_y|| and
    # dW_y as A_iy ||h_i|| - no spectral norm (which would count it sqrt(V / D) times)
    lab_h = np.zeros(n)
    lab_w = np.zeros(v)

    def acc(ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray | None) -> None:
        for i in range(0, bh.shape[0], slab):
            j = min(bh.shape[0], i + slab)
            bl_s = None if bl is None else bl[i:j]
            _dd_acc(ah[i:j], al[i:j], bh[i:j], bl_s, t1[: j - i], t2[: j - i])

    for cb, c0 in enumerate(range(0, v, block_vocab)):
        cols = slice(c0, min(v, c0 + block_vocab))
        vb = cols.stop - c0
        w_blk = wbuf[:vb]
        w_blk[...] = w32[cols]
        w_nrm = np.sqrt(np.einsum("ij,ij->i", w_blk, w_blk))
        w_sq += float(w_nrm @ w_nrm)
        dwh = dw[cols]
        dwh[...] = 0.0
        dwl = dw_lo[cols] if dw_lo is not None else dwl_buf[:vb]
        dwl[...] = 0.0
        db_hi = np.zeros(vb)
        db_lo = np.zeros(vb)
        for rb, r0 in enumerate(range(0, n, block_rows)):
            rows = slice(r0, min(n, r0 + block_rows))
            h_blk = hbuf[: rows.stop - r0]
            h_blk[...] = h[rows]
            hi, lo = logits(h_blk, w_blk, cols, z_kept, z_tol)
            idx, ycol = label_cols(rows, cols)
            g, mag = rs.grad_block(rows, hi, lo, idx, ycol, c_row)
            del hi, lo
            mag_b[cols] += mag.sum(axis=0)
            m_y = mag[idx, ycol]
            lab_h[r0 + idx] = m_y * w_nrm[ycol]
            np.add.at(lab_w, c0 + ycol, m_y * h_norm[r0 + idx])
            mag[idx, ycol] = 0.0
            mag_sq += float(np.einsum("ij,ij->", mag, mag))
            del mag
            # binary128 G: two float64 parts, each product exact enough, summed in double-double
            # (for every working dtype: G rounded to float64 is 2**-53 off, which a cancelling
            # product amplifies)
            if rm.quad is not None:
                g_hi, g_lo = _split(g)
                parts = [(g_hi, False), (g_lo, True)]
            else:
                parts = [(np.asarray(g, dtype=np.float64), False)]
            del g
            sw, sh_ = math.sqrt(vb * d), math.sqrt(h_blk.shape[0] * d)
            ref_w = ref_h = 0.0
            for gp, low in parts:
                if low:  # the low part (< 2**-53 of G): to target/32 of the block
                    tw = target / 32 * ref_w / sw
                    th = target / 32 * ref_h / sh_
                    if abs_tols is not None:
                        tw, th = min(tw, abs_tols[1]), min(th, abs_tols[0])
                    kw_w: dict[str, float] = {"abs_tol": tw}
                    kw_h: dict[str, float] = {"abs_tol": th}
                elif abs_tols is not None:
                    kw_w, kw_h = {"abs_tol": abs_tols[1]}, {"abs_tol": abs_tols[0]}
                else:
                    kw_w, kw_h = {"rel_tol": rel_w}, {"rel_tol": rel_h}
                ph, pl, split = _matmul_dd(gp.T, h_blk.T, **kw_w)  # (vb, D) = G^T h
                nrm = _fro(ph)
                ref_w = ref_w or nrm
                err_w[cb] += kw_w["abs_tol"] * sw if "abs_tol" in kw_w else rel_w * nrm
                acc(dwh, dwl, ph, pl)
                del ph, pl  # before the next product: one (., D) block alive, not two
                ph, pl, split2 = _matmul_dd(gp, w_blk.T, **kw_h)  # (br, D) = G W
                nrm = _fro(ph)
                ref_h = ref_h or nrm
                err_h[rb] += kw_h["abs_tol"] * sh_ if "abs_tol" in kw_h else rel_h * nrm
                err_h[rb] += acc_u * (run_h[rb] + nrm)  # the running sum is below that
                run_h[rb] += nrm
                acc(dh_hi[rows], dh_lo[rows], ph, pl)
                del ph, pl
                stats["split"] += split + split2
                stats["blocks"] += 2
                if db is not None:
                    ones = np.ones((1, gp.shape[0]))
                    if abs_tols is not None:
                        ph, pl, _ = matmul_dd(gp.T, ones, working, abs_tol=abs_tols[2])
                        err_b[cb] += abs_tols[2] * math.sqrt(vb)
                    else:
                        ph, pl, _ = matmul_dd(gp.T, ones, working, rel_tol=rel_w)
                        err_b[cb] += rel_w * float(np.linalg.norm(ph))
                    db_hi, db_lo = _dd_add(db_hi, db_lo, ph[:, 0], pl[:, 0])
        if db is not None:
            db[cols] = db_hi + db_lo
            if db_lo_out is not None:
                db_lo_out[cols] = db_lo - (db[cols] - db_hi)

    # G's entries are within u A_ij: their rounding (u_g) and the logits' error dz <= z_err,
    # which moves p_j by p_j s (dz_j - sum_k p_k dz_k), 2 |s| dz relative, and a cap's
    # sech**2(u) by 2 |tanh(u)| |s| dz / c relative
    cap = var.softcap if var.softcap is not None else math.inf
    u = rm.u_g(nbc) + 2 * abs(var.logit_scale) * z_err[0] * (1 + 1 / cap)
    g_fro = math.sqrt(mag_sq)
    out_u = 2.0**-104 if wide else 2.0**-53  # the outputs' own rounding (hi + lo, or hi)
    h_fro = float(np.linalg.norm(h_norm))

    amp = [0.0]

    def bound(out: np.ndarray | None, prod_err: np.ndarray, g_err: float) -> float | None:
        if out is None:
            return None
        size = _fro(out) if out.ndim == 2 else float(np.linalg.norm(out))  # no copy of dW
        err = float(np.linalg.norm(prod_err)) + g_err
        if size > 0 and u > 0:
            amp[0] = max(amp[0], g_err / (u * size))
        # relative to the exact output, whose norm is at least size - err
        rel = err / (size - err) if size > err else (math.inf if err > 0 else 0.0)
        return max(target, rel + out_u)

    e_h, e_w = float(np.linalg.norm(lab_h)), float(np.linalg.norm(lab_w))
    b_h = bound(dh_hi, err_h, u * (e_h + g_fro * math.sqrt(w_sq)))
    if b_h is not None and b_h > target:  # ||W||_2 instead of ||W||_F: a V-fold gap at most
        b_h = bound(dh_hi, err_h, u * (e_h + g_fro * _spectral_norm(w32, block_vocab)))
    b_w = bound(dw, err_w, u * (e_w + g_fro * h_fro))
    if b_w is not None and b_w > target:
        b_w = bound(dw, err_w, u * (e_w + g_fro * _spectral_norm(h, block_rows)))
    b_b = bound(db, err_b, u * float(np.linalg.norm(mag_b)))

    ref = LinearReference(
        loss=loss,
        loss_reduced=loss_reduced,
        grad_hidden=dh_hi,
        grad_weight=dw,
        grad_bias=db,
        lse=rs.lse.astype(np.float64),
        working=working,
        reduction=reduction,
        split_blocks=stats["split"],
        blocks=stats["blocks"],
        variant=var if var.active else None,
        z_loss_term=None if rs.z_loss_term is None else rs.z_loss_term.astype(np.float64),
        precision=rm.name,
        loss_lo=loss_lo,
        loss_reduced_lo=loss_reduced_lo,
        grad_hidden_lo=dh_lo if wide else None,
        grad_weight_lo=dw_lo,
        grad_bias_lo=db_lo_out,
        grad_hidden_bound=target if b_h is None else b_h,
        grad_weight_bound=target if b_w is None else b_w,
        grad_bias_bound=b_b,
    )
    return ref, amp[0]
