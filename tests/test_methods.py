"""Every method in every dtype against mpmath, thresholds where theory puts them, edge cases."""

from __future__ import annotations

import math

import ml_dtypes
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smcheck import METHODS, cross_entropy, reference
from smcheck.core import prepare
from smcheck.errors import InputError
from smcheck.precisions import PRECISIONS, get_precision

from .cases import adversarial_rows
from .conftest import mp_truth

STABLE = ("fused", "log1p", "online")
ALL_DTYPES = list(PRECISIONS)


def _rounded(z: np.ndarray, name: str) -> np.ndarray:
    return prepare(z[None, :], None, dtype=name).x.astype(np.float64)[0]


# --- against mpmath -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_DTYPES)
@pytest.mark.parametrize("method", list(METHODS))
def test_methods_against_mpmath(name: str, method: str) -> None:
    """Where a method returns finite values they are within a stated bound of the truth.

    Bound for the loss: 8 eps (1 + |L| + |z_y - m| + log2 C) absolute (the shift z - m and the
    final subtraction each round once in T; the sum in A adds log2(C) roundings). Gradient:
    8 eps + the smallest subnormal per entry (p_j = exp(d_j)/s has relative error a few eps plus
    |d_j| eps / 2 from the rounded shift, and |d_j| exp(d_j) <= 1/e). Stable methods must be
    finite on every row here (magnitudes <= max/4). The chained methods also lose
    smallest_subnormal / p_y once p_y is subnormal.
    """
    p = get_precision(name)
    for z, y in adversarial_rows(p):
        x = _rounded(z, name)
        r = cross_entropy(z[None, :], np.array([y]), method=method, dtype=name)
        loss_t, grad_t = mp_truth(x, y)
        lt = float(loss_t)
        if method in STABLE:
            assert np.isfinite(r.loss[0]), (method, name, z[:4], y)
            assert np.isfinite(r.grad).all(), (method, name, z[:4], y)
            assert not r.overflow[0]
        if np.isfinite(r.loss[0]):
            m = float(np.max(x))
            bound = 8 * p.eps * (1 + abs(lt) + abs(m - x[y]) + math.log2(len(x)))
            if method in ("naive", "shifted"):
                # -log(p_y) of a subnormal p_y: p_y carries only ulp/p_y relative accuracy
                bound += 2 * math.exp(min(lt + p.ln_smallest_subnormal, 700.0))
            assert abs(float(r.loss[0]) - lt) <= bound, (method, name, z[:4], y, r.loss[0], lt)
        if np.isfinite(r.grad).all():
            gt = np.array([float(g) for g in grad_t])
            err = np.max(np.abs(r.grad[0].astype(np.float64) - gt))
            assert err <= 8 * p.eps + p.smallest_subnormal, (method, name, z[:4], y, err)


@pytest.mark.parametrize("name", ["float64", "float32", "float16", "bfloat16"])
def test_log1p_keeps_relative_accuracy_on_confident_rows_where_fused_rounds_to_zero(
    name: str,
) -> None:
    p = get_precision(name)
    for margin in (17.0, 40.0):
        z = np.array([margin, 0.0])
        loss_t = float(mp_truth(_rounded(z, name), 0)[0])
        got = float(cross_entropy(z[None, :], np.array([0]), method="log1p", dtype=name).loss[0])
        if loss_t >= p.smallest_normal:
            assert abs(got - loss_t) <= 4 * p.eps * loss_t, (name, margin, got, loss_t)
    # fused rounds the confident loss to exactly 0 once 1 + exp(-margin) rounds to 1
    assert cross_entropy(np.array([[17.0, 0.0]]), np.array([0]), dtype="float32").loss[0] == 0
    assert cross_entropy(np.array([[40.0, 0.0]]), np.array([0]), dtype="float64").loss[0] == 0


