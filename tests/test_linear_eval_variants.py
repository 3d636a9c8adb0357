"""The chunked linear cross-entropy emulation with the loss variants, against mpmath.

:func:`smcheck.linear.linear_cross_entropy` with logit_scale, softcap, z_loss and both label
smoothing conventions is checked against an independent mpmath computation (40 digits) of
loss_i = sum_j t_ij (lse_i - z''_ij) + lambda lse_i**2, z'' = c tanh(s z / c), z = h W^T + b
on the inputs rounded to the working dtype, and its gradients through cap and scale. The same
oracle with one deliberately wrong formula (each a bug a real kernel has shipped: the cap
before the scale, z tanh(z/c), the z-loss of the shifted sum, no 1 - tanh**2 ...) lands far
outside the bound the emulation meets - so the bound is tight enough to tell them apart.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import mpmath
import numpy as np
import pytest

from smcheck.errors import UsageError
from smcheck.linear import linear_cross_entropy
from smcheck.precisions import get_precision

mp = mpmath.mp

#: Deliberately wrong formulas the oracle can compute instead of the right one.
WRONG = (
    "cap_before_scale",  # s c tanh(z / c)
    "z_tanh",  # z' tanh(z' / c) for c tanh(z' / c)
    "zloss_shifted",  # lambda (log sum exp(z - m))**2: the shifted sum's log
    "zloss_no_grad",  # the z-loss in the loss, not its 2 lambda lse p in the gradient
    "no_tanh_grad",  # the gradient without 1 - tanh**2
    "no_scale_grad",  # the gradient without s
    "other_convention",  # the other smoothing convention's coefficients
)


def oracle(
    h: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    y: np.ndarray,
    *,
    eps: float = 0.0,
    convention: str = "torch",
    scale: float = 1.0,
    cap: float | None = None,
    lam: float = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    wrong: str | None = None,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray | None]:
    """(loss per row, reduced loss, dh, dW, db) in mpmath at 40 digits, rounded to float64."""
    with mp.workdps(40):
        n, d = h.shape
        v = w.shape[0]
        hm = [[mpmath.mpf(float(x)) for x in row] for row in h]
        wm = [[mpmath.mpf(float(x)) for x in row] for row in w]
        bm = None if b is None else [mpmath.mpf(float(x)) for x in b]
        s, lm = mpmath.mpf(scale), mpmath.mpf(lam)
        c = None if cap is None else mpmath.mpf(cap)
        conv = convention
        if wrong == "other_convention":
            conv = "megatron" if convention == "torch" else "torch"
        counted = [int(t) != ignore_index for t in y]
        cr = mpmath.mpf(1) / max(sum(counted), 1) if reduction == "mean" else mpmath.mpf(1)
        losses, g_rows = [], []
        for i in range(n):
            z = [mpmath.fsum(hm[i][k] * wm[j][k] for k in range(d)) + (bm[j] if bm else 0)
                 for j in range(v)]  # fmt: skip
            if wrong == "cap_before_scale" and c is not None:
                zz = [s * c * mpmath.tanh(x / c) for x in z]
                dz = [s * (1 - mpmath.tanh(x / c) ** 2) for x in z]
            else:
                zs = [s * x for x in z]
                if c is None:
                    zz, dz = zs, [s] * v
                elif wrong == "z_tanh":
                    zz = [x * mpmath.tanh(x / c) for x in zs]
                    dz = [s * (mpmath.tanh(x / c) + x / c * (1 - mpmath.tanh(x / c) ** 2))
                          for x in zs]  # fmt: skip
                else:
                    zz = [c * mpmath.tanh(x / c) for x in zs]
                    dz = [s * (1 - mpmath.tanh(x / c) ** 2) for x in zs]
            if wrong == "no_tanh_grad":
                dz = [s] * v
            if wrong == "no_scale_grad":
                dz = [x / s for x in dz]
            if not counted[i]:
                losses.append(mpmath.mpf(0))
                g_rows.append([mpmath.mpf(0)] * v)
                continue
            m = max(zz)
            lse = m + mpmath.log(mpmath.fsum(mpmath.exp(x - m) for x in zz))
            p = [mpmath.exp(x - lse) for x in zz]
            yi = int(y[i])
            off = mpmath.mpf(eps) / (v - 1 if conv == "megatron" else v)
            on = 1 - mpmath.mpf(eps) + (0 if conv == "megatron" else off)
            t = [on if j == yi else off for j in range(v)]
            loss = mpmath.fsum(t[j] * (lse - zz[j]) for j in range(v))
            zl = lse - m if wrong == "zloss_shifted" else lse
            loss += lm * zl**2
            zf = 1 if wrong == "zloss_no_grad" else 1 + 2 * lm * zl
            g_rows.append([cr * dz[j] * (p[j] * zf - t[j]) for j in range(v)])
            losses.append(loss)
        red = mpmath.fsum(losses) * (cr if reduction == "mean" else 1)
        dh = [[mpmath.fsum(g_rows[i][j] * wm[j][k] for j in range(v)) for k in range(d)]
              for i in range(n)]  # fmt: skip
        dw = [[mpmath.fsum(g_rows[i][j] * hm[i][k] for i in range(n)) for k in range(d)]
              for j in range(v)]  # fmt: skip
        db = [mpmath.fsum(g_rows[i][j] for i in range(n)) for j in range(v)]

        def f(x: Any) -> np.ndarray:
            return np.array(x, dtype=object).astype(float)

        return f(losses), float(red), f(dh), f(dw), None if b is None else f(db)


def _inputs(dtype: str, seed: int = 3) -> tuple[np.ndarray, ...]:
    """N=6, D=5, V=11 (prime: no chunk divides it), one ignored row; logits up to ~|6|."""
    rng = np.random.default_rng(seed)
    n, d, v = 6, 5, 11
    t = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    h = rng.standard_normal((n, d)).astype(t).astype(np.float64)
    w = (rng.standard_normal((v, d)) * 1.2).astype(t).astype(np.float64)
    b = (rng.standard_normal(v) / 4).astype(t).astype(np.float64)
    y = rng.integers(0, v, n)
    y[4] = -100
    return h, w, b, y


def _distance(got: Any, want: tuple[Any, ...], dtype: str, zmax: float) -> float:
    """The largest error relative to its bound (<= 1: within the working dtype's bound).

    Loss: |L - L*| <= 4 eps max(1, |L*|, max |s z|): the logits tile is rounded to the working
    dtype (eps/2 of each |z|, carried through softmax with weight <= 1 + 2 lambda lse) and so
    is the output. Gradients: normwise 4 eps: the rounded grad_logits tile (eps/2), the
    rounded output (eps/2), the rounded logits' effect on p (eps/2 |z| relative on p_j)."""
    eps = get_precision(dtype).eps
    loss, red, dh, dw, db = want
    scale = np.maximum(np.maximum(1.0, np.abs(loss)), zmax)
    errs = [np.max(np.abs(got.loss - loss) / (4 * eps * scale))]
    errs.append(abs(got.loss_reduced - red) / (4 * eps * max(1.0, abs(red), zmax)))
    for g, r in ((got.grad_hidden, dh), (got.grad_weight, dw), (got.grad_bias, db)):
        errs.append(float(np.linalg.norm(g - r) / np.linalg.norm(r)) / (4 * eps))
    return float(max(errs))


CASES: dict[str, dict[str, Any]] = {
    "scale": {"scale": 0.5},
    "softcap": {"cap": 3.0},
    "scale_then_cap": {"scale": 2.0, "cap": 3.0},
    "z_loss": {"lam": 0.05},
    "smoothing_torch": {"eps": 0.2},
    "smoothing_megatron": {"eps": 0.2, "convention": "megatron"},
    "everything": {"scale": 1.5, "cap": 4.0, "lam": 0.02, "eps": 0.1, "convention": "megatron"},
}


def _kwargs(case: dict[str, Any]) -> dict[str, Any]:
    return {
        "label_smoothing": case.get("eps", 0.0),
        "smoothing_convention": case.get("convention", "torch"),
        "logit_scale": case.get("scale", 1.0),
        "softcap": case.get("cap"),
        "z_loss": case.get("lam", 0.0),
    }


def _zmax(h: np.ndarray, w: np.ndarray, b: np.ndarray, case: dict[str, Any]) -> float:
    return float(np.max(np.abs(h @ w.T + b))) * abs(case.get("scale", 1.0))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_emulated_variant_is_within_the_working_dtype_bound_of_mpmath(
    name: str, dtype: str, reduction: str
) -> None:
    h, w, b, y = _inputs(dtype)
    case = CASES[name]
    got = linear_cross_entropy(h, w, y, bias=b, dtype=dtype, reduction=reduction, chunk_rows=4,
                               chunk_vocab=4, **_kwargs(case))  # fmt: skip
    want = oracle(h, w, b, y, reduction=reduction, **case)
    assert _distance(got, want, dtype, _zmax(h, w, b, case)) <= 1.0


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("scale_then_cap", "cap_before_scale"),
        ("softcap", "z_tanh"),
        ("scale_then_cap", "z_tanh"),
        ("z_loss", "zloss_shifted"),
        ("z_loss", "zloss_no_grad"),
        ("softcap", "no_tanh_grad"),
        ("scale", "no_scale_grad"),
        ("smoothing_torch", "other_convention"),
        ("smoothing_megatron", "other_convention"),
        ("everything", "cap_before_scale"),
        ("everything", "zloss_shifted"),
    ],
)
def test_a_wrong_variant_formula_is_far_outside_the_bound(name: str, wrong: str) -> None:
    h, w, b, y = _inputs("float32")
    case = CASES[name]
    got = linear_cross_entropy(h, w, y, bias=b, dtype="float32", chunk_rows=4, chunk_vocab=4,
                               **_kwargs(case))  # fmt: skip
    zmax = _zmax(h, w, b, case)
    assert _distance(got, oracle(h, w, b, y, **case), "float32", zmax) <= 1.0
    assert _distance(got, oracle(h, w, b, y, wrong=wrong, **case), "float32", zmax) > 100.0


