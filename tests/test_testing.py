"""smcheck.testing: the assertions raise on broken losses, pass on the reference, name the rows."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from smcheck import InputError, UsageError, reference
from smcheck.metrics import default_thresholds
from smcheck.precisions import PRECISIONS, get_precision
from smcheck.testing import WORST_ROWS, assert_matches_reference, assert_stable

ALL_DTYPES = list(PRECISIONS)


def _logits(n: int, c: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (n, c)), rng.integers(0, c, n)


def _rounded_reference(z: np.ndarray, y: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference loss and gradient, each rounded once to the working dtype: a perfect
    kernel (error <= half an ulp)."""
    p = get_precision(dtype)
    r = reference(z, y, dtype=dtype)
    assert r.grad is not None
    loss = r.loss if r.loss_lo is None else r.loss + r.loss_lo
    grad = r.grad if r.grad_lo is None else r.grad + r.grad_lo
    return loss.astype(p.dtype), grad.astype(p.dtype)


def _table_rows(message: str) -> list[list[str]]:
    """Data rows of the tables in a report: lines starting with a row index."""
    return [line.split() for line in message.splitlines() if re.match(r"^\s+\d+\s", line)]


# --- default thresholds -------------------------------------------------------------------------


def test_default_thresholds_follow_the_rounding_count() -> None:
    # 4 ulps for the ~4 roundings in T, + the roundings of the sum in A (in ulps of T): 21 on
    # the longest chain of numpy's pairwise float32 sum of 1000 terms, ceil(log2 C) = 10 in the
    # explicit float16 tree
    loss16, grad16 = default_thresholds("float16", None, 1000)
    assert loss16 == 4.0  # 21 * 2**-13 ulps for the float32 sum, rounded away
    assert grad16 == 4 * 2.0**-10
    assert default_thresholds("float32", None, 1000) == (25.0, 25 * 2.0**-23)
    assert default_thresholds("float32", None, 1025)[0] == 25.0
    assert default_thresholds("float16", "float16", 1000)[0] == 14.0
    assert default_thresholds("bfloat16", None, 1)[0] == 4.0


def test_deprecated_testing_default_thresholds_warns_and_agrees() -> None:
    # the old spelling took the class count first; it forwards to the one definition
    from smcheck import testing

    for dtype in ALL_DTYPES:
        for c in (2, 10, 1000, 50_000):
            with pytest.warns(DeprecationWarning, match=r"metrics\.default_thresholds"):
                old = testing.default_thresholds(c, dtype)
            assert old == default_thresholds(dtype, None, c)


def test_the_assertions_gate_with_eval_s_default_thresholds() -> None:
    # one float16 row 5 ulps of max(|L*|, 1) off: over eval's default of 4 (C = 3: 4 + 2 *
    # 2**-13, rounded to 4.0), under an explicit 6
    z = np.array([[2.0, 0.0, -1.0]])
    loss, _ = _rounded_reference(z, np.array([0]), "float16")
    bad = (loss.astype(np.float64) + 5 * 2.0**-10).astype(np.float16)
    with pytest.raises(AssertionError, match="max_loss_ulp = 4 ulps"):
        assert_matches_reference(bad, z, np.array([0]), dtype="float16")
    assert_matches_reference(bad, z, np.array([0]), dtype="float16", max_loss_ulp=6)


# --- assert_stable ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("method", ["fused", "log1p", "online"])
def test_stable_methods_pass_with_default_thresholds(dtype: str, method: str) -> None:
    # the defaults are a gate: no false alarm on stable methods over typical and extreme rows
    z, y = _logits(300, 200, 3.0)
    z[:10] *= 1000  # confident rows: loss ~ 1e-300 or ~ 1e4
    z[10:20] += 5000 if get_precision(dtype).max > 1e5 else 200  # far from 0, no overflow
    assert_stable(z, y, dtype=dtype, methods=(method,))


