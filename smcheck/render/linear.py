"""``smcheck eval --hidden --weight`` (fused linear cross-entropy): the renderers, one contract
``render(report, fmt, *, color, width)`` as every command's. Pure: no I/O, no numerics."""

from __future__ import annotations

import json
import math
from typing import Any

from ..linear_eval import LinearCheck, LinearEvalReport
from ..linear_kernel import LinearKernelReport, LinearProbeResult
from .common import (
    DEFAULT_WIDTH,
    Renderer,
    fmt_num,
    gh_escape_data,
    gh_escape_property,
    json_clean,
    json_float,
    md_cell,
    render_to_text,
    safe_text,
)

__all__ = ["RENDERERS", "kernel_to_dict", "render", "render_kernel", "to_dict"]

_COLUMNS = ("grad_accum", "chunks (rows x vocab)", "loss ulps", "dh err", "dW err", "db err")


def _check_dict(c: LinearCheck) -> dict[str, Any]:
    return {
        "grad_accum": c.grad_accum,
        "chunk_rows": c.chunk_rows,
        "chunk_vocab": c.chunk_vocab,
        "chunks_rows": c.chunks_rows,
        "chunks_vocab": c.chunks_vocab,
        "loss_max_ulps": json_float(c.loss_max_ulps),
        "loss_reduced_rel_err": json_float(c.loss_reduced_rel_err),
        "grad_hidden_err": json_float(c.grad_hidden_err),
        "grad_weight_err": json_float(c.grad_weight_err),
        "grad_bias_err": json_float(c.grad_bias_err),
        "ok": c.ok,
    }


def to_dict(report: LinearEvalReport) -> dict[str, Any]:
    """The ``smcheck.eval/1`` document of the linear mode: its ``linear`` section."""
    r = report
    return json_clean(
        {
            "schema": "smcheck.eval/1",
            "ok": r.ok,
            "verdict": r.verdict,
            "linear": {
                "hidden": r.hidden_name,
                "weight": r.weight_name,
                "bias": r.bias_name,
                "labels": r.labels_name,
                "rows": r.rows,
                "dim": r.dim,
                "vocab": r.vocab,
                "counted_rows": r.counted_rows,
                "dtype": r.working,
                "reduction": r.reduction,
                "label_smoothing": r.label_smoothing,
                # only when a loss variant is checked: the plain loss's document is unchanged
                **({"variant": r.variant.as_json()} if r.variant is not None else {}),
                "reference": {
                    "loss": json_float(r.reference_loss),
                    "split_blocks": r.reference_split_blocks,
                    "blocks": r.reference_blocks,
                    "precision": r.reference_precision,
                    # the reference's own relative error bounds (inf: not resolved)
                    "grad_hidden_bound": json_float(r.reference_bounds[0]),
                    "grad_weight_bound": json_float(r.reference_bounds[1]),
                    "grad_bias_bound": json_float(r.reference_bounds[2]),
                },
                "thresholds": {"max_loss_ulp": r.max_loss_ulp, "max_grad_err": r.max_grad_err},
                "checks": [_check_dict(c) for c in r.checks],
            },
        }
    )


def _cells(c: LinearCheck) -> list[str]:
    return [
        c.grad_accum,
        f"{c.chunks_rows} x {c.chunks_vocab}",
        fmt_num(c.loss_max_ulps),
        fmt_num(c.grad_hidden_err),
        fmt_num(c.grad_weight_err),
        fmt_num(c.grad_bias_err),
    ]


def _head(r: LinearEvalReport) -> str:
    bias = f" + {r.bias_name}" if r.bias_name else ""
    smoothing = f", label smoothing {r.label_smoothing:g}" if r.label_smoothing else ""
    variant = f", loss variant {r.variant.describe()}" if r.variant is not None else ""
    return (
        f"fused linear cross-entropy: {r.hidden_name} ({r.rows} x {r.dim}) . "
        f"{r.weight_name}^T ({r.vocab} x {r.dim}){bias}, labels {r.labels_name}, "
        f"{r.working}, reduction {r.reduction}{smoothing}{variant}"
    )


