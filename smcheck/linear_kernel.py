"""Run a fused linear cross-entropy *implementation* through linear probes (torch).

A linear kernel has the signature of ``torch.nn.functional.linear_cross_entropy``:
``fn(input, linear_weight, target, *, linear_bias=None, reduction="mean", ignore_index=-100)``
returning the loss; its gradients come from torch's autograd. Probes of an option - PyTorch's
``label_smoothing``, the loss variants ``softcap``, ``logit_scale``, ``z_loss``,
``smoothing_convention`` (:mod:`smcheck.variants`) - pass it as a keyword, and are skipped for a
kernel whose signature does not name it (as ``smcheck kernel``'s plain probes are).

Each probe builds a case that provokes one bug class of chunked kernels
(:data:`LINEAR_PROBES`), rounds it to the working dtype, hands the kernel fresh tensors (and
checks they come back unmodified), and measures its loss (ulps of max(|L*|, 1)) and dh, dW, db
(normwise) against :func:`~smcheck.linear.reference_linear` of the same rounded values. The
stock path - ``F.cross_entropy(F.linear(h, W, b), y)`` in the working dtype, which is what
PyTorch documents ``linear_cross_entropy`` to equal - runs on the same inputs.

Gate: an error passes when it is within the default threshold (the loss: eval's
``max_loss_ulp``; a gradient: eps(working) normwise) or at most :data:`STOCK_FACTOR` times the
stock path's own error (bfloat16 logits of large-norm hidden states cost the stock path
itself a few eps). Non-finite output, a modified input or an exception fail the probe.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UsageError
from .linear import normwise_rel_err, reference_linear
from .linear_eval import default_grad_err, linear_variant, variant_kwargs
from .metrics import default_thresholds, loss_gate_err
from .precisions import get_precision, round_to

__all__ = [
    "CHUNK_KEYWORDS",
    "CHUNK_VALUES",
    "LINEAR_PROBES",
    "SOFTCAP",
    "STOCK_FACTOR",
    "VARIANT_OPTIONS",
    "LinearKernelReport",
    "LinearProbeResult",
    "NOT_EMBEDDABLE",
    "kernel_linear",
]

#: A kernel's error may be this many times the stock path's (where above the thresholds).
STOCK_FACTOR = 2.0


#: The variant probes' constants, as the plain kernel probes' (smcheck.kernel.probes): Gemma 2
#: caps at 30, a logit scale of 2, PaLM's z-loss 1e-4, PyTorch-style smoothing 0.1.
SOFTCAP, LOGIT_SCALE, Z_LOSS, SMOOTHING = 30.0, 2.0, 1e-4, 0.1
#: The loss variant keywords (smcheck.variants): the stock path takes them through
#: ``torch_variant_stock``, a kernel only when its signature names them.
VARIANT_OPTIONS = frozenset({"softcap", "logit_scale", "z_loss", "smoothing_convention"})


@dataclass(frozen=True)
class _Case:
    h: np.ndarray
    w: np.ndarray
    b: np.ndarray | None
    y: np.ndarray
    #: keyword options the probe passes (a kernel not accepting one skips the probe)
    opts: Mapping[str, Any] = field(default_factory=dict)


def _case(n: int, d: int, v: int, seed: int, *, bias: bool = True) -> _Case:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d))
    w = rng.standard_normal((v, d)) / math.sqrt(d)
    b = rng.standard_normal(v) / 10 if bias else None
    y = rng.integers(0, v, n)
    y[n // 3] = -100  # one ignored row: its gradient contribution must be 0
    return _Case(h, w, b, y)


def _odd_vocab() -> _Case:
    return _case(48, 64, 1003, 1)  # 1003 = 17 * 59: no power-of-two chunk divides it


def _odd_dim() -> _Case:
    return _case(48, 65, 512, 2)


def _large_norm_hidden() -> _Case:
    c = _case(48, 64, 1024, 3)
    return _Case(c.h * 30, c.w, c.b, c.y)  # logits ~ 30: bfloat16 keeps 2**-8 of them


def _large_weight_row() -> _Case:
    c = _case(48, 64, 1024, 4)
    w = c.w.copy()
    w[7] *= 64  # one token's row dominates dW's norm and every row's max logit
    return _Case(c.h, w, c.b, c.y)


def _many_rows() -> _Case:
    return _case(1024, 16, 256, 5)  # dW sums 1024 rows: accumulation across row chunks shows


def _determinism() -> _Case:
    # 256 rows summed into dW: atomics or a racing split-K reduction reorder float32 sums,
    # and a different order rounds differently - the bits of dW, db differ between calls
    return _case(256, 32, 1003, 6)


def _bf16_fp32() -> _Case:
    # inputs rounded to bfloat16 once: exact in float32 too, so the bfloat16 and the float32 run
    # see the same values and differ only in the kernel's arithmetic
    c = _case(64, 64, 1003, 8)
    bf = get_precision("bfloat16")
    b = None if c.b is None else _rounded(c.b, bf)
    return _Case(_rounded(c.h, bf), _rounded(c.w, bf), b, c.y)


def _chunk_invariance() -> _Case:
    return _case(256, 32, 1003, 7)  # 256 = 4 * 61 + 12 and 1003 = 16 * 61 + 27: partial tails


def _with(c: _Case, **opts: Any) -> _Case:
    return _Case(c.h, c.w, c.b, c.y, opts)


def _label_smoothing() -> _Case:
    return _with(_case(64, 32, 1003, 9), label_smoothing=SMOOTHING)


def _reduction_sum() -> _Case:
    # the sum of 64 rows: a kernel that divides by the count (or by N, ignored rows included)
    return _with(_case(64, 32, 512, 10), reduction="sum")


def _softcap() -> _Case:
    # |z| up to ~1000: c tanh(z / c) saturates (1 - tanh**2 underflows) where z tanh(z / c)
    # is the logit itself
    c = _case(48, 32, 512, 11)
    return _Case(c.h * 300, c.w, c.b, c.y, {"softcap": SOFTCAP})


def _scale_then_cap() -> _Case:
    # |z| ~ 20-40: c tanh(s z / c) and s c tanh(z / c) differ by tens
    c = _case(48, 32, 512, 12)
    return _Case(c.h * 20, c.w, c.b, c.y, {"softcap": SOFTCAP, "logit_scale": LOGIT_SCALE})


def _large_lse(seed: int, z_loss: float) -> _Case:
    # a bias of 100 on every class: lse ~ 106, lambda lse**2 ~ 1.1, and the unshifted
    # sum exp(z) overflows float32's exp above 88.7 where the shifted one does not
    c = _case(48, 32, 512, seed)
    assert c.b is not None
    return _Case(c.h * 2, c.w, c.b + 100.0, c.y, {"z_loss": z_loss})


def _smoothing(convention: str, seed: int) -> Callable[[], _Case]:
    def build() -> _Case:
        # the label's coefficient (1 - eps vs 1 - eps + eps / V) and the others' (eps / (V - 1)
        # vs eps / V) differ by eps / V: the losses by eps / V times the mean margin
        c = _case(64, 32, 257, seed)
        return _with(c, label_smoothing=SMOOTHING, smoothing_convention=convention)

    return build


#: name -> (what it provokes, the case).
LINEAR_PROBES: dict[str, tuple[str, Callable[[], _Case]]] = {
    "odd_vocab": ("V = 1003, no multiple of a chunk: the last partial chunk", _odd_vocab),
    "odd_dim": ("D = 65: the tail of the hidden dimension", _odd_dim),
    "large_norm_hidden": ("hidden states x30: large logits", _large_norm_hidden),
    "large_weight_row": ("one weight row x64", _large_weight_row),
    "many_rows": ("N = 1024 rows: dW, db summed over many row chunks", _many_rows),
    "determinism": ("two identical calls: identical bits of loss, dh, dW, db", _determinism),
    "bf16_fp32": ("the same bfloat16-exact inputs run in bfloat16 and in float32", _bf16_fp32),
    "chunk_invariance": (
        "the kernel's chunk keyword at 8 and 61: both within the limits",
        _chunk_invariance,
    ),  # fmt: skip
    "label_smoothing": ("label_smoothing 0.1 with an ignored row", _label_smoothing),
    "reduction_sum": ("reduction='sum': the sum over the counted rows", _reduction_sum),
    "softcap": ("softcap 30 at saturating logits (z tanh(z/c) for c tanh(z/c), 1 - tanh**2)",
                _softcap),
    "scale_then_cap": ("logit_scale 2 then softcap 30 (the cap applied before the scale)",
                       _scale_then_cap),
    "z_loss": ("z_loss 1e-4 at log-sum-exp ~ 106 (z-loss from the shifted or the unshifted "
               "sum)", lambda: _large_lse(13, Z_LOSS)),
    "z_loss_off": ("z_loss=0 at log-sum-exp ~ 106: a z-loss added when disabled",
                   lambda: _large_lse(14, 0.0)),
    "smoothing_torch": ("label smoothing 0.1, smoothing_convention='torch' (eps / V each)",
                        _smoothing("torch", 15)),
    "smoothing_megatron": ("label smoothing 0.1, smoothing_convention='megatron' "
                           "(eps / (V - 1) on each other class)", _smoothing("megatron", 16)),
}  # fmt: skip

#: Keywords through which a kernel exposes its chunking; the first one in its signature is set.
CHUNK_KEYWORDS = ("chunk_size", "num_chunks", "chunk_vocab", "chunk_rows", "chunk")
#: The two values ``chunk_invariance`` sets it to: 61 divides neither N nor V of its case.
CHUNK_VALUES = (8, 61)


def _chunk_keyword(fn: Callable[..., Any]) -> str | None:
    if not _has_signature(fn):
        return None
    params = inspect.signature(fn).parameters
    return next((k for k in CHUNK_KEYWORDS if k in params), None)


#: Probes that call the kernel twice and compare the two calls' bits.
_TWICE = frozenset({"determinism"})


def _differ(a: tuple[Any, ...], b: tuple[Any, ...]) -> list[str]:
    """The outputs (loss, dh, dW, db) whose bits differ between two calls."""
    out = []
    for label, x, y in zip(("loss", "dh", "dW", "db"), a, b, strict=True):
        if x is None and y is None:
            continue
        if np.asarray(x, np.float64).tobytes() != np.asarray(y, np.float64).tobytes():
            out.append(label)
    return out


@dataclass(frozen=True)
class LinearProbeResult:
    """One probe in one dtype: the kernel's errors, the stock path's, the verdict."""

    name: str
    dtype: str
    status: str  # "pass" | "fail" | "skip"
    loss_ulps: float
    grad_hidden_err: float
    grad_weight_err: float
    grad_bias_err: float | None
    stock_loss_ulps: float
    stock_grad_hidden_err: float
    stock_grad_weight_err: float
    stock_grad_bias_err: float | None
    detail: str


@dataclass(frozen=True)
class LinearKernelReport:
    """``kernel_linear``'s result: one :class:`LinearProbeResult` per (probe, dtype), and the
    plain probe suite's report on the same kernel (``plain``; None when not run)."""

    target: str
    probes: tuple[LinearProbeResult, ...]
    plain: Any = None  # smcheck.kernel.KernelReport (imported lazily: torch-free start-up)

    @property
    def ok(self) -> bool:
        return all(p.status != "fail" for p in self.probes) and (
            self.plain is None or bool(self.plain.ok)
        )


