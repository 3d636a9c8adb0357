"""``smcheck sweep``: the stability map (parse, sweep, render, plot, exit code)."""

from __future__ import annotations

import os

import click

from ..baseline import grid_identity
from ..errors import UsageError
from ..methods import METHODS
from ..render.sweep import RENDERERS, render, to_dict
from ..sweep import (
    CASES,
    DEFAULT_CLASSES,
    DEFAULT_DTYPES,
    DEFAULT_SCALES_SPEC,
    SweepConfig,
    SweepReport,
    default_workers,
    parse_scales,
    sweep,
)
from . import cli
from .baseline_opts import baseline_options
from .options import (
    FiniteFloatRange,
    capped_workers,
    color_option,
    format_option,
    gate_option,
    output_option,
    parse_csv_choices,
    parse_gate,
    parse_methods,
    variant_options,
)
from .tail import Tail, finish


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeated and comma-separated option values, flattened."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _config(
    dtypes: tuple[str, ...],
    accum: str | None,
    classes: tuple[str, ...],
    scales: str,
    cases: tuple[str, ...],
    methods: str,
    rows: int | None,
    seed: int,
    max_bits: float,
    tol: float,
    gate: str,
    variant: dict[str, float | None] | None = None,
) -> SweepConfig:
    """The grid the options describe (the defaults for what is not given)."""
    try:
        class_counts = tuple(int(c) for c in _split(classes))
    except ValueError:
        raise UsageError(f"--classes {' '.join(classes)}: expected integers") from None
    run = parse_methods(methods)
    return SweepConfig(
        dtypes=tuple(_split(dtypes)) or DEFAULT_DTYPES,
        classes=class_counts or DEFAULT_CLASSES,
        cases=parse_csv_choices(",".join(cases), tuple(CASES), "--case") if cases else tuple(CASES),
        scales=parse_scales(scales),
        methods=run,
        accum=accum,
        rows=rows,
        seed=seed,
        max_bits=max_bits,
        tol=tol,
        gate=parse_gate(gate, run),
        **(variant or {}),  # type: ignore[arg-type]
    )


def _check_plot(plot: str | None, output: str | None) -> str | None:
    """``--plot FILE``: its image format, after checking that matplotlib is there and that the
    file is not ``--output`` (None without ``--plot``)."""
    if plot is None:
        return None
    from ..render.sweep_plot import plot_format, require_matplotlib

    plot_fmt = plot_format(plot)
    require_matplotlib()
    if output is not None and os.path.abspath(plot) == os.path.abspath(output):
        raise UsageError(f"--plot and --output are the same file: {plot}")
    return plot_fmt


def _write_plot(plot: str, plot_fmt: str, report: SweepReport) -> None:
    """Draw the error-vs-scale curves and write them to ``plot`` atomically."""
    from ..output import write_atomic
    from ..render.sweep_plot import render_plot
    from .options import all_inputs

    write_atomic(plot, render_plot(report, plot_fmt), inputs=all_inputs())


@cli.command("sweep")
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    metavar="DTYPE",
    help="Working precision to sweep (repeatable or comma-separated). "
    "Default: float16, bfloat16, float32, float64.",
)
@click.option(
    "--accum",
    metavar="DTYPE",
    default=None,
    help="Accumulation dtype of the sums over classes, or 'working' for each working dtype "
    "itself. Default: float32 for 16/8-bit types, else the working dtype.",
)
@click.option(
    "--classes",
    multiple=True,
    metavar="C",
    help="Class count (repeatable or comma-separated, each >= 2). Default: 10, 32000.",
)
@click.option(
    "--scales",
    metavar="SPEC",
    default=DEFAULT_SCALES_SPEC,
    show_default=True,
    help="Logit scales (= the largest logit): a list '1,10,100' or 'LO:HI:N' log-spaced points.",
)
@click.option(
    "--case",
    "cases",
    multiple=True,
    metavar="CASE",
    help=f"Synthetic case (repeatable or comma-separated: {', '.join(CASES)}). Default: all.",
)
@click.option(
    "--methods",
    metavar="LIST",
    default="all",
    show_default=True,
    help=f"Comma-separated formulations ({', '.join(METHODS)}; 'default', 'all').",
)
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per cell. Default: about 1024 logits a cell (64 rows at C=10, 1 at C=32000).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    default=0,
    show_default=True,
    help="Seed of the base patterns.",
)
@click.option(
    "--max-bits",
    type=FiniteFloatRange(min=0),  # inf: no break ever, and a JSON report that cannot be written
    default=4.0,
    show_default=True,
    help="A loss error of more bits than this beyond its condition number is a precision break.",
)
@click.option(
    "--tol",
    type=click.FloatRange(min=1e-6, max=0.5),
    default=0.01,
    show_default=True,
    help="Bisection stops when a break is bracketed to within this relative width.",
)
@gate_option(
    "none",
    help="Comma-separated methods that must not break anywhere in the grid (else exit 1); "
    "'none' gates nothing, 'all' every swept method.",
)
@variant_options(smoothing=False)
@click.option("--plot", metavar="FILE", help="Also draw error-vs-scale curves to FILE.png|.svg.")
@format_option(tuple(RENDERERS))
@output_option()
@color_option()
@click.option(
    "--workers",
    "--jobs",  # the old name, for one release (config key `jobs` keeps working too)
    "workers",
    type=click.IntRange(min=1),
    default=None,
    callback=capped_workers,
    help="Tasks run in parallel: forked worker processes on Linux, threads elsewhere (and with "
    "--methods torch/jax). Default: the CPU cores available (at most 8).",
)
@baseline_options("sweep")
def sweep_cmd(
    dtypes: tuple[str, ...],
    accum: str | None,
    classes: tuple[str, ...],
    scales: str,
    cases: tuple[str, ...],
    methods: str,
    rows: int | None,
    seed: int,
    max_bits: float,
    tol: float,
    gate: str,
    logit_scale: float,
    softcap: float | None,
    z_loss: float,
    plot: str | None,
    fmt: str,
    output: str | None,
    color: str,
    workers: int | None,
    baseline: str | None,
    write_baseline: str | None,
    regression_factor: float,
) -> None:
    """Map where each softmax cross-entropy formulation breaks as the logits grow.

    Synthetic logits base * scale (cases random, confident, wrong, margin; the scale is the
    largest logit) are rounded to each dtype; every method and the reference run on them.
    Per dtype a heat map (methods x scales), then each break point (first overflow, NaN/inf
    loss or gradient, or precision loss) bisected to within --tol and set against the dtype's
    ln(max) and ln(smallest subnormal).

    Exit status: 0 ok, 1 a --gate method breaks, 2 bad options, 3 internal error.

    \b
    Example:
      smcheck sweep --dtype float16 --classes 10 --gate log1p --plot sweep.png
    """
    variant = {"z_loss": z_loss, "softcap": softcap, "logit_scale": logit_scale}
    config = _config(dtypes, accum, classes, scales, cases, methods, rows, seed, max_bits, tol,
                     gate, variant)  # fmt: skip
    tail = Tail("sweep", fmt, color, output, baseline=baseline, write_baseline=write_baseline,
                regression_factor=regression_factor)  # fmt: skip
    plot_fmt = _check_plot(plot, output)  # fail before the sweep, not after it
    tail.start({"--plot": plot})
    report = sweep(config, workers=workers or default_workers())
    if plot is not None and plot_fmt is not None:  # beside the report, before it is emitted
        _write_plot(plot, plot_fmt, report)
    doc = to_dict(report)
    finish(tail, report, render, doc, ok=report.ok, identity=grid_identity(doc))
