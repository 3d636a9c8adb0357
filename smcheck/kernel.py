"""Audit a cross-entropy *implementation* by running it: a named probe suite against the reference.

A kernel is any function with :func:`torch.nn.functional.cross_entropy`'s interface,
``fn(logits, labels, **options) -> loss``: ``logits`` a framework tensor (N, V) in the working
dtype, ``labels`` int64 (N,), and of F.cross_entropy's keywords (``ignore_index``,
``reduction``, ``label_smoothing``) those its signature accepts. Gradients come from the
framework's autograd (torch ``backward``, ``jax.vjp``); a numpy kernel returns ``loss`` or
``(loss, grad)``. A probe that needs an option the kernel does not accept is *skipped*.

Each probe builds a few rows that provoke one known bug class (see :data:`PROBES`), rounds them
to the working dtype, hands the kernel fresh copies and compares its loss and gradient with
:func:`smcheck.core.reference_of` of *the same rounded rows*: the loss error in ulps of
``max(|L*|, 1)`` of the working dtype, the gradient as ``max_j |g_j - g*_j|`` (per row; the
gradient of a mean is multiplied back by its denominator). The framework's stock cross-entropy
runs on the same rows and is reported side by side.

Gate (``gate=``): ``"reference"`` - within the default thresholds of ``smcheck eval``
(:func:`default_thresholds`); ``"stock"`` - no worse than the stock cross-entropy plus
:data:`STOCK_SLACK_ULP` ulps (and that many eps on the gradient); ``"either"`` (default) - one
of the two, so a kernel as good as PyTorch's own passes where PyTorch itself is outside the
thresholds; ``"both"``. Non-finite output where the reference is finite, a modified input, an
exception or nondeterminism fail a probe whatever the gate.

The kernel is called, not trusted: each call gets fresh tensors, the inputs are compared bit
for bit afterwards, and an exception it raises is a finding (its one-line text in the probe's
detail), never smcheck's traceback.

>>> import numpy as np
>>> def naive(z, y):  # no max shift: exp overflows in float32 above 88.7
...     with np.errstate(over="ignore", invalid="ignore"):
...         e = np.exp(z.astype(np.float32))
...         return np.log(e.sum(1)) - z[np.arange(len(y)), y]
>>> r = kernel(naive, framework="numpy", vocab=(10,), probes=("first_last", "offset"))
>>> [(p.name, p.status) for p in r.probes]
[('first_last', 'pass'), ('offset', 'fail')]
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# The only imports from the rest of smcheck (re-point them here if the modules move).
from .core import Prepared, prepare, reference_of
from .errors import UsageError
from .evaluate import default_thresholds
from .precisions import Precision, get_precision, resolve_accum

__all__ = [
    "DEFAULT_VOCAB",
    "assert_kernel",
    "FRAMEWORKS",
    "GATES",
    "PROBES",
    "QUICK_VOCAB",
    "KernelReport",
    "ProbeResult",
    "WorstRow",
    "kernel",
    "load_target",
]

#: Default vocabulary sizes: a small one, the common LLM sizes and a prime (65537 = 2**16 + 1,
#: not a multiple of any block size).
DEFAULT_VOCAB: tuple[int, ...] = (1000, 32000, 50257, 65537, 128256, 151936)
#: ``quick=True``: small sizes only (a prime among them).
QUICK_VOCAB: tuple[int, ...] = (10, 1000, 4099)
#: Default working dtypes per framework (numpy kernels get float32 arrays).
DEFAULT_DTYPES: dict[str, tuple[str, ...]] = {
    "torch": ("float32", "bfloat16"),
    "jax": ("float32", "bfloat16"),
    "numpy": ("float32",),
}
FRAMEWORKS: tuple[str, ...] = ("torch", "jax", "numpy")
GATES: tuple[str, ...] = ("either", "reference", "stock", "both")
#: The stock gate's slack: ulps of max(|L*|, 1) on the loss, times eps(T) on the gradient.
STOCK_SLACK_ULP = 4.0
#: Logits per probe: rows = ROW_BUDGET // V, kept within [MIN_ROWS, MAX_ROWS]. At V = 151936
#: that is 6 rows: the reference (float64, ~10 temporaries) stays below 100 MB.
ROW_BUDGET = 1 << 19
MIN_ROWS, MAX_ROWS = 6, 64
#: Label value of ignored rows in the probes (PyTorch's default).
IGNORE_INDEX = -100
#: Label smoothing of the ``label_smoothing`` probe.
SMOOTHING = 0.1
#: Worst rows kept per probe.
WORST_ROWS = 3

KernelFn = Callable[..., Any]


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


def _printable(text: str) -> str:
    """Control characters (ANSI escapes, newlines) of a callee's text escaped: it reaches a
    terminal or a CI log."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Around a kernel's call: its warnings (numpy's on NaN input, a framework's deprecations)
    are its own business - its outputs are what the probes judge - and a test suite running
    with ``filterwarnings = error`` must not turn them into exceptions of the call."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = _printable(text)
    return text if len(text) <= 200 else text[:197] + "..."


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

    def device(self) -> str:
        return "cpu"

    def supports(self, working: Precision) -> bool:
        return True

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Around the whole suite (see :meth:`_Torch.session`)."""
        yield


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

    def stock_name(self) -> str:
        return "torch.nn.functional.cross_entropy"


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
    raise UsageError(
        "cannot tell the kernel's framework (" + "; ".join(errors) + "): name it (--framework)"
    )


# --- the probes' inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """One probe's rows: logits (float64, before rounding), labels, what to call it with."""

    x: np.ndarray
    y: np.ndarray
    opts: dict[str, Any] = field(default_factory=dict)
    real_vocab: int = 0  # padding probe: columns past this are -inf padding


