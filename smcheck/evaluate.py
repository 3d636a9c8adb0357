"""``evaluate``: audit a logits array - every method against the reference - as one report.

The analysis behind ``smcheck eval``. It rounds the logits to the working dtype once, runs the
chosen methods and the reference on the same rounded values in row chunks (:mod:`smcheck.engine`:
bounded memory, results identical for any chunk size), and turns the merged statistics into a
frozen :class:`EvalReport` with a verdict per method and for the CI gate.

Verdict of a method (descriptive):

* ``broken`` - some eligible row has a NaN/inf loss or gradient, or an intermediate overflowed,
  although the reference is finite (or underflow, when ``fail_on`` names it);
* ``lossy`` - finite, but its loss error exceeds ``max_loss_ulp`` (in ulps of max(|L*|, 1)) or
  its gradient error exceeds ``max_grad_err`` (absolute, max over entries);
* ``ok`` otherwise.

A method's ``ok`` is whether it passes the gate's checks (``fail_on`` and both thresholds); the
report's ``ok`` is whether every gated method does and at least one row was eligible.

Default thresholds (both from one budget k = 4 + ceil(log2 C) * eps(accum) / eps(dtype)):
the final value is rounded to the working dtype (0.5 ulp), so are its two or three inputs
(the shifted logit, the log-sum-exp: about 1.5 ulps together), and each exp is rounded
(0.5 eps relative on the sum); the pairwise sum of C terms in the accumulation dtype adds at most
ceil(log2 C) roundings of eps(accum). ``max_loss_ulp = k`` and ``max_grad_err = k * eps(dtype)``
(gradient entries are probabilities in [0, 1], so eps(dtype) is one ulp of the largest).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .core import check_labels
from .engine import (
    FULL_GRAD_CLASSES,
    OVERFLOW_CAUSES,
    RANDOM_GRAD_LABELS,
    ChunkStats,
    EngineConfig,
    Extreme,
    MethodStats,
    PerRowBlock,
    chunk_rows_for,
    hist_quantile,
    run,
    underflow_margin,
)
from .errors import InputError, UsageError
from .frameworks import FRAMEWORK_METHODS
from .loading import ZarrLogits
from .methods import DEFAULT_METHODS, METHODS
from .output import PerRowWriter  # re-exported: it lives in smcheck.output now
from .precisions import Precision, get_precision, resolve_accum
from .reference import reference_precision_name

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "SCHEMA",
    "EvalReport",
    "PerRowWriter",
    "GateConfig",
    "InputSummary",
    "MethodReport",
    "WorstRow",
    "default_thresholds",
    "evaluate",
    "per_row_columns",
]

SCHEMA = "smcheck.eval/1"
#: Working-array budget of one chunk (bytes): rows per chunk = budget / (cost of one row).
DEFAULT_CHUNK_BYTES = 64 * 2**20
FAIL_ON = ("overflow", "underflow", "nonfinite")


@dataclass(frozen=True)
class InputSummary:
    """The input as the methods saw it (after rounding to ``dtype``)."""

    logits: str
    labels: str | None
    rows: int
    classes: int
    dtype: str
    accum: str
    cast: str
    label_free: bool
    unit: str  # "rows", or "pairs" (row, class) in label-free mode
    eligible_rows: int
    ignored_rows: int
    nonfinite_input_rows: int
    ref_nonfinite: int
    logit_min: float | None
    logit_max: float | None
    logit_max_row: int | None
    margin_max: float | None
    margin_max_row: int | None
    ln_max: float
    underflow_margin: float  # -ln(smallest subnormal / 2): p_y is 0 beyond this margin
    rows_over_ln_max: int
    rows_margin_underflow: int
    cast_changed: int
    cast_max_rel_change: float
    cast_overflowed: int
    cast_saturated: int
    cast_flushed_to_zero: int
    grad_policy: str
    original_shape: tuple[int, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class GateConfig:
    """Which methods gate the exit code, and their thresholds."""

    methods: tuple[str, ...]
    max_loss_ulp: float
    max_grad_err: float
    fail_on: tuple[str, ...]
    thresholds_default: bool


@dataclass(frozen=True)
class MethodReport:
    """One method's findings over the eligible rows (pairs, label-free)."""

    name: str
    gated: bool
    measured: int
    nan_loss_rows: int
    inf_loss_rows: int
    nonfinite_grad_rows: int
    grad_checked: int
    overflow_rows: int
    underflow_rows: int
    loss_max_rel_err: float | None
    loss_max_rel_err_row: int | None
    loss_median_rel_err: float | None
    loss_max_ulp_err: float | None
    loss_max_ulp_err_row: int | None
    loss_median_ulp_err: float | None
    loss_p99_ulp_err: float | None
    loss_max_bits: float | None
    loss_max_gate_err: float | None
    loss_max_gate_err_row: int | None
    mean_loss_rel_err: float | None
    grad_max_abs_err: float | None
    grad_max_abs_err_row: int | None
    grad_max_rel_err: float | None
    verdict: str  # ok | lossy | broken
    problems: tuple[str, ...]  # in words, most severe first
    ok: bool
    # overflow rows by what overflowed first: (cause of OVERFLOW_CAUSES, count) with count > 0
    overflow_causes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class WorstRow:
    """One of the worst rows: where, what the input looks like, each method's error."""

    row: int
    label: int
    max_logit: float
    margin: float
    ref_p: float
    ref_loss: float
    methods: tuple[tuple[str, float | None, float | None, bool], ...]  # name, loss, rel, bad


