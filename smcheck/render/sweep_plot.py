"""``sweep --plot``: error-vs-scale curves per method, one panel per dtype (matplotlib, optional).

Pure: :func:`render_plot` returns the image bytes; the command writes them (atomically).
"""

from __future__ import annotations

import io
import math
from typing import Any

from ..errors import UsageError
from ..sweep import SweepReport

__all__ = [
    "MISSING_MATPLOTLIB",
    "PLOT_FORMATS",
    "plot_format",
    "plot_points",
    "render_plot",
    "require_matplotlib",
]

#: File suffix -> matplotlib format.
PLOT_FORMATS = {".png": "png", ".svg": "svg"}

MISSING_MATPLOTLIB = (
    "--plot needs matplotlib, which is not installed: "
    "pip install 'smcheck-xent[plot]' (or pip install matplotlib)"
)


def plot_format(path: str) -> str:
    """The image format from the file name (``.png`` or ``.svg``); UsageError otherwise."""
    lower = path.lower()
    for suffix, fmt in PLOT_FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    raise UsageError(f"--plot {path}: the file name must end in .png or .svg")


def require_matplotlib() -> Any:
    """Import matplotlib's Figure, or raise UsageError naming the ``plot`` extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(MISSING_MATPLOTLIB) from None
    return Figure


def plot_points(report: SweepReport) -> dict[tuple[str, str, float], tuple[float, bool]]:
    """(dtype, method, scale) -> (bits, broken): the largest loss error beyond conditioning over
    classes and cases, and whether any of those cells is broken.

    A broken cell (overflow, NaN/inf loss or gradient) has no accuracy to draw, and neither has a
    cell with no measurable row: their bits are NaN, so the curve has a gap there (and a cross on
    the top edge for broken ones) instead of dropping to 0 bits - which would read as perfect.
    """
    worst: dict[tuple[str, str, float], tuple[float, bool]] = {}
    for cell in report.cells:
        key = (cell.dtype, cell.method, cell.scale)
        broken = cell.verdict == "broken"
        bits = cell.loss_max_excess_bits
        value = math.nan if broken or bits is None or math.isnan(bits) else bits
        old_value, old_broken = worst.get(key, (-math.inf, False))
        if old_broken or broken:
            worst[key] = (math.nan, True)
        else:
            worst[key] = (value if math.isnan(old_value) else max(old_value, value), False)
    return {k: (math.nan if v == -math.inf else v, b) for k, (v, b) in worst.items()}


def render_plot(report: SweepReport, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes.

    Per dtype panel, per method the largest loss error beyond conditioning (bits, worst over
    classes and cases) against the scale; broken cells (overflow, NaN/inf) are crosses on the
    top edge. Vertical lines: ln(max) and -ln(sub/2) of the dtype (exp(z) overflows past the
    first, p = e^-loss rounds to 0 past the second); the horizontal one is ``--max-bits``.
    """
    figure_cls = require_matplotlib()
    c = report.config
    n = len(report.theory)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = figure_cls(figsize=(6.4 * cols, 4.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    worst = plot_points(report)
    for i, t in enumerate(report.theory):
        ax = axes[i // cols][i % cols]
        top = 0.0
        series = []
        for m in c.methods:
            ys = [worst.get((t.dtype, m, s), (math.nan, False)) for s in c.scales]
            top = max([top, *(y for y, _ in ys if not math.isnan(y))])
            series.append((m, ys))
        ceiling = max(top, c.max_bits) * 1.1 + 1.0
        for k, (m, ys) in enumerate(series):
            # NaN (a broken or unmeasured cell) breaks the line: a gap, never a score of 0 bits
            (line,) = ax.plot(c.scales, [y for y, _ in ys], label=m, linewidth=1.2)
            bx = [s for s, (_, b) in zip(c.scales, ys, strict=True) if b]
            if bx:  # one row of crosses per method, stacked under the top edge
                y = ceiling * (1 - 0.04 * k)
                ax.plot(bx, [y] * len(bx), "x", color=line.get_color(), markersize=4)
        ax.set_xscale("log")
        ax.set_ylim(0, ceiling * 1.05)
        ax.axhline(c.max_bits, color="0.5", linestyle=":", linewidth=1)
        for j, (x, label) in enumerate(((t.ln_max, "ln max"), (-t.ln_underflow, "-ln(sub/2)"))):
            if c.scales[0] <= x <= c.scales[-1]:  # the two labels at different heights and sides
                ax.axvline(x, color="0.3", linestyle="--", linewidth=1)
                ax.text(
                    x,
                    ceiling * (0.55 - 0.3 * j),
                    f" {label} = {x:.4g} ",
                    rotation=90,
                    fontsize=7,
                    ha="right" if j == 0 else "left",
                )
        ax.set_title(f"{t.dtype} (accumulate in {t.accum})", fontsize=10)
        ax.set_xlabel("scale = largest logit")
        ax.set_ylabel("loss error beyond conditioning (bits)")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    axes[0][0].legend(fontsize=8, title="x = broken", title_fontsize=7)
    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(buf, format=fmt, metadata=metadata)
    return buf.getvalue()
