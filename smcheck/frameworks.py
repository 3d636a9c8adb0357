"""PyTorch and JAX as methods: what the frameworks themselves compute in the working dtype.

* ``torch`` - ``torch.nn.functional.cross_entropy(z, y, reduction="none")`` with autograd
  (``loss.backward(ones)``), in the working dtype (float64, float32, float16, bfloat16; PyTorch
  has no float8 cross-entropy). Runs on CUDA when one is available, else on the CPU.
* ``jax`` - ``optax.softmax_cross_entropy_with_integer_labels`` with ``jax.vjp`` (one
  cotangent per row), in the working dtype (float8 included); enables ``jax_enable_x64`` for
  float64 work. Runs on JAX's default device.

The frameworks choose their own accumulation (PyTorch and XLA accumulate 16-bit softmax sums in
float32); smcheck's ``accum`` knob does not apply and the result reports ``accum`` as the
framework's. Intermediates are not visible, so ``overflow`` means "an inf in the framework's
loss or gradient" and ``underflow`` means "the framework's own softmax gives p_y = 0".
Optional extras: ``pip install 'smcheck-xent[torch]'`` / ``'smcheck-xent[jax]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from .errors import UsageError
from .methods import LossTargets, MethodFn, MethodOutput
from .precisions import Precision

__all__ = ["FRAMEWORK_METHODS", "framework_device"]


def _need(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(
            f"method {extra!r} needs {module}: pip install 'smcheck-xent[{extra}]'"
        ) from exc


def _torch_dtype(torch: Any, t: Precision) -> Any:
    table = {
        "float64": torch.float64,
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
    }
    if t.name not in table:
        raise UsageError(f"method 'torch': PyTorch has no {t.name} cross-entropy")
    return table[t.name]


def _torch_device(torch: Any) -> Any:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_method(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
) -> MethodOutput:
    """``torch.nn.functional.cross_entropy`` and its autograd gradient, in the working dtype.

    Loss options go to PyTorch as its own ``weight``, ``label_smoothing`` and soft (probability)
    targets, each rounded to the working dtype. Values travel through float32 or float64 (exact
    for every supported type) because torch cannot wrap ml_dtypes arrays.
    """
    torch = _need("torch", "torch")
    tdt = _torch_dtype(torch, t)
    dev = _torch_device(torch)
    wide = np.float64 if t.name == "float64" else np.float32
    z = torch.from_numpy(np.ascontiguousarray(x.astype(wide))).to(dev).to(tdt)

    def back(v: Any) -> np.ndarray:  # exact: every value is representable in T
        return v.detach().to(torch.float64).cpu().numpy().astype(t.dtype)

    with torch.no_grad():
        prob = back(torch.softmax(z, dim=1))
    if y is None and targets is None:  # label-free: the whole -log softmax row
        with torch.no_grad():
            loss_np = back(-torch.log_softmax(z, dim=1))
        inf_rows = np.asarray(np.isinf(loss_np.astype(np.float64)).any(axis=1))
        return MethodOutput(loss_np, None, inf_rows, np.asarray(prob == 0))

    def to_t(v: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(v).astype(wide))).to(dev).to(tdt)

    z.requires_grad_(True)
    kwargs: dict[str, Any] = {}
    if targets is not None and targets.soft is not None:
        target = to_t(targets.soft.astype(t.dtype))
    else:
        target = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev)
    if targets is not None:
        if targets.weight is not None:
            kwargs["weight"] = to_t(targets.weight.astype(t.dtype))
        kwargs["label_smoothing"] = targets.label_smoothing
    loss = torch.nn.functional.cross_entropy(z, target, reduction="none", **kwargs)
    loss.backward(torch.ones_like(loss))
    loss_np, grad_np = back(loss), back(z.grad)
    overflow = np.isinf(loss_np.astype(np.float64)) | np.isinf(grad_np.astype(np.float64)).any(
        axis=1
    )
    if targets is not None:
        return MethodOutput(loss_np, grad_np, overflow, ((prob == 0) & (targets.coeff != 0)).any(1))
    assert y is not None
    return MethodOutput(loss_np, grad_np, overflow, prob[np.arange(len(y)), y] == 0)


def jax_method(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
) -> MethodOutput:
    """``optax.softmax_cross_entropy_with_integer_labels`` and ``jax.vjp``, in the working dtype.

    With loss options, ``optax.softmax_cross_entropy(z, c)`` on the coefficients
    c = w * smooth_labels(targets) (optax has no class weights; this is its documented way).
    """
    jax = _need("jax", "jax")
    optax = _need("optax", "jax")
    if t.name == "float64":
        jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    z = jnp.asarray(x)
    prob = np.asarray(jax.nn.softmax(z, axis=-1))
    if y is None and targets is None:  # label-free: the whole -log softmax row
        loss = np.asarray(-jax.nn.log_softmax(z, axis=-1))
        return MethodOutput(loss, None, np.isinf(loss).any(axis=1), prob == 0)
    if targets is not None:
        coeff = jnp.asarray(targets.coeff)

        def per_row(logits: Any) -> Any:
            return optax.softmax_cross_entropy(logits, coeff)

    else:
        labels = jnp.asarray(np.asarray(y, dtype=np.int32))

        def per_row(logits: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    loss_j, pullback = jax.vjp(per_row, z)
    (grad_j,) = pullback(jnp.ones_like(loss_j))
    loss = np.asarray(loss_j).astype(t.dtype)
    grad = np.asarray(grad_j).astype(t.dtype)
    # float8_e4m3fn has no inf: there an overflow shows as NaN
    bad = np.isinf if t.has_inf else np.isnan
    overflow = bad(loss.astype(np.float64)) | bad(grad.astype(np.float64)).any(axis=1)
    if targets is not None:
        return MethodOutput(loss, grad, overflow, ((prob == 0) & (targets.coeff != 0)).any(1))
    assert y is not None
    p_y = prob[np.arange(len(y)), np.asarray(y)]
    return MethodOutput(loss, grad, overflow, p_y.astype(np.float64) == 0)


def framework_device(name: str) -> str:
    """Where a framework method runs ("cpu", "cuda", ...), for reports."""
    if name == "torch":
        torch = _need("torch", "torch")
        return str(_torch_device(torch))
    if name == "jax":
        jax = _need("jax", "jax")
        return str(jax.devices()[0].platform)
    raise UsageError(f"{name!r} is not a framework method")


#: Framework methods, by name. Not part of ``all``: name them explicitly (``--methods torch``).
FRAMEWORK_METHODS: dict[str, MethodFn] = {"torch": torch_method, "jax": jax_method}
