"""The reference meets eps(working) * 2**-20 against mpmath, in every working dtype."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from smcheck import reference
from smcheck.core import prepare
from smcheck.precisions import PRECISIONS

from .cases import adversarial_rows
from .conftest import mp_abs_err, mp_rel_err, mp_truth

F64_TINY = float(np.finfo(np.float64).smallest_normal)
F64_SUB = float(np.finfo(np.float64).smallest_subnormal)


def _check_rows(name: str, rows: list[tuple[np.ndarray, int]]) -> None:
    p = PRECISIONS[name]
    bound = p.eps * 2.0**-20
    for z, y in rows:
        x = prepare(z[None, :], None, dtype=name).x.astype(np.float64)[0]
        if not np.isfinite(x).all():
            continue
        ref = reference(z[None, :], np.array([y]), dtype=name)
        loss_t, grad_t = mp_truth(x, y)
        lo = 0.0 if ref.loss_lo is None else ref.loss_lo[0]
        rel = mp_rel_err(ref.loss[0], lo, loss_t)
        if loss_t < F64_TINY:
            # below float64's normal range (e.g. e**-5000) the reference is returned as float64:
            # it must be the truth to within float64's subnormal step
            assert mp_abs_err(ref.loss[0], lo, loss_t) <= F64_SUB, (name, z[:4], y)
        else:
            assert rel <= bound, (name, z[:4], y, rel, bound)
        glo = np.zeros_like(ref.grad[0]) if ref.grad_lo is None else ref.grad_lo[0]
        worst = max(mp_abs_err(g, gl, t) for g, gl, t in zip(ref.grad[0], glo, grad_t, strict=True))
        assert worst <= bound, (name, z[:4], y, worst, bound)


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_reference_meets_bound_on_adversarial_rows(name: str) -> None:
    _check_rows(name, adversarial_rows(PRECISIONS[name]))


@pytest.mark.parametrize("name", ["float64", "float32", "bfloat16"])
def test_reference_meets_bound_at_gpt2_vocabulary(name: str) -> None:
    rng = np.random.default_rng(7)
    z = rng.standard_normal(50257) * 4.0
    _check_rows(name, [(z, int(rng.integers(50257))), (z, int(np.argmax(z)))])


def test_reference_reports_its_precision() -> None:
    x = np.array([[1.0, 2.0]])
    assert reference(x, np.array([0]), dtype="float64").precision.startswith("binary128")
    assert reference(x, np.array([0]), dtype="float32").precision.startswith("float64")
    assert reference(x, np.array([0]), dtype="float32").loss_lo is None


def test_reference_label_free_matches_labelled_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6)) * 5
    free = reference(x, None, dtype="float32")
    for k in range(6):
        lab = reference(x, np.full(4, k), dtype="float32")
        np.testing.assert_array_equal(free.loss[:, k], lab.loss)


def test_pluskid_reference() -> None:
    r = reference(np.array([[0.0, -800.0, 1.0]]), np.array([1]))
    assert r.loss[0] == 801.3132616875182
    np.testing.assert_array_equal(r.grad[0], [0.2689414213699951, -1.0, 0.7310585786300049])


def test_reference_in_row_blocks_equals_one_shot() -> None:
    from smcheck.core import reference_of

    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 11)) * 20
    y = rng.integers(0, 11, 37)
    prep = prepare(x, y, dtype="float64")
    whole = reference_of(prep)
    blocks = reference_of(prep, block_elements=50)  # 4 rows per block
    for name in ("loss", "loss_lo", "grad", "grad_lo", "prob", "prob_rest"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(blocks, name))


# --- the exact shift: TwoSum only on rows where z_j - m can round in float64 -----------------

# the module (``smcheck.reference`` the name is shadowed by the function smcheck.reference)
ref_mod = importlib.import_module("smcheck.reference")

#: ratio max |z| / min nonzero |z| up to which every float64 shift is exact: 2**(52 - p)
RATIO_BITS = {"float32": 52 - 24, "bfloat16": 52 - 8}


def _as(name: str, values: list[float]) -> np.ndarray:
    """A row of ``values`` stored in the working dtype (each value must be representable)."""
    row = np.array(values, dtype=np.float64).astype(PRECISIONS[name].dtype)
    np.testing.assert_array_equal(row.astype(np.float64), values)
    return row


def _listed(name: str, rows: list[list[float]]) -> list[bool]:
    """Whether each row is sent to TwoSum, the block stored in the working dtype."""
    p = PRECISIONS[name]
    listed = [
        ref_mod._inexact_shift_rows(_as(name, r)[None].astype(np.float32), p.mantissa_bits)
        for r in rows
    ]
    return [lst.tolist() == [0] for lst in listed]


@pytest.mark.parametrize("name", list(RATIO_BITS))
def test_inexact_shift_rows_at_the_ratio_bound(name: str) -> None:
    ratio = 2.0 ** RATIO_BITS[name]
    up = 3.0 + PRECISIONS[name].eps * 2  # the next value above 3 in the working dtype
    tiny = PRECISIONS[name].smallest_subnormal
    rows = [
        [3.0, -1.5, 3.0 / ratio],  # at the bound: exact
        [up, -1.5, 3.0 / ratio],  # one step past it
        [-3.0, 1.5, -3.0 / ratio],  # at the bound, negative max magnitude
        [-up, 1.5, -3.0 / ratio],
        [tiny * ratio, tiny, 0.0],  # subnormal minimum, at the bound
        [tiny * ratio * 2, tiny, 0.0],
        [0.0, 0.0, 5.0, -7.0],  # zeros shift exactly, whatever the other values
        [0.0, 0.0, 0.0, 0.0],
        [-np.inf, 700.0, 700.0 / ratio],  # -inf shifts exactly: only the finite values count
        [-np.inf, 700.0, 1400.0 / ratio, 350.0 / ratio],
        [-np.inf, -np.inf, 1.0, 1.0],
    ]
    want = [False, True, False, True, False, True, False, False, False, True, False]
    assert _listed(name, rows) == want


@pytest.mark.parametrize("name", list(RATIO_BITS))
@pytest.mark.parametrize("where", ["normal", "subnormal"])
def test_rows_not_listed_have_exact_float64_shifts(name: str, where: str) -> None:
    # the bound is sufficient: every shift z_j - m of an unlisted row has a zero TwoSum
    # residual; and near it (ratios up to 2**4 past it) inexact shifts do occur, and are listed.
    # "subnormal" puts the smallest values among the working dtype's subnormals (and zeros)
    p = PRECISIONS[name]
    rng = np.random.default_rng(11)
    n, c = 4000, 3
    bits = RATIO_BITS[name]
    top = 0 if where == "normal" else int(np.log2(p.smallest_normal)) + bits + 3
    expo = top + rng.integers(-3, 4, (n, 1)) + rng.integers(-bits - 4, 1, (n, c))
    sign = rng.choice([-1.0, 1.0], (n, c))
    # 1 + random: rounding to the working dtype leaves full significands
    x = (sign * (1 + rng.random((n, c))) * np.exp2(expo.astype(np.float64))).astype(p.dtype)
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    residual = ref_mod._two_diff_residual(x, m, x - m)
    listed = np.zeros(n, dtype=bool)
    listed[ref_mod._inexact_shift_rows(x.astype(np.float32), p.mantissa_bits)] = True
    assert not residual[~listed].any()
    assert (residual[listed] != 0).any(axis=1).sum() > 10
    if where == "subnormal":
        assert (np.abs(x) < p.smallest_normal).sum() > 100


def _check_masked_rows(name: str, rows: list[tuple[np.ndarray, int]]) -> None:
    """Rows with -inf (masked) logits: the truth is the row without them, with p = 0 there."""
    bound = PRECISIONS[name].eps * 2.0**-20
    for z, y in rows:
        keep = np.isfinite(z)
        ref = reference(z[None, :], np.array([y]), dtype=name)
        assert (ref.grad[0][~keep] == 0).all() and (ref.prob[0][~keep] == 0).all()
        x = prepare(z[None, keep], None, dtype=name).x.astype(np.float64)[0]
        loss_t, grad_t = mp_truth(x, int(np.count_nonzero(keep[:y])))
        assert mp_rel_err(ref.loss[0], 0.0, loss_t) <= bound, (name, z, y)
        worst = max(mp_abs_err(g, 0.0, t) for g, t in zip(ref.grad[0][keep], grad_t, strict=True))
        assert worst <= bound, (name, z, y, worst)


@pytest.mark.parametrize("name", list(RATIO_BITS))
def test_reference_meets_bound_on_rows_that_need_the_exact_shift(name: str) -> None:
    ratio = 2.0 ** RATIO_BITS[name]
    up = 3.0 + PRECISIONS[name].eps * 2  # the next value above 3 in the working dtype
    sub = 3 * 2.0**-131  # subnormal in float32 and bfloat16 alike
    rows = [
        [700.0, 1e-30, -3.0, 650.0],  # e**-50 terms next to a value 2**100 below 1
        [100.0, 1e-30, 99.5, 0.0, 98.0],
        [-700.0, -1e-30, -701.0, -650.0],
        [300.0, sub, 299.0, -sub, 0.0],
        [3.0, -1.5, 3.0 / ratio, 2.5],  # at the ratio bound: fast path
        [up, -1.5, 3.0 / ratio, 2.5],  # one step past it: TwoSum
        [0.0, 0.0, 1.0, -2.0],  # exact zeros
    ]
    _check_rows(name, [(np.array(r), y) for r in rows for y in range(len(r))])
    masked = [
        [300.0, sub, 299.0, -np.inf],
        [-np.inf, 0.0, 0.0, 1e-30, 500.0, 499.0],
        [-np.inf, 2.0, -np.inf, 1.0],
    ]
    _check_masked_rows(
        name, [(np.array(r), y) for r in masked for y in range(len(r)) if np.isfinite(r[y])]
    )


def test_exact_shift_is_applied_where_the_float64_shift_rounds() -> None:
    # 700 + 2**-14 and 2**-44 (1 - 2**-23) are float32 values; their float64 difference
    # rounds by 5.7e-14 = half float32's bound, which the TwoSum correction removes: the
    # loss log1p(e**-700) is then correct to well under 1/64 of the bound
    z = np.array([[700 + 2.0**-14, 2.0**-44 * (1 - 2.0**-23)]], dtype=np.float32)
    assert ref_mod._inexact_shift_rows(z, 24).tolist() == [0]
    out = ref_mod.reference_block(z, np.array([0]), PRECISIONS["float32"])
    loss_t, _ = mp_truth(z[0].astype(np.float64), 0)
    assert mp_rel_err(out.loss[0], 0.0, loss_t) <= PRECISIONS["float32"].eps * 2.0**-26


def _block(name: str) -> np.ndarray:
    """Random logits stored in ``name`` (fast-path rows) with TwoSum and special rows planted."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((12, 9)) * 3
    x[2, :3] = [700.0, 1e-30, 699.0]  # needs TwoSum
    x[5, :3] = [-np.inf, 1e-30, 120.0]  # needs TwoSum, one masked class
    x[6, :2] = [0.0, 0.0]  # exact zeros
    x[7, :] = -np.inf  # all masked: NaN
    x[8, 4] = np.nan  # undefined: NaN
    x[9, 1] = np.inf  # undefined: NaN
    x[10, :2] = [500.0, 1e-37]  # needs TwoSum
    return x.astype(PRECISIONS[name].dtype)