def test_pluskid_case() -> None:
    z = np.array([[0.0, -800.0, 1.0]])
    y = np.array([1])
    f = cross_entropy(z, y, method="fused")
    assert f.loss[0] == 801.3132616875182
    np.testing.assert_array_equal(f.grad[0], [0.2689414213699951, -1.0, 0.7310585786300049])
    for m in ("naive", "shifted"):
        r = cross_entropy(z, y, method=m)
        assert not np.isfinite(r.grad).all()
        assert r.nonfinite_grad[0]


# --- thresholds where theory puts them --------------------------------------------------------


def _neighbours(name: str, t: float) -> tuple[float, float]:
    """Largest value of the dtype <= t and smallest > t."""
    p = get_precision(name)
    if p.bits <= 16:  # enumerate every value of the type
        bits = np.arange(2**p.bits, dtype=np.uint16 if p.bits == 16 else np.uint8)
        with np.errstate(invalid="ignore"):  # NaN bit patterns are dropped just below
            vals = bits.view(p.dtype).astype(np.float64)
        vals = np.sort(vals[np.isfinite(vals)])
    else:
        c = np.array(t).astype(p.dtype)
        vals = np.array([np.nextafter(c, -np.inf, dtype=p.dtype), c, np.nextafter(c, np.inf)])
        vals = vals.astype(np.float64)
    return float(vals[vals <= t].max()), float(vals[vals > t].min())


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64", "float8_e5m2"])
def test_naive_exp_overflows_exactly_above_ln_max(name: str) -> None:
    p = get_precision(name)
    below, above = _neighbours(name, p.ln_max)
    acc = "float64" if name == "float64" else "float32"
    ok = cross_entropy(
        np.array([[below, 0.0]]), np.array([1]), method="naive", dtype=name, accum=acc
    )
    bad = cross_entropy(
        np.array([[above, 0.0]]), np.array([1]), method="naive", dtype=name, accum=acc
    )
    assert not ok.overflow[0] and np.isfinite(ok.loss[0])
    assert bad.overflow[0] and not np.isfinite(bad.loss[0])


def test_seed_thresholds_table() -> None:
    expected = {"float64": 709.78, "float32": 88.72, "bfloat16": 88.72, "float16": 11.09}
    for name, ln_max in expected.items():
        assert round(get_precision(name).ln_max, 2) == pytest.approx(ln_max, abs=0.01)
    assert round(get_precision("float16").ln_smallest_subnormal, 2) == -16.64
    assert round(get_precision("float32").ln_smallest_subnormal, 2) == -103.28


def test_naive_sum_overflows_in_the_accumulation_dtype() -> None:
    # exp(11) = 59874 fits float16, but two of them (119748) do not: only a float16 sum overflows
    z = np.array([[11.0, 11.0, 0.0]])
    f16 = cross_entropy(z, np.array([0]), method="naive", dtype="float16", accum="float16")
    f32 = cross_entropy(z, np.array([0]), method="naive", dtype="float16", accum="float32")
    assert f16.overflow[0] and not f32.overflow[0]
    assert np.isfinite(f32.loss[0])


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64"])
def test_shifted_gradient_breaks_where_p_y_underflows_or_its_reciprocal_overflows(
    name: str,
) -> None:
    """The chained backward computes g_y = -1/p_y in T: it is -inf once p_y underflows to 0 -
    and already once p_y < 1/max (11.09 margin in float16, 88.72 in float32), because 1/p_y
    overflows; either way <p, g> = -inf and the row turns to NaN. Decided against the exact p_y
    from mpmath, with a factor-4 band around each threshold left unasserted."""
    p = get_precision(name)
    threshold = max(p.smallest_subnormal, 1 / p.max)
    for margin in np.linspace(1, -p.ln_smallest_subnormal + 8, 80):
        z = np.array([0.0, -margin, 0.5])
        x = _rounded(z, name)
        r = cross_entropy(z[None, :], np.array([1]), method="shifted", dtype=name)
        loss_t, _ = mp_truth(x, 1)
        p_y = float(mpmath.exp(-loss_t))
        if p_y < threshold / 4:
            assert r.nonfinite_grad[0], (name, margin)
            assert r.underflow[0] or r.overflow[0], (name, margin)
        elif p_y > 4 * threshold:
            assert not r.nonfinite_grad[0] and not r.underflow[0], (name, margin)
        assert r.nonfinite_grad[0] == (r.underflow[0] or r.overflow[0])
        assert r.underflow[0] == (p_y < p.smallest_subnormal / 4) or (
            p.smallest_subnormal / 4 <= p_y <= 4 * p.smallest_subnormal
        )
        f = cross_entropy(z[None, :], np.array([1]), method="fused", dtype=name)
        assert np.isfinite(f.grad).all() and np.isfinite(f.loss).all()