def render_table(report: LinearEvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format table``: the input line, one row per configuration, the verdict."""
    from rich.table import Table

    r = report
    table = Table(title=safe_text(_head(r)), title_justify="left")
    for col in (*_COLUMNS, "verdict"):
        table.add_column(col)
    for c in r.checks:
        table.add_row(*_cells(c), "[green]ok[/]" if c.ok else "[red]fail[/]")
    foot = (
        f"reference loss {fmt_num(r.reference_loss, 10)} (exact split in "
        f"{r.reference_split_blocks} of {r.reference_blocks} block products); gate: loss <= "
        f"{fmt_num(r.max_loss_ulp)} ulps of max(|L*|, 1), gradients <= "
        f"{fmt_num(r.max_grad_err)} normwise\n{_resolution(r)}{safe_text(r.verdict)}"
    )
    return render_to_text([table, foot], color=color, width=width or DEFAULT_WIDTH)


def _resolution(r: LinearEvalReport) -> str:
    """A line when the reference cannot resolve a gradient's error to a sixteenth of the gate
    (heavy cancellation in dh = G W, dW = G^T h or db = 1^T G): errors below its bound are
    the reference's, not the kernel's. Empty otherwise."""
    weak = [
        f"{name} only to {fmt_num(b)} relative" if math.isfinite(b) else f"no bound on {name}"
        for name, b in zip(("dh", "dW", "db"), r.reference_bounds, strict=True)
        if b is not None and not math.isnan(b) and b > r.max_grad_err / 16
    ]
    if not weak:
        return ""
    return (
        "note: the reference has " + ", ".join(weak) + " (cancellation in the gradient"
        " products, or an output that is exactly 0): an error there below the reference's own"
        " is not meaningful\n"
    )


def render_json(report: LinearEvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format json``: ``smcheck.eval/1`` with the ``linear`` section (strict JSON)."""
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


def render_markdown(
    report: LinearEvalReport, *, color: bool = False, width: int | None = None
) -> str:
    """``--format markdown``: a heading line, the table, the verdict."""
    lines = [f"**{md_cell(_head(report))}**", ""]
    lines.append("| " + " | ".join((*_COLUMNS, "verdict")) + " |")
    lines.append("|" + "---|" * (len(_COLUMNS) + 1))
    lines.extend(
        "| " + " | ".join([*_cells(c), "ok" if c.ok else "fail"]) + " |" for c in report.checks
    )
    note = _resolution(report).strip()
    lines += ["", *([md_cell(note), ""] if note else []), md_cell(report.verdict)]
    return "\n".join(lines) + "\n"


def render_github(
    report: LinearEvalReport, *, color: bool = False, width: int | None = None
) -> str:
    """``--format github``: one ``::error`` workflow command per failing configuration."""
    out = []
    for c in report.checks:
        if not c.ok:
            what = "" if report.variant is None else f" ({report.variant.describe()})"
            msg = (
                f"linear cross-entropy{what}, grad_accum {c.grad_accum}: loss "
                f"{fmt_num(c.loss_max_ulps)}"
                f" ulps, dh {fmt_num(c.grad_hidden_err)}, dW {fmt_num(c.grad_weight_err)}, db "
                f"{fmt_num(c.grad_bias_err)} (gate {fmt_num(report.max_grad_err)})"
            )
            out.append(f"::error title=smcheck eval::{gh_escape_data(safe_text(msg))}")
    out.append(safe_text(report.verdict).replace("::", ": :"))
    return "\n".join(out) + "\n"


def render_junit(report: LinearEvalReport, *, color: bool = False, width: int | None = None) -> str:
    """``--format junit``: one test case per configuration."""
    from xml.sax.saxutils import escape, quoteattr

    cases = report.checks
    failures = sum(1 for c in cases if not c.ok)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="smcheck eval" tests="{len(cases)}" failures="{failures}">',
        f"  <testsuite name={quoteattr('smcheck.eval.linear ' + safe_text(report.hidden_name))}"
        f' tests="{len(cases)}" failures="{failures}" errors="0">',
    ]
    for c in cases:
        head = f'    <testcase classname="linear" name={quoteattr("grad_accum " + c.grad_accum)}'
        if c.ok:
            lines.append(head + "/>")
        else:
            msg = " ".join(f"{k} {v}" for k, v in zip(_COLUMNS, _cells(c), strict=True))
            lines += [
                head + ">",
                f"      <failure message={quoteattr(msg)}>{escape(msg)}</failure>",
                "    </testcase>",
            ]
    lines += ["  </testsuite>", "</testsuites>"]
    return "\n".join(lines) + "\n"


