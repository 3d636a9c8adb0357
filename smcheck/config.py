"""Project configuration: ``[tool.smcheck]`` in ``pyproject.toml``, or a ``smcheck.toml``.

Pure: files in, a table of defaults out. The CLI (the only module that knows click) describes
its commands' options as :class:`OptionSpec` and hands the result to click as ``default_map``,
so the command line always wins over the file.

Where the settings come from:

* ``--config FILE`` if given (a ``pyproject.toml`` is read for its ``[tool.smcheck]`` table,
  any other file is the table itself);
* else the nearest of these, walking up from the current directory to the filesystem root:
  ``smcheck.toml``, then ``pyproject.toml`` *with* a ``[tool.smcheck]`` table (a
  ``pyproject.toml`` without one is passed over, so a sub-package's pyproject does not hide
  the project's settings);
* else nothing: every option keeps its built-in default.

Format: top-level keys set an option of every command that has it; a table named after a
command overrides them for that command. Keys are option names, with dashes or underscores::

    [tool.smcheck]
    dtype = "float16"
    methods = ["fused", "log1p"]    # a list is the same as "fused,log1p"

    [tool.smcheck.eval]
    max-loss-ulp = 8
    format = "markdown"

An unknown key, a table for an unknown command, or a key that no command has is a
:class:`~smcheck.errors.UsageError` naming the key and the file (exit 2).

Trust: a file named with ``--config`` is the user's choice and is read as is. A *discovered*
file is someone else's if another user owns it, or its directory (root excepted: it owns
every system directory), or it sits in a directory every user may write (``/tmp``, sticky or
not): like git's ``safe.directory``, smcheck then ignores it with a
one-line warning (and looks no further up) - a stranger must not choose where your reports go
or which scheduler receives your data. Files are read in bounded memory
(:data:`MAX_CONFIG_BYTES`).
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = [
    "CONFIG_NAMES",
    "Effective",
    "OptionSpec",
    "Settings",
    "MAX_CONFIG_BYTES",
    "discover",
    "display_path",
    "effective",
    "find_config",
    "load_settings",
    "normalize_key",
    "read_table",
    "resolve",
    "show_value",
    "untrusted",
]

#: File names looked for in each directory, in this order.
CONFIG_NAMES: tuple[str, ...] = ("smcheck.toml", "pyproject.toml")
#: Largest config file read: a real pyproject.toml is a few kB; ``/dev/zero`` stops here.
MAX_CONFIG_BYTES = 4 * 2**20


@dataclass(frozen=True)
class OptionSpec:
    """One option of one command, as the configuration sees it.

    ``key`` is the name written in the file (the long flag without ``--``: ``max-loss-ulp``);
    ``param`` the name the command receives (click's ``default_map`` key: ``max_loss_ulp``,
    ``fmt`` for ``--format``); ``multiple`` marks a repeatable option: a list stays a list and a
    single value becomes a list of one (for other options a list is joined with commas, the
    form ``--methods`` and ``--gate`` take).
    """

    key: str
    param: str
    multiple: bool = False
    default: Any = None  # the built-in default, shown by ``smcheck config``
    path: bool = False  # names a file: only a string will do (a list or a number is refused)


@dataclass(frozen=True)
class Settings:
    """The effective file settings: click's ``default_map`` and where each value came from."""

    path: Path | None  # the file read, or None
    default_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: command -> param -> the table that set it, e.g. "[tool.smcheck.eval]"
    origin: dict[str, dict[str, str]] = field(default_factory=dict)
    #: True when the user named the file with --config (False: it was discovered)
    explicit: bool = False
    #: one-line warnings for stderr: discovered files ignored as untrusted
    warnings: tuple[str, ...] = ()


def normalize_key(key: str) -> str:
    """``max_loss_ulp``, ``Max-Loss-Ulp`` -> ``max-loss-ulp``: the form keys are matched in."""
    return key.strip().lower().replace("_", "-")


