"""Shared rendering helpers: colour policy, rich console to text, number formatting, the escaping
of data text, and the small cell helpers every format uses (JSON numbers, markdown cells).

Data text - a file name, a CSV header, an npz key, a config or baseline value - reaches a
terminal or a CI log only through :func:`safe_text`: such text is not smcheck's to trust.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:  # rich is imported when a table is drawn, not by every command's start-up
    from rich.console import RenderableType

__all__ = [
    "DEFAULT_WIDTH",
    "Renderer",
    "STYLE_OF",
    "fmt_num",
    "gh_escape_data",
    "gh_escape_property",
    "json_clean",
    "json_float",
    "md_cell",
    "plural",
    "render_to_text",
    "safe_text",
    "use_color",
]

#: Verdict -> rich style: green ok, yellow precision loss, red broken.
STYLE_OF = {"ok": "green", "lossy": "yellow", "broken": "red", "inconclusive": "yellow"}

#: Width of a table report that is not going to a terminal (a file, a pipe, a CI log).
DEFAULT_WIDTH = 100

ReportT_contra = TypeVar("ReportT_contra", contravariant=True)


class Renderer(Protocol[ReportT_contra]):
    """The one renderer contract: every format of every command is such a function, pure (no
    I/O, no numerics). ``color``: ANSI styles (the table only); ``width``: the table's width in
    columns (None: the format's default), which the other formats ignore."""

    def __call__(
        self, report: ReportT_contra, /, *, color: bool = False, width: int | None = None
    ) -> str: ...


# What a terminal or a CI log would act on instead of showing: C0 controls (newline and tab
# included: data text is one line), DEL and C1 controls (U+009B is a one-byte CSI), the bidi
# marks, embeddings, overrides and isolates that reorder what a reader sees (U+061C, U+200E-F,
# U+202A-E, U+2066-9), the line and paragraph separators, lone surrogates (the undecodable bytes
# of a file name; unencodable as UTF-8) and the noncharacters U+FFFE-F (forbidden in XML).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]"
)
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    code = ord(ch)
    return _SHORT.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe_text(text: object) -> str:
    """Data text shown escaped: every control character as its backslash escape.

    A file named ``x\\n::stop-commands::tok`` would otherwise start a line that GitHub runs as a
    workflow command, an ESC byte would drive the terminal (whatever ``--color`` says), a bidi
    override would reorder the line a reviewer reads, and XML 1.0 cannot hold most C0 controls
    even as character references. Ordinary text, non-ASCII letters included, is unchanged.

    >>> safe_text("x\\n::stop-commands::tok\\x1b[31m")
    'x\\\\n::stop-commands::tok\\\\x1b[31m'
    >>> safe_text("r\\u00e9sum\\u00e9 \\u202egpj.npy")
    'résumé \\\\u202egpj.npy'
    """
    s = str(text)
    return _UNSAFE.sub(_escape_char, s) if _UNSAFE.search(s) else s


# A line a CI runner would read as a workflow command: GitHub trims leading whitespace, then
# looks for "::". Data text escaped by safe_text is one line, but a table may wrap it so that a
# continuation line starts with it.
_COMMAND_LINE = re.compile(r"^([^\S\n]*)::", re.MULTILINE)


def _no_workflow_commands(text: str) -> str:
    """Break the ``::`` that would start a line: ``:\\x3a`` (a table never means one)."""
    return _COMMAND_LINE.sub(lambda m: m.group(1) + ":\\x3a", text)


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


def render_to_text(
    renderables: list[RenderableType], *, color: bool, width: int = DEFAULT_WIDTH
) -> str:
    """Render rich objects to a string (ANSI codes only when ``color``), no line a workflow
    command."""
    from rich.console import Console

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
    return _no_workflow_commands(buf.getvalue())


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


def json_float(x: float | None) -> float | None:
    """A number for JSON, which has no NaN/inf: such a value is null (counted elsewhere); a
    numpy scalar becomes a Python float.

    >>> json_float(float("inf")), json_float(1), json_float(None)
    (None, 1.0, None)
    """
    return None if x is None or math.isnan(x) or math.isinf(x) else float(x)


def json_clean(x: Any) -> Any:
    """Any value for JSON: a non-finite float becomes null, containers recursively (tuples as
    lists), everything else unchanged.

    >>> json_clean({"a": (1, float("nan")), "b": "x"})
    {'a': [1, None], 'b': 'x'}
    """
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_clean(v) for v in x]
    return x


def plural(n: int, noun: str) -> str:
    """A count and its noun, singular for one: ``1 row``, ``0 rows``, ``2 classes``.

    >>> plural(1, "class"), plural(3, "class"), plural(0, "row")
    ('1 class', '3 classes', '0 rows')
    """
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun}es" if noun.endswith(("s", "x", "ch", "sh")) else f"{n} {noun}s"


def md_cell(text: object) -> str:
    """Data text in a markdown table cell or line: escaped (:func:`safe_text`), ``|`` quoted."""
    return safe_text(text).replace("|", "\\|")


def gh_escape_data(text: str) -> str:
    """GitHub workflow-command message escaping: ``%``, CR and LF (``::error ...::MESSAGE``),
    which GitHub turns back into the characters; then every other control character escaped
    (:func:`safe_text`), which GitHub would pass to the log as it is."""
    return safe_text(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def gh_escape_property(text: str) -> str:
    """GitHub workflow-command property escaping (``title=...``): the message escapes plus
    ``:`` and ``,``, at which GitHub would end the value or split the properties."""
    return gh_escape_data(text).replace(":", "%3A").replace(",", "%2C")