def test_naive_float16_above_ln_max_raises_naming_the_row() -> None:
    # exp(z) overflows float16 above ln(65504) = 11.09: naive gives NaN, fused does not
    z, y = _logits(8, 5, 1.0)
    z[3, 2] = 11.5
    z[6, y[6]] = 11.0  # below the threshold: exp(11) = 59874 still fits
    assert_stable(z, y, dtype="float16", methods=("fused",))
    with pytest.raises(AssertionError) as info:
        assert_stable(z, y, dtype="float16", methods=("naive", "fused"))
    msg = str(info.value)
    assert msg.startswith("smcheck: 1 check failed in float16 (accum float32), 8 rows x 5 classes")
    assert "naive: non-finite loss/gradient or overflow in 1 of 8 rows" in msg
    assert "fused" not in msg
    rows = _table_rows(msg)
    assert rows[0][:3] == ["3", str(y[3]), "11.5"]
    assert rows[0][3] == "inf" and rows[0][-2:] == ["non-finite", "loss"]  # p_y = x / inf = 0


def test_stable_thresholds_can_be_tightened() -> None:
    # fused in bfloat16 over 4096 classes, sums in bfloat16: real rounding error shows
    z, y = _logits(64, 4096, 2.0)
    assert_stable(z, y, dtype="bfloat16", accum="bfloat16")
    with pytest.raises(AssertionError, match=r"loss error > max_loss_ulp = 0\.1 ulps"):
        assert_stable(z, y, dtype="bfloat16", accum="bfloat16", max_loss_ulp=0.1)
    with pytest.raises(AssertionError, match=r"gradient error > max_grad_err = 1e-06"):
        assert_stable(z, y, dtype="bfloat16", max_grad_err=1e-6)


def test_stable_report_lists_worst_rows_first_and_counts_all() -> None:
    z, y = _logits(40, 6, 1.0)
    z[::2, 1] = 30.0  # 20 overflowing rows in float16
    with pytest.raises(AssertionError) as info:
        assert_stable(z, y, dtype="float16", methods=("naive",))
    msg = str(info.value)
    assert "in 20 of 40 rows; first:" in msg
    rows = _table_rows(msg)
    assert [int(r[0]) for r in rows] == [0, 2, 4, 6, 8][:WORST_ROWS]


def test_chunking_gives_the_same_report() -> None:
    z, y = _logits(500, 50, 1.0, seed=3)
    z[7::37, 0] = 20.0  # float16 overflow for naive in 14 rows spread over the chunks
    y[7::37] = 0
    messages = []
    for chunk_bytes in (64 * 2**20, 1):  # one chunk; one row per chunk
        with pytest.raises(AssertionError) as info:
            assert_stable(
                z, y, dtype="float16", methods=("naive", "shifted"), chunk_bytes=chunk_bytes
            )
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "in 14 of 500 rows" in messages[0]


def test_ignored_and_nonfinite_input_rows_are_skipped() -> None:
    z, y = _logits(6, 4, 1.0)
    z[1, 0] = 50.0  # would break naive, but the row is ignored
    y[1] = -100
    z[2, 3] = np.nan  # no defined answer: not checked
    z[4, 2] = -np.inf  # a masked class: checked, finite
    assert_stable(z, y, dtype="float16", methods=("naive", "fused"))
    with pytest.raises(InputError, match=r"^row 1: label -100 is outside \[0, 4\)"):
        assert_stable(z, y, dtype="float16", ignore_index=-1)
    y[1] = 0
    with pytest.raises(AssertionError, match="in 1 of 5 rows"):
        assert_stable(z, y, dtype="float16", methods=("naive",))


def test_label_errors_name_the_global_row_when_chunked() -> None:
    z, y = _logits(10, 4, 1.0)
    y[7] = 4
    with pytest.raises(InputError, match=r"^row 7: label 4 is outside \[0, 4\)"):
        assert_stable(z, y, dtype="float32", chunk_bytes=1)
    with pytest.raises(InputError, match=r"^row 7: label 4"):
        assert_matches_reference(np.zeros(10), z, y, dtype="float32", chunk_bytes=1)


