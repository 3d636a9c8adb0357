"""The ``smcheck`` command line: a click group whose commands live one per module here.

This package is the only place that imports click. Each command parses its options, calls one
analysis from the library, renders the report with a pure renderer and picks the exit code:

* 0 - every gated check passed
* 1 - a gated check failed (findings)
* 2 - bad usage or bad input: one line on stderr naming the file, row/column and problem
* 3 - internal error (a bug in smcheck: please report it)

Settings from ``[tool.smcheck]`` in the nearest ``pyproject.toml`` or a ``smcheck.toml`` (see
:mod:`smcheck.config`) become click's ``default_map`` in the group callback: a file value
replaces an option's built-in default, and the command line still wins over both.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..config import (
    OptionSpec,
    Settings,
    clip,
    display_path,
    load_settings,
    normalize_key,
    show_value,
    table_name,
)
from ..errors import SmcheckError, UsageError
from ..render.common import safe_text

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


#: Every command: the module of this package that defines it, and its one-line help as
#: ``smcheck --help`` lists it (the first paragraph of the command's docstring; a test keeps the
#: two equal). A command's module - and with it the analysis behind it - is imported only when
#: that command runs or its help is shown: importing them all made ``smcheck --help`` take
#: ~0.9 s. Registration order: the order ``smcheck config`` lists the commands in.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": (
        "eval_cmd",
        "Audit the softmax cross-entropy of LOGITS: each method's loss and gradient in the "
        "working dtype against a high-precision reference on the same rounded logits.",
    ),
    "gradcheck": (
        "gradcheck_cmd",
        "Check each method's gradient dL/dz, computed in the working dtype, against the truth: "
        "complex-step derivatives in complex128 (binary128 for float64), confirmed by central "
        "differences (Richardson) in the reference's high precision and by the reference's own "
        "gradient - all on the same rounded logits.",
    ),
    "sweep": (
        "sweep_cmd",
        "Map where each softmax cross-entropy formulation breaks as the logits grow.",
    ),
    "compare": (
        "compare_cmd",
        "Compare a kernel's dumped loss (and gradient) with the reference computed on the same "
        "logits rounded to the working dtype: loss error in ulps and bits (max, p99, median, "
        "histogram), gradient error, NaN/inf where the reference is finite (and the reverse), "
        "the worst rows with their logit statistics, and a verdict.",
    ),
    "config": (
        "config_cmd",
        "Show the settings each command runs with when the command line does not set them, and "
        "where each comes from: the built-in default or the config file (the nearest "
        "smcheck.toml or pyproject.toml with [tool.smcheck], or --config FILE). Lists every "
        "command, or those named.",
    ),
    "kernel": (
        "kernel_cmd",
        "Audit a cross-entropy implementation by running it: TARGET is module:function or "
        "path/to/file.py:function, with torch.nn.functional.cross_entropy's interface "
        "fn(logits, labels, **options) -> loss (options it does not accept are skipped probes).",
    ),
}


class _Commands(dict[str, click.Command]):
    """A group's command table: a command of ``table`` (name -> (module, short help), as
    :data:`COMMANDS`) is imported when first looked up. Its module registers it
    (``@cli.command``); a module that is missing or registers nothing is an error, never a
    command silently absent."""

    def __init__(
        self, table: Mapping[str, tuple[str, str]], registered: Mapping[str, click.Command]
    ) -> None:
        super().__init__(registered)
        self.table = table

    def _load(self, name: str) -> click.Command | None:
        if dict.__contains__(self, name) or name not in self.table:
            return dict.get(self, name)
        module = f"{__name__}.{self.table[name][0]}"
        importlib.import_module(module)
        if not dict.__contains__(self, name):
            raise RuntimeError(f"{module} did not register the command {name!r}")
        return dict.__getitem__(self, name)

    def __missing__(self, name: str) -> click.Command:
        cmd = self._load(name)
        if cmd is None:
            raise KeyError(name)
        return cmd

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self.table

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        cmd = self._load(name)
        return default if cmd is None else cmd

    def loaded(self, name: str) -> click.Command | None:
        """The command if its module has been imported, else None (nothing is imported)."""
        return dict.get(self, name)

    def names(self) -> list[str]:
        """Every command, registered or not yet imported: the table's order, then others."""
        return [*self.table, *(n for n in dict.keys(self) if n not in self.table)]