#: Plain probes a linear kernel cannot be given: their logits are not finite, and 0 * inf is NaN
#: in any h W^T, so no embedding hands the kernel those logits (smcheck.kernel.linear_plain).
NOT_EMBEDDABLE = ("padding", "nonfinite_rows")
_NOT_EMBEDDABLE_WHY = "non-finite logits (0 * inf = NaN in h W^T: no exact embedding)"


def _plain_suite(
    fn: Callable[..., Any], target: str, names: Sequence[str], dtypes: Sequence[str],
    options: Mapping[str, Any],
) -> Any:  # fmt: skip
    """The plain probes ``names`` on the linear kernel ``fn`` through :func:`as_plain` (torch),
    those in :data:`NOT_EMBEDDABLE` reported as skipped with the reason."""
    from dataclasses import replace

    from .kernel import kernel
    from .kernel.linear_plain import as_plain
    from .kernel.report import ProbeResult
    from .kernel.runner import rows_for

    run = [n for n in names if n not in NOT_EMBEDDABLE]
    plain = as_plain(fn, unknown_signature=sorted(_TORCH_KEYWORDS))
    report = kernel(plain, framework="torch", dtypes=list(dtypes), probes=run, target=target,
                    **options)  # fmt: skip
    skips = tuple(
        ProbeResult(n, dt, v, rows_for(v, options.get("rows")), "skip", _NOT_EMBEDDABLE_WHY)
        for n in names
        if n in NOT_EMBEDDABLE
        for dt in report.dtypes
        for v in report.vocab
    )
    return replace(report, probes=report.probes + skips)


