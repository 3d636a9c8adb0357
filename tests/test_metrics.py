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
