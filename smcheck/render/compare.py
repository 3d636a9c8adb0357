"""Renderers of a :class:`~smcheck.compare.CompareReport`: report in, text out.

Pure: no I/O and no numerics - every number shown was computed by :mod:`smcheck.compare`;
this module only formats it. One function per ``--format`` with the renderer contract
(:class:`~.common.Renderer`), chosen from :data:`RENDERERS`; data text (file names, notes)
escaped with :func:`~.common.safe_text`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ..compare import CompareReport, HistBin
from .common import (
    DEFAULT_WIDTH,
    STYLE_OF,
    Renderer,
    fmt_num,
    gh_escape_data,
    gh_escape_property,
    json_clean,
    md_cell,
    plural,
    render_to_text,
    safe_text,
)

__all__ = ["RENDERERS", "render", "to_github", "to_json", "to_junit", "to_markdown", "to_table"]

#: Most GitHub annotations of one level (GitHub shows only 10 per step anyway).
MAX_ANNOTATIONS = 10

_HIST_BAR = 30  # width of the longest histogram bar, in characters


def to_dict(report: CompareReport) -> dict[str, Any]:
    """The JSON document as a dict (schema ``smcheck.compare/1``)."""
    loss = asdict(report.loss)
    loss["histogram"] = [{"upper": b.upper, "count": b.count} for b in report.loss.histogram]
    loss["value"] = loss.pop("their_value")
    loss["reference"] = loss.pop("ref_value")
    doc: dict[str, Any] = {
        "schema": report.SCHEMA,
        "input": {
            "logits": report.logits,
            "labels": report.labels,
            "loss": report.loss_file,
            "grad": report.grad_file,
            "rows": report.rows,
            "classes": report.classes,
            "dtype": report.dtype,
            "accum": report.accum,
            "cast": report.cast_mode,
            "reduction": report.reduction,
            "weight": report.weight,
            "label_smoothing": report.label_smoothing,
            "convention": report.convention,
            # only when a loss variant is checked: the plain loss's document is unchanged
            **({"variant": report.variant.as_json()} if report.variant is not None else {}),
            "counted_rows": report.counted_rows,
            "ignored_rows": report.ignored_rows,
            "nonfinite_input_rows": report.nonfinite_input_rows,
            "cast_changed": report.cast_changed,
            "cast_overflowed": report.cast_overflowed,
            "their_loss_dtype": report.their_loss_dtype,
            "their_grad_dtype": report.their_grad_dtype,
        },
        "reference": {"precision": report.reference_precision},
        "loss": loss,
        "grad": None if report.grad is None else asdict(report.grad),
        "thresholds": {
            "max_loss_ulp": report.max_loss_ulp,
            "max_grad_err": report.max_grad_err,
            "fail_on": list(report.fail_on),
        },
        "checks": [asdict(c) for c in report.checks],
        "worst_rows": [asdict(w) for w in report.worst],
        "verdict": report.verdict,
        "summary": report.summary,
        "notes": list(report.notes),
        "ok": report.ok,
    }
    return json_clean(doc)  # type: ignore[no-any-return]


def to_json(report: CompareReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format json``: one JSON object, keys in a fixed order, NaN/inf as null."""
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


def _bin_label(bins: tuple[HistBin, ...], i: int) -> str:
    b = bins[i]
    if b.upper == 0:
        return "0 (exact)"
    lo = f"{bins[i - 1].upper:g}" if i > 0 else "0"
    if b.upper is None:
        return f"> {lo}"
    return f"({lo}, {b.upper:g}]"


def _nonempty(bins: tuple[HistBin, ...]) -> range:
    """Indices from the first to the last non-empty bin (empty ones between are kept)."""
    full = [i for i, b in enumerate(bins) if b.count]
    return range(full[0], full[-1] + 1) if full else range(0)


