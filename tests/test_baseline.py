"""Baselines: pass on identical data, fail on one more overflowing row (naming it), notes."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.baseline import (
    BASELINE_SCHEMA,
    RULES,
    Regression,
    compare,
    grid_identity,
    input_identity,
    make_baseline,
    render_result,
    sweep_breaks,
)
from smcheck.cli import cli
from smcheck.cli.baseline_opts import baseline_options, finish_baseline
from smcheck.errors import InputError


def _method(**over: Any) -> dict[str, Any]:
    m = {
        "overflow_rows": 0,
        "nan_loss_rows": 0,
        "inf_loss_rows": 0,
        "nonfinite_grad_rows": 0,
        "underflow_rows": 0,
        "loss_max_ulp_err": 1.0,
        "loss_p99_ulp_err": 0.9,
        "grad_max_abs_err": 3e-4,
        "mean_loss_rel_err": 2e-5,
        "gated": False,
        "ok": True,
    }
    m.update(over)
    return m


def _report(**methods: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": "smcheck.eval/1",
        "input": {"dtype": "float16"},
        "methods": methods or {"fused": _method(gated=True)},
        "worst_rows": [],
    }


IDENT = {"shape": [40, 8], "dtype": "float32", "sha256": "aa", "labels_sha256": "bb"}


def _base(report: dict[str, Any], ident: dict[str, Any] = IDENT) -> dict[str, Any]:
    return make_baseline("eval", report, ident)


# --- compare ------------------------------------------------------------------------------------


def test_identical_report_has_no_regression_and_no_note() -> None:
    r = _report()
    result = compare(_base(r), copy.deepcopy(r), IDENT, command="eval")
    assert result.ok and result.notes == []


def test_one_more_overflowing_row_is_a_regression_naming_the_row() -> None:
    old = _report(naive=_method(), fused=_method(gated=True))
    new = copy.deepcopy(old)
    new["methods"]["naive"].update(overflow_rows=1, nan_loss_rows=1)
    new["worst_rows"] = [{"row": 17, "methods": {"naive": {"nonfinite": True}}}]
    result = compare(_base(old), new, IDENT, command="eval")
    assert result.regressions == [
        Regression("naive", "overflow_rows", 0, 1, (17,)),
        Regression("naive", "nan_loss_rows", 0, 1, (17,)),
    ]
    assert result.regressions[0].describe() == "naive: overflow_rows 0 -> 1 (row 17)"


@pytest.mark.parametrize(
    ("key", "before", "after", "regressed"),
    [
        ("loss_max_ulp_err", 1.0, 1.9, False),  # within the factor 2
        ("loss_max_ulp_err", 1.0, 2.5, True),
        ("loss_max_ulp_err", 0.1, 0.9, False),  # 9x, but below 1 ulp: rounding noise
        ("grad_max_abs_err", 1e-5, 4e-4, False),  # below eps(float16) = 9.8e-4
        ("grad_max_abs_err", 1e-3, 3e-3, True),
        ("mean_loss_rel_err", None, 1.0, False),  # was not measurable: counts cover that
    ],
)
def test_errors_regress_beyond_factor_and_floor(
    key: str, before: float | None, after: float, regressed: bool
) -> None:
    old = _report(fused=_method(**{key: before}))
    new = _report(fused=_method(**{key: after}))
    result = compare(_base(old), new, IDENT, command="eval")
    assert (not result.ok) == regressed
    assert compare(_base(old), new, IDENT, command="eval", factor=1000).ok


def test_a_gated_method_that_starts_failing_regresses() -> None:
    old = _report(fused=_method(gated=True, ok=True))
    new = _report(fused=_method(gated=True, ok=False))
    (reg,) = compare(_base(old), new, IDENT, command="eval").regressions
    assert reg.describe() == "fused: passed its gate in the baseline, fails now"


def test_improvements_pass_and_differences_are_noted() -> None:
    old = _report(naive=_method(overflow_rows=3), fused=_method())
    new = _report(fused=_method(), log1p=_method())
    new["input"]["dtype"] = "bfloat16"
    ident = {**IDENT, "sha256": "cc", "shape": [41, 8]}
    result = compare(_base(old), new, ident, command="eval")
    assert result.ok
    assert result.notes == [
        "input shape differs from the baseline's: [40, 8] -> [41, 8]",
        "working dtype differs: float16 -> bfloat16",
        "naive: in the baseline, not run now",
        "log1p: not in the baseline (nothing to compare)",
    ]


def test_not_a_baseline_of_this_command() -> None:
    r = _report()
    with pytest.raises(InputError, match="b.json: not a smcheck baseline"):
        compare(r, r, IDENT, command="eval", name="b.json")
    with pytest.raises(InputError, match="a baseline of 'smcheck sweep', not of 'smcheck eval'"):
        compare(make_baseline("sweep", r, IDENT), r, IDENT, command="eval")


def test_input_identity_hashes_content_in_slices() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 7)).astype(np.float32)
    a = input_identity(z, np.arange(300))
    assert a == input_identity(z.copy(), np.arange(300))
    assert a["shape"] == [300, 7] and a["dtype"] == "float32"
    z[299, 6] += 1
    b = input_identity(z, np.arange(300))
    assert b["sha256"] != a["sha256"] and b["labels_sha256"] == a["labels_sha256"]
    assert "labels_sha256" not in input_identity(z)


# --- end to end with eval's real JSON report ----------------------------------------------------


def _fixture(tmp_path: Path, extra_overflow: bool) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (40, 8)).astype(np.float32)
    y = rng.integers(0, 8, 40)
    z[3, 5] = 12.0  # one row over ln(65504) = 11.09 in float16: naive overflows
    if extra_overflow:
        z[21, 1] = 11.75
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    return z, y, tmp_path / "logits.npy", tmp_path / "labels.npy"


def _eval_json(logits: Path, labels: Path) -> dict[str, Any]:
    args = ["--no-config", "eval", str(logits), "--labels", str(labels), "--dtype", "float16"]
    result = CliRunner().invoke(cli, [*args, "--format", "json", "--exit-zero"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_report_against_its_baseline(tmp_path: Path) -> None:
    z, y, lp, yp = _fixture(tmp_path, extra_overflow=False)
    base = make_baseline("eval", _eval_json(lp, yp), input_identity(z, y))
    again = compare(base, _eval_json(lp, yp), input_identity(z, y), command="eval")
    assert again.ok and again.notes == []

    z2, y2, lp, yp = _fixture(tmp_path, extra_overflow=True)
    worse = compare(base, _eval_json(lp, yp), input_identity(z2, y2), command="eval")
    lines = [r.describe() for r in worse.regressions]
    assert "naive: overflow_rows 1 -> 2 (row 21)" in lines
    assert all(r.method in ("naive", "shifted") for r in worse.regressions)
    assert worse.notes == ["input content differs from the baseline's (sha256)"]


# --- the CLI helpers, on a stand-in command -----------------------------------------------------


@click.command("probe-baseline")
@click.option("--overflow", type=int, default=0)
@click.option("--exit-zero", is_flag=True)
@baseline_options()
@click.pass_context
def probe(
    ctx: click.Context,
    overflow: int,
    exit_zero: bool,
    baseline: str | None,
    write_baseline: str | None,
    regression_factor: float,
) -> None:
    """A command whose naive method overflows on ``--overflow`` rows (always fails its gate)."""
    report = _report(naive=_method(overflow_rows=overflow), fused=_method(gated=True, ok=False))
    click.echo(json.dumps(report))
    code = finish_baseline(
        "probe-baseline", report, IDENT, 1, baseline, write_baseline, regression_factor, exit_zero
    )
    ctx.exit(code)


@pytest.fixture
def with_probe() -> Iterator[None]:
    cli.add_command(probe)
    try:
        yield
    finally:
        del cli.commands["probe-baseline"]


def test_cli_write_then_compare(with_probe: None, tmp_path: Path) -> None:
    path = str(tmp_path / "base.json")
    run = CliRunner().invoke
    first = run(cli, ["--no-config", "probe-baseline", "--overflow", "1", "--write-baseline", path])
    assert first.exit_code == 1  # writing a baseline keeps the command's own status
    doc = json.loads(Path(path).read_text())
    assert doc["schema"] == BASELINE_SCHEMA and doc["command"] == "probe-baseline"

    same = run(cli, ["--no-config", "probe-baseline", "--overflow", "1", "--baseline", path])
    assert same.exit_code == 0  # accepted findings do not fail
    assert same.stderr.startswith("smcheck: no regression against base.json")
    assert json.loads(same.stdout)["schema"] == "smcheck.eval/1"  # the report is untouched

    worse = run(cli, ["--no-config", "probe-baseline", "--overflow", "2", "--baseline", path])
    assert worse.exit_code == 1
    assert worse.stderr.splitlines() == [
        "smcheck: 1 regression against base.json:",
        "  naive: overflow_rows 1 -> 2",
    ]
    args = ["--no-config", "probe-baseline", "--overflow", "2", "--baseline", path, "--exit-zero"]
    assert run(cli, args).exit_code == 0


def test_cli_bad_baseline_files_exit_2(with_probe: None, tmp_path: Path) -> None:
    (tmp_path / "junk.json").write_text("{not json")
    for name, message in (("missing.json", "baseline file does not exist"), ("junk.json", "")):
        args = ["--no-config", "probe-baseline", "--baseline", str(tmp_path / name)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2
        assert result.stderr.startswith("smcheck: error: ") and message in result.stderr


# --- the other commands' rules, on hand-built reports --------------------------------------------


def test_every_command_with_a_json_report_takes_the_baseline_options_and_has_rules() -> None:
    from smcheck.compare import CompareReport
    from smcheck.evaluate import SCHEMA as EVAL
    from smcheck.render.gradcheck import SCHEMA as GRADCHECK
    from smcheck.sweep import SCHEMA as SWEEP

    assert set(RULES) == {EVAL, GRADCHECK, SWEEP, CompareReport.SCHEMA}
    for name in ("eval", "gradcheck", "sweep", "compare"):
        opts = {o for p in cli.commands[name].params for o in p.opts}
        assert {"--baseline", "--write-baseline", "--regression-factor"} <= opts, name


def _grad_report(nonfinite_rows: int, worst_rows: tuple[int, ...], **over: Any) -> dict[str, Any]:
    method = {
        "max_abs_err": 1e-4,
        "max_ulp_err": 2.0,
        "max_dir_err": 5e-5,
        "nonfinite_grad_rows": nonfinite_rows,
        "nonfinite_entries": 10 * nonfinite_rows,
        "failed_entries": 10 * nonfinite_rows,
        "failed_directions": 0,
        "gated": True,
        "passed": nonfinite_rows == 0,
    }
    method.update(over)
    worst = [{"method": "naive", "row": r, "nonfinite": True} for r in worst_rows]
    return {
        "schema": "smcheck.gradcheck/1",
        "input": {"dtype": "float16"},
        "methods": {"naive": method},
        "worst": worst,
    }


def test_gradcheck_rules() -> None:
    old = _grad_report(0, ())
    base = make_baseline("gradcheck", old, IDENT)
    assert compare(base, copy.deepcopy(old), IDENT, command="gradcheck").ok
    new = _grad_report(1, (6,))
    lines = [r.describe() for r in compare(base, new, IDENT, command="gradcheck").regressions]
    assert lines == [
        "naive: nonfinite_grad_rows 0 -> 1 (row 6)",
        "naive: nonfinite_entries 0 -> 10 (row 6)",
        "naive: failed_entries 0 -> 10",
        "naive: passed its gate in the baseline, fails now",  # "passed", not "ok", in gradcheck
    ]
    # an error beyond the factor and above eps(float16); max_rel_err is not compared
    worse = _grad_report(0, (), max_abs_err=3e-3, max_rel_err=1.0)
    (reg,) = compare(base, worse, IDENT, command="gradcheck").regressions
    assert reg == Regression("naive", "max_abs_err", 1e-4, 3e-3)


def _cmp_report(nan_rows: tuple[int, ...], grad_err: float = 1e-7, **checks: bool) -> dict:
    unit = {"ref_nonfinite_rows": 0, "ref_nonfinite_row_ids": [], "ignored_nonzero_rows": 0}
    return {
        "schema": "smcheck.compare/1",
        "input": {"dtype": "float32"},
        "loss": {
            **unit,
            "nonfinite_rows": len(nan_rows),
            "nonfinite_row_ids": list(nan_rows),
            "max_gate_ulp_err": 0.5,
            "max_ulp_err": 1e6,  # ulps at a tiny L*: not compared
            "max_abs_err": 1.0,  # the loss's absolute error: not compared
        },
        "grad": {**unit, "nonfinite_rows": 0, "nonfinite_row_ids": [], "max_abs_err": grad_err},
        "checks": [{"name": n, "gated": True, "ok": ok} for n, ok in checks.items()],
    }


def test_compare_rules_name_the_new_nan_rows_and_failing_checks() -> None:
    old = _cmp_report((4,), nonfinite=False, **{"grad-error": True})
    base = make_baseline("compare", old, IDENT)
    assert compare(base, copy.deepcopy(old), IDENT, command="compare").ok
    new = _cmp_report((4, 7, 9), 1e-3, nonfinite=False, **{"grad-error": False})
    new["loss"].update(max_ulp_err=1e9, max_abs_err=9.0)
    lines = [r.describe() for r in compare(base, new, IDENT, command="compare").regressions]
    assert lines == [
        "loss: nonfinite_rows 1 -> 3 (rows 7, 9)",
        "grad: max_abs_err 1e-07 -> 0.001",
        "grad-error: passed its gate in the baseline, fails now",
    ]
    no_grad = _cmp_report((4,), nonfinite=False)
    no_grad["grad"] = None
    result = compare(base, no_grad, IDENT, command="compare")
    assert result.ok and result.notes == ["grad: in the baseline, not run now"]


def _brk(method: str, kind: str, scale: float | None) -> dict[str, Any]:
    return {"dtype": "float16", "classes": 10, "case": "margin", "method": method, "kind": kind,
            "scale": scale}  # fmt: skip


def _sweep(*breaks: dict[str, Any], scales: tuple[float, ...] = (1.0, 20.0)) -> dict[str, Any]:
    return {
        "schema": "smcheck.sweep/1",
        "config": {"scales": list(scales), "tol": 0.01},
        "breaks": list(breaks),
    }


def test_sweep_breaks_earlier_or_new_are_regressions() -> None:
    # the baseline swept up to 1000: a break at 700 where it saw none is new
    old = _sweep(
        _brk("naive", "overflow", 11.13), _brk("fused", "overflow", None), scales=(1.0, 1000.0)
    )
    assert sweep_breaks(old, copy.deepcopy(old)) == ([], [])
    same = _sweep(_brk("naive", "overflow", 11.05), _brk("fused", "overflow", None))
    assert sweep_breaks(old, same) == ([], [])  # within tol: the same break, bisected again
    later = _sweep(_brk("naive", "overflow", 50.0), _brk("fused", "overflow", None))
    assert sweep_breaks(old, later) == ([], [])  # an improvement
    worse = _sweep(_brk("naive", "overflow", 10.9), _brk("fused", "overflow", 700.0))
    regs, notes = sweep_breaks(old, worse)
    assert [r.describe() for r in regs] == [
        "naive: overflow in float16, C=10, case margin from scale 10.9 (baseline: 11.1)",
        "fused: overflow in float16, C=10, case margin from scale 700 (never in the baseline's "
        "range)",
    ]
    other = _sweep(_brk("log1p", "overflow", 3.0))
    assert sweep_breaks(old, other) == (
        [],
        [
            "2 break points of the baseline's grid not swept now",
            "1 breaks in cells the baseline did not sweep (nothing to compare)",
        ],
    )


def test_sweep_baseline_notes_a_different_grid_and_no_factor() -> None:
    old = _sweep(_brk("naive", "overflow", 11.13))
    new = _sweep(_brk("naive", "overflow", 11.13), scales=(1.0, 30.0))
    base = make_baseline("sweep", old, grid_identity(old))
    result = compare(base, new, grid_identity(new), command="sweep")
    assert result.ok
    assert result.notes == ["grid differs from the baseline's: scales [1.0, 20.0] -> [1.0, 30.0]"]
    assert render_result(result, "b.json", 2.0).splitlines()[0] == (
        "smcheck: no regression against b.json"  # sweep compares no errors: no factor to show
    )


def test_sweep_break_beyond_the_baselines_range_is_not_a_regression() -> None:
    from smcheck.baseline import sweep_breaks

    b = {"dtype": "float16", "classes": 10, "case": "wrong", "method": "naive", "kind": "overflow"}
    old = {"config": {"tol": 0.01, "scales": [1.0, 5.0]}, "breaks": [{**b, "scale": None}]}
    new = {"config": {"tol": 0.01, "scales": [1.0, 50.0]}, "breaks": [{**b, "scale": 5.58}]}
    regressions, notes = sweep_breaks(old, new)
    assert regressions == [] and any("largest scale 5" in n for n in notes)
    new = {"config": {"tol": 0.01, "scales": [1.0, 50.0]}, "breaks": [{**b, "scale": 4.0}]}
    assert len(sweep_breaks(old, new)[0]) == 1  # inside the baseline's range: a new break