#: ``--format`` -> renderer.
RENDERERS: dict[str, Renderer[LinearEvalReport]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "github": render_github,
    "junit": render_junit,
}


def render(
    report: LinearEvalReport, fmt: str, *, color: bool = False, width: int | None = None
) -> str:
    """The report as text in format ``fmt`` (a key of :data:`RENDERERS`)."""
    return RENDERERS[fmt](report, color=color, width=width)


# -- smcheck kernel --linear ---------------------------------------------------------------

_PROBE_COLUMNS = ("probe", "dtype", "status", "loss ulps", "dh err", "dW err", "db err",
                  "stock dW err", "detail")  # fmt: skip


def kernel_to_dict(report: LinearKernelReport) -> dict[str, Any]:
    """``smcheck.kernel/1`` of a linear kernel: probes with ``grad_hidden_err``,
    ``grad_weight_err``, ``grad_bias_err`` (and the stock path's); ``plain``: the plain probe
    suite's document (as ``smcheck kernel`` writes it, without its ``schema``) when it ran."""
    out = _linear_dict(report)
    if report.plain is not None:
        from .kernel import to_dict as plain_dict

        out["plain"] = {k: v for k, v in plain_dict(report.plain).items() if k != "schema"}
    return out


def _linear_dict(report: LinearKernelReport) -> dict[str, Any]:
    return json_clean(
        {
            "schema": "smcheck.kernel/1",
            "target": report.target,
            "linear": True,
            "ok": report.ok,
            "probes": [
                {
                    "name": p.name,
                    "dtype": p.dtype,
                    "status": p.status,
                    "loss_ulps": json_float(p.loss_ulps),
                    "grad_hidden_err": json_float(p.grad_hidden_err),
                    "grad_weight_err": json_float(p.grad_weight_err),
                    "grad_bias_err": json_float(p.grad_bias_err),
                    "stock": {
                        "loss_ulps": json_float(p.stock_loss_ulps),
                        "grad_hidden_err": json_float(p.stock_grad_hidden_err),
                        "grad_weight_err": json_float(p.stock_grad_weight_err),
                        "grad_bias_err": json_float(p.stock_grad_bias_err),
                    },
                    "detail": p.detail,
                }
                for p in report.probes
            ],
        }
    )


def _probe_cells(p: LinearProbeResult) -> list[str]:
    if p.status == "skip":  # nothing was measured: no numbers, not "nan"
        return [p.name, p.dtype, p.status, *["-"] * 5, safe_text(p.detail)]
    return [
        p.name, p.dtype, p.status, fmt_num(p.loss_ulps), fmt_num(p.grad_hidden_err),
        fmt_num(p.grad_weight_err), fmt_num(p.grad_bias_err), fmt_num(p.stock_grad_weight_err),
        safe_text(p.detail),
    ]  # fmt: skip


#: What the plain probes' section says it is.
PLAIN_HEADING = (
    "Plain probes, each probe's logits z handed to the kernel as h = z, W = I (or h = I, W = z^T):"
    " the matmul is exact, so these judge the kernel's softmax and loss (docs/linear.md)"
)


def render_kernel(
    report: LinearKernelReport, fmt: str, *, color: bool = False, width: int | None = None
) -> str:
    """``smcheck kernel --linear``'s report in ``fmt`` (json, table, markdown, github, junit):
    the linear probes, then the plain probe suite's report (``report.plain``) if it ran."""
    if fmt == "json":
        return json.dumps(kernel_to_dict(report), indent=2, allow_nan=False) + "\n"
    text = _render_linear_probes(report, fmt, color=color, width=width)
    if report.plain is None:
        return text
    from .kernel import render as render_plain

    plain = render_plain(report.plain, fmt, color=color, width=width)
    if fmt == "junit":
        probes = (*report.probes, *report.plain.probes)
        counts = tuple(sum(p.status == k for p in probes) for k in ("fail", "skip"))
        return _merge_junit(text, plain, len(probes), *counts)
    if fmt == "github":
        return text + plain
    if fmt == "markdown":
        return f"{text}\n**{PLAIN_HEADING}**\n\n{plain}"
    import textwrap

    heading = textwrap.fill(PLAIN_HEADING, width or DEFAULT_WIDTH)
    return f"{text}\n{heading}\n\n{plain}"


