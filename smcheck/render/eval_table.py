"""``--format table``: the human report of ``smcheck eval`` as rich renderables.

An input panel, a methods table coloured by verdict (green ok, yellow lossy, red broken), the
worst rows, and the one-line verdict. Pure: report in, renderables (or text) out; data text (file
names, notes) escaped with :func:`~.common.safe_text`.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..evaluate import EvalReport
from .common import DEFAULT_WIDTH, STYLE_OF, fmt_num, plural, render_to_text, safe_text
from .eval_formats import METHOD_COLUMNS, WORST_RANKING, rel_cell

__all__ = ["eval_renderables", "render_table"]


def _input_panel(report: EvalReport) -> Panel:
    i = report.input
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")  # a long path shown whole, not cut
    shape = f"{plural(i.rows, 'row')} x {plural(i.classes, 'class')}"
    if len(i.original_shape) > 2:
        shape += f" (from shape {' x '.join(map(str, i.original_shape))})"
    logits = safe_text(i.logits)
    grid.add_row("logits", logits + ("" if i.labels else "  (no labels: label-free mode)"))
    if i.labels:
        grid.add_row("labels", safe_text(i.labels))
    grid.add_row("shape", shape)
    grid.add_row("dtype", f"{i.dtype} (accumulate in {i.accum}, cast {i.cast})")
    grid.add_row(
        "logit range",
        f"{fmt_num(i.logit_min)} .. {fmt_num(i.logit_max)}"
        f"   ln(max {i.dtype}) = {i.ln_max:.4g}, {plural(i.rows_over_ln_max, 'row')} above it",
    )
    margin_what = "max(z) - min(z)" if i.label_free else "max(z) - z_y"
    grid.add_row(
        "largest margin",
        f"{fmt_num(i.margin_max)} ({margin_what}"
        + ("" if i.margin_max_row is None else f", row {i.margin_max_row}")
        + f")   p underflows beyond {i.underflow_margin:.4g}: "
        + plural(i.rows_margin_underflow, "row"),
    )
    grid.add_row(
        "rows",
        f"{i.eligible_rows} eligible, {i.ignored_rows} ignored, "
        f"{i.nonfinite_input_rows} with non-finite input",
    )
    if i.ref_nonfinite:
        grid.add_row(
            "not measured",
            f"{i.ref_nonfinite} {i.unit} whose reference loss is not finite (the true loss "
            "exceeds max float64)",
        )
    cast = plural(i.cast_changed, "value")
    cast += f" rounded, max relative change {fmt_num(i.cast_max_rel_change)}"
    if i.cast_overflowed:
        cast += f", {i.cast_overflowed} overflowed to inf"
    if i.cast_saturated:
        cast += f", {i.cast_saturated} saturated"
    if i.cast_flushed_to_zero:
        cast += f", {i.cast_flushed_to_zero} flushed to 0"
    grid.add_row("input rounding", cast)
    grid.add_row("reference", safe_text(report.reference))
    if i.variant is not None:
        grid.add_row("loss variant", safe_text(i.variant.describe()))
    if i.label_free:
        grid.add_row("label-free", f"counts over (row, class) pairs; {safe_text(i.grad_policy)}")
    for note in i.notes:
        grid.add_row("note", safe_text(note))
    return Panel(grid, title="smcheck eval", title_align="left", expand=False)


#: Below this width the tables take their compact form (short headers, optional columns left
#: out) instead of letting rich cut cells into "…" - a cut number reads as a different number.
FULL_WIDTH = 100


def _methods_table(report: EvalReport, compact: bool = False) -> Table:
    unit = report.input.unit
    columns = [c for c in METHOD_COLUMNS if not (compact and c.optional)]
    t = Table(
        title=f"Methods (counts in {unit}; loss error in ulps of the working dtype)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    t.add_column("method", no_wrap=True)
    for c in columns:
        t.add_column(c.short if compact else c.table, justify="right", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    for m in report.methods:
        style = STYLE_OF[m.verdict]
        t.add_row(
            Text(m.name + (" *" if m.gated else ""), style=style),
            *(c.cell(m) for c in columns),
            Text(m.verdict, style=style),
        )
    return t


def _worst_table(report: EvalReport, compact: bool = False) -> Table | None:
    if not report.worst:
        return None
    label = "class" if report.input.label_free else "label"
    t = Table(
        title=f"Worst rows ({WORST_RANKING.format(dtype=report.input.dtype)}); cells: loss "
        "relative error, ^ the method's largest",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    # the row's max logit is in the JSON and the markdown (the input panel has the range);
    # compact: margin and p_y left out too; the score (the ranking) and one column per method
    # are always shown
    heads = ("row", label, "score") if compact else ("row", label, "margin", "ref p_y", "score")
    for name in heads:
        t.add_column(name, justify="right", no_wrap=True)
    names = [m.name for m in report.methods]
    for name in names:
        t.add_column(name, justify="right", no_wrap=True)
    nonfinite = "NaN/inf" if compact else "non-finite"
    for w in report.worst:
        cells: list[RenderableType] = [str(w.row), str(w.label)]
        if not compact:
            cells += [fmt_num(w.margin), fmt_num(w.ref_p)]
        cells.append(fmt_num(w.score))
        for name, loss, rel, bad in w.methods:
            if bad:
                # a finite loss with a bad gradient may still be the method's largest
                # relative error (its number is the methods table's loss rel max)
                mark = " ^" if name in w.max_rel_err_of else ""
                cells.append(Text((nonfinite if loss is None else "bad grad") + mark, style="red"))
            else:
                cells.append(rel_cell(w, name, rel))
        t.add_row(*cells)
    return t


def _gate_line(report: EvalReport) -> Text:
    g = report.gate
    gated = [m for m in report.methods if m.gated]
    loss_seen = ", ".join(f"{m.name} {fmt_num(m.loss_max_gate_err)}" for m in gated)
    grad_seen = ", ".join(f"{m.name} {fmt_num(m.grad_max_abs_err)}" for m in gated)
    text = f"* gated: {', '.join(g.methods) or 'none'}"
    if gated:
        text += (
            f"; loss error <= {g.max_loss_ulp:.3g} ulps of max(|loss|, 1) (seen: {loss_seen}),"
            f" gradient error <= {g.max_grad_err:.3g} (seen: {grad_seen})"
        )
        if g.thresholds_default:
            text += " - defaults for this dtype and class count"
    text += f"; fail on {', '.join(g.fail_on) or 'nothing'}"
    return Text(text, style="dim")


def eval_renderables(report: EvalReport, width: int = DEFAULT_WIDTH) -> list[RenderableType]:
    """The table report as a list of rich renderables, fitted to ``width`` columns."""
    compact = width < FULL_WIDTH
    parts: list[RenderableType] = [
        _input_panel(report),
        _methods_table(report, compact),
        _gate_line(report),
    ]
    worst = _worst_table(report, compact)
    if worst is not None:
        parts.append(worst)
    status = "PASS" if report.ok else "FAIL"
    style = "bold green" if report.ok else "bold red"
    parts.append(Group(Text(f"{status}: {safe_text(report.verdict)}", style=style)))
    return parts


def render_table(report: EvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format table``: the human report as text (ANSI colour codes only when ``color``)."""
    width = width or DEFAULT_WIDTH
    return render_to_text(eval_renderables(report, width), color=color, width=width)
