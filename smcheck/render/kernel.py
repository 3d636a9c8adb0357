"""Renderers of a :class:`~smcheck.kernel.KernelReport`: table, json, markdown, github, junit.

One contract, as every command's: ``render(report, fmt, *, color, width)`` chooses from
:data:`RENDERERS`, each a pure function ``(report, *, color, width) -> str``; no I/O, no
numerics. Texts that came from the kernel (its exception messages, its name) were made
printable by :mod:`smcheck.kernel`; each format escapes its own syntax (rich markup, pipes,
XML, GitHub workflow commands) here.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rich import box
from rich.markup import escape as rich_escape
from rich.table import Table
from rich.text import Text

from ..kernel import KernelReport, ProbeResult
from .common import (
    DEFAULT_WIDTH,
    Renderer,
    fmt_num,
    gh_escape_data,
    gh_escape_property,
    render_to_text,
)

__all__ = [
    "RENDERERS",
    "SCHEMA",
    "render_github",
    "render_json",
    "render_junit",
    "render_markdown",
    "render_table",
    "render",
    "summary",
    "to_dict",
]

SCHEMA = "smcheck.kernel/1"
#: Below this width the table leaves out its two limit columns (each failure's line below the
#: table still gives its limits) rather than let rich cut a number into "1.7e-…".
FULL_WIDTH = 100
#: GitHub annotations shown per run (the rest are counted in the last one).
GITHUB_MAX = 10


def _clean(text: str) -> str:
    """Control characters escaped (``\\x1b``): a report is read in terminals and CI logs, and
    XML 1.0 cannot hold them at all. :mod:`smcheck.kernel` already does this to what a kernel
    says; a report built by hand goes through here too."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _num(x: float | None) -> float | str | None:
    """JSON has no inf/NaN: they become the strings "inf"/"nan"."""
    if x is None:
        return None
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def probe_dict(p: ProbeResult) -> dict[str, Any]:
    return {
        "name": p.name,
        "dtype": p.dtype,
        "vocab": p.vocab,
        "rows": p.rows,
        "status": p.status,
        "passed": p.passed,
        "detail": _clean(p.detail),
        "loss_dtype": p.loss_dtype or None,
        "loss_max_ulp_err": _num(p.loss_max_ulp_err),
        "grad_max_err": _num(p.grad_max_err),
        "stock_loss_max_ulp_err": _num(p.stock_loss_max_ulp_err),
        "stock_grad_max_err": _num(p.stock_grad_max_err),
        "max_loss_ulp": _num(p.max_loss_ulp),
        "max_grad_err": _num(p.max_grad_err),
        "worst": [
            {
                "row": w.row,
                "label": w.label,
                "value": _num(w.value),
                "reference": _num(w.reference),
                "error": _num(w.error),
            }
            for w in p.worst
        ],
        "seconds": p.seconds,
    }


def to_dict(r: KernelReport) -> dict[str, Any]:
    """The JSON document (schema ``smcheck.kernel/1``)."""
    return {
        "schema": SCHEMA,
        "target": _clean(r.target),
        "framework": r.framework,
        "device": r.device,
        "stock": r.stock or None,
        "judge": r.judge,
        "gate": r.judge,  # the old name of "judge", kept for one release
        "seed": r.seed,
        "dtypes": list(r.dtypes),
        "vocab": list(r.vocab),
        "ok": r.ok,
        "counts": {
            "probes": len(r.probes),
            "passed": sum(1 for p in r.probes if p.status == "pass"),
            "failed": len(r.failed),
            "skipped": len(r.skipped),
        },
        "probes": [probe_dict(p) for p in r.probes],
        "seconds": r.seconds,
    }


def render_json(r: KernelReport, *, color: bool = False, width: int | None = None) -> str:
    return json.dumps(to_dict(r), indent=2, allow_nan=False) + "\n"


def summary(r: KernelReport) -> str:
    """One line: ``kernel good (torch, cpu): 216 probes, 0 failed, 0 skipped - ok``."""
    verdict = "ok" if r.ok else "FAILED"
    passed = len(r.probes) - len(r.failed) - len(r.skipped)
    return (
        f"kernel {_clean(r.target)} ({r.framework}, {r.device}): {len(r.probes)} probes, {passed} "
        f"passed, {len(r.failed)} failed, {len(r.skipped)} skipped - {verdict}"
    )


def _err_cell(k: float | None, stock: float | None) -> str:
    if k is None:
        return "-"
    text = fmt_num(k, 3)
    if stock is not None:
        text += f" / {fmt_num(stock, 3)}"
    return text


