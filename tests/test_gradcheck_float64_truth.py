"""gradcheck in float64 measures the method's error, not the truth's (issue 18: the truth was
a complex128 complex step, itself only ~1e-16 relative - as large as a float64 method's error).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from smcheck import cross_entropy
from smcheck.gradcheck import complex_step_binary128, gradcheck

from .conftest import mp_truth

#: Rows with entries of very different sizes: ordinary, confident (p_y - 1 tiny), far-off
#: classes (p ~ 1e-300), the seed's row.
ROWS = np.array(
    [
        [0.3, -1.7, 2.2, 0.9, -0.4],
        [25.0, -3.0, 1.5, 0.25, -2.0],
        [0.0, -690.0, 1.0, 0.5, -700.0],
        [0.0, -800.0, 1.0, 3.0, -1.0],
    ]
)
LABELS = np.array([2, 0, 1, 3])


def _mp_errors(grad: np.ndarray) -> tuple[float, float]:
    """Max |g - g*| over every entry and max |g - g*| / |g*| over the entries whose truth is a
    normal float64 (as gradcheck's relative error), g* from mpmath (60 digits)."""
    worst_abs = worst_rel = mpmath.mpf(0)
    with mpmath.workdps(60):
        for row, label, g in zip(ROWS, LABELS, grad, strict=True):
            _, truth = mp_truth(row, int(label))
            for value, t in zip(g, truth, strict=True):
                err = abs(mpmath.mpf(float(value)) - t)
                worst_abs = max(worst_abs, err)
                if abs(t) >= np.finfo(np.float64).smallest_normal:
                    worst_rel = max(worst_rel, err / abs(t))
    return float(worst_abs), float(worst_rel)


def test_binary128_complex_step_matches_mpmath_to_1e30_relative():
    # down to where the double-double's low part underflows (one float64 subnormal step)
    k = ROWS.shape[1]
    x = np.repeat(ROWS, k, axis=0)
    hi, lo = complex_step_binary128(x, np.repeat(LABELS, k), np.tile(np.eye(k), (len(ROWS), 1)))
    for i, (row, label) in enumerate(zip(ROWS, LABELS, strict=True)):
        _, truth = mp_truth(row, int(label))
        for j, t in enumerate(truth):
            with mpmath.workdps(60):
                got = mpmath.mpf(float(hi[i * k + j])) + mpmath.mpf(float(lo[i * k + j]))
                assert abs(got - t) <= 1e-30 * abs(t) + 2.0**-1074, (i, j)


@pytest.mark.parametrize("method", ["naive", "fused", "log1p"])
def test_float64_gradcheck_reports_the_methods_error_as_mpmath(method):
    report = gradcheck(ROWS, LABELS, methods=(method,), gate=(method,), full=True, directions=0)
    check = report.methods[0]
    grad = cross_entropy(ROWS, LABELS, method=method).grad
    assert grad is not None
    want_abs, want_rel = _mp_errors(grad)
    assert want_abs > 0  # a float64 method is not exact on these rows
    assert check.max_abs_err is not None and check.max_rel_err is not None
    assert math.isclose(check.max_abs_err, want_abs, rel_tol=1e-9)
    assert math.isclose(check.max_rel_err, want_rel, rel_tol=1e-9)
    assert "binary128" in report.truth.complex_step
