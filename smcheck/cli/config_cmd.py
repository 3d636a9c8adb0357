"""``smcheck config``: the settings each command runs with, and where each one came from."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from ..config import Effective, Settings, display_path, effective
from ..errors import UsageError
from ..render.common import safe_text
from . import EXIT_OK, cli
from .options import emit


def _show(value: Any) -> str:
    """A value as it would be typed: ``-`` for unset (the command chooses), lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def render_config_text(path: str | None, rows: list[Effective]) -> str:
    """One block per command: option, value, source - aligned columns, no colour."""
    lines = [f"config file: {safe_text(path or 'none found')}"]  # a file's text is data
    lines.append("(values on the command line override every value below)")
    commands: dict[str, list[Effective]] = {}
    for r in rows:
        commands.setdefault(r.command, []).append(r)
    for name, items in commands.items():
        table = [("option", "value", "source")]
        table += [(safe_text(r.key), safe_text(_show(r.value)), safe_text(r.source)) for r in items]
        w0 = max(len(t[0]) for t in table)
        w1 = max(len(t[1]) for t in table)
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"  {a.ljust(w0)}  {b.ljust(w1)}  {c}".rstrip() for a, b, c in table)
    return "\n".join(lines) + "\n"


def render_config_json(path: str | None, rows: list[Effective]) -> str:
    """``{"config_file": ..., "commands": {command: {option: {"value", "source"}}}}``."""
    commands: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        value = list(r.value) if isinstance(r.value, tuple) else r.value
        commands.setdefault(r.command, {})[r.key] = {"value": value, "source": r.source}
    return json.dumps({"config_file": path, "commands": commands}, indent=2) + "\n"


#: --format -> pure renderer (config file shown, effective settings) -> text.
RENDERERS: dict[str, Callable[[str | None, list[Effective]], str]] = {
    "table": render_config_text,
    "json": render_config_json,
}


@cli.command("config")
@click.argument("commands", nargs=-1, metavar="[COMMAND]...")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(list(RENDERERS)),
    default="table",
    show_default=True,
    help="Report format.",
)
@click.pass_context
def config_cmd(ctx: click.Context, commands: tuple[str, ...], fmt: str) -> None:
    """Show the settings each command runs with when the command line does not set them, and
    where each comes from: the built-in default or the config file (the nearest smcheck.toml
    or pyproject.toml with [tool.smcheck], or --config FILE). Lists every command, or those
    named.

    Example: smcheck config eval
    """
    settings: Settings = ctx.obj["settings"]
    specs = ctx.obj["option_specs"]
    unknown = [c for c in commands if c not in specs]
    if unknown:
        raise UsageError(
            f"unknown command {unknown[0]!r}; configurable commands: {', '.join(specs)}"
        )
    chosen = {name: opts for name, opts in specs.items() if not commands or name in commands}
    path = None if settings.path is None else display_path(settings.path)
    emit(RENDERERS[fmt](path, effective(settings, chosen)), None)  # a closed stdout: exit 2
    ctx.exit(EXIT_OK)