def _merge_junit(linear: str, plain: str, tests: int, failures: int, skipped: int) -> str:
    """One JUnit document: the linear probes' test suite, then the plain suite's (the counts
    are those of both reports)."""
    suites = []
    for doc in (linear, plain):
        lines = doc.splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("  <testsuite "))
        end = max(i for i, ln in enumerate(lines) if ln.startswith("  </testsuite>"))
        suites += lines[start : end + 1]
    head = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="smcheck kernel" tests="{tests}" failures="{failures}" '
        f'skipped="{skipped}">',
    ]
    return "\n".join([*head, *suites, "</testsuites>"]) + "\n"


def _render_linear_probes(
    report: LinearKernelReport, fmt: str, *, color: bool = False, width: int | None = None
) -> str:
    """The linear probes alone in ``fmt`` (not json)."""
    linear_ok = all(p.status != "fail" for p in report.probes)
    verdict = "pass: every linear probe passes" if linear_ok else "fail: a linear probe fails"
    if fmt == "table":
        from rich import box
        from rich.markup import escape as rich_escape
        from rich.table import Table

        # no vertical rules and the details below, as the plain kernel table: the eight
        # columns of names and numbers fit 80 characters whole
        table = Table(
            title=f"linear kernel {rich_escape(safe_text(report.target))}",
            title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
            collapse_padding=True,
        )  # fmt: skip
        style = {"pass": "green", "fail": "bold red", "skip": "yellow"}
        for i, col in enumerate(_PROBE_COLUMNS[:-1]):
            table.add_column(col, no_wrap=True, justify="right" if i > 2 else "left")
        for p in report.probes:
            cells = _probe_cells(p)[:-1]
            cells[2] = f"[{style[p.status]}]{cells[2]}[/]"
            table.add_row(*cells)
        notes = [
            rich_escape(f"{p.status.upper()} {p.name}[{p.dtype}]: {safe_text(p.detail)}")
            for p in report.probes
            if p.status != "pass" and p.detail
        ]
        return render_to_text([table, *notes, verdict], color=color, width=width or DEFAULT_WIDTH)
    if fmt == "github":
        title = gh_escape_property(f"smcheck kernel --linear {safe_text(report.target)}")
        out = [
            f"::error title={title}::{gh_escape_data(' '.join(_probe_cells(p)))}"
            for p in report.probes
            if p.status == "fail"
        ]
        return "\n".join([*out, verdict]) + "\n"
    if fmt == "junit":
        from xml.sax.saxutils import escape, quoteattr

        fails = sum(p.status == "fail" for p in report.probes)
        skips = sum(p.status == "skip" for p in report.probes)
        n = len(report.probes)
        lines = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<testsuites name="smcheck kernel" tests="{n}" failures="{fails}" skipped="{skips}">',
            f"  <testsuite name={quoteattr('linear ' + safe_text(report.target))} "
            f'tests="{n}" failures="{fails}" errors="0" skipped="{skips}">',
        ]
        for p in report.probes:
            head = f"    <testcase classname={quoteattr(p.dtype)} name={quoteattr(p.name)}"
            if p.status == "pass":
                lines.append(head + "/>")
            elif p.status == "skip":
                msg = quoteattr(safe_text(p.detail))
                lines += [head + ">", f"      <skipped message={msg}/>", "    </testcase>"]
            else:
                msg = " ".join(_probe_cells(p))
                lines += [head + ">", f"      <failure message={quoteattr(msg)}>{escape(msg)}"
                          "</failure>", "    </testcase>"]  # fmt: skip
        return "\n".join([*lines, "  </testsuite>", "</testsuites>"]) + "\n"
    lines = [f"**linear kernel {md_cell(report.target)}**", ""]
    lines.append("| " + " | ".join(_PROBE_COLUMNS) + " |")
    lines.append("|" + "---|" * len(_PROBE_COLUMNS))
    lines.extend("| " + " | ".join(md_cell(c) for c in _probe_cells(p)) + " |"
                 for p in report.probes)  # fmt: skip
    return "\n".join([*lines, "", verdict]) + "\n"
