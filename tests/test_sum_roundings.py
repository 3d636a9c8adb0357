"""The gate budget counts the roundings of the sum smcheck actually does (issue 18: it assumed
ceil(log2 C), numpy's pairwise sum has longer chains: 18 at C = 100, 26 at C = 32000)."""

from __future__ import annotations

import numpy as np
import pytest

from smcheck.metrics import default_thresholds, sum_roundings
from smcheck.precisions import accumulate, get_precision


def _numpy_pairwise(a: list[np.float32], i0: int, n: int) -> tuple[np.float32, int]:
    """numpy's pairwise_sum of a[i0 : i0 + n], one float32 rounding at a time, written out from
    numpy/_core/src/umath/loops_utils.h.src: (value, roundings on the longest path)."""
    f = np.float32
    if n < 8:
        res, depth = f(0.0), 0
        for i in range(n):
            res = f(res + a[i0 + i])
            depth += i > 0  # 0 + a[0] is exact
        return res, depth
    if n <= 128:
        r = [a[i0 + j] for j in range(8)]
        depth, i = 0, 8
        while i < n - n % 8:
            r = [f(r[j] + a[i0 + i + j]) for j in range(8)]
            depth, i = depth + 1, i + 8
        res = f(f(f(r[0] + r[1]) + f(r[2] + r[3])) + f(f(r[4] + r[5]) + f(r[6] + r[7])))
        depth += 3
        for k in range(i, n):
            res, depth = f(res + a[i0 + k]), depth + 1
        return res, depth
    half = n // 2
    half -= half % 8
    v1, d1 = _numpy_pairwise(a, i0, half)
    v2, d2 = _numpy_pairwise(a, i0 + half, n - half)
    return f(v1 + v2), 1 + max(d1, d2)


@pytest.mark.parametrize("c", [1, 2, 7, 8, 9, 16, 100, 127, 128, 129, 255, 257, 1000, 32000])
def test_gate_budget_counts_numpys_pairwise_chain(c):
    rng = np.random.default_rng(c)
    x = (rng.random((2, c)) * 3).astype(np.float32)
    got = accumulate(x, get_precision("float32"))
    for row, value in zip(x, got, strict=True):
        want, depth = _numpy_pairwise(list(row), 0, c)
        assert want == value  # the written-out order is numpy's, bit for bit
        assert sum_roundings(c, "float32") == depth


def test_gate_budget_issue_numbers():
    assert sum_roundings(100, "float64") == 18
    assert sum_roundings(32000, "float32") == 26
    assert sum_roundings(32000, "bfloat16") == 15  # the explicit tree: ceil(log2 C)
    assert sum_roundings(1, "float32") == 0


def test_default_thresholds_use_the_chain():
    k, g = default_thresholds("float32", None, 32000)
    assert k == 30.0 and g == 30.0 * 2.0**-23
    # float16 with float32 sums: 26 * 2**-13 ulps, rounded to 2 decimals
    assert default_thresholds("float16", None, 32000)[0] == 4.0
    assert default_thresholds("bfloat16", "bfloat16", 32000)[0] == 19.0