# --- property tests ---------------------------------------------------------------------------


@st.composite
def finite_rows(draw: st.DrawFn) -> tuple[str, np.ndarray, np.ndarray]:
    name = draw(st.sampled_from(ALL_DTYPES))
    p = get_precision(name)
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 40))
    bound = min(p.max / 4, 1e30)
    x = draw(
        hnp.arrays(
            np.float64,
            (n, c),
            elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False),
        )
    )
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return name, x, y


@settings(max_examples=150, deadline=None)
@given(finite_rows())
def test_stable_methods_finite_on_finite_input(case: tuple[str, np.ndarray, np.ndarray]) -> None:
    name, x, y = case
    for method in STABLE:
        r = cross_entropy(x, y, method=method, dtype=name)
        assert np.isfinite(r.loss).all(), (method, name)
        assert np.isfinite(r.grad).all(), (method, name)
        assert not r.overflow.any()


@settings(max_examples=100, deadline=None)
@given(finite_rows())
def test_invariants_gradient_rows_sum_to_zero_and_loss_nonnegative(
    case: tuple[str, np.ndarray, np.ndarray],
) -> None:
    name, x, y = case
    ref = reference(x, y, dtype=name)
    full = ref.grad + (ref.grad_lo if ref.grad_lo is not None else 0)
    assert np.all(np.abs(full.sum(axis=1)) <= 1e-12)
    assert np.all(ref.loss >= 0)
    # shift invariance of the reference: adding a constant exactly representable in float64
    if name != "float64":
        x64 = prepare(x, None, dtype=name).x.astype(np.float64)
        shifted = reference(x64 + 0.5, y, dtype="float64")
        np.testing.assert_allclose(shifted.loss, ref.loss, rtol=1e-12, atol=1e-300)


# --- edge semantics ---------------------------------------------------------------------------


def test_edge_rows() -> None:
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [1.0, nan, 0.0],  # NaN: undefined
            [inf, 1.0, 0.0],  # +inf: undefined
            [-inf, -inf, -inf],  # all -inf: undefined
            [-inf, 1.0, 0.0],  # label on a masked (-inf) class: loss +inf, grad finite
            [2.0, 2.0, -inf],  # ties with a masked class
        ]
    )
    y = np.array([0, 0, 0, 0, 1])
    ref = reference(x, y, dtype="float64")
    assert np.isnan(ref.loss[:3]).all() and np.isnan(ref.grad[:3]).all()
    assert ref.loss[3] == inf
    assert ref.grad[3, 0] == -1.0
    assert ref.loss[4] == pytest.approx(math.log(2), rel=1e-15)
    np.testing.assert_array_equal(ref.grad[4], [0.5, -0.5, 0.0])
    assert ref.finite_input.tolist() == [False] * 5
    for method in STABLE:
        r = cross_entropy(x, y, method=method)
        assert r.loss[3] == inf and r.grad[3, 0] == -1.0, method
        assert r.loss[4] == pytest.approx(math.log(2), rel=1e-15), method
        assert not r.overflow.any()  # flags are only raised on rows with finite input


