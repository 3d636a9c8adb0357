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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from ..baseline import DEFAULT_FACTOR, check_baseline, compare, make_baseline, render_result
from ..errors import InputError
from ..output import check_distinct, check_not_input, write_atomic
from .options import FiniteFloatRange, all_inputs

__all__ = ["baseline_options", "finish_baseline", "start_baseline"]

F = TypeVar("F", bound=Callable[..., Any])


#: What each command's ``--baseline`` counts as a regression (``smcheck.baseline.RULES``), in
#: its help: the rules differ by command, and sweep compares break points, not errors.
_REGRESSIONS = {
    "eval": "more overflow/NaN/inf/underflow rows, an error grown beyond --regression-factor, "
    "a gated method newly failing",
    "gradcheck": "more NaN/inf gradient rows or entries, more entries or directions beyond the "
    "tolerance, an error grown beyond --regression-factor, a gated method newly failing",
    "compare": "more NaN/inf loss or gradient rows, the loss or gradient error grown beyond "
    "--regression-factor, a gated check newly failing",
    "sweep": "a break point where the baseline had none, or one moved to a smaller scale by "
    "more than --tol",
}
#: What ``--write-baseline`` records besides the report.
_IDENTITY = {
    "eval": "the input's shape, dtype and SHA-256",
    "gradcheck": "the input's (or the synthetic rows') shape, dtype and SHA-256",
    "compare": "the logits' and labels' shape, dtype and SHA-256",
    "sweep": "the grid (dtypes, classes, scales, cases, methods, rows, seed)",
}


def baseline_options(command: str = "eval") -> Callable[[F], F]:
    """``--baseline FILE``, ``--write-baseline FILE``, ``--regression-factor X``, with the
    help of ``command``'s regression rules."""

    def apply(f: F) -> F:
        f = click.option(
            "--regression-factor",
            type=FiniteFloatRange(min=1),
            default=DEFAULT_FACTOR,
            show_default=True,
            help=(
                "Not used: sweep compares break points, not errors (kept for a shared config)."
                if command == "sweep"
                else "With --baseline: an error metric regresses when it grows by more than this."
            ),
        )(f)
        f = click.option(
            "--write-baseline",
            metavar="FILE",
            default=None,
            help=f"Save this run's JSON report and {_IDENTITY[command]} as a baseline.",
        )(f)
        f = click.option(
            "--baseline",
            metavar="FILE",
            default=None,
            help="Compare with a baseline from --write-baseline: exit 1 only on regressions "
            f"({_REGRESSIONS[command]}).",
        )(f)
        return f

    return apply


def _load(path: str) -> Any:
    from ..baseline import read_baseline

    return read_baseline(path)


def start_baseline(
    command: str,
    baseline: str | None,
    write_baseline: str | None,
    inputs: Iterable[str | None] = (),
    outputs: Mapping[str, str | None] | None = None,
) -> None:
    """Check the options before the run, so a bad one costs no work (exit 2): ``baseline``
    must be a readable baseline of ``command``; no output (``write_baseline`` and the
    command's other ``outputs``, option name -> path) may be an input - the data files, the
    baseline, the config file - or the same file as another output."""
    if baseline is not None:
        check_baseline(_load(baseline), command, baseline)
    every = {"--write-baseline": write_baseline, **(outputs or {})}
    for option, path in every.items():
        if path and path != "-":
            # --write-baseline onto --baseline is the ratchet: read first, then replaced
            check_not_input(path, all_inputs(*inputs, baseline=option != "--write-baseline"))
    check_distinct(every)


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
        doc = _load(baseline)
        try:
            result = compare(doc, report, ident, command=command, factor=factor, name=baseline)
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            # _check_report vets what compare reads; this names the file if a corner slips by
            raise InputError(f"{baseline}: not a valid smcheck baseline (malformed)") from None
        click.echo(render_result(result, Path(baseline).name, factor), err=True)
        code = 0 if result.ok or exit_zero else 1
    if write_baseline is not None:
        doc = make_baseline(command, report, ident)
        write_atomic(
            write_baseline,
            json.dumps(doc, indent=2, allow_nan=False) + "\n",
            inputs=all_inputs(*inputs, baseline=False),
        )
    return code
