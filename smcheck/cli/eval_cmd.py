"""``smcheck eval``: audit a logits file (parse, load, evaluate, render, exit code)."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from ..allocator import keep_freed_memory
from ..baseline import input_identity
from ..errors import UsageError
from ..evaluate import DEFAULT_CHUNK_BYTES, PerRowWriter, evaluate
from ..render.eval import RENDERERS, render, to_dict
from . import cli
from .baseline_opts import baseline_options
from .linear_mode import EVAL_LINEAR_ONLY, plain_mode, run_linear
from .options import (
    FAIL_ON_CHOICES,
    FiniteFloatRange,
    SchedulerAddress,
    all_inputs,
    color_option,
    dtype_options,
    format_option,
    gate_options,
    label_smoothing_option,
    load_logits,
    methods_option,
    output_option,
    parse_csv_choices,
    parse_gate,
    parse_methods,
    progress_reporter,
    variant_options,
    workers_option,
)
from .tail import Tail, finish


@cli.command("eval")
@click.argument("logits", metavar="LOGITS", required=False)
@click.option(
    "--labels",
    metavar="FILE",
    help="Labels, one per row: .npy, .npz, zarr store, or text (.csv/.txt, one per line).",
)
@click.option(
    "--hidden",
    metavar="FILE",
    help="Linear mode, instead of LOGITS: hidden states (N, D) of a fused linear "
    "cross-entropy (with --weight, --labels; see docs/linear.md).",
)
@click.option("--weight", metavar="FILE", help="Linear mode: the output weight (V, D).")
@click.option("--bias", metavar="FILE", help="Linear mode: the output bias (V,).")
@click.option(
    "--chunk-vocab",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Linear mode: vocabulary chunk of the emulated kernel.",
)
@click.option(
    "--grad-accum",
    default="float32,bfloat16",
    show_default=True,
    help="Linear mode: dtypes the kernel sums dW, dh, db in across chunks (comma list).",
)
@label_smoothing_option(
    "Linear mode: PyTorch's label_smoothing (spread as --smoothing-convention says)."
)
@click.option(
    "--reduction",
    type=click.Choice(["mean", "sum", "none"]),
    default="mean",
    show_default=True,
    help="Linear mode: the loss reduction over rows (the gradients are of the mean or sum; "
    "of the sum for none).",
)
@click.option("--logits-key", metavar="KEY", help="Array name of the logits in an .npz.")
@click.option("--labels-key", metavar="KEY", help="Array name of the labels in an .npz.")
@click.option("--label-column", metavar="NAME|INDEX", help="Labels from this column of a CSV.")
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=8 * 2**30,
    show_default=True,
    help="Most bytes read into memory from text, stdin, one .npz member or zarr chunk "
    "(.npy is mapped).",
)
@dtype_options()
@methods_option()
@variant_options()
@click.option(
    "--ignore-index",
    type=int,
    default=-100,
    show_default=True,
    help="Label value of rows to skip (as PyTorch's cross_entropy).",
)
@format_option(tuple(RENDERERS))
@output_option()
@click.option(
    "--per-row",
    metavar="FILE",
    help="Also write per-row values (.csv or .npz): row, label, reference loss and, "
    "per method, loss, loss error (ulps), gradient error and flags.",
)
@click.option(
    "--top",
    "top_k",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many worst rows to list, by score (plus the row of each method's largest loss "
    "relative error when the score ranks it lower).",
)
@color_option()
@gate_options()
@baseline_options("eval")
@workers_option()
@click.option(
    "--engine",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="Where chunks run: on this machine (see --workers: forked processes on Linux), or "
    "a Dask cluster (a .npy or zarr input; extra [dask]).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    type=SchedulerAddress(),
    default=None,
    help="With --engine dask: the scheduler of an existing cluster (else a local one).",
)
@click.option(
    "--chunk-mb",
    type=FiniteFloatRange(min=0.001, max=2.0**40),
    default=DEFAULT_CHUNK_BYTES / 2**20,
    show_default=True,
    help="Working-memory budget of one chunk of rows, in MiB.",
)
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None, hidden=True)
def eval_cmd(
    logits: str | None,
    labels: str | None,
    hidden: str | None,
    weight: str | None,
    bias: str | None,
    chunk_vocab: int,
    grad_accum: str,
    label_smoothing: float,
    reduction: str,
    logits_key: str | None,
    labels_key: str | None,
    label_column: str | None,
    max_bytes: int,
    dtype: str | None,
    accum: str | None,
    cast_mode: str,
    methods: str,
    logit_scale: float,
    softcap: float | None,
    z_loss: float,
    smoothing_convention: str,
    ignore_index: int,
    fmt: str,
    output: str | None,
    per_row: str | None,
    top_k: int,
    color: str,
    gate: str,
    max_loss_ulp: float | None,
    max_grad_err: float | None,
    fail_on: str,
    exit_zero: bool,
    baseline: str | None,
    write_baseline: str | None,
    regression_factor: float,
    workers: int | None,
    engine: str,
    scheduler: str | None,
    chunk_mb: float,
    chunk_rows: int | None,
) -> None:
    """Audit the softmax cross-entropy of LOGITS: each method's loss and gradient in the working
    dtype against a high-precision reference on the same rounded logits.

    LOGITS is .npy (memory-mapped), .npz (array 'logits' or --logits-key), a zarr array store
    (a directory; extra [zarr]), .csv/.tsv or - (CSV on stdin); more than 2 axes are flattened
    to rows (B, T, V -> B*T rows). Without labels every class is a possible label
    (label-free mode). Exit status: 0 every gated method passes, 1 one fails (or no row is
    eligible), 2 bad input or usage, 3 internal error.

    Example (naive overflows on 617 rows in float16; fused passes, exit 0):

    \b
        smcheck eval samples/overconfident_f32.npy \\
            --labels samples/overconfident_labels.npy --dtype float16
    """
    if hidden is not None or weight is not None or bias is not None:
        if logits is not None or hidden is None:
            raise UsageError("give LOGITS, or --hidden with --weight (not both)")
        variant = {"z_loss": z_loss, "softcap": softcap, "logit_scale": logit_scale,
                   "smoothing_convention": smoothing_convention}  # fmt: skip
        run_linear(
            hidden, weight, bias, labels, dtype=dtype, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, variant=variant,
            chunk_rows=chunk_rows, chunk_vocab=chunk_vocab, grad_accum=grad_accum,
            max_loss_ulp=max_loss_ulp, max_grad_err=max_grad_err, max_bytes=max_bytes, fmt=fmt,
            color=color, output=output, exit_zero=exit_zero, baseline=baseline,
            write_baseline=write_baseline,
        )  # fmt: skip
    logits = plain_mode(
        logits, EVAL_LINEAR_ONLY, "missing argument LOGITS (or --hidden and --weight: the "
        "linear mode)", "--hidden, --weight",
    )  # fmt: skip
    chosen, gated = parse_methods(methods), parse_gate(gate)
    checks = parse_csv_choices(fail_on, FAIL_ON_CHOICES, "--fail-on")
    loaded, dtype = load_logits(
        logits,
        labels,
        dtype,
        logits_key=logits_key,
        labels_key=labels_key,
        label_column=label_column,
        ignore_index=ignore_index,
        max_bytes=max_bytes,
    )
    inputs = [p for p in (logits, labels) if p]
    tail = Tail(
        "eval", fmt, color, output, inputs, exit_zero=exit_zero, baseline=baseline,
        write_baseline=write_baseline, regression_factor=regression_factor,
    )  # fmt: skip
    tail.start({"--per-row": per_row})
    per_row_sink = (
        PerRowWriter(per_row, all_inputs(*inputs)) if per_row else contextlib.nullcontext()
    )
    keep_freed_memory()  # chunk temporaries reuse freed heap blocks (see smcheck.allocator)
    with progress_reporter(sys.stderr) as progress, per_row_sink as sink:
        report = evaluate(
            loaded.logits, loaded.labels, dtype=dtype, accum=accum, cast=cast_mode,
            methods=chosen, gate=gated, ignore_index=ignore_index, max_loss_ulp=max_loss_ulp,
            max_grad_err=max_grad_err, fail_on=checks, top=top_k,
            chunk_bytes=int(chunk_mb * 2**20), chunk_rows=chunk_rows,
            workers=workers or os.cpu_count() or 1, progress=progress,
            per_row=sink if per_row else None, logits_name=loaded.logits_name,
            labels_name=loaded.labels_name, notes=loaded.notes,
            original_shape=loaded.original_shape,
            engine=engine, scheduler=scheduler, z_loss=z_loss, softcap=softcap,
            logit_scale=logit_scale, smoothing_convention=smoothing_convention,
        )  # fmt: skip
    finish(
        tail, report, render, to_dict(report), ok=report.ok,
        identity=lambda: input_identity(loaded.logits, loaded.labels),
        unchecked=None if report.input.eligible_rows else report.verdict,
    )  # fmt: skip
