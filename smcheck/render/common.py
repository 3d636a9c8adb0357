"""Shared rendering helpers: colour policy, rich console to text, number formatting, verdicts."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping

from rich.console import Console, RenderableType

__all__ = [
    "STYLE_OF",
    "fmt_num",
    "gh_escape_data",
    "gh_escape_property",
    "render_to_text",
    "use_color",
]

#: Verdict -> rich style: green ok, yellow precision loss, red broken.
STYLE_OF = {"ok": "green", "lossy": "yellow", "broken": "red", "inconclusive": "yellow"}


def use_color(choice: str, is_tty: bool, env: Mapping[str, str] | None = None) -> bool:
    """Decide colour: ``always``/``never`` win; ``auto`` follows NO_COLOR > FORCE_COLOR > tty.

    NO_COLOR (any non-empty value, no-color.org) beats FORCE_COLOR, which beats the terminal test.
    """
    env = os.environ if env is None else env
    if choice == "always":
        return True
    if choice == "never":
        return False
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    return is_tty


def render_to_text(renderables: list[RenderableType], *, color: bool, width: int = 100) -> str:
    """Render rich objects to a string (ANSI codes only when ``color``)."""
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width,
        color_system="truecolor" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
        legacy_windows=False,
    )
    for r in renderables:
        console.print(r)
    return buf.getvalue()


def fmt_num(x: float | int | None, digits: int = 3) -> str:
    """Compact human number: ``-`` for None, ints plainly, floats with ``digits`` significant."""
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def gh_escape_data(text: str) -> str:
    """GitHub workflow-command message escaping: ``%``, CR and LF (``::error ...::MESSAGE``)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gh_escape_property(text: str) -> str:
    """GitHub workflow-command property escaping (``title=...``): the message escapes plus
    ``:`` and ``,``, at which GitHub would end the value or split the properties."""
    return gh_escape_data(text).replace(":", "%3A").replace(",", "%2C")