def _torch_dtype(name: str) -> Any:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "float64": torch.float64}  # fmt: skip
    if name not in table:
        raise UsageError(f"linear kernel dtype {name!r}: expected one of {', '.join(table)}")
    return table[name]


def _stock(h: Any, w: Any, y: Any, *, linear_bias: Any = None, **kw: Any) -> Any:
    """PyTorch's documented equivalent; the loss variants as their users write them
    (:func:`smcheck.kernel.frameworks.torch_variant_stock`)."""
    import torch.nn.functional as F

    if VARIANT_OPTIONS & set(kw):
        from .kernel.frameworks import torch_variant_stock

        return torch_variant_stock(F.linear(h, w, linear_bias), y, **kw)
    return F.cross_entropy(F.linear(h, w, linear_bias), y, **kw)


#: Keywords a kernel without a readable signature is taken to accept (F.linear_cross_entropy's).
_TORCH_KEYWORDS = frozenset({"reduction", "ignore_index", "label_smoothing"})


def _refused(fn: Callable[..., Any], opts: Mapping[str, Any]) -> list[str]:
    """The probe's keyword options ``fn`` does not accept (its signature names neither them
    nor ``**kwargs``); ``reduction`` is always passed."""
    if not _has_signature(fn):
        return [k for k in opts if k not in _TORCH_KEYWORDS]
    params = inspect.signature(fn).parameters
    if _takes_kwargs(params):
        return []
    return [k for k in opts if k != "reduction" and k not in params]


