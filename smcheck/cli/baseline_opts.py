"""``--baseline`` / ``--write-baseline`` for any command that has a JSON report.

A command adopts them with one decorator and one call at its end::

    @baseline_options()
    def eval_cmd(..., baseline, write_baseline, regression_factor):
        ...
        code = exit_code(report.ok, exit_zero)
        code = finish_baseline("eval", report_dict, input_identity(logits, labels), code,
                               baseline, write_baseline, regression_factor, exit_zero)
        ctx.exit(code)

With ``--baseline`` the exit status is 1 only for regressions (today's accepted findings do not
fail); the regressions and notes go to stderr, so the report on stdout is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..baseline import DEFAULT_FACTOR, compare, make_baseline, render_result
from ..errors import InputError
from ..output import write_atomic

__all__ = ["baseline_options", "finish_baseline"]

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


def finish_baseline(
    command: str,
    report: dict[str, Any],
    identity: dict[str, Any],
    code: int,
    baseline: str | None,
    write_baseline: str | None,
    factor: float = DEFAULT_FACTOR,
    exit_zero: bool = False,
    inputs: tuple[str | None, ...] = (),
) -> int:
    """Compare with ``baseline`` and/or write ``write_baseline``; returns the exit status.

    Without ``baseline`` the command's own ``code`` stands. With it: 1 on regressions (0 with
    ``exit_zero``), else 0. The comparison is read before the new baseline is written, so the
    same file may be given to both (a ratchet).
    """
    if baseline is not None:
        result = compare(
            _load(baseline), report, identity, command=command, factor=factor, name=baseline
        )
        click.echo(render_result(result, Path(baseline).name, factor), err=True)
        code = 0 if result.ok or exit_zero else 1
    if write_baseline is not None:
        doc = make_baseline(command, report, identity)
        write_atomic(
            write_baseline,
            json.dumps(doc, indent=2, allow_nan=False) + "\n",
            inputs=[i for i in inputs if i],
        )
    return code
