"""gradcheck under the loss variants (issue 16): the truths against mpmath's analytic gradient at
50 digits, the fused method passing, and broken gradients (a dropped chain factor) caught.

The mpmath gradient is written independently of smcheck: with z'' = c tanh(s z / c),
p = softmax(z'') and lse = log sum exp z'', dL/dz_j = s sech(s z_j / c)**2
(p_j - [j = y] + 2 lambda lse p_j).
"""

from __future__ import annotations

import json

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.gradcheck import gradcheck
from smcheck.gradcheck_truth import (
    variant_central_difference,
    variant_complex_step,
    variant_complex_step_binary128,
)
from smcheck.methods import fused
from smcheck.precisions import get_precision
from smcheck.variants import Variant

VARIANTS = {
    "logit_scale": Variant(logit_scale=0.375),
    "softcap": Variant(softcap=5.0),
    "z_loss": Variant(z_loss=1e-2),
    "combined": Variant(z_loss=1e-3, softcap=3.0, logit_scale=2.0),
}

# a random row, one deep in tanh's tail for the cap (40 / 5 = 8: sech**2 ~ 4.5e-7), a confident
# row (p_y - 1 ~ -1e-5), one with a class far below the max (its p underflows in complex128 *h)
ROWS = np.array(
    [
        [0.5, -1.25, 2.0, 3.5, -0.75],
        [40.0, -3.0, 1.0, 0.0, 2.5],
        [12.0, 0.25, -0.5, 1.0, 0.0],
        [1.0, -60.0, 0.5, 2.0, -1.5],
    ]
)
LABELS = np.array([2, 1, 0, 1])


def _mp_gradient(x: np.ndarray, y: np.ndarray, v: Variant) -> np.ndarray:
    """The analytic gradient of the variant loss at 50 digits (float64 of it)."""
    out = np.empty(x.shape)
    with mpmath.workdps(50):
        s, lam = mpmath.mpf(v.logit_scale), mpmath.mpf(v.z_loss)
        for i, row in enumerate(x):
            zs = [s * mpmath.mpf(float(z)) for z in row]
            if v.softcap is not None:
                c = mpmath.mpf(v.softcap)
                chain = [s * mpmath.sech(z / c) ** 2 for z in zs]
                zc = [c * mpmath.tanh(z / c) for z in zs]
            else:
                chain, zc = [s] * len(zs), zs
            total = mpmath.fsum(mpmath.exp(z) for z in zc)
            lse = mpmath.log(total)
            for j, z in enumerate(zc):
                p = mpmath.exp(z) / total
                out[i, j] = float(chain[j] * (p - (1 if j == y[i] else 0) + 2 * lam * lse * p))
    return out