class SmcheckGroup(click.Group):
    """Turns smcheck's own errors into one line and exit 2; anything unexpected into exit 3.

    Commands are imported lazily (:data:`COMMANDS`): ``--help`` lists them from the table
    without importing any.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(COMMANDS, self.commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_names(self))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's command list, with the short help of a command not yet imported taken
        from :data:`COMMANDS` (the same text click makes from its docstring)."""
        commands = self.commands
        table = commands.table if isinstance(commands, _Commands) else {}
        rows: list[tuple[str, click.Command | None]] = []  # None: not imported yet
        for name in self.list_commands(ctx):
            cmd = commands.loaded(name) if isinstance(commands, _Commands) else commands.get(name)
            if cmd is None and name in table or cmd is not None and not cmd.hidden:
                rows.append((name, cmd))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        # a stand-in command with the table's text shortens it exactly as click would
        shown = [
            (name, (cmd or click.Command(name, help=table[name][1])).get_short_help_str(limit))
            for name, cmd in rows
        ]
        with formatter.section("Commands"):
            formatter.write_dl(shown)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """click's main, with help and version text that cannot be written being an error.

        ``--help``/``--version`` print while the options are parsed, outside :meth:`invoke`:
        with stdout on /dev/full click let the OSError out as a traceback, and with stdout
        closed (``sys.stdout`` is None) it printed nothing and exited 0.
        """
        closed = sys.stdout is None
        if closed:
            sys.stdout = _ClosedStdout()
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:  # EPIPE is click's own (exit 1, quietly); ENOSPC, EIO, EBADF
            why = exc.strerror or type(exc).__name__
            if "standard output" not in why:
                why += " writing to standard output"
            click.echo(f"smcheck: error: {why[:1].lower()}{why[1:]}", err=True)
            _silence_stdout()
            sys.exit(EXIT_USAGE)
        finally:
            if closed:
                sys.stdout = None  # type: ignore[assignment]

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SmcheckError as exc:  # its text may quote data: a file name, a header, a key
            click.echo(f"smcheck: error: {safe_text(exc)}", err=True)
            ctx.exit(EXIT_USAGE)
        except click.ClickException as exc:  # may quote an argument: a file name from a glob
            exc.__dict__["message"] = safe_text(exc.message)  # typed Final; show() reads it
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("smcheck: interrupted", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("smcheck: error: out of memory", err=True)
            ctx.exit(EXIT_INTERNAL)
        except Exception as exc:  # a bug: say so in one line, keep the traceback opt-in
            if ctx.obj and ctx.obj.get("debug") or _stdout_failed(exc):
                raise  # a subcommand's --help on a full or closed stdout: main says it
            name = type(exc).__name__
            click.echo(
                f"smcheck: internal error: {name}: {safe_text(exc)} (rerun with --debug for a "
                "traceback)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


class _ClosedStdout:
    """``sys.stdout`` while smcheck runs with fd 1 closed: any write is an error (click.echo
    would drop text for a None stdout), and the report's writer still sees it as closed."""

    smcheck_closed = True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _stdout_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is click failing to print help text (no file named: not an input's or
    an output file's error, which smcheck reports itself)."""
    return (
        isinstance(exc, OSError)
        and exc.filename is None
        and exc.errno in (errno.ENOSPC, errno.EBADF, errno.EIO, errno.EDQUOT)
    )


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's last flush of stdout does not fail again."""
    stream = sys.stdout
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)


#: Commands whose options a config file cannot set (``config`` only reports the others).
UNCONFIGURABLE = frozenset({"config"})


def _key_of(param: click.Parameter) -> str:
    """The name a config file uses for an option: its long flag without ``--``."""
    long = [o for o in param.opts if o.startswith("--")]
    return normalize_key(long[0][2:] if long else str(param.name))


def _builtin_default(param: click.Parameter, cmd: click.Command) -> Any:
    """The option's own default (not a config file's): a context without a default_map."""
    value = param.get_default(click.Context(cmd), call=True)
    # click >= 8.2 gives a private UNSET sentinel for options declared without a default
    plain = (str, int, float, bool, list, tuple, type(None))
    return value if isinstance(value, plain) else None


def _names(group: click.Group) -> list[str]:
    commands = group.commands
    return commands.names() if isinstance(commands, _Commands) else list(commands)


def option_specs(group: click.Group) -> dict[str, dict[str, OptionSpec]]:
    """What a config file may set: every visible option of every command, by its long name
    (this imports every command)."""
    specs: dict[str, dict[str, OptionSpec]] = {}
    for name in _names(group):
        if name in UNCONFIGURABLE:
            continue
        cmd = group.commands[name]
        opts: dict[str, OptionSpec] = {}
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden or p.name is None:
                continue
            key = _key_of(p)
            default = _builtin_default(p, cmd)
            spec = OptionSpec(key, p.name, bool(p.multiple), default, p.metavar == "FILE")
            # an option's other long flags are keys too (sweep's old `jobs` beside `workers`)
            for alias in (normalize_key(o[2:]) for o in p.opts if o.startswith("--")):
                opts.setdefault(alias, spec)
        specs[name] = opts
    return specs


def _toml_type_error(param: click.Parameter, value: Any) -> str | None:
    """Why a TOML value does not fit the option's type, or None.

    Stricter than the command line, where every value is text: click would read ``top = 3.5``
    as 3 and ``top = true`` as 1 (``int(True)``), and take ``chunk-mb = inf``.
    """
    values = value if param.multiple and isinstance(value, list) else [value]
    kind = param.type
    for v in values:
        if isinstance(v, dict | list):
            return "expected a single value"
        if getattr(param, "is_flag", False) or isinstance(kind, click.types.BoolParamType):
            if not isinstance(v, bool):
                return "expected true or false"
        elif isinstance(kind, click.types.IntParamType):
            if isinstance(v, bool) or not isinstance(v, int):
                return "expected an integer"
            if not -(2**63) <= v < 2**63:
                return "out of range"
        elif isinstance(kind, click.types.FloatParamType):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return "expected a number"
            if isinstance(v, float) and not math.isfinite(v):
                return "expected a finite number"
        elif isinstance(kind, click.Choice):
            if not isinstance(v, str):
                return "expected a string"
        elif isinstance(v, bool | float):  # text options; an integer reads as its digits
            return "expected a string"
    return None


def _word_error(param_name: str, value: Any) -> str | None:
    """Why a text value the command parses itself (dtype, accum, methods) is bad, or None.

    Checked here so the error names the config file; the command would only say
    ``unknown dtype 'float17'``, and leave the user looking for where it came from.
    """
    from ..precisions import get_precision
    from .options import parse_methods

    try:
        if param_name in ("dtype", "dtypes"):
            for v in value if isinstance(value, list) else [value]:
                for item in str(v).split(","):
                    if item.strip():
                        get_precision(item.strip())
        elif param_name == "accum" and value not in (None, "working"):
            get_precision(str(value))
        elif param_name == "methods":
            parse_methods(str(value))
    except (SmcheckError, ValueError, TypeError) as exc:
        return str(exc)
    return None


def _check_types(ctx: click.Context, group: click.Group, settings: Settings) -> None:
    """Convert each file value as the command line would, so a bad one names the file.

    A top-level key applies to every command with an option of that name; where one command's
    option rejects the value that another command's accepts (``case = "margin"`` is sweep's),
    the key is dropped for the command that rejects it. A value no command accepts, or a bad one
    in a command's own table, is an error naming the file, key and table.
    """
    assert settings.path is not None or not settings.default_map
    failures: dict[tuple[str, str], str] = {}
    for name, values in settings.default_map.items():
        params = {p.name: p for p in group.commands[name].params}
        for param_name, value in values.items():
            wrong = _toml_type_error(params[param_name], value) or _word_error(param_name, value)
            if wrong is not None:
                failures[name, param_name] = wrong
                continue
            try:
                params[param_name].type_cast_value(ctx, value)
            except click.BadParameter as exc:
                failures[name, param_name] = exc.message
            except (TypeError, ValueError, AttributeError, OverflowError):  # a number for a flag
                failures[name, param_name] = "not a valid value"
    top = table_name(settings.path) if settings.path is not None else ""

    def key(name: str, param_name: str) -> str:
        return _key_of({p.name: p for p in group.commands[name].params}[param_name])

    accepted_keys = {
        key(name, param_name)
        for name, values in settings.default_map.items()
        for param_name in values
        if settings.origin[name][param_name] == top and (name, param_name) not in failures
    }
    for (name, param_name), message in failures.items():
        where = settings.origin[name][param_name]
        accepted = key(name, param_name) in accepted_keys
        if where == top and accepted:
            del settings.default_map[name][param_name]  # meant for another command
            continue
        assert settings.path is not None
        param = {p.name: p for p in group.commands[name].params}[param_name]
        value = settings.default_map[name][param_name]
        raise UsageError(
            f"{display_path(settings.path)}: {_key_of(param)} = {show_value(value)} in {where}: "
            f"{clip(message, 120)}"
        )


class _LazySpecs(Mapping[str, dict[str, OptionSpec]]):
    """:func:`option_specs` of a group, computed on first use: with no config file, a command
    runs without importing the others."""

    def __init__(self, group: click.Group) -> None:
        self._group = group
        self._specs: dict[str, dict[str, OptionSpec]] | None = None

    def _get(self) -> dict[str, dict[str, OptionSpec]]:
        if self._specs is None:
            self._specs = option_specs(self._group)
        return self._specs

    def __getitem__(self, name: str) -> dict[str, OptionSpec]:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


#: Settings that decide where data is sent; with every option that names an output path
#: (:func:`writes_path`) they are announced on stderr when a discovered file sets them, so no
#: file silently redirects a report, a table or a plot.
ANNOUNCED = ("engine", "scheduler")

#: How the help of an option that names a file it writes begins ("Write the report to FILE",
#: "Also draw ... to FILE", "Save this run's report ...").
_WRITE_VERBS = ("write ", "also write ", "save ", "also draw ", "draw ")


def writes_path(param: click.Parameter) -> bool:
    """Whether ``param`` names a file the command writes (--output, --per-row, --plot,
    --write-baseline, and any later one whose help says it writes FILE)."""
    help_text = (getattr(param, "help", None) or "").lower()
    return param.metavar == "FILE" and help_text.startswith(_WRITE_VERBS)


def announced(params: Iterable[click.Parameter]) -> list[str]:
    """The names of ``params`` a discovered config file may set only with a note on stderr."""
    return [p.name for p in params if p.name and (p.name in ANNOUNCED or writes_path(p))]


def _announce(ctx: click.Context, group: click.Group, settings: Settings) -> None:
    """Say which output/engine settings a discovered file gives the command about to run;
    refuse a scheduler from any file but one named with --config (it receives the data)."""
    name = ctx.invoked_subcommand
    if settings.path is None or name is None:
        return
    values = settings.default_map.get(name, {})
    params = {p.name: p for p in group.commands[name].params} if name in group.commands else {}
    present = [p for p in announced(params.values()) if p in values]
    where = {p: f"{display_path(settings.path)} {settings.origin[name][p]}" for p in present}
    if "scheduler" in present and not settings.explicit:
        raise UsageError(
            f"{where['scheduler']}: scheduler = {show_value(values['scheduler'])}: a Dask "
            "scheduler is taken from a config file only when --config names that file"
        )
    if settings.explicit:
        return
    for param_name in present:
        key = _key_of(params[param_name])
        shown = show_value(values[param_name])
        click.echo(f"smcheck: note: {key} = {shown} from {where[param_name]}", err=True)


@click.group(cls=SmcheckGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smcheck")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read settings from FILE (a smcheck.toml, or a pyproject.toml's [tool.smcheck]). "
    "Default: the nearest smcheck.toml or pyproject.toml with [tool.smcheck], from the current "
    "directory up.",
)
@click.option("--no-config", is_flag=True, help="Ignore config files: built-in defaults only.")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error (exit 3).")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, no_config: bool, debug: bool) -> None:
    """Audit softmax cross-entropy numerics: loss and gradient of each formulation, in the
    precision you name, against a high-precision reference.

    Option defaults can live in [tool.smcheck] of the nearest pyproject.toml, or in a
    smcheck.toml; 'smcheck config' shows each command's settings and where they come from.

    Example: smcheck eval logits.npy --labels labels.npy --dtype float16
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if no_config and config_file is not None:
        raise UsageError("--config and --no-config exclude each other")
    group = ctx.command
    assert isinstance(group, click.Group)
    specs = _LazySpecs(group)  # read only when a config file is there: it imports every command
    settings = Settings(None) if no_config else load_settings(specs, config=config_file)
    for warning in settings.warnings:
        click.echo(warning, err=True)
    _check_types(ctx, group, settings)
    _announce(ctx, group, settings)
    ctx.obj["settings"] = settings
    ctx.obj["option_specs"] = specs
    # the file replaces built-in defaults; a default_map given by the caller (tests) wins
    merged = {name: dict(values) for name, values in settings.default_map.items()}
    for name, values in (ctx.default_map or {}).items():
        merged.setdefault(name, {}).update(values)
    ctx.default_map = merged


def main() -> None:  # pragma: no cover - console entry point wrapper
    sys.exit(cli())