@pytest.mark.parametrize("name", list(RATIO_BITS))
def test_block_mixing_twosum_rows_equals_each_row_alone(name: str) -> None:
    x = _block(name)
    y = np.arange(12) % 9
    w = PRECISIONS[name]
    assert {2, 5, 10} <= set(ref_mod._inexact_shift_rows(x.astype(np.float32), w.mantissa_bits))
    whole = ref_mod.reference_block(x, y, w)
    for i in range(12):
        alone = ref_mod.reference_block(x[i : i + 1], y[i : i + 1], w)
        for field in ("loss", "grad", "prob", "prob_rest"):
            np.testing.assert_array_equal(getattr(whole, field)[i], getattr(alone, field)[0])


@pytest.mark.parametrize("name", list(RATIO_BITS))
@pytest.mark.parametrize("labelled", [True, False])
def test_fast_path_equals_twosum_on_every_row(name: str, labelled: bool) -> None:
    # on a row whose shifts are exact the TwoSum residual is 0 and exp(d) (1 + 0) = exp(d):
    # skipping it changes no bit (a fortiori stays within the bound)
    x = _block(name)
    y = (np.arange(12) % 9) if labelled else None
    w = PRECISIONS[name]
    fast = ref_mod.reference_block(x, y, w)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        forced = ref_mod._core(x.astype(np.float32), y, twosum_rows=np.arange(12))
    for got, want in zip((fast.loss, fast.grad, fast.prob, fast.prob_rest), forced, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", list(RATIO_BITS))
def test_special_rows_keep_their_documented_results(name: str) -> None:
    x = _block(name)
    y = np.zeros(12, dtype=int)
    y[5] = 0  # the label on the masked -inf class
    out = ref_mod.reference_block(x, y, PRECISIONS[name])
    assert out.loss[5] == np.inf
    assert out.prob[5, 0] == 0 and out.grad[5, 0] == -1
    np.testing.assert_allclose(out.prob[5].sum(), 1.0, rtol=1e-15)
    for i in (7, 8, 9):  # all -inf, NaN, +inf
        assert np.isnan(out.loss[i]) and np.isnan(out.prob_rest[i])
        assert np.isnan(out.prob[i]).all() and np.isnan(out.grad[i]).all()
    finite = [i for i in range(12) if i not in (5, 7, 8, 9)]
    assert np.isfinite(out.loss[finite]).all() and np.isfinite(out.grad[finite]).all()
    np.testing.assert_allclose(out.grad[finite].sum(axis=1), 0.0, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64"])
def test_reference_block_savings_change_no_value(dtype: str) -> None:
    """keep_prob=False (the labels' p only, the gradient in the softmax's memory), a caller's
    row argmax and carrier storage give the same loss and gradient, bit for bit."""
    from smcheck.core import prepare
    from smcheck.precisions import get_precision
    from smcheck.reference import reference_block

    t = get_precision(dtype)
    rng = np.random.default_rng(12)
    raw = rng.standard_normal((9, 300)) * 20
    raw[1, 4] = np.nan
    raw[2, :10] = -np.inf
    raw[3, 7] = raw[3].max()  # a tie at the max
    y = rng.integers(0, 300, 9)
    y[3] = 7
    prep = prepare(raw, y, dtype=t)
    full = reference_block(prep.x, prep.safe_labels, t)
    k = np.argmax(prep.xk, axis=1)
    lean = reference_block(
        prep.xk, prep.safe_labels, t, keep_prob=False, row_argmax=k if t.bits <= 32 else None,
        carrier=True,
    )  # fmt: skip
    pairs = [(full.loss, lean.loss), (full.grad, lean.grad), (full.prob_rest, lean.prob_rest)]
    if full.loss_lo is not None:  # float64: the double-double's low parts too
        pairs += [(full.loss_lo, lean.loss_lo), (full.grad_lo, lean.grad_lo)]
    for a, b in pairs:
        assert np.array_equal(a, b, equal_nan=True)
    assert np.array_equal(full.prob[np.arange(9), prep.safe_labels], lean.prob, equal_nan=True)