@dataclass(frozen=True)
class EvalReport:
    """Everything ``smcheck eval`` prints, as data (renderers turn it into text)."""

    input: InputSummary
    reference: str
    gate: GateConfig
    methods: tuple[MethodReport, ...]
    worst: tuple[WorstRow, ...]
    ok: bool
    verdict: str
    schema: str = SCHEMA

    def method(self, name: str) -> MethodReport:
        """The report of one method by name."""
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)


def default_thresholds(working: Precision, accum: Precision, classes: int) -> tuple[float, float]:
    """(max_loss_ulp, max_grad_err) for a dtype, accumulation dtype and class count.

    >>> from smcheck.precisions import get_precision as p
    >>> default_thresholds(p("float32"), p("float32"), 1000)
    (14.0, 1.6689300537109375e-06)
    >>> default_thresholds(p("float16"), p("float32"), 32000)
    (4.0, 0.00390625)
    """
    log_c = math.ceil(math.log2(classes)) if classes > 1 else 0
    k = round(4 + log_c * accum.eps / working.eps, 2)
    return k, k * working.eps


def _opt(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)


def _row(e: Extreme) -> int | None:
    return None if math.isnan(e.value) else e.row


def _where(e: Extreme) -> str:
    """'row R' or, for a (row, class) pair of the label-free mode, 'row R, class K'."""
    return f"row {e.row}" if e.col < 0 else f"row {e.row}, class {e.col}"


def _grad_policy(label_free: bool, classes: int) -> str:
    if not label_free:
        return "gradient of every eligible row at its label"
    if classes <= FULL_GRAD_CLASSES:
        return f"gradient checked for all {classes} classes of every row"
    return (
        f"gradient checked for {2 + RANDOM_GRAD_LABELS} classes per row (argmax, "
        f"argmin and {RANDOM_GRAD_LABELS} pseudo-random ones, splitmix64 of the row index)"
    )


