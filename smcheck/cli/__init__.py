"""The ``smcheck`` command line: a click group whose commands live one per module here.

This package is the only place that imports click. Each command parses its options, calls one
analysis from the library, renders the report with a pure renderer and picks the exit code:

* 0 - every gated check passed
* 1 - a gated check failed (findings)
* 2 - bad usage or bad input: one line on stderr naming the file, row/column and problem
* 3 - internal error (a bug in smcheck: please report it)
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from ..errors import SmcheckError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class SmcheckGroup(click.Group):
    """Turns smcheck's own errors into one line and exit 2; anything unexpected into exit 3."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SmcheckError as exc:
            click.echo(f"smcheck: error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("smcheck: interrupted", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("smcheck: error: out of memory", err=True)
            ctx.exit(EXIT_INTERNAL)
        except Exception as exc:  # a bug: say so in one line, keep the traceback opt-in
            if ctx.obj and ctx.obj.get("debug"):
                raise
            name = type(exc).__name__
            click.echo(
                f"smcheck: internal error: {name}: {exc} (rerun with --debug for a traceback)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=SmcheckGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smcheck")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Audit softmax cross-entropy numerics: loss and gradient of each formulation, in the
    precision you name, against a high-precision reference."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Commands register themselves on import; a missing module just means a command is absent.
    import importlib

    for mod in ("eval_cmd", "gradcheck_cmd", "sweep_cmd", "compare_cmd", "config_cmd"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise


_register()


def main() -> None:  # pragma: no cover - console entry point wrapper
    sys.exit(cli())