def render_table(r: KernelReport, *, color: bool = False, width: int | None = None) -> str:
    """A rich table: one row per probe run (failures and skips with their detail below)."""
    width = width or DEFAULT_WIDTH
    compact = width < FULL_WIDTH
    title = (
        f"smcheck kernel {rich_escape(_clean(r.target))}: {r.framework} on {r.device}; "
        f"judge {r.judge}" + (f" (stock: {rich_escape(r.stock)})" if r.stock else "")
    )
    # no vertical rules: ten columns of numbers fit 100 characters without truncation
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    table.add_column("probe", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("vocab", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    heads = ("loss ulps", "stock", "limit", "grad err", "stock", "limit")
    keep = [i for i, h in enumerate(heads) if not (compact and h == "limit")]
    for i in keep:
        table.add_column(heads[i], justify="right", no_wrap=True)
    style = {"pass": "green", "fail": "bold red", "skip": "yellow"}

    def cell(x: float | None) -> str:
        return "-" if x is None or math.isnan(x) else fmt_num(x, 2)

    for p in r.probes:
        numbers = (
            cell(p.loss_max_ulp_err),
            cell(p.stock_loss_max_ulp_err),
            cell(p.max_loss_ulp),
            cell(p.grad_max_err),
            cell(p.stock_grad_max_err),
            cell(p.max_grad_err),
        )
        table.add_row(
            p.name,
            p.dtype,
            str(p.vocab),
            Text(p.status, style=style[p.status]),
            *(numbers[i] for i in keep),
        )
    parts: list[Any] = [table]
    for p in (*r.failed, *r.skipped):
        line = Text(f"{p.status.upper()} {p.test_id}: ", style=style[p.status])
        line.append(_clean(p.detail))
        parts.append(line)
    parts.append(Text(summary(r), style="green" if r.ok else "bold red"))
    return render_to_text(parts, color=color, width=width)


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(r: KernelReport, *, color: bool = False, width: int | None = None) -> str:
    """A GitHub-flavoured Markdown table (failures first), for a job summary or a PR comment."""
    lines = [
        f"### smcheck kernel `{_md(_clean(r.target))}`",
        "",
        f"{_md(summary(r))}. Judge: {r.judge}"
        + (f"; stock: `{_md(r.stock)}`" if r.stock else "")
        + ".",
        "",
        "| probe | dtype | vocab | result | loss ulps (kernel / stock) | grad err (kernel / "
        "stock) | detail |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    order = {"fail": 0, "skip": 2, "pass": 1}
    for p in sorted(r.probes, key=lambda p: order[p.status]):
        mark = {"pass": "pass", "fail": "**FAIL**", "skip": "skip"}[p.status]
        lines.append(
            f"| {p.name} | {p.dtype} | {p.vocab} | {mark} | "
            f"{_err_cell(p.loss_max_ulp_err, p.stock_loss_max_ulp_err)} | "
            f"{_err_cell(p.grad_max_err, p.stock_grad_max_err)} | {_md(_clean(p.detail))} |"
        )
    return "\n".join(lines) + "\n"


def render_github(r: KernelReport, *, color: bool = False, width: int | None = None) -> str:
    """``::error`` per failed probe (at most :data:`GITHUB_MAX`), then a ``::notice``."""
    title = gh_escape_property(f"smcheck kernel {_clean(r.target)}")
    fails = [f"{p.test_id}: {_clean(p.detail)}" for p in r.failed]
    if len(fails) > GITHUB_MAX:
        fails = [*fails[: GITHUB_MAX - 1], f"... and {len(fails) - GITHUB_MAX + 1} more"]
    out = [f"::error title={title}::{gh_escape_data(f)}" for f in fails]
    out.append(f"::notice title={title}::{gh_escape_data(summary(r))}")
    return "\n".join(out) + "\n"


def render_junit(r: KernelReport, *, color: bool = False, width: int | None = None) -> str:
    """JUnit XML: one test case per probe run (``classname`` the probe, ``name`` its id)."""
    # imported here: xml.sax pulls in urllib and http (~15 ms of every command's start-up)
    from xml.sax.saxutils import escape, quoteattr

    n, failures, skipped = len(r.probes), len(r.failed), len(r.skipped)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="smcheck kernel" tests="{n}" failures="{failures}" skipped="{skipped}">',
        f'  <testsuite name={quoteattr("smcheck.kernel " + _clean(r.target))} tests="{n}" '
        f'failures="{failures}" errors="0" skipped="{skipped}" time="{r.seconds}">',
        f'    <properties><property name="framework" value={quoteattr(r.framework)}/>'
        f'<property name="device" value={quoteattr(r.device)}/>'
        f'<property name="judge" value={quoteattr(r.judge)}/></properties>',
    ]
    for p in r.probes:
        head = (
            f"    <testcase classname={quoteattr('smcheck.kernel.' + p.name)} "
            f'name={quoteattr(p.test_id)} time="{p.seconds}"'
        )
        if p.status == "pass":
            lines.append(head + "/>")
        else:
            tag = "failure" if p.status == "fail" else "skipped"
            detail = _clean(p.detail)
            lines += [
                head + ">",
                f"      <{tag} message={quoteattr(detail)}>{escape(detail)}</{tag}>",
                "    </testcase>",
            ]
    lines += ["  </testsuite>", "</testsuites>"]
    return "\n".join(lines) + "\n"


#: ``--format`` -> renderer ``(report, *, color, width) -> str``.
RENDERERS: dict[str, Renderer[KernelReport]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "github": render_github,
    "junit": render_junit,
}


def render(report: KernelReport, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    """The report as text in format ``fmt`` (a key of :data:`RENDERERS`); ``width`` is the
    table's (None: 100 columns)."""
    return RENDERERS[fmt](report, color=color, width=width)