def _method_report(
    name: str,
    st: MethodStats,
    gate: GateConfig,
    inp: InputSummary,
    working: Precision,
) -> MethodReport:
    unit = inp.unit
    nonfinite = st.nan_loss + st.inf_loss
    problems: list[str] = []
    failed = False
    broken = False
    if st.overflow:
        broken = True
        failed |= "overflow" in gate.fail_on
        problems.append(_overflow_text(name, st, inp, working))
    if nonfinite or st.nonfinite_grad:
        broken = True
        failed |= "nonfinite" in gate.fail_on
        what = []
        if st.nan_loss:
            what.append(f"NaN loss on {st.nan_loss} {unit}")
        if st.inf_loss:
            what.append(f"inf loss on {st.inf_loss} {unit}")
        if st.nonfinite_grad:
            grad_unit = "pairs" if inp.label_free else "rows"
            what.append(f"non-finite gradient on {st.nonfinite_grad} {grad_unit}")
        text = f"{name} gives " + ", ".join(what)
        if st.underflow and inp.margin_max is not None and not st.overflow:
            text += (
                f": p_y underflows to 0 in {inp.dtype} once the margin max(z) - z_y exceeds "
                f"{inp.underflow_margin:.4g} (largest margin {_g(inp.margin_max)})"
            )
        problems.append(text)
    if st.underflow and "underflow" in gate.fail_on:
        broken = failed = True
        if not nonfinite:
            problems.append(f"{name}: p_y underflows to 0 on {st.underflow} {unit}")
    lossy = False
    if not math.isnan(st.loss_gate.value) and st.loss_gate.value > gate.max_loss_ulp:
        lossy = True
        problems.append(
            f"{name} loss error reaches {st.loss_gate.value:.3g} ulps of max(|loss|, 1) at "
            f"{_where(st.loss_gate)} (gate {gate.max_loss_ulp:.3g})"
        )
    if not math.isnan(st.grad_abs.value) and st.grad_abs.value > gate.max_grad_err:
        lossy = True
        problems.append(
            f"{name} gradient error reaches {st.grad_abs.value:.3g} at {_where(st.grad_abs)} "
            f"(gate {gate.max_grad_err:.3g})"
        )
    failed |= lossy
    verdict = "broken" if broken else "lossy" if lossy else "ok"
    ulp_max = _opt(st.loss_ulp.value)
    return MethodReport(
        name=name,
        gated=name in gate.methods,
        measured=st.measured,
        nan_loss_rows=st.nan_loss,
        inf_loss_rows=st.inf_loss,
        nonfinite_grad_rows=st.nonfinite_grad,
        grad_checked=st.grad_checked,
        overflow_rows=st.overflow,
        underflow_rows=st.underflow,
        overflow_causes=tuple(
            (c, k) for c, k in zip(OVERFLOW_CAUSES, st.overflow_causes, strict=True) if k
        ),
        loss_max_rel_err=_opt(st.loss_rel.value),
        loss_max_rel_err_row=_row(st.loss_rel),
        loss_median_rel_err=hist_quantile(st.rel_hist, 0.5),
        loss_max_ulp_err=ulp_max,
        loss_max_ulp_err_row=_row(st.loss_ulp),
        loss_median_ulp_err=hist_quantile(st.ulp_hist, 0.5),
        loss_p99_ulp_err=hist_quantile(st.ulp_hist, 0.99),
        loss_max_bits=None if ulp_max is None else math.log2(ulp_max + 1),
        loss_max_gate_err=_opt(st.loss_gate.value),
        loss_max_gate_err_row=_row(st.loss_gate),
        mean_loss_rel_err=st.mean_loss_rel_err(),
        grad_max_abs_err=_opt(st.grad_abs.value),
        grad_max_abs_err_row=_row(st.grad_abs),
        grad_max_rel_err=_opt(st.grad_rel.value),
        verdict=verdict,
        problems=tuple(problems),
        ok=not failed,
    )


_STABLE = ("fused", "log1p", "online")


def _overflow_text(name: str, st: MethodStats, inp: InputSummary, working: Precision) -> str:
    """What overflowed in a method's rows, by cause (the engine recomputes it per row)."""
    t = inp.dtype
    why = {  # cause -> (what overflowed, the fact behind it)
        "shift": (f"z - max(z) exceeds max {t} = {working.max:.4g}", f"NaN: {t} has no inf"),
        "exp": (
            f"exp(z) exceeds max {t}",
            f"logits reach {_g(inp.logit_max)} > ln(max) = {inp.ln_max:.4g}",
        ),  # fmt: skip
        "sum": (
            f"the {inp.accum} sum of exp(z) exceeds max {inp.accum} = "
            f"{get_precision(inp.accum).max:.4g}",
            "",
        ),  # fmt: skip
        "grad": (
            f"-1/p_y exceeds max {t} = {working.max:.4g}",
            f"p_y < {1 / working.max:.2g}; largest margin {_g(inp.margin_max)}",
        ),  # fmt: skip
        "other": ("an intermediate overflows", ""),
    }
    causes = [(c, k) for c, k in zip(OVERFLOW_CAUSES, st.overflow_causes, strict=True) if k]
    parts = []
    for c, k in causes:
        what, detail = why[c]
        count = f" on {k}" if len(causes) > 1 else ""
        parts.append(what + count + (f" ({detail})" if detail else ""))
    return f"{name} overflows on {st.overflow} {inp.unit}: " + "; ".join(parts)