def _run(fn: Callable[..., Any], case: _Case, dtype: str, **extra: Any) -> tuple[Any, ...]:
    """(loss, dh, dW, db) of ``fn`` on fresh tensors, as float64 numpy; raises on misuse."""
    import torch

    td = _torch_dtype(dtype)
    h = torch.tensor(case.h, dtype=torch.float64).to(td).requires_grad_(True)
    w = torch.tensor(case.w, dtype=torch.float64).to(td).requires_grad_(True)
    b = None if case.b is None else torch.tensor(case.b).to(td).requires_grad_(True)
    y = torch.tensor(case.y, dtype=torch.int64)
    copies = [t.detach().clone() for t in (h, w, y) + (() if b is None else (b,))]
    kwargs: dict[str, Any] = {"reduction": "mean", **case.opts}
    params = inspect.signature(fn).parameters if _has_signature(fn) else {}
    if not params or "ignore_index" in params or _takes_kwargs(params):
        kwargs["ignore_index"] = -100
    if b is not None:
        kwargs["linear_bias"] = b
    loss = fn(h, w, y, **kwargs, **extra)
    loss.backward()
    after = [t.detach() for t in (h, w, y) + (() if b is None else (b,))]
    if any(not torch.equal(a, c) for a, c in zip(after, copies, strict=True)):
        raise RuntimeError("the kernel modified its inputs")

    def np64(t: Any) -> np.ndarray:
        return np.zeros(1) if t is None else t.detach().to(torch.float64).numpy()

    return (
        float(loss.detach().to(torch.float64)),
        np64(h.grad),
        np64(w.grad),
        None if b is None else np64(b.grad),
    )


