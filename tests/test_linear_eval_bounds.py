"""eval's linear section reports the reference's own gradient bounds, and says when the
reference cannot resolve an output (the review's cancellation findings, made visible)."""

from __future__ import annotations

import json
import math

import numpy as np

from smcheck.linear_eval import evaluate_linear
from smcheck.render.linear import render


def test_unresolved_reference_gradient_is_said_not_hidden() -> None:
    # two identical weight rows: dh = (sum_v G_iv) w = 0 exactly, so no relative bound on dh
    h = np.array([[1.0, 2.0, 0.5], [0.25, -1.0, 3.0]], np.float32)
    w = np.array([[0.5, 0.25, 1.0], [0.5, 0.25, 1.0]], np.float32)
    r = evaluate_linear(h, w, np.array([0, 1]), dtype="float32")
    assert math.isinf(r.reference_bounds[0]) and r.reference_bounds[1] <= 2.0**-43
    text = render(r, "table", width=200)
    assert "note: the reference has no bound on dh" in text
    assert "dW to" not in text  # dW is resolved: not named
    doc = json.loads(render(r, "json"))
    ref = doc["linear"]["reference"]
    # the cancellation made the reference redo its rows in binary128, which still cannot bound 0
    assert ref["precision"].startswith("binary128") and ref["grad_hidden_bound"] is None
    assert ref["grad_weight_bound"] <= 2.0**-43 and ref["grad_bias_bound"] is None
    assert "note: the reference has no bound on dh" in render(r, "markdown")


def test_ordinary_inputs_carry_no_note() -> None:
    rng = np.random.default_rng(3)
    h = rng.standard_normal((8, 5)).astype(np.float32)
    w = rng.standard_normal((11, 5)).astype(np.float32)
    r = evaluate_linear(h, w, rng.integers(0, 11, 8), dtype="float32")
    assert all(b <= 2.0**-43 for b in r.reference_bounds[:2])
    assert "note:" not in render(r, "table", width=200)
