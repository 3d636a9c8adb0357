"""gradcheck: the truth against mpmath, central differences to their order, verdicts, injection."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smcheck.errors import InputError, UsageError
from smcheck.gradcheck import (
    CASES,
    COMPLEX_STEP,
    DEFAULT_TOLERANCES,
    central_difference,
    complex_step,
    gradcheck,
    synthetic,
)
from smcheck.methods import METHODS, MethodOutput
from smcheck.precisions import PRECISIONS, Precision

from .cases import adversarial_rows
from .conftest import TRUTH_DPS

SEED_ROW = np.array([[0.0, -800.0, 1.0]])
SEED_LABEL = np.array([1])
#: Below this the complex step's imaginary part exp(d) * h is subnormal in float64.
CS_FLOOR = float(np.finfo(np.float64).smallest_normal) / COMPLEX_STEP


def mp_grad(z: np.ndarray, y: int) -> list[mpmath.mpf]:
    """softmax - onehot at 60 digits, every entry to full relative accuracy: with
    e_j = exp(z_j - z_y) and s = sum_{j != y} e_j, g_j = e_j / (1 + s) and g_y = -s / (1 + s)
    (the form p_y - 1 would cancel to 0 for a margin above ~140 at 60 digits)."""
    with mpmath.workdps(TRUTH_DPS):
        zm = [mpmath.mpf(float(v)) for v in z]
        e = [mpmath.exp(v - zm[y]) for v in zm]
        s = mpmath.fsum(v for j, v in enumerate(e) if j != y)
        return [-s / (1 + s) if j == y else v / (1 + s) for j, v in enumerate(e)]


def _rows_for_truth() -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(3)
    rows = adversarial_rows(PRECISIONS["float64"])
    rows += [(rng.standard_normal(40) * s, int(rng.integers(40))) for s in (0.5, 5.0, 50.0)]
    rows += [(np.array([1e4, 1e4 - 20.0, 0.0]), 0), (np.array([1e4, 1e4 - 20.0, 0.0]), 1)]
    return rows


def _all_coords(z: np.ndarray, y: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = len(z)
    return np.repeat(z[None, :], c, axis=0), np.full(c, y), np.eye(c)


# --- the truth -----------------------------------------------------------------------------


def test_complex_step_matches_mpmath_to_1e14_relative() -> None:
    """Every coordinate of random and extreme rows (the seed's, margins 17..184, |z| = 1e4,
    ties, C = 1..1000), mpmath at 60 digits. Entries below CS_FLOOR (~2.4e-296) lose relative
    accuracy to float64's subnormals; there the bound is absolute (1e-300)."""
    worst = 0.0
    for z, y in _rows_for_truth():
        truth = mp_grad(z, y)
        got = complex_step(*_all_coords(z, y))
        with mpmath.workdps(TRUTH_DPS):
            for k, t in enumerate(truth):
                err = abs(mpmath.mpf(float(got[k])) - t)
                if abs(t) >= CS_FLOOR:
                    worst = max(worst, float(err / abs(t)))
                else:
                    assert err < 1e-300, (z[:4], y, k)
    assert worst <= 1e-14


def test_complex_step_along_a_direction_matches_mpmath() -> None:
    rng = np.random.default_rng(0)
    for z, y in _rows_for_truth()[-6:]:
        v = rng.standard_normal(len(z))
        truth = mp_grad(z, y)
        with mpmath.workdps(TRUTH_DPS):
            exact = mpmath.fsum(mpmath.mpf(float(a)) * t for a, t in zip(v, truth, strict=True))
            scale = mpmath.fsum(
                abs(mpmath.mpf(float(a)) * t) for a, t in zip(v, truth, strict=True)
            )
        got = complex_step(z[None, :], np.array([y]), v[None, :])[0]
        # a dot product: absolute error relative to sum |v_j g_j|
        assert abs(got - float(exact)) <= 4e-16 * float(scale) + 1e-300


def test_confident_label_entry_keeps_relative_accuracy() -> None:
    """Label at the max by 50: dL/dz_y = -(1 - p_y) ~ -2e-22; the pivot shift keeps it exact."""
    z, y = np.array([50.0, 0.0, -1.0]), 0
    truth = mp_grad(z, y)
    got = complex_step(z[None, :], np.array([y]), np.array([[1.0, 0.0, 0.0]]))[0]
    assert abs(got / float(truth[0]) - 1) < 1e-15
    cd = central_difference(z[None, :], np.array([y]), np.array([[1.0, 0.0, 0.0]]), "float64")
    assert abs(cd[0] - float(truth[0])) < 1e-25  # differences are accurate in absolute terms