def display_path(path: Path) -> str:
    """The path relative to the current directory when that is shorter (``../pyproject.toml``)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def table_name(path: Path, command: str | None = None) -> str:
    base = "tool.smcheck" if path.name == "pyproject.toml" else ""
    name = ".".join(p for p in (base, command) if p)
    return f"[{name}]" if name else "top level"


def clip(text: str, limit: int = 200) -> str:
    """``text`` on one line: control characters escaped, cut at ``limit`` characters with "…"."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show_value(value: Any, limit: int = 60) -> str:
    """A config value for a one-line message, as TOML writes it: control characters escaped,
    long integers and long texts cut with "…".

    >>> print(show_value(True), show_value("f16"), show_value(10**300))
    true 'f16' an integer of 301 digits
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # beyond sys.get_int_max_str_digits (4300)
            return "an integer of more than 4300 digits"
    if isinstance(value, str):
        return clip(repr(value), limit)
    try:
        text = json.dumps(value, ensure_ascii=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    text = {"Infinity": "inf", "-Infinity": "-inf", "NaN": "nan"}.get(text, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_bytes(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    where = display_path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"config file {where} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {where} is a directory") from None
    except OSError as exc:
        raise UsageError(f"config file {where}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise UsageError(f"config file {where} is larger than {limit // 2**20} MiB")
    return data


def _parse(path: Path) -> dict[str, Any]:
    where = display_path(path)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: not UTF-8 (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {clip(str(exc))}") from None
    except RecursionError:
        raise UsageError(f"{where}: invalid TOML: nested too deeply") from None
    except ValueError:  # int() of a literal beyond the 4300-digit limit
        raise UsageError(f"{where}: invalid TOML: an integer with too many digits") from None


def read_table(path: Path, *, required: bool = True) -> dict[str, Any] | None:
    """The smcheck table of ``path``: ``[tool.smcheck]`` of a pyproject.toml, else the file.

    A pyproject.toml without the table gives None when not ``required`` (discovery walks on)
    and a :class:`UsageError` when it is (the user named that file).
    """
    data = _parse(path)
    if path.name != "pyproject.toml":
        return data
    table = data.get("tool", {}).get("smcheck") if isinstance(data.get("tool"), dict) else None
    if table is None:
        if required:
            raise UsageError(f"{display_path(path)} has no [tool.smcheck] table")
        return None
    if not isinstance(table, dict):
        raise UsageError(f"{display_path(path)}: tool.smcheck must be a table")
    return table


def untrusted(path: Path) -> str | None:
    """Why a discovered config file is not to be trusted, or None when it is.

    Another user's file, a file in another user's directory (they can replace it), or a file
    in a directory every user may write (anyone could have put it there), is not: it could
    send reports over your files or your data to their scheduler.
    """
    try:
        st, parent = path.stat(), path.parent.stat()
    except OSError as exc:
        return f"it cannot be checked ({exc.strerror or exc})"
    geteuid = getattr(os, "geteuid", None)  # Windows: no owners to compare
    if geteuid is not None and st.st_uid != geteuid():
        return f"it is owned by another user (uid {st.st_uid})"
    if geteuid is not None and parent.st_uid not in (geteuid(), 0):
        # the directory's owner can rename any file in it: our own file there is theirs to swap
        where = display_path(path.parent)
        return f"its directory {where} is owned by another user (uid {parent.st_uid})"
    if parent.st_mode & stat.S_IWOTH:
        return f"its directory {path.parent} is writable by every user"
    if st.st_mode & stat.S_IWOTH:
        return "it is writable by every user"
    return None


def discover(start: Path) -> tuple[tuple[Path, dict[str, Any]] | None, tuple[str, ...]]:
    """The nearest trusted config file at or above ``start`` with its smcheck table (or None),
    and warnings about an untrusted one that was ignored (the search stops there)."""
    for directory in (start, *start.parents):
        for name in CONFIG_NAMES:
            candidate = directory / name
            if not candidate.is_file():
                continue
            why = untrusted(candidate)
            if why is None:
                table = read_table(candidate, required=False)
                if table is not None:
                    return (candidate, table), ()
                continue
            try:  # a foreign pyproject.toml without [tool.smcheck] sets nothing: walk on
                has_table = read_table(candidate, required=False) is not None
            except UsageError:
                has_table = True
            if has_table:
                warning = (
                    f"smcheck: warning: ignoring config file {display_path(candidate)}: {why}; "
                    "name it with --config to use it"
                )
                return None, (warning,)
    return None, ()


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest trusted config file at or above ``start`` and its smcheck table, or None."""
    return discover(start)[0]


def _unknown(path: Path, where: str, key: str, choices: list[str], what: str) -> UsageError:
    hint = difflib.get_close_matches(key[:100], choices, n=1)
    also = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of: {', '.join(choices)}"
    return UsageError(
        f"{display_path(path)}: unknown {what} {clip(repr(key), 60)} in {where}{also}"
    )


