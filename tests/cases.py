"""Adversarial and random rows used by the numerics tests (independent of smcheck's code)."""

from __future__ import annotations

import numpy as np

from smcheck.precisions import Precision


def adversarial_rows(p: Precision, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """(row, label) pairs in float64, meant to be rounded to ``p`` before use.

    Magnitudes are capped at max/4 so that no exact loss exceeds the dtype's range.
    """
    rng = np.random.default_rng(seed)
    big = min(1e4, p.max / 4)
    sub_margin = -p.ln_smallest_subnormal  # p_y near the smallest subnormal
    rows: list[tuple[np.ndarray, int]] = [
        (np.array([0.0]), 0),  # C = 1
        (np.array([3.0, 3.0, 3.0]), 1),  # ties
        (np.array([big, -big, 0.0, big / 2]), 0),  # label at the max
        (np.array([big, -big, 0.0, big / 2]), 1),  # label at the min
        (np.array([17.0, 0.0]), 0),  # margin 17: fused rounds to 0 in float32
        (np.array([40.0, 0.0, -3.0]), 0),  # margin 40: fused rounds to 0 in float64
        (np.array([184.0, 0.0]), 0),  # loss ~ 1e-80
        (np.array([0.0, -sub_margin + 1.0]), 1),  # p_y just above the smallest subnormal
        (np.array([0.0, -sub_margin - 2.0, 1.0]), 1),  # p_y below it
        (np.array([0.0, -800.0, 1.0]), 1),  # the seed (pluskid) case
    ]
    for c, scale in ((2, 1.0), (10, 3.0), (10, 30.0), (1000, 10.0)):
        z = rng.standard_normal(c) * min(scale, big)
        rows.append((z, int(rng.integers(c))))
        rows.append((z, int(np.argmax(z))))
    return [(np.clip(z, -big, big), y) for z, y in rows]
