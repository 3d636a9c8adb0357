"""evaluate(): numbers against independent references (mpmath, exact rationals, hand counts)."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest

import smcheck
from smcheck.errors import InputError, UsageError
from smcheck.evaluate import PerRowWriter, evaluate, per_row_columns
from smcheck.metrics import default_thresholds
from smcheck.precisions import get_precision
from smcheck.render.eval_formats import to_dict

from .conftest import TRUTH_DPS, mp_truth


def _rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(get_precision(dtype).dtype).astype(np.float64)


# ---------------------------------------------------------------- known counts


def test_float16_overflow_count_is_the_number_of_rows_above_ln_max() -> None:
    # 737 of 2000 rows have one logit in (11.09, 22.9]: exactly those overflow exp in float16
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 5, (2000, 8)).astype(np.float32)  # margins <= 5: no backward overflow
    over = rng.choice(2000, 737, replace=False)
    x[over, rng.integers(0, 8, 737)] = rng.uniform(11.2, 22.9, 737)
    y = rng.integers(0, 8, 2000)
    rep = evaluate(x, y, dtype="float16")
    naive = rep.method("naive")
    assert naive.overflow_rows == 737
    assert naive.nan_loss_rows + naive.inf_loss_rows == 737
    assert naive.verdict == "broken" and not naive.ok and not naive.gated
    assert rep.input.rows_over_ln_max == 737
    fused = rep.method("fused")
    assert fused.verdict == "ok" and fused.gated and rep.ok
    assert "naive overflows on 737 rows: exp(z) exceeds max float16" in rep.verdict
    assert "> ln(max) = 11.09" in rep.verdict
    assert naive.overflow_causes == (("exp", 737),)
    assert "use a fused log-softmax" in rep.verdict


def test_ignored_and_nonfinite_rows_are_not_eligible() -> None:
    x = np.zeros((6, 3), dtype=np.float32)
    x[1, 0] = np.nan
    x[2, 2] = np.inf
    x[3, 1] = -np.inf
    y = np.array([0, 1, 2, -100, 1, 0])
    rep = evaluate(x, y)
    assert rep.input.ignored_rows == 1
    assert rep.input.nonfinite_input_rows == 3
    assert rep.input.eligible_rows == 3  # rows 0, 4, 5 (row 3 is ignored and non-finite)
    assert all(m.measured == 3 for m in rep.methods)
    assert all(m.nan_loss_rows == 0 and m.nonfinite_grad_rows == 0 for m in rep.methods)


def test_no_eligible_row_is_not_a_pass() -> None:
    x = np.full((3, 4), np.nan, dtype=np.float32)
    rep = evaluate(x, np.array([0, 1, 2]))
    assert not rep.ok
    assert rep.verdict.startswith("no eligible row")
    d = to_dict(rep)
    assert d["methods"]["fused"]["loss_max_rel_err"] is None
    assert d["methods"]["fused"]["mean_loss_rel_err"] is None
    empty = evaluate(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert not empty.ok and empty.verdict.startswith("no eligible row: the input has no rows")


# ---------------------------------------------------------------- errors against mpmath


def test_loss_errors_match_mpmath() -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((60, 7)) * 4).astype(np.float32)
    y = rng.integers(0, 7, 60)
    dtype = "float16"
    xr = _rounded(x, dtype)
    truths = [mp_truth(xr[i], int(y[i]))[0] for i in range(60)]
    rep = evaluate(x, y, dtype=dtype, methods=["fused", "log1p"], chunk_rows=9)
    for name in ("fused", "log1p"):
        loss = smcheck.cross_entropy(x, y, method=name, dtype=dtype).loss.astype(np.float64)
        with mpmath.workdps(TRUTH_DPS):
            rel = [
                float(abs(mpmath.mpf(float(v)) - t) / t) for v, t in zip(loss, truths, strict=True)
            ]
            ulp = get_precision(dtype).ulp(np.array([float(t) for t in truths]))
            ulps = [
                float(abs(mpmath.mpf(float(v)) - t)) / u
                for v, t, u in zip(loss, truths, ulp, strict=True)
            ]
            # mean of the method's losses vs the exact mean, in exact rationals
            exact_mean = mpmath.fsum(truths) / 60
            mean_rel = float(abs(mpmath.fsum(loss.tolist()) / 60 - exact_mean) / exact_mean)
        m = rep.method(name)
        # the reference is accurate to eps(float16) * 2**-20 relative: far below these errors
        assert m.loss_max_rel_err == pytest.approx(max(rel), rel=1e-6)
        assert m.loss_max_rel_err_row == int(np.argmax(rel))
        assert m.loss_max_ulp_err == pytest.approx(max(ulps), rel=1e-6)
        assert m.mean_loss_rel_err == pytest.approx(mean_rel, rel=1e-5)
        med = float(np.sort(rel)[(60 - 1) // 2])  # the lower median
        assert m.loss_median_rel_err is not None
        assert m.loss_median_rel_err <= med * (1 + 1e-9) < m.loss_median_rel_err * (1 + 2**-5)


def test_gradient_errors_match_mpmath() -> None:
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((30, 5)) * 3).astype(np.float32)
    y = rng.integers(0, 5, 30)
    rep = evaluate(x, y, dtype="bfloat16", methods=["fused"])
    xr = _rounded(x, "bfloat16")
    g = smcheck.cross_entropy(x, y, method="fused", dtype="bfloat16").grad.astype(np.float64)
    worst_abs, worst_rel = 0.0, 0.0
    with mpmath.workdps(TRUTH_DPS):
        for i in range(30):
            _, truth = mp_truth(xr[i], int(y[i]))
            d = [mpmath.mpf(float(a)) - t for a, t in zip(g[i], truth, strict=True)]
            worst_abs = max(worst_abs, float(max(abs(v) for v in d)))
            num = mpmath.sqrt(mpmath.fsum(v**2 for v in d))
            den = mpmath.sqrt(mpmath.fsum(t**2 for t in truth))
            worst_rel = max(worst_rel, float(num / den))
    m = rep.method("fused")
    assert m.grad_max_abs_err == pytest.approx(worst_abs, rel=1e-6)
    assert m.grad_max_rel_err == pytest.approx(worst_rel, rel=1e-6)


def test_mean_loss_error_of_a_float64_method_is_measured_below_its_ulp() -> None:
    # float64 work: the reference is a binary128 double-double; the exact sum keeps its low part
    x = np.array([[40.0, 0.0], [0.0, 1.0], [3.0, -2.0]])
    y = np.array([0, 1, 0])
    rep = evaluate(x, y, methods=["fused", "log1p"])
    with mpmath.workdps(TRUTH_DPS):
        truths = [mp_truth(x[i], int(y[i]))[0] for i in range(3)]
        for name in ("fused", "log1p"):
            loss = smcheck.cross_entropy(x, y, method=name).loss
            exact_sum = sum((Fraction(float(v)) for v in loss), Fraction(0))
            want = float(abs(mpmath.mpf(exact_sum.numerator) / exact_sum.denominator - sum(truths))
                         / sum(truths))  # fmt: skip
            got = rep.method(name).mean_loss_rel_err
            assert got == pytest.approx(want, rel=1e-6, abs=1e-30)
    assert rep.reference.startswith("binary128")


# ---------------------------------------------------------------- verdicts and gate


def test_default_thresholds_reasoning() -> None:
    f32, f16 = get_precision("float32"), get_precision("float16")
    # float32 summed in float32: 4 + the 26 roundings of numpy's pairwise sum of 32000 terms
    assert default_thresholds(f32, f32, 32000) == (30.0, 30.0 * f32.eps)
    # float16 summed in float32: the sum's rounding is 2**-13 of a float16 ulp per level
    assert default_thresholds(f16, f32, 32000)[0] == 4.0
    assert default_thresholds(f32, f32, 1) == (4.0, 4.0 * f32.eps)


def test_lossy_when_over_threshold_and_gate_fails() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 10)).astype(np.float32)
    y = rng.integers(0, 10, 50)
    rep = evaluate(x, y, dtype="bfloat16", max_loss_ulp=0.0)
    fused = rep.method("fused")
    assert fused.verdict == "lossy" and not fused.ok and not rep.ok
    assert "fused loss error reaches" in rep.verdict
    rep = evaluate(x, y, dtype="bfloat16", max_grad_err=0.0, max_loss_ulp=1e9)
    assert rep.method("fused").verdict == "lossy"
    assert "gradient error reaches" in rep.verdict


def test_fail_on_underflow_and_gate_choice() -> None:
    # p_y = e^-20 underflows float16 (below 6e-8): fused stays finite but p_y rounds to 0
    x = np.array([[0.0, -20.0], [1.0, 0.0]], dtype=np.float32)
    y = np.array([1, 0])
    rep = evaluate(x, y, dtype="float16")
    assert rep.method("fused").underflow_rows == 1 and rep.ok
    rep = evaluate(x, y, dtype="float16", fail_on=["underflow"])
    assert not rep.ok and rep.method("fused").verdict == "broken"
    rep = evaluate(x, y, dtype="float16", gate=["shifted"], methods=["fused"])
    assert [m.name for m in rep.methods] == ["shifted", "fused"]  # a gated method always runs
    assert not rep.ok and rep.method("shifted").inf_loss_rows == 1
    assert "p_y underflows to 0 in float16" in rep.verdict
    rep = evaluate(x, y, dtype="float16", gate=[], methods=["shifted"])
    assert rep.ok and "nothing gated" in rep.verdict


def test_bad_arguments() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(UsageError, match="unknown method"):
        evaluate(x, None, methods=["nope"])
    with pytest.raises(UsageError, match="fail-on"):
        evaluate(x, None, fail_on=["nans"])
    with pytest.raises(UsageError, match="name a working dtype"):
        evaluate(np.zeros((2, 3), np.int32), None)
    with pytest.raises(InputError, match=r"row 1500: label 9 is outside \[0, 3\)"):
        labels = np.zeros(2000, np.int64)
        labels[1500] = 9
        evaluate(np.zeros((2000, 3), np.float32), labels, chunk_rows=100)


# ---------------------------------------------------------------- label-free mode


def test_label_free_counts_pairs_and_checks_all_gradients_when_few_classes() -> None:
    x = np.zeros((10, 4), dtype=np.float32)
    x[[1, 6], 2] = 12.0  # float16 overflow in two rows: every pair of those rows is affected
    rep = evaluate(x, None, dtype="float16", chunk_rows=3)
    assert rep.input.label_free and rep.input.unit == "pairs"
    naive = rep.method("naive")
    assert naive.measured == 40
    assert naive.overflow_rows == 2 * 4
    assert naive.grad_checked == 40  # C = 4 <= 32: every (row, class)
    assert "all 4 classes" in rep.input.grad_policy
    assert "pairs" in rep.verdict


def test_label_free_large_vocabulary_checks_a_stated_subset() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 100)).astype(np.float32)
    rep = evaluate(x, None, methods=["fused"])
    m = rep.method("fused")
    assert m.measured == 2000
    assert 2 * 20 <= m.grad_checked <= 5 * 20
    assert "argmax, argmin and 3 pseudo-random" in rep.input.grad_policy


# ---------------------------------------------------------------- shapes and chunking


def test_leading_axes_are_flattened() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5)).astype(np.float16)
    y = rng.integers(0, 5, 6)
    rep = evaluate(x, y)
    assert (rep.input.rows, rep.input.classes) == (6, 5)
    assert rep.input.original_shape == (2, 3, 5)
    assert rep.input.dtype == "float16" and rep.input.accum == "float32"
    flat = evaluate(x.reshape(6, 5), y)
    assert to_dict(flat)["methods"] == to_dict(rep)["methods"]


@pytest.mark.parametrize("labelled", [True, False])
def test_json_identical_for_any_chunk_size(labelled: bool) -> None:
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((120, 48)) * 8).astype(np.float32)
    x[10, 3] = np.inf
    y = rng.integers(0, 48, 120) if labelled else None
    kw = {"dtype": "float16", "methods": ["naive", "shifted", "fused", "log1p", "online"]}
    one = to_dict(evaluate(x, y, chunk_rows=1000, **kw))
    for rows, workers in ((1, 1), (7, 2), (50, 1)):
        assert to_dict(evaluate(x, y, chunk_rows=rows, workers=workers, **kw)) == one
    # a small byte budget picks small chunks by itself: same answer
    assert to_dict(evaluate(x, y, chunk_bytes=1, **kw)) == one


# ---------------------------------------------------------------- per-row values


def test_per_row_values_against_the_library() -> None:
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((40, 6)) * 6).astype(np.float32)
    y = rng.integers(0, 6, 40)
    y[4] = -100
    blocks = []
    evaluate(x, y, dtype="float16", chunk_rows=6, per_row=blocks.append)
    cols: dict[str, np.ndarray] = {}
    for b in blocks:
        for k, v in per_row_columns(b).items():
            cols[k] = np.concatenate([cols[k], v]) if k in cols else v
    assert cols["row"].tolist() == list(range(40))
    assert cols["eligible"].tolist() == [0 if i == 4 else 1 for i in range(40)]
    ref = smcheck.reference(x, y, dtype="float16")
    ref_loss = np.where(y == -100, np.nan, ref.loss)
    np.testing.assert_array_equal(cols["ref_loss"], ref_loss)
    xr = _rounded(x, "float16")
    for name in ("naive", "shifted", "fused", "log1p"):
        r = smcheck.cross_entropy(x, y, method=name, dtype="float16")
        np.testing.assert_array_equal(cols[f"{name}_loss"], r.loss.astype(np.float64))
        np.testing.assert_array_equal(cols[f"{name}_overflow"], r.overflow.astype(np.int8))
        # loss error in ulps, recomputed here from the mpmath truth
        for i in (0, 7, 39):
            truth = mp_truth(xr[i], int(y[i]))[0]
            if math.isfinite(float(r.loss[i])):
                ulp = float(get_precision("float16").ulp(np.array(float(truth))))
                want = abs(float(r.loss[i]) - float(truth)) / ulp
                assert cols[f"{name}_loss_ulp_err"][i] == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert math.isnan(cols["fused_loss_ulp_err"][4])


@pytest.mark.parametrize("suffix", ["csv", "npz"])
def test_per_row_writer_files(tmp_path, suffix: str) -> None:
    x = np.array([[0.0, 12.0], [1.0, 2.0], [3.0, 3.0]], dtype=np.float16)
    y = np.array([0, 1, -100])
    path = tmp_path / f"rows.{suffix}"
    with PerRowWriter(str(path)) as sink:
        evaluate(x, y, chunk_rows=2, per_row=sink, methods=["naive"])
    if suffix == "npz":
        with np.load(path) as z:
            got = {k: z[k] for k in z.files}
    else:
        text = path.read_text().splitlines()
        header = text[0].split(",")
        data = np.array([[float(v) for v in line.split(",")] for line in text[1:]])
        got = {h: data[:, i] for i, h in enumerate(header)}
    assert list(got)[:4] == ["row", "label", "eligible", "ref_loss"]
    assert got["row"].tolist() == [0, 1, 2]
    assert got["naive_overflow"].tolist() == [1, 0, 0]
    assert got["naive_nonfinite"].tolist() == [1, 0, 0]
    assert math.isnan(got["ref_loss"][2])
    # ref loss of row 1: log(1 + e) - ... = log1p(exp(-1)), in float64
    assert got["ref_loss"][1] == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-15)


def test_per_row_writer_refuses_bad_suffix_and_inputs(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"\.csv or \.npz"):
        PerRowWriter(str(tmp_path / "rows.txt"))
    src = tmp_path / "x.csv"
    src.write_text("1,2\n")
    with pytest.raises(InputError, match="refusing to write"):
        with PerRowWriter(str(src), inputs=[str(src)]):
            pass
    assert src.read_text() == "1,2\n"


def test_regression_online_bfloat16_nan_row_does_not_warn() -> None:
    # methods.online takes its first block max outside np.errstate: a NaN row in bfloat16 used
    # to raise "invalid value encountered in reduce" (an error under filterwarnings = error)
    x = np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32)
    rep = evaluate(x, None, dtype="bfloat16", methods=["online"])
    assert rep.input.nonfinite_input_rows == 1 and rep.method("online").verdict == "ok"


def test_regression_label_free_margin_of_an_inf_row_does_not_warn() -> None:
    x = np.array([[0.0], [np.inf]], dtype=np.float32)
    rep = evaluate(x, None, dtype="float16", chunk_rows=1)
    assert rep.input.eligible_rows == 1


def test_per_row_label_free_columns() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((9, 40)) * 5).astype(np.float32)
    x[2, 5] = np.nan
    blocks = []
    evaluate(x, None, dtype="float16", methods=["fused"], chunk_rows=4, per_row=blocks.append)
    cols = {k: np.concatenate([per_row_columns(b)[k] for b in blocks]) for k in
            per_row_columns(blocks[0])}  # fmt: skip
    assert cols["label"].tolist() == [-1] * 9
    assert cols["eligible"].tolist() == [0 if i == 2 else 1 for i in range(9)]
    ref = smcheck.reference(x, None, dtype="float16").loss  # (N, C) label-free
    fused = smcheck.cross_entropy(x, None, method="fused", dtype="float16").loss
    k = np.argmax(x.astype(np.float16), axis=1)
    ok = np.arange(9) != 2
    # the loss columns are the argmax class: the row's smallest reference loss
    np.testing.assert_array_equal(cols["ref_loss"][ok], ref[ok].min(axis=1))
    np.testing.assert_array_equal(cols["ref_loss"][ok], ref[np.arange(9), k][ok])
    np.testing.assert_array_equal(cols["fused_loss"][ok], fused[np.arange(9), k][ok])
    assert np.isnan(cols["ref_loss"][2])


# ---------------------------------------------------------------- what overflowed (regressions)


def test_regression_float16_sum_overflow_is_named_not_minus_one_over_p_y() -> None:
    # every logit 10: exp(10) = 22026.47 (mpmath) rounds to 22032 in float16 (spacing 16 there);
    # the float16 pairwise sum 2 * 22032 = 44064 fits, 44064 + 44064 = 88128 > 65520 (the
    # float16 overflow threshold, max + half an ulp) is inf; p_y = 0.25 is nowhere near 1/max
    e10 = mpmath.exp(10)
    assert 22024 < e10 < 22040 and 4 * 22032 > 65504 + 16 > 2 * 22032
    x = np.full((2, 4), 10.0, dtype=np.float16)
    rep = evaluate(x, np.array([0, 1]), accum="float16", gate=("naive",))
    naive = rep.method("naive")
    assert naive.overflow_rows == 2
    assert naive.overflow_causes == (("sum", 2),)
    assert naive.problems[0] == (
        "naive overflows on 2 rows: the float16 sum of exp(z) exceeds max float16 = 6.55e+04"
    )
    assert "-1/p_y" not in rep.verdict and "largest margin" not in rep.verdict
    # summed in float32 (88128 < 3.4e38) nothing overflows
    assert evaluate(x, np.array([0, 1])).method("naive").overflow_rows == 0


def test_regression_wide_float16_row_blames_exp_and_nothing_else() -> None:
    # [6e4, -6e4, 0]: naive's exp(6e4) overflows; the shift -6e4 - 6e4 = -inf only makes
    # exp exactly 0 (float16 has inf), p_y = 1 exactly: no other method overflows
    x = np.array([[60000.0, -60000.0, 0.0]], dtype=np.float16)
    rep = evaluate(x, np.array([0]), methods=("naive", "shifted", "fused", "log1p", "online"))
    assert rep.method("naive").overflow_causes == (("exp", 1),)
    assert (
        rep.method("naive")
        .problems[0]
        .startswith(
            "naive overflows on 1 rows: exp(z) exceeds max float16 (logits reach 6e+04 > ln(max) = "
        )
    )
    for m in ("shifted", "fused", "log1p", "online"):
        assert rep.method(m).overflow_rows == 0 and rep.method(m).problems == ()
    assert "max float32 or" not in rep.verdict


def test_float8_e4m3fn_shift_overflow_is_named() -> None:
    # 400 rounds to 384 in float8_e4m3fn (tie between 384 and 416 to the even significand);
    # 384 - (-384) = 768 > 448 = its max, and without inf that is NaN: every shifted method
    # overflows in the shift; naive's exp(384) overflows first (384 > ln 448 = 6.1)
    x = np.array([[400.0, -400.0, 0.0]], dtype=np.float32)
    rep = evaluate(
        x, np.array([0]), dtype="float8_e4m3fn", methods=("naive", "shifted", "fused", "log1p",
                                                          "online"),
    )  # fmt: skip
    assert rep.method("naive").overflow_causes == (("exp", 1),)
    for m in ("shifted", "fused", "log1p", "online"):
        assert rep.method(m).overflow_causes == (("shift", 1),), m
        assert "z - max(z) exceeds max float8_e4m3fn = 448" in rep.method(m).problems[0]


def test_chained_backward_overflow_is_named_only_where_p_y_is_tiny_but_positive() -> None:
    # float16, shifted: margin 12 gives p_y = e^-12 / (1 + e^-12) = 6.1e-6, positive and below
    # 1 / 65520 = 1.53e-5, so -1/p_y overflows; margin 5 gives p_y = 6.7e-3: no overflow
    p12 = mpmath.exp(-12) / (1 + mpmath.exp(-12))
    assert 0 < p12 < mpmath.mpf(1) / 65520
    x = np.array([[0.0, -12.0], [0.0, -5.0]], dtype=np.float16)
    rep = evaluate(x, np.array([1, 1]), methods=("shifted", "fused"))
    sh = rep.method("shifted")
    assert sh.overflow_rows == 1 and sh.overflow_causes == (("grad", 1),)
    assert sh.problems[0].startswith(
        "shifted overflows on 1 rows: -1/p_y exceeds max float16 = 6.55e+04 (p_y < 1.5e-05"
    )
    assert rep.method("fused").overflow_rows == 0


def test_regression_underflow_margin_is_minus_ln_half_the_smallest_subnormal() -> None:
    # round to nearest sends exp(d) to 0 only below 2**-24 / 2 = 2**-25 in float16:
    # exp(-17) = 4.1e-8 > 2**-25 = 2.98e-8 survives (rounds to 2**-24), exp(-17.5) = 2.5e-8 is 0
    assert mpmath.exp(-17) > mpmath.mpf(2) ** -25 > mpmath.exp(-17.5)
    x = np.array([[0.0, -17.0], [0.0, -17.5]], dtype=np.float16)
    rep = evaluate(x, np.array([1, 1]), methods=("shifted", "fused"))
    assert rep.input.underflow_margin == pytest.approx(float(25 * mpmath.log(2)), rel=1e-15)
    assert round(rep.input.underflow_margin, 2) == 17.33
    assert rep.input.rows_margin_underflow == 1
    assert rep.method("fused").underflow_rows == 1  # the panel's count is what happens
    f32 = evaluate(np.zeros((1, 2), np.float32), np.array([0])).input.underflow_margin
    assert f32 == pytest.approx(float(150 * mpmath.log(2)), rel=1e-15)  # 103.97


def test_nan_and_inf_thresholds_are_usage_errors() -> None:
    x, y = np.zeros((2, 3), np.float32), np.array([0, 1])
    for kw in (
        {"max_loss_ulp": math.nan},
        {"max_grad_err": math.nan},
        {"max_loss_ulp": math.inf},
        {"max_grad_err": -1.0},
    ):
        with pytest.raises(UsageError, match="must be a finite number >= 0"):
            evaluate(x, y, **kw)  # type: ignore[arg-type]


def test_regression_reference_beyond_float64_is_counted_and_shown() -> None:
    # row 0, label 1: the true loss is 1.7e308 + 1.7e308 + log(1 + e^-1.7e308) = 3.4e308, beyond
    # max float64 = 1.797e308: the reference cannot measure it; its margin is inf, not dropped.
    # Warnings are errors in the test run: the margin's overflow must not warn.
    assert 2 * mpmath.mpf(1.7e308) > mpmath.mpf(np.finfo(np.float64).max)
    x = np.array([[1.7e308, -1.7e308, 0.0], [1.0, 2.0, 3.0]])
    rep = evaluate(x, np.array([1, 0]))
    assert rep.input.ref_nonfinite == 1
    assert rep.input.margin_max == math.inf and rep.input.margin_max_row == 0
    assert rep.input.rows_margin_underflow == 1
    assert all(m.measured == 1 for m in rep.methods)
    d = to_dict(rep)
    assert d["input"]["ref_nonfinite_rows"] == 1
    assert d["input"]["margin_max"] is None  # strict JSON has no inf


def test_cast_flushed_to_zero_is_in_json() -> None:
    # 1e-9 < 2**-25 (half the smallest float16 subnormal): it rounds to 0 in float16
    x = np.array([[1e-9, 1.0, 2.0]], dtype=np.float32)
    d = to_dict(evaluate(x, np.array([0]), dtype="float16"))
    assert d["input"]["cast_flushed_to_zero"] == 1


# ---------------------------------------------------------------- options and names


def _overflowing() -> tuple[np.ndarray, np.ndarray]:
    # row 0: exp(12) = 162755 > 65504 overflows naive in float16; row 1 is harmless
    return np.array([[12.0, 0.0, -3.0], [1.0, 2.0, 3.0]], dtype=np.float16), np.array([0, 2])


def test_options_object_and_keyword_fields_give_the_same_report() -> None:
    z, y = _overflowing()
    opts = smcheck.EvalOptions(methods=("naive", "fused"), top=1, max_loss_ulp=3.0)
    by_object = evaluate(z, y, opts)
    assert evaluate(z, y, methods=("naive", "fused"), top=1, max_loss_ulp=3.0) == by_object
    # keywords replace the object's fields
    # top=1: the first row by score, and the row of a method's largest relative error if another
    assert evaluate(z, y, opts, top=0).worst == () and by_object.worst[0].row == 0
    with pytest.raises(TypeError, match="unexpected keyword argument 'tops'"):
        evaluate(z, y, tops=3)


def test_deprecated_top_k_still_works_warns_and_gives_the_same_report() -> None:
    z, y = _overflowing()
    with pytest.warns(DeprecationWarning, match=r"evaluate\(top_k=\.\.\.\) is deprecated.*top="):
        old = evaluate(z, y, top_k=1)
    assert old == evaluate(z, y, top=1)
    with pytest.raises(UsageError, match="top_k= is the deprecated name of top="):
        evaluate(z, y, top_k=1, top=2)


def test_methods_are_indexable_by_name_in_run_order() -> None:
    # the bug: rep.methods["fused"] was a TypeError (a plain tuple); order and JSON unchanged
    z, y = _overflowing()
    rep = evaluate(z, y, methods=("fused", "naive", "log1p"))
    assert [m.name for m in rep.methods] == ["naive", "fused", "log1p"]  # registry order
    assert rep.methods["naive"].overflow_rows == 1 and rep.methods["naive"] is rep.methods[0]
    assert rep.methods["fused"] is rep.method("fused") and "log1p" in rep.methods
    assert list(to_dict(rep)["methods"]) == ["naive", "fused", "log1p"]
    with pytest.raises(KeyError, match="no method 'online'"):
        rep.methods["online"]


def test_options_are_checked_when_made() -> None:
    with pytest.raises(UsageError, match="unknown fail-on check 'nan'"):
        smcheck.EvalOptions(fail_on=("nan",))
    with pytest.raises(UsageError, match="--max-grad-err must be a finite number"):
        smcheck.EvalOptions(max_grad_err=math.inf)
    with pytest.raises(UsageError, match="unknown engine 'spark'"):
        smcheck.EvalOptions(engine="spark")
