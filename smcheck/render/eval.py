"""``smcheck eval``'s renderers behind one contract: ``render(report, fmt, *, color, width)``.

The table lives in :mod:`.eval_table`, the machine formats in :mod:`.eval_formats`; this module
is the format table the command chooses from (``--format``).
"""

from __future__ import annotations

from ..evaluate import EvalReport
from .common import Renderer
from .eval_formats import render_github, render_json, render_junit, render_markdown, to_dict
from .eval_table import render_table

__all__ = ["RENDERERS", "render", "to_dict"]

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
