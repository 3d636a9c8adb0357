"""``smcheck eval --hidden H --weight W [--bias b] --labels Y``: the linear mode's command body.

Kept apart from :mod:`.eval_cmd` (which only routes here when ``--hidden`` is given): parse,
load, :func:`~smcheck.linear_eval.evaluate_linear`, render, exit code - through the one
command tail.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import click

from ..errors import UsageError
from ..loading import load_values
from .options import parse_csv_choices
from .tail import Tail, finish

__all__ = [
    "COMPARE_LINEAR_ONLY",
    "COMPARE_NOT_LINEAR",
    "EVAL_LINEAR_ONLY",
    "EVAL_NOT_LINEAR",
    "plain_mode",
    "refuse_given",
    "run_compare_linear",
    "run_linear",
]

#: eval's options (parameter names) that the linear mode has no use for: the emulated kernel
#: has one formulation, its float32 accumulator and --grad-accum, and no row statistics.
EVAL_NOT_LINEAR = (
    "logits_key", "labels_key", "label_column", "accum", "cast_mode", "methods", "per_row",
    "top_k", "gate", "fail_on", "regression_factor", "workers", "engine", "scheduler",
    "chunk_mb",
)  # fmt: skip
#: eval's options that only the linear mode reads (plain eval has no label smoothing).
EVAL_LINEAR_ONLY = ("label_smoothing", "reduction", "chunk_vocab", "grad_accum")
#: compare's options that its linear mode has no use for (no class weights in the linear
#: reference, no logits or gradient file of logits' shape).
COMPARE_NOT_LINEAR = (
    "label_column", "logits_key", "labels_key", "loss_key", "grad_file", "grad_key", "weight",
    "convention", "accum", "cast_mode", "fail_on", "top", "baseline", "write_baseline",
    "regression_factor",
)  # fmt: skip
#: compare's options that only its linear mode reads.
COMPARE_LINEAR_ONLY = ("linear_bias", "grad_hidden", "grad_weight", "grad_bias")


def refuse_given(params: Iterable[str], why: str) -> None:
    """A UsageError naming the first of ``params`` given on the command line (or through its
    environment variable): an option the mode would otherwise silently ignore. A default from
    the config file is not refused (it is meant for every mode)."""
    ctx = click.get_current_context()
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    opts = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    for name in params:
        if ctx.get_parameter_source(name) in given:
            flag = next(o for o in opts[name].opts if o.startswith("--"))
            raise UsageError(f"{flag} {why}")


def plain_mode(logits: str | None, linear_only: Iterable[str], missing: str, flags: str) -> str:
    """The plain mode's LOGITS (else a UsageError ``missing``), after refusing the options only
    the linear mode reads (``flags`` names what selects it)."""
    if logits is None:
        raise UsageError(missing)
    refuse_given(linear_only, f"applies only to the linear mode ({flags})")
    return logits


def run_linear(
    hidden: str,
    weight: str | None,
    bias: str | None,
    labels: str | None,
    *,
    dtype: str | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    variant: dict[str, Any],
    chunk_rows: int | None,
    chunk_vocab: int,
    grad_accum: str,
    max_loss_ulp: float | None,
    max_grad_err: float | None,
    max_bytes: int,
    fmt: str,
    color: str,
    output: str | None,
    exit_zero: bool,
    baseline: str | None,
    write_baseline: str | None,
) -> NoReturn:
    """Evaluate a chunked fused linear cross-entropy of the files named, and exit.

    ``variant``: z_loss, softcap, logit_scale, smoothing_convention as given."""
    # the linear modules load when this mode runs, not with every eval's start-up
    from ..linear import GRAD_ACCUMS
    from ..linear_eval import evaluate_linear
    from ..render.linear import render, to_dict

    if weight is None or labels is None:
        raise UsageError("--hidden needs --weight and --labels (and takes no LOGITS)")
    if baseline or write_baseline:
        raise UsageError("--baseline and --write-baseline are not available with --hidden")
    refuse_given(EVAL_NOT_LINEAR, "does not apply to the linear mode (--hidden): see "
                 "docs/linear.md for its options")  # fmt: skip
    accums = parse_csv_choices(grad_accum, GRAD_ACCUMS, "--grad-accum")
    inputs = [p for p in (hidden, weight, bias, labels) if p]
    tail = Tail("eval", fmt, color, output, inputs, exit_zero=exit_zero)
    tail.start()
    # a raw 2-byte .npy (bfloat16 saved with ml_dtypes) is read as the --dtype named
    h = load_values(hidden, key=None, default_key="hidden", max_bytes=max_bytes, dtype=dtype)
    w = load_values(weight, key=None, default_key="weight", max_bytes=max_bytes, dtype=dtype)
    b = None if bias is None else load_values(bias, key=None, default_key="bias",
                                              max_bytes=max_bytes, dtype=dtype)  # fmt: skip
    y = load_values(labels, key=None, default_key="labels", max_bytes=max_bytes)
    report = evaluate_linear(
        h.values, w.values, y.values, bias=None if b is None else b.values, dtype=dtype,
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        **variant, chunk_rows=chunk_rows or 1024, chunk_vocab=chunk_vocab,
        grad_accums=accums, max_loss_ulp=max_loss_ulp, max_grad_err=max_grad_err,
        names=(h.name, w.name, "bias" if b is None else b.name, y.name),
    )  # fmt: skip
    finish(
        tail, report, render, to_dict(report), ok=report.ok,
        identity={"hidden": h.name, "weight": w.name, "labels": y.name},
    )  # fmt: skip


def run_compare_linear(
    hidden: str,
    weight: str,
    bias: str | None,
    labels: str,
    loss: str,
    grad_hidden: str | None,
    grad_weight: str | None,
    grad_bias: str | None,
    *,
    dtype: str | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    variant: dict[str, Any],
    max_loss_ulp: float | None,
    max_grad_err: float | None,
    fmt: str,
    color: str,
    output: str | None,
    exit_zero: bool,
) -> NoReturn:
    """``smcheck compare --hidden --linear-weight --labels --loss [--grad-*]``: a linear
    kernel's dumped outputs against the reference, and exit. ``variant``: z_loss, softcap,
    logit_scale, smoothing_convention as their kernel computed them."""
    from ..linear_eval import compare_linear
    from ..render.linear import render, to_dict

    refuse_given(COMPARE_NOT_LINEAR, "does not apply to the linear mode (--hidden): see "
                 "docs/linear.md for its options")  # fmt: skip
    files = (hidden, weight, bias, labels, loss, grad_hidden, grad_weight, grad_bias)
    inputs = [p for p in files if p]
    tail = Tail("compare", fmt, color, output, inputs, exit_zero=exit_zero)
    tail.start()

    def read(path: str | None, key: str, raw_as: str | None | bool = dtype) -> Any:
        # inputs and dumps alike may be raw 2-byte bfloat16 .npy files: read as the --dtype named
        if path is None:
            return None
        return load_values(path, key=None, default_key=key, dtype=raw_as)

    h, w, b, y = (
        read(hidden, "hidden"),
        read(weight, "weight"),
        read(bias, "bias"),
        read(labels, "labels", False),
    )
    dl, dh, dw, db = (read(loss, "loss"), read(grad_hidden, "grad_hidden"),
                      read(grad_weight, "grad_weight"), read(grad_bias, "grad_bias"))  # fmt: skip

    def vals(x: Any) -> Any:
        return None if x is None else x.values

    report = compare_linear(
        h.values, w.values, y.values, loss=dl.values, grad_hidden=vals(dh),
        grad_weight=vals(dw), grad_bias=vals(db), bias=vals(b), dtype=dtype,
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        **variant, max_loss_ulp=max_loss_ulp,
        max_grad_err=max_grad_err, names=(h.name, w.name, "bias" if b is None else b.name, y.name),
    )  # fmt: skip
    finish(
        tail, report, render, to_dict(report), ok=report.ok,
        identity={"hidden": h.name, "weight": w.name, "labels": y.name},
    )  # fmt: skip