def test_single_class_and_ties() -> None:
    for method in METHODS:
        r = cross_entropy(np.array([[5.0]]), np.array([0]), method=method)
        assert r.loss[0] == 0 and r.grad[0, 0] == 0, method
        t = cross_entropy(np.array([[1.0, 1.0]]), np.array([0]), method=method)
        assert t.loss[0] == pytest.approx(math.log(2), rel=1e-15), method
        np.testing.assert_allclose(t.grad[0], [-0.5, 0.5], rtol=1e-15)


def test_labels_validated_and_ignore_index() -> None:
    x = np.zeros((3, 4))
    with pytest.raises(InputError, match="row 1: label 4 is outside"):
        cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="row 2: label -1"):
        cross_entropy(x, np.array([0, 1, -1]))
    r = cross_entropy(x, np.array([0, -100, 1]))
    assert r.ignored.tolist() == [False, True, False]
    assert r.loss[1] == 0 and (r.grad[1] == 0).all()
    assert r.loss[0] == pytest.approx(math.log(4), rel=1e-15)
    r = cross_entropy(x, np.array([7, 1, 1]), ignore_index=7)
    assert r.ignored.tolist() == [True, False, False]


def test_online_all_minus_inf_prefix_is_not_nan() -> None:
    z = np.full((1, 300), -np.inf)
    z[0, 290] = 0.0
    z[0, 299] = 1.0
    r = cross_entropy(z, np.array([299]), method="online", dtype="float32")
    assert r.loss[0] == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)


def test_methods_run_in_the_working_dtype() -> None:
    z = np.array([[1.0, 2.0, 3.0]])
    for name in ALL_DTYPES:
        for method in METHODS:
            r = cross_entropy(z, np.array([0]), method=method, dtype=name)
            assert r.loss.dtype == get_precision(name).dtype, (name, method)
            assert r.grad.dtype == get_precision(name).dtype, (name, method)
    assert get_precision("bfloat16").dtype == np.dtype(ml_dtypes.bfloat16)


def test_label_free_loss_matrix_matches_per_label_runs() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5)) * 4
    for method in METHODS:
        free = cross_entropy(x, None, method=method, dtype="float16")
        assert free.loss.shape == (3, 5) and free.grad is None
        for k in range(5):
            lab = cross_entropy(x, np.full(3, k), method=method, dtype="float16")
            np.testing.assert_array_equal(free.loss[:, k], lab.loss)


def test_float8_e4m3fn_overflow_is_flagged_although_it_gives_nan() -> None:
    # e4m3fn has no inf: the shift 0 - 300 = -300 fits, but -200 - 300 = -500 > 448 overflows to
    # NaN; that is an overflow of an intermediate on finite input and must be flagged
    z = np.array([[300.0, -200.0, 0.0]])
    for method in ("shifted", "fused", "log1p", "online"):
        r = cross_entropy(z, np.array([0]), method=method, dtype="float8_e4m3fn")
        assert r.overflow[0], method
    ok = cross_entropy(np.array([[300.0, 100.0]]), np.array([0]), dtype="float8_e4m3fn")
    assert not ok.overflow[0] and np.isfinite(ok.grad).all()


def test_label_errors_name_the_global_row_with_an_offset() -> None:
    with pytest.raises(InputError, match="row 1001: label 9"):
        prepare(np.zeros((3, 4)), np.array([0, 9, 1]), row_offset=1000)


def test_nan_rows_raise_no_warning_in_any_dtype() -> None:
    # pytest turns warnings into errors: NaN input rows are findings, never noise
    x = np.array([[np.nan, 1.0, 2.0], [1.0, 2.0, 3.0]])
    for name in ALL_DTYPES:
        for method in METHODS:
            r = cross_entropy(x, np.array([0, 1]), method=method, dtype=name)
            assert not r.finite_input[0] and r.finite_input[1]
        reference(x, np.array([0, 1]), dtype=name)


