"""``smcheck gradcheck``: each method's gradient against complex-step and central-difference
derivatives (parse, load or synthesise, check, render, exit code)."""

from __future__ import annotations

from typing import NamedTuple

import click
import numpy as np

from ..baseline import input_identity
from ..errors import UsageError
from ..gradcheck import CASE_CHOICES, gradcheck, synthetic
from ..render.gradcheck import RENDERERS, render, summary, to_dict
from . import cli
from .baseline_opts import baseline_options
from .options import (
    color_option,
    dtype_options,
    exit_zero_option,
    format_option,
    gate_option,
    load_logits,
    methods_option,
    output_option,
    parse_gate,
    parse_methods,
    variant_options,
)
from .tail import Tail, finish

#: Synthetic input when no LOGITS is given.
DEFAULT_SYNTHETIC_ROWS = 50


class _Input(NamedTuple):
    logits: np.ndarray
    labels: np.ndarray | None
    name: str
    cases: tuple[str, ...] | None
    dtype: str | None


def _input(
    logits: str | None,
    labels: str | None,
    dtype: str | None,
    *,
    logits_key: str | None,
    labels_key: str | None,
    label_column: str | None,
    ignore_index: int,
    case: str | None,
    rows: int | None,
    classes: int | None,
    scale: float | None,
    seed: int,
) -> _Input:
    """The rows to check: LOGITS (and --labels) loaded, or synthetic rows when no LOGITS is
    given; the options of the other kind are a usage error."""
    if logits is None:
        if labels or logits_key or labels_key or label_column:
            raise UsageError("--labels and the key/column options need a LOGITS file")
        s = synthetic(
            case or "all",
            rows=rows or DEFAULT_SYNTHETIC_ROWS,
            classes=classes or 10,
            scale=4.0 if scale is None else scale,
            seed=seed,
        )
        return _Input(s.logits, s.labels, s.description, s.cases, dtype or "float32")
    given = [n for n, v in (("--case", case), ("--classes", classes), ("--scale", scale)) if v]
    if given:
        raise UsageError(f"{', '.join(given)} make synthetic input: drop them or LOGITS")
    loaded, dtype = load_logits(
        logits,
        labels,
        dtype,
        logits_key=logits_key,
        labels_key=labels_key,
        label_column=label_column,
        ignore_index=ignore_index,
    )
    name = loaded.logits_name
    if loaded.labels_name and loaded.labels_name != loaded.logits_name:
        name += f" with labels {loaded.labels_name}"
    return _Input(loaded.logits, loaded.labels, name, None, dtype)


