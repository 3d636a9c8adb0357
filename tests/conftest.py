"""Shared test helpers: an mpmath ground truth independent of smcheck's code."""

from __future__ import annotations

import mpmath
import numpy as np

#: mpmath working precision for ground truth (decimal digits). 60 digits is ~200 bits: far
#: beyond binary128's 113, so the truth's own error is negligible in every comparison.
TRUTH_DPS = 60


def mp_truth(row: np.ndarray, label: int) -> tuple[mpmath.mpf, list[mpmath.mpf]]:
    """Exact-to-60-digits loss log(sum exp z) - z_y and gradient softmax - onehot of one row."""
    with mpmath.workdps(TRUTH_DPS):
        z = [mpmath.mpf(float(v)) for v in np.asarray(row, dtype=np.float64)]
        # log(sum_j exp(z_j - z_y)) = log1p(sum_{j != y} ...): exact maths, and no 1 + 1e-80
        # rounding to 1 at 60 digits for confident rows
        others = mpmath.fsum(mpmath.exp(v - z[label]) for j, v in enumerate(z) if j != label)
        loss = mpmath.log1p(others)
        lse = z[label] + loss
        grad = [mpmath.exp(v - lse) for v in z]
        # the label entry p_y - 1 = -sum_{j != y} p_j: summed, not cancelled (margins > 140
        # would cancel p_y - 1 to 0 at 60 digits)
        grad[label] = -mpmath.fsum(g for j, g in enumerate(grad) if j != label)
    return loss, grad


def mp_rel_err(value_hi: float, value_lo: float, truth: mpmath.mpf) -> float:
    """|hi + lo - truth| / |truth| computed in mpmath (0 when both are 0)."""
    with mpmath.workdps(TRUTH_DPS):
        v = mpmath.mpf(float(value_hi)) + mpmath.mpf(float(value_lo))
        if truth == 0:
            return 0.0 if v == 0 else float("inf")
        return float(abs(v - truth) / abs(truth))


def mp_abs_err(value_hi: float, value_lo: float, truth: mpmath.mpf) -> float:
    with mpmath.workdps(TRUTH_DPS):
        return float(abs(mpmath.mpf(float(value_hi)) + mpmath.mpf(float(value_lo)) - truth))
