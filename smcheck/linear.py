"""Fused linear cross-entropy as chunked kernels compute it, emulated in the working dtype.

:func:`linear_cross_entropy` walks row and vocabulary chunks with a tensor-core style float32
accumulator and accumulates dW, dh and db across chunks in a chosen dtype - the knobs that cause
the real bugs. The reference it is judged against is :mod:`smcheck.linear_reference` (its names
are re-exported here: ``smcheck.linear`` is the one import for both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UsageError
from .linear_reference import (
    REDUCTIONS,
    LinearReference,
    check_linear,
    matmul_dd,
    reference_linear,
    target_rel_err,
)
from .precisions import get_precision
from .variants import check_variant

__all__ = [
    "GRAD_ACCUMS",
    "LinearReference",
    "LinearResult",
    "REDUCTIONS",
    "check_linear",
    "linear_cross_entropy",
    "normwise_rel_err",
    "matmul_dd",
    "reference_linear",
    "target_rel_err",
]


# -- what kernels do: the chunked computation in the working dtype --------------------------


#: Dtypes a kernel may accumulate dW, dh and db in across chunks.
GRAD_ACCUMS: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")


@dataclass(frozen=True)
class LinearResult:
    """A chunked kernel's four outputs (values of the working dtype, held in float64)."""

    loss: np.ndarray  # (N,)
    loss_reduced: float
    grad_hidden: np.ndarray  # (N, D)
    grad_weight: np.ndarray  # (V, D)
    grad_bias: np.ndarray | None  # (V,)
    chunks_rows: int  # how many row chunks dW and db were accumulated over
    chunks_vocab: int  # how many vocabulary chunks dh was accumulated over