def _g(x: float | None) -> str:
    return "-" if x is None else "inf" if math.isinf(x) else f"{x:.3g}"


def _advice(m: MethodReport, reports: Sequence[MethodReport], dtype: str, accum: str) -> str:
    if m.verdict == "broken" and m.name not in _STABLE:
        return "use a fused log-softmax (fused or log1p)"
    better = [r.name for r in reports if r.name != m.name and r.verdict == "ok"]
    if better:
        return f"{', '.join(better)} {'passes' if len(better) == 1 else 'pass'}"
    if get_precision(accum).eps >= get_precision(dtype).eps:
        return f"accumulate in a wider dtype (--accum) or compute in a wider dtype than {dtype}"
    return f"compute in a wider dtype than {dtype} (sums already accumulate in {accum})"


def _verdict(inp: InputSummary, gate: GateConfig, reports: Sequence[MethodReport]) -> str:
    if inp.rows == 0:
        return "no eligible row: the input has no rows; nothing was checked"
    if inp.eligible_rows == 0:
        return (
            f"no eligible row: all {inp.rows} rows are ignored ({inp.ignored_rows}) or have "
            f"non-finite input ({inp.nonfinite_input_rows}); nothing was checked"
        )
    gated = [m for m in reports if m.gated]
    failing = [m for m in gated if not m.ok]
    parts: list[str] = []
    if failing:
        m = failing[0]
        parts.append(f"{m.problems[0]}; {_advice(m, reports, inp.dtype, inp.accum)}")
    else:
        names = ", ".join(m.name for m in gated) or "no method"
        losses = [m.loss_max_gate_err for m in gated if m.loss_max_gate_err is not None]
        grads = [m.grad_max_abs_err for m in gated if m.grad_max_abs_err is not None]
        detail = ""
        if losses and grads:
            detail = (
                f" (loss error <= {max(losses):.3g} ulps of max(|loss|, 1), "
                f"gradient error <= {max(grads):.3g})"
            )
        verb = "pass" if len(gated) > 1 else "passes"
        parts.append(
            f"{names} {verb} in {inp.dtype} on {inp.eligible_rows} rows{detail}"
            if gated
            else f"nothing gated; {inp.eligible_rows} rows checked"
        )
        excused = [m for m in gated if m.problems]
        if excused:  # gated, finite where measured, but --fail-on leaves out what it does
            m = excused[0]
            parts.append(f"{m.problems[0]} (not failing: --fail-on leaves it out)")
        others = [m for m in reports if not m.gated and m.problems]
        if others:
            m = others[0]
            parts.append(f"{m.problems[0]} - {_advice(m, reports, inp.dtype, inp.accum)}")
    return "; ".join(parts)


def _framework_notes(methods: Sequence[str]) -> tuple[str, ...]:
    """Where each framework method ran (CPU, or a GPU when one is present): part of the result."""
    from .frameworks import framework_device

    return tuple(
        f"method {m} ran on {framework_device(m)} (its own accumulation; --accum does not apply)"
        for m in methods
        if m in FRAMEWORK_METHODS
    )


