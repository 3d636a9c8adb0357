"""``smcheck compare``: audit a kernel's dumped loss (and gradient) against the reference."""

from __future__ import annotations

from functools import partial

import click

from ..baseline import load_identity
from ..compare import (
    CONVENTIONS,
    DEFAULT_FAIL_ON,
    FAIL_ON,
    FAIL_ON_ALIASES,
    REDUCTIONS,
    compare_files,
)
from ..errors import UsageError
from ..render.compare import RENDERERS, render, to_dict
from . import cli
from .baseline_opts import baseline_options
from .linear_mode import COMPARE_LINEAR_ONLY, plain_mode, run_compare_linear
from .options import (
    FiniteFloatRange,
    color_option,
    dtype_options,
    exit_zero_option,
    format_option,
    label_smoothing_option,
    output_option,
    parse_csv_choices,
    variant_options,
)
from .tail import Tail, finish


def _fail_on(value: str) -> tuple[str, ...]:
    """``--fail-on``: compare's checks, eval's names (overflow, underflow) read as nonfinite."""
    chosen = parse_csv_choices(value, (*FAIL_ON, *FAIL_ON_ALIASES), "--fail-on")
    return tuple(dict.fromkeys(FAIL_ON_ALIASES.get(f, f) for f in chosen))


@cli.command("compare")
@click.argument("logits", metavar="LOGITS", required=False)
@click.option("--labels", metavar="FILE", help="Labels (.npy, .npz, text: one per line).")
@click.option(
    "--label-column", metavar="NAME|INDEX", help="Labels from this column of text LOGITS."
)
@click.option("--logits-key", metavar="KEY", help="Array of an .npz LOGITS (default 'logits').")
@click.option(
    "--labels-key", metavar="KEY", help="Array of an .npz labels file (default 'labels')."
)
@click.option(
    "--loss",
    "loss_file",
    metavar="FILE",
    required=True,
    help="Their loss: one value per row (.npy, .npz, text one per line), or one number with "
    "--reduction mean|sum.",
)
@click.option("--loss-key", metavar="KEY", help="Array of an .npz loss file (default 'loss').")
@click.option("--grad", "grad_file", metavar="FILE", help="Their gradient dL/dz, shaped as LOGITS.")
@click.option("--grad-key", metavar="KEY", help="Array of an .npz gradient file (default 'grad').")
@click.option(
    "--reduction",
    type=click.Choice(list(REDUCTIONS)),
    default="none",
    show_default=True,
    help="How their loss was reduced over rows (PyTorch's: ignored rows left out, mean over the "
    "counted rows).",
)
@click.option(
    "--ignore-index", type=int, default=-100, show_default=True, help="Label of rows to skip."
)
@click.option(
    "--weight",
    metavar="FILE",
    help="Class weights their loss used, as PyTorch's weight= (C values: .npy, .npz, text one "
    "per line; finite, >= 0). The mean then divides by the summed weight of the counted labels.",
)
@label_smoothing_option("PyTorch's label_smoothing their loss used.")
@click.option(
    "--convention",
    type=click.Choice(list(CONVENTIONS)),
    default="torch",
    show_default=True,
    help="The mean over no counted rows: PyTorch's NaN (0/0) or optax's 0 (jax).",
)
@variant_options()
@dtype_options()
@click.option(
    "--max-loss-ulp",
    type=FiniteFloatRange(min=0),
    default=None,
    help="Largest loss error allowed, in ulps of max(|L|, 1) of the working dtype. Default: "
    "4 + log2(classes) * eps(accum) / eps(dtype) (a reduction adds log2(rows) * eps(accum) / "
    "eps(dtype) + 1).",
)
@click.option(
    "--max-grad-err",
    type=FiniteFloatRange(min=0),
    default=None,
    help="Largest absolute gradient error allowed (max over entries, per-row units). Default: "
    "the per-row loss budget times eps(dtype) (times the largest class weight, if above 1).",
)
@click.option(
    "--fail-on",
    metavar="LIST",
    default=",".join(DEFAULT_FAIL_ON),
    show_default=True,
    help=f"Findings that fail the run ({', '.join(FAIL_ON)}; 'none'). eval's overflow and "
    "underflow are read as nonfinite.",
)
@exit_zero_option()
@click.option(
    "--top", type=click.IntRange(min=0), default=10, show_default=True, help="Worst rows shown."
)
@click.option("--hidden", metavar="FILE", help="Linear mode, instead of LOGITS: hidden (N, D).")
@click.option("--linear-weight", metavar="FILE", help="Linear mode: the output weight (V, D).")
@click.option("--linear-bias", metavar="FILE", help="Linear mode: the output bias (V,).")
@click.option("--grad-hidden", metavar="FILE", help="Linear mode: their dL/dh (N, D).")
@click.option("--grad-weight", metavar="FILE", help="Linear mode: their dL/dW (V, D).")
@click.option("--grad-bias", metavar="FILE", help="Linear mode: their dL/db (V,).")
@format_option(choices=tuple(RENDERERS))
@output_option()
@color_option()
@baseline_options("compare")
def compare_cmd(
    logits: str | None,
    labels: str | None,
    label_column: str | None,
    logits_key: str | None,
    labels_key: str | None,
    loss_file: str,
    loss_key: str | None,
    grad_file: str | None,
    grad_key: str | None,
    reduction: str,
    ignore_index: int,
    weight: str | None,
    label_smoothing: float,
    convention: str,
    logit_scale: float,
    softcap: float | None,
    z_loss: float,
    smoothing_convention: str,
    dtype: str | None,
    accum: str | None,
    cast_mode: str,
    max_loss_ulp: float | None,
    max_grad_err: float | None,
    fail_on: str,
    exit_zero: bool,
    top: int,
    fmt: str,
    output: str | None,
    color: str,
    baseline: str | None,
    write_baseline: str | None,
    regression_factor: float,
    hidden: str | None = None,
    linear_weight: str | None = None,
    linear_bias: str | None = None,
    grad_hidden: str | None = None,
    grad_weight: str | None = None,
    grad_bias: str | None = None,
) -> None:
    """Compare a kernel's dumped loss (and gradient) with the reference computed on the same
    logits rounded to the working dtype: loss error in ulps and bits (max, p99, median,
    histogram), gradient error, NaN/inf where the reference is finite (and the reverse), the
    worst rows with their logit statistics, and a verdict.

    PyTorch's loss options: --weight and --label-smoothing as their loss used them.

    Exit status: 0 every gated check passed, 1 one failed, 2 bad input or usage, 3 internal
    error.

    \b
    Example:
      smcheck compare logits.npy --labels labels.npy --loss their_loss.npy \\
          --grad their_grad.npy --dtype float16
      smcheck compare logits.npy --labels labels.npy --loss their_mean.npy \\
          --reduction mean --weight w.npy --label-smoothing 0.1
    """
    if hidden is not None or linear_weight is not None:
        if logits is not None or hidden is None or linear_weight is None or labels is None:
            raise UsageError("give LOGITS, or --hidden with --linear-weight and --labels")
        run_compare_linear(
            hidden, linear_weight, linear_bias, labels, loss_file, grad_hidden, grad_weight,
            grad_bias, dtype=dtype, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, variant={
                "z_loss": z_loss, "softcap": softcap, "logit_scale": logit_scale,
                "smoothing_convention": smoothing_convention,
            }, max_loss_ulp=max_loss_ulp, max_grad_err=max_grad_err, fmt=fmt, color=color,
            output=output, exit_zero=exit_zero,
        )  # fmt: skip
    logits = plain_mode(
        logits, COMPARE_LINEAR_ONLY, "missing argument LOGITS (or --hidden and --linear-weight)",
        "--hidden, --linear-weight",
    )  # fmt: skip
    inputs = (logits, labels, loss_file, grad_file, weight)
    tail = Tail(
        "compare", fmt, color, output, inputs, exit_zero=exit_zero, baseline=baseline,
        write_baseline=write_baseline, regression_factor=regression_factor,
    )  # fmt: skip
    tail.start()
    report = compare_files(
        logits,
        labels,
        loss=loss_file,
        grad=grad_file,
        logits_key=logits_key,
        labels_key=labels_key,
        label_column=label_column,
        loss_key=loss_key,
        grad_key=grad_key,
        dtype=dtype,
        accum=accum,
        cast=cast_mode,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        label_smoothing=label_smoothing,
        convention=convention,
        z_loss=z_loss,
        softcap=softcap,
        logit_scale=logit_scale,
        smoothing_convention=smoothing_convention,
        max_loss_ulp=max_loss_ulp,
        max_grad_err=max_grad_err,
        fail_on=_fail_on(fail_on),
        top=top,
    )
    identity = partial(  # read and hashed only with a baseline option
        load_identity, logits, labels, logits_key=logits_key, labels_key=labels_key,
        label_column=label_column, ignore_index=ignore_index,
    )  # fmt: skip
    finish(tail, report, render, to_dict(report), ok=report.ok, identity=identity)
