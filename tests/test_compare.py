"""``smcheck.compare`` on dumps with known, injected errors, checked against mpmath.

The ground truth is :func:`tests.conftest.mp_truth` (60 digits), never smcheck's reference: a
loss moved k ulps away from the correctly rounded truth must be reported as exactly the
distance mpmath measures, which is k +- 0.5 (the rounding of the truth to the working dtype).
The reference is accurate to eps * 2**-20, so reported and mpmath ulps agree to ~1e-6 ulps.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mpmath
import numpy as np
import pytest

from smcheck.compare import (
    FAIL_ON,
    HIST_EDGES,
    Check,
    CompareReport,
    GradStats,
    HistBin,
    LossStats,
    WorstRow,
    compare,
    compare_files,
    default_tolerances,
    load_values,
)
from smcheck.core import prepare
from smcheck.errors import InputError, UsageError
from smcheck.precisions import get_precision
from smcheck.render.compare import RENDERERS, render, to_dict

from .conftest import TRUTH_DPS, mp_truth

#: |reported - mpmath| in ulps: the reference's error eps * 2**-20 is 1e-6 ulps; a little more.
ULP_TOL = 4e-6

DOCS = Path(__file__).resolve().parents[1] / "docs" / "compare.md"


def _case(dtype: str, n: int, c: int, seed: int = 0, scale: float = 3.0):
    """Logits already in ``dtype``, labels, and the mpmath truth of every row."""
    p = get_precision(dtype)
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, c)) * scale).astype(p.dtype)
    y = rng.integers(0, c, n)
    truths = [mp_truth(z[i], int(y[i])) for i in range(n)]
    return z, y, [t[0] for t in truths], [t[1] for t in truths]


def _round(values: list[mpmath.mpf], dtype: str) -> np.ndarray:
    """The truth rounded to the working dtype (mpmath rounds to the nearest float64; for
    narrower dtypes the second rounding is off by 2**-53 at most - never seen in a tie here)."""
    p = get_precision(dtype)
    return np.array([float(v) for v in values]).astype(p.dtype)


def _mp_ulps(theirs: float, truth: mpmath.mpf, dtype: str) -> float:
    """|theirs - truth| / spacing of ``dtype`` at truth, all in mpmath (independent of smcheck)."""
    p = get_precision(dtype)
    with mpmath.workdps(TRUTH_DPS):
        t = abs(truth)
        e = int(mpmath.floor(mpmath.log(t, 2)))
        spacing = mpmath.mpf(2) ** (e - p.mantissa_bits + 1)
        return float(abs(mpmath.mpf(float(theirs)) - truth) / spacing)


def _move(x: np.ndarray, k: int) -> np.ndarray:
    """x moved k ulps up in its own dtype with np.nextafter."""
    out = x.copy()
    for _ in range(k):
        out = np.nextafter(out, np.array(np.inf, dtype=x.dtype))
    return out


# --------------------------------------------------------------------------- injected ulps


@pytest.mark.parametrize(
    ("dtype", "k", "n"),
    [("float32", 1, 120), ("float32", 3, 120), ("float16", 2, 120), ("float64", 5, 40)],
)
def test_constant_ulp_offset_is_reported_exactly(dtype: str, k: int, n: int) -> None:
    z, y, truth, _ = _case(dtype, n, 23, seed=k)
    base = _round(truth, dtype)
    theirs = _move(base, k)
    # keep rows where moving k ulps stays in one binade: there the distance is k +- 0.5 ulps
    same = np.frexp(base.astype(np.float64))[1] == np.frexp(theirs.astype(np.float64))[1]
    z, y, theirs = z[same], y[same], theirs[same]
    truth = [t for t, s in zip(truth, same, strict=True) if s]
    r = compare(z, y, theirs)
    expected = np.array([_mp_ulps(t, m, dtype) for t, m in zip(theirs, truth, strict=True)])
    assert np.all((expected >= k - 0.5) & (expected <= k + 0.5))  # the stated tolerance
    assert r.loss.measured == len(theirs)
    assert r.loss.max_ulp_err == pytest.approx(expected.max(), abs=ULP_TOL)
    assert r.loss.median_ulp_err == pytest.approx(np.median(expected), abs=ULP_TOL)
    assert r.loss.p99_ulp_err == pytest.approx(np.quantile(expected, 0.99), abs=ULP_TOL)
    assert r.loss.max_bits == pytest.approx(math.log2(expected.max() + 1), abs=ULP_TOL)
    assert r.loss.worst_row == int(np.argmax(expected))
    # the histogram counts every measured row once, in the bins the mpmath values fall in
    assert sum(b.count for b in r.loss.histogram) == len(theirs)
    edges = [0.0, *HIST_EDGES[1:]]
    for lo, hi, b in zip(edges, [*HIST_EDGES[1:], math.inf], r.loss.histogram[1:], strict=True):
        inside = np.count_nonzero((expected > lo + ULP_TOL) & (expected <= hi - ULP_TOL))
        assert inside <= b.count
    assert r.loss.nonfinite_rows == 0 and r.nonfinite_input_rows == 0


def test_loss_within_budget_passes_and_beyond_fails() -> None:
    z, y, truth, _ = _case("float32", 60, 10)
    theirs = _move(_round(truth, "float32"), 3)
    r = compare(z, y, theirs, max_loss_ulp=8)
    assert r.ok and r.verdict == "ok"
    r = compare(z, y, theirs, max_loss_ulp=1)
    assert not r.ok and r.verdict == "lossy"
    (check,) = [c for c in r.checks if c.name == "loss-error"]
    assert not check.ok and check.gated and check.limit == 1
    assert check.value == pytest.approx(r.loss.max_gate_ulp_err)


def test_gate_measures_small_losses_in_ulps_of_one() -> None:
    # a confident row: L* = log1p(e**-20) ~ 2.06e-9. A float32 kernel returning 0 is off by
    # 2**29-ish ulps at L*, but by 2.06e-9 / 2**-23 = 0.0173 ulps of 1 - a pass for the gate
    z = np.array([[20.0, 0.0]], dtype=np.float32)
    r = compare(z, np.array([0]), np.array([0.0], dtype=np.float32))
    truth = float(mpmath.log1p(mpmath.exp(-20)))
    assert r.loss.max_rel_err == pytest.approx(1.0)
    assert r.loss.max_gate_ulp_err == pytest.approx(truth / 2.0**-23, rel=1e-12, abs=0)
    assert r.loss.max_ulp_err == pytest.approx(truth / 2.0 ** (math.floor(math.log2(truth)) - 23))
    assert r.ok


# --------------------------------------------------------------------------- non-finite rows


def test_nan_and_inf_rows_counted_exactly() -> None:
    z, y, truth, _ = _case("float32", 80, 12)
    theirs = _round(truth, "float32")
    theirs[[3, 50, 51]] = np.nan
    theirs[7] = np.inf
    z[9, 4] = np.nan  # the reference is NaN there; theirs stays finite
    z[10, 0] = np.inf  # reference NaN, theirs NaN too
    theirs[10] = np.nan
    r = compare(z, y, theirs)
    assert r.loss.nonfinite_rows == 4
    assert r.loss.nonfinite_row_ids == (3, 7, 50, 51)
    assert r.loss.nan_rows == 3 and r.loss.inf_rows == 1
    assert r.loss.ref_nonfinite_rows == 1 and r.loss.ref_nonfinite_row_ids == (9,)
    assert r.loss.both_nonfinite_rows == 1
    assert r.nonfinite_input_rows == 2
    assert r.loss.measured == 80 - 6
    assert r.loss.max_ulp_err is not None and r.loss.max_ulp_err <= 0.5 + ULP_TOL
    assert not r.ok and r.verdict == "broken"
    assert "3, 7, 50, 51" in r.summary
    # worst rows: their NaN/inf rows first, then the hidden non-finite input
    assert [w.row for w in r.worst[:5]] == [3, 7, 50, 51, 9]
    assert [w.issue for w in r.worst[:5]] == ["nonfinite"] * 4 + ["ref-nonfinite"]
    # ungated, the same findings pass; gating ref-nonfinite fails on row 9 alone
    assert compare(z, y, theirs, fail_on=()).ok
    theirs[[3, 7, 50, 51]] = _round([truth[i] for i in (3, 7, 50, 51)], "float32")
    assert compare(z, y, theirs).ok
    assert not compare(z, y, theirs, fail_on=("ref-nonfinite",)).ok


def test_underflowing_p_y_gets_a_hint() -> None:
    # float16: p_y = e**-20 is below half the smallest subnormal (e**-17.33), so it rounds to 0
    # and a kernel that takes -log(softmax(z)_y) returns inf; the summary says why and what to do
    z = np.array([[20.0, 0.0, 1.0], [1.0, 0.0, 0.5]], dtype=np.float16)
    r = compare(z, np.array([1, 0]), np.array([np.inf, 0.55], dtype=np.float16))
    assert r.loss.nonfinite_row_ids == (0,) and r.loss.inf_rows == 1
    assert "reach 20 > 17.33" in r.summary and "logsumexp(z) - z_y" in r.summary
    # e**-17 = 4.1e-8 rounds up to the smallest subnormal 5.96e-8, not to 0: no such hint
    z17 = np.array([[17.0, 0.0], [1.0, 0.0]], dtype=np.float16)
    r = compare(z17, np.array([1, 0]), np.array([np.inf, 0.31], dtype=np.float16))
    assert "underflows" not in r.summary
    # a NaN on a row with a small margin is not explained by underflow
    r = compare(z, np.array([1, 0]), np.array([20.0, np.nan], dtype=np.float16))
    assert r.loss.nonfinite_row_ids == (1,) and "logsumexp" not in r.summary


def test_no_measurable_row_is_not_a_pass() -> None:
    z = np.zeros((3, 4), dtype=np.float32)
    r = compare(z, np.array([0, 1, 2]), np.full(3, np.nan, dtype=np.float32), fail_on=())
    assert r.loss.measured == 0 and r.loss.max_ulp_err is None
    assert not r.ok


# --------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dropped_onehot_term_gives_error_one_at_the_label(dtype: str) -> None:
    p = get_precision(dtype)
    z, y, truth, grads = _case(dtype, 40, 9)
    loss = _round(truth, dtype)
    good = np.stack([_round(g, dtype) for g in grads])
    r = compare(z, y, loss, good)
    assert r.grad is not None and r.grad.measured == 40
    # correctly rounded entries are within half an ulp of |g| <= 1: eps / 2
    assert r.grad.max_abs_err is not None and r.grad.max_abs_err <= p.eps / 2 * (1 + 1e-6)
    assert r.ok and r.verdict == "ok"

    # softmax without "- onehot": the label entry is off by exactly 1 (up to rounding of p_y)
    softmax = np.stack(
        [
            _round([g + (1 if j == y[i] else 0) for j, g in enumerate(grads[i])], dtype)
            for i in range(40)
        ]
    )
    r = compare(z, y, loss, softmax)
    assert r.grad is not None
    assert r.grad.max_abs_err == pytest.approx(1.0, abs=p.eps)
    assert r.grad.median_abs_err == pytest.approx(1.0, abs=p.eps)
    assert all(w.grad_worst_class == w.label for w in r.worst)
    assert r.verdict == "broken" and not r.ok
    assert [c.name for c in r.checks if not c.ok] == ["grad-error"]


def test_nonfinite_gradient_rows() -> None:
    z, y, truth, grads = _case("float32", 20, 5)
    g = np.stack([_round(r, "float32") for r in grads])
    g[4, 2] = np.nan
    g[11, 0] = -np.inf
    r = compare(z, y, _round(truth, "float32"), g)
    assert r.grad is not None
    assert r.grad.nonfinite_rows == 2 and r.grad.nonfinite_row_ids == (4, 11)
    assert r.grad.measured == 18
    assert r.loss.nonfinite_rows == 0
    assert not r.ok and r.verdict == "broken"


# --------------------------------------------------------------------------- ignored rows


def test_ignored_rows_must_be_zero() -> None:
    z, y, truth, grads = _case("float32", 30, 6)
    y = y.copy()
    y[[2, 5]] = -100
    loss = _round(truth, "float32")
    loss[[2, 5]] = 0
    g = np.stack([_round(r, "float32") for r in grads])
    g[[2, 5]] = 0
    r = compare(z, y, loss, g)
    assert r.ignored_rows == 2 and r.counted_rows == 28 and r.loss.measured == 28
    assert r.ok
    loss[5] = 1.5
    g[2, 0] = 1e-3
    r = compare(z, y, loss, g)
    assert r.loss.ignored_nonzero_rows == 1
    assert r.grad is not None and r.grad.ignored_nonzero_rows == 1
    assert not r.ok
    assert compare(z, y, loss, g, fail_on=("nonfinite",)).ok


# --------------------------------------------------------------------------- reductions


def _mp_reduce(truth: list[mpmath.mpf], y: np.ndarray, reduction: str) -> mpmath.mpf:
    with mpmath.workdps(TRUTH_DPS):
        kept = [t for t, lab in zip(truth, y, strict=True) if lab != -100]
        s = mpmath.fsum(kept)
        return s / len(kept) if reduction == "mean" else s


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("dtype", "k"), [("float32", 2), ("float16", 1), ("float64", 3)])
def test_reduced_loss_against_mpmath(reduction: str, dtype: str, k: int) -> None:
    z, y, truth, _ = _case(dtype, 50, 7, seed=3)
    y = y.copy()
    y[::5] = -100  # ignored rows are left out; the mean divides by the 40 counted rows
    # ignored rows' truth is for label y=-100 -> recompute with a valid label, then drop
    truth = [mp_truth(z[i], int(max(y[i], 0)))[0] for i in range(50)]
    want = _mp_reduce(truth, y, reduction)
    base = _round([want], dtype)
    theirs = _move(base, k)
    r = compare(z, y, theirs, reduction=reduction)
    assert r.counted_rows == 40
    assert r.loss.ref_value == pytest.approx(float(want), rel=2.0**-48, abs=0)
    assert r.loss.their_value == float(theirs[0])
    expected = _mp_ulps(float(theirs[0]), want, dtype)
    assert k - 0.5 <= expected <= k + 0.5
    assert r.loss.max_ulp_err == pytest.approx(expected, abs=ULP_TOL)
    assert r.loss.median_ulp_err == r.loss.max_ulp_err and r.loss.measured == 1
    assert r.ok
    assert not compare(z, y, _move(base, 200), reduction=reduction).ok


def test_mean_reference_is_exact_below_float64_ulp() -> None:
    # float64: the reference mean comes from an exact sum, so a correctly rounded float64 mean
    # is within half an ulp (a naive float64 sum/len would often be off by more)
    z, y, truth, _ = _case("float64", 64, 5, seed=9, scale=10.0)
    want = _mp_reduce(truth, y, "mean")
    theirs = _round([want], "float64")
    r = compare(z, y, theirs, reduction="mean")
    expected = _mp_ulps(float(theirs[0]), want, "float64")
    assert r.loss.max_ulp_err == pytest.approx(expected, abs=ULP_TOL)
    assert r.loss.max_ulp_err <= 0.5 + ULP_TOL


def test_mean_gradient_is_compared_in_per_row_units() -> None:
    z, y, truth, grads = _case("float32", 30, 6)
    y = y.copy()
    y[0] = -100
    n = 29
    with mpmath.workdps(TRUTH_DPS):
        g = np.stack([_round([v / n for v in row], "float32") for row in grads])
    g[0] = 0
    mean = _round([_mp_reduce(truth, y, "mean")], "float32")
    r = compare(z, y, mean, g, reduction="mean")
    assert r.grad is not None and r.grad.scale == n
    # |n * round(g / n) - g| <= n * ulp(g / n) / 2 <= eps * |g| / 2 (no subnormals here)
    assert r.grad.max_abs_err is not None and r.grad.max_abs_err <= 2.0**-24 * (1 + 1e-6)
    assert r.ok
    # forgetting the division by n: every row off by (n - 1) |g|
    r = compare(z, y, mean, np.stack([_round(row, "float32") for row in grads]), reduction="mean")
    assert r.grad is not None and r.grad.max_abs_err is not None and r.grad.max_abs_err > 1
    assert r.verdict == "broken"
    # sum: their gradient is the per-row one, unscaled
    total = _round([_mp_reduce(truth, y, "sum")], "float32")
    g_sum = np.stack([_round(row, "float32") for row in grads])
    g_sum[0] = 0
    r = compare(z, y, total, g_sum, reduction="sum")
    assert r.grad is not None and r.grad.scale == 1 and r.ok


def test_mean_over_no_rows_follows_the_convention() -> None:
    z = np.zeros((2, 3), dtype=np.float32)
    y = np.array([-100, -100])
    nan, zero = np.array([np.nan], dtype=np.float32), np.array([0.0], dtype=np.float32)
    # PyTorch: 0/0 = NaN, so their NaN is the right answer and a 0 is wrong
    r = compare(z, y, nan, reduction="mean")
    assert r.loss.ref_value is not None and math.isnan(r.loss.ref_value)
    assert r.loss.measured == 1 and r.loss.max_ulp_err == 0.0 and r.loss.nonfinite_rows == 0
    assert r.verdict == "ok" and r.ok and r.convention == "torch"
    assert any("0/0" in note and "--convention torch" in note for note in r.notes)
    r = compare(z, y, zero, reduction="mean")
    assert not r.ok and r.verdict == "broken" and r.loss.ref_nonfinite_rows == 1
    assert "optax returns 0 (--convention jax)" in r.summary
    # optax: 0, so their 0 is right and NaN is wrong
    r = compare(z, y, zero, reduction="mean", convention="jax")
    assert r.loss.ref_value == 0.0 and r.loss.max_ulp_err == 0.0 and r.ok
    assert any("--convention jax" in note for note in r.notes)
    r = compare(z, y, nan, reduction="mean", convention="jax")
    assert not r.ok and r.verdict == "broken" and r.loss.nonfinite_rows == 1
    assert "PyTorch returns NaN (--convention torch)" in r.summary
    # labels that weigh 0 in total are nothing to divide by too (PyTorch: NaN)
    r = compare(z, np.array([0, 0]), nan, reduction="mean", weight=np.array([0.0, 1, 1]))
    assert r.ok and any("weigh 0" in note for note in r.notes)
    r = compare(z, y, zero, reduction="sum")
    assert r.loss.ref_value == 0.0 and r.loss.max_ulp_err == 0.0 and r.ok
    assert r.loss.histogram[0] == HistBin(0.0, 1)  # exact values have a bin of their own


# --------------------------------------------------------------------------- loss options


def _mp_option_truth(
    z: np.ndarray, y: int, w: np.ndarray, eps: float
) -> tuple[mpmath.mpf, list[mpmath.mpf]]:
    """PyTorch's weighted, smoothed loss of one row and its gradient, in exact arithmetic
    (60 digits): L = (1 - eps) w_y nll_y + (eps / C) sum_k w_k nll_k, dL/dz = p sum(c) - c."""
    with mpmath.workdps(TRUTH_DPS):
        c = len(z)
        zs = [mpmath.mpf(float(v)) for v in z]
        m = max(zs)
        lse = m + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in zs))
        e = mpmath.mpf(eps)
        coeff = [e / c * mpmath.mpf(float(w[k])) for k in range(c)]
        coeff[y] += (1 - e) * mpmath.mpf(float(w[y]))
        loss = mpmath.fsum(ck * (lse - v) for ck, v in zip(coeff, zs, strict=True))
        total = mpmath.fsum(coeff)
        grad = [mpmath.exp(v - lse) * total - ck for ck, v in zip(coeff, zs, strict=True)]
        return loss, grad


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize(("dtype", "k"), [("float32", 3), ("float16", 2)])
def test_weight_and_label_smoothing_against_mpmath(eps: float, dtype: str, k: int) -> None:
    z, y, _, _ = _case(dtype, 40, 7, seed=11)
    w = np.random.default_rng(12).uniform(0.1, 3.0, 7)
    truths = [_mp_option_truth(z[i], int(y[i]), w, eps) for i in range(40)]
    loss = _round([t[0] for t in truths], dtype)
    grad = np.stack([_round(t[1], dtype) for t in truths])
    r = compare(z, y, loss, grad, weight=w, label_smoothing=eps)
    # the correctly rounded loss is within half an ulp (the reference's float64 coefficients
    # are 2**-53 off exact: nothing in float32/float16 ulps)
    assert r.loss.max_ulp_err is not None and r.loss.max_ulp_err <= 0.5 + ULP_TOL
    assert r.ok and r.weight == "weight" and r.label_smoothing == eps
    # k ulps away: exactly what mpmath measures
    moved = _move(loss, k)
    r = compare(z, y, moved, weight=w, label_smoothing=eps)
    want = max(_mp_ulps(float(moved[i]), truths[i][0], dtype) for i in range(40))
    assert r.loss.max_ulp_err == pytest.approx(want, abs=ULP_TOL)
    # the plain loss is another function: judged without the options, this fails
    assert not compare(z, y, loss, weight=None).ok


def test_weighted_mean_denominator_is_the_label_weights() -> None:
    z, y, _, _ = _case("float64", 30, 5, seed=13)
    y = y.copy()
    y[[2, 9]] = -100
    w = np.array([0.5, 1.25, 3.0, 0.1, 2.0])
    kept = [i for i in range(30) if y[i] != -100]
    truths = {i: _mp_option_truth(z[i], int(y[i]), w, 0.0) for i in kept}
    with mpmath.workdps(TRUTH_DPS):
        den = mpmath.fsum(mpmath.mpf(float(w[y[i]])) for i in kept)
        want = mpmath.fsum(truths[i][0] for i in kept) / den
        g = np.zeros((30, 5))
        for i in kept:
            g[i] = [float(v / den) for v in truths[i][1]]
    theirs = _round([want], "float64")
    r = compare(z, y, theirs, g, reduction="mean", weight=w)
    assert r.loss.ref_value == pytest.approx(float(want), rel=2.0**-52, abs=0)
    assert r.loss.max_ulp_err == pytest.approx(
        _mp_ulps(float(theirs[0]), want, "float64"), abs=ULP_TOL
    )
    assert r.loss.max_ulp_err <= 0.5 + ULP_TOL and r.ok
    # the same denominator as the core's (PyTorch's) definition, and what the gradient is scaled by
    prep = prepare(z, y, dtype="float64", weight=w)
    assert r.grad is not None and r.grad.scale == prep.mean_denominator == float(den)
    assert r.grad.max_abs_err is not None and r.grad.max_abs_err < 1e-14
    # a mean over the 28 counted rows instead of their weights is far off
    with mpmath.workdps(TRUTH_DPS):
        by_rows = _round([mpmath.fsum(truths[i][0] for i in kept) / len(kept)], "float64")
    assert not compare(z, y, by_rows, reduction="mean", weight=w).ok


def test_bad_loss_options() -> None:
    z, y, truth, _ = _case("float32", 4, 3)
    loss = _round(truth, "float32")
    for bad, msg in [
        (np.ones(2), "weight: 2 class weight(s) (shape 2), expected 3"),
        (np.array([1.0, -1.0, 1.0]), "weight: the weight of class 1 is -1.0"),
        (np.array([1.0, 1.0, np.inf]), "weight: the weight of class 2 is inf"),
    ]:
        with pytest.raises(InputError, match=re.escape(msg)):
            compare(z, y, loss, weight=bad)
    with pytest.raises(InputError, match="my_w.npy: the weight"):
        compare(z, y, loss, weight=np.array([1.0, np.nan, 1.0]), weight_name="my_w.npy")
    with pytest.raises(UsageError, match="label_smoothing"):
        compare(z, y, loss, label_smoothing=1.5)
    with pytest.raises(UsageError, match="label_smoothing"):
        compare(z, y, loss, label_smoothing=math.nan)
    with pytest.raises(UsageError, match="convention"):
        compare(z, y, loss, convention="numpy")


def test_compare_files_reads_a_weight_file(tmp_path: Path) -> None:
    z, y, _, _ = _case("float32", 6, 4, seed=4)
    w = np.array([1.0, 2.0, 0.5, 3.0])
    truths = [_mp_option_truth(z[i], int(y[i]), w, 0.2) for i in range(6)]
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "loss.npy", _round([t[0] for t in truths], "float32"))
    (tmp_path / "w.csv").write_text("1\n2\n0.5\n3\n")
    r = compare_files(
        tmp_path / "z.npy", tmp_path / "y.npy", loss=tmp_path / "loss.npy",
        weight=tmp_path / "w.csv", label_smoothing=0.2,
    )  # fmt: skip
    assert r.ok and r.weight == str(tmp_path / "w.csv")
    doc = to_dict(r)["input"]
    assert (doc["weight"], doc["label_smoothing"], doc["convention"]) == (r.weight, 0.2, "torch")
    assert "loss options" in render(r, "table")
    (tmp_path / "w5.csv").write_text("1\n2\n0.5\n3\n4\n")
    with pytest.raises(InputError, match="w5.csv: 5 class weight"):
        compare_files(
            tmp_path / "z.npy", tmp_path / "y.npy", loss=tmp_path / "loss.npy",
            weight=tmp_path / "w5.csv",
        )  # fmt: skip


# --------------------------------------------------------------------------- blocks


def test_rows_split_into_blocks_keep_their_ids() -> None:
    # 1100 x 1000 logits are two blocks of rows (2**20 cells each); ids past the first block
    # must still be the file's rows
    rng = np.random.default_rng(5)
    z = rng.standard_normal((1100, 1000)).astype(np.float32)
    y = rng.integers(0, 1000, 1100)
    x = z.astype(np.float64)
    m = x.max(axis=1)
    theirs = m + np.log(np.exp(x - m[:, None]).sum(axis=1)) - x[np.arange(1100), y]
    theirs = theirs.astype(np.float32)
    theirs[[1, 1090]] = np.nan
    r = compare(z, y, theirs)
    assert r.loss.nonfinite_row_ids == (1, 1090)
    assert r.loss.measured == 1098
    # float64 log-sum-exp rounded to float32: within 0.5 ulp + float64 noise
    assert r.loss.max_ulp_err is not None and r.loss.max_ulp_err < 0.5 + 1e-3
    truth, _ = mp_truth(z[r.loss.worst_row], int(y[r.loss.worst_row]))
    expected = _mp_ulps(float(theirs[r.loss.worst_row]), truth, "float32")
    assert r.loss.max_ulp_err == pytest.approx(expected, abs=ULP_TOL)


# --------------------------------------------------------------------------- options


def test_default_tolerances() -> None:
    f16, f32 = get_precision("float16"), get_precision("float32")
    # eval's formula, k rounded to 2 decimals; their sum over C classes a tree: ceil(log2 C)
    loss, grad = default_tolerances(f16, f32, 256)
    assert loss == round(4 + 8 * 2.0**-13, 2) == 4.0 and grad == loss * f16.eps
    loss, _ = default_tolerances(f32, f32, 256, "mean", 1024)
    assert loss == 4 + 8 + 10 + 1
    loss, _ = default_tolerances(f32, f32, 37)  # not a power of two: ceil(log2 37) = 6
    assert loss == 4 + 6


def test_bad_options() -> None:
    z = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(UsageError, match="reduction"):
        compare(z, np.array([0, 1]), np.zeros(2), reduction="max")
    with pytest.raises(UsageError, match="fail_on"):
        compare(z, np.array([0, 1]), np.zeros(2), fail_on=("overflow",))
    with pytest.raises(InputError, match="expected 1"):
        compare(z, np.array([0, 1]), np.zeros(2), reduction="mean")


# --------------------------------------------------------------------------- files


def _dump(tmp_path: Path, n: int = 6, c: int = 4) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    z, y, truth, grads = _case("float32", n, c)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    return (
        tmp_path / "logits.npy",
        tmp_path / "labels.npy",
        _round(truth, "float32"),
        np.stack([_round(g, "float32") for g in grads]),
    )


def test_compare_files_reads_every_format(tmp_path: Path) -> None:
    logits, labels, loss, grad = _dump(tmp_path)
    np.save(tmp_path / "loss.npy", loss)
    np.savez(tmp_path / "dump.npz", loss=loss, grad=grad)
    (tmp_path / "loss.txt").write_text("".join(f"{float(v)!r}\n" for v in loss))
    (tmp_path / "loss.csv").write_text("loss\n" + "".join(f"{float(v)!r}\n" for v in loss))
    np.save(tmp_path / "col.npy", loss[:, None])
    for f in ("loss.npy", "dump.npz", "loss.txt", "loss.csv", "col.npy"):
        r = compare_files(logits, labels, loss=tmp_path / f, grad=tmp_path / "dump.npz")
        assert r.ok and r.loss.max_ulp_err is not None and r.loss.max_ulp_err <= 0.5 + ULP_TOL, f
        assert r.grad is not None and r.grad.measured == 6
    r = compare_files(logits, labels, loss=tmp_path / "dump.npz")
    assert r.loss_file.endswith("dump.npz['loss']") and r.their_loss_dtype == "float32"
    assert r.dtype == "float32"


def test_compare_files_reduced_zero_d_npy(tmp_path: Path) -> None:
    logits, labels, loss, _ = _dump(tmp_path)
    want = math.fsum(float(v) for v in loss.astype(np.float64)) / 6
    np.save(tmp_path / "mean.npy", np.float32(want))
    r = compare_files(logits, labels, loss=tmp_path / "mean.npy", reduction="mean")
    assert r.loss.measured == 1 and r.loss.their_value == float(np.float32(want))


def test_shapes_are_checked_with_file_and_expected_shape(tmp_path: Path) -> None:
    logits, labels, loss, grad = _dump(tmp_path)
    np.save(tmp_path / "short.npy", loss[:5])
    with pytest.raises(InputError, match=r"short\.npy: shape 5, expected 6"):
        compare_files(logits, labels, loss=tmp_path / "short.npy")
    np.save(tmp_path / "loss.npy", loss)
    with pytest.raises(InputError, match=r"loss\.npy: holds 6 values .* expected one number"):
        compare_files(logits, labels, loss=tmp_path / "loss.npy", reduction="sum")
    np.save(tmp_path / "g.npy", grad.T)
    with pytest.raises(InputError, match=r"g\.npy: shape 4 x 6, expected 6 x 4"):
        compare_files(logits, labels, loss=tmp_path / "loss.npy", grad=tmp_path / "g.npy")
    np.savez(tmp_path / "two.npz", a=loss, b=loss)
    with pytest.raises(InputError, match="no 'loss' array and more than one candidate"):
        compare_files(logits, labels, loss=tmp_path / "two.npz")
    with pytest.raises(InputError, match="no array 'c'"):
        compare_files(logits, labels, loss=tmp_path / "two.npz", loss_key="c")
    with pytest.raises(UsageError, match="needs labels"):
        compare_files(logits, loss=tmp_path / "loss.npy")


def test_load_values_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    import ml_dtypes

    np.save(tmp_path / "bf16.npy", np.zeros(3, dtype=ml_dtypes.bfloat16))
    with pytest.raises(InputError, match="astype"):
        load_values(tmp_path / "bf16.npy", key=None, default_key="loss")
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy"):
        load_values(tmp_path / "obj.npy", key=None, default_key="loss")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="bad.npz: cannot read"):
        load_values(tmp_path / "bad.npz", key=None, default_key="loss")
    with pytest.raises(InputError, match="no such file"):
        load_values(tmp_path / "missing.npy", key=None, default_key="loss")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_values(tmp_path / "empty.txt", key=None, default_key="loss")
    np.savez_compressed(tmp_path / "zeros.npz", loss=np.zeros(10_000))  # ~80 kB -> ~100 B
    with pytest.raises(InputError, match=r"zeros.npz\['loss'\]: declares 80128 bytes"):
        load_values(tmp_path / "zeros.npz", key=None, default_key="loss", max_bytes=50_000)
    np.save(tmp_path / "ints.npy", np.array([1, 2], dtype=np.int32))
    got = load_values(tmp_path / "ints.npy", key=None, default_key="loss")
    assert got.values.dtype == np.float64 and got.dtype == "int32"


# --------------------------------------------------------------------------- renderers


def _hand_report() -> CompareReport:
    """A report built by hand (not by compare): renderers are tested on known values."""
    bins = tuple(
        HistBin(u, k) for u, k in zip([*HIST_EDGES, None], [0, 7, 2] + [0] * 9, strict=True)
    )
    loss = LossStats(
        measured=9, max_ulp_err=0.75, p99_ulp_err=0.74, median_ulp_err=0.25, max_bits=0.807,
        p99_bits=0.8, median_bits=0.32, max_rel_err=3e-8, median_rel_err=1e-8,
        max_abs_err=2e-8, max_gate_ulp_err=0.5, worst_row=4, histogram=bins,
        nonfinite_rows=1, nonfinite_row_ids=(7,), nan_rows=1, inf_rows=0, ref_nonfinite_rows=0,
        ref_nonfinite_row_ids=(), both_nonfinite_rows=0, ignored_nonzero_rows=0,
        their_value=None, ref_value=None,
    )  # fmt: skip
    grad = GradStats(
        measured=10, max_abs_err=1.0, p99_abs_err=0.99, median_abs_err=0.5, max_rel_err=2.0,
        median_rel_err=1.0, worst_row=2, nonfinite_rows=0, nonfinite_row_ids=(),
        ref_nonfinite_rows=0, ref_nonfinite_row_ids=(), both_nonfinite_rows=0,
        ignored_nonzero_rows=0, scale=1,
    )  # fmt: skip
    worst = (
        WorstRow(7, 3, "nonfinite", math.nan, 2.5, None, None, math.inf, 3, 30.0, -2.0,
                 1.0, 29.0, 1e-13),
        WorstRow(2, 0, "", 1.25, 1.25, 0.25, 1e-8, 1.0, 0, 4.0, -1.0, 4.0, 0.0, 0.5),
    )  # fmt: skip
    checks = (
        Check("loss-error", True, True, 0.5, 4.0, "their loss is off by up to 0.5 ulps"),
        Check("grad-error", False, True, 1.0, 4.8e-7, "their gradient is off by up to 1"),
        Check("nonfinite", False, True, 1.0, 0.0, "their loss on 1 row(s) (7) is NaN/inf"),
        Check("ref-nonfinite", True, False, 0.0, 0.0, "finite only where the reference is"),
        Check("ignored", True, True, 0.0, 0.0, "ignored rows are 0"),
    )
    return CompareReport(
        logits="z.npy", labels="y.npy", loss_file="their_loss.npy", grad_file="their_grad.npy",
        rows=10, classes=4, dtype="float32", accum="float32", cast_mode="ieee",
        reference_precision="float64 with exact shifts (TwoSum)", reduction="none",
        counted_rows=10, ignored_rows=0, nonfinite_input_rows=0, cast_changed=0,
        cast_overflowed=0, their_loss_dtype="float32", their_grad_dtype="float32", loss=loss,
        grad=grad, worst=worst, max_loss_ulp=4.0, max_grad_err=4.8e-7,
        fail_on=("nonfinite", "ignored"), checks=checks, verdict="broken",
        summary="their gradient is off by up to 1; their loss on 1 row(s) (7) is NaN/inf",
        ok=False, notes=("a note, with | a pipe",),
    )  # fmt: skip


def test_json_renderer_keys_and_types() -> None:
    doc = json.loads(render(_hand_report(), "json"))
    assert doc["schema"] == "smcheck.compare/1" and doc["ok"] is False
    for key in ("max_ulp_err", "median_ulp_err", "max_rel_err", "p99_ulp_err", "max_bits"):
        assert isinstance(doc["loss"][key], float), key
    assert doc["loss"]["nonfinite_rows"] == 1 and doc["loss"]["nonfinite_row_ids"] == [7]
    assert doc["loss"]["histogram"][1] == {"upper": 0.5, "count": 7}
    assert doc["loss"]["histogram"][-1]["upper"] is None
    assert doc["grad"]["max_abs_err"] == 1.0 and doc["grad"]["nonfinite_rows"] == 0
    assert doc["worst_rows"][0]["their_loss"] is None  # NaN -> null
    assert doc["worst_rows"][0]["grad_abs_err"] is None  # inf -> null
    assert doc["input"]["loss"] == "their_loss.npy" and doc["reference"]["precision"]
    assert [c["name"] for c in doc["checks"]] == [
        "loss-error", "grad-error", "nonfinite", "ref-nonfinite", "ignored"
    ]  # fmt: skip
    assert doc == to_dict(_hand_report())


def test_table_renderer() -> None:
    text = render(_hand_report(), "table", color=False, width=100)
    assert "\x1b[" not in text
    assert "verdict: broken - their gradient is off by up to 1" in text
    assert "(0, 0.5]" in text and "(0.5, 1]" in text and "(1, 2]" not in text  # trimmed bins
    assert "1 (rows 7)" in text
    assert "nonfinite" in text and "their_grad.npy" in text
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "\x1b[" in render(_hand_report(), "table", color=True)


def test_markdown_and_github_renderers() -> None:
    md = render(_hand_report(), "markdown")
    assert md.startswith("## smcheck compare: broken (FAIL)")
    assert "| max | 0.75 | 0.807 | 3.00e-08 |" in md
    assert "a note, with \\| a pipe" in md
    gh = render(_hand_report(), "github").splitlines()
    assert gh[0] == "::error title=smcheck compare%3A grad-error::their gradient is off by up to 1"
    assert gh[1].startswith("::error title=smcheck compare%3A nonfinite::")
    assert gh[-1].startswith("::notice title=smcheck compare::broken: ")
    assert len(gh) == 3


def test_junit_renderer() -> None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(render(_hand_report(), "junit"))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "5" and suite.get("failures") == "2"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["loss-error", "grad-error", "nonfinite", "ref-nonfinite", "ignored"]
    failure = cases["grad-error"].find("failure")
    assert failure is not None and failure.get("message") == "their gradient is off by up to 1"
    assert cases["loss-error"].find("failure") is None


def test_registries_are_documented() -> None:
    doc = DOCS.read_text()
    for fmt in RENDERERS:
        assert f"`{fmt}`" in doc, fmt
    for finding in FAIL_ON:
        assert f"`{finding}`" in doc, finding
    for field in ("max_ulp_err", "median_ulp_err", "max_rel_err", "nonfinite_rows", "max_abs_err"):
        assert f"`{field}`" in doc, field


def test_language_model_shaped_dump(tmp_path: Path) -> None:
    # (B, T, V) logits with (B, T) labels and loss, (B, T, V) gradient: rows are B*T, as torch
    z, y, truth, grads = _case("float32", 6, 5, seed=11)
    np.save(tmp_path / "z.npy", z.reshape(2, 3, 5))
    np.save(tmp_path / "y.npy", y.reshape(2, 3))
    np.save(tmp_path / "loss.npy", _round(truth, "float32").reshape(2, 3))
    np.save(tmp_path / "grad.npy", np.stack([_round(g, "float32") for g in grads]).reshape(2, 3, 5))
    r = compare_files(
        tmp_path / "z.npy",
        tmp_path / "y.npy",
        loss=tmp_path / "loss.npy",
        grad=tmp_path / "grad.npy",
    )
    assert r.rows == 6 and r.ok and r.grad is not None and r.grad.measured == 6
    np.save(tmp_path / "bad.npy", np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(InputError, match=r"bad\.npy: shape 3 x 2, expected 6"):
        compare_files(tmp_path / "z.npy", tmp_path / "y.npy", loss=tmp_path / "bad.npy")


def test_float64_mean_gradient_scaled_exactly() -> None:
    # n = 3 counted rows: 3 * round(g / 3) is not a float64 in general; the report must measure
    # |3 * theirs - g*| exactly (a double-double product), as mpmath does
    z, y, _, grads = _case("float64", 3, 4, seed=2)
    with mpmath.workdps(TRUTH_DPS):
        theirs = np.array([[float(v / 3) for v in row] for row in grads])
        want = max(
            float(abs(3 * mpmath.mpf(float(t)) - v))
            for trow, grow in zip(theirs, grads, strict=True)
            for t, v in zip(trow, grow, strict=True)
        )
        mean = float(mpmath.fsum(mp_truth(z[i], int(y[i]))[0] for i in range(3)) / 3)
    r = compare(z, y, np.array([mean]), theirs, reduction="mean")
    assert r.grad is not None and r.grad.scale == 3
    assert r.grad.max_abs_err == pytest.approx(want, rel=1e-6, abs=0)


# --------------------------------------------------------------------------- options and names


def test_compare_options_object_and_keywords_agree() -> None:
    from smcheck import CompareOptions

    z, y, truth, _ = _case("float16", 6, 5, seed=11)
    theirs = _round(truth, "float16")
    opts = CompareOptions(cast="saturate", top=2, max_loss_ulp=1.0)
    assert compare(z, y, theirs, None, opts) == compare(
        z, y, theirs, cast="saturate", top=2, max_loss_ulp=1.0
    )
    with pytest.raises(UsageError, match="unknown reduction 'avg'"):
        compare(z, y, theirs, reduction="avg")


def test_deprecated_cast_mode_and_worst_still_work_warn_and_agree(tmp_path: Path) -> None:
    z, y, truth, _ = _case("float16", 8, 5, seed=12)
    theirs = _round(truth, "float16")
    theirs[3] = np.float16(float(theirs[3]) + 0.25)  # one row off: a worst row to list
    new = compare(z, y, theirs, cast="saturate", top=1)
    with pytest.warns(DeprecationWarning) as warned:
        old = compare(z, y, theirs, cast_mode="saturate", worst=1)
    assert old == new and len(new.worst) == 1 and new.cast == "saturate"
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in warned) == [
        "cast_mode",
        "worst",
    ]
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "loss.npy", theirs)
    files = {"labels": str(tmp_path / "y.npy"), "loss": str(tmp_path / "loss.npy")}
    with pytest.warns(DeprecationWarning, match=r"compare_files\(worst=\.\.\.\)"):
        old_f = compare_files(str(tmp_path / "z.npy"), **files, worst=1)
    assert old_f == compare_files(str(tmp_path / "z.npy"), **files, top=1)
