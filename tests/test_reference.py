"""The reference meets eps(working) * 2**-20 against mpmath, in every working dtype."""

from __future__ import annotations

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