def evaluate(
    logits: np.ndarray | ZarrLogits,
    labels: np.ndarray | None = None,
    *,
    dtype: str | np.dtype | Precision | None = None,
    accum: str | np.dtype | Precision | None = None,
    cast: str = "ieee",
    methods: Sequence[str] = DEFAULT_METHODS,
    ignore_index: int = -100,
    gate: Sequence[str] = ("fused",),
    max_loss_ulp: float | None = None,
    max_grad_err: float | None = None,
    fail_on: Sequence[str] = ("overflow", "nonfinite"),
    top_k: int = 10,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    chunk_rows: int | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    per_row: Callable[[PerRowBlock], None] | None = None,
    logits_name: str = "<array>",
    labels_name: str | None = None,
    notes: Sequence[str] = (),
    original_shape: Sequence[int] | None = None,
    engine: str = "local",
    scheduler: str | None = None,
) -> EvalReport:
    """Audit ``logits`` (N, C) - or (..., C), leading axes flattened - with optional labels.

    Every method in ``methods`` (plus any in ``gate``) and the reference run on the logits
    rounded to ``dtype``; ``labels=None`` is the label-free mode (every (row, class) pair).
    Work runs in chunks of ``chunk_rows`` rows (default: what fits ``chunk_bytes``) on
    ``workers`` forked processes where that is safe, else threads (see
    :func:`smcheck.engine.run`); ``per_row`` receives each chunk's per-row values in row order.
    ``original_shape`` is reported as the input's shape (a loader that flattened it says so).
    ``engine="dask"`` runs the chunks on a Dask cluster (``scheduler`` address, else a local
    one with ``workers`` processes); it needs ``logits`` memory-mapped from a ``.npy`` file
    or a :class:`~smcheck.loading.ZarrLogits` store, which each worker opens itself. The result
    is the same as the local engine's.

    >>> import numpy as np
    >>> z = np.array([[12.0, 0.0], [1.0, 2.0]], dtype=np.float16)
    >>> rep = evaluate(z, np.array([0, 1]))
    >>> rep.method("naive").overflow_rows, rep.method("fused").verdict, rep.ok
    (1, 'ok', True)
    """
    # a memmap or a zarr store stays on disk: the engines read a block of rows at a time
    x: np.ndarray | ZarrLogits
    if isinstance(logits, ZarrLogits):  # (N, C) already: its leading axes are flattened lazily
        x = logits
        shape = logits.original_shape
    else:
        x = logits if isinstance(logits, np.memmap) else np.asarray(logits)
        shape = tuple(int(s) for s in x.shape)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim > 2:
            x = x.reshape(-1, x.shape[-1])
    if original_shape is not None:
        shape = tuple(int(s) for s in original_shape)
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"logits must have a class axis of length >= 1, got shape {x.shape}")
    n, c = (int(s) for s in x.shape)
    if dtype is None and x.dtype.kind not in "fV":
        raise UsageError(f"logits of dtype {x.dtype}: name a working dtype")
    working = get_precision(x.dtype if dtype is None else dtype)
    acc = resolve_accum(working, accum)
    if cast not in ("ieee", "saturate"):
        raise UsageError(f"unknown cast mode {cast!r}; expected 'ieee' or 'saturate'")
    known = (*METHODS, *FRAMEWORK_METHODS)
    for what, items in (("method", methods), ("gated method", gate)):
        for m in items:
            if m not in known:
                raise UsageError(f"unknown {what} {m!r}; expected one of: {', '.join(known)}")
    for f in fail_on:
        if f not in FAIL_ON:
            raise UsageError(f"unknown fail-on check {f!r}; expected one of: {', '.join(FAIL_ON)}")
    run_methods = tuple(m for m in known if m in set(methods) | set(gate))
    if not run_methods:
        raise UsageError("no method to run")
    for flag, value in (("--max-loss-ulp", max_loss_ulp), ("--max-grad-err", max_grad_err)):
        if value is not None and not (0 <= float(value) < math.inf):
            raise UsageError(f"{flag} must be a finite number >= 0, got {value}")
    lab = None if labels is None else check_labels(labels, n, c, ignore_index)
    label_free = lab is None
    loss_k, grad_k = default_thresholds(working, acc, c)
    gate_cfg = GateConfig(
        methods=tuple(m for m in run_methods if m in set(gate)),
        max_loss_ulp=loss_k if max_loss_ulp is None else float(max_loss_ulp),
        max_grad_err=grad_k if max_grad_err is None else float(max_grad_err),
        fail_on=tuple(f for f in FAIL_ON if f in set(fail_on)),
        thresholds_default=max_loss_ulp is None and max_grad_err is None,
    )
    cfg = EngineConfig(working, acc, run_methods, cast, ignore_index, top_k)
    rows_per_chunk = chunk_rows or chunk_rows_for(c, len(run_methods), label_free, chunk_bytes)
    if engine == "local":  # run() needs shape and row slices only: a ZarrLogits has them
        stats: ChunkStats = run(
            typing.cast(np.ndarray, x), lab, cfg, chunk_rows=rows_per_chunk, workers=workers,
            progress=progress, per_row=per_row,
        )  # fmt: skip
    elif engine == "dask":
        source: str | ZarrLogits | None = getattr(x, "filename", None)
        if isinstance(x, ZarrLogits):
            source = x  # pickled as its path: each task opens the store and reads its rows
        elif not isinstance(x, np.memmap) or not source:
            raise UsageError(
                "--engine dask reads a .npy file or a zarr store (each worker opens it itself)"
            )
        from .dask_engine import run_dask

        stats = run_dask(
            source, lab, cfg, rows=n, chunk_rows=rows_per_chunk, scheduler=scheduler,
            workers=workers, progress=progress, per_row=per_row,
        )  # fmt: skip
    else:
        raise UsageError(f"unknown engine {engine!r}; expected 'local' or 'dask'")
    si = stats.input
    cr = si.cast
    inp = InputSummary(
        logits=logits_name,
        labels=labels_name,
        rows=n,
        classes=c,
        dtype=working.name,
        accum=acc.name,
        cast=cast,
        label_free=label_free,
        unit="pairs" if label_free else "rows",
        eligible_rows=si.eligible,
        ignored_rows=si.ignored,
        nonfinite_input_rows=si.nonfinite_input,
        ref_nonfinite=si.ref_nonfinite,
        logit_min=_opt(si.logit_min),
        logit_max=_opt(si.logit_max.value),
        logit_max_row=_row(si.logit_max),
        margin_max=None if math.isnan(si.margin_max.value) else si.margin_max.value,
        margin_max_row=_row(si.margin_max),
        ln_max=working.ln_max,
        underflow_margin=underflow_margin(working),
        rows_over_ln_max=si.rows_over_ln_max,
        rows_margin_underflow=si.rows_margin_underflow,
        cast_changed=0 if cr is None else cr.changed,
        cast_max_rel_change=0.0 if cr is None else cr.max_rel_change,
        cast_overflowed=0 if cr is None else cr.overflowed,
        cast_saturated=0 if cr is None else cr.saturated,
        cast_flushed_to_zero=0 if cr is None else cr.flushed_to_zero,
        grad_policy=_grad_policy(label_free, c),
        original_shape=shape,
        notes=(*notes, *_framework_notes(run_methods)),
    )
    reports = tuple(
        _method_report(m, stats.methods[m], gate_cfg, inp, working) for m in run_methods
    )
    worst = _worst_rows(stats, run_methods)
    ok = inp.eligible_rows > 0 and all(m.ok for m in reports if m.gated)
    return EvalReport(
        input=inp,
        reference=reference_precision_name(working),
        gate=gate_cfg,
        methods=reports,
        worst=worst,
        ok=ok,
        verdict=_verdict(inp, gate_cfg, reports),
    )


