"""Machine formats of an :class:`~smcheck.evaluate.EvalReport`: json, markdown, github, junit,
and the method columns the table and the markdown both show (:data:`METHOD_COLUMNS`).

Pure functions ``report -> str`` with the renderer contract of :mod:`smcheck.render.eval`: no I/O,
no numerics (numbers are only formatted); data text escaped (:func:`~.common.safe_text`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..evaluate import EvalReport, MethodReport, WorstRow
from .common import fmt_num, gh_escape_data, gh_escape_property, md_cell, plural, safe_text
from .common import json_float as _f

__all__ = [
    "GITHUB_MAX",
    "METHOD_COLUMNS",
    "MethodColumn",
    "render_github",
    "render_json",
    "render_junit",
    "render_markdown",
    "to_dict",
]

#: ``--format github`` prints at most this many ``::error`` and this many ``::warning`` lines.
GITHUB_MAX = 10
#: ``--format markdown`` lists at most this many worst rows (a job summary stays short).
MARKDOWN_WORST = 5


@dataclass(frozen=True)
class MethodColumn:
    """One numeric column of the methods table, shared by ``table`` and ``markdown``.

    ``table`` is the two-line header of the terminal table, ``markdown`` the one-line header
    (``{unit}``: rows or pairs), ``short`` the header when the table must fit 80 columns, and
    ``optional`` columns are the ones left out there.
    """

    table: str
    markdown: str
    cell: Callable[[MethodReport], str]
    short: str = ""
    optional: bool = False


#: The method columns between the name and the verdict, in order, declared once.
METHOD_COLUMNS: tuple[MethodColumn, ...] = (
    MethodColumn(
        "NaN/inf\nloss",
        "NaN/inf loss {unit}",
        lambda m: str(m.nan_loss_rows + m.inf_loss_rows),
        "NaN/\ninf",
    ),
    MethodColumn("bad\ngrad", "non-finite grad", lambda m: str(m.nonfinite_grad_rows), "bad\ngrad"),
    MethodColumn("over-\nflow", "overflow", lambda m: str(m.overflow_rows), "ovf"),
    MethodColumn("under-\nflow", "underflow", lambda m: str(m.underflow_rows), "unf"),
    MethodColumn(
        "loss ulp\nmax", "max loss err (ulp)", lambda m: fmt_num(m.loss_max_ulp_err), "ulp\nmax"
    ),
    MethodColumn(
        "loss ulp\nmedian",
        "median (ulp)",
        lambda m: fmt_num(m.loss_median_ulp_err),
        "ulp\nmed",
        optional=True,
    ),
    MethodColumn("loss rel\nmax", "max rel err", lambda m: fmt_num(m.loss_max_rel_err), "rel\nmax"),
    MethodColumn(
        "mean-loss\nrel err",
        "mean-loss rel err",
        lambda m: fmt_num(m.mean_loss_rel_err),
        "mean\nrel",
        optional=True,
    ),
    MethodColumn(
        "grad err\nmax", "max grad err", lambda m: fmt_num(m.grad_max_abs_err), "grad\nmax"
    ),
)


def _method_dict(m: MethodReport) -> dict[str, Any]:
    return {
        "nan_loss_rows": m.nan_loss_rows,
        "inf_loss_rows": m.inf_loss_rows,
        "nonfinite_grad_rows": m.nonfinite_grad_rows,
        "overflow_rows": m.overflow_rows,
        "underflow_rows": m.underflow_rows,
        "overflow_causes": dict(m.overflow_causes),
        "loss_max_rel_err": _f(m.loss_max_rel_err),
        "loss_median_rel_err": _f(m.loss_median_rel_err),
        "loss_max_ulp_err": _f(m.loss_max_ulp_err),
        "mean_loss_rel_err": _f(m.mean_loss_rel_err),
        "grad_max_abs_err": _f(m.grad_max_abs_err),
        "grad_max_rel_err": _f(m.grad_max_rel_err),
        "ok": m.ok,
        # beyond the schema's required keys
        "verdict": m.verdict,
        "gated": m.gated,
        "measured": m.measured,
        "grad_checked": m.grad_checked,
        "loss_max_rel_err_row": m.loss_max_rel_err_row,
        "loss_max_ulp_err_row": m.loss_max_ulp_err_row,
        "loss_median_ulp_err": _f(m.loss_median_ulp_err),
        "loss_p99_ulp_err": _f(m.loss_p99_ulp_err),
        "loss_max_bits": _f(m.loss_max_bits),
        "loss_max_gate_err": _f(m.loss_max_gate_err),
        "loss_max_gate_err_row": m.loss_max_gate_err_row,
        "grad_max_abs_err_row": m.grad_max_abs_err_row,
        "problems": list(m.problems),
    }


def to_dict(report: EvalReport) -> dict[str, Any]:
    """The ``smcheck.eval/1`` JSON document as plain Python objects."""
    i = report.input
    return {
        "schema": report.schema,
        "input": {
            "logits": i.logits,
            "labels": i.labels,
            "rows": i.rows,
            "classes": i.classes,
            "dtype": i.dtype,
            "accum": i.accum,
            "ignored_rows": i.ignored_rows,
            "nonfinite_input_rows": i.nonfinite_input_rows,
            # beyond the schema's required keys
            "cast": i.cast,
            "label_free": i.label_free,
            "unit": i.unit,
            "eligible_rows": i.eligible_rows,
            "ref_nonfinite_rows": i.ref_nonfinite,
            "original_shape": list(i.original_shape),
            "logit_min": _f(i.logit_min),
            "logit_max": _f(i.logit_max),
            "margin_max": _f(i.margin_max),
            "ln_max": i.ln_max,
            "underflow_margin": i.underflow_margin,
            "rows_over_ln_max": i.rows_over_ln_max,
            "rows_margin_underflow": i.rows_margin_underflow,
            "cast_changed": i.cast_changed,
            "cast_max_rel_change": i.cast_max_rel_change,
            "cast_overflowed": i.cast_overflowed,
            "cast_saturated": i.cast_saturated,
            "cast_flushed_to_zero": i.cast_flushed_to_zero,
            "grad_policy": i.grad_policy,
            "notes": list(i.notes),
            # only when a loss variant is checked: the plain loss's document is unchanged
            **({"variant": i.variant.as_json()} if i.variant is not None else {}),
        },
        "reference": {"precision": report.reference},
        "gate": {
            "methods": list(report.gate.methods),
            "max_loss_ulp": report.gate.max_loss_ulp,
            "max_grad_err": report.gate.max_grad_err,
            "fail_on": list(report.gate.fail_on),
        },
        "methods": {m.name: _method_dict(m) for m in report.methods},
        "worst_rows": [
            {
                "row": w.row,
                "label": w.label,
                "max_logit": _f(w.max_logit),
                "margin": _f(w.margin),
                "ref_p": _f(w.ref_p),
                "ref_loss": _f(w.ref_loss),
                "score": _f(w.score),
                "max_rel_err_of": list(w.max_rel_err_of),
                "methods": {
                    name: {"loss": _f(loss), "rel_err": _f(rel), "nonfinite": bad}
                    for name, loss, rel, bad in w.methods
                },
            }
            for w in report.worst
        ],
        "verdict": report.verdict,
        "ok": report.ok,
    }


def render_json(report: EvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format json``: the schema ``smcheck.eval/1`` (strict JSON: no NaN/inf; data text
    as it is, every control character a ``\\u`` escape of json.dumps)."""
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