@pytest.mark.parametrize("working, bound", [("float32", 2e-12), ("float64", 1e-15)])
def test_central_differences_agree_with_complex_step(working: str, bound: float) -> None:
    """Default step and Richardson: float64 arithmetic (float32 work) to ~1e-12, binary128
    (float64 work) to the complex step's own float64 rounding."""
    for z, y in _rows_for_truth():
        if len(z) > 100 and working == "float64":
            continue  # 1000 x 1000 binary128 takes seconds; the 40-class rows cover it
        args = _all_coords(z, y)
        cs = complex_step(*args)
        cd = central_difference(*args, working)
        assert np.max(np.abs(cs - cd) / np.maximum(1, np.abs(cs))) <= bound, (z[:4], y)


def test_central_differences_converge_at_their_order() -> None:
    """Truncation dominates at these steps: halving h divides the plain error by 4 (O(h^2)) and
    the Richardson error by 16 (O(h^4)), in binary128 where rounding is far below both."""
    z, y = np.array([[0.3, -1.2, 2.0, 0.7]]), np.array([2])
    u = np.array([[0.5, -0.2, 0.1, 0.8]])
    truth = complex_step(z, y, u)[0]
    for richardson, order in ((False, 4.0), (True, 16.0)):
        errs = [
            abs(central_difference(z, y, u, "float64", step=h, richardson=richardson)[0] - truth)
            for h in (0.2, 0.1)
        ]
        assert errs[0] / errs[1] == pytest.approx(order, rel=0.1)


def test_the_seeds_case_derivative() -> None:
    """[0, -800, 1], label 1: d/dz_1 = p_1 - 1 = -1 + 1e-348, which is -1 in float64; the
    other two are the softmax of [0, 1]."""
    g = complex_step(*_all_coords(SEED_ROW[0], 1))
    e = np.exp(-1.0)
    assert g.tolist() == pytest.approx([e / (1 + e), -1.0, 1 / (1 + e)], rel=1e-15)


# --- verdicts ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fused_passes_naive_and_shifted_fail_on_the_underflow_case(dtype: str) -> None:
    r = gradcheck(SEED_ROW, SEED_LABEL, dtype=dtype, methods=list(METHODS))
    verdict = {m.name: m.passed for m in r.methods}
    assert verdict == {
        "naive": False,
        "shifted": False,
        "fused": True,
        "log1p": True,
        "online": True,
    }
    by = {m.name: m for m in r.methods}
    assert by["shifted"].nonfinite_grad_rows == 1 and by["shifted"].max_abs_err is None
    assert by["shifted"].worst is not None and by["shifted"].worst.probe == "class 1"
    assert by["fused"].max_abs_err is not None and by["fused"].max_abs_err < PRECISIONS[dtype].eps
    assert r.ok and r.truth.ok


@pytest.mark.parametrize("dtype", list(PRECISIONS))
def test_stable_methods_pass_every_synthetic_case_by_default(dtype: str) -> None:
    s = synthetic("all", rows=25, classes=12, seed=1)
    r = gradcheck(
        s.logits, s.labels, dtype=dtype, methods=["fused", "log1p", "online"], row_cases=s.cases
    )
    assert r.truth.ok
    assert all(m.passed for m in r.methods), [(m.name, m.worst) for m in r.methods]
    # the margin the defaults leave: a correct gradient uses at most a third of the tolerance
    assert all(m.worst is not None and m.worst.ratio < 0.34 for m in r.methods)


def _fused_with(change: str) -> object:
    def fn(x: np.ndarray, y: np.ndarray, t: Precision, a: Precision) -> MethodOutput:
        out = METHODS["fused"](x, y, t, a)
        assert out.grad is not None
        g = out.grad.astype(np.float64)
        rows = np.arange(len(y))
        if change == "no-onehot":
            g[rows, y] += 1.0  # softmax only: the -onehot term forgotten
        elif change == "sign-flip":  # the most probable class that is not the label
            other = np.where(np.arange(x.shape[1]) == y[:, None], -np.inf, x.astype(float))
            k = other.argmax(axis=1)
            g[rows, k] = -g[rows, k]
        elif change == "small":
            g[rows, y] += 1e-4
        return MethodOutput(out.loss, g.astype(x.dtype), out.overflow, out.underflow)

    return fn


