"""The eval renderers on hand-built reports: pure functions, checked parsed or by substring."""

from __future__ import annotations

import dataclasses
import json
import math
import xml.etree.ElementTree as ET

import pytest

from smcheck.evaluate import EvalReport, GateConfig, InputSummary, MethodReport, WorstRow
from smcheck.render.common import gh_escape_data, gh_escape_property
from smcheck.render.eval_formats import (
    GITHUB_MAX,
    render_github,
    render_json,
    render_junit,
    render_markdown,
    to_dict,
)
from smcheck.render.eval_table import render_table


def _method(name: str, **kw: object) -> MethodReport:
    base = {
        "name": name,
        "gated": False,
        "measured": 1000,
        "nan_loss_rows": 0,
        "inf_loss_rows": 0,
        "nonfinite_grad_rows": 0,
        "grad_checked": 1000,
        "overflow_rows": 0,
        "underflow_rows": 0,
        "loss_max_rel_err": 1.5e-3,
        "loss_max_rel_err_row": 4,
        "loss_median_rel_err": 2.0e-4,
        "loss_max_ulp_err": 2.5,
        "loss_max_ulp_err_row": 4,
        "loss_median_ulp_err": 0.25,
        "loss_p99_ulp_err": 1.0,
        "loss_max_bits": 1.807,
        "loss_max_gate_err": 0.9,
        "loss_max_gate_err_row": 4,
        "mean_loss_rel_err": 6.0e-6,
        "grad_max_abs_err": 4.0e-4,
        "grad_max_abs_err_row": 9,
        "grad_max_rel_err": 1.0e-3,
        "verdict": "ok",
        "problems": (),
        "ok": True,
    }
    base.update(kw)
    return MethodReport(**base)  # type: ignore[arg-type]


NAIVE_PROBLEM = "naive overflows on 737 rows: logits reach 22.9 > ln(max float16) = 11.09"
VERDICT = (
    "fused passes in float16 on 1000 rows (loss error <= 0.9 ulp, gradient error <= 0.0004); "
    + NAIVE_PROBLEM
    + " - use a fused log-softmax (fused or log1p)"
)