def _worst_rows(stats: ChunkStats, names: Sequence[str]) -> tuple[WorstRow, ...]:
    cols = stats.worst.cols
    out = []
    for i in range(len(stats.worst)):
        per = tuple(
            (
                m,
                _opt(float(cols[f"{m}:loss"][i])),
                _opt(float(cols[f"{m}:rel_err"][i])),
                bool(cols[f"{m}:nonfinite"][i]),
            )
            for m in names
        )
        out.append(
            WorstRow(
                row=int(cols["row"][i]),
                label=int(cols["label"][i]),
                max_logit=float(cols["max_logit"][i]),
                margin=float(cols["margin"][i]),
                ref_p=float(cols["ref_p"][i]),
                ref_loss=float(cols["ref_loss"][i]),
                methods=per,
            )
        )
    return tuple(out)


PER_ROW_FIELDS = ("loss", "loss_ulp_err", "grad_rel_err", "overflow", "underflow", "nonfinite")


def per_row_columns(block: PerRowBlock) -> dict[str, np.ndarray]:
    """A chunk's per-row values as named columns: row, label, eligible, ref_loss, then
    ``<method>_<field>`` for each field of :data:`PER_ROW_FIELDS` (flags as 0/1)."""
    cols: dict[str, np.ndarray] = {
        "row": block.row,
        "label": block.label,
        "eligible": block.eligible.astype(np.int8),
        "ref_loss": block.ref_loss,
    }
    for m, values in block.methods.items():
        for f in PER_ROW_FIELDS:
            v = values[f]
            cols[f"{m}_{f}"] = v.astype(np.int8) if v.dtype == bool else v
    return cols
