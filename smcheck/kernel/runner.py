"""Running the suite: one probe at one dtype and vocabulary size (:class:`_Runner`), the
analysis :func:`kernel`, and :func:`assert_kernel` for test suites."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import dims
from ._base import (
    DEFAULT_DTYPES,
    DEFAULT_VOCAB,
    IGNORE_INDEX,
    KERNEL_BYTES_PER_VALUE,
    MAX_ROWS,
    MIN_ROWS,
    QUICK_VOCAB,
    ROW_BUDGET,
    STOCK_SLACK_ULP,
    KernelFn,
    Precision,
    Prepared,
    UsageError,
    _printable,
    _quiet,
    check_size,
    default_thresholds,
    get_precision,
    merge_options,
    prepare_input,
    resolve_accum,
)
from .frameworks import _Framework, _framework, _Outcome, detect_framework
from .measure import _Measure, _measure, _truth, _ulps
from .options import RENAMED, KernelOptions
from .probes import PROBES, VARIANT_OPTIONS, Probe
from .report import KernelReport, ProbeResult

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
    judge: str
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
        accum = resolve_accum(t, prep.accum)
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
        # the loss variant the probe asks for (passed to the kernel: it accepts them, its
        # probe's ``needs``), in the reference too
        variant = {k: v for k, v in opts.items() if k in VARIANT_OPTIONS}
        prep = prepare_input(case.x, y, dtype=working, ignore_index=IGNORE_INDEX,
                             label_smoothing=smoothing, **variant)  # fmt: skip
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
            wrong = f"reduction={reduction!r} gave a loss of shape {dims(out.loss.shape)}"
            m = replace(m, problems=(*m.problems, wrong))
        s = None
        # a variant's probe compares with the framework's variant stock (torch), if any
        stock = self.fw.variant_stock() if VARIANT_OPTIONS.intersection(opts) else self.fw.stock()
        if self.stock and stock is not None:
            sout = self._call(stock, prep, opts, cot)
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
        }[self.judge]
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
            else f"rows called in two halves: {'identical bits' if same else 'within the limits'}"
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
    return prepare_input(
        prep.xk[sl], prep.labels[sl], dtype=prep.working, ignore_index=IGNORE_INDEX
    )


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
    options: KernelOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    **fields: Any,
) -> KernelReport:
    """Run the probe suite (:data:`PROBES`) on the cross-entropy kernel ``fn``.

    ``options`` is a :class:`KernelOptions`, or give its fields as keywords (both: the keywords
    replace those fields). ``framework`` (torch, jax, numpy) is detected from what ``fn``
    returns when None. ``dtypes`` default to float32 and bfloat16 (numpy: float32); ``vocab``
    to :data:`DEFAULT_VOCAB` (:data:`QUICK_VOCAB` with ``quick``); ``rows`` per probe to about
    2**19 logits' worth. ``judge`` is one of :data:`JUDGES` (see the module docstring); the old
    keyword ``gate`` still works, with a DeprecationWarning. ``progress(done, total)`` is called
    after each probe.
    """
    opts = merge_options(KernelOptions, options, fields, RENAMED, "kernel")
    if not callable(fn):
        raise UsageError(f"the kernel {fn!r} is not callable")
    vocab, rows = opts.vocab, opts.rows
    sizes = tuple(vocab) if vocab is not None else QUICK_VOCAB if opts.quick else DEFAULT_VOCAB
    for v in sizes:  # before any allocation: --vocab 10**11 is a usage error, not out of memory
        check_size(rows_for(v, rows), v, KERNEL_BYTES_PER_VALUE, "kernel", "--vocab")
    fw_name = opts.framework or detect_framework(fn, opts.device)
    fw = _framework(fw_name, opts.device)
    dtypes = opts.dtypes
    if dtypes is None:
        dtypes = DEFAULT_DTYPES[fw.name]
    if isinstance(dtypes, str):
        dtypes = [d for d in dtypes.split(",") if d.strip()]
    precisions = [get_precision(d.strip()) for d in dtypes]
    names = parse_probes(opts.probes)
    runner = _Runner(fn, fw, _accepted(fn), opts.judge, opts.seed, opts.max_loss_ulp,
                     opts.max_grad_err, opts.stock)  # fmt: skip
    start = time.perf_counter()
    results = []
    runs = list(_iter_runs(precisions, sizes, names))
    with fw.session():
        for i, (t, v, probe) in enumerate(runs):
            if i and (t, v) != runs[i - 1][:2]:
                fw.release()
            results.append(runner.run(probe, t, v, rows_for(v, rows)))
            if progress is not None:
                progress(i + 1, len(runs))
    name = opts.target or _printable(getattr(fn, "__qualname__", None) or repr(fn))
    return KernelReport(
        target=name,
        framework=fw.name,
        device=fw.device(),
        stock=fw.stock_name() if opts.stock else "",
        judge=opts.judge,
        seed=opts.seed,
        dtypes=tuple(t.name for t in precisions),
        vocab=sizes,
        probes=tuple(results),
        seconds=round(time.perf_counter() - start, 3),
    )


# --- for test suites ----------------------------------------------------------------------------


def failure_message(report: KernelReport) -> str:
    """The AssertionError text: a header, then per failed probe its detail and worst rows."""
    lines = [
        f"smcheck: {len(report.failed)} of {len(report.probes)} kernel probes failed "
        f"({report.target}: {report.framework} on {report.device}, judge {report.judge})"
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
    ``probes``, ``judge``...). Raises :class:`AssertionError` listing each failed probe with its
    detail and worst rows; returns the report when every probe passes (skips do not fail).

    >>> import numpy as np
    >>> def wrong_mean(z, y):  # the mean of a per-row loss, divided by one row too many
    ...     d = z - z.max(1, keepdims=True)
    ...     return (np.log(np.exp(d).sum(1)) - d[np.arange(len(y)), y]).sum() / (len(y) + 1)
    >>> assert_kernel(wrong_mean, vocab=(10,), probes="uniform", rows=6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: smcheck: 1 of 1 kernel probes failed (wrong_mean: numpy on cpu, judge either)
    uniform[float32-10]: all-equal rows (...): loss 1.38e+06 ulps (stock 1.13, limit 12); ...
    """
    __tracebackhide__ = True
    report = kernel(fn, **options)
    if not report.ok:
        raise AssertionError(failure_message(report))
    return report