def make_report(**kw: object) -> EvalReport:
    inp = InputSummary(
        logits="samples/overconfident_f32.npy",
        labels="samples/overconfident_labels.npy",
        rows=1000,
        classes=10,
        dtype="float16",
        accum="float32",
        cast="ieee",
        label_free=False,
        unit="rows",
        eligible_rows=1000,
        ignored_rows=0,
        nonfinite_input_rows=0,
        ref_nonfinite=0,
        logit_min=-20.5,
        logit_max=22.9,
        logit_max_row=17,
        margin_max=30.25,
        margin_max_row=3,
        ln_max=11.089866488461016,
        underflow_margin=16.635532333438686,
        rows_over_ln_max=737,
        rows_margin_underflow=12,
        cast_changed=9998,
        cast_max_rel_change=4.8e-4,
        cast_overflowed=0,
        cast_saturated=0,
        cast_flushed_to_zero=0,
        grad_policy="gradient of every eligible row at its label",
        original_shape=(1000, 10),
        notes=(),
    )
    methods = (
        _method(
            "naive",
            nan_loss_rows=95,
            inf_loss_rows=642,
            nonfinite_grad_rows=737,
            overflow_rows=737,
            mean_loss_rel_err=None,
            verdict="broken",
            problems=(NAIVE_PROBLEM,),
            ok=False,
        ),
        _method("fused", gated=True),
    )
    worst = (
        WorstRow(3, 7, 22.9, 30.25, 7.3e-14, 30.25, (("naive", None, None, True),
                                                     ("fused", 30.25, 1.0e-4, False)),
                 score=2.5, max_rel_err_of=("fused",)),
    )  # fmt: skip
    gate = GateConfig(("fused",), 4.0, 0.00390625, ("overflow", "nonfinite"), True)
    base = {
        "input": inp,
        "reference": "float64 with exact shifts (TwoSum)",
        "gate": gate,
        "methods": methods,
        "worst": worst,
        "ok": True,
        "verdict": VERDICT,
    }
    base.update(kw)
    return EvalReport(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- json

REQUIRED_INPUT = {
    "logits": str,
    "labels": (str, type(None)),
    "rows": int,
    "classes": int,
    "dtype": str,
    "accum": (str, type(None)),
    "ignored_rows": int,
    "nonfinite_input_rows": int,
}
REQUIRED_METHOD = {
    "nan_loss_rows": int,
    "inf_loss_rows": int,
    "nonfinite_grad_rows": int,
    "overflow_rows": int,
    "underflow_rows": int,
    "loss_max_rel_err": (float, type(None)),
    "loss_median_rel_err": (float, type(None)),
    "loss_max_ulp_err": (float, type(None)),
    "mean_loss_rel_err": (float, type(None)),
    "grad_max_abs_err": (float, type(None)),
    "grad_max_rel_err": (float, type(None)),
    "ok": bool,
}


def check_schema(doc: dict) -> None:
    """Every key the schema smcheck.eval/1 names, with its type (used by the CLI tests too)."""
    assert doc["schema"] == "smcheck.eval/1"
    assert isinstance(doc["ok"], bool)
    assert isinstance(doc["reference"]["precision"], str)
    for key, typ in REQUIRED_INPUT.items():
        assert isinstance(doc["input"][key], typ), key
        assert not isinstance(doc["input"][key], bool) or typ is bool, key
    assert doc["methods"]
    for name, m in doc["methods"].items():
        for key, typ in REQUIRED_METHOD.items():
            assert key in m, (name, key)
            assert isinstance(m[key], typ), (name, key, m[key])
            if typ is int:
                assert not isinstance(m[key], bool), (name, key)


def test_json_schema_and_values() -> None:
    text = render_json(make_report())
    doc = json.loads(text)
    check_schema(doc)
    assert doc["methods"]["naive"]["mean_loss_rel_err"] is None
    assert doc["methods"]["naive"]["overflow_rows"] == 737
    assert doc["methods"]["fused"]["loss_max_ulp_err"] == 2.5
    assert doc["methods"]["fused"]["gated"] is True
    assert doc["input"]["accum"] == "float32"
    assert doc["worst_rows"][0]["methods"]["naive"] == {
        "loss": None,
        "rel_err": None,
        "nonfinite": True,
    }
    assert doc["verdict"] == VERDICT
    assert doc == to_dict(make_report())


def test_json_has_no_nan_or_inf() -> None:
    rep = make_report(methods=(_method("fused", gated=True, loss_max_rel_err=float("inf")),))
    doc = json.loads(render_json(rep))
    assert doc["methods"]["fused"]["loss_max_rel_err"] is None


# ---------------------------------------------------------------- table


def test_table_plain_text_has_every_part_and_no_ansi() -> None:
    out = render_table(make_report(), color=False, width=100)
    assert "\x1b[" not in out
    for part in (
        "smcheck eval",
        "samples/overconfident_f32.npy",
        "1000 rows x 10 classes",
        "float16 (accumulate in float32, cast ieee)",
        "ln(max float16) = 11.09, 737 rows above it",
        "Methods (counts in rows",
        "fused *",
        "broken",
        "Worst rows",
        "non-finite",
        "PASS: fused passes in float16",
    ):
        assert part in out, part
    assert all(len(line) <= 100 for line in out.splitlines())
    naive_line = next(line for line in out.splitlines() if line.lstrip().startswith("naive"))
    assert naive_line.split()[1:5] == ["737", "737", "737", "0"]


def test_table_colour_only_when_asked() -> None:
    out = render_table(make_report(), color=True)
    assert "\x1b[" in out
    failing = make_report(ok=False, verdict="fused gives NaN loss on 3 rows")
    assert "FAIL: fused gives NaN loss on 3 rows" in render_table(failing)


def test_table_label_free_says_so() -> None:
    rep = make_report()
    inp = dataclasses.replace(
        rep.input, labels=None, label_free=True, unit="pairs", grad_policy="label-free: X"
    )
    out = render_table(dataclasses.replace(rep, input=inp, worst=()))
    assert "label-free mode" in out and "counts over (row, class) pairs" in out
    assert "Methods (counts in pairs" in out and "Worst rows" not in out


# ---------------------------------------------------------------- markdown


def test_markdown_summary() -> None:
    md = render_markdown(make_report())
    assert md.startswith("## smcheck eval: PASS")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | gated |")
    assert rows[1].startswith("| naive |") and "❌ broken" in rows[1]
    assert rows[2].startswith("| fused | yes |") and "✅ ok" in rows[2]
    assert f"- {NAIVE_PROBLEM}" in md
    assert "| row | label | max logit | margin | ref p_y | score | naive | fused |" in md
    assert "| 3 | 7 | 22.9 | 30.2 | 7.30e-14 | 2.5 | non-finite | 1.00e-04 ^ |" in md


# ---------------------------------------------------------------- github


def test_github_annotations_are_aggregated() -> None:
    many = tuple(f"problem {i}" for i in range(25))
    rep = make_report(
        methods=(
            _method("naive", problems=many, verdict="broken", ok=False),
            _method("fused", gated=True, problems=("fused bad",), verdict="broken", ok=False),
        ),
        ok=False,
    )
    lines = render_github(rep).splitlines()
    errors = [x for x in lines if x.startswith("::error")]
    warnings = [x for x in lines if x.startswith("::warning")]
    assert errors == ["::error title=smcheck eval samples/overconfident_f32.npy::fused bad"]
    assert len(warnings) == GITHUB_MAX
    assert warnings[-1].endswith("... and 16 more findings")
    assert lines[-1].startswith("::notice") and "FAIL" in lines[-1]


def test_github_escapes_newlines_and_percent() -> None:
    rep = make_report(methods=(_method("fused", gated=True, problems=("50% bad\nrow",)),))
    assert "50%25 bad%0Arow" in render_github(rep)


# ---------------------------------------------------------------- junit


@pytest.mark.parametrize("ok", [True, False])
def test_junit_one_case_per_gated_method_and_check(ok: bool) -> None:
    fused = _method("fused", gated=True)
    if not ok:
        fused = _method("fused", gated=True, overflow_rows=3, loss_max_gate_err=9.0, ok=False)
    rep = make_report(methods=(make_report().methods[0], fused), ok=ok)
    root = ET.fromstring(render_junit(rep))
    cases = root.findall(".//testcase")
    names = [(c.get("classname"), c.get("name")) for c in cases]
    assert names == [
        ("smcheck.eval.fused", "overflow"),
        ("smcheck.eval.fused", "nonfinite"),
        ("smcheck.eval.fused", "loss_error"),
        ("smcheck.eval.fused", "grad_error"),
    ]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ([] if ok else ["overflow", "loss_error"])
    assert root.get("failures") == str(len(failed))


def test_github_title_escapes_comma_and_colon() -> None:
    # GitHub splits workflow-command properties at ',' and ends them at ':'
    inp = dataclasses.replace(make_report().input, logits="runs/a,b:c.npy")
    out = render_github(make_report(input=inp))
    for line in out.splitlines():
        assert line.split("::")[1].split(" ", 1)[1] == "title=smcheck eval runs/a%2Cb%3Ac.npy"


def test_escaping_helpers() -> None:
    assert gh_escape_data("a%b\r\nc:d,e") == "a%25b%0D%0Ac:d,e"
    assert gh_escape_property("a%b\r\nc:d,e") == "a%25b%0D%0Ac%3Ad%2Ce"


def test_table_shows_unmeasured_rows_and_an_inf_margin() -> None:
    inp = dataclasses.replace(
        make_report().input, ref_nonfinite=2, margin_max=math.inf, margin_max_row=4
    )
    text = render_table(make_report(input=inp), width=120)
    assert "largest margin  inf (max(z) - z_y, row 4)" in text
    assert "not measured    2 rows whose reference loss is not finite" in text
    assert "not measured" not in render_table(make_report(), width=120)