def test_bad_arguments_are_usage_errors_not_assertions() -> None:
    z, y = _logits(3, 4, 1.0)
    with pytest.raises(UsageError, match="unknown method 'fast'"):
        assert_stable(z, y, dtype="float16", methods=("fast",))
    with pytest.raises(UsageError, match="unknown dtype"):
        assert_stable(z, y, dtype="float12")
    with pytest.raises(InputError, match=r"labels have shape 2, expected 3 \(one per row\)"):
        assert_stable(z, y[:2], dtype="float16")
    with pytest.raises(InputError, match="row 1: label 9"):
        assert_stable(z, np.array([0, 9, 1]), dtype="float16")
    with pytest.raises(UsageError, match="labels are required"):
        assert_stable(z, None, dtype="float16")  # type: ignore[arg-type]


# --- assert_matches_reference -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_reference_rounded_to_the_working_dtype_passes(dtype: str) -> None:
    z, y = _logits(200, 33, 4.0, seed=1)
    z[:5] *= 500
    loss, grad = _rounded_reference(z, y, dtype)
    assert_matches_reference(loss, z, y, dtype=dtype, grad=grad)
    assert_matches_reference(loss, z, y, dtype=dtype)  # loss only


def test_loss_off_by_64_ulps_raises_naming_the_row() -> None:
    z, y = _logits(50, 10, 2.0, seed=2)
    loss, grad = _rounded_reference(z, y, "float16")
    # 64 ulps of max(|L|, 1) in float16, added in float64 then rounded once: exact here
    unit = float(get_precision("float16").ulp(max(abs(float(loss[17])), 1.0)))
    loss[17] = np.float16(float(loss[17]) + 64 * unit)
    with pytest.raises(AssertionError) as info:
        assert_matches_reference(loss, z, y, dtype="float16", grad=grad)
    msg = str(info.value)
    assert "kernel: loss error > max_loss_ulp = 4 ulps of max(|L*|, 1) in 1 of 50 rows" in msg
    assert "grad" not in msg.split("\n", 1)[1]  # only the loss check failed
    (row,) = _table_rows(msg)
    assert row[:3] == ["17", str(y[17]), f"{np.float16(z[17].max()):.8g}"]
    assert 63.5 <= float(row[-1]) <= 64.5  # the shift plus the rounding of the reference
    assert_matches_reference(loss, z, y, dtype="float16", max_loss_ulp=65)


