"""``--baseline`` / ``--write-baseline`` for any command that has a JSON report.

A command adopts them with one decorator, one check before its work and one call at its end::

    @baseline_options()
    def eval_cmd(..., baseline, write_baseline, regression_factor):
        start_baseline("eval", baseline, write_baseline, inputs, {"--output": output})
        ...
        code = exit_code(report.ok, exit_zero)
        code = finish_baseline("eval", report_dict, lambda: input_identity(logits, labels),
                               code, baseline, write_baseline, regression_factor, exit_zero,
                               inputs)
        ctx.exit(code)

The identity may be a function: it is called (the input hashed) only when one of the options
is given.

With ``--baseline`` the exit status is 1 only for regressions (today's accepted findings do not
fail); the regressions and notes go to stderr, so the report on stdout is unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from ..baseline import DEFAULT_FACTOR, check_baseline, compare, make_baseline, render_result
from ..errors import InputError, UsageError
from ..output import check_not_input, write_atomic

__all__ = ["baseline_options", "finish_baseline", "start_baseline"]

F = TypeVar("F", bound=Callable[..., Any])


def baseline_options() -> Callable[[F], F]:
    """``--baseline FILE``, ``--write-baseline FILE``, ``--regression-factor X``."""

    def apply(f: F) -> F:
        f = click.option(
            "--regression-factor",
            type=click.FloatRange(min=1),
            default=DEFAULT_FACTOR,
            show_default=True,
            help="With --baseline: an error metric regresses when it grows by more than this.",
        )(f)
        f = click.option(
            "--write-baseline",
            metavar="FILE",
            default=None,
            help="Save this run's report and input identity as a baseline (JSON).",
        )(f)
        f = click.option(
            "--baseline",
            metavar="FILE",
            default=None,
            help="Compare with a baseline from --write-baseline: exit 1 only on regressions "
            "(more overflow/non-finite rows, errors grown beyond --regression-factor).",
        )(f)
        return f

    return apply


def _load(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: baseline file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON baseline ({exc})") from None


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one does not exist yet
        return os.path.realpath(a) == os.path.realpath(b)


def start_baseline(
    command: str,
    baseline: str | None,
    write_baseline: str | None,
    inputs: Iterable[str | None] = (),
    outputs: Mapping[str, str | None] | None = None,
) -> None:
    """Check the options before the run, so a bad one costs no work (exit 2): ``baseline``
    must be a readable baseline of ``command``; ``write_baseline`` must not be an input nor
    one of the command's other ``outputs`` (option name -> path)."""
    if baseline is not None:
        check_baseline(_load(baseline), command, baseline)
    if write_baseline is None:
        return
    check_not_input(write_baseline, [i for i in inputs if i])
    for option, path in (outputs or {}).items():
        if path and path != "-" and _same_path(path, write_baseline):
            raise UsageError(f"--write-baseline and {option} are the same file: {path}")


def finish_baseline(
    command: str,
    report: dict[str, Any],
    identity: dict[str, Any] | Callable[[], dict[str, Any]],
    code: int,
    baseline: str | None,
    write_baseline: str | None,
    factor: float = DEFAULT_FACTOR,
    exit_zero: bool = False,
    inputs: Iterable[str | None] = (),
) -> int:
    """Compare with ``baseline`` and/or write ``write_baseline``; returns the exit status.

    Without ``baseline`` the command's own ``code`` stands. With it: 1 on regressions (0 with
    ``exit_zero``), else 0. The comparison is read before the new baseline is written, so the
    same file may be given to both (a ratchet). ``report`` is the command's ``--format json``
    document as a dict; it is compared as it reads back from JSON.
    """
    if baseline is None and write_baseline is None:
        return code
    report = json.loads(json.dumps(report, allow_nan=False))
    ident = json.loads(json.dumps(identity() if callable(identity) else identity))
    if baseline is not None:
        result = compare(
            _load(baseline), report, ident, command=command, factor=factor, name=baseline
        )
        click.echo(render_result(result, Path(baseline).name, factor), err=True)
        code = 0 if result.ok or exit_zero else 1
    if write_baseline is not None:
        doc = make_baseline(command, report, ident)
        write_atomic(
            write_baseline,
            json.dumps(doc, indent=2, allow_nan=False) + "\n",
            inputs=[i for i in inputs if i],
        )
    return code
