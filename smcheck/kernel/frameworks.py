"""Frameworks: how a kernel is handed fresh inputs and its loss and gradient come back (torch,
jax, numpy), each with its stock cross-entropy; and which framework a kernel is."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import FRAMEWORKS, KernelFn, Precision, Prepared, UsageError, _one_line, _quiet

# --- what came back from one call ---------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """One call of a kernel: loss (float64, shape () or (N,)), gradient of <cotangent, loss>
    w.r.t. the logits (float64 (N, C)), the loss's own dtype, and what went wrong."""

    loss: np.ndarray | None = None
    grad: np.ndarray | None = None
    loss_dtype: str = ""
    error: str | None = None  # the callee raised, or returned something unusable
    mutated: str | None = None  # which input the call modified


# --- frameworks: how to hand a kernel its inputs and get loss and gradient back -----------------


class _Framework:
    """Calls a kernel on fresh inputs in one framework; also the framework's stock kernel."""

    name = ""
    cotangent = True  # per-row losses are pulled back with a given cotangent

    def call(
        self,
        fn: KernelFn,
        prep: Prepared,
        opts: dict[str, Any],
        cot: np.ndarray | None,
    ) -> _Outcome:
        raise NotImplementedError

    def stock(self) -> KernelFn:
        raise NotImplementedError

    def stock_name(self) -> str:
        raise NotImplementedError

    def variant_stock(self) -> KernelFn | None:
        """The stock kernel of the loss variants (:mod:`smcheck.variants`), built from the
        framework's own pieces as its users write it; None: no stock comparison."""
        return None

    def device(self) -> str:
        return "cpu"

    def supports(self, working: Precision) -> bool:
        return True

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Around the whole suite (see :meth:`_Torch.session`)."""
        yield

    def release(self) -> None:
        """Between vocabulary sizes: drop what only the last shape could reuse."""


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"framework needs {module}, which is not installed") from exc


class _Torch(_Framework):
    name = "torch"

    def __init__(self, device: str | None) -> None:
        self.torch = _need("torch")
        try:
            self.dev = self.torch.device(device or "cpu")
            self.torch.empty(1, device=self.dev)
        except (RuntimeError, AssertionError) as exc:
            raise UsageError(f"--device {device}: {_one_line(exc)}") from exc

    def device(self) -> str:
        return str(self.dev)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """One intra-op thread on the CPU while the probes run, restored afterwards: a probe's
        batch is 6-64 rows, too small for threads to pay, and on a loaded machine torch's
        spinning OpenMP workers made the default suite 3-5x slower (48 s instead of 16 s)."""
        if self.dev.type != "cpu":
            yield
            return
        before = self.torch.get_num_threads()
        self.torch.set_num_threads(1)
        try:
            yield
        finally:
            self.torch.set_num_threads(before)

    def _dtype(self, working: Precision) -> Any:
        t = self.torch
        table = {"float64": t.float64, "float32": t.float32, "float16": t.float16}
        table["bfloat16"] = t.bfloat16
        return table.get(working.name)

    def supports(self, working: Precision) -> bool:
        return self._dtype(working) is not None

    def _bits(self, v: Any) -> Any:
        """The tensor's bits as integers (NaN == NaN), sharing its storage."""
        ints = {1: self.torch.int8, 2: self.torch.int16, 4: self.torch.int32, 8: self.torch.int64}
        return v.detach().view(ints[v.element_size()])

    def call(
        self, fn: KernelFn, prep: Prepared, opts: dict[str, Any], cot: np.ndarray | None
    ) -> _Outcome:
        torch = self.torch
        wide = np.float64 if prep.working.name == "float64" else np.float32
        z = torch.from_numpy(np.ascontiguousarray(prep.xk.astype(wide)))
        z = z.to(self.dev).to(self._dtype(prep.working))
        assert prep.labels is not None
        y = torch.from_numpy(prep.labels.copy()).to(self.dev)
        z_bits, y_bits = self._bits(z).clone(), y.clone()
        z.requires_grad_(True)
        loss = grad = None
        loss_dtype = ""
        error = None
        try:
            out = fn(z, y, **opts)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"returned {type(out).__name__}, expected a torch.Tensor")
            loss_dtype = str(out.dtype).replace("torch.", "")
            if out.requires_grad:
                if out.ndim == 0 or cot is None:
                    out.backward(torch.ones_like(out))
                else:
                    w = torch.from_numpy(cot).to(self.dev).to(out.dtype).reshape(out.shape)
                    out.backward(w)
            loss = out.detach().to(torch.float64).cpu().numpy()
            if z.grad is not None:
                grad = z.grad.detach().to(torch.float64).cpu().numpy()
            elif not bool(prep.ignored.all()):  # every row ignored: a constant loss is fine
                raise RuntimeError(
                    "no gradient reached the logits: the loss is detached from autograd"
                )
        except Exception as exc:  # the callee's failure is a finding, not smcheck's
            error = _one_line(exc)
        mutated = []
        if not torch.equal(self._bits(z), z_bits):
            mutated.append("logits")
        if not torch.equal(y, y_bits):
            mutated.append("labels")
        return _Outcome(loss, grad, loss_dtype, error, " and ".join(mutated) or None)

    def stock(self) -> KernelFn:
        return self.torch.nn.functional.cross_entropy  # type: ignore[no-any-return]

    def variant_stock(self) -> KernelFn | None:
        return torch_variant_stock

    def stock_name(self) -> str:
        return "torch.nn.functional.cross_entropy"