def _rounded(x: np.ndarray, working: Any) -> np.ndarray:
    return np.asarray(round_to(x, working)).astype(np.float64)


def _has_signature(fn: Callable[..., Any]) -> bool:
    try:
        inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return True


def _takes_kwargs(params: Any) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _errors(out: tuple[Any, ...], ref: Any, working: Any) -> tuple[float, ...]:
    loss, dh, dw, db = out
    ulps = loss_gate_err(np.array([loss]), np.array([ref.loss_reduced]), working)[0]
    ulps = math.inf if not math.isfinite(loss) else float(ulps)
    errs = [
        ulps,
        normwise_rel_err(dh, ref.grad_hidden),
        normwise_rel_err(dw, ref.grad_weight),
    ]
    errs.append(math.nan if db is None else normwise_rel_err(db, ref.grad_bias))
    return tuple(errs)


def _reference(case: _Case, dtype: str) -> Any:
    """The reference of a probe's case, with its reduction, label smoothing and loss variant
    (the variant's constants rounded to the carrier, as the kernel's float32 holds them)."""
    opts = dict(case.opts)
    variant = linear_variant(case.h, case.w, dtype, **{k: opts.pop(k) for k in list(opts)
                                                      if k in VARIANT_OPTIONS})  # fmt: skip
    return reference_linear(case.h, case.w, case.y, bias=case.b, dtype=dtype, **opts,
                            **variant_kwargs(variant))  # fmt: skip