@pytest.mark.parametrize("name", ["float64", "float32", "float16", "bfloat16"])
def test_chained_backward_is_the_literal_two_layer_formula(name: str) -> None:
    """naive/shifted's gradient equals p * (g - <p, g>) written out with a full one-hot g and a
    full reduction in the accumulation dtype - including overflow, underflow and NaN rows."""
    from smcheck.precisions import accumulate, resolve_accum

    t = get_precision(name)
    a = resolve_accum(t, None)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((40, 9)) * 6
    x[0, 3] = 2000.0  # exp overflow in every dtype but float64: p = NaN
    x[1, :] = [0.0, -800.0, 1.0, 0, 0, 0, 0, 0, 0]  # p_y underflows for label 1
    y = rng.integers(0, 9, 40)
    y[1] = 1
    for method in ("naive", "shifted"):
        r = cross_entropy(x, y, method=method, dtype=name)
        xr = prepare(x, None, dtype=name).x
        with np.errstate(all="ignore"):
            z = xr if method == "naive" else xr - xr.max(axis=1)[:, None]
            e = np.exp(z)
            s = accumulate(e, a)
            p = (e.astype(a.dtype) / s[:, None]).astype(t.dtype)
            g = np.zeros_like(p)
            g[np.arange(40), y] = np.divide(t.dtype.type(-1), p[np.arange(40), y])
            dot = accumulate(p * g, a)
            want = p * (g.astype(a.dtype) - dot[:, None]).astype(t.dtype)
        np.testing.assert_array_equal(r.grad.astype(np.float64), want.astype(np.float64))


def test_naive_sum_underflow_is_an_underflow_not_an_overflow() -> None:
    # exp(-20) underflows to 0 in float16 (below ln(sub/2) = -17.33): s = 0, p = 0/0 = NaN
    z = np.array([[-20.0, -21.0, -22.0]])
    r = cross_entropy(z, np.array([0]), method="naive", dtype="float16")
    assert r.underflow[0] and not r.overflow[0] and np.isnan(r.loss[0])
    r = cross_entropy(np.array([[-1000.0, -1001.0, -1002.0]]), np.array([0]), method="naive")
    assert r.underflow[0] and not r.overflow[0]
    free = cross_entropy(z, None, method="naive", dtype="float16")
    assert free.underflow.all() and not free.overflow.any()


def test_benign_shift_overflow_is_not_an_overflow() -> None:
    # float16: -60000 - 60000 overflows to -inf, exp(-inf) = 0 is exact; the loss (label 0) is
    # exactly 0 to float16 and the gradient exact: nothing to flag
    z = np.array([[60000.0, -60000.0, 0.0]])
    for method in ("fused", "log1p", "online"):
        r = cross_entropy(z, np.array([0]), method=method, dtype="float16")
        assert not r.overflow[0], method
        assert r.loss[0] == 0 and r.grad[0].tolist() == [0.0, 0.0, 0.0]
    # label on the class whose shift overflowed: the true loss 120000 exceeds 65504 -> inf
    r = cross_entropy(z, np.array([1]), method="fused", dtype="float16")
    assert r.loss[0] == np.inf and np.isfinite(r.grad).all()


def test_cast_report_counts_saturated_values_as_changed() -> None:
    from smcheck.precisions import cast

    _, rep = cast(np.array([500.0, 1.0]), get_precision("float8_e4m3fn"), mode="saturate")
    assert rep.saturated == 1 and rep.changed == 1
    assert rep.max_rel_change == pytest.approx((500 - 448) / 500)


def test_label_free_mean_is_over_pairs() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0]])
    # every -log p_k is log 2: the mean over the 4 (row, class) pairs is log 2
    assert reference(x, None).reduced("mean") == pytest.approx(math.log(2), rel=1e-15)


