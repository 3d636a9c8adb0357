"""``smcheck eval --hidden H --weight W [--bias b] --labels Y``: the linear mode's command body.

Kept apart from :mod:`.eval_cmd` (which only routes here when ``--hidden`` is given): parse,
load, :func:`~smcheck.linear_eval.evaluate_linear`, render, exit code - through the one
command tail.
"""

from __future__ import annotations

from typing import Any, NoReturn

from ..errors import UsageError
from ..linear import GRAD_ACCUMS
from ..linear_eval import compare_linear, evaluate_linear
from ..loading import load_values
from ..render.linear import render, to_dict
from .options import parse_csv_choices
from .tail import Tail, finish

__all__ = ["run_compare_linear", "run_linear"]


def run_linear(
    hidden: str,
    weight: str | None,
    bias: str | None,
    labels: str | None,
    *,
    dtype: str | None,
    ignore_index: int,
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
    """Evaluate a chunked fused linear cross-entropy of the files named, and exit."""
    if weight is None or labels is None:
        raise UsageError("--hidden needs --weight and --labels (and takes no LOGITS)")
    if baseline or write_baseline:
        raise UsageError("--baseline and --write-baseline are not available with --hidden")
    accums = parse_csv_choices(grad_accum, GRAD_ACCUMS, "--grad-accum")
    inputs = [p for p in (hidden, weight, bias, labels) if p]
    tail = Tail("eval", fmt, color, output, inputs, exit_zero=exit_zero)
    tail.start()
    h = load_values(hidden, key=None, default_key="hidden", max_bytes=max_bytes)
    w = load_values(weight, key=None, default_key="weight", max_bytes=max_bytes)
    b = None if bias is None else load_values(bias, key=None, default_key="bias",
                                              max_bytes=max_bytes)  # fmt: skip
    y = load_values(labels, key=None, default_key="labels", max_bytes=max_bytes)
    report = evaluate_linear(
        h.values, w.values, y.values, bias=None if b is None else b.values, dtype=dtype,
        ignore_index=ignore_index, chunk_rows=chunk_rows or 1024, chunk_vocab=chunk_vocab,
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
    max_loss_ulp: float | None,
    max_grad_err: float | None,
    fmt: str,
    color: str,
    output: str | None,
    exit_zero: bool,
) -> NoReturn:
    """``smcheck compare --hidden --linear-weight --labels --loss [--grad-*]``: a linear
    kernel's dumped outputs against the reference, and exit."""
    files = (hidden, weight, bias, labels, loss, grad_hidden, grad_weight, grad_bias)
    inputs = [p for p in files if p]
    tail = Tail("compare", fmt, color, output, inputs, exit_zero=exit_zero)
    tail.start()

    def read(path: str | None, key: str) -> Any:
        return None if path is None else load_values(path, key=None, default_key=key)

    h, w, b, y = (
        read(hidden, "hidden"),
        read(weight, "weight"),
        read(bias, "bias"),
        read(labels, "labels"),
    )
    dl, dh, dw, db = (read(loss, "loss"), read(grad_hidden, "grad_hidden"),
                      read(grad_weight, "grad_weight"), read(grad_bias, "grad_bias"))  # fmt: skip

    def vals(x: Any) -> Any:
        return None if x is None else x.values

    report = compare_linear(
        h.values, w.values, y.values, loss=dl.values, grad_hidden=vals(dh),
        grad_weight=vals(dw), grad_bias=vals(db), bias=vals(b), dtype=dtype,
        ignore_index=ignore_index, reduction=reduction, max_loss_ulp=max_loss_ulp,
        max_grad_err=max_grad_err, names=(h.name, w.name, "bias" if b is None else b.name, y.name),
    )  # fmt: skip
    finish(
        tail, report, render, to_dict(report), ok=report.ok,
        identity={"hidden": h.name, "weight": w.name, "labels": y.name},
    )  # fmt: skip
