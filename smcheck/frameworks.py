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

Loss variants (:mod:`smcheck.variants`) are written the way those frameworks' users write
them, in the working dtype (docs/variants.md shows the code)::

    z = logits * scale                      # PyTorch; jnp the same
    z = cap * torch.tanh(z / cap)
    loss = F.cross_entropy(z, y, reduction="none", weight=w, label_smoothing=eps)
    lse = torch.logsumexp(z, dim=-1)
    loss = loss + z_loss * lse.square()

Megatron's smoothing has no flag in either framework: its users pass the smoothed target
distribution (PyTorch: ``F.cross_entropy(z, probs)``; optax: ``softmax_cross_entropy(z,
probs)``), which is what these methods do with the coefficients of the front door.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from .errors import UsageError
from .methods import LossTargets, MethodFn, MethodOutput
from .precisions import Precision
from .variants import Variant

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
    *,
    variant: Variant | None = None,
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
    z0 = torch.from_numpy(np.ascontiguousarray(x.astype(wide))).to(dev).to(tdt)
    v = Variant() if variant is None else variant
    z0.requires_grad_(y is not None or targets is not None)

    def back(val: Any) -> np.ndarray:  # exact: every value is representable in T
        return val.detach().to(torch.float64).cpu().numpy().astype(t.dtype)

    # the variant as PyTorch users write it: scale, then cap, each in T (python floats)
    z = z0 * v.logit_scale if v.logit_scale != 1.0 else z0
    if v.softcap is not None:
        z = v.softcap * torch.tanh(z / v.softcap)
    zl = None
    if v.z_loss != 0.0:
        zl = v.z_loss * torch.logsumexp(z, dim=1).square()
    with torch.no_grad():
        prob = back(torch.softmax(z, dim=1))
    if y is None and targets is None:  # label-free: the whole -log softmax row
        with torch.no_grad():
            nll = -torch.log_softmax(z, dim=1)
            loss_np = back(nll if zl is None else nll + zl[:, None])
        inf_rows = np.asarray(np.isinf(loss_np.astype(np.float64)).any(axis=1))
        zl_np = None if zl is None else back(zl)
        return MethodOutput(loss_np, None, inf_rows, np.asarray(prob == 0), zl_np)

    def to_t(val: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(val).astype(wide))).to(dev).to(tdt)

    kwargs: dict[str, Any] = {}
    if targets is not None and v.smoothing_convention == "megatron":
        # no Megatron flag in PyTorch: its users pass the smoothed distribution (times the
        # class weights), the front door's coefficients
        target = to_t(targets.coeff.astype(t.dtype))
    elif targets is not None and targets.soft is not None:
        target = to_t(targets.soft.astype(t.dtype))
    else:
        target = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev)
    if targets is not None and v.smoothing_convention != "megatron":
        if targets.weight is not None:
            kwargs["weight"] = to_t(targets.weight.astype(t.dtype))
        kwargs["label_smoothing"] = targets.label_smoothing
    loss = torch.nn.functional.cross_entropy(z, target, reduction="none", **kwargs)
    if zl is not None:
        loss = loss + zl
    loss.backward(torch.ones_like(loss))
    loss_np, grad_np = back(loss), back(z0.grad)
    overflow = np.isinf(loss_np.astype(np.float64)) | np.isinf(grad_np.astype(np.float64)).any(
        axis=1
    )
    zl_np = None if zl is None else back(zl)
    if targets is not None:
        under = ((prob == 0) & (targets.coeff != 0)).any(1)
        return MethodOutput(loss_np, grad_np, overflow, under, zl_np)
    assert y is not None
    return MethodOutput(loss_np, grad_np, overflow, prob[np.arange(len(y)), y] == 0, zl_np)


def jax_method(
    x: np.ndarray,
    y: np.ndarray | None,
    t: Precision,
    a: Precision,
    targets: LossTargets | None = None,
    *,
    variant: Variant | None = None,
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
    v = Variant() if variant is None else variant
    z0 = jnp.asarray(x)

    def transform(logits: Any) -> Any:
        # the variant as JAX users write it (Gemma: cap * jnp.tanh(logits / cap)), in T
        if v.logit_scale != 1.0:
            logits = logits * jnp.asarray(v.logit_scale, logits.dtype)
        if v.softcap is not None:
            cap = jnp.asarray(v.softcap, logits.dtype)
            logits = cap * jnp.tanh(logits / cap)
        return logits

    def z_term(logits: Any) -> Any:
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.asarray(v.z_loss, logits.dtype) * jnp.square(lse)

    z = transform(z0)
    prob = np.asarray(jax.nn.softmax(z, axis=-1))
    zl = None if v.z_loss == 0.0 else np.asarray(z_term(z)).astype(t.dtype)
    if y is None and targets is None:  # label-free: the whole -log softmax row
        nll = -jax.nn.log_softmax(z, axis=-1)
        if zl is not None:
            nll = nll + z_term(z)[:, None]
        loss = np.asarray(nll)
        return MethodOutput(loss, None, np.isinf(loss).any(axis=1), prob == 0, zl)
    if targets is not None:
        coeff = jnp.asarray(targets.coeff)

        def base(logits: Any) -> Any:
            return optax.softmax_cross_entropy(logits, coeff)

    else:
        labels = jnp.asarray(np.asarray(y, dtype=np.int32))

        def base(logits: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def per_row(logits: Any) -> Any:
        zz = transform(logits)
        out = base(zz)
        return out if v.z_loss == 0.0 else out + z_term(zz)

    loss_j, pullback = jax.vjp(per_row, z0)
    (grad_j,) = pullback(jnp.ones_like(loss_j))
    loss = np.asarray(loss_j).astype(t.dtype)
    grad = np.asarray(grad_j).astype(t.dtype)
    # float8_e4m3fn has no inf: there an overflow shows as NaN
    bad = np.isinf if t.has_inf else np.isnan
    overflow = bad(loss.astype(np.float64)) | bad(grad.astype(np.float64)).any(axis=1)
    if targets is not None:
        under = ((prob == 0) & (targets.coeff != 0)).any(1)
        return MethodOutput(loss, grad, overflow, under, zl)
    assert y is not None
    p_y = prob[np.arange(len(y)), np.asarray(y)]
    return MethodOutput(loss, grad, overflow, p_y.astype(np.float64) == 0, zl)


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
