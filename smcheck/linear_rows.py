"""Per-row statistics and the logit gradient G of one block, for :mod:`smcheck.linear_reference`.

The logits of a block arrive as double-double (hi, lo) from the exact matmul. This module turns
them into the loss variant's transformed logits (:mod:`smcheck.variants`: z' = s z,
z'' = c tanh(z'/c), label smoothing in either convention, + lambda lse**2), the per-row
statistics of pass 1 (an online shift, the sum of exponentials with the label's term apart,
the smoothing sums) and the block of G = dL/dz (with respect to the *original* logits) of
pass 2, in one of two arithmetics (:func:`row_math` chooses):

* **float64** (working float32 and narrower): every exponent is a shifted difference
  d_j = s ((z_hi,j - m) + z_lo,j). Rounded three times, exp(d_j) is off by 3 |d_j| 2**-53
  relative (|d| up to 745: 2**-42), which the sum of exponentials weights by exp(d_j) <= 1/e
  per unit of |d_j|, but a confident row's loss s_excl / e_y carries d_y's whole error (1.14x
  float32's target 2**-43 at logit_scale 1.1, F4). So for float32 work (:attr:`RowMath.fine`)
  d + r = s (z - m) to ~2**-104 (TwoSum for hi - m and + lo, TwoProduct for s) and
  exp(d + r) = exp(d) (1 + r), in the online rescale exp(s (m_old - m_new)) too; 16-bit and
  8-bit work (targets 2**-30 and wider) keep the plain difference. A logit scale multiplies
  the difference, not the logit, so |s z| = 1e4 costs nothing. The z-loss uses
  lse = s m + log S, off by ~2**-52 (|s m| + log S) absolute. Label smoothing's
  lse - mean z = s (m - mean z) + log S sums the differences z - m_new (no larger than m - z)
  in float64 and k m_new exactly (TwoProduct) in double-double, then forms k m - sum z and
  divides once: ~17 2**-53 relative, where (m - sh / k) - sl / k was off by 2**-53 |mean z|
  (31x the target with logits sharing an offset of 1e6, F3). A cap c tanh(u) is not a
  difference: in float64 it is off by ~6.4 c 2**-53 absolute, a relative error of every
  exponential, ~c 2**-48 in the loss (:func:`row_math`): enough for 16-bit and 8-bit work up
  to c = 300 (bfloat16's target is 2**-27), with the fixed shift M = c (no online rescaling,
  whose errors would add up over the vocabulary blocks; exp(z'' - c) >= e^{-600} stays
  normal).
* **binary128** (numpy-quaddtype; float64 work, and a cap float64 cannot carry: float32 work
  beyond c = 8, where c 2**-48 would pass 2**-45): the same error is c 2**-112 (2**-107 at
  c = 30), and every other step rounds at 2**-113: far under float64's target 2**-72 (so
  float64 work runs here too). sech**2(u) = 4 e^{-2|u|} / (1 + e^{-2|u|})**2
  (:func:`smcheck.reference._sech2`, either arithmetic) has no cancellation where tanh
  saturates. binary128 costs ~50x float64 per element (exp 160 ns, tanh 260 ns): see
  docs/linear.md for the times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .precisions import Precision
from .reference import _sech2, quad_dtype
from .variants import Variant

__all__ = ["RowMath", "RowStats", "row_math"]

#: Below d_y = -30 the loss is > 30 and log S - d_y cancels nothing; above, log1p(s_excl / e_y)
#: keeps a confident row's tiny loss (1e-30 is not 1 + 1e-30 rounded).
_NLL_SWITCH = -30.0


@dataclass(frozen=True)
class RowMath:
    """The arithmetic of the rows: the variant (constants already rounded to the working
    carrier), label smoothing, V, and binary128 or float64 (``quad`` None)."""

    variant: Variant
    label_smoothing: float
    vocab: int
    quad: np.dtype | None
    #: compensated float64 exponents (float32 work, whose target 2**-43 is within 2**10 of
    #: float64's rounding of |d| <= 745): see :meth:`shifted_exp`
    fine: bool = False

    @property
    def ft(self) -> np.dtype:
        return self.quad if self.quad is not None else np.dtype(np.float64)

    @property
    def name(self) -> str:
        return "binary128 (numpy-quaddtype)" if self.quad is not None else "float64"

    def u_g(self, blocks: int) -> float:
        """The relative error of G's entries against their magnitudes A (:meth:`RowStats.
        grad_block`), first order, over ``blocks`` vocabulary blocks of pass 1.

        float64 rows: p = exp(d) / S, exp within ~2 ulps (4 2**-53), the compensation and the
        quotient 2**-53 each, S's sum ~(16 + one per block) 2**-53 (each block's rescale and
        sum round once more), - t and the factors 4 2**-53: (24 + blocks) 2**-53. Uncompensated
        exponents (16-bit and 8-bit work) add d's rounding, 3 |d| 2**-53 <= 2235 2**-53; a
        float64 cap adds the capped logits' ~15 c 2**-53 to every exponential (30 c through S)
        and sech**2's (6 |u| + 8) 2**-53 (|u| <= 40: beyond, sech**2 < 1e-34 and the entry is
        negligible). binary128 rows: the same counts at 2**-113 plus G's split into two float64
        parts, 2**-106 of |G|: 2**-104 covers both.
        """
        if self.quad is not None:
            return 2.0**-104
        k = 24.0 + blocks
        if not self.fine:
            k += 2235.0
        if self.cap64:
            assert self.variant.softcap is not None
            k += 30.0 * self.variant.softcap + 256.0
        return k * 2.0**-53

    def const(self, x: float) -> Any:
        """A float64 constant in this arithmetic (exact: binary128 holds every float64)."""
        return np.asarray(x, dtype=np.float64).astype(self.ft)

    @property
    def sign(self) -> float:
        """The shift follows the largest s z: the largest z for s > 0, the smallest for s < 0."""
        return 1.0 if self.variant.logit_scale > 0 else -1.0

    def transform(self, z: np.ndarray) -> np.ndarray:
        """z'' = c tanh(s z / c) of binary128 logits (s z exact up to 2**-113)."""
        v = self.variant
        if v.logit_scale != 1.0:
            z = z * self.const(v.logit_scale)
        if v.softcap is not None:
            c = self.const(v.softcap)
            z = c * np.tanh(z / c)
        return z

    @property
    def cap64(self) -> bool:
        """A cap computed in float64 (16-bit and 8-bit work): the shift is fixed at M = c."""
        return self.quad is None and self.variant.softcap is not None

    def capped64(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """u = s z / c and z'' = c tanh(u) in float64 (z = hi + lo): each off by ~6.4 c 2**-53
        absolute at most (see :func:`row_math`)."""
        v = self.variant
        assert v.softcap is not None
        z = hi * v.logit_scale + lo * v.logit_scale if v.logit_scale != 1.0 else hi + lo
        u = z / v.softcap
        return u, v.softcap * np.tanh(u)

    def shift(self, m: np.ndarray) -> np.ndarray:
        """The transformed shift M = T(m) of the z-domain shift m (per row); with a float64 cap
        the fixed M = c > every z'' (exp(z'' - c) >= e^{-2c} >= e^{-600} stays normal)."""
        if self.quad is not None:
            return self.transform(m.astype(self.quad))
        if self.cap64:
            return np.full(m.shape, self.variant.softcap)
        return m * self.variant.logit_scale if self.variant.logit_scale != 1.0 else m

    def shifted(
        self, hi: np.ndarray, lo: np.ndarray, m: np.ndarray, big_m: np.ndarray
    ) -> np.ndarray:
        """d = T(z) - T(m) for z = hi + lo (m and M = T(m) broadcast against hi)."""
        if self.quad is not None:
            q = self.quad
            return self.transform(hi.astype(q) + lo.astype(q)) - big_m  # hi + lo exact in 113 bits
        if self.cap64:
            return self.capped64(hi, lo)[1] - big_m
        if self.fine:
            d, r = self.shifted_dd(hi, lo, m)
            return d + r
        d = (hi - m) + lo
        if self.variant.logit_scale != 1.0:
            d *= self.variant.logit_scale
        return d

    def shifted_dd(self, hi: np.ndarray, lo: Any, m: Any) -> tuple[np.ndarray, Any]:
        """d + r = s ((hi - m) + lo) to ~2**-104 |d| (float64 rows): TwoSum for hi - m and for
        + lo, TwoProduct for s. Plain s ((hi - m) + lo) rounds three times, 3 2**-53 |d| with
        |d| up to 745, and a confident row's loss s_excl / e_y carries d's whole error."""
        from .exact_products import two_prod, two_sum

        a, r1 = two_sum(hi, -m)
        d, r2 = two_sum(a, lo)
        r = r1 + r2
        s = self.variant.logit_scale
        if s != 1.0:
            d, e = two_prod(d, s)
            r = e + r * s
        return d, r

    def shifted_exp(self, hi: np.ndarray, lo: Any, m: Any, big_m: Any) -> np.ndarray:
        """exp(T(z) - T(m)); compensated (:attr:`fine`): exp(d + r) = exp(d) (1 + r), |r| <=
        2**-43 so r**2 / 2 is below 2**-87."""
        if not self.fine:
            return np.exp(self.shifted(hi, lo, m, big_m))
        d, r = self.shifted_dd(hi, lo, m)
        e = np.exp(d)
        return e + e * r


#: Largest cap with the fixed shift M = c in float64: exp(z'' - c) >= e^{-2c} stays normal.
_CAP64_MAX = 300.0


def row_math(
    variant: Variant, label_smoothing: float, vocab: int, working: Precision, *, quad: bool = False
) -> RowMath:
    """binary128 for float64 work, for a cap float64 cannot carry and when asked (``quad``:
    a cancelling gradient product needs G beyond float64), else float64.

    A cap in float64: u = s z / c rounds at ~3 2**-53 relative, moving tanh by at most
    sech**2(u) |u| 3 2**-53 <= 1.35 2**-53; numpy's tanh is within ~4 ulps (of values < 1:
    4 2**-53), the product c tanh one more 2**-53: z'' is off by 6.4 c 2**-53, d = z'' - c by
    ~15 c 2**-53 (two such errors and the difference's rounding), which is a relative error of
    every exponential, so the loss (through S and d_y) is off by ~30 c 2**-53 ~ c 2**-48. That
    is within target / 4 = eps 2**-22 for c <= eps 2**26: 2**19 for bfloat16, 2**16 for
    float16, 8 for float32 (whose Gemma-style caps of 30 and 50 go to binary128).
    """
    cap = variant.softcap
    cap_ok = cap is None or cap <= min(_CAP64_MAX, working.eps * 2.0**26)
    need = working.mantissa_bits > 24 or not cap_ok or quad
    qd = quad_dtype() if need else None
    if need and qd is None:  # pragma: no cover - numpy-quaddtype is a hard dependency
        raise RuntimeError("numpy-quaddtype is required for this reference")
    fine = qd is None and cap is None and working.mantissa_bits >= 24
    return RowMath(variant, float(label_smoothing), vocab, qd, fine)


class RowStats:
    """Pass 1's per-row accumulators and, after :meth:`finish`, the rows' loss statistics."""

    def __init__(self, rm: RowMath, n: int) -> None:
        self.rm = rm
        ft = rm.ft
        self.m = np.full(n, -np.inf) * rm.sign  # the z-domain shift (float64, a value of hi)
        self.big_m = np.zeros(n, dtype=ft)  # T(m), valid once m is finite
        self.s_excl = np.zeros(n, dtype=ft)  # sum_{j != y} exp(T(z_j) - T(m))
        self.zy_hi = np.zeros(n)
        self.zy_lo = np.zeros(n)
        # smoothing sums: float64 sums the logits z in double-double, binary128 sums z''
        self.sz_hi = np.zeros(n, dtype=ft)
        self.sz_lo = np.zeros(n)

    def add_block(
        self, rows: slice, hi: np.ndarray, lo: np.ndarray, idx: np.ndarray, ycol: np.ndarray
    ) -> None:
        """Fold one block's logits (rows, block of the vocabulary) into the accumulators;
        ``idx`` are the rows (within the block) whose label is in it, at columns ``ycol``."""
        from .exact_products import _dd_add

        rm = self.rm
        r0 = rows.start
        self.zy_hi[r0 + idx] = hi[idx, ycol]
        self.zy_lo[r0 + idx] = lo[idx, ycol]
        sg = rm.sign
        m_old = self.m[rows]
        m_new = sg * np.maximum(sg * m_old, sg * hi.max(axis=1) if sg > 0 else -hi.min(axis=1))
        big_new = rm.shift(m_new)
        zc = None
        with np.errstate(invalid="ignore"):  # -inf - -inf on the first block: scale 0
            if rm.cap64:  # a fixed shift: nothing to rescale
                scale: Any = 1.0
                zc = rm.capped64(hi, lo)[1]
            elif rm.fine:  # exp(s (m_old - m_new)) compensated as every other exponent
                scale = np.where(np.isfinite(m_old), rm.shifted_exp(m_old, 0.0, m_new, None), 0.0)
            elif rm.quad is None:
                d_old = m_old - m_new
                if rm.variant.logit_scale != 1.0:
                    d_old = d_old * rm.variant.logit_scale
                scale = np.where(np.isfinite(m_old), np.exp(d_old), 0.0)
            else:
                first = ~np.isfinite(m_old)  # big_m is no shift yet: exp(0 - M) may overflow
                scale = np.exp(np.where(first, big_new, self.big_m[rows]) - big_new)
                scale[first] = rm.const(0.0)
        if zc is not None:
            e = np.exp(zc - big_new[:, None])
        elif rm.quad is None:
            e = rm.shifted_exp(hi, lo, m_new[:, None], big_new[:, None])
        else:
            q = rm.quad
            zt = rm.transform(hi.astype(q) + lo.astype(q))  # hi + lo: exact in 113 bits
            if rm.label_smoothing > 0:
                self.sz_hi[rows] += zt.sum(axis=1)
            e = np.exp(zt - big_new[:, None])
        e[idx, ycol] = rm.const(0.0)  # the label's term apart: 1 - p_y is s_excl / s
        self.s_excl[rows] = self.s_excl[rows] * scale + e.sum(axis=1)
        self.m[rows] = m_new
        self.big_m[rows] = big_new
        if rm.label_smoothing > 0 and zc is not None:  # the sums of z'' (in double-double)
            bh = zc.sum(axis=1)
            self.sz_hi[rows], self.sz_lo[rows] = _dd_add(
                self.sz_hi[rows], self.sz_lo[rows], bh, 0.0
            )
        elif rm.label_smoothing > 0 and rm.quad is None:
            # sum z = k m_new + sum (z - m_new): the differences are no larger than m - z (m_new
            # lies between z and the final shift m), so their float64 sum is off by ~17 2**-53
            # of k (m - mean z), the smoothing term itself; summing z directly would be off by
            # 2**-53 sum |z|, which a common offset of the logits (a bias of 1e6) makes 1e6 times
            # the term (F3). k m_new is exact as TwoProduct, the rest double-double.
            from .exact_products import two_prod

            dsum = ((hi - m_new[:, None]) + lo).sum(axis=1)
            ph, pl = two_prod(m_new, float(hi.shape[1]))
            bh, bl = _dd_add(ph, pl, dsum, 0.0)
            self.sz_hi[rows], self.sz_lo[rows] = _dd_add(self.sz_hi[rows], self.sz_lo[rows], bh, bl)

    def finish(self, ignored: np.ndarray) -> None:
        """Loss per row (0 on ignored rows), lse, the z-loss term and S = sum exp(d)."""
        from .exact_products import _dd_add, two_prod

        rm = self.rm
        v, eps, var = rm.vocab, rm.label_smoothing, rm.variant
        if rm.fine:  # d_y + r_y, exp(d_y) (1 + r_y): a confident row's loss is s_excl / e_y
            d_y, r_y = rm.shifted_dd(self.zy_hi, self.zy_lo, self.m)
            e_y = np.exp(d_y)
            e_y = e_y + e_y * r_y
        else:
            d_y = rm.shifted(self.zy_hi, self.zy_lo, self.m, self.big_m)  # <= 0 up to rounding
            r_y = rm.const(0.0)
            e_y = np.exp(d_y)
        self.s_tot = self.s_excl + e_y
        log_s = np.log(self.s_tot)
        self.lse = self.big_m + log_s
        with np.errstate(divide="ignore", over="ignore"):
            # with the fixed shift M = c (a float64 cap) d_y <= -30 says nothing about the
            # margin, but e_y >= e^{-2c} is normal, so log1p serves every row
            conf = d_y > _NLL_SWITCH if not rm.cap64 else np.ones(d_y.shape, dtype=bool)
            one = rm.const(1.0)
            nll = np.where(
                conf, np.log1p(self.s_excl / np.where(conf, e_y, one)), (log_s - d_y) - r_y
            )
        loss = nll
        if eps > 0:
            megatron = var.smoothing_convention == "megatron"
            if rm.cap64:  # lse - mean z'' = (c - mean z'') + log S, z'' summed in double-double
                sh, sl = self.sz_hi, self.sz_lo
                if megatron:
                    zy = rm.capped64(self.zy_hi, self.zy_lo)[1]
                    sh, sl = _dd_add(sh, sl, -zy, 0.0)
                k = v - 1 if megatron else v
                smooth = ((self.big_m - sh / k) - sl / k) + log_s
            elif rm.quad is None:
                # mean of the original logits in double-double, then scaled: lse - mean(z')
                # = s (m - mean z) + log S, each term >= 0 up to rounding (log S >= log V)
                sh, sl = self.sz_hi, self.sz_lo
                if megatron:  # mean over the other V - 1 classes
                    sh, sl = _dd_add(sh, sl, -self.zy_hi, -self.zy_lo)
                k = v - 1 if megatron else v
                # k m - sum z exactly to 2**-106 of k |m| (TwoProduct, double-double), then one
                # quotient: (m - sh / k) - sl / k rounded sh / k at 2**-53 |mean z| (F3)
                ph, pl = two_prod(self.m, float(k))
                gh, _ = _dd_add(ph, pl, -sh, -sl)
                gap = gh / k
                if var.logit_scale != 1.0:
                    gap = gap * var.logit_scale
                smooth = gap + log_s
            else:
                q = rm.quad
                total = self.sz_hi
                if megatron:
                    total = total - rm.transform(self.zy_hi.astype(q) + self.zy_lo.astype(q))
                k = v - 1 if megatron else v
                smooth = (self.big_m - total / rm.const(float(k))) + log_s
            e_c = rm.const(eps)
            loss = (rm.const(1.0) - e_c) * nll + e_c * smooth
        self.z_loss_term = None
        if var.z_loss != 0.0:
            lam = rm.const(var.z_loss)
            self.z_loss_term = np.where(ignored, rm.const(0.0), lam * self.lse * self.lse)
            loss = loss + self.z_loss_term
        self.loss = np.where(ignored, rm.const(0.0), loss)

    def grad_block(
        self,
        rows: slice,
        hi: np.ndarray,
        lo: np.ndarray,
        idx: np.ndarray,
        ycol: np.ndarray,
        c_row: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """G = c_row s sech**2(u) (p (1 + 2 lambda lse) - target) of a block (in ``ft``;
        ``c_row`` in ``ft`` too: 1/N rounded to float64 would be 2**-53 off), and the
        magnitudes A (float64) its rounding is relative to: |G_ij - G*_ij| <= :meth:`RowMath.u_g`
        A_ij, with A = c_row |s| sech**2(u) (|p (1 + 2 lambda lse)| + t) off the label and
        c_row |s| sech**2(u) (s_excl / S + (1 - t_y) + |2 lambda lse p_y|) at the label."""
        rm = self.rm
        v, eps, var = rm.vocab, rm.label_smoothing, rm.variant
        megatron = var.smoothing_convention == "megatron"
        r0 = rows.start
        m, big_m, s_tot = self.m[rows, None], self.big_m[rows, None], self.s_tot[rows]
        chain = None
        if rm.cap64:
            u, zc = rm.capped64(hi, lo)
            chain = _sech2(u)  # float64: relative 6 |u| 2**-53 where it is not e^{-2|u|}-small
            p = np.exp(zc - big_m) / s_tot[:, None]
        elif rm.quad is None:
            p = rm.shifted_exp(hi, lo, m, big_m) / s_tot[:, None]
        else:
            q = rm.quad
            z = hi.astype(q) + lo.astype(q)
            if var.logit_scale != 1.0:
                z = z * rm.const(var.logit_scale)
            if var.softcap is not None:
                c = rm.const(var.softcap)
                u = z / c
                chain = _sech2(u)
                z = c * np.tanh(u)
            p = np.exp(z - big_m) / s_tot[:, None]
        if rm.quad is None:  # the targets' constants as the plain reference always had them
            other: Any = eps / (v - 1) if megatron else eps / v
            label_t: Any = eps if megatron else eps * (1 - 1 / v)
        else:  # eps / V rounded to float64 would be 2**-53 off: binary128 quotients
            e_c = rm.const(eps)
            other = e_c / rm.const(float(v - 1 if megatron else v))
            label_t = e_c if megatron else e_c - e_c / rm.const(float(v))
        p_y = p[idx, ycol]
        if var.z_loss != 0.0:
            p = p * (rm.const(1.0) + rm.const(2 * var.z_loss) * self.lse[rows, None])
        # the magnitudes before g (which may be p itself) is written
        mag = np.abs(p)  # a new array: float64 rows keep it, binary128 ones convert
        if mag.dtype != np.float64:
            mag = mag.astype(np.float64)
        if eps > 0:
            mag += np.asarray(other).astype(np.float64)
        if eps > 0:  # in place: p is not needed after (p_y and mag are taken), one block less
            p -= other
        g = p
        # p_y - t_y = -s_excl / S + (1 - t_y): not the cancelling p_y - 1
        rest = self.s_excl[r0 + idx] / s_tot[idx]
        gy = -rest + label_t
        mag_y = rest + label_t
        if var.z_loss != 0.0:
            zy = rm.const(2 * var.z_loss) * self.lse[r0 + idx] * p_y
            gy = gy + zy
            mag_y = mag_y + np.abs(zy)
        g[idx, ycol] = gy
        mag[idx, ycol] = np.asarray(mag_y).astype(np.float64)
        if chain is not None:
            g *= chain
            mag *= chain.astype(np.float64)
        if var.logit_scale != 1.0:
            g *= rm.const(var.logit_scale)
            mag *= abs(var.logit_scale)
        g *= c_row[rows, None]
        mag *= c_row[rows, None].astype(np.float64)
        return g, mag