#: How the worst rows are ranked, in the words the table and the markdown title use.
WORST_RANKING = (
    "by score: over methods, the largest loss error in ulps of max(|loss|, 1) and gradient "
    "error in eps of {dtype}; non-finite results first"
)


def rel_cell(w: WorstRow, name: str, rel: float | None) -> str:
    """A method's relative error on a worst row, marked ``^`` where it is the method's largest
    (the methods table's ``loss rel max``)."""
    return fmt_num(rel) + _mark(w, name)


def _mark(w: WorstRow, name: str) -> str:
    return " ^" if name in w.max_rel_err_of else ""


_ICON = {"ok": "✅ ok", "lossy": "⚠️ lossy", "broken": "❌ broken"}


def render_markdown(report: EvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format markdown``: a GitHub job summary (``>> $GITHUB_STEP_SUMMARY``)."""
    i = report.input
    status = "PASS" if report.ok else "FAIL"
    lines = [
        f"## smcheck eval: {status}",
        "",
        f"**{md_cell(report.verdict)}**",
        "",
        f"`{md_cell(i.logits)}`"
        + (f" with labels `{md_cell(i.labels)}`" if i.labels else " (label-free)")
        + f": {plural(i.rows, 'row')} x {plural(i.classes, 'class')} in **{i.dtype}** "
        f"(accumulate in {i.accum});"
        f" {i.eligible_rows} eligible, {i.ignored_rows} ignored, {i.nonfinite_input_rows} with "
        f"non-finite input. Logits {fmt_num(i.logit_min)} .. {fmt_num(i.logit_max)}, largest "
        f"margin {fmt_num(i.margin_max)}; ln(max {i.dtype}) = {i.ln_max:.4g}. "
        f"Reference: {report.reference}.",
        "",
    ]
    if i.label_free:
        lines += [f"Label-free: counts are over (row, class) pairs; {i.grad_policy}.", ""]
    heads = [c.markdown.format(unit=i.unit) for c in METHOD_COLUMNS]
    lines += [
        "| " + " | ".join(["method", "gated", *heads, "verdict"]) + " |",
        "|---|---|" + "--:|" * len(METHOD_COLUMNS) + "---|",
    ]
    for m in report.methods:
        cells = [m.name, "yes" if m.gated else "", *(c.cell(m) for c in METHOD_COLUMNS)]
        lines.append("| " + " | ".join([*cells, _ICON[m.verdict]]) + " |")
    g = report.gate
    lines += [
        "",
        f"Gate: {', '.join(g.methods) or 'none'}; loss error <= {g.max_loss_ulp:.3g} ulps of "
        f"max(|loss|, 1), gradient error <= {g.max_grad_err:.3g}; fail on "
        f"{', '.join(g.fail_on) or 'nothing'}.",
    ]
    problems = [p for m in report.methods for p in m.problems]
    if problems:
        lines += ["", "Findings:", ""] + [f"- {md_cell(p)}" for p in problems]
    if report.worst:
        label = "class" if i.label_free else "label"
        names = [name for name, *_ in report.worst[0].methods]
        # the first rows by score, and the rows of each method's largest relative error
        shown = [w for n, w in enumerate(report.worst) if n < MARKDOWN_WORST or w.max_rel_err_of]
        lines += [
            "",
            f"Worst rows ({WORST_RANKING.format(dtype=i.dtype)}; at most {MARKDOWN_WORST} by "
            "score, and each method's largest loss relative error, marked ^; cells: loss "
            "relative error):",
            "",
            f"| row | {label} | max logit | margin | ref p_y | score | " + " | ".join(names) + " |",
            "|--:|--:|--:|--:|--:|--:|" + "--:|" * len(names),
        ]
        for w in shown:
            errs = [
                (("non-finite" if loss is None else "bad grad") + _mark(w, name))
                if bad
                else rel_cell(w, name, rel)
                for name, loss, rel, bad in w.methods
            ]
            cells = [str(w.row), str(w.label), fmt_num(w.max_logit), fmt_num(w.margin)]
            cells += [fmt_num(w.ref_p), fmt_num(w.score), *errs]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_github(report: EvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format github``: ``::error``/``::warning`` workflow commands, at most 10 of each.

    Failing gated methods' findings are errors; other findings are warnings; a summary
    ``::notice`` ends the output.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if report.input.eligible_rows == 0:
        errors.append(report.verdict)
    for m in report.methods:
        target = errors if (m.gated and not m.ok) else warnings
        target.extend(m.problems)
    title = f"smcheck eval {report.input.logits}"
    out: list[str] = []
    for kind, items in (("error", errors), ("warning", warnings)):
        shown = items[:GITHUB_MAX]
        if len(items) > GITHUB_MAX:
            shown = items[: GITHUB_MAX - 1]
            shown.append(f"... and {len(items) - len(shown)} more findings")
        out += [f"::{kind} title={gh_escape_property(title)}::{gh_escape_data(p)}" for p in shown]
    status = "PASS" if report.ok else "FAIL"
    notice = f"{status}: {report.verdict}"
    out.append(f"::notice title={gh_escape_property(title)}::{gh_escape_data(notice)}")
    return "\n".join(out) + "\n"


def _junit_cases(report: EvalReport) -> list[tuple[str, str, str | None]]:
    """(classname, name, failure message or None) per gated method and check."""
    g = report.gate
    cases: list[tuple[str, str, str | None]] = []
    if report.input.eligible_rows == 0:
        cases.append(("smcheck.eval", "eligible_rows", report.verdict))
    for m in report.methods:
        if not m.gated:
            continue
        cls = f"smcheck.eval.{m.name}"
        bad_loss = m.nan_loss_rows + m.inf_loss_rows
        nonfinite = bad_loss + m.nonfinite_grad_rows
        unit = report.input.unit
        grad_unit = "pairs" if report.input.label_free else "rows"
        checks = {
            "nonfinite": (
                nonfinite,
                f"NaN/inf loss on {bad_loss} {unit}, "
                f"non-finite gradient on {m.nonfinite_grad_rows} {grad_unit}",
            ),
            "overflow": (m.overflow_rows, f"overflow on {m.overflow_rows} {report.input.unit}"),
            "underflow": (m.underflow_rows, f"underflow on {m.underflow_rows} {report.input.unit}"),
        }
        for check in g.fail_on:
            count, msg = checks[check]
            cases.append((cls, check, msg if count else None))
        le = m.loss_max_gate_err
        cases.append(
            (
                cls,
                "loss_error",
                None
                if le is None or le <= g.max_loss_ulp
                else f"loss error {le:.3g} ulps > {g.max_loss_ulp:.3g}",
            )
        )
        ge = m.grad_max_abs_err
        cases.append(
            (
                cls,
                "grad_error",
                None
                if ge is None or ge <= g.max_grad_err
                else f"gradient error {ge:.3g} > {g.max_grad_err:.3g}",
            )
        )
    return cases


def render_junit(report: EvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format junit``: JUnit XML, one test case per gated method and check. Valid XML 1.0
    whatever a file name holds: its control characters are escaped (:func:`safe_text`), not
    written as character references, which XML 1.0 forbids for most of them."""
    # imported here: xml.sax pulls in urllib and http (~15 ms of every command's start-up)
    from xml.sax.saxutils import escape, quoteattr

    cases = _junit_cases(report)
    failures = sum(1 for *_, f in cases if f is not None)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="smcheck eval" tests="{len(cases)}" failures="{failures}">',
        f"  <testsuite name={quoteattr('smcheck.eval ' + safe_text(report.input.logits))} "
        f'tests="{len(cases)}" failures="{failures}" errors="0">',
        f'    <properties><property name="dtype" value={quoteattr(report.input.dtype)}/>'
        f'<property name="verdict" value={quoteattr(safe_text(report.verdict))}/></properties>',
    ]
    for cls, name, failure in cases:
        failure = None if failure is None else safe_text(failure)
        head = f"    <testcase classname={quoteattr(cls)} name={quoteattr(name)}"
        if failure is None:
            lines.append(head + "/>")
        else:
            lines += [
                head + ">",
                f"      <failure message={quoteattr(failure)}>{escape(failure)}</failure>",
                "    </testcase>",
            ]
    lines += ["  </testsuite>", "</testsuites>"]
    return "\n".join(lines) + "\n"