@pytest.mark.parametrize("change", ["no-onehot", "sign-flip"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_a_wrong_gradient_is_caught(change: str, dtype: str) -> None:
    s = synthetic("random", rows=8, classes=50, seed=2)
    r = gradcheck(
        s.logits,
        s.labels,
        dtype=dtype,
        methods=["fused"],
        custom={"mine": _fused_with(change)},
        gate=["mine"],
    )
    mine = {m.name: m for m in r.methods}["mine"]
    assert not mine.passed and not r.ok
    assert mine.failed_entries > 0
    assert {m.name: m.passed for m in r.methods}["fused"]
    # its own loss says so too, where the working dtype can resolve it
    if dtype != "bfloat16":
        assert mine.consistency.verdict == "inconsistent"


def test_a_wrong_gradient_is_caught_by_directions_alone() -> None:
    """The sign flip on a coordinate outside the probed set shows in the directional checks."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 30))
    y = np.zeros(4, dtype=np.int64)
    g = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    g[:, 0] -= 1
    z[:, 29] = z.max(axis=1) - 0.5  # a probable class...
    g = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    g[:, 0] -= 1
    g[:, 29] = -g[:, 29]  # ...whose sign is flipped
    r = gradcheck(
        z,
        y,
        dtype="float64",
        methods=["fused"],
        gradients={"given": g},
        gate=["given"],
        sample=0,
        directions=8,
    )
    given = {m.name: m for m in r.methods}["given"]
    assert not given.passed and given.failed_directions > 0
    assert given.consistency.verdict == "unavailable"


def test_tolerance_options_change_the_verdict() -> None:
    """A 1e-4 error on the label entry: over the float32 default (1e-5), under atol 1e-3."""
    s = synthetic("random", rows=6, classes=20, seed=4)
    kw = {
        "dtype": "float32",
        "methods": [],
        "custom": {"off": _fused_with("small")},
        "gate": ["off"],
    }
    assert not gradcheck(s.logits, s.labels, **kw).ok  # type: ignore[arg-type]
    loose = gradcheck(s.logits, s.labels, atol=1e-3, **kw)  # type: ignore[arg-type]
    assert loose.ok and loose.atol == 1e-3 and loose.tolerance_source == "given"
    assert loose.rtol == DEFAULT_TOLERANCES["float32"][1]
    # rtol alone scales with |g|: the label entry is about -1, so rtol 1e-3 covers 1e-4 there
    assert gradcheck(s.logits, s.labels, rtol=1e-3, **kw).ok  # type: ignore[arg-type]
    # and a zero tolerance fails even the correct fused gradient
    strict = gradcheck(s.logits, s.labels, dtype="float32", atol=0, rtol=0)
    assert not strict.ok and strict.truth.ok and not strict.methods[2].passed


def test_truth_agreement_and_the_reference_witness() -> None:
    s = synthetic("all", rows=10, classes=8)
    r64 = gradcheck(s.logits, s.labels, dtype="float64")
    assert r64.truth.agreement <= 1e-15 and r64.truth.reference_agreement <= 1e-15
    assert "binary128" in r64.truth.central_difference
    r32 = gradcheck(s.logits, s.labels, dtype="float32")
    assert r32.truth.agreement <= 2e-12 and r32.truth_agreement == r32.truth.agreement
    assert r32.truth.worst_fraction < 1e-5 and r32.truth.ok


# --- consistency ---------------------------------------------------------------------------


def test_consistency_is_inconclusive_below_the_dtype_resolution() -> None:
    """Differencing float16 losses with h = 1e-4: z +- h rounds to z for |z| >= 0.25."""
    z = np.array([[3.0, 1.0, -2.0, 0.5]])
    r = gradcheck(z, np.array([0]), dtype="float16", methods=["fused"], consistency_step=1e-4)
    cons = r.methods[0].consistency
    assert cons.verdict == "inconclusive" and cons.below_resolution >= 1
    auto = gradcheck(z, np.array([0]), dtype="float16", methods=["fused"]).methods[0]
    assert auto.consistency.verdict == "consistent"


# --- input handling ------------------------------------------------------------------------


def test_synthetic_is_reproducible_and_mixes_every_case() -> None:
    a, b = synthetic(rows=10, seed=7), synthetic(rows=10, seed=7)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.logits, synthetic(rows=10, seed=8).logits)
    assert set(a.cases) == set(CASES)
    assert a.logits[0, :3].tolist() == [0.0, -800.0, 1.0] and a.labels[0] == 1
    u = synthetic("uniform", rows=3, classes=5)
    assert (u.logits == u.logits[:, :1]).all()
    c = synthetic("confident", rows=4, classes=5)
    assert (c.logits.argmax(axis=1) == c.labels).all()
    w = synthetic("wrong", rows=4, classes=5)
    assert (w.logits.argmin(axis=1) == w.labels).all()
    with pytest.raises(UsageError):
        synthetic("nope")
    with pytest.raises(UsageError):
        synthetic(classes=1)


def test_label_free_checks_argmax_and_argmin() -> None:
    z = np.array([[0.0, -800.0, 1.0], [2.0, 2.0, 2.0]])
    r = gradcheck(z, None, dtype="float32")
    assert r.label_free and r.rows == 3  # the uniform row's argmax is its argmin
    shifted = {m.name: m for m in r.methods}["shifted"]
    assert shifted.worst is not None and shifted.worst.label == 1  # the argmin of the seed's row
    with pytest.raises(UsageError):
        gradcheck(z, None, gradients={"g": np.zeros_like(z)})


def test_full_checks_every_coordinate_and_rows_samples() -> None:
    s = synthetic("all", rows=12, classes=6)
    r = gradcheck(s.logits, s.labels, full=True, directions=0)
    assert r.entries_per_row == 6 and r.methods[0].checked_entries == 72
    assert r.methods[0].checked_directions == 0
    sample = gradcheck(s.logits, s.labels, rows=4, row_cases=s.cases)
    assert sample.rows == 4 and sample.input_rows == 12
    assert sum(k for _, k in sample.cases) == 4
    with pytest.raises(UsageError, match="--full"):
        gradcheck(np.zeros((64, 20000)), np.zeros(64, dtype=int), full=True)


def test_skipped_ignored_and_empty_inputs() -> None:
    z = np.array([[0.0, 1.0], [np.nan, 1.0], [np.inf, 0.0], [1.0, 2.0]])
    r = gradcheck(z, np.array([0, 1, 0, -100]))
    assert r.rows == 1 and r.skipped_nonfinite == 2 and r.ignored == 1 and r.ok
    empty = gradcheck(z[1:3], np.array([0, 1]))
    assert empty.rows == 0 and not empty.ok and not empty.methods[0].passed
    assert any("no row" in n for n in empty.notes)


def test_bad_arguments_raise_usage_or_input_errors() -> None:
    z, y = SEED_ROW, SEED_LABEL
    with pytest.raises(UsageError, match="gate"):
        gradcheck(z, y, gate=["mine"])
    with pytest.raises(UsageError, match="method"):
        gradcheck(z, y, methods=["nope"])
    with pytest.raises(UsageError, match="atol"):
        gradcheck(z, y, atol=-1)
    with pytest.raises(UsageError):
        gradcheck(z, y, consistency_step=0)
    with pytest.raises(InputError):
        gradcheck(z, y, gradients={"g": np.zeros((2, 3))})
    with pytest.raises(InputError):
        gradcheck(z, np.array([3]))
    # a gated method that is not listed is run anyway
    r = gradcheck(z, y, methods=["naive"], gate=["fused"])
    assert [m.name for m in r.methods] == ["naive", "fused"] and r.ok


def test_one_class_rows() -> None:
    """C = 1: the loss is 0 and so is its gradient; nothing to resolve, nothing fails."""
    r = gradcheck(np.array([[1.0], [2.0]]), np.array([0, 0]))
    assert r.ok and all(m.passed for m in r.methods)
    assert all(m.max_abs_err == 0.0 for m in r.methods)


@settings(max_examples=30, deadline=None)
@given(
    z=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
        elements=st.floats(-100, 100, allow_nan=False),  # z - max z fits float8_e4m3fn (448)
    ),
    dtype=st.sampled_from(list(PRECISIONS)),
    data=st.data(),
)
def test_property_truth_is_trusted_and_fused_passes(
    z: np.ndarray, dtype: str, data: st.DataObject
) -> None:
    """Finite rows in any dtype: the two truths agree and a correct gradient passes. (Beyond
    |z - max z| > 448 fused's shift itself overflows float8_e4m3fn: a finding, not a check bug.)"""
    y = data.draw(hnp.arrays(np.int64, z.shape[0], elements=st.integers(0, z.shape[1] - 1)))
    r = gradcheck(z, y, dtype=dtype, methods=["fused", "log1p"], directions=1)
    assert r.truth.ok
    if r.rows:
        assert all(m.passed for m in r.methods), [m.worst for m in r.methods]


def test_gradcheck_options_object_and_keywords_agree() -> None:
    from smcheck import GradcheckOptions

    z = np.array([[0.0, -800.0, 1.0], [1.0, 2.0, 3.0]])
    y = np.array([1, 0])
    opts = GradcheckOptions(dtype="float32", methods=("fused",), directions=1, top=1)
    assert gradcheck(z, y, opts) == gradcheck(
        z, y, dtype="float32", methods=("fused",), directions=1, top=1
    )
    with pytest.raises(UsageError, match="directions must be >= 0"):
        gradcheck(z, y, opts, directions=-1)