def _unit_probes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every coordinate of every row as a probe: (rows * C, C) rows, labels and unit vectors."""
    n, c = x.shape
    return np.repeat(x, c, axis=0), np.repeat(y, c), np.tile(np.eye(c), (n, 1))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_complex128_truth_agrees_with_mpmath(name: str) -> None:
    v = VARIANTS[name]
    want = _mp_gradient(ROWS, LABELS, v).ravel()
    got = variant_complex_step(*_unit_probes(ROWS, LABELS), v)
    # complex128: float64's relative accuracy on every entry, a few eps after tanh and exp
    assert np.all(np.abs(got - want) <= 1e-15 + 4e-15 * np.abs(want)), np.abs(got - want).max()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_binary128_truth_agrees_with_mpmath(name: str) -> None:
    v = VARIANTS[name]
    xb, yb, ub = _unit_probes(ROWS, LABELS)
    with mpmath.workdps(50):
        want = _mp_gradient(ROWS, LABELS, v).ravel()
        hi, lo = variant_complex_step_binary128(xb, yb, ub, v)
    # the double-double is ~2**-110 relative; the float64 mpmath value is exact to 2**-53, so
    # compare hi with it to float64's rounding and check lo is the float64 residual's size
    assert np.all(np.abs(hi - want) <= np.spacing(np.abs(want)))
    assert np.all(np.abs(lo) <= np.spacing(np.abs(hi)))


def test_binary128_truth_low_part_is_the_residual() -> None:
    """hi + lo against mpmath to 1e-30 relative: the float64 truth's own error is resolved."""
    v = VARIANTS["combined"]
    xb, yb, ub = _unit_probes(ROWS[:1], LABELS[:1])
    hi, lo = variant_complex_step_binary128(xb, yb, ub, v)
    with mpmath.workdps(50):
        s, c, lam = mpmath.mpf(2), mpmath.mpf(3), mpmath.mpf(v.z_loss)
        zc = [c * mpmath.tanh(s * mpmath.mpf(float(z)) / c) for z in ROWS[0]]
        total = mpmath.fsum(mpmath.exp(z) for z in zc)
        lse = mpmath.log(total)
        for j, z in enumerate(ROWS[0]):
            p = mpmath.exp(zc[j]) / total
            g = s * mpmath.sech(s * mpmath.mpf(float(z)) / c) ** 2
            g *= p - (1 if j == LABELS[0] else 0) + 2 * lam * lse * p
            err = abs(mpmath.mpf(float(hi[j])) + mpmath.mpf(float(lo[j])) - g)
            assert err <= mpmath.mpf(1e-30) * abs(g)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_central_difference_agrees_with_mpmath(name: str) -> None:
    v = VARIANTS[name]
    want = _mp_gradient(ROWS, LABELS, v).ravel()
    got = variant_central_difference(*_unit_probes(ROWS, LABELS), v)
    # binary128 Richardson: truncation h**4 |L^(5)| / 480 with h ~ 2**-23 / slope
    assert np.all(np.abs(got - want) <= 1e-20 + 1e-15 * np.abs(want)), np.abs(got - want).max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_passes_under_the_variant(name: str, dtype: str) -> None:
    v = VARIANTS[name]
    r = gradcheck(
        ROWS, LABELS, dtype=dtype, methods=["fused"], directions=2, full=True,
        z_loss=v.z_loss, softcap=v.softcap, logit_scale=v.logit_scale,
    )  # fmt: skip
    assert r.truth.ok and r.ok
    assert r.variant == v.rounded(get_precision(dtype).carrier)
    (m,) = r.methods
    assert m.passed and m.failed_entries == 0 and m.failed_directions == 0
    # regression: the plain loss's L''' and Hessian bounds called a correct method
    # inconsistent once s = 2 made the variant's derivatives 2**3 times larger
    assert m.consistency.verdict != "inconsistent"


def _broken(x: np.ndarray, y: np.ndarray, dtype: str, v: Variant) -> np.ndarray:
    """The variant's gradient with its chain factor dropped: fused's p - onehot of the
    transformed logits, without s sech**2 (and without the z-loss term)."""
    t = get_precision(dtype)
    z = x * v.logit_scale
    if v.softcap is not None:
        z = v.softcap * np.tanh(z / v.softcap)
    out = fused(z.astype(t.dtype), y, t, t)
    assert out.grad is not None
    return np.asarray(out.grad, dtype=np.float64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_dropped_chain_factor_is_caught(name: str, dtype: str) -> None:
    v = VARIANTS[name]
    x = ROWS.astype(get_precision(dtype).dtype)
    broken = _broken(x, LABELS, dtype, v)
    r = gradcheck(
        x, LABELS, dtype=dtype, methods=["fused"], gradients={"broken": broken},
        gate=["fused", "broken"], z_loss=v.z_loss, softcap=v.softcap, logit_scale=v.logit_scale,
    )  # fmt: skip
    by = {m.name: m for m in r.methods}
    assert by["fused"].passed and not by["broken"].passed
    assert by["broken"].failed_entries > 0 and not r.ok


def test_plain_options_give_no_variant() -> None:
    r = gradcheck(ROWS, LABELS, methods=["fused"], smoothing_convention="megatron")
    assert r.variant is not None and not r.variant.changes_values
    assert gradcheck(ROWS, LABELS, methods=["fused"]).variant is None


def test_cli_reports_the_variant_in_json(tmp_path) -> None:
    np.save(tmp_path / "z.npy", ROWS.astype(np.float32))
    np.save(tmp_path / "y.npy", LABELS)
    res = CliRunner().invoke(
        cli,
        ["gradcheck", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
         "--softcap", "5", "--logit-scale", "0.5", "--format", "json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["input"]["variant"] == {"logit_scale": 0.5, "softcap": 5.0}
    assert doc["methods"]["fused"]["passed"]


def test_cli_refuses_a_bad_softcap(tmp_path) -> None:
    res = CliRunner().invoke(cli, ["gradcheck", "--softcap", "0"])
    assert res.exit_code == 2
    assert "softcap must be a finite number > 0" in res.output
