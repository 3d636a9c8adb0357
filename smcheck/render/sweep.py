"""Renderers of a :class:`~smcheck.sweep.SweepReport`: table (heat map + break table), json,
markdown, github. Pure, with the renderer contract (:class:`~.common.Renderer`): a report in,
text out."""

from __future__ import annotations

import json
import math
from typing import Any

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ..sweep import KINDS, SCHEMA, Break, Cell, DtypeTheory, SweepReport
from .common import STYLE_OF, Renderer, fmt_num, gh_escape_data, md_cell, render_to_text
from .common import json_clean as _f

__all__ = [
    "HEAT_CHAR",
    "RENDERERS",
    "heat_rows",
    "merged_breaks",
    "render",
    "render_github",
    "render_json",
    "render_markdown",
    "render_table",
    "to_dict",
]

#: Heat-map cell per verdict: readable without colour too.
HEAT_CHAR = {"ok": ".", "lossy": "~", "broken": "X", "inconclusive": "?"}
_RANK = {"ok": 0, "inconclusive": 1, "lossy": 2, "broken": 3}
_KIND_SHORT = {
    "overflow": "ovf",
    "nonfinite_loss": "loss",
    "nonfinite_grad": "grad",
    "precision": "bits",
}
#: ``--format github`` prints at most this many ``::error`` lines.
GITHUB_MAX = 10
#: Default width of the table: the break table's ten columns need about 116.
TABLE_WIDTH = 120

# JSON key order: the schema's required keys first, then the extras
_GRID_KEYS = (
    "dtype",
    "classes",
    "case",
    "method",
    "scale",
    "nonfinite_loss_frac",
    "nonfinite_grad_frac",
    "overflow_frac",
    "underflow_frac",
    "loss_max_rel_err",
    "grad_max_abs_err",
    "accum",
    "rows",
    "largest_logit",
    "margin",
    "loss",
    "loss_median_bits",
    "loss_max_bits",
    "loss_max_excess_bits",
    "loss_median_rel_err",
    "mean_loss_rel_err",
    "verdict",
)
_BREAK_KEYS = (
    "dtype",
    "classes",
    "case",
    "method",
    "kind",
    "scale",
    "scale_lo",
    "largest_logit",
    "margin",
    "loss",
    "cause",
    "theory",
    "theory_value",
    "observed",
)


def _theory_dict(t: DtypeTheory) -> dict[str, Any]:
    return {
        "accum": t.accum,
        "ln_max": t.ln_max,
        "ln_smallest_subnormal": t.ln_smallest_subnormal,
        "ln_underflow": t.ln_underflow,
        "eps": t.eps,
        "accum_ln_max": t.accum_ln_max,
    }


def to_dict(report: SweepReport) -> dict[str, Any]:
    """The ``smcheck.sweep/1`` document as plain Python objects."""
    c = report.config
    return {
        "schema": SCHEMA,
        "config": {
            "dtypes": list(c.dtypes),
            "accum": c.accum,
            "classes": list(c.classes),
            "scales": list(c.scales),
            "cases": list(c.cases),
            "methods": list(c.methods),
            "rows": {str(k): c.rows_for(k) for k in c.classes},
            "seed": c.seed,
            "max_bits": c.max_bits,
            "tol": c.tol,
            # only when a loss variant is swept: the plain loss's document is unchanged
            **({"variant": c.variant.as_json()} if c.variant is not None else {}),
        },
        "theory": {t.dtype: _theory_dict(t) for t in report.theory},
        "reference": dict(report.reference),
        "grid": [{k: _f(getattr(cell, k)) for k in _GRID_KEYS} for cell in report.cells],
        "breaks": [{k: _f(getattr(b, k)) for k in _BREAK_KEYS} for b in report.breaks],
        "gate": list(c.gate),
        "ok": report.ok,
    }