def kernel_linear(
    fn: Callable[..., Any],
    *,
    target: str = "kernel",
    dtypes: Sequence[str] = ("bfloat16", "float32"),
    probes: Sequence[str] | None = None,
    plain: Mapping[str, Any] | None = None,
) -> LinearKernelReport:
    """Run ``fn`` (``F.linear_cross_entropy``'s signature) through the linear probes, and with
    ``plain`` (the options of :func:`smcheck.kernel` for it: vocab, rows, seed, device, judge,
    quick, max_loss_ulp, max_grad_err; ``{}`` for the defaults) through the plain probe suite
    too, by an exact embedding of each probe's logits (:mod:`smcheck.kernel.linear_plain`).
    ``probes`` names probes of either suite (None: all); a name both suites have runs in both.

    A kernel that sums dW in bfloat16 over its row chunks fails ``many_rows``; one that forgets
    the max shift fails the plain ``offset`` probe; PyTorch's own ``F.linear_cross_entropy``
    passes every probe.
    """
    from .kernel.probes import PROBES

    asked = list(LINEAR_PROBES) + list(PROBES) if probes is None else list(probes)
    for name in asked:
        if name not in LINEAR_PROBES and name not in PROBES:
            raise UsageError(f"unknown probe {name!r}; expected a linear probe "
                             f"({', '.join(LINEAR_PROBES)}) or a plain one "
                             f"({', '.join(PROBES)})")  # fmt: skip
    names = [n for n in dict.fromkeys(asked) if n in LINEAR_PROBES]
    plain_names = [n for n in dict.fromkeys(asked) if n in PROBES]
    if plain is None:
        plain_names = []
    if plain_names and all(n in NOT_EMBEDDABLE for n in plain_names):
        # decided before any probe runs: nothing of the plain suite could run
        raise UsageError(f"probe {', '.join(plain_names)} does not apply to a linear kernel "
                         f"({_NOT_EMBEDDABLE_WHY})")  # fmt: skip
    results = []
    chunk_key = _chunk_keyword(fn)
    for name in names:
        if name == "chunk_invariance" and chunk_key is None:
            for dt in dtypes:
                get_precision(dt)
                results.append(LinearProbeResult(
                    name, dt, "skip", math.nan, math.nan, math.nan, None, math.nan, math.nan,
                    math.nan, None, "the kernel has no chunk keyword (" + ", ".join(CHUNK_KEYWORDS)
                    + ")",
                ))  # fmt: skip
            continue
        case = LINEAR_PROBES[name][1]()
        refused = _refused(fn, case.opts)
        if refused:  # as the plain kernel probes: an option the kernel lacks is not a failure
            for dt in dtypes:
                get_precision(dt)
                results.append(LinearProbeResult(
                    name, dt, "skip", math.nan, math.nan, math.nan, None, math.nan, math.nan,
                    math.nan, None, "no " + ", ".join(refused) + " keyword",
                ))  # fmt: skip
            continue
        for dt in dtypes:
            working = get_precision(dt)

            rc = _Case(
                _rounded(case.h, working), _rounded(case.w, working),
                None if case.b is None else _rounded(case.b, working), case.y, case.opts,
            )  # fmt: skip
            ref = _reference(rc, dt)
            stock = _errors(_run(_stock, rc, dt), ref, working)
            loss_k, _ = default_thresholds(working, "float32", rc.w.shape[0])
            limits = [loss_k] + [default_grad_err(working, rc.w.shape[0])] * 3
            detail = ""
            differ: list[str] = []
            runs: list[tuple[float, ...]] = []
            try:
                if name == "chunk_invariance" and chunk_key is not None:
                    # each chunking alone within the gate: a tail or a chunk-count-dependent
                    # scale shows at one of the two values
                    runs = [
                        _errors(_run(fn, rc, dt, **{chunk_key: c}), ref, working)
                        for c in CHUNK_VALUES
                    ]
                    got = tuple(max(a, b) for a, b in zip(*runs, strict=True))
                else:
                    first = _run(fn, rc, dt)
                    if name in _TWICE:
                        differ = _differ(first, _run(fn, rc, dt))
                    got = _errors(first, ref, working)
            except Exception as exc:  # the kernel's exception is a finding, not a traceback
                got = (math.inf,) * 4
                detail = (
                    f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
            bad = [
                label
                for label, e, s, lim in zip(
                    ("loss", "dh", "dW", "db"), got, stock, limits, strict=True
                )  # fmt: skip
                if not math.isnan(e) and not (e <= lim or e <= STOCK_FACTOR * s)
            ]
            if bad and not detail:
                detail = "above the gate: " + ", ".join(bad)
                if runs:
                    worst = [
                        f"{chunk_key}={c}"
                        for c, r in zip(CHUNK_VALUES, runs, strict=True)
                        if any(not (e <= lim or e <= STOCK_FACTOR * s_)
                               for e, s_, lim in zip(r, stock, limits, strict=True)
                               if not math.isnan(e))
                    ]  # fmt: skip
                    detail += " at " + ", ".join(worst)
            if differ and not detail:
                detail = "two identical calls differ in: " + ", ".join(differ)
            bad += differ
            results.append(
                LinearProbeResult(
                    name,
                    dt,
                    "fail" if bad else "pass",
                    got[0],
                    got[1],
                    got[2],
                    None if math.isnan(got[3]) else got[3],
                    stock[0],
                    stock[1],
                    stock[2],
                    None if math.isnan(stock[3]) else stock[3],
                    detail,
                )  # fmt: skip
            )
    suite = None
    if plain is not None and plain_names:
        suite = _plain_suite(fn, target, plain_names, dtypes, plain)
    return LinearKernelReport(target, tuple(results), suite)
