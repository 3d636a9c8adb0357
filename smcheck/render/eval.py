"""``smcheck eval``'s renderers behind one contract: ``render(report, fmt, *, color, width)``.

The table lives in :mod:`.eval_table`, the machine formats in :mod:`.eval_formats`; this module
is the format table the command chooses from (``--format``).
"""

from __future__ import annotations

from ..evaluate import EvalReport
from .common import Renderer
from .eval_formats import render_github, render_json, render_junit, render_markdown, to_dict

__all__ = ["RENDERERS", "render", "to_dict"]


def render_table(report: EvalReport, *, color: bool = False, width: int | None = None) -> str:
    """:func:`smcheck.render.eval_table.render_table`, imported when a table is drawn: rich
    (~30 ms) is not part of a JSON run's start-up."""
    from .eval_table import render_table as table

    return table(report, color=color, width=width)


#: ``--format`` -> renderer ``(report, *, color, width) -> str``.
RENDERERS: dict[str, Renderer[EvalReport]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "github": render_github,
    "junit": render_junit,
}


def render(report: EvalReport, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    """The report as text in format ``fmt`` (a key of :data:`RENDERERS`); ``width`` is the
    table's (None: 100 columns)."""
    return RENDERERS[fmt](report, color=color, width=width)