def render_json(report: SweepReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format json``: schema ``smcheck.sweep/1`` (strict JSON: no NaN/inf)."""
    return json.dumps(to_dict(report), allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Shared summaries


def heat_rows(report: SweepReport, dtype: str) -> dict[str, list[str]]:
    """Method -> verdict per scale for one dtype: the worst over classes and cases."""
    scales = report.config.scales
    index = {s: i for i, s in enumerate(scales)}
    rows = {m: ["ok"] * len(scales) for m in report.config.methods}
    seen = {m: [False] * len(scales) for m in report.config.methods}
    for cell in report.cells:
        if cell.dtype != dtype:
            continue
        i = index[cell.scale]
        row = rows[cell.method]
        if not seen[cell.method][i] or _RANK[cell.verdict] > _RANK[row[i]]:
            row[i] = cell.verdict
            seen[cell.method][i] = True
    return rows


def merged_breaks(report: SweepReport) -> list[tuple[Break, tuple[str, ...]]]:
    """Breaks found in range, those of one (dtype, classes, case, method) at the same scale
    merged: (the first of them, the kinds)."""
    out: list[tuple[Break, tuple[str, ...]]] = []
    groups: dict[tuple[Any, ...], list[Break]] = {}
    for b in report.breaks:
        if b.scale is None:
            continue
        groups.setdefault((b.dtype, b.classes, b.case, b.method, b.scale), []).append(b)
    for bs in groups.values():
        bs.sort(key=lambda b: KINDS.index(b.kind))
        out.append((bs[0], tuple(b.kind for b in bs)))
    out.sort(key=lambda t: (_order(report, t[0]), t[0].scale))
    return out


def _order(report: SweepReport, b: Break | Cell) -> tuple[int, int, int, int]:
    c = report.config
    return (
        c.dtypes.index(b.dtype),
        c.classes.index(b.classes),
        c.cases.index(b.case),
        c.methods.index(b.method),
    )


_OBSERVED = {
    "exp overflow": "logit",
    "sum overflow": "lse",
    "1/p_y overflow": "loss",
    "p_y underflow": "loss",
}


def _why(b: Break) -> tuple[str, str, str, str]:
    """(cause, observed, theory, deviation) cells of a break."""
    if b.cause == "lost bits":
        return "lost bits", "", "", ""
    if b.theory is None or b.observed is None or b.theory_value is None:
        return b.cause or "-", "", "", ""
    dev = b.deviation
    return (
        b.cause or "-",
        f"{_OBSERVED.get(b.cause or '', 'value')} {b.observed:.4g}",
        f"{b.theory} {b.theory_value:.4g}",
        "" if dev is None else f"{dev:+.2%}",
    )


def _explanation(b: Break) -> str:
    cause, observed, theory, dev = _why(b)
    if cause == "lost bits":
        return "loss error beyond its condition > max-bits"
    if not observed:
        return cause
    return f"{cause}: {observed} vs {theory}" + (f" ({dev})" if dev else "")


def _never_summary(report: SweepReport) -> list[str]:
    """Methods that never break, or never overflow / go non-finite, in the whole grid."""
    lines = []
    for m in report.config.methods:
        found = [b for b in report.breaks if b.method == m and b.scale is not None]
        if not found:
            lines.append(f"{m}: no break of any kind in this grid")
        elif all(b.kind == "precision" for b in found):
            lines.append(f"{m}: never overflows or gives a non-finite loss or gradient here")
    return lines


def _theory_line(t: DtypeTheory) -> str:
    return (
        f"{t.dtype} (accumulate in {t.accum}): ln(max) = {t.ln_max:.4g}, "
        f"ln(smallest subnormal) = {t.ln_smallest_subnormal:.4g}, p = 0 below ln(sub/2) = "
        f"{t.ln_underflow:.4g}"
    )


def _axis(scales: tuple[float, ...]) -> str:
    """A label line under the heat map: decades at the nearest column."""
    line = [" "] * (len(scales) + 8)
    lo, hi = math.log10(scales[0]), math.log10(scales[-1])
    for d in range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1):
        col = min(range(len(scales)), key=lambda i: abs(math.log10(scales[i]) - d))
        label = {0: "1", 1: "10", 2: "100"}.get(d, f"1e{d}")
        if all(ch == " " for ch in line[max(col - 1, 0) : col + len(label)]):
            line[col : col + len(label)] = list(label)
    return "".join(line).rstrip()


def _heat_text(report: SweepReport, dtype: str, color: bool) -> Text:
    rows = heat_rows(report, dtype)
    width = max(len(m) for m in rows) + 2
    text = Text()
    for m, verdicts in rows.items():
        text.append(f"{m:<{width}}")
        for v in verdicts:
            text.append(HEAT_CHAR[v], style=STYLE_OF.get(v, "") if color else "")
        text.append("\n")
    text.append(" " * width + _axis(report.config.scales) + "  (scale = largest logit)")
    return text


# ---------------------------------------------------------------------------------------------
# Formats


#: The break table's columns: (name, justification, left out in the compact form).
_BREAK_COLUMNS = (
    ("C", "right", False),
    ("case", "left", False),
    ("method", "left", False),
    ("breaks", "left", False),
    ("scale", "right", False),
    ("margin", "right", True),
    ("cause", "left", False),
    ("observed", "left", True),
    ("theory", "left", False),
    ("off", "right", True),
)


def _break_table(
    report: SweepReport, dtype: str, color: bool, compact: bool = False
) -> Table | Text:
    found = [(b, kinds) for b, kinds in merged_breaks(report) if b.dtype == dtype]
    if not found:
        return Text("no break in this grid")
    pad = (0, 0, 0, 0) if compact else (0, 2, 0, 0)  # the column divider still gives one
    table = Table(box=box.SIMPLE_HEAD, padding=pad, pad_edge=False, show_edge=False)
    keep = [not (compact and optional) for *_, optional in _BREAK_COLUMNS]
    for (name, justify, _), shown in zip(_BREAK_COLUMNS, keep, strict=True):
        if shown:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    gate = report.config.gate
    for b, kinds in found:
        gated = b.method in gate
        cause, observed, theory, off = _why(b)
        cells = (
            str(b.classes),
            b.case,
            b.method + (" *" if gated else ""),
            ",".join(_KIND_SHORT[k] for k in kinds),
            fmt_num(b.scale),
            fmt_num(b.margin),
            cause,
            observed,
            theory,
            off,
        )
        shown_cells = [cell for cell, shown in zip(cells, keep, strict=True) if shown]
        table.add_row(*shown_cells, style="red" if (gated and color) else None)
    return table


#: Below this width the break table takes its compact form (margin, observed and off left out).
FULL_WIDTH = 118


def _table_renderables(
    report: SweepReport, color: bool, width: int = TABLE_WIDTH
) -> list[RenderableType]:
    c = report.config
    out: list[RenderableType] = [
        Text(
            f"smcheck sweep: {len(c.scales)} scales {fmt_num(c.scales[0])}..{fmt_num(c.scales[-1])}"
            f" (scale = largest logit) x classes {', '.join(map(str, c.classes))}"
            f" x cases {', '.join(c.cases)}\n"
            f"heat maps, worst over classes and cases: . ok  ~ lossy (loss error beyond its"
            f" condition > {fmt_num(c.max_bits)} bits)\n"
            "  X broken (overflow, NaN/inf loss or gradient)  ? input overflowed the dtype\n"
            "breaks: ovf = overflow, loss/grad = NaN/inf loss/gradient, bits = precision\n"
            "  (each bisected to --tol); off = how far past the theory threshold it was seen",
        )
    ]
    if c.variant is not None:
        # scale = the largest logit *before* the variant: a cap moves every threshold
        out.append(Text(f"loss variant: {c.variant.describe()} (scale = the logits before it)"))
    for t in report.theory:
        out.append(Text(""))
        out.append(Text(_theory_line(t), style="bold" if color else ""))
        out.append(_heat_text(report, t.dtype, color))
        out.append(Text(""))
        out.append(_break_table(report, t.dtype, color, width < FULL_WIDTH))
    out.append(Text(""))
    out.extend(Text(line, style="green" if color else "") for line in _never_summary(report))
    if c.gate:
        fails = report.gate_failures
        if report.ok:
            status = "PASS"
        elif fails:
            status = f"FAIL ({len(fails)} break(s) of gated methods, marked *)"
        else:
            status = f"FAIL (nothing measured for {', '.join(report.gate_unmeasured)})"
        out.append(Text(f"gate {', '.join(c.gate)}: {status}", style=_gate_style(report, color)))
    return out


def _gate_style(report: SweepReport, color: bool) -> str:
    if not color:
        return ""
    return "bold green" if report.ok else "bold red"


def render_table(report: SweepReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format table``: per dtype a heat map (methods x scales, worst over classes and
    cases), then the break-point table."""
    width = width or TABLE_WIDTH
    return render_to_text(_table_renderables(report, color, width), color=color, width=width)


def render_markdown(report: SweepReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format markdown``: a GitHub job summary."""
    c = report.config
    status = "PASS" if report.ok else "FAIL"
    gate = ", ".join(c.gate) or "none"
    lines = [
        f"## smcheck sweep: {status}",
        "",
        f"{len(c.scales)} scales {fmt_num(c.scales[0])}..{fmt_num(c.scales[-1])} (the largest "
        f"logit) x classes {', '.join(map(str, c.classes))} x cases {', '.join(c.cases)} x "
        f"methods {', '.join(c.methods)}. Gate: {gate}.",
        "",
    ]
    for t in report.theory:
        lines += [f"### {_theory_line(t)}", "", "```"]
        rows = heat_rows(report, t.dtype)
        w = max(len(m) for m in rows) + 2
        lines += [f"{m:<{w}}" + "".join(HEAT_CHAR[v] for v in vs) for m, vs in rows.items()]
        lines += [" " * w + _axis(c.scales), "```", ""]
    lines += [
        "`.` ok, `~` lossy, `X` broken, `?` input overflowed (worst over classes and cases).",
        "",
        "| dtype | C | case | method | breaks | scale | margin | cause | observed | theory | off |",
        "|---|--:|---|---|---|--:|--:|---|---|---|--:|",
    ]
    for b, kinds in merged_breaks(report):
        gated = " (gated)" if b.method in c.gate else ""
        cells = [
            b.dtype,
            str(b.classes),
            b.case,
            b.method + gated,
            ", ".join(_KIND_SHORT[k] for k in kinds),
            fmt_num(b.scale),
            fmt_num(b.margin),
            *(md_cell(x) for x in _why(b)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    never = _never_summary(report)
    if never:
        lines += [""] + [f"- {md_cell(line)}" for line in never]
    return "\n".join(lines) + "\n"


def _break_line(b: Break) -> str:
    return (
        f"{b.method} breaks ({b.kind}) in {b.dtype}, C={b.classes}, case {b.case}, at scale "
        f"{fmt_num(b.scale)}: {_explanation(b)}"
    )


def render_github(report: SweepReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format github``: one ``::error`` per break of a gated method (at most 10), then a
    ``::notice`` with the verdict."""
    title = "smcheck sweep"
    fails = [_break_line(b) for b in report.gate_failures]
    shown = fails[:GITHUB_MAX]
    if len(fails) > GITHUB_MAX:
        shown = fails[: GITHUB_MAX - 1] + [f"... and {len(fails) - GITHUB_MAX + 1} more breaks"]
    out = [f"::error title={title}::{gh_escape_data(p)}" for p in shown]
    found = sum(b.scale is not None for b in report.breaks)
    gate = ", ".join(report.config.gate) or "none"
    status = "PASS" if report.ok else "FAIL"
    out.append(
        f"::notice title={title}::{status}: {found} break points in the grid; gate {gate}: "
        f"{len(fails)} breaks of gated methods"
    )
    return "\n".join(out) + "\n"


#: ``--format`` -> renderer ``(report, *, color, width) -> str``.
RENDERERS: dict[str, Renderer[SweepReport]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "github": render_github,
}


def render(report: SweepReport, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    """The report as text in format ``fmt`` (a key of :data:`RENDERERS`); ``width`` is the
    table's (None: 120 columns)."""
    return RENDERERS[fmt](report, color=color, width=width)