def test_plain_options_give_the_plain_loss_bit_for_bit() -> None:
    h, w, b, y = _inputs("bfloat16")
    plain = linear_cross_entropy(h, w, y, bias=b, dtype="bfloat16", chunk_rows=4, chunk_vocab=4)
    same = linear_cross_entropy(h, w, y, bias=b, dtype="bfloat16", chunk_rows=4, chunk_vocab=4,
                                z_loss=0.0, softcap=None, logit_scale=1.0,
                                smoothing_convention="megatron")  # fmt: skip
    for a, c in zip(
        (plain.loss, plain.grad_hidden, plain.grad_weight, plain.grad_bias),
        (same.loss, same.grad_hidden, same.grad_weight, same.grad_bias),
        strict=True,
    ):
        assert a.tobytes() == c.tobytes()  # megatron without smoothing: nothing to spread


def test_saturated_softcap_gives_zero_gradient_not_nan() -> None:
    """1 - tanh**2 is exactly 0 in float32 once tanh rounds to 1: the logit's gradient is 0."""
    h = np.array([[100.0, 0.0], [0.0, 1.0]])
    w = np.array([[100.0, 0.0], [0.0, 1.0], [-100.0, 0.0]])
    y = np.array([1, 0])
    got = linear_cross_entropy(h, w, y, dtype="float32", softcap=30.0)
    assert np.all(np.isfinite(got.grad_weight)) and np.all(np.isfinite(got.loss))
    # row 0: z = (1e4, 0, -1e4) capped to (30, 0, -30): loss = lse - 0 ~ 30 (= 30 + log(1+...))
    assert got.loss[0] == pytest.approx(30.0 + math.log1p(math.exp(-30.0) * 2), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"softcap": -1.0}, "softcap must be a finite number > 0, got -1.0"),
        ({"logit_scale": 0.0}, "logit_scale must be a finite nonzero number"),
        ({"z_loss": -1e-4}, "z_loss must be a finite number >= 0"),
        ({"smoothing_convention": "paper"}, "unknown smoothing_convention 'paper'"),
        ({"label_smoothing": 1.5}, "label_smoothing must be in [0, 1], got 1.5"),
        ({"softcap": 1e39}, "softcap=1e+39 is not representable in float32"),
    ],
)
def test_invalid_variant_is_a_usage_error(kwargs: dict[str, Any], message: str) -> None:
    h, w, b, y = _inputs("float32")
    with pytest.raises(UsageError) as info:
        linear_cross_entropy(h, w, y, dtype="float32", **kwargs)
    assert message in str(info.value)


def test_megatron_needs_two_classes() -> None:
    with pytest.raises(UsageError, match="needs at least 2 classes, got 1"):
        linear_cross_entropy(np.ones((2, 3)), np.ones((1, 3)), np.array([0, 0]),
                             smoothing_convention="megatron", label_smoothing=0.1)  # fmt: skip
