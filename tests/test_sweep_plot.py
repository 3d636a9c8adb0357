"""``sweep --plot``: broken cells are drawn as gaps (and crosses), never as 0 bits of error."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from smcheck.render.sweep_plot import plot_points, render_plot
from smcheck.sweep import SweepConfig, sweep


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    # float16, label at the max ("margin" case): naive's exp overflows once the largest logit
    # passes ln(65504) = 11.09; fused never breaks on finite input
    cfg = SweepConfig(
        dtypes=("float16",),
        classes=(10,),
        cases=("margin",),
        methods=("naive", "fused"),
        scales=(1.0, 4.0, 30.0, 300.0),
        rows=4,
    )
    return sweep(cfg)


def test_a_broken_cell_has_no_accuracy_value(report) -> None:  # type: ignore[no-untyped-def]
    pts = plot_points(report)
    for scale in (30.0, 300.0):  # beyond ln(max): every row of naive overflows
        bits, broken = pts[("float16", "naive", scale)]
        assert broken and math.isnan(bits)  # a gap, not a perfect-looking 0
    for scale in (1.0, 4.0):
        bits, broken = pts[("float16", "naive", scale)]
        assert not broken and math.isfinite(bits)
    for scale in (1.0, 4.0, 30.0, 300.0):
        bits, broken = pts[("float16", "fused", scale)]
        assert not broken and math.isfinite(bits) and bits >= 0


def test_the_plot_draws_the_gap(report) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    svg = render_plot(report, "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