# --- shared work ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRECISIONS))
@pytest.mark.parametrize("options", ["labels", "label-free", "weights"])
def test_shared_shifted_softmax_gives_the_same_bits_as_each_method_alone(
    name: str, options: str
) -> None:
    """eval computes z - max, exp and their sum once for shifted, fused and log1p; each method's
    output must not change by a single bit (NaN, inf and -inf rows included)."""
    from smcheck.methods import SHARED_SOFTMAX_METHODS, shifted_softmax

    p = get_precision(name)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 300)) * 6
    x[1, 5] = np.nan
    x[2, 7] = np.inf
    x[3, :40] = -np.inf
    x[4, 0] = p.max / 2
    x[4, 1] = -p.max / 2
    x[5] *= 40
    labels = None if options == "label-free" else rng.integers(0, 300, 12)
    weight = rng.uniform(0.5, 2.0, 300) if options == "weights" else None
    prep = prepare(x, labels, dtype=name, weight=weight)
    a = get_precision(p.default_accum)
    targets = None
    if prep.coeff is not None:
        from smcheck.methods import LossTargets

        targets = LossTargets(prep.coeff, prep.weight, 0.0, None, prep.safe_labels)
    with np.errstate(invalid="ignore"):  # NaN rows
        shared = shifted_softmax(prep.x, p, a)
        for method in sorted(SHARED_SOFTMAX_METHODS):
            fn = METHODS[method]
            alone = fn(prep.x, prep.safe_labels, p, a, targets)
            reused = fn(prep.x, prep.safe_labels, p, a, targets, shared=shared)
            for field in ("loss", "grad", "overflow", "underflow"):
                u, v = getattr(alone, field), getattr(reused, field)
                if u is None:
                    assert v is None
                    continue
                assert u.dtype == v.dtype, (method, field)
                assert np.array_equal(u.view(np.uint8), v.view(np.uint8)), (
                    method,
                    field,
                )  # bit for bit, NaN payloads included


# --- regressions from the outside review of the float32 carrier ------------------------------


def test_log1p_leaves_out_the_argmax_of_z_even_where_a_shift_overflows_to_nan() -> None:
    """float8_e4m3fn has no inf: 448 - (-448) overflows to NaN. log1p's "1" is exp(z_k - m) at
    k = argmax z, not at the NaN shift (where d's argmax would stop): the rows stay NaN, alone
    and with the shared softmax, labelled and label-free."""
    from smcheck.methods import shifted_softmax

    t, a = get_precision("float8_e4m3fn"), get_precision("float32")
    x = np.array([[448.0, -448.0, 0.0], [448.0, -448.0, 0.0]], np.float32)
    y = np.array([2, 0])
    alone = cross_entropy(x, y, method="log1p", dtype=t)
    assert np.isnan(alone.loss).all() and bool(alone.overflow.all())
    with np.errstate(invalid="ignore"):
        shared = shifted_softmax(x, t, a)
        reused = METHODS["log1p"](x, y, t, a, shared=shared)
        free_alone = METHODS["log1p"](x, None, t, a)
        free_shared = METHODS["log1p"](x, None, t, a, shared=shared)
    assert np.isnan(reused.loss).all()
    assert np.array_equal(free_alone.loss, free_shared.loss, equal_nan=True)
    assert np.isnan(free_alone.loss).all()


@pytest.mark.parametrize("accum", ["float16", "bfloat16", "float32"])
def test_one_class_log1p_loss_is_zero_with_any_accumulation(accum: str) -> None:
    """C = 1: p = 1 and the loss is exactly 0. A one-term sum in a 16-bit accumulation dtype was
    a view of its input, which log1p restores after summing: the loss read log(2)."""
    for method in METHODS:
        r = cross_entropy(np.zeros((3, 1), np.float32), [0, 0, 0], method=method, accum=accum,
                          dtype="float16")  # fmt: skip
        assert r.loss.tolist() == [0.0, 0.0, 0.0], method
