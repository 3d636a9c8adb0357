"""sweep: break points against theory computed from the dtype (mpmath), cases, config, renderers.

Thresholds are computed here from ``ml_dtypes.finfo`` / ``numpy.finfo`` with mpmath (60 digits),
never from smcheck's own ``Precision`` facts.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import ml_dtypes
import mpmath
import numpy as np
import pytest

from smcheck.errors import UsageError
from smcheck.render.sweep import (
    HEAT_CHAR,
    RENDERERS,
    heat_rows,
    render_github,
    render_json,
    render_markdown,
    render_table,
)
from smcheck.sweep import (
    CASES,
    KINDS,
    SCHEMA,
    Break,
    Cell,
    DtypeTheory,
    SweepConfig,
    SweepReport,
    auto_rows,
    parse_scales,
    sweep,
)
from smcheck.synthetic import case_pattern

FINFO = {
    "float16": np.finfo(np.float16),
    "bfloat16": ml_dtypes.finfo(ml_dtypes.bfloat16),
    "float32": np.finfo(np.float32),
    "float64": np.finfo(np.float64),
}
DTYPES = tuple(FINFO)
TOL = 0.01  # the "within 1%"


def ln_max(dtype: str) -> float:
    """ln of the largest finite value (mpmath, 60 digits)."""
    with mpmath.workdps(60):
        return float(mpmath.log(mpmath.mpf(float(FINFO[dtype].max))))


def ln_half_subnormal(dtype: str) -> float:
    """ln(smallest subnormal / 2): round to nearest sends values at most this to 0."""
    with mpmath.workdps(60):
        return float(mpmath.log(mpmath.mpf(float(FINFO[dtype].smallest_subnormal)) / 2))


def the_break(rep: SweepReport, **match: object) -> Break:
    found = [b for b in rep.breaks if all(getattr(b, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def within(observed: float | None, theory: float, tol: float = TOL) -> bool:
    return observed is not None and abs(observed / theory - 1) <= tol


# ---------------------------------------------------------------------------------------------
# Break points against theory


@pytest.mark.parametrize("dtype", DTYPES)
def test_naive_overflows_where_largest_logit_crosses_ln_max(dtype: str) -> None:
    """exp(z) overflows where the largest logit crosses ln(max): naive's first overflow on the
    confident and margin cases (label at the max). On the random case the chained gradient's
    -1/p_y overflows first: p_y < 1/max, i.e. the loss crosses ln(max) while the largest logit
    is still below it (the issue's statement holds for confident rows only)."""
    rep = sweep(
        SweepConfig(
            dtypes=(dtype,),
            classes=(10,),
            cases=("random", "confident", "margin"),
            methods=("naive",),
            scales=parse_scales("1:1e4:9"),
        )
    )
    theory = ln_max(dtype)  # 11.09 float16, 88.72 float32/bfloat16, 709.78 float64
    for case in ("confident", "margin"):
        b = the_break(rep, case=case, kind="overflow")
        assert b.cause == "exp overflow", (case, b)
        assert within(b.largest_logit, theory), (case, b.largest_logit, theory)
        # the bracket: ok at scale_lo, broken at scale, 1% apart
        assert b.scale_lo is not None and b.scale is not None
        assert b.scale / b.scale_lo <= 1 + TOL
        assert b.scale_lo * 0.999 < theory < b.scale * 1.01
    first = the_break(rep, case="random", kind="overflow")
    assert first.cause == "1/p_y overflow" and within(first.loss, theory)
    assert first.largest_logit is not None and first.largest_logit < theory


def test_naive_overflow_with_32000_classes_float16() -> None:
    rep = sweep(
        SweepConfig(
            dtypes=("float16",),
            classes=(32000,),
            cases=("confident",),
            methods=("naive",),
            scales=(1.0, 4.0, 16.0),
        )
    )
    b = the_break(rep, kind="overflow")
    assert b.cause == "exp overflow"
    assert within(b.largest_logit, ln_max("float16"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_shifted_wrong_case_gradient_and_loss_breaks(dtype: str) -> None:
    """The chained gradient breaks where -1/p_y overflows (p_y < 1/max: -margin > ln max),
    before p_y underflows; the loss goes inf where p_y rounds to 0 (-margin > -ln(sub/2))."""
    rep = sweep(
        SweepConfig(
            dtypes=(dtype,),
            classes=(10,),
            cases=("wrong",),
            methods=("shifted",),
            scales=parse_scales("1:1e4:9"),
        )
    )
    grad = the_break(rep, kind="nonfinite_grad")
    assert grad.cause == "1/p_y overflow"
    assert grad.margin is not None and within(-grad.margin, ln_max(dtype))
    loss = the_break(rep, kind="nonfinite_loss")
    assert loss.cause == "p_y underflow"
    assert loss.margin is not None and within(-loss.margin, -ln_half_subnormal(dtype))
    assert grad.scale is not None and loss.scale is not None and grad.scale < loss.scale


def test_float16_loss_break_is_half_the_smallest_subnormal_not_the_subnormal() -> None:
    """Regression pin: the issue's 'about 16.6' is ln(smallest subnormal); p_y = e^-16.7 is still
    a subnormal (it rounds *up* to 2^-24). It becomes 0 at 17.33 = ln 2 later - 4% off 16.64."""
    rep = sweep(
        SweepConfig(
            dtypes=("float16",),
            classes=(10,),
            cases=("wrong",),
            methods=("shifted",),
            scales=(4.0, 16.0),
            tol=0.001,
        )
    )
    b = the_break(rep, kind="nonfinite_loss")
    assert b.margin is not None
    with mpmath.workdps(30):
        ln_sub = float(mpmath.log(mpmath.mpf(2) ** -24))
    assert -b.margin > -ln_sub * 1.03
    assert within(-b.margin, -ln_half_subnormal("float16"), 0.002)


def test_fused_and_log1p_never_overflow_or_go_nonfinite() -> None:
    rep = sweep(
        SweepConfig(
            classes=(10, 2000),
            methods=("fused", "log1p", "online"),
            scales=parse_scales("0.1:1e4:12"),
        )
    )
    for b in rep.breaks:
        if b.kind != "precision":
            assert b.scale is None, b
    # with 10 and 2000 classes log1p keeps every loss within max_bits of its condition number
    # (not with 32000 in float16: see the subnormal-terms test below)
    assert all(b.scale is None for b in rep.breaks if b.method == "log1p")
    for cell in rep.cells:
        assert cell.nonfinite_loss_frac == 0 and cell.nonfinite_grad_frac == 0


def test_fused_loses_small_losses_where_one_plus_s_rounds_to_one() -> None:
    """fused's known weakness (what log1p is for): on the margin case (label +t, one class at 0,
    the rest lower, C = 10) the float32 loss ~ s' <= 9 e^-t is off by up to eps/2 absolute once
    s = 1 + s' is rounded; beyond its condition number (about t) that exceeds 4 bits = 15 ulps of
    s' once s' < 2^-24 / (2^-23 * 15 t) - between t = 2 (s' <= 1/30 / t) and t = 8."""
    rep = sweep(
        SweepConfig(
            dtypes=("float32",),
            classes=(10,),
            cases=("margin",),
            methods=("fused", "log1p"),
            scales=parse_scales("0.5:100:10"),
        )
    )
    b = the_break(rep, method="fused", kind="precision")
    assert b.scale is not None and 2 < b.scale < 8
    assert the_break(rep, method="log1p", kind="precision").scale is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_accumulation_breaks_precision_earlier(dtype: str) -> None:
    common = {
        "dtypes": (dtype,),
        "classes": (10,),
        "cases": ("margin", "confident"),
        "methods": ("fused",),
        "scales": parse_scales("0.5:200:12"),
    }
    wide = sweep(SweepConfig(**common))  # float32 accumulation
    narrow = sweep(SweepConfig(**common, accum=dtype))
    assert {c.accum for c in narrow.cells} == {dtype}
    for case in ("margin", "confident"):
        n = the_break(narrow, case=case, kind="precision").scale
        w = the_break(wide, case=case, kind="precision").scale
        assert n is not None
        assert w is None or n < w, (case, n, w)


def test_bisection_brackets_are_tight_and_the_loss_is_exact() -> None:
    rep = sweep(
        SweepConfig(
            dtypes=("float32",),
            classes=(10,),
            cases=("wrong",),
            methods=("naive",),
            scales=parse_scales("1:1e3:4"),
            tol=0.003,
        )
    )
    found = [b for b in rep.breaks if b.scale is not None]
    assert found
    for b in found:
        assert b.scale_lo is not None and b.scale is not None
        assert 1 < b.scale / b.scale_lo <= 1.003
    # the reported loss -ln p_y of the wrong case against mpmath on the rounded logits
    b = the_break(rep, kind="nonfinite_loss")
    base, labels = case_pattern("wrong", 10, 64, 0)
    assert b.scale is not None
    z = (base * b.scale).astype(np.float32).astype(np.float64)
    with mpmath.workdps(60):
        worst = max(
            float(
                mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row)) - mpmath.mpf(row[y])
            )
            for row, y in zip(z, labels, strict=True)
        )
    assert b.loss == pytest.approx(worst, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Cases, configuration, grid


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("classes", [2, 10, 300])
def test_case_patterns(case: str, classes: int) -> None:
    base, labels = case_pattern(case, classes, 8, seed=3)
    assert base.shape == (8, classes) and labels.shape == (8,)
    assert base.max() == 1.0  # scale = largest logit
    again, labels2 = case_pattern(case, classes, 8, seed=3)
    assert np.array_equal(base, again) and np.array_equal(labels, labels2)
    rows = np.arange(8)
    z_y = base[rows, labels]
    others = base.copy()
    others[rows, labels] = -np.inf
    margin = z_y - others.max(axis=1)
    if case == "confident":
        assert np.all(labels == base.argmax(axis=1))
    if case == "wrong":
        assert np.all(margin == -2.0) and np.all(z_y == base.min(axis=1))
    if case == "margin":
        assert np.all(margin == 1.0)


def test_parse_scales() -> None:
    assert parse_scales("0.1:1e4:6") == (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    assert parse_scales("3") == (3.0,)
    assert parse_scales("2:2:1") == (2.0,)
    assert len(parse_scales("0.1:1e4:40")) == 40
    for bad in ("", "a", "0,1", "-1", "1:2", "2:1:3", "1:10:0", "inf", "nan"):
        with pytest.raises(UsageError, match="--scales"):
            parse_scales(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ("nope",)}, "unknown method"),
        ({"methods": ("naive",), "gate": ("fused",)}, "not among the swept"),
        ({"classes": (1,)}, ">= 2"),
        ({"dtypes": ("float13",)}, "unknown dtype"),
        ({"accum": "int8"}, "unknown dtype"),
        ({"cases": ("weird",)}, "unknown case"),
        ({"rows": 0}, "--rows"),
        ({"tol": 0.0}, "--tol"),
        ({"scales": ()}, "no scale"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        SweepConfig(**kwargs)


def test_grid_is_complete_and_jobs_do_not_change_it() -> None:
    config = SweepConfig(
        dtypes=("float16", "float32"),
        classes=(3, 10),
        cases=("random", "margin"),
        methods=("naive", "log1p"),
        scales=(0.5, 20.0, 200.0),
        rows=4,
    )
    one = sweep(config)
    assert len(one.cells) == 2 * 2 * 2 * 2 * 3
    assert len(one.breaks) == 2 * 2 * 2 * 2 * len(KINDS)
    for c in one.cells:
        assert c.rows == 4 and c.verdict in HEAT_CHAR
        for f in (c.nonfinite_loss_frac, c.nonfinite_grad_frac, c.overflow_frac):
            assert f is not None and 0 <= f <= 1
    two = sweep(config, workers=2)
    assert two == one


def test_input_that_overflows_the_dtype_is_inconclusive_not_a_break() -> None:
    rep = sweep(SweepConfig(dtypes=("float16",), classes=(10,), cases=("margin",), scales=(1e5,)))
    assert {c.verdict for c in rep.cells} == {"inconclusive"}
    assert all(c.rows == 0 and c.overflow_frac is None for c in rep.cells)
    assert all(b.scale is None for b in rep.breaks)


# ---------------------------------------------------------------------------------------------
# Renderers on a hand-built report


def _hand_report(gate: tuple[str, ...] = ()) -> SweepReport:
    config = SweepConfig(
        dtypes=("float16",),
        classes=(10,),
        cases=("margin",),
        methods=("naive", "log1p"),
        scales=(1.0, 10.0, 100.0),
        gate=gate,
    )

    def cell(method: str, scale: float, verdict: str, ovf: float) -> Cell:
        return Cell(
            dtype="float16",
            classes=10,
            case="margin",
            method=method,
            scale=scale,
            nonfinite_loss_frac=ovf,
            nonfinite_grad_frac=ovf,
            overflow_frac=ovf,
            underflow_frac=0.0,
            loss_max_rel_err=1e-3,
            grad_max_abs_err=1e-4,
            accum="float32",
            rows=64,
            largest_logit=scale,
            margin=scale,
            loss=1.0,
            loss_median_bits=0.5,
            loss_max_bits=1.0,
            loss_max_excess_bits=1.0,
            loss_median_rel_err=1e-4,
            mean_loss_rel_err=float("nan"),
            verdict=verdict,
        )

    cells = (
        cell("naive", 1.0, "ok", 0.0),
        cell("naive", 10.0, "lossy", 0.0),
        cell("naive", 100.0, "broken", 1.0),
        cell("log1p", 1.0, "ok", 0.0),
        cell("log1p", 10.0, "ok", 0.0),
        cell("log1p", 100.0, "ok", 0.0),
    )
    ident = {"dtype": "float16", "classes": 10, "case": "margin"}
    breaks = [
        Break(
            **ident,
            method="naive",
            kind=k,
            scale=11.1,
            scale_lo=11.0,
            largest_logit=11.1,
            margin=11.1,
            loss=0.0,
            cause="exp overflow",
            theory="ln(max)",
            theory_value=11.09,
            observed=11.1,
        )
        for k in ("overflow", "nonfinite_loss", "nonfinite_grad")
    ]
    breaks.append(Break(**ident, method="naive", kind="precision", scale=5.0, cause="lost bits"))
    breaks += [Break(**ident, method="log1p", kind=k, scale=None) for k in KINDS]
    theory = (DtypeTheory.of("float16", "float32"),)
    return SweepReport(config, theory, cells, tuple(breaks), {"float16": "float64"})


def test_json_schema_keys_and_strictness() -> None:
    doc = json.loads(render_json(_hand_report()))
    assert doc["schema"] == SCHEMA == "smcheck.sweep/1"
    assert doc["ok"] is True
    required = {
        "dtype",
        "classes",
        "case",
        "method",
        "scale",
        "nonfinite_loss_frac",
        "nonfinite_grad_frac",
        "overflow_frac",
        "underflow_frac",
        "loss_max_rel_err",
        "grad_max_abs_err",
    }
    assert all(required <= set(g) for g in doc["grid"])
    assert list(doc["grid"][0])[: len(required)] == [
        "dtype",
        "classes",
        "case",
        "method",
        "scale",
        "nonfinite_loss_frac",
        "nonfinite_grad_frac",
        "overflow_frac",
        "underflow_frac",
        "loss_max_rel_err",
        "grad_max_abs_err",
    ]
    assert doc["grid"][0]["mean_loss_rel_err"] is None  # NaN is not JSON
    for b in doc["breaks"]:
        assert {"dtype", "classes", "case", "method", "kind", "scale"} <= set(b)
        assert b["kind"] in {"overflow", "nonfinite_loss", "nonfinite_grad", "precision"}
    assert [b["scale"] for b in doc["breaks"] if b["method"] == "log1p"] == [None] * 4


def test_json_gate_fails_when_a_gated_method_breaks() -> None:
    doc = json.loads(render_json(_hand_report(gate=("naive",))))
    assert doc["ok"] is False and doc["gate"] == ["naive"]
    assert json.loads(render_json(_hand_report(gate=("log1p",))))["ok"] is True


def test_heat_map_and_break_table() -> None:
    rep = _hand_report()
    assert heat_rows(rep, "float16") == {
        "naive": ["ok", "lossy", "broken"],
        "log1p": ["ok", "ok", "ok"],
    }
    text = render_table(rep, color=False, width=120)
    assert "naive  .~X" in text and "log1p  ..." in text
    assert "ovf,loss,grad" in text and "exp overflow" in text and "+0.09%" in text
    assert "log1p: no break of any kind in this grid" in text
    assert "\x1b[" not in text
    assert "\x1b[" in render_table(rep, color=True)


def test_markdown_and_github() -> None:
    md = render_markdown(_hand_report(gate=("naive",)))
    assert md.startswith("## smcheck sweep: FAIL")
    assert "| float16 | 10 | margin | naive (gated) | ovf, loss, grad | 11.1 |" in md
    assert "```" in md
    gh = render_github(_hand_report(gate=("naive",))).splitlines()
    assert sum(line.startswith("::error ") for line in gh) == 4
    assert gh[-1].startswith("::notice title=smcheck sweep::FAIL")
    assert render_github(_hand_report()).startswith("::notice title=smcheck sweep::PASS")


def test_renderer_registry_covers_every_format() -> None:
    rep = _hand_report()
    assert set(RENDERERS) == {"table", "json", "markdown", "github"}
    for render in RENDERERS.values():
        assert render(rep, color=False).endswith("\n")


def test_plot_png_and_svg() -> None:
    pytest.importorskip("matplotlib")
    from smcheck.render.sweep_plot import render_plot

    rep = _hand_report()
    png = render_plot(rep, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    svg = render_plot(rep, "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")


def test_dtype_theory_matches_mpmath() -> None:
    for d in DTYPES:
        t = DtypeTheory.of(d, "float32")
        assert math.isclose(t.ln_max, ln_max(d), rel_tol=1e-12)
        assert math.isclose(t.ln_underflow, ln_half_subnormal(d), rel_tol=1e-12)


def test_overflow_window_narrower_than_a_grid_step_is_found() -> None:
    """Regression: in float32 the overflow flag of the chained gradient is on only while
    ln(max) < loss < -ln(sub/2) (88.7..104: -1/p_y is inf but p_y not yet 0), a window between
    two grid points here. The nonfinite_grad bisection lands in it; the overflow break must
    move there instead of staying at exp's overflow (largest logit ln max, scale 89)."""
    rep = sweep(
        SweepConfig(
            dtypes=("float32",),
            classes=(10,),
            cases=("wrong",),
            methods=("naive",),
            scales=parse_scales("1:1e3:20"),
        )
    )
    b = the_break(rep, kind="overflow")
    assert b.cause == "1/p_y overflow" and within(b.loss, ln_max("float32"))
    assert b.scale is not None and b.scale < 50


def test_log1p_float16_many_classes_loses_bits_where_exp_terms_are_subnormal() -> None:
    """Finding against "log1p never breaks": each exp(z_j - m) is rounded to float16 before the
    (float32) sum. On the margin case with 32000 classes the terms e^-t.. are float16 subnormals
    (below 2^-14, relative spacing up to 1) while their sum, the loss, is still a normal float16
    number: log1p's loss is off by more than 4 bits beyond its condition there. The grid steps
    over the window (excess < 4 at both neighbours); the near-miss midpoint finds it."""
    rep = sweep(
        SweepConfig(
            dtypes=("float16",),
            classes=(32000,),
            cases=("margin",),
            methods=("log1p",),
            scales=(8.0, 11.0, 15.0, 20.0, 27.0),
        )
    )
    b = the_break(rep, kind="precision")
    assert b.scale is not None and b.loss is not None
    smallest_normal = float(FINFO["float16"].smallest_normal)  # 2^-14
    assert math.exp(-b.scale) < smallest_normal < b.loss
    assert all(x.scale is None for x in rep.breaks if x.kind != "precision")


def test_float8_e4m3fn_breaks_of_shifting_methods_are_shift_overflows() -> None:
    # e4m3fn has no inf: z - max(z) is NaN once the row's range passes 448 - in the wrong
    # case (+scale and the label at -scale) at scale 224; the float32 sum cannot overflow
    cfg = SweepConfig(
        dtypes=("float8_e4m3fn",),
        classes=(10,),
        scales=(1.0, 10.0, 100.0, 300.0),
        cases=("wrong",),
        methods=("fused", "naive"),
    )
    rep = sweep(cfg)
    fused = [b for b in rep.breaks if b.method == "fused" and b.kind == "overflow"]
    assert fused and fused[0].scale is not None and 224 / 1.01 < fused[0].scale <= 300
    assert fused[0].cause is not None and fused[0].cause.startswith("shift overflow")
    naive = [b for b in rep.breaks if b.method == "naive" and b.kind == "overflow"]
    assert naive[0].cause is None or not naive[0].cause.startswith("shift")  # naive: no shift


def test_grid_loss_keeps_a_confident_rows_tiny_loss() -> None:
    import mpmath

    cfg = SweepConfig(
        dtypes=("float64",), classes=(10,), scales=(40.0,), cases=("margin",), methods=("log1p",)
    )
    rep = sweep(cfg)
    (cell,) = rep.cells
    x, y = case_pattern("margin", 10, auto_rows(10), 0)  # the rows the sweep used (seed 0)
    z = x * 40.0
    with mpmath.workdps(50):
        losses = [
            mpmath.log1p(
                mpmath.fsum(
                    mpmath.exp(mpmath.mpf(float(v)) - mpmath.mpf(float(r[k])))
                    for j, v in enumerate(r)
                    if j != k
                )
            )
            for r, k in zip(z, y, strict=True)
        ]
    assert cell.loss == pytest.approx(float(max(losses)), rel=1e-12)
