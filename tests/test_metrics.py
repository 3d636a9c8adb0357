"""Metric functions on hand-built values with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smcheck import metrics
from smcheck.precisions import get_precision


def test_loss_errors() -> None:
    f32 = get_precision("float32")
    ref = np.array([1.0, 0.0, 0.0, 2.0, 1.0])
    loss = np.array([1.0 + 2.0**-23, 0.0, 1e-30, np.nan, np.inf])
    rel = metrics.loss_rel_err(loss, ref)
    assert rel[0] == 2.0**-23 and rel[1] == 0 and rel[2] == math.inf
    assert np.isnan(rel[3]) and np.isnan(rel[4])
    ulps = metrics.loss_ulp_err(loss, ref, f32)
    assert ulps[0] == 1.0
    assert metrics.bits_of_error(np.array([0.0, 1.0, 3.0])).tolist() == [0.0, 1.0, 2.0]


def test_double_double_reference_measures_below_float64_ulp() -> None:
    # reference 1 + 2**-60 as (hi, lo) = (1, 2**-60); a float64 method returning 1.0 is off by
    # 2**-60 - invisible without the low part
    rel = metrics.loss_rel_err(np.array([1.0]), np.array([1.0]), np.array([2.0**-60]))
    assert rel[0] == pytest.approx(2.0**-60, rel=1e-12)
    ulps = metrics.loss_ulp_err(
        np.array([1.0]), np.array([1.0]), get_precision("float64"), np.array([2.0**-60])
    )
    assert ulps[0] == pytest.approx(2.0**-8, rel=1e-12)


def test_grad_errors() -> None:
    ref = np.array([[0.25, -0.5, 0.25], [0.5, -0.5, 0.0]])
    g = np.array([[0.25, -0.5, 0.5], [np.nan, -0.5, 0.0]])
    ae = metrics.grad_abs_err(g, ref)
    assert ae[0] == 0.25 and ae[1] == math.inf
    re = metrics.grad_rel_err(g, ref)
    assert re[0] == pytest.approx(0.25 / math.sqrt(0.375))
    assert re[1] == math.inf


def test_condition_number() -> None:
    # z = [a, 0], y = 0: L = log(1 + e^-a), dL/dz0 = -sigma(-a): kappa = a sigma(-a) / L
    a = 3.0
    L = math.log1p(math.exp(-a))
    s = 1 / (1 + math.exp(a))
    k = metrics.condition_number(np.array([[a, 0.0]]), np.array([[-s, s]]), np.array([L]))
    assert k[0] == pytest.approx(a * s / L, rel=1e-14)


def test_gate_metric_is_ulps_of_max_abs_ref_and_one() -> None:
    # float32: ulp(1) = 2**-23, ulp(3) = 2**-22; below 1 the scale is 1 (absolute error in eps)
    f32 = get_precision("float32")
    err = np.array([2.0**-23, 2.0**-23, 2.0**-22, np.nan])
    ref = np.array([1e-20, 3.0, -0.5, np.nan])
    assert metrics.gate_ulps(err, ref, f32)[:3].tolist() == [1.0, 0.5, 2.0]
    assert np.isnan(metrics.gate_ulps(err, ref, f32)[3])
    # from the loss itself, with a double-double reference: 0 against 2**-12 in float16 is
    # a quarter of eps(float16) = 2**-10
    f16 = get_precision("float16")
    got = metrics.loss_gate_err(np.array([0.0, np.inf]), np.array([2.0**-12, 1.0]), f16)
    assert got[0] == 0.25 and np.isnan(got[1])


@pytest.mark.parametrize(
    ("dtype", "accum", "classes", "loss_ulp"),
    [
        # numpy's pairwise sum of 1000 terms: 21 roundings of eps(float32) on its longest chain
        # (tests/test_sum_roundings.py checks the order bit for bit), not ceil(log2 1000) = 10
        ("float32", None, 1000, 4 + 21),
        ("float32", None, 1024, 4 + 21),
        ("float32", None, 1025, 4 + 21),
        ("float16", None, 32000, 4.0),  # 26 * 2**-13 ulps of float16: rounded away
        ("float16", "float16", 1000, 14.0),
        ("bfloat16", None, 1, 4.0),
    ],
)
def test_default_thresholds_closed_form(
    dtype: str, accum: str | None, classes: int, loss_ulp: float
) -> None:
    eps = get_precision(dtype).eps
    assert metrics.default_thresholds(dtype, accum, classes) == (loss_ulp, loss_ulp * eps)