def torch_variant_stock(
    logits: Any,
    labels: Any,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    z_loss: float = 0.0,
    smoothing_convention: str = "torch",
) -> Any:
    """The variants with PyTorch's stock pieces: ``F.cross_entropy`` on ``c * tanh(s z / c)``
    (Megatron's smoothing as a target distribution), plus ``z_loss * logsumexp(z)**2``."""
    torch = _need("torch")
    f = torch.nn.functional
    z = logits * logit_scale if logit_scale != 1.0 else logits
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.zeros_like(labels))
    if smoothing_convention == "megatron" and label_smoothing:
        t = torch.full_like(z, label_smoothing / (z.shape[1] - 1))
        t.scatter_(1, safe[:, None], 1 - label_smoothing)
        loss = f.cross_entropy(z, t, reduction="none")
    else:
        loss = f.cross_entropy(z, safe, reduction="none", label_smoothing=label_smoothing)
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(z, dim=1).square()
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum()


def jax_stock(
    logits: Any,
    labels: Any,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Any:
    """JAX's stock cross-entropy with PyTorch's options: ``jax.nn.log_softmax`` in the working
    dtype (what ``optax.softmax_cross_entropy_with_integer_labels`` computes), ignored rows
    masked, the mean over the counted rows (0/0 = NaN when every row is ignored, as PyTorch)."""
    jax = _need("jax")
    jnp = jax.numpy
    logp = jax.nn.log_softmax(logits, axis=-1)
    keep = labels != ignore_index
    safe = jnp.where(keep, labels, 0)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    loss = jnp.where(keep, nll, jnp.zeros_like(nll))
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    return total / jnp.sum(keep).astype(total.dtype)


class _Jax(_Framework):
    name = "jax"

    def __init__(self, device: str | None) -> None:
        self.jax = _need("jax")
        if device not in (None, "default"):
            raise UsageError("--device: JAX kernels run on JAX's default device; drop --device")

    def device(self) -> str:
        return str(self.jax.devices()[0].platform)

    def release(self) -> None:
        # every op compiled for the last vocabulary size stays cached: without this the
        # default suite's JAX process grew to 1.35 GB (shapes never repeat across sizes)
        self.jax.clear_caches()

    def call(
        self, fn: KernelFn, prep: Prepared, opts: dict[str, Any], cot: np.ndarray | None
    ) -> _Outcome:
        jax = self.jax
        jnp = jax.numpy
        if prep.working.name == "float64":
            jax.config.update("jax_enable_x64", True)
        x64 = bool(jax.config.read("jax_enable_x64"))
        z = jnp.asarray(prep.x)  # jax arrays are immutable: nothing to compare afterwards
        assert prep.labels is not None
        y = jnp.asarray(prep.labels if x64 else prep.labels.astype(np.int32))
        loss = grad = None
        loss_dtype = ""
        error = None
        try:
            out, pull = jax.vjp(lambda v: fn(v, y, **opts), z)
            loss_dtype = str(out.dtype)
            w = jnp.ones_like(out) if cot is None or out.ndim == 0 else jnp.asarray(cot, out.dtype)
            (g,) = pull(w)
            loss = np.asarray(out).astype(np.float64)
            grad = np.asarray(g).astype(np.float64)
        except Exception as exc:  # the callee's failure is a finding
            error = _one_line(exc)
        return _Outcome(loss, grad, loss_dtype, error, None)

    def stock(self) -> KernelFn:
        return jax_stock

    def stock_name(self) -> str:
        return "jax.nn.log_softmax"


def numpy_stock(
    logits: np.ndarray,
    labels: np.ndarray,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The textbook numpy kernel (loss, grad of the reduced loss): log-softmax shifted by each
    row's max, in float32 for 16-bit inputs (float64 for float64), as PyTorch computes."""
    wide = np.float64 if logits.dtype == np.float64 else np.float32
    z = logits.astype(wide)
    n, c = z.shape
    keep = labels != ignore_index
    safe = np.where(keep, labels, 0)
    d = z - z.max(axis=1, keepdims=True)  # exp(d) <= 1: no overflow at any logit
    s = np.exp(d).sum(axis=1, keepdims=True)
    logp = d - np.log(s)
    rows = np.arange(n)
    nll = -logp[rows, safe]
    target = np.zeros_like(z)
    target[rows, safe] = 1 - label_smoothing
    target += label_smoothing / c
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
    loss = np.where(keep, nll, 0).astype(wide)
    grad = np.where(keep[:, None], np.exp(logp) - target, 0).astype(wide)
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return np.asarray(loss.sum(dtype=wide)), grad
    count = int(np.count_nonzero(keep))
    with np.errstate(invalid="ignore", divide="ignore"):  # every row ignored: 0/0 = NaN
        mean = np.asarray(loss.sum(dtype=wide) / wide(count))
    # no counted row: the gradient is 0, not 0/0
    return mean, np.divide(grad, max(count, 1)).astype(wide)


class _Numpy(_Framework):
    name = "numpy"
    cotangent = False  # a numpy kernel's gradient is that of its returned loss (summed)

    def __init__(self, device: str | None) -> None:
        if device not in (None, "cpu"):
            raise UsageError("--device: numpy kernels run on the CPU")

    def call(
        self, fn: KernelFn, prep: Prepared, opts: dict[str, Any], cot: np.ndarray | None
    ) -> _Outcome:
        x = prep.x.copy()
        assert prep.labels is not None
        y = prep.labels.copy()
        x_bits = x.view(f"u{x.dtype.itemsize}").copy()
        loss = grad = None
        loss_dtype = ""
        error = None
        try:
            out = fn(x, y, **opts)
            g = None
            if isinstance(out, tuple | list):
                if len(out) != 2:
                    raise TypeError(f"returned {len(out)} values, expected loss or (loss, grad)")
                out, g = out
            arr = np.asarray(out)
            if arr.dtype.kind not in "fV":
                raise TypeError(f"returned a loss of dtype {arr.dtype}, expected floats")
            loss_dtype = str(arr.dtype)
            loss = arr.astype(np.float64)
            grad = None if g is None else np.asarray(g).astype(np.float64)
        except Exception as exc:  # the callee's failure is a finding
            error = _one_line(exc)
        mutated = []
        if not np.array_equal(x.view(f"u{x.dtype.itemsize}"), x_bits):
            mutated.append("logits")
        if not np.array_equal(y, prep.labels):
            mutated.append("labels")
        return _Outcome(loss, grad, loss_dtype, error, " and ".join(mutated) or None)

    def stock(self) -> KernelFn:
        return numpy_stock

    def stock_name(self) -> str:
        return "smcheck numpy_stock"


def _framework(name: str, device: str | None) -> _Framework:
    if name == "torch":
        return _Torch(device)
    if name == "jax":
        return _Jax(device)
    if name == "numpy":
        return _Numpy(device)
    raise UsageError(f"unknown framework {name!r}; expected one of: {', '.join(FRAMEWORKS)}")


def detect_framework(fn: KernelFn, device: str | None = None) -> str:
    """Which framework ``fn`` works in, from what it returns on a small float32 batch: a torch
    tensor, a numpy array or a jax array (a kernel that raises on one is tried on the next)."""
    # 4 rows x 256 classes: a size any kernel handles (some want whole blocks of classes)
    z = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    y = np.array([0, 1, 254, 255])
    errors = []
    unavailable = None  # torch could not place tensors on --device
    # classified by what comes back, not by what went in: a jax kernel given numpy arrays
    # returns a jax array (numpy before jax: numpy functions accept jax arrays and vice versa)
    for name in ("torch", "numpy", "jax"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if name == "torch":  # on --device: a CUDA-only kernel refuses CPU tensors
            dev = device or "cpu"
            try:
                args: tuple[Any, Any] = (
                    mod.from_numpy(z.copy()).to(dev),
                    mod.from_numpy(y.copy()).to(dev),
                )
            except (RuntimeError, AssertionError) as exc:
                errors.append(f"torch: {_one_line(exc)}")
                unavailable = _one_line(exc) if device is not None else None
                continue
        elif name == "jax":
            args = (mod.numpy.asarray(z), mod.numpy.asarray(y.astype(np.int32)))
        else:
            args = (z.copy(), y.copy())
        try:
            with _quiet():
                out = fn(*args)
        except Exception as exc:
            errors.append(f"{name}: {_one_line(exc)}")
            continue
        first = out[0] if isinstance(out, tuple | list) and out else out
        kind = type(first).__module__.split(".")[0]
        if kind in ("torch", "numpy"):
            return kind
        if kind in ("jax", "jaxlib"):
            return "jax"
        errors.append(f"{name}: returned {type(first).__name__}")
    if unavailable is not None:
        # e.g. --device cuda on a CPU-only torch: the kernel never ran where it was asked to, so
        # what the other frameworks made of it says nothing about its framework
        raise UsageError(f"--device {device}: the device is unavailable ({unavailable})")
    raise UsageError(
        "cannot tell the kernel's framework (" + "; ".join(errors) + "): name it (--framework)"
    )