@cli.command("gradcheck")
@click.argument("logits", metavar="[LOGITS]", required=False)
@click.option("--labels", metavar="FILE", help="Labels (.npy, .csv or .txt, one per row).")
@click.option("--logits-key", metavar="KEY", help="Array name of the logits in an .npz.")
@click.option("--labels-key", metavar="KEY", help="Array name of the labels in an .npz.")
@click.option("--label-column", metavar="NAME|INDEX", help="Labels from this column of a CSV.")
@click.option(
    "--ignore-index",
    type=int,
    default=-100,
    show_default=True,
    help="Label value of rows to skip (as PyTorch's cross_entropy).",
)
@click.option(
    "--case",
    type=click.Choice(list(CASE_CHOICES)),
    default=None,
    help="Synthetic rows (no LOGITS): random, confident (label at the max), wrong (label at "
    "the min), uniform (ties), extreme (the seed's [0, -800, 1], +-1000 shifts, 100x spread) "
    "or all (mixed row by row). Default: all.",
)
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=None,
    help=f"Synthetic: rows to make (default {DEFAULT_SYNTHETIC_ROWS}). A file: check only this "
    "many rows (the largest margin, the largest |z|, then a random sample).",
)
@click.option(
    "--classes",
    type=click.IntRange(min=2),
    default=None,
    help="Synthetic: classes per row (default 10).",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Synthetic: standard deviation of the logits (default 4).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    default=0,
    show_default=True,
    help="Seed of the synthetic rows, the random directions and coordinates.",
)
@dtype_options("the file's float dtype (float32 for text and synthetic input)")
@methods_option()
@gate_option()
@variant_options(smoothing=False)
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=None,
    help="Absolute tolerance: an entry passes when |g - g*| <= atol + rtol |g*|. Default per "
    "dtype: float64 1e-13, float32 1e-5, float16 1e-2, bfloat16 1e-1, float8 0.25/0.5.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=None,
    help="Relative tolerance (default: the same per-dtype value as --atol).",
)
@click.option(
    "--directions",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Random unit directions v per row: v . grad against the derivative along v.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Random coordinates per row, besides the label, argmax, argmin and next largest.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Check every coordinate of every row (costs rows x classes**2; for small C).",
)
@click.option(
    "--consistency-step",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Step of the working-dtype check of each method's loss against its own gradient "
    "(default: chosen per row to minimise rounding plus truncation error; a hand-picked step "
    "such as 1e-3 in float16 leaves every probe inconclusive).",
)
@click.option(
    "--top",
    "top_k",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="How many worst derivatives to list.",
)
@format_option(tuple(RENDERERS))
@output_option()
@color_option()
@exit_zero_option()
@baseline_options("gradcheck")
def gradcheck_cmd(
    logits: str | None,
    labels: str | None,
    logits_key: str | None,
    labels_key: str | None,
    label_column: str | None,
    ignore_index: int,
    case: str | None,
    rows: int | None,
    classes: int | None,
    scale: float | None,
    seed: int,
    dtype: str | None,
    accum: str | None,
    cast_mode: str,
    methods: str,
    gate: str,
    logit_scale: float,
    softcap: float | None,
    z_loss: float,
    atol: float | None,
    rtol: float | None,
    directions: int,
    sample: int,
    full: bool,
    consistency_step: float | None,
    top_k: int,
    fmt: str,
    output: str | None,
    color: str,
    exit_zero: bool,
    baseline: str | None,
    write_baseline: str | None,
    regression_factor: float,
) -> None:
    """Check each method's gradient dL/dz, computed in the working dtype, against the truth:
    complex-step derivatives in complex128 (binary128 for float64), confirmed by central
    differences (Richardson) in the reference's high precision and by the reference's own
    gradient - all on the same rounded logits.

    Checks the coordinates that matter in every row (label, argmax, argmin, the largest
    logits, a random sample; --full: all) and random directional derivatives. Without LOGITS
    it makes synthetic rows (--case, --rows, --classes, --scale, --seed), the seed's
    underflow case [0, -800, 1] among them. Exit status: 0 every gated method passes, 1 one
    fails (or the truth itself disagrees, or no row is checkable), 2 bad input or usage,
    3 internal error.

    --logit-scale, --softcap and --z-loss check the gradient of a loss variant with respect to
    the original logits (see docs/variants.md).

    Example: smcheck gradcheck --dtype float16 --methods all
    """
    x, y, name, cases, dtype = _input(
        logits, labels, dtype, logits_key=logits_key, labels_key=labels_key,
        label_column=label_column, ignore_index=ignore_index, case=case, rows=rows,
        classes=classes, scale=scale, seed=seed,
    )  # fmt: skip
    rows = None if logits is None else rows  # synthetic: every row made is checked
    inputs = [p for p in (logits, labels) if p]
    tail = Tail(
        "gradcheck", fmt, color, output, inputs, exit_zero=exit_zero, baseline=baseline,
        write_baseline=write_baseline, regression_factor=regression_factor,
    )  # fmt: skip
    tail.start()
    run = parse_methods(methods)
    gated = parse_gate(gate, run)
    report = gradcheck(
        x, y, dtype=dtype, accum=accum, cast=cast_mode, ignore_index=ignore_index,
        methods=run, gate=gated, atol=atol, rtol=rtol, directions=directions, sample=sample,
        full=full, consistency_step=consistency_step, rows=rows, seed=seed, top=top_k,
        source=name, row_cases=cases, z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
    )  # fmt: skip
    finish(
        tail, report, render, to_dict(report), ok=report.ok, identity=lambda: input_identity(x, y),
        unchecked=None if report.rows else summary(report), unexcused=not report.truth.ok,
    )  # fmt: skip
