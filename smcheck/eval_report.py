"""``smcheck eval``'s report: the frozen dataclasses, and how merged chunk statistics become them.

:func:`build_report` turns the engine's :class:`~smcheck.engine.ChunkStats` into an
:class:`EvalReport`: the input as the methods saw it, a verdict per method in words, the worst
rows and the run's verdict. Nothing here computes a numerical error; it reads the statistics.

Verdict of a method (descriptive):

* ``broken`` - some eligible row has a NaN/inf loss or gradient, or an intermediate overflowed,
  although the reference is finite (or underflow, when ``fail_on`` names it);
* ``lossy`` - finite, but its loss error exceeds ``max_loss_ulp`` (in ulps of max(|L*|, 1)) or
  its gradient error exceeds ``max_grad_err`` (absolute, max over entries);
* ``ok`` otherwise.

A method's ``ok`` is whether it passes the gate's checks (``fail_on`` and both thresholds); the
report's ``ok`` is whether every gated method does and at least one row was eligible. The
default thresholds are :func:`smcheck.metrics.default_thresholds`.

The medians here (``loss_median_rel_err``, ``loss_median_ulp_err``, and the p99) come from the
engine's log-spaced histograms (:func:`smcheck.engine.hist_quantile`), not from the values: eval
streams its input in chunks (a (10**6, 32 000) memmap) and keeps no per-row error, so an exact
median is not available; ``compare``, which holds one value per row in memory, reports exact
ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import SupportsIndex, overload

from .diagnosis import OVERFLOW_CAUSES, underflow_margin
from .engine import FULL_GRAD_CLASSES, RANDOM_GRAD_LABELS
from .precisions import Precision, get_precision
from .stats import ChunkStats, Extreme, MethodStats, hist_quantile
from .variants import Variant

__all__ = [
    "SCHEMA",
    "EvalReport",
    "GateConfig",
    "InputSummary",
    "MethodReport",
    "MethodReports",
    "WorstRow",
    "build_report",
    "input_summary",
]

SCHEMA = "smcheck.eval/1"


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
    #: the loss variant checked (constants as used); None for the plain loss
    variant: Variant | None = None


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
    # what the rows are ranked by: the largest over methods of the loss error in ulps of
    # max(|loss|, 1) and the gradient error in eps of the working dtype (None: none finite)
    score: float | None = None
    # methods whose largest loss relative error (the methods table's) is on this row
    max_rel_err_of: tuple[str, ...] = ()


class MethodReports(tuple[MethodReport, ...]):
    """The methods' reports in run order (iteration, JSON), indexable by position or by name.

    >>> from types import SimpleNamespace as Stub
    >>> rs = MethodReports([Stub(name="naive"), Stub(name="fused")])
    >>> rs["fused"].name, rs[0].name, [m.name for m in rs]
    ('fused', 'naive', ['naive', 'fused'])
    """

    def __new__(cls, reports: Iterable[MethodReport] = ()) -> MethodReports:
        return super().__new__(cls, reports)

    @overload  # type: ignore[override]
    def __getitem__(self, key: str) -> MethodReport: ...
    @overload
    def __getitem__(self, key: SupportsIndex) -> MethodReport: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[MethodReport, ...]: ...

    def __getitem__(
        self, key: str | SupportsIndex | slice
    ) -> MethodReport | tuple[MethodReport, ...]:
        if isinstance(key, str):
            for m in self:
                if m.name == key:
                    return m
            raise KeyError(f"no method {key!r}; the report has: {', '.join(self.names)}")
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self.names
        return super().__contains__(key)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self)


@dataclass(frozen=True)
class EvalReport:
    """Everything ``smcheck eval`` prints, as data (renderers turn it into text)."""

    input: InputSummary
    reference: str
    gate: GateConfig
    methods: MethodReports  # a tuple in run order, also indexable by name
    worst: tuple[WorstRow, ...]
    ok: bool
    verdict: str
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if not isinstance(self.methods, MethodReports):  # a plain tuple or list: index it
            object.__setattr__(self, "methods", MethodReports(self.methods))

    def method(self, name: str) -> MethodReport:
        """The report of one method by name (as ``report.methods[name]``)."""
        return self.methods[name]


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
        problems.append(_nonfinite_text(name, st, inp))
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
        # medians from histograms: eval streams chunks and keeps no per-row error to sort
        # (compare, holding every row's error, reports exact ones; see the module docstring)
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


def _nonfinite_text(name: str, st: MethodStats, inp: InputSummary) -> str:
    """What came out NaN/inf, and why when the margins say so (p_y underflowed)."""
    unit = inp.unit
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
    return text


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


def _worst_rows(stats: ChunkStats, names: Sequence[str]) -> tuple[WorstRow, ...]:
    cols = stats.worst.cols
    # each method's largest relative error among the listed rows is its largest overall (the
    # selection keeps it); lowest (row, label) on ties, as the methods table's maximum
    max_of: dict[int, list[str]] = {}
    for m in names:
        best: tuple[float, int, int, int] | None = None
        for i in range(len(stats.worst)):
            rel = float(cols[f"{m}:rel_err"][i])
            if math.isfinite(rel):
                key = (-rel, int(cols["row"][i]), int(cols["label"][i]), i)
                best = key if best is None or key < best else best
        if best is not None:
            max_of.setdefault(best[3], []).append(m)
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
        score = float(cols["score"][i])
        out.append(
            WorstRow(
                row=int(cols["row"][i]),
                label=int(cols["label"][i]),
                max_logit=float(cols["max_logit"][i]),
                margin=float(cols["margin"][i]),
                ref_p=float(cols["ref_p"][i]),
                ref_loss=float(cols["ref_loss"][i]),
                methods=per,
                score=None if score < 0 else _opt(score),
                max_rel_err_of=tuple(max_of.get(i, ())),
            )
        )
    return tuple(out)


def input_summary(
    stats: ChunkStats,
    *,
    names: tuple[str, str | None],
    shape: tuple[int, int],
    working: Precision,
    accum: Precision,
    cast: str,
    label_free: bool,
    original_shape: tuple[int, ...],
    notes: tuple[str, ...],
    variant: Variant | None = None,
) -> InputSummary:
    """The input as the methods saw it: the engine's input statistics, in the report's units."""
    n, c = shape
    si = stats.input
    cr = si.cast
    return InputSummary(
        logits=names[0],
        labels=names[1],
        rows=n,
        classes=c,
        dtype=working.name,
        accum=accum.name,
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
        original_shape=original_shape,
        notes=notes,
        variant=variant,
    )


def build_report(
    stats: ChunkStats,
    inp: InputSummary,
    gate: GateConfig,
    methods: Sequence[str],
    working: Precision,
    reference: str,
) -> EvalReport:
    """The report of ``methods`` (in run order) from the merged statistics."""
    reports = MethodReports(
        _method_report(m, stats.methods[m], gate, inp, working) for m in methods
    )
    return EvalReport(
        input=inp,
        reference=reference,
        gate=gate,
        methods=reports,
        worst=_worst_rows(stats, methods),
        ok=inp.eligible_rows > 0 and all(m.ok for m in reports if m.gated),
        verdict=_verdict(inp, gate, reports),
    )
