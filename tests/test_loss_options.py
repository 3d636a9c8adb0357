"""PyTorch's CrossEntropyLoss options (weight, label_smoothing, soft targets, reduction,
ignore_index) in the reference and in every method."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from smcheck import METHODS, cross_entropy, reference
from smcheck.core import prepare
from smcheck.errors import InputError, UsageError
from smcheck.precisions import get_precision

from .conftest import TRUTH_DPS

X = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
Y = np.array([0, 1])


def mp_dd(hi: float, lo: float) -> mpmath.mpf:
    """hi + lo exactly (at 60 digits; mpmath's default 15 would round the double-double)."""
    with mpmath.workdps(TRUTH_DPS):
        return mpmath.mpf(float(hi)) + mpmath.mpf(float(lo))


def mp_option_loss(row: np.ndarray, coeff: list[float]) -> mpmath.mpf:
    """sum_k c_k (-log p_k) at 60 digits, straight from the definition."""
    with mpmath.workdps(TRUTH_DPS):
        z = [mpmath.mpf(float(v)) for v in row]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in z))
        return mpmath.fsum(mpmath.mpf(c) * (lse - v) for c, v in zip(coeff, z, strict=True) if c)


def test_pytorch_documented_values() -> None:
    # the values torch.nn.functional.cross_entropy gives on this input (issue 8)
    assert reference(X, Y).reduced("mean") == pytest.approx(0.3185397696491856, rel=4e-16)
    w = np.array([1.0, 2.0, 3.0])
    assert reference(X, Y, weight=w).reduced("mean") == pytest.approx(0.2857096874396363, rel=4e-16)
    assert reference(X, Y, label_smoothing=0.1).reduced("mean") == pytest.approx(
        0.43687310298251897, rel=4e-16
    )


def test_reference_options_against_mpmath() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 7)) * 6
    y = rng.integers(0, 7, 5)
    w = rng.uniform(0.1, 3.0, 7)
    eps = 0.2
    ref = reference(x, y, dtype="float64", weight=w, label_smoothing=eps)
    used = prepare(x, y, dtype="float64", weight=w, label_smoothing=eps).coeff
    for i in range(5):
        exact = [eps / 7 * w[k] + ((1 - eps) * w[k] if k == y[i] else 0.0) for k in range(7)]
        got = mp_dd(ref.loss[i], ref.loss_lo[i])
        # the coefficients are inputs rounded once to the working dtype ...
        assert float(abs(got - mp_option_loss(x[i], exact)) / got) < 4e-16
        # ... and with those same rounded coefficients the reference is binary128-accurate
        assert float(abs(got - mp_option_loss(x[i], list(used[i]))) / got) < 1e-28
    soft = rng.dirichlet(np.ones(7), 5)
    ref = reference(x, soft, dtype="float64", weight=w)
    for i in range(5):
        truth = mp_option_loss(x[i], list(w * soft[i]))  # w * t: one float64 rounding, as used
        got = mp_dd(ref.loss[i], ref.loss_lo[i])
        assert abs(got - truth) / truth < 1e-28
    # gradient rows of p * sum(c) - c sum to 0 (the values are checked against PyTorch below)
    g = ref.grad + ref.grad_lo
    np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-15)