def linear_cross_entropy(
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
    chunk_rows: int = 1024,
    chunk_vocab: int = 4096,
    grad_accum: str = "float32",
    names: tuple[str, str, str, str] = ("hidden", "weight", "bias", "labels"),
) -> LinearResult:
    """Fused linear cross-entropy as a chunked GPU kernel computes it, emulated on the CPU.

    Per (row chunk, vocabulary chunk): the logits h W^T + b with working-dtype operands and a
    float32 accumulator (a tensor-core matmul: float32 sgemm of the exact working values), stored
    in the working dtype; the loss variant (:mod:`smcheck.variants`) in the float32 registers as
    Liger's and Gemma's kernels do it: z' = s z, then z'' = c tanh(z' / c) (tanh in float32);
    an online max / sum of exponentials of z'' in float32, lse = m + log(sum), the z-loss term
    lambda lse**2 in float32; then the grad_logits tile
    G = c_row s (1 - tanh**2) (p (1 + 2 lambda lse) - target) computed in float32 and rounded
    to the working dtype, and the tile products G^T h, G W, 1^T G again in float32. Across
    chunks the partial gradients are summed in ``grad_accum``: dW and db over the row chunks,
    dh over the vocabulary chunks, each partial sum rounded to ``grad_accum`` - so bfloat16
    accumulation over many chunks loses the small contributions a float32 accumulator keeps.
    The outputs are rounded to the working dtype. ``label_smoothing`` eps spreads as
    ``smoothing_convention`` says: eps/V on every class ("torch") or eps/(V - 1) on each other
    class ("megatron"). The constants s, c, lambda are held in the working dtype's carrier.

    With 16 row chunks a bfloat16 accumulator rounds dW 16 times; with 1024 it rounds 1024
    times, and each rounding can lose 2**-9 of the running sum.
    """
    if reduction not in REDUCTIONS:
        raise UsageError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if chunk_rows < 1 or chunk_vocab < 1:
        raise UsageError("chunk_rows and chunk_vocab must be >= 1")
    if grad_accum not in GRAD_ACCUMS:
        raise UsageError(f"unknown grad_accum {grad_accum!r}; expected one of {GRAD_ACCUMS}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise UsageError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    from .precisions import round_in

    hw, ww, bw, lab, working = check_linear(
        hidden, weight, labels, bias, dtype, ignore_index, names
    )
    n, d = hw.shape
    v = ww.shape[0]
    var = check_variant(
        z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
        smoothing_convention=smoothing_convention, classes=v,
    ).rounded(working.carrier)  # fmt: skip
    acc = get_precision(grad_accum)
    k: Any = np.float64 if working.bits > 32 else np.float32  # the kernel's float32 registers
    h = hw.astype(k)
    ignored = lab == ignore_index
    safe = np.where(ignored, 0, lab)
    counted = int(np.count_nonzero(~ignored))
    c_row = np.where(ignored, 0.0, 1.0 / max(counted, 1) if reduction == "mean" else 1.0)
    c_row = c_row.astype(k)
    ls = k(label_smoothing)
    # the smoothing target: t_j = off on every class, t_y = on (both sum to 1)
    off = ls / k(v - 1 if var.smoothing_convention == "megatron" else v)
    on = k(1) - ls if var.smoothing_convention == "megatron" else k(1) - ls + off
    s_, lam = k(var.logit_scale), k(var.z_loss)
    cap = None if var.softcap is None else k(var.softcap)

    def rw(x: np.ndarray) -> np.ndarray:
        return round_in(np.asarray(x, dtype=k), working) if working.bits < 32 else x.astype(k)

    def ra(x: np.ndarray) -> np.ndarray:
        return np.asarray(round_in(x.astype(max(k, acc.carrier, key=np.dtype)), acc))

    b = None if bw is None else bw.astype(k)

    def logits(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """The transformed tile z'' in the registers, and tanh(s z / c) (None: no cap)."""
        z = h[rows] @ ww[cols].astype(k).T  # float32 accumulation, as tensor cores
        if b is not None:
            z = z + b[cols]
        z = rw(z)  # the logits tile as stored in the working dtype
        if var.logit_scale != 1.0:
            z = z * s_
        if cap is None:
            return z, None
        th = np.tanh(z / cap)
        return cap * th, th

    m = np.full(n, -np.inf, dtype=k)
    s = np.zeros(n, dtype=k)
    zy = np.zeros(n, dtype=k)
    zsum = np.zeros(n, dtype=k)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for r0 in range(0, n, chunk_rows):
            rows = slice(r0, min(n, r0 + chunk_rows))
            y = safe[rows]
            for c0 in range(0, v, chunk_vocab):
                cols = slice(c0, min(v, c0 + chunk_vocab))
                z, _ = logits(rows, cols)
                idx = np.nonzero((y >= c0) & (y < cols.stop))[0]
                zy[r0 + idx] = z[idx, y[idx] - c0]
                m_new = np.maximum(m[rows], z.max(axis=1))
                scale = np.where(np.isfinite(m[rows]), np.exp(m[rows] - m_new), k(0))
                s[rows] = s[rows] * scale + np.exp(z - m_new[:, None]).sum(axis=1)
                m[rows] = m_new
                zsum[rows] += z.sum(axis=1)
        lse = m + np.log(s)
        loss = lse - zy
        if label_smoothing:  # (1 - eps) nll + eps (lse - mean of the z_j the eps spreads over)
            mean = (zsum - zy) / k(v - 1) if var.smoothing_convention == "megatron" else zsum / k(v)
            loss = (k(1) - ls) * loss + ls * (lse - mean)
        if var.z_loss != 0.0:
            loss = loss + lam * (lse * lse)  # from the lse of the capped logits, in float32
        loss = np.where(ignored, k(0), loss)
        total = np.sum(loss, dtype=k)
        reduced = float(total / k(counted)) if reduction == "mean" else float(total)
        zfac = k(1) + k(2) * lam * lse  # d(lse + lambda lse**2)/d lse

        gw = np.zeros((v, d), dtype=acc.carrier if acc.bits < 64 else np.float64)
        gh = np.zeros((n, d), dtype=gw.dtype)
        gb = np.zeros(v, dtype=gw.dtype) if b is not None else None
        for r0 in range(0, n, chunk_rows):
            rows = slice(r0, min(n, r0 + chunk_rows))
            y = safe[rows]
            for c0 in range(0, v, chunk_vocab):
                cols = slice(c0, min(v, c0 + chunk_vocab))
                z, th = logits(rows, cols)
                g = np.exp(z - lse[rows, None])
                if var.z_loss != 0.0:
                    g = g * zfac[rows, None]
                g = g - off
                idx = np.nonzero((y >= c0) & (y < cols.stop))[0]
                g[idx, y[idx] - c0] -= on - off
                if th is not None:
                    g = g * (k(1) - th * th)  # d(c tanh(u))/du, in the registers
                coef = c_row[rows, None] * s_ if var.logit_scale != 1.0 else c_row[rows, None]
                g = rw(g * coef)  # the grad_logits tile, in the working dtype
                wk = ww[cols].astype(k)
                gw[cols] = ra(gw[cols] + rw(g.T @ h[rows]))
                gh[rows] = ra(gh[rows] + rw(g @ wk))
                if gb is not None:
                    gb[cols] = ra(gb[cols] + g.sum(axis=0))

    def out(x: np.ndarray) -> np.ndarray:
        return rw(np.asarray(x, dtype=k)).astype(np.float64)

    return LinearResult(
        loss=out(loss),
        loss_reduced=float(out(np.array([reduced]))[0]),
        grad_hidden=out(gh),
        grad_weight=out(gw),
        grad_bias=None if gb is None else out(gb),
        chunks_rows=-(-n // chunk_rows),
        chunks_vocab=-(-v // chunk_vocab),
    )


def normwise_rel_err(value: np.ndarray, ref: np.ndarray) -> float:
    """||value - ref|| / ||ref|| (Frobenius, float64); inf where value is not finite.

    >>> normwise_rel_err(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    0.7071067811865475
    """
    v = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        return math.inf
    num = float(np.linalg.norm(v - ref))
    den = float(np.linalg.norm(ref))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)
