"""The end every command shares: render, emit, "nothing checked", baseline, exit code.

A command parses its options, calls one analysis and hands the report to :func:`finish`::

    tail = Tail("eval", fmt, color, output, inputs, exit_zero=exit_zero, baseline=baseline,
                write_baseline=write_baseline, regression_factor=regression_factor)
    tail.start()  # before any work: a bad output or baseline costs nothing (exit 2)
    report = evaluate(...)
    finish(tail, report, render, to_dict(report), ok=report.ok, identity=...)

so that what the four commands do after their analysis - and the order of it - is written once.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, NoReturn, TypeVar

import click

from ..baseline import DEFAULT_FACTOR
from ..render.common import safe_text
from .baseline_opts import finish_baseline, start_baseline
from .options import check_output, emit, exit_code, wants_color

__all__ = ["MIN_WIDTH", "Tail", "finish", "table_width"]

R = TypeVar("R")

#: The narrowest table drawn: below it rich would break every cell into single letters.
MIN_WIDTH = 60


def table_width(
    output: str | None, stream: Any = None, env: Mapping[str, str] | None = None
) -> int | None:
    """The width of a table report: None (the format's default, 100 columns) for a file; for
    stdout ``COLUMNS`` when it is set, else the terminal's width, else None (a pipe, a CI log).
    At least :data:`MIN_WIDTH`.

    >>> table_width(None, env={"COLUMNS": "80"}), table_width("r.txt", env={"COLUMNS": "80"})
    (80, None)
    """
    if output is not None and output != "-":
        return None  # a file is read later, elsewhere: the same width everywhere
    env = os.environ if env is None else env
    columns = env.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return None
    width = shutil.get_terminal_size(fallback=(0, 0)).columns
    return max(width, MIN_WIDTH) if width > 0 else None


@dataclass(frozen=True)
class Tail:
    """The output side of a command line: the report's format and destination, the inputs it
    must never overwrite, and the options that decide the exit status."""

    command: str
    fmt: str
    color: str
    output: str | None
    inputs: Sequence[str | None] = ()
    _: KW_ONLY  # the rest by name: two of them are str | None paths, easily swapped
    exit_zero: bool = False
    baseline: str | None = None
    write_baseline: str | None = None
    regression_factor: float = DEFAULT_FACTOR

    def start(self, other_outputs: Mapping[str, str | None] | None = None) -> None:
        """Before any work (exit 2, nothing computed): ``--output`` must not be an input; the
        baseline must be a readable one of this command; ``--write-baseline`` must be neither
        an input nor ``--output`` nor one of ``other_outputs`` (option -> path)."""
        inputs = [i for i in self.inputs if i]
        check_output(self.output, inputs)
        outputs = {"--output": self.output, **(other_outputs or {})}
        start_baseline(self.command, self.baseline, self.write_baseline, inputs, outputs)


def finish(
    tail: Tail,
    report: R,
    renderer: Callable[..., str],
    doc: dict[str, Any],
    *,
    ok: bool,
    identity: dict[str, Any] | Callable[[], dict[str, Any]],
    unchecked: str | None = None,
    unexcused: bool = False,
) -> NoReturn:
    """Render and emit the report, say when nothing was checked, compare with or write the
    baseline, and exit.

    ``renderer(report, fmt, color=, width=)`` is the command's :func:`render`; ``doc`` its JSON
    document (what a baseline holds); ``ok`` whether every gated check passed. ``unchecked``
    is the verdict of a run that checked nothing: it goes to stderr too, and the run fails
    (exit 1, 0 with ``--exit-zero``) whatever a baseline says - as it does when ``unexcused``
    (a failure no baseline excuses, e.g. an untrusted truth).
    """
    inputs = [i for i in tail.inputs if i]
    color = wants_color(tail.color, output=tail.output)
    width = table_width(tail.output)
    emit(renderer(report, tail.fmt, color=color, width=width), tail.output, inputs)
    if unchecked is not None:
        click.echo(f"smcheck: {safe_text(unchecked)}", err=True)
    code = finish_baseline(
        tail.command, doc, identity, exit_code(ok, tail.exit_zero), tail.baseline,
        tail.write_baseline, tail.regression_factor, tail.exit_zero, inputs,
    )  # fmt: skip
    if unchecked is not None or unexcused:
        code = exit_code(False, tail.exit_zero)
    click.get_current_context().exit(code)