def _rows_of(count: int, ids: tuple[int, ...]) -> str:
    if not count:
        return "0"
    if not ids:
        return str(count)
    shown = ", ".join(str(i) for i in ids[:5]) + (", ..." if count > len(ids[:5]) else "")
    return f"{count} (rows {shown})"


def _head(r: CompareReport) -> Table:
    """What was compared: the files (escaped: data text), the dtype, the rows."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")  # a long path shown whole, not cut
    shape = f"{plural(r.rows, 'row')} x {plural(r.classes, 'class')}"
    head.add_row("logits", f"{safe_text(r.logits)} ({shape})")
    head.add_row("labels", safe_text(r.labels))
    their = f"{safe_text(r.loss_file)} ({r.their_loss_dtype}, reduction {r.reduction})"
    head.add_row("their loss", their)
    if r.grad_file is not None:
        head.add_row("their gradient", f"{safe_text(r.grad_file)} ({r.their_grad_dtype})")
    head.add_row(
        "working dtype",
        f"{r.dtype} (accum {r.accum}, cast {r.cast_mode}); reference: {r.reference_precision}",
    )
    head.add_row(
        "rows",
        f"{r.counted_rows} counted, {r.ignored_rows} ignored, "
        f"{r.nonfinite_input_rows} with NaN/inf logits",
    )
    if r.weight is not None or r.label_smoothing or r.convention != "torch":
        head.add_row(
            "loss options",
            f"weight {safe_text(r.weight or '-')}, label_smoothing {r.label_smoothing:g}, "
            f"convention {r.convention}",
        )
    if r.variant is not None:
        head.add_row("loss variant", safe_text(r.variant.describe()))
    return head


def _loss_tables(r: CompareReport) -> list[RenderableType]:
    """The loss error distribution (max, p99, median) and the loss facts beside it."""
    loss = r.loss
    lt = Table(title="Loss error", title_justify="left", show_edge=False)
    for col in ("", "ulps at L", "bits", "rel"):
        lt.add_column(col, justify="right" if col else "left")
    lt.add_row("max", fmt_num(loss.max_ulp_err), fmt_num(loss.max_bits), fmt_num(loss.max_rel_err))
    lt.add_row("p99", fmt_num(loss.p99_ulp_err), fmt_num(loss.p99_bits), "")
    lt.add_row(
        "median",
        fmt_num(loss.median_ulp_err),
        fmt_num(loss.median_bits),
        fmt_num(loss.median_rel_err),
    )
    facts = Table.grid(padding=(0, 2))
    facts.add_column()
    facts.add_column()
    if r.reduction != "none":
        facts.add_row(f"their {r.reduction}", fmt_num(loss.their_value, 17))
        facts.add_row(f"reference {r.reduction}", fmt_num(loss.ref_value, 17))
    facts.add_row(
        "gated error",
        f"{fmt_num(loss.max_gate_ulp_err)} ulps of max(|L|, 1) (limit {fmt_num(r.max_loss_ulp)})",
    )
    facts.add_row("values measured", str(loss.measured))
    facts.add_row(
        "NaN/inf, reference finite", _rows_of(loss.nonfinite_rows, loss.nonfinite_row_ids)
    )
    facts.add_row(
        "finite, reference NaN/inf",
        _rows_of(loss.ref_nonfinite_rows, loss.ref_nonfinite_row_ids),
    )
    facts.add_row("both NaN/inf", str(loss.both_nonfinite_rows))
    if r.ignored_rows and r.reduction == "none":
        facts.add_row("ignored rows not 0", str(loss.ignored_nonzero_rows))
    return [lt, facts]


def _histogram(r: CompareReport) -> Table | None:
    """Per-row loss errors by bin, with a bar (only for a per-row loss that was measured)."""
    loss = r.loss
    if not (loss.measured and r.reduction == "none"):
        return None
    ht = Table(title="Loss error histogram", title_justify="left", show_edge=False)
    ht.add_column("ulps at L")
    ht.add_column("values", justify="right")
    ht.add_column("")
    top = max(b.count for b in loss.histogram)
    for i in _nonempty(loss.histogram):
        b = loss.histogram[i]
        bar = "#" * (max(1, round(_HIST_BAR * b.count / top)) if b.count else 0)
        ht.add_row(_bin_label(loss.histogram, i), str(b.count), bar)
    return ht


def _grad_tables(r: CompareReport) -> list[RenderableType]:
    """The gradient error distribution and its facts (nothing without their gradient)."""
    grad = r.grad
    if grad is None:
        return []
    gt = Table(title="Gradient error", title_justify="left", show_edge=False)
    gt.add_column("")
    gt.add_column("max |g - g*| per row", justify="right")
    gt.add_column("||g - g*|| / ||g*||", justify="right")
    gt.add_row("max", fmt_num(grad.max_abs_err), fmt_num(grad.max_rel_err))
    gt.add_row("p99", fmt_num(grad.p99_abs_err), "")
    gt.add_row("median", fmt_num(grad.median_abs_err), fmt_num(grad.median_rel_err))
    gf = Table.grid(padding=(0, 2))
    gf.add_column()
    gf.add_column()
    gf.add_row("limit", fmt_num(r.max_grad_err))
    if grad.scale != 1:
        gf.add_row("scale", f"their gradient x {grad.scale} (the mean's row count)")
    gf.add_row("rows measured", str(grad.measured))
    gf.add_row("NaN/inf, reference finite", _rows_of(grad.nonfinite_rows, grad.nonfinite_row_ids))
    gf.add_row(
        "finite, reference NaN/inf",
        _rows_of(grad.ref_nonfinite_rows, grad.ref_nonfinite_row_ids),
    )
    if r.ignored_rows:
        gf.add_row("ignored rows not 0", str(grad.ignored_nonzero_rows))
    return [gt, gf]


#: Below this width the tables take their compact form (columns left out) instead of letting
#: rich cut cells into "…".
FULL_WIDTH = 100


def _worst_table(r: CompareReport, compact: bool = False) -> Table | None:
    """The worst rows with their logit statistics (columns for what was compared; compact:
    without the gradient's worst class and z_y)."""
    if not r.worst:
        return None
    wt = Table(
        title="Worst rows (z: logits; margin = max z - z_y; p_y: reference probability)",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    issues = any(w.issue for w in r.worst)
    cols = ["row", "y"]
    if r.reduction == "none":
        cols += ["theirs", "ref", "ulps"]
    if r.grad is not None:
        cols += ["grad err"] if compact else ["grad err", "@class"]
    cols += ["max z", "margin", "p_y"] if compact else ["max z", "z_y", "margin", "p_y"]
    if issues:
        cols.append("issue")
    for col in cols:
        wt.add_column(col, justify="left" if col == "issue" else "right")
    for w in r.worst:
        cells = [str(w.row), str(w.label)]
        if r.reduction == "none":
            cells += [fmt_num(w.their_loss), fmt_num(w.ref_loss), fmt_num(w.loss_ulp_err)]
        if r.grad is not None:
            cells.append(fmt_num(w.grad_abs_err))
            if not compact:
                cells.append(fmt_num(w.grad_worst_class))
        cells.append(fmt_num(w.max_logit))
        if not compact:
            cells.append(fmt_num(w.label_logit))
        cells += [fmt_num(w.margin), fmt_num(w.ref_p_label)]
        if issues:
            cells.append(safe_text(w.issue or "-"))
        wt.add_row(*cells)
    return wt


def _checks_table(r: CompareReport) -> Table:
    """Each check: pass/FAIL (red when gated), gated or not, and its message."""
    ct = Table(title="Checks", title_justify="left", show_edge=False)
    for col in ("check", "result", "gated", "detail"):
        ct.add_column(col)
    for c in r.checks:
        res = Text("pass", style="green") if c.ok else Text("FAIL", style="red" if c.gated else "")
        ct.add_row(c.name, res, "yes" if c.gated else "no", safe_text(c.message))
    return ct


def to_table(report: CompareReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format table``: input, loss error distribution and histogram, gradient error, worst
    rows, checks, and the verdict in one line (green ok, yellow lossy, red broken)."""
    r = report
    width = width or DEFAULT_WIDTH
    out: list[RenderableType | None] = [
        Text("smcheck compare: their kernel against the reference", style="bold"),
        _head(r),
        *_loss_tables(r),
        _histogram(r),
        *_grad_tables(r),
        _worst_table(r, width < FULL_WIDTH),
        _checks_table(r),
    ]
    out.extend(Text(f"note: {safe_text(note)}", style="dim") for note in r.notes)
    verdict = Text(f"verdict: {r.verdict}", style=f"bold {STYLE_OF.get(r.verdict, '')}")
    verdict.append(f" - {safe_text(r.summary)}", style="")
    out.append(verdict)
    shown = [x for x in out if x is not None]
    return render_to_text(shown, color=color, width=width)


def to_markdown(report: CompareReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format markdown``: fits a GitHub job summary."""
    r, loss, grad = report, report.loss, report.grad
    mark = {"ok": "pass", "lossy": "precision loss", "broken": "broken"}.get(r.verdict, r.verdict)
    lines = [
        f"## smcheck compare: {mark} ({'ok' if r.ok else 'FAIL'})",
        "",
        md_cell(r.summary),
        "",
        f"`{md_cell(r.loss_file)}` against the reference on `{md_cell(r.logits)}`: "
        f"{plural(r.rows, 'row')} x {plural(r.classes, 'class')}, dtype {r.dtype} "
        f"(accum {r.accum}), reduction {r.reduction}, "
        f"{r.counted_rows} counted, {r.ignored_rows} ignored; reference "
        f"{r.reference_precision}.",
        "",
        "| loss error | ulps at L | bits | rel |",
        "|---|---:|---:|---:|",
        f"| max | {fmt_num(loss.max_ulp_err)} | {fmt_num(loss.max_bits)} | "
        f"{fmt_num(loss.max_rel_err)} |",
        f"| p99 | {fmt_num(loss.p99_ulp_err)} | {fmt_num(loss.p99_bits)} | |",
        f"| median | {fmt_num(loss.median_ulp_err)} | {fmt_num(loss.median_bits)} | "
        f"{fmt_num(loss.median_rel_err)} |",
        "",
        f"Gated loss error: {fmt_num(loss.max_gate_ulp_err)} ulps of max(\\|L\\|, 1), limit "
        f"{fmt_num(r.max_loss_ulp)}. NaN/inf where the reference is finite: "
        f"{loss.nonfinite_rows}; finite where the reference is NaN/inf: "
        f"{loss.ref_nonfinite_rows}.",
    ]
    if r.reduction != "none":
        lines += [
            "",
            f"Their {r.reduction}: {fmt_num(loss.their_value, 17)}; reference: "
            f"{fmt_num(loss.ref_value, 17)}.",
        ]
    if loss.measured and r.reduction == "none":
        lines += ["", "| ulps at L | values |", "|---|---:|"]
        lines += [
            f"| {_bin_label(loss.histogram, i)} | {b.count} |"
            for i, b in enumerate(loss.histogram)
            if b.count
        ]
    if grad is not None:
        lines += [
            "",
            "| gradient error | max abs per row | rel (normwise) |",
            "|---|---:|---:|",
            f"| max | {fmt_num(grad.max_abs_err)} | {fmt_num(grad.max_rel_err)} |",
            f"| median | {fmt_num(grad.median_abs_err)} | {fmt_num(grad.median_rel_err)} |",
            "",
            f"Limit {fmt_num(r.max_grad_err)}. NaN/inf where the reference is finite: "
            f"{plural(grad.nonfinite_rows, 'row')}.",
        ]
    if r.worst:
        lines += [
            "",
            "| row | label | issue | their loss | ref loss | ulps | grad err | max z | margin |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {w.row} | {w.label} | {md_cell(w.issue or '-')} | {fmt_num(w.their_loss)} | "
            f"{fmt_num(w.ref_loss)} | {fmt_num(w.loss_ulp_err)} | {fmt_num(w.grad_abs_err)} | "
            f"{fmt_num(w.max_logit)} | {fmt_num(w.margin)} |"
            for w in r.worst
        ]
    lines += ["", "| check | result | gated | detail |", "|---|---|---|---|"]
    lines += [
        f"| {c.name} | {'pass' if c.ok else 'FAIL'} | {'yes' if c.gated else 'no'} | "
        f"{md_cell(c.message)} |"
        for c in r.checks
    ]
    lines += [f"\n> note: {md_cell(n)}" for n in r.notes]
    return "\n".join(lines) + "\n"


def to_github(report: CompareReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format github``: workflow commands - ``::error`` for each failed gated check,
    ``::warning`` for failed ungated ones (at most 10 of each), then one ``::notice``."""
    errors = [c for c in report.checks if not c.ok and c.gated][:MAX_ANNOTATIONS]
    warnings = [c for c in report.checks if not c.ok and not c.gated][:MAX_ANNOTATIONS]
    lines = []
    for level, checks in (("error", errors), ("warning", warnings)):
        for c in checks:
            title = gh_escape_property(f"smcheck compare: {c.name}")
            lines.append(f"::{level} title={title}::{gh_escape_data(c.message)}")
    summary = f"{report.verdict}: {report.summary} ({report.loss_file}, {report.dtype})"
    title = gh_escape_property("smcheck compare")
    lines.append(f"::notice title={title}::{gh_escape_data(summary)}")
    return "\n".join(lines) + "\n"


def to_junit(report: CompareReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format junit``: JUnit XML, one test case per check - a failure for a failed gated
    check, ``skipped`` for a failed ungated one (reported, not gating). Valid XML 1.0 whatever
    a file name holds (its control characters escaped, :func:`safe_text`)."""
    from xml.sax.saxutils import escape, quoteattr  # lazily: see render.eval_formats

    cases = []
    failures = skipped = 0
    for c in report.checks:
        body = ""
        if not c.ok and c.gated:
            failures += 1
            message, text = quoteattr(safe_text(c.message)), escape(safe_text(report.summary))
            body = f"<failure message={message}>{text}</failure>"
        elif not c.ok:
            skipped += 1
            body = f"<skipped message={quoteattr('not gated: ' + safe_text(c.message))}/>"
        name = quoteattr(c.name)
        cases.append(f'    <testcase classname="smcheck.compare" name={name}>{body}</testcase>')
    suite = quoteattr(f"smcheck compare {safe_text(report.loss_file)} ({report.dtype})")
    n = len(report.checks)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<testsuites name="smcheck compare" tests="{n}" failures="{failures}">',
        f'  <testsuite name={suite} tests="{n}" failures="{failures}" skipped="{skipped}">',
        *cases,
        "  </testsuite>",
        "</testsuites>",
    ]
    return "\n".join(lines) + "\n"


#: ``--format`` -> renderer ``(report, *, color, width) -> str``.
RENDERERS: dict[str, Renderer[CompareReport]] = {
    "table": to_table,
    "json": to_json,
    "markdown": to_markdown,
    "github": to_github,
    "junit": to_junit,
}


def render(
    report: CompareReport, fmt: str, *, color: bool = False, width: int | None = None
) -> str:
    """The report as text in format ``fmt`` (a key of :data:`RENDERERS`)."""
    return RENDERERS[fmt](report, color=color, width=width)
