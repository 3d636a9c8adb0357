"""PyTorch and JAX as methods: agree with the reference where the frameworks are exact."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from smcheck import cross_entropy, reference
from smcheck.core import get_method
from smcheck.errors import UsageError
from smcheck.precisions import get_precision

from .conftest import mp_truth

X = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
Y = np.array([0, 1])


def test_pytorch_documented_mean_from_the_reference() -> None:
    # torch.nn.CrossEntropyLoss docs / issue 8: mean over [[2, 1, .1], [.5, 2.5, .3]], labels [0, 1]
    ref = reference(X, Y, dtype="float64")
    assert math.fsum(ref.loss) / 2 == pytest.approx(0.3185397696491856, rel=2e-16)
    truth = mpmath.fsum(mp_truth(X[i], int(Y[i]))[0] for i in range(2)) / 2
    assert float(truth) == pytest.approx(0.3185397696491856, rel=2e-16)


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_framework_methods_close_to_reference(framework: str, dtype: str) -> None:
    pytest.importorskip("torch" if framework == "torch" else "optax")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 50)) * 4
    y = rng.integers(0, 50, 16)
    r = cross_entropy(x, y, method=framework, dtype=dtype)
    ref = reference(x, y, dtype=dtype)
    p = get_precision(dtype)
    assert r.loss.dtype == p.dtype and r.grad.dtype == p.dtype
    # a handful of roundings in T around values of size |L| + |z_y - m| <= ~40
    loss_err = np.abs(r.loss.astype(np.float64) - ref.loss)
    assert np.all(loss_err <= 16 * p.eps * (1 + np.abs(ref.loss))), (framework, dtype)
    grad_err = np.abs(r.grad.astype(np.float64) - ref.grad)
    assert np.all(grad_err <= 8 * p.eps), (framework, dtype)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_framework_methods_survive_the_seed_case(framework: str) -> None:
    pytest.importorskip("torch" if framework == "torch" else "optax")
    r = cross_entropy(np.array([[0.0, -800.0, 1.0]]), np.array([1]), method=framework)
    assert r.loss[0] == pytest.approx(801.3132616875182, rel=1e-15)
    np.testing.assert_allclose(r.grad[0], [0.2689414213699951, -1.0, 0.7310585786300049])
    assert r.underflow[0]  # p_y = e**-801 is 0 in float64, yet loss and gradient are right


def test_torch_has_no_float8() -> None:
    pytest.importorskip("torch")
    with pytest.raises(UsageError, match="no float8_e4m3fn"):
        cross_entropy(X, Y, method="torch", dtype="float8_e4m3fn")


def test_unknown_method_lists_framework_methods() -> None:
    with pytest.raises(UsageError, match="torch, jax"):
        get_method("tensorflow")


def test_missing_framework_names_the_extra() -> None:
    from smcheck.frameworks import _need

    with pytest.raises(UsageError, match=r"pip install 'smcheck-xent\[torch\]'"):
        _need("no_such_module_smcheck", "torch")


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_framework_methods_with_loss_options(framework: str, dtype: str) -> None:
    pytest.importorskip("torch" if framework == "torch" else "optax")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 12)) * 3
    y = rng.integers(0, 12, 8)
    w = rng.uniform(0.5, 2.0, 12)
    soft = rng.dirichlet(np.ones(12), 8)
    p = get_precision(dtype)
    for labels, kw in ((y, {"weight": w, "label_smoothing": 0.1}), (soft, {"weight": w})):
        r = cross_entropy(x, labels, method=framework, dtype=dtype, **kw)
        ref = reference(x, labels, dtype=dtype, **kw)
        scale = 1 + np.abs(ref.loss) + 2 * 12
        assert np.all(np.abs(r.loss.astype(np.float64) - ref.loss) <= 16 * p.eps * scale)
        assert np.all(np.abs(r.grad.astype(np.float64) - ref.grad) <= 16 * p.eps * 2 * 12)


def test_framework_methods_in_gradcheck_and_sweep() -> None:
    pytest.importorskip("torch")
    from smcheck.gradcheck import gradcheck, synthetic
    from smcheck.sweep import SweepConfig

    syn = synthetic("all", rows=6, classes=10, scale=4.0, seed=0)
    rep = gradcheck(syn.logits, syn.labels, dtype="float32", methods=("fused", "torch"))
    by_name = {m.name: m for m in rep.methods}
    assert by_name["torch"].passed and by_name["fused"].passed
    cfg = SweepConfig(dtypes=("float32",), classes=(10,), scales=(1.0,), methods=("torch",))
    assert cfg.methods == ("torch",)


def test_eval_reports_where_a_framework_method_ran() -> None:
    pytest.importorskip("torch")
    from smcheck.evaluate import evaluate

    rng = np.random.default_rng(0)
    rep = evaluate(rng.standard_normal((8, 5)), rng.integers(0, 5, 8), methods=("torch",))
    assert any(n.startswith("method torch ran on ") for n in rep.input.notes)