def _value(spec: OptionSpec, value: Any, path: Path, where: str) -> Any:
    if isinstance(value, dict):
        raise UsageError(
            f"{display_path(path)}: {spec.key} in {where} must be a value, not a table"
        )
    if spec.path and not isinstance(value, str):
        # ["a", "b"] would be joined into a file named "a,b", 5 read as the file "5"
        raise UsageError(
            f"{display_path(path)}: {spec.key} = {show_value(value)} in {where}: expected a "
            "file name (a string)"
        )
    if spec.multiple:  # a repeatable option: one value is a list of one
        return value if isinstance(value, list) else [value]
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def resolve(
    table: Mapping[str, Any], path: Path, commands: Mapping[str, Mapping[str, OptionSpec]]
) -> Settings:
    """Turn a smcheck table into click's ``default_map``, checking every key.

    ``commands`` maps each configurable command to its options, keyed by
    :func:`normalize_key` of the option name (the long flag without ``--``).
    Top-level keys apply to every command that has the option; a command's table overrides
    them. Raises :class:`UsageError` naming the key and the file for anything unknown.

    >>> specs = {"eval": {"dtype": OptionSpec("dtype", "dtype")},
    ...          "sweep": {"dtype": OptionSpec("dtype", "dtype"),
    ...                    "steps": OptionSpec("steps", "steps")}}
    >>> s = resolve({"dtype": "float16", "sweep": {"dtype": "bf16"}}, Path("smcheck.toml"), specs)
    >>> s.default_map
    {'eval': {'dtype': 'float16'}, 'sweep': {'dtype': 'bf16'}}
    >>> resolve({"step": 3}, Path("smcheck.toml"), specs)
    Traceback (most recent call last):
    ...
    smcheck.errors.UsageError: smcheck.toml: unknown key 'step' in top level; did you mean 'steps'?
    """
    default_map: dict[str, dict[str, Any]] = {name: {} for name in commands}
    origin: dict[str, dict[str, str]] = {name: {} for name in commands}
    all_keys = sorted({k for opts in commands.values() for k in opts})
    top = table_name(path)
    per_command: list[tuple[str, Mapping[str, Any]]] = []
    for raw_key, value in table.items():
        if isinstance(value, dict):
            if raw_key not in commands:
                raise _unknown(path, top, raw_key, sorted(commands), "command table")
            per_command.append((raw_key, value))
            continue
        key = normalize_key(raw_key)
        owners = [name for name, opts in commands.items() if key in opts]
        if not owners:
            raise _unknown(path, top, raw_key, all_keys, "key")
        for name in owners:
            spec = commands[name][key]
            default_map[name][spec.param] = _value(spec, value, path, top)
            origin[name][spec.param] = top
    for name, sub in per_command:
        where = table_name(path, name)
        for raw_key, value in sub.items():
            key = normalize_key(raw_key)
            if key not in commands[name]:
                raise _unknown(path, where, raw_key, sorted(commands[name]), f"{name} option")
            spec = commands[name][key]
            default_map[name][spec.param] = _value(spec, value, path, where)
            origin[name][spec.param] = where
    return Settings(
        path,
        {k: v for k, v in default_map.items() if v},
        {k: v for k, v in origin.items() if v},
    )


def load_settings(
    commands: Mapping[str, Mapping[str, OptionSpec]],
    *,
    config: Path | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Read ``config`` (or the nearest config file above ``cwd``) and :func:`resolve` it."""
    if config is not None:
        table = read_table(config, required=True)
        assert table is not None
        s = resolve(table, config, commands)
        return Settings(s.path, s.default_map, s.origin, explicit=True)
    found, warnings = discover((cwd or Path.cwd()).resolve())
    if found is None:
        return Settings(None, warnings=warnings)
    return resolve(found[1], found[0], commands)


@dataclass(frozen=True)
class Effective:
    """One option's effective default and its source (``default`` or ``file:PATH [TABLE]``)."""

    command: str
    key: str
    value: Any
    source: str


def effective(
    settings: Settings, commands: Mapping[str, Mapping[str, OptionSpec]]
) -> list[Effective]:
    """Every option of every command with the value it gets when the command line is silent.

    >>> specs = {"eval": {"dtype": OptionSpec("dtype", "dtype"),
    ...                   "top": OptionSpec("top", "top_k", default=10)}}
    >>> s = resolve({"dtype": "float16"}, Path("smcheck.toml"), specs)
    >>> [(e.key, e.value, e.source) for e in effective(s, specs)]
    [('dtype', 'float16', 'file:smcheck.toml top level'), ('top', 10, 'default')]
    """
    out = []
    for name, opts in commands.items():
        values = settings.default_map.get(name, {})
        origin = settings.origin.get(name, {})
        # an option's old flag is a key of its own (sweep's `jobs` beside `workers`): once each
        for spec in {spec.param: spec for spec in opts.values()}.values():
            if spec.param in values:
                assert settings.path is not None
                where = f"file:{display_path(settings.path)} {origin[spec.param]}"
                out.append(Effective(name, spec.key, values[spec.param], where))
            else:
                out.append(Effective(name, spec.key, spec.default, "default"))
    return out