def test_deprecated_max_ulp_and_memory_still_work_and_warn() -> None:
    # the old names of max_loss_ulp and chunk_bytes: same result, a DeprecationWarning each
    z, y = _logits(50, 10, 2.0, seed=2)
    loss, _ = _rounded_reference(z, y, "float16")
    loss[17] = np.float16(float(loss[17]) + 64 * 2.0**-10 * max(abs(float(loss[17])), 1.0))
    with pytest.warns(DeprecationWarning, match=r"max_ulp=\.\.\.\) is deprecated.*max_loss_ulp"):
        assert_matches_reference(loss, z, y, dtype="float16", max_ulp=1000)
    with pytest.warns(DeprecationWarning) as warned, pytest.raises(AssertionError) as old:
        assert_matches_reference(loss, z, y, dtype="float16", max_ulp=5, memory=1)
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in warned) == [
        "max_ulp",
        "memory",
    ]
    with pytest.raises(AssertionError) as new:
        assert_matches_reference(loss, z, y, dtype="float16", max_loss_ulp=5, chunk_bytes=1)
    assert str(old.value) == str(new.value)
    with pytest.warns(DeprecationWarning, match=r"memory=\.\.\.\) is deprecated.*chunk_bytes"):
        assert_stable(z, y, dtype="float16", memory=1)
    with pytest.raises(UsageError, match="max_ulp= is the deprecated name of max_loss_ulp="):
        assert_matches_reference(loss, z, y, dtype="float16", max_ulp=5, max_loss_ulp=5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_ulps'"):
        assert_stable(z, y, dtype="float16", max_ulps=5)


def test_assertion_helpers_hide_their_frames_from_pytest() -> None:
    # pytest's traceback starts at the caller's line: every frame of smcheck.testing that the
    # AssertionError passes through carries __tracebackhide__
    z = np.array([[12.0, 0.0]])
    with pytest.raises(AssertionError) as info:
        assert_stable(z, np.array([0]), dtype="float16", methods=("naive",))
    frames = [e.frame for e in info.traceback if e.frame.code.path.name == "testing.py"]
    assert frames and all(f.f_locals.get("__tracebackhide__") for f in frames)


def test_gradient_missing_the_onehot_term_raises() -> None:
    z, y = _logits(20, 8, 1.0, seed=4)
    loss, _ = _rounded_reference(z, y, "float32")
    r = reference(z, y, dtype="float32")
    softmax_only = r.prob.astype(np.float32)  # p instead of p - onehot(y)
    with pytest.raises(AssertionError) as info:
        assert_matches_reference(loss, z, y, dtype="float32", grad=softmax_only)
    msg = str(info.value)
    assert "kernel: gradient error > max_grad_err" in msg and "in 20 of 20 rows; worst:" in msg
    rows = _table_rows(msg)
    assert len(rows) == WORST_ROWS
    for row in rows:  # worst entry is the label's: error exactly 1 (p_y vs p_y - 1)
        i = int(row[0])
        assert int(row[1]) == y[i] and int(row[3]) == y[i]
        assert math.isclose(float(row[-1]), 1.0, rel_tol=1e-6)


def test_nonfinite_kernel_output_and_inf_reference() -> None:
    z = np.array([[0.0, -np.inf, 1.0], [0.0, 2.0, 1.0], [3.0, 1.0, 0.0]])
    y = np.array([1, 0, 2])  # row 0: label on a masked class, the loss is +inf
    loss, grad = _rounded_reference(z, y, "float32")
    assert loss[0] == np.inf
    assert_matches_reference(loss, z, y, dtype="float32", grad=grad)
    finite_where_inf = loss.copy()
    finite_where_inf[0] = 1e30
    with pytest.raises(AssertionError, match="non-finite loss/gradient or overflow in 1 of 3"):
        assert_matches_reference(finite_where_inf, z, y, dtype="float32")
    nan_grad = grad.copy()
    nan_grad[2, 1] = np.nan
    with pytest.raises(AssertionError) as info:
        assert_matches_reference(loss, z, y, dtype="float32", grad=nan_grad)
    (row,) = _table_rows(str(info.value))
    assert row[0] == "2" and row[-2:] == ["non-finite", "gradient"]


def test_matches_reference_shape_errors() -> None:
    z, y = _logits(4, 3, 1.0)
    loss, grad = _rounded_reference(z, y, "float32")
    with pytest.raises(InputError, match=r"loss has shape 3, expected 4: one value"):
        assert_matches_reference(loss[:3], z, y, dtype="float32")
    with pytest.raises(InputError, match=r"grad has shape 4 x 2, expected 4 x 3"):
        assert_matches_reference(loss, z, y, dtype="float32", grad=grad[:, :2])


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_framework_methods_are_checked_like_the_others(framework: str) -> None:
    pytest.importorskip(framework)
    z, y = _logits(64, 100, 3.0)
    assert_stable(z, y, dtype="float16", methods=(framework,))
    with pytest.raises(AssertionError, match=rf"{framework}: loss error > max_loss_ulp = 0\.01"):
        assert_stable(z, y, dtype="bfloat16", methods=(framework,), max_loss_ulp=0.01)


def test_gradient_checked_on_a_row_whose_reference_loss_is_inf() -> None:
    # label on a -inf logit: loss +inf (as the reference), but the gradient p - onehot is finite
    # and [5, 5, 5] is wrong by up to 6
    from smcheck.testing import assert_matches_reference

    z = np.array([[0.0, -np.inf, 1.0]])
    with pytest.raises(AssertionError, match="grad"):
        assert_matches_reference(
            np.array([np.inf]), z, np.array([1]), dtype="float32", grad=np.array([[5.0, 5, 5]])
        )


def test_checking_nothing_is_not_a_pass() -> None:
    from smcheck.testing import assert_matches_reference, assert_stable

    z = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(AssertionError, match="checked nothing"):
        assert_stable(z, np.full(3, -100), dtype="float32")
    with pytest.raises(AssertionError, match="checked nothing"):
        assert_matches_reference(np.zeros(3), z, np.full(3, -100), dtype="float32")
