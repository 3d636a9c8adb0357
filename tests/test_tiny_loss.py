"""float64 losses below 2**-968: the double-double's low part underflows, so the reference
carries an exponent (issue 18: at a subnormal loss the relative error was off by up to 0.29).

Rows [0, -d] with label 0 have loss log1p(exp(-d)): d = 713.8 gives ~1e-310, d = 744.4 the
smallest subnormal 2**-1074 (the true loss 4.74e-324 rounds to 4.94e-324)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from smcheck import compare, cross_entropy, evaluate
from smcheck.core import reference_of
from smcheck.metrics import loss_rel_err
from smcheck.prepare import prepare_input
from smcheck.reference import TINY_LOSS

from .conftest import mp_truth

TINY = {"1e-310": 713.8, "smallest subnormal": 744.4}


def _truth_rel_err(value: float, z: np.ndarray) -> float:
    """|value - L*| / L* in mpmath (60 digits), L* of row z with label 0."""
    truth, _ = mp_truth(z, 0)
    with mpmath.workdps(60):
        return float(abs(mpmath.mpf(value) - truth) / truth)


def _rows(d: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([[0.0, -d], [0.0, -1.0]]), np.array([0, 0])


@pytest.mark.parametrize("where", TINY)
def test_tiny_float64_loss_relative_error_matches_mpmath(where):
    x, y = _rows(TINY[where])
    ref = reference_of(prepare_input(x, y))
    assert 0 < ref.loss[0] < TINY_LOSS and ref.loss_scaled is not None
    truth, _ = mp_truth(x[0], 0)
    if where == "smallest subnormal":
        assert ref.loss[0] == 2.0**-1074
    # the correctly rounded loss, one subnormal step off it, and 0 (total underflow)
    hi = float(ref.loss[0])
    for v in (hi, hi + 2.0**-1074, 0.0):
        got = loss_rel_err(np.array([v, 0.3]), ref.loss, ref.loss_lo, ref.loss_scaled)[0]
        want = _truth_rel_err(v, x[0])
        assert math.isclose(got, want, rel_tol=1e-12), (v, got, want)
    assert float(abs(mpmath.mpf(hi) - truth) / truth) > 0  # hi alone is not exact


@pytest.mark.parametrize("where", TINY)
def test_tiny_float64_loss_reported_by_evaluate_and_compare(where):
    x, y = _rows(TINY[where])
    res = cross_entropy(x, y, method="log1p")
    want = _truth_rel_err(float(res.loss[0]), x[0])
    assert want > 1e-15  # a subnormal result: far from float64's 2**-53
    r = evaluate(x, y, methods=("log1p",), gate=("log1p",))
    m = r.methods["log1p"]
    assert m.loss_max_rel_err_row == 0
    assert m.loss_max_rel_err is not None
    assert math.isclose(m.loss_max_rel_err, want, rel_tol=1e-12)
    # label-free: the pair (row 0, class 0) is the same loss, one of an (N, C) matrix
    free = evaluate(x, None, methods=("log1p",), gate=("log1p",)).methods["log1p"]
    assert free.loss_max_rel_err is not None
    assert math.isclose(free.loss_max_rel_err, want, rel_tol=1e-12)
    c = compare(x, y, res.loss, res.grad)
    assert c.loss.max_rel_err is not None
    assert math.isclose(c.loss.max_rel_err, want, rel_tol=1e-12)


def test_ordinary_float64_losses_keep_no_exponent():
    x = np.array([[0.0, -600.0], [0.0, -1.0]])  # 2.6e-261: the ordinary pair still holds
    ref = reference_of(prepare_input(x, np.array([0, 0])))
    assert ref.loss[0] > TINY_LOSS and ref.loss_scaled is None


def test_loss_below_the_subnormals_measures_a_zero_as_all_wrong():
    # L* = 1e-330 rounds to 0 in float64: a method returning 0 is off by all of L*
    x = np.array([[0.0, -759.8], [0.0, -1.0]])
    ref = reference_of(prepare_input(x, np.array([0, 0])))
    assert ref.loss[0] == 0 and ref.loss_scaled is not None
    got = loss_rel_err(np.array([0.0, 0.3]), ref.loss, ref.loss_lo, ref.loss_scaled)[0]
    assert got == _truth_rel_err(0.0, x[0]) == 1.0


def test_loss_beyond_any_float64_scale_keeps_the_ordinary_pair():
    # e**-10000 ~ 1e-4343: below 2**-2174 even the scaled low part underflows; the pair is
    # (0, 0) and a method's 0 counts as exact, as without an exponent
    x = np.array([[0.0, -1e4], [0.0, -1.0]])
    ref = reference_of(prepare_input(x, np.array([0, 0])))
    assert ref.loss[0] == 0 and ref.loss_scaled is None
    assert loss_rel_err(np.array([0.0, 0.3]), ref.loss, ref.loss_lo)[0] == 0.0