def _random(rng: np.random.Generator, n: int, v: int) -> tuple[np.ndarray, np.ndarray]:
    scales = np.array([0.5, 2.0, 8.0, 32.0])[np.arange(n) % 4]
    return rng.standard_normal((n, v)) * scales[:, None], rng.integers(0, v, n)


def _case_random(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    return _Case(*_random(rng, n, v))


def _case_confident(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x = rng.standard_normal((n, v))
    y = rng.integers(0, v, n)
    rows = np.arange(n)
    x[rows, y] = x.max(axis=1) + np.linspace(20, 100, n)  # loss ~ V e^-margin: 1e-9 ... 1e-40
    return _Case(x, y)


def _case_wrong(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x = rng.standard_normal((n, v)) * 4
    y = rng.integers(0, v, n)
    x[np.arange(n), y] = x.max(axis=1) - np.linspace(20, 100, n)  # p_y ~ e^-margin, loss large
    return _Case(x, y)


def _case_uniform(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    level = np.array([0.0, 1.0, -7.5, 100.0])[np.arange(n) % 4]
    return _Case(np.repeat(level[:, None], v, axis=1), rng.integers(0, v, n))


def _case_first_last(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x = rng.standard_normal((n, v)) * 3
    y = np.where(np.arange(n) % 2 == 0, 0, v - 1)
    top = np.arange(n) % 4 < 2  # half the rows also have their max at the label
    x[top, y[top]] = x[top].max(axis=1) + 5
    return _Case(x, y)


def _case_tail(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    # every class far below the last few: a dropped tail loses the row's mass, padded lanes
    # counted as logit 0 (instead of -inf) add e^0 = 1 each to a sum of about 1
    x = rng.uniform(-20, -10, (n, v))
    x[:, -1] = 0.0
    x[1::2, -3:] = rng.uniform(-1, 0, (len(x[1::2]), min(3, v)))
    y = np.where(np.arange(n) % 3 == 2, rng.integers(0, v, n), v - 1)
    return _Case(x, y)


def _offset_of(t: Precision) -> float:
    """+1e4 for float32/64; for 16-bit types half the largest power of two (exp overflows)."""
    if t.mantissa_bits >= 24:
        return 1e4
    return 2.0 ** (math.floor(math.log2(t.max)) - 1)


def _case_offset(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    c = _offset_of(t)
    # float32: N(0, 4) around 1e4; 16-bit: a few ulps of c (losses up to ~6 ulp(c): a mean of
    # 64 of them stays finite even in bfloat16 at 2**126)
    spread = 4.0 if t.mantissa_bits >= 24 else float(t.ulp(np.array([c]))[0])
    x = c + rng.standard_normal((n, v)) * spread
    x[::4] = c  # all-equal rows at the offset: loss log(V) exactly
    return _Case(x, rng.integers(0, v, n))


def _case_row_max_spread(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    # a shift by the batch max leaves exp(z - M) = exp(-2000) = 0 on the low rows
    base = np.array([0.0, 1000.0, -1000.0, 300.0, -300.0, 80.0, -80.0])
    offsets = np.clip(base[np.arange(n) % base.size], -t.max / 4, t.max / 4)
    x = rng.standard_normal((n, v)) * 3 + offsets[:, None]
    return _Case(x, rng.integers(0, v, n))


def _case_padding(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    pad = (-v) % 128 or 128  # padded to a multiple of 128, as vocabularies are
    return _Case(np.concatenate([x, np.full((n, pad), -np.inf)], axis=1), y, real_vocab=v)


def _ignored(rng: np.random.Generator, y: np.ndarray, share: float = 0.2) -> np.ndarray:
    n = len(y)
    k = max(1, round(share * n))
    y = y.copy()
    y[rng.choice(n, k, replace=False)] = IGNORE_INDEX
    return y


def _case_ignore_index(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    return _Case(x, _ignored(rng, y), {"ignore_index": IGNORE_INDEX, "reduction": "mean"})


def _case_all_ignored(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, _ = _random(rng, n, v)
    y = np.full(n, IGNORE_INDEX)
    return _Case(x, y, {"ignore_index": IGNORE_INDEX, "reduction": "mean"})


def _case_reduction(reduction: str) -> Callable[..., _Case]:
    def build(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
        x, y = _random(rng, n, v)
        return _Case(x, _ignored(rng, y), {"reduction": reduction, "ignore_index": IGNORE_INDEX})

    return build


def _case_label_smoothing(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    opts = {"label_smoothing": SMOOTHING, "ignore_index": IGNORE_INDEX, "reduction": "mean"}
    return _Case(x, _ignored(rng, y), opts)


def _case_nonfinite(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    x[1, 0] = np.nan
    x[3, v // 2] = np.inf
    masked = (y[5] + 1) % v  # a -inf logit is a masked class: row 5 still has an answer
    x[5, masked] = -np.inf
    return _Case(x, y)


# --- the probe registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A named case: what it builds, what bug it catches, which options it needs."""

    name: str
    catches: str  # the bug class, named in a failure's detail
    build: Callable[[np.random.Generator, int, int, Precision], _Case]
    needs: tuple[str, ...] = ()  # keyword options the kernel must accept
    kind: str = "accuracy"  # accuracy | determinism | batch_split


#: Every probe, in the order they run. Options in a case but not in ``needs`` (``reduction``,
#: ``ignore_index`` for rows that carry none) are passed only where the kernel accepts them.
PROBES: dict[str, Probe] = {
    p.name: p
    for p in (
        Probe("random", "accuracy at logit scales 0.5-32 (a loss kept in 16 bits, a sum "
              "accumulated in 16 bits, a wrong formula)", _case_random),
        Probe("confident", "confident rows, margins 20-100 (log of a rounded p, 1 - p "
              "cancellation: the loss e^-margin lost)", _case_confident),
        Probe("wrong", "confidently wrong rows (p_y rounded to 0: a clamped or infinite "
              "loss)", _case_wrong),
        Probe("uniform", "all-equal rows (loss log V exactly, gradient 1/V - onehot)",
              _case_uniform),
        Probe("first_last", "labels on the first and last class (an off-by-one gather, a "
              "dropped last block)", _case_first_last),
        Probe("tail", "the vocabulary tail (the last classes dropped, or padded block lanes "
              "counted, when V is not a multiple of the block size)", _case_tail),
        Probe("offset", "a large common offset (no max shift: exp overflows; the loss must "
              "be shift invariant)", _case_offset),
        Probe("row_max_spread", "rows with wildly different maxima (a shift by the batch max "
              "instead of each row's max)", _case_row_max_spread),
        Probe("padding", "appended -inf padding columns (loss and real columns' gradient "
              "unchanged, padded columns' gradient 0)", _case_padding),
        Probe("ignore_index", "20% of rows ignored, reduction mean (ignored rows counted in "
              "the mean: it divides by the counted rows)", _case_ignore_index,
              ("ignore_index",)),
        Probe("all_ignored", "every row ignored (loss NaN as PyTorch, or 0; gradient 0)",
              _case_all_ignored, ("ignore_index",)),
        Probe("reduction_none", "reduction='none' (each row's gradient scaled by its own "
              "upstream gradient; ignored rows 0)", _case_reduction("none"), ("reduction",)),
        Probe("reduction_sum", "reduction='sum'", _case_reduction("sum"), ("reduction",)),
        Probe("reduction_mean", "reduction='mean' (divides by the counted rows)",
              _case_reduction("mean"), ("reduction",)),
        Probe("label_smoothing", "label smoothing 0.1 with ignored rows (their smoothing term "
              "counted)", _case_label_smoothing, ("label_smoothing",)),
        Probe("inputs_unchanged", "the caller's logits and labels modified (a gradient "
              "written in place into the logits)", _case_random, kind="inputs"),
        Probe("determinism", "two identical calls must give identical bits",
              _case_random, kind="determinism"),
        Probe("batch_split", "a row's loss depends on which other rows share the batch",
              _case_random, kind="batch_split"),
        Probe("nonfinite_rows", "a NaN/inf row poisons the other rows", _case_nonfinite),
    )
}  # fmt: skip


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorstRow:
    """One of a probe's worst rows: where, the kernel's value, the reference, the error."""

    row: int
    label: int
    value: float  # the loss (or the gradient entry, for a gradient failure)
    reference: float
    error: float  # loss: ulps; gradient: absolute


@dataclass(frozen=True)
class ProbeResult:
    """One probe at one dtype and vocabulary size. ``status``: pass, fail or skip."""

    name: str
    dtype: str
    vocab: int
    rows: int
    status: str
    detail: str
    loss_max_ulp_err: float | None = None
    grad_max_err: float | None = None
    stock_loss_max_ulp_err: float | None = None
    stock_grad_max_err: float | None = None
    max_loss_ulp: float = math.nan
    max_grad_err: float = math.nan
    loss_dtype: str = ""
    worst: tuple[WorstRow, ...] = ()
    seconds: float = 0.0

    @property
    def passed(self) -> bool | None:
        """True/False; None when skipped."""
        return None if self.status == "skip" else self.status == "pass"

    @property
    def test_id(self) -> str:
        """``name[dtype-vocab]``, as a pytest item id."""
        return f"{self.name}[{self.dtype}-{self.vocab}]"


@dataclass(frozen=True)
class KernelReport:
    """What :func:`kernel` found: one :class:`ProbeResult` per (dtype, vocab, probe)."""

    target: str
    framework: str
    device: str
    stock: str
    gate: str
    seed: int
    dtypes: tuple[str, ...]
    vocab: tuple[int, ...]
    probes: tuple[ProbeResult, ...]
    seconds: float = 0.0

    @property
    def failed(self) -> tuple[ProbeResult, ...]:
        return tuple(p for p in self.probes if p.status == "fail")

    @property
    def skipped(self) -> tuple[ProbeResult, ...]:
        return tuple(p for p in self.probes if p.status == "skip")

    @property
    def ok(self) -> bool:
        """Every probe that ran passed (skipped probes do not fail a kernel)."""
        return not self.failed


# --- measuring one outcome against the reference ------------------------------------------------


@dataclass(frozen=True)
class _Measure:
    loss_ulp: float  # inf: non-finite where the reference is finite (or a wrong shape)
    grad_err: float | None  # None: no gradient to measure
    problems: tuple[str, ...]  # hard failures whatever the gate
    worst: tuple[WorstRow, ...]


@dataclass(frozen=True)
class _Truth:
    """The reference of one case's rows (float64; ignored rows 0)."""

    prep: Prepared
    loss: np.ndarray  # (N,) hi + lo
    loss_hi: np.ndarray
    loss_lo: np.ndarray | None
    grad: np.ndarray  # (N, C)
    defined: np.ndarray  # (N,) rows with an answer (no NaN/+inf input)


def _truth(prep: Prepared) -> _Truth:
    ref = reference_of(prep)
    assert ref.grad is not None
    ign = prep.ignored
    hi = np.where(ign, 0.0, ref.loss)
    lo = None if ref.loss_lo is None else np.where(ign, 0.0, ref.loss_lo)
    grad = ref.grad if ref.grad_lo is None else ref.grad + ref.grad_lo
    grad = np.where(ign[:, None], 0.0, grad)
    loss = hi if lo is None else hi + lo
    return _Truth(prep, loss, hi, lo, grad, ~np.isnan(ref.loss) | ign)


def _ulps(value: np.ndarray, exact: np.ndarray, t: Precision) -> np.ndarray:
    """|L - L*| in ulps of max(|L*|, 1) of T (absolute below 1: a loss of 1e-20 rounded to 0
    costs training nothing); inf where they disagree in finiteness."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(value - exact) / t.ulp(np.maximum(np.abs(exact), 1.0))
    same_inf = np.isinf(exact) & (value == exact)
    return np.where(same_inf, 0.0, np.where(np.isnan(err), np.inf, err))


def _measure(
    out: _Outcome, truth: _Truth, reduction: str, cot: np.ndarray | None, real_vocab: int
) -> _Measure:
    """The loss error (ulps) and gradient error of one outcome, and its hard problems."""
    prep, t = truth.prep, truth.prep.working
    n, c = prep.x.shape
    assert out.loss is not None
    problems: list[str] = []
    worst: list[WorstRow] = []
    labels = prep.labels if prep.labels is not None else np.zeros(n, dtype=np.int64)
    if out.loss.shape == (n,):
        err = _ulps(out.loss, truth.loss, t)
        err = np.where(truth.defined, err, 0.0)
        loss_ulp = float(err.max()) if n else 0.0
        bad = truth.defined & np.isfinite(truth.loss) & ~np.isfinite(out.loss)
        if bad.any():
            problems.append(f"non-finite loss in {int(bad.sum())} of {n} rows")
        worst.extend(
            WorstRow(int(i), int(labels[i]), float(out.loss[i]), float(truth.loss[i]),
                     float(err[i]))
            for i in np.argsort(-err, kind="stable")[:WORST_ROWS]
            if err[i] > 0
        )  # fmt: skip
        scale = np.ones(n) if cot is None else cot
    elif out.loss.shape == ():
        value = float(out.loss)
        total = math.fsum(truth.loss_hi[truth.defined]) + (
            0.0 if truth.loss_lo is None else math.fsum(truth.loss_lo[truth.defined])
        )
        denominator = prep.mean_denominator if reduction == "mean" else 1.0
        if not truth.defined.all():  # a NaN row makes any reduction NaN: nothing to measure
            loss_ulp = 0.0
        elif denominator == 0:  # every row ignored: NaN (PyTorch) or 0 (optax) both accepted
            loss_ulp = 0.0 if (math.isnan(value) or value == 0) else math.inf
            if loss_ulp:
                problems.append(f"every row ignored gave loss {value:.8g}, expected NaN or 0")
        else:
            exact = total / denominator
            loss_ulp = float(_ulps(np.array([value]), np.array([exact]), t)[0])
            if not math.isfinite(value) and math.isfinite(exact):
                problems.append(f"non-finite {reduction} loss {value}")
            if loss_ulp > 0:
                worst.append(WorstRow(-1, -1, value, exact, loss_ulp))
        scale = np.full(n, 1.0 / denominator if denominator else 1.0)
    else:
        return _Measure(math.inf, None, (f"loss has shape {out.loss.shape}, expected () or "
                                         f"({n},)",), ())  # fmt: skip
    grad_err = None
    if out.grad is not None:
        g = out.grad
        if g.shape != (n, c):
            problems.append(f"gradient has shape {g.shape}, expected {(n, c)}")
        else:
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                d = np.abs(g / scale[:, None] - truth.grad)
            d = np.where(np.isnan(d), np.inf, d)
            d = np.where(truth.defined[:, None], d, 0.0)
            per_row = d.max(axis=1) if c else np.zeros(n)
            grad_err = float(per_row.max()) if n else 0.0
            finite_ref = np.isfinite(truth.grad).all(axis=1) & truth.defined
            nf = finite_ref & ~np.isfinite(g).all(axis=1)
            if nf.any():
                problems.append(f"non-finite gradient in {int(nf.sum())} of {n} rows")
            if real_vocab and real_vocab < c:
                pad = np.abs(g[truth.defined, real_vocab:])
                if np.any(pad != 0):
                    top = float(np.max(np.where(np.isnan(pad), np.inf, pad)))
                    problems.append(f"nonzero gradient in the -inf padding columns (max |g| "
                                    f"{top:.3g})")  # fmt: skip
            if prep.ignored.any():
                rows = prep.ignored & truth.defined
                if np.any(g[rows] != 0):
                    problems.append("nonzero gradient on ignored rows")
    return _Measure(loss_ulp, grad_err, tuple(problems), tuple(worst))


# --- running one probe --------------------------------------------------------------------------


def _accepted(fn: KernelFn) -> frozenset[str] | None:
    """The keyword options ``fn`` accepts; None: any (``**kwargs``, or no signature)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return frozenset(sig.parameters)


@dataclass
class _Runner:
    fn: KernelFn
    fw: _Framework
    accepted: frozenset[str] | None
    gate: str
    seed: int
    max_loss_ulp: float | None
    max_grad_err: float | None
    stock: bool = True

    def accepts(self, option: str) -> bool:
        return self.accepted is None or option in self.accepted

    def options(self, wanted: dict[str, Any]) -> dict[str, Any]:
        """The case's options the kernel accepts; per-row losses where it can give them."""
        opts = {k: v for k, v in wanted.items() if self.accepts(k)}
        if "reduction" not in wanted and self.accepts("reduction"):
            opts["reduction"] = "none"
        return opts

    def limits(self, prep: Prepared, n_reduced: int) -> tuple[float, float]:
        t = prep.working
        accum = resolve_accum(t, None)
        lim_l, lim_g = default_thresholds(t, accum, prep.x.shape[1])
        if n_reduced > 1:  # a reduction adds ceil(log2 N) roundings of its sum
            lim_l += math.ceil(math.log2(n_reduced)) * max(accum.eps / t.eps, 1.0)
        return (
            lim_l if self.max_loss_ulp is None else self.max_loss_ulp,
            lim_g if self.max_grad_err is None else self.max_grad_err,
        )

    def run(self, probe: Probe, working: Precision, vocab: int, rows: int) -> ProbeResult:
        start = time.perf_counter()
        base = ProbeResult(probe.name, working.name, vocab, rows, "skip", "")
        missing = [o for o in probe.needs if not self.accepts(o)]
        if missing:
            detail = f"the kernel does not accept {', '.join(missing)}="
            return replace(base, detail=detail)
        if not self.fw.supports(working):
            return replace(base, detail=f"{self.fw.name} has no {working.name}")
        key = [self.seed, list(PROBES).index(probe.name), vocab, working.bits]
        rng = np.random.default_rng(key)
        case = probe.build(rng, rows, vocab, working)
        y = case.y
        if not self.accepts("ignore_index"):  # the rows the kernel cannot skip get labels
            y = np.where(y == IGNORE_INDEX, rng.integers(0, vocab, len(y)), y)
        opts = self.options(case.opts)
        smoothing = float(opts.get("label_smoothing", 0.0))
        prep = prepare(case.x, y, dtype=working, ignore_index=IGNORE_INDEX,
                       label_smoothing=smoothing)  # fmt: skip
        if probe.kind == "inputs":
            result = self._inputs(base, prep, opts)
        elif probe.kind == "determinism":
            result = self._determinism(base, prep, opts)
        elif probe.kind == "batch_split":
            result = self._batch_split(base, prep, opts)
        else:
            result = self._accuracy(base, probe, prep, opts, case.real_vocab)
        return replace(result, seconds=round(time.perf_counter() - start, 3))

    def _call(self, fn: KernelFn, prep: Prepared, opts: dict[str, Any], cot: Any) -> _Outcome:
        with _quiet():
            return self.fw.call(fn, prep, opts, cot if self.fw.cotangent else None)

    def _hard(self, out: _Outcome, who: str = "kernel") -> str | None:
        if out.error is not None:
            return f"the {who} raised {out.error}"
        if out.mutated is not None:
            return f"the {who} modified the caller's {out.mutated}"
        if out.loss is None:
            return f"the {who} returned no loss"
        return None

    def _accuracy(
        self, base: ProbeResult, probe: Probe, prep: Prepared, opts: dict[str, Any], pad: int
    ) -> ProbeResult:
        n = prep.x.shape[0]
        reduction = str(opts.get("reduction", "mean"))
        cot = None
        if reduction == "none" and probe.name == "reduction_none":
            # powers of two: exact in every dtype, and a backward that ignores its upstream
            # gradient (treats it as ones, or as 1/N) is off by a factor 2 on most rows
            cot = np.array([0.5, 2.0, 1.0, 4.0])[np.arange(n) % 4]
        out = self._call(self.fn, prep, opts, cot)
        hard = self._hard(out)
        if hard is not None:
            return replace(base, status="fail", detail=f"{probe.catches}: {hard}",
                           loss_dtype=out.loss_dtype)  # fmt: skip
        assert out.loss is not None
        truth = _truth(prep)
        n_red = n if out.loss.shape == () else 1
        lim_l, lim_g = self.limits(prep, n_red)
        m = _measure(out, truth, reduction, cot if self.fw.cotangent else None, pad)
        if "reduction" in opts and (reduction == "none") != (out.loss.shape == (n,)):
            # a kernel that ignores the keyword it declares would pass the wrong comparison
            wrong = f"reduction={reduction!r} gave a loss of shape {out.loss.shape}"
            m = replace(m, problems=(*m.problems, wrong))
        s = None
        if self.stock:
            sout = self._call(self.fw.stock(), prep, opts, cot)
            if self._hard(sout) is None:
                s = _measure(sout, truth, reduction, cot if self.fw.cotangent else None, pad)
        ref_ok = m.loss_ulp <= lim_l and (m.grad_err is None or m.grad_err <= lim_g)
        stock_ok = False
        if s is not None:
            t = prep.working
            slack_g = STOCK_SLACK_ULP * t.eps
            stock_ok = m.loss_ulp <= s.loss_ulp + STOCK_SLACK_ULP and (
                m.grad_err is None or s.grad_err is None or m.grad_err <= s.grad_err + slack_g
            )
        ok = {
            "reference": ref_ok,
            "stock": stock_ok if s is not None else ref_ok,
            "either": ref_ok or stock_ok,
            "both": ref_ok and (stock_ok if s is not None else True),
        }[self.gate]
        ok = ok and not m.problems
        numbers = _numbers(m, s, lim_l, lim_g)
        if ok:
            detail = numbers
        else:
            what = "; ".join(m.problems) if m.problems else numbers
            if m.worst and m.worst[0].row >= 0:
                w = m.worst[0]
                what += (f"; worst row {w.row} (label {w.label}): loss {w.value:.8g}, "
                         f"reference {w.reference:.8g}")  # fmt: skip
            elif m.worst:
                what += f"; loss {m.worst[0].value:.8g}, reference {m.worst[0].reference:.8g}"
            detail = f"{probe.catches}: {what}"
        return replace(
            base,
            status="pass" if ok else "fail",
            detail=detail,
            loss_max_ulp_err=_finite_or_none(m.loss_ulp),
            grad_max_err=_finite_or_none(m.grad_err),
            stock_loss_max_ulp_err=None if s is None else _finite_or_none(s.loss_ulp),
            stock_grad_max_err=None if s is None else _finite_or_none(s.grad_err),
            max_loss_ulp=lim_l,
            max_grad_err=lim_g,
            loss_dtype=out.loss_dtype,
            worst=m.worst,
        )

    def _inputs(self, base: ProbeResult, prep: Prepared, opts: dict[str, Any]) -> ProbeResult:
        """Every call checks its inputs; this probe is the one whose job it is (and no more)."""
        out = self._call(self.fn, prep, opts, None)
        hard = self._hard(out)
        if hard is not None:
            catches = PROBES["inputs_unchanged"].catches
            return replace(base, status="fail", detail=f"{catches}: {hard}",
                           loss_dtype=out.loss_dtype)  # fmt: skip
        return replace(base, status="pass", detail="logits and labels bit-identical after the "
                       "call and its backward", loss_dtype=out.loss_dtype)  # fmt: skip

    def _determinism(self, base: ProbeResult, prep: Prepared, opts: dict[str, Any]) -> ProbeResult:
        probe = PROBES["determinism"]
        a = self._call(self.fn, prep, opts, None)
        b = self._call(self.fn, prep, opts, None)
        for out in (a, b):
            hard = self._hard(out)
            if hard is not None:
                return replace(base, status="fail", detail=f"{probe.catches}: {hard}")
        assert a.loss is not None and b.loss is not None
        diffs = []
        if not _same_bits(a.loss, b.loss):
            diffs.append(f"loss differs (max |a - b| {_maxdiff(a.loss, b.loss):.3g})")
        if (a.grad is None) != (b.grad is None) or (
            a.grad is not None and b.grad is not None and not _same_bits(a.grad, b.grad)
        ):
            diffs.append(f"gradient differs (max |a - b| {_maxdiff(a.grad, b.grad):.3g})")
        if diffs:
            return replace(base, status="fail", detail=f"{probe.catches}: " + "; ".join(diffs),
                           loss_dtype=a.loss_dtype)  # fmt: skip
        return replace(base, status="pass", detail="two calls: identical bits",
                       loss_dtype=a.loss_dtype)  # fmt: skip

    def _batch_split(self, base: ProbeResult, prep: Prepared, opts: dict[str, Any]) -> ProbeResult:
        probe = PROBES["batch_split"]
        n = prep.x.shape[0]
        k = n // 2
        whole = self._call(self.fn, prep, opts, None)
        parts = [
            self._call(self.fn, _rows(prep, sl), opts, None) for sl in (slice(0, k), slice(k, n))
        ]
        for out in (whole, *parts):
            hard = self._hard(out)
            if hard is not None:
                return replace(base, status="fail", detail=f"{probe.catches}: {hard}")
        lim_l, lim_g = self.limits(prep, 1)
        assert whole.loss is not None
        per_row = whole.loss.shape == (n,)
        problems = []
        loss_d = grad_d = 0.0
        if per_row:
            split = np.concatenate([p.loss for p in parts if p.loss is not None])
            if split.shape == (n,):
                loss_d = float(np.max(_ulps(whole.loss, split, prep.working), initial=0.0))
                if loss_d > lim_l:
                    problems.append(f"a row's loss moved {loss_d:.3g} ulps (limit {lim_l:.3g})")
        if whole.grad is not None and all(p.grad is not None for p in parts):
            gw = whole.grad
            gs = np.concatenate([p.grad for p in parts if p.grad is not None])
            if not per_row:  # the gradient of a mean: per-row gradients are g * count
                gw = gw * n
                gs = np.concatenate([p.grad * c for p, c in zip(parts, (k, n - k), strict=True)
                                     if p.grad is not None])  # fmt: skip
            if gs.shape == gw.shape:
                with np.errstate(invalid="ignore"):
                    d = np.abs(gw - gs)
                grad_d = float(np.max(np.where(np.isnan(d), np.inf, d), initial=0.0))
                if grad_d > lim_g:
                    problems.append(f"a row's gradient moved {grad_d:.3g} (limit {lim_g:.3g})")
        same = loss_d == 0 and grad_d == 0
        detail = (
            f"{probe.catches}: rows 0-{k - 1} and {k}-{n - 1} called apart: " + "; ".join(problems)
            if problems
            else f"rows called in two halves: {'identical bits' if same else 'within the gate'}"
        )
        return replace(
            base,
            status="fail" if problems else "pass",
            detail=detail,
            loss_max_ulp_err=loss_d if per_row else None,
            grad_max_err=grad_d,
            max_loss_ulp=lim_l,
            max_grad_err=lim_g,
            loss_dtype=whole.loss_dtype,
        )


def _rows(prep: Prepared, sl: slice) -> Prepared:
    """The prepared rows ``sl`` (the same rounded values; labels kept)."""
    assert prep.labels is not None
    # from the carrier: the same values, already exact in T, so the cast is a copy
    return prepare(prep.xk[sl], prep.labels[sl], dtype=prep.working, ignore_index=IGNORE_INDEX)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def _maxdiff(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return math.inf
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    return float(np.max(np.where(np.isnan(d), np.inf, d), initial=0.0))


def _finite_or_none(x: float | None) -> float | None:
    if x is None:
        return None
    return float(x) if math.isfinite(x) else None if math.isnan(x) else math.inf


def _numbers(m: _Measure, s: _Measure | None, lim_l: float, lim_g: float) -> str:
    """``loss 3.1 ulps (stock 1.2, limit 22); gradient 4e-08 (stock 1e-08, limit 1.3e-06)``."""

    def pair(k: float | None, st: float | None, lim: float, unit: str) -> str:
        stock = "" if s is None else f"stock {_fmt(st)}, "
        return f"{_fmt(k)}{unit} ({stock}limit {_fmt(lim)})"

    text = "loss " + pair(m.loss_ulp, None if s is None else s.loss_ulp, lim_l, " ulps")
    if m.grad_err is not None:
        text += "; gradient " + pair(m.grad_err, None if s is None else s.grad_err, lim_g, "")
    return text


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.3g}"


# --- the analysis -------------------------------------------------------------------------------


def rows_for(vocab: int, rows: int | None) -> int:
    """Rows per probe: ``rows`` if given, else ROW_BUDGET // V within [MIN_ROWS, MAX_ROWS]."""
    if rows is not None:
        return max(rows, MIN_ROWS)
    return min(MAX_ROWS, max(MIN_ROWS, ROW_BUDGET // vocab))


def parse_probes(probes: str | Sequence[str]) -> tuple[str, ...]:
    items = probes.split(",") if isinstance(probes, str) else list(probes)
    names = [p.strip() for p in items if p.strip()]
    if not names or names == ["all"]:
        return tuple(PROBES)
    unknown = [p for p in names if p not in PROBES]
    if unknown:
        raise UsageError(
            f"unknown probe {unknown[0]!r}; expected 'all' or some of: {', '.join(PROBES)}"
        )
    return tuple(p for p in PROBES if p in names)


def _iter_runs(
    dtypes: Sequence[Precision], vocab: Sequence[int], names: Sequence[str]
) -> Iterator[tuple[Precision, int, Probe]]:
    for t in dtypes:
        for v in vocab:
            for name in names:
                yield t, v, PROBES[name]


def kernel(
    fn: KernelFn,
    *,
    framework: str | None = None,
    dtypes: str | Sequence[str] | None = None,
    vocab: Sequence[int] | None = None,
    rows: int | None = None,
    probes: str | Sequence[str] = "all",
    seed: int = 0,
    device: str | None = None,
    max_loss_ulp: float | None = None,
    max_grad_err: float | None = None,
    gate: str = "either",
    quick: bool = False,
    stock: bool = True,
    target: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> KernelReport:
    """Run the probe suite (:data:`PROBES`) on the cross-entropy kernel ``fn``.

    ``framework`` (torch, jax, numpy) is detected from what ``fn`` returns when None.
    ``dtypes`` default to float32 and bfloat16 (numpy: float32); ``vocab`` to
    :data:`DEFAULT_VOCAB` (:data:`QUICK_VOCAB` with ``quick``); ``rows`` per probe to about
    2**19 logits' worth. ``gate`` is one of :data:`GATES` (see the module docstring).
    """
    if gate not in GATES:
        raise UsageError(f"unknown gate {gate!r}; expected one of: {', '.join(GATES)}")
    if not callable(fn):
        raise UsageError(f"the kernel {fn!r} is not callable")
    fw_name = framework or detect_framework(fn, device)
    fw = _framework(fw_name, device)
    if dtypes is None:
        dtypes = DEFAULT_DTYPES[fw.name]
    if isinstance(dtypes, str):
        dtypes = [d for d in dtypes.split(",") if d.strip()]
    precisions = [get_precision(d.strip()) for d in dtypes]
    sizes = tuple(vocab) if vocab is not None else QUICK_VOCAB if quick else DEFAULT_VOCAB
    if not sizes or any(v < 2 for v in sizes):
        raise UsageError(f"vocabulary sizes must be at least 2, got {sizes}")
    if rows is not None and rows < 1:
        raise UsageError(f"rows must be positive, got {rows}")
    names = parse_probes(probes)
    runner = _Runner(fn, fw, _accepted(fn), gate, seed, max_loss_ulp, max_grad_err, stock)
    start = time.perf_counter()
    results = []
    runs = list(_iter_runs(precisions, sizes, names))
    with fw.session():
        for i, (t, v, probe) in enumerate(runs):
            results.append(runner.run(probe, t, v, rows_for(v, rows)))
            if progress is not None:
                progress(i + 1, len(runs))
    name = target or _printable(getattr(fn, "__qualname__", None) or repr(fn))
    return KernelReport(
        target=name,
        framework=fw.name,
        device=fw.device(),
        stock=fw.stock_name() if stock else "",
        gate=gate,
        seed=seed,
        dtypes=tuple(t.name for t in precisions),
        vocab=sizes,
        probes=tuple(results),
        seconds=round(time.perf_counter() - start, 3),
    )


def load_target(target: str) -> KernelFn:
    """``module:function`` or ``path/to/file.py:function`` -> the function (imported as the
    user's own code, as pytest imports a test file: its directory first on ``sys.path``).

    Raises :class:`UsageError` naming what is wrong (no ``:``, no such file, an import error
    with its one-line text, no such attribute, not callable).
    """
    import importlib.util
    import os
    import sys

    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(f"kernel target {target!r}: expected module:function or file.py:function")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = os.path.abspath(where)
            if not os.path.isfile(path):
                raise UsageError(f"kernel target {target!r}: no such file {where}")
            folder = os.path.dirname(path)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            mod_name = "smcheck_kernel_" + os.path.splitext(os.path.basename(path))[0]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise UsageError(f"kernel target {target!r}: cannot import {where}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except UsageError:
        raise
    except BaseException as exc:  # the user's module failing to import is a bad target
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"kernel target {target!r}: import failed: {_one_line(exc)}") from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise UsageError(f"kernel target {target!r}: {where} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UsageError(f"kernel target {target!r}: {attr} is not callable")
    return fn  # type: ignore[no-any-return]


# --- for test suites ----------------------------------------------------------------------------


def failure_message(report: KernelReport) -> str:
    """The AssertionError text: a header, then per failed probe its detail and worst rows."""
    lines = [
        f"smcheck: {len(report.failed)} of {len(report.probes)} kernel probes failed "
        f"({report.target}: {report.framework} on {report.device}, gate {report.gate})"
    ]
    for p in report.failed:
        lines.append(f"{p.test_id}: {p.detail}")
        rows = [w for w in p.worst if w.row >= 0]
        if rows:
            table = [["row", "label", "loss", "reference", "error (ulps)"]]
            table += [
                [str(w.row), str(w.label), f"{w.value:.8g}", f"{w.reference:.8g}", f"{w.error:.3g}"]
                for w in rows
            ]
            widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
            lines.extend(
                "  " + "  ".join(s.rjust(w) for s, w in zip(t, widths, strict=True)) for t in table
            )
    return "\n".join(lines)


def assert_kernel(fn: KernelFn, **options: Any) -> KernelReport:
    """Assert that the cross-entropy kernel ``fn`` passes every probe of :func:`kernel`.

    ``options`` are :func:`kernel`'s (``framework``, ``dtypes``, ``vocab``, ``quick``,
    ``probes``, ``gate``...). Raises :class:`AssertionError` listing each failed probe with its
    detail and worst rows; returns the report when every probe passes (skips do not fail).

    >>> import numpy as np
    >>> def wrong_mean(z, y):  # the mean of a per-row loss, divided by one row too many
    ...     d = z - z.max(1, keepdims=True)
    ...     return (np.log(np.exp(d).sum(1)) - d[np.arange(len(y)), y]).sum() / (len(y) + 1)
    >>> assert_kernel(wrong_mean, vocab=(10,), probes="uniform", rows=6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: smcheck: 1 of 1 kernel probes failed (wrong_mean: numpy on cpu, gate either)
    uniform[float32-10]: all-equal rows (...): loss 1.38e+06 ulps (stock 1.13, limit 11); ...
    """
    __tracebackhide__ = True
    report = kernel(fn, **options)
    if not report.ok:
        raise AssertionError(failure_message(report))
    return report
