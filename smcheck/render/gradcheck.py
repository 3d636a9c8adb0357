"""Renderers of a :class:`~smcheck.gradcheck.GradcheckReport`: table, json, markdown, github.

Pure functions with the renderer contract (:class:`~.common.Renderer`): report in, text (or
rich renderables) out; numbers are only formatted; data text (the input's name, notes) escaped
with :func:`~.common.safe_text`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rich import box
from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..gradcheck import GradcheckReport, MethodCheck, WorstEntry
from .common import (
    DEFAULT_WIDTH,
    STYLE_OF,
    Renderer,
    fmt_num,
    gh_escape_data,
    gh_escape_property,
    md_cell,
    plural,
    render_to_text,
    safe_text,
)
from .common import json_float as _f

__all__ = [
    "GITHUB_MAX",
    "RENDERERS",
    "SCHEMA",
    "gradcheck_renderables",
    "method_problem",
    "render",
    "render_github",
    "render_json",
    "render_markdown",
    "render_table",
    "summary",
    "to_dict",
]

SCHEMA = "smcheck.gradcheck/1"
#: ``--format github`` prints at most this many ``::error`` and this many ``::warning`` lines.
GITHUB_MAX = 10


def _num(x: float) -> str:
    """A derivative value: nan/inf spelled out, else 4 significant digits."""
    return fmt_num(x, 4)


def _probes_text(r: GradcheckReport) -> str:
    if r.full:
        coords = f"every coordinate ({r.entries_per_row} per row)"
    else:
        coords = (
            f"{r.entries_per_row} coordinates per row (label, argmax, argmin, the next largest "
            "logits, a random sample)"
        )
    return f"{coords} and {r.directions} random unit directions per row (seed {r.seed})"


def _where(w: WorstEntry) -> str:
    case = f", {w.case}" if w.case else ""
    return f"row {w.row} (label {w.label}{case}) {w.probe}"


def method_problem(m: MethodCheck) -> str | None:
    """One line saying why a method failed (None when it passed)."""
    if m.passed:
        return None
    parts: list[str] = []
    if m.nonfinite_grad_rows:
        s = "s" if m.nonfinite_grad_rows != 1 else ""
        parts.append(f"NaN/inf gradient in {m.nonfinite_grad_rows} row{s}")
    beyond = m.failed_entries - m.nonfinite_entries
    if beyond > 0:
        parts.append(f"{beyond} of {m.checked_entries} entries beyond the tolerance")
    if m.failed_directions:
        n_dir = f"{m.failed_directions} of {m.checked_directions}"
        parts.append(f"{n_dir} directional derivatives fail")
    if not parts:
        parts.append("nothing checked")
    if m.worst is not None:
        w = m.worst
        parts.append(f"worst {_where(w)}: {_num(w.value)}, truth {_num(w.truth)}")
    return f"{m.name}: " + "; ".join(parts)


def summary(r: GradcheckReport) -> str:
    """The one-line verdict, in words."""
    if r.rows == 0:
        return "FAIL: no row to check (every row is ignored or has NaN/inf logits)"
    if not r.truth.ok:
        return (
            "FAIL: the truth is not trustworthy here: complex step and central differences "
            f"differ by {r.truth.worst_fraction:.2g} of the tolerance"
        )
    by = {m.name: m for m in r.methods}
    failed = [m.name for m in r.methods if m.gated and not m.passed]
    gated = ", ".join(r.gate)
    if failed:
        return (
            f"FAIL: gated {', '.join(failed)} "
            + ("fails" if len(failed) == 1 else "fail")
            + f" the gradient check in {r.dtype}"
        )
    others = [m.name for m in r.methods if not m.passed]
    if not r.gate:
        text = "PASS: no method is gated"
    else:
        text = f"PASS: gated {gated} " + ("passes" if len(r.gate) == 1 else "pass")
    if others:
        bad = [n for n in others if by[n].nonfinite_grad_rows]
        text += f"; {', '.join(others)} fail" + ("s" if len(others) == 1 else "")
        if bad:
            text += f" ({', '.join(bad)}: NaN/inf gradients - use a fused softmax-loss)"
    return text


# --------------------------------------------------------------------------- json


def _worst_dict(w: WorstEntry) -> dict[str, Any]:
    return {
        "method": w.method,
        "row": w.row,
        "label": w.label,
        "case": w.case,
        "probe": w.probe,
        "truth": _f(w.truth),
        "value": _f(w.value),
        "nonfinite": not math.isfinite(w.value),
        "abs_err": _f(w.abs_err),
        "tol": _f(w.tol),
        "ratio": _f(w.ratio),
    }


def to_dict(r: GradcheckReport) -> dict[str, Any]:
    """The report as the ``smcheck.gradcheck/1`` JSON object (no NaN/inf: those are null)."""
    t = r.truth
    return {
        "schema": SCHEMA,
        "input": {
            "source": r.source,
            "rows": r.rows,
            "input_rows": r.input_rows,
            "classes": r.classes,
            "dtype": r.dtype,
            "accum": r.accum,
            "cast": r.cast,
            "label_free": r.label_free,
            "skipped_nonfinite_rows": r.skipped_nonfinite,
            "ignored_rows": r.ignored,
            "cases": dict(r.cases),
            # only when a loss variant is checked: the plain loss's document is unchanged
            **({"variant": r.variant.as_json()} if r.variant is not None else {}),
        },
        "probes": {
            "full": r.full,
            "entries_per_row": r.entries_per_row,
            "directions": r.directions,
            "seed": r.seed,
        },
        "tolerance": {"atol": r.atol, "rtol": r.rtol, "source": r.tolerance_source},
        "truth": {
            "complex_step": t.complex_step,
            "central_difference": t.central_difference,
            "reference": t.reference,
            "agreement": _f(t.agreement),
            "reference_agreement": _f(t.reference_agreement),
            "fraction_of_tolerance": _f(t.worst_fraction),
            "reference_fraction_of_tolerance": _f(t.reference_fraction),
            "probes": t.probes,
            "ok": t.ok,
        },
        "truth_agreement": _f(t.agreement),
        "methods": {
            m.name: {
                "max_abs_err": _f(m.max_abs_err),
                "max_rel_err": _f(m.max_rel_err),
                "max_ulp_err": _f(m.max_ulp_err),
                "max_bits_err": _f(m.max_bits_err),
                "max_dir_err": _f(m.max_dir_err),
                "nonfinite_grad_rows": m.nonfinite_grad_rows,
                "nonfinite_entries": m.nonfinite_entries,
                "checked_entries": m.checked_entries,
                "failed_entries": m.failed_entries,
                "checked_directions": m.checked_directions,
                "failed_directions": m.failed_directions,
                "gated": m.gated,
                "passed": m.passed,
                "worst": None if m.worst is None else _worst_dict(m.worst),
                "consistency": {
                    "verdict": m.consistency.verdict,
                    "rows": m.consistency.rows,
                    "consistent": m.consistency.consistent,
                    "inconsistent": m.consistency.inconsistent,
                    "inconclusive": m.consistency.inconclusive,
                    "below_resolution": m.consistency.below_resolution,
                    "nonfinite": m.consistency.nonfinite,
                    "step": m.consistency.step,
                },
            }
            for m in r.methods
        },
        "worst": [_worst_dict(w) for w in r.worst],
        "gate": list(r.gate),
        "notes": list(r.notes),
        "verdict": summary(r),
        "ok": r.ok,
    }


def render_json(r: GradcheckReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format json``: schema ``smcheck.gradcheck/1`` (strict JSON)."""
    return json.dumps(to_dict(r), indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- table


def _truth_lines(r: GradcheckReport) -> list[str]:
    t = r.truth
    trusted = "trusted" if t.ok else "NOT trusted"
    return [
        f"{t.complex_step}",
        f"witness: {t.central_difference}",
        f"agreement {fmt_num(t.agreement)} ({fmt_num(t.worst_fraction)} of the tolerance, "
        f"{t.probes} probes): {trusted}",
        f"third witness, the reference gradient ({t.reference}): agrees to "
        f"{fmt_num(t.reference_agreement)}",
    ]


def _panel(r: GradcheckReport) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")  # a long path shown whole, not cut
    rows = f"{r.rows} checked"
    if r.label_free:
        rows += " (row, label) pairs"
    rows += f" of {plural(r.input_rows, 'input row')} x {plural(r.classes, 'class')}"
    if r.cases:
        rows += " (" + ", ".join(f"{k} {n}" for k, n in r.cases) + ")"
    grid.add_row("input", safe_text(r.source))
    grid.add_row("rows", rows)
    grid.add_row("dtype", f"{r.dtype} (accumulate in {r.accum}, cast {r.cast})")
    if r.variant is not None:
        grid.add_row("loss variant", safe_text(r.variant.describe()))
    grid.add_row("probes", _probes_text(r))
    grid.add_row(
        "tolerance",
        f"|g - g*| <= atol + rtol |g*|, atol {r.atol:g}, rtol {r.rtol:g} ({r.tolerance_source})",
    )
    for i, line in enumerate(_truth_lines(r)):
        grid.add_row("truth" if i == 0 else "", line)
    for note in r.notes:
        grid.add_row("note", safe_text(note))
    return Panel(grid, title="smcheck gradcheck", title_align="left", expand=False)


#: Below this width the tables take their compact form (short headers, optional columns left
#: out) instead of letting rich cut cells into "…".
FULL_WIDTH = 100


def _methods_table(r: GradcheckReport, compact: bool = False) -> Table:
    t = Table(
        title="Gradients against the truth (* gated; errors over the checked entries; own loss: "
        "the working-dtype check)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in (
        "method",
        "bad\nentries",
        "NaN/inf\nrows",
        "max abs\nerr",
        *(() if compact else ("max rel\nerr",)),
        "max\nulps",
        "bad\ndirs",
        "own loss",
        "verdict",
    ):
        just = "left" if name in ("method", "verdict", "own loss") else "right"
        t.add_column(name, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for m in r.methods:
        style = STYLE_OF["ok" if m.passed else "broken"]
        c = m.consistency
        cons = c.verdict
        if c.verdict != "unavailable":  # how many probes have that verdict, of all
            total = c.consistent + c.inconsistent + c.inconclusive + c.nonfinite
            cons += f" {getattr(c, c.verdict)}/{total}"
        t.add_row(
            Text(m.name + (" *" if m.gated else ""), style=style),
            f"{m.failed_entries}/{m.checked_entries}",
            str(m.nonfinite_grad_rows),
            fmt_num(m.max_abs_err),
            *(() if compact else (fmt_num(m.max_rel_err),)),
            fmt_num(m.max_ulp_err),
            f"{m.failed_directions}/{m.checked_directions}",
            Text(cons, style=STYLE_OF.get(_cons_style(c.verdict), "")),
            Text("pass" if m.passed else "FAIL", style=style),
        )
    return t


def _cons_style(verdict: str) -> str:
    return {"consistent": "ok", "inconclusive": "inconclusive"}.get(verdict, "broken")


def _worst_table(r: GradcheckReport, compact: bool = False) -> Table | None:
    if not r.worst:
        return None
    t = Table(
        title="Worst checked derivatives (|err| / tolerance)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    cases = any(w.case for w in r.worst)
    # compact: the label (the probe names the class) and |err| (the ratio shows it) left out
    names = ["method", "row", *([] if compact else ["label"]), *(["case"] if cases else [])]
    for name in (*names, "probe", "truth", "value", *([] if compact else ["|err|"]), "/ tol"):
        just = "left" if name in ("method", "case", "probe") else "right"
        t.add_column(name, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for w in r.worst:
        style = STYLE_OF["ok" if w.passed else "broken"]
        t.add_row(
            w.method,
            str(w.row),
            *([] if compact else [str(w.label)]),
            *([safe_text(w.case or "")] if cases else []),
            safe_text(w.probe),
            _num(w.truth),
            Text(_num(w.value), style=style),
            *([] if compact else [fmt_num(w.abs_err)]),
            Text(fmt_num(w.ratio), style=style),
        )
    return t


def gradcheck_renderables(r: GradcheckReport, width: int = DEFAULT_WIDTH) -> list[RenderableType]:
    """The table report as rich objects: input panel, methods, worst entries, verdict (compact
    below :data:`FULL_WIDTH` columns)."""
    out: list[RenderableType] = [_panel(r), _methods_table(r, width < FULL_WIDTH)]
    worst = _worst_table(r, width < FULL_WIDTH)
    if worst is not None:
        out.append(worst)
    out.append(Text(safe_text(summary(r)), style=STYLE_OF["ok" if r.ok else "broken"] + " bold"))
    return out


def render_table(r: GradcheckReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format table``: the human report (ANSI colours only when ``color``)."""
    width = width or DEFAULT_WIDTH
    return render_to_text(gradcheck_renderables(r, width), color=color, width=width)


# --------------------------------------------------------------------------- markdown, github


def render_markdown(r: GradcheckReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format markdown``: a GitHub job summary (``>> $GITHUB_STEP_SUMMARY``)."""
    status = "PASS" if r.ok else "FAIL"
    lines = [
        f"## smcheck gradcheck: {status}",
        "",
        f"**{md_cell(summary(r))}**",
        "",
        f"`{md_cell(r.source)}`: {plural(r.rows, 'row')} checked of {r.input_rows} x "
        f"{plural(r.classes, 'class')} in "
        f"**{r.dtype}** (accumulate in {r.accum}); {_probes_text(r)}. Tolerance "
        f"`|g - g*| <= {r.atol:g} + {r.rtol:g} |g*|` ({r.tolerance_source}).",
        *([f"Loss variant: `{md_cell(r.variant.describe())}`."] if r.variant is not None else []),
        "",
        "Truth: " + "; ".join(_truth_lines(r)) + ".",
        "",
        "| method | gated | bad entries | NaN/inf rows | max abs err | max rel err | max ulps "
        "| bad directions | own loss | verdict |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for m in r.methods:
        cells = [
            m.name,
            "yes" if m.gated else "",
            f"{m.failed_entries}/{m.checked_entries}",
            str(m.nonfinite_grad_rows),
            fmt_num(m.max_abs_err),
            fmt_num(m.max_rel_err),
            fmt_num(m.max_ulp_err),
            f"{m.failed_directions}/{m.checked_directions}",
            m.consistency.verdict,
            "✅ pass" if m.passed else "❌ fail",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    problems = [p for p in (method_problem(m) for m in r.methods) if p]
    if problems:
        lines += ["", "Findings:", ""] + [f"- {md_cell(p)}" for p in problems]
    if r.notes:
        lines += ["", "Notes:", ""] + [f"- {md_cell(n)}" for n in r.notes]
    return "\n".join(lines) + "\n"


def render_github(r: GradcheckReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format github``: ``::error`` for gated failures and an untrusted truth, ``::warning``
    for other failing methods (at most 10 of each), then a ``::notice`` with the verdict."""
    errors: list[str] = []
    warnings: list[str] = []
    if r.rows == 0 or not r.truth.ok:
        errors.append(summary(r))
    for m in r.methods:
        p = method_problem(m)
        if p:
            (errors if m.gated else warnings).append(p)
    title = gh_escape_property(f"smcheck gradcheck {r.source}")
    out: list[str] = []
    for kind, items in (("error", errors), ("warning", warnings)):
        shown = items if len(items) <= GITHUB_MAX else items[: GITHUB_MAX - 1]
        if len(items) > len(shown):
            shown = [*shown, f"... and {len(items) - len(shown)} more"]
        out += [f"::{kind} title={title}::{gh_escape_data(p)}" for p in shown]
    out.append(f"::notice title={title}::{gh_escape_data(summary(r))}")
    return "\n".join(out) + "\n"


#: ``--format`` -> renderer ``(report, *, color, width) -> str``.
RENDERERS: dict[str, Renderer[GradcheckReport]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "github": render_github,
}


def render(r: GradcheckReport, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    """The report as text in format ``fmt`` (a key of :data:`RENDERERS`)."""
    return RENDERERS[fmt](r, color=color, width=width)
