"""The front door: every entry point accepts and refuses the same arrays (smcheck.prepare)."""

from __future__ import annotations

import math

import ml_dtypes
import mpmath
import numpy as np
import pytest

import smcheck
from smcheck.errors import InputError, UsageError
from smcheck.prepare import check_input, file_dtype, prepare_input
from smcheck.testing import assert_matches_reference

from .conftest import TRUTH_DPS, mp_truth

#: bfloat16 rounds 0.1 to 0.10009765625 (8 significant bits): the logits every entry point sees
Z_BF16 = np.array([[2.0, 1.0, 0.1], [0.0, -3.0, 5.0]], dtype=ml_dtypes.bfloat16)
Y = np.array([0, 2])


def _truth_bf16(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The mpmath loss of each row (logits exact as stored), rounded once to bfloat16."""
    with mpmath.workdps(TRUTH_DPS):
        rows = [float(mp_truth(z[i].astype(np.float64), int(y[i]))[0]) for i in range(len(y))]
    return np.array(rows).astype(ml_dtypes.bfloat16)


def test_compare_accepts_bfloat16_logits_like_evaluate_and_cross_entropy() -> None:
    # the bug: compare() refused a bfloat16 array ("name a working dtype") that evaluate() and
    # cross_entropy() accept - its own dtype check knew numpy's kind "f" only, and ml_dtypes'
    # bfloat16 is kind "V". Every entry point now takes the working dtype from prepare_input.
    theirs = _truth_bf16(Z_BF16, Y)  # a perfect kernel: the truth rounded to bfloat16
    rep = smcheck.compare(Z_BF16, Y, theirs)
    assert (rep.dtype, rep.accum, rep.verdict, rep.ok) == ("bfloat16", "float32", "ok", True)
    assert rep.loss.max_gate_ulp_err is not None and rep.loss.max_gate_ulp_err <= 0.5 + 1e-6
    assert smcheck.evaluate(Z_BF16, Y).input.dtype == "bfloat16"
    assert smcheck.cross_entropy(Z_BF16, Y).dtype == "bfloat16"
    assert smcheck.gradcheck(Z_BF16, Y).dtype == "bfloat16"
    assert_matches_reference(theirs, Z_BF16, Y, dtype="bfloat16")


@pytest.mark.parametrize(
    "entry",
    [
        lambda z, y: smcheck.cross_entropy(z, y),
        lambda z, y: smcheck.reference(z, y),
        lambda z, y: smcheck.evaluate(z, y),
        lambda z, y: smcheck.gradcheck(z, y),
        lambda z, y: smcheck.compare(z, y, np.zeros(len(y))),
    ],
    ids=["cross_entropy", "reference", "evaluate", "gradcheck", "compare"],
)
def test_every_entry_point_refuses_integer_logits_alike(entry) -> None:
    with pytest.raises(UsageError, match=r"^logits of dtype int32: name a working dtype$"):
        entry(np.zeros((2, 3), np.int32), Y)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "bfloat16", "float16"])
def test_the_working_dtype_is_the_array_s_own_float_dtype(dtype: str) -> None:
    z = np.array([[1.0, -1.0, 0.5]], dtype=smcheck.get_precision(dtype).dtype)
    ci = check_input(z)
    assert ci.working.name == dtype and ci.accum.name == "float32"
    assert check_input(z, dtype="float64", accum="float64").accum.name == "float64"


def test_prepare_input_rounds_once_and_checks_labels() -> None:
    p = prepare_input(np.array([[2.0, 1.0, 0.1]]), np.array([0]), dtype="bfloat16")
    assert p.x.astype(np.float64).tolist() == [[2.0, 1.0, 0.10009765625]]  # 0.1 in bfloat16
    assert p.cast_report.changed == 1 and p.accum is not None and p.accum.name == "float32"
    with pytest.raises(InputError, match=r"^row 1001: label 9 is outside \[0, 4\)"):
        prepare_input(np.zeros((3, 4)), np.array([0, 9, 1]), row_offset=1000)
    with pytest.raises(UsageError, match="unknown cast mode 'clip'"):
        prepare_input(np.zeros((1, 2)), None, cast="clip")


def test_leading_axes_are_rows_and_shape_errors_name_the_file() -> None:
    ci = check_input(np.zeros((2, 3, 5), np.float32), np.zeros(6, np.int64))
    assert (ci.rows, ci.classes, ci.original_shape) == (6, 5, (2, 3, 5))
    assert check_input(np.zeros(4)).x.shape == (1, 4)  # one axis: one row
    with pytest.raises(InputError, match=r"^z\.npy: logits must have a class axis .* shape 3 x 0$"):
        check_input(np.zeros((3, 0)), names=("z.npy", None))
    with pytest.raises(InputError, match=r"^y\.npy: labels have shape 2, expected 3 "):
        check_input(np.zeros((3, 4)), np.zeros(2, np.int64), names=("z.npy", "y.npy"))
    with pytest.raises(InputError, match=r"labels have shape 3 x 4,"):
        check_input(np.zeros((3, 4)), np.zeros((3, 4)), soft=False)  # no soft targets here
    assert check_input(np.zeros((3, 4)), np.full((3, 4), 0.25)).soft_targets is not None
    with pytest.raises(UsageError, match="labels are required"):
        check_input(np.zeros((3, 4)), None, require_labels=True)


def test_file_dtype_assumes_float32_for_text_and_integer_files_only() -> None:
    assert file_dtype("float16", None) == (None, False)  # the array's own
    assert file_dtype("bfloat16", None) == (None, False)
    assert file_dtype("text", None) == ("float32", True)
    assert file_dtype("int64", None) == ("float32", True)
    assert file_dtype("text", "float16") == ("float16", False)


def test_a_float16_row_of_the_front_door_matches_mpmath() -> None:
    # prepare_input feeds the reference the rounded logits: its loss is mpmath's of those
    p = prepare_input(np.array([[0.1, 0.2, 0.3]]), np.array([1]), dtype="float16")
    ref = smcheck.reference(p.x, np.array([1]))
    truth, _ = mp_truth(p.x[0], 1)
    assert math.isclose(float(ref.loss[0]), float(truth), rel_tol=2.0**-30)