def _torch_loss(x, target, **kw):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    z = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(target)
    if "weight" in kw and kw["weight"] is not None:
        kw["weight"] = torch.tensor(kw["weight"], dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(z, t, reduction="none", **kw)
    loss.backward(torch.ones_like(loss))
    mean = torch.nn.functional.cross_entropy(z.detach(), t, reduction="mean", **kw)
    return loss.detach().numpy(), z.grad.numpy(), float(mean)


@pytest.mark.parametrize(
    "kw",
    [
        {"weight": [0.5, 2.0, 1.0, 3.0]},
        {"label_smoothing": 0.15},
        {"weight": [0.5, 2.0, 1.0, 3.0], "label_smoothing": 0.3},
        {"ignore_index": 2},
    ],
)
def test_reference_matches_pytorch_float64(kw: dict) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 4)) * 3
    y = np.array([0, 2, 1, 3, 2, 1])
    loss_t, grad_t, mean_t = _torch_loss(x, y, **kw)
    ref = reference(x, y, **kw)
    np.testing.assert_allclose(ref.loss, loss_t, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(ref.grad, grad_t, rtol=1e-13, atol=1e-15)
    assert ref.reduced("mean") == pytest.approx(mean_t, rel=1e-14)


def test_soft_targets_match_pytorch_float64() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 4)) * 3
    soft = rng.dirichlet(np.ones(4), 6)
    w = np.array([0.5, 2.0, 1.0, 3.0])
    loss_t, grad_t, mean_t = _torch_loss(x, soft, weight=w, label_smoothing=0.1)
    ref = reference(x, soft, weight=w, label_smoothing=0.1)
    np.testing.assert_allclose(ref.loss, loss_t, rtol=1e-14)
    np.testing.assert_allclose(ref.grad, grad_t, rtol=1e-13, atol=1e-15)
    assert ref.reduced("mean") == pytest.approx(mean_t, rel=1e-14)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_methods_with_options_close_to_reference(method: str, dtype: str) -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 20)) * 3
    y = rng.integers(0, 20, 8)
    w = rng.uniform(0.5, 2.0, 20)
    p = get_precision(dtype)
    for kw in ({"weight": w}, {"label_smoothing": 0.1}, {"weight": w, "label_smoothing": 0.2}):
        r = cross_entropy(x, y, method=method, dtype=dtype, **kw)
        ref = reference(x, y, dtype=dtype, **kw)
        scale = np.abs(ref.loss) + w.max() * 20
        # the chained methods may overflow (exp(z) > 11.09 in float16): judge finite rows only
        ok = np.isfinite(r.loss.astype(np.float64)) & np.isfinite(r.grad).all(axis=1)
        if method in ("fused", "log1p", "online"):
            assert ok.all()
        lerr = np.abs(r.loss.astype(np.float64) - ref.loss)[ok]
        assert np.all(lerr <= 16 * p.eps * scale[ok]), kw
        gerr = np.abs(r.grad.astype(np.float64) - ref.grad)[ok]
        assert np.all(gerr <= 16 * p.eps * w.max() * 20), kw
    plain = cross_entropy(x, y, method=method, dtype=dtype)
    onehot_w = cross_entropy(x, y, method=method, dtype=dtype, weight=np.ones(20))
    # weight 1 is the plain loss: the same values (a sum of one non-zero term is exact)
    np.testing.assert_array_equal(onehot_w.loss, plain.loss)


def test_log1p_with_options_keeps_confident_rows() -> None:
    x = np.array([[40.0, 0.0, 0.0]])
    w = np.array([2.0, 1.0, 1.0])
    ref = reference(x, np.array([0]), weight=w)
    r = cross_entropy(x, np.array([0]), method="log1p", weight=w)
    assert float(r.loss[0]) == pytest.approx(float(ref.loss[0]), rel=1e-15)
    assert ref.loss[0] == pytest.approx(2 * math.log1p(2 * math.exp(-40)), rel=1e-15)
    assert cross_entropy(x, np.array([0]), method="fused", weight=w).loss[0] == 0


def test_chained_methods_break_with_label_smoothing_when_any_class_underflows() -> None:
    # label smoothing gives every class a coefficient: -c_k / p_k = -inf for the underflowed
    # class, so the separate-layer gradient is NaN even though p_y is fine
    x = np.array([[0.0, -800.0, 1.0]])
    r = cross_entropy(x, np.array([0]), method="shifted", label_smoothing=0.1)
    assert not np.isfinite(r.grad).all() and r.underflow[0]
    f = cross_entropy(x, np.array([0]), method="fused", label_smoothing=0.1)
    assert np.isfinite(f.grad).all()
    plain = cross_entropy(x, np.array([0]), method="shifted")
    assert np.isfinite(plain.grad).all()


def test_reductions_and_conventions() -> None:
    y_all_ignored = np.array([-100, -100])
    ref = reference(X, y_all_ignored)
    assert math.isnan(ref.reduced("mean", "torch"))
    assert ref.reduced("mean", "jax") == 0.0
    assert ref.reduced("sum") == 0.0
    r = cross_entropy(X, Y, dtype="float16")
    exact = reference(X, Y, dtype="float16").reduced("mean")
    assert abs(r.reduced("mean") - exact) <= 2 * get_precision("float16").eps * exact
    with pytest.raises(UsageError):
        ref.reduced("median")


def test_option_validation() -> None:
    with pytest.raises(InputError, match="weight must be 3"):
        reference(X, Y, weight=np.array([1.0, 2.0]))
    with pytest.raises(UsageError, match="label_smoothing"):
        reference(X, Y, label_smoothing=1.5)
    with pytest.raises(InputError, match="row 1: soft targets"):
        reference(X, np.array([[0.5, 0.5, 0.0], [0.5, -0.5, 1.0]]))
