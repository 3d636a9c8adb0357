"""``smcheck gradcheck`` end to end: CliRunner on synthetic input and real files in tmp_path;
the renderers on the reports the library returns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli
from smcheck.gradcheck import gradcheck, synthetic
from smcheck.render.gradcheck import (
    GITHUB_MAX,
    render_github,
    render_markdown,
    render_table,
    to_dict,
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run where no smcheck.toml / [tool.smcheck] can change the defaults
    monkeypatch.chdir(tmp_path)
    for var in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["gradcheck", *args], env=env)


def as_json(result: Result) -> dict:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """float32 logits: the seed's row first, then random rows; labels, one ignored."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (12, 5)).astype(np.float32)
    x[0, :3] = [0.0, -800.0, 1.0]
    y = rng.integers(0, 5, 12)
    y[0] = 1
    y[11] = -100
    paths = {"x": tmp_path / "x.npy", "y": tmp_path / "y.npy", "bad": tmp_path / "bad.npy"}
    np.save(paths["x"], x)
    np.save(paths["y"], y)
    np.save(paths["bad"], np.full(12, 7))
    return paths


# --- the JSON schema -----------------------------------------------------------------------


def check_schema(doc: dict) -> None:
    """Exactly the issue's names and types (more keys are allowed)."""
    assert doc["schema"] == "smcheck.gradcheck/1"
    assert isinstance(doc["truth_agreement"], float)
    assert isinstance(doc["ok"], bool)
    assert doc["methods"]
    for m in doc["methods"].values():
        for key in ("max_abs_err", "max_rel_err"):
            assert m[key] is None or isinstance(m[key], float)
        assert isinstance(m["nonfinite_grad_rows"], int)
        assert isinstance(m["passed"], bool)
        assert m["consistency"]["verdict"] in (
            "consistent",
            "inconsistent",
            "inconclusive",
            "nonfinite",
            "unavailable",
        )


def test_default_synthetic_run_passes_and_shows_the_seeds_case() -> None:
    r = run()
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "smcheck gradcheck" in out and "fused *" in out and "PASS" in out
    assert "\x1b[" not in out  # not a terminal: no colour
    assert "extreme" in out and "trusted" in out


def test_json_schema_and_verdicts_in_float16() -> None:
    doc = as_json(run("--dtype", "float16", "--methods", "all", "--format", "json"))
    check_schema(doc)
    assert doc["ok"] is True and doc["input"]["dtype"] == "float16"
    m = doc["methods"]
    assert m["fused"]["passed"] and m["log1p"]["passed"] and m["online"]["passed"]
    assert not m["naive"]["passed"] and not m["shifted"]["passed"]
    assert m["shifted"]["nonfinite_grad_rows"] > 0
    assert doc["tolerance"] == {"atol": 1e-2, "rtol": 1e-2, "source": "default for float16"}
    assert doc["truth"]["ok"] and doc["truth_agreement"] < 1e-11
    assert doc["input"]["cases"]["extreme"] == 10 and doc["input"]["rows"] == 50


def test_gate_and_exit_codes() -> None:
    assert run("--dtype", "float16", "--gate", "shifted").exit_code == 1
    assert run("--dtype", "float16", "--gate", "shifted", "--exit-zero").exit_code == 0
    assert run("--dtype", "float16", "--gate", "none", "--methods", "naive").exit_code == 0
    r = as_json(run("--gate", "all", "--methods", "fused,log1p", "--format", "json"))
    assert r["gate"] == ["fused", "log1p"] and r["ok"]


def test_tolerance_options_change_the_verdict() -> None:
    assert run("--atol", "0", "--rtol", "0").exit_code == 1
    doc = as_json(run("--atol", "1e-3", "--format", "json"))
    assert doc["tolerance"]["atol"] == 1e-3 and doc["tolerance"]["source"] == "given"


def test_files_labels_and_ignored_rows(files: dict[str, Path]) -> None:
    args = [str(files["x"]), "--labels", str(files["y"]), "--format", "json"]
    doc = as_json(run(*args))
    check_schema(doc)
    assert doc["ok"] and doc["input"]["dtype"] == "float32"
    assert doc["input"]["rows"] == 11 and doc["input"]["ignored_rows"] == 1
    assert doc["methods"]["shifted"]["nonfinite_grad_rows"] == 1  # the seed's row
    assert doc["methods"]["shifted"]["worst"]["row"] == 0
    assert run(*args, "--gate", "naive").exit_code == 1
    sample = as_json(run(*args, "--rows", "3"))
    assert sample["input"]["rows"] == 3 and any("checked 3 of 11" in n for n in sample["notes"])


def test_label_free_file(files: dict[str, Path]) -> None:
    doc = as_json(run(str(files["x"]), "--format", "json", "--full"))
    assert doc["input"]["label_free"] and doc["input"]["rows"] == 24
    assert doc["probes"]["full"] and doc["probes"]["entries_per_row"] == 5


def test_consistency_step_below_resolution_is_inconclusive() -> None:
    doc = as_json(
        run("--dtype", "float16", "--case", "random", "--consistency-step", "1e-4", "-f", "json")
    )
    c = doc["methods"]["fused"]["consistency"]
    assert c["verdict"] == "inconclusive" and c["below_resolution"] > 0


def test_bad_input_and_usage_exit_2(files: dict[str, Path]) -> None:
    for args in (
        [str(files["x"]), "--labels", str(files["bad"])],
        [str(files["x"]), "--classes", "4"],
        ["--labels", str(files["y"])],
        ["--methods", "nope"],
        ["--gate", "nope"],
        ["--dtype", "float7"],
        [str(files["x"]) + ".missing"],
    ):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.startswith("smcheck: error:") and len(r.stderr.splitlines()) == 1
        assert "Traceback" not in r.output


def test_output_file_and_colour(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    r = run("--format", "markdown", "--output", str(out))
    assert r.exit_code == 0 and r.stdout == ""
    assert out.read_text().startswith("## smcheck gradcheck: PASS")
    assert "\x1b[" in run("--color", "always").stdout
    assert "\x1b[" not in run("--color", "auto", env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout
    assert "\x1b[" in run("--color", "auto", env={"FORCE_COLOR": "1"}).stdout


def test_help_lists_every_option() -> None:
    text = run("--help").stdout
    for opt in (
        "--labels", "--case", "--rows", "--classes", "--scale", "--seed", "--dtype", "--accum",
        "--cast", "--methods", "--gate", "--atol", "--rtol", "--directions", "--sample",
        "--full", "--consistency-step", "--top", "--format", "--output", "--color",
        "--exit-zero", "--ignore-index", "--logits-key", "--labels-key", "--label-column",
    ):  # fmt: skip
        assert opt in text, opt
    assert "Example:" in text


# --- renderers on library reports ----------------------------------------------------------


def _report(dtype: str = "float16", **kw: object) -> object:
    s = synthetic("all", rows=10, classes=6)
    return gradcheck(s.logits, s.labels, dtype=dtype, row_cases=s.cases, **kw)  # type: ignore[arg-type]


def test_renderers_agree_with_the_report() -> None:
    r = _report(methods=["naive", "shifted", "fused"], gate=["fused", "shifted"], source="a:b,c")
    d = to_dict(r)  # type: ignore[arg-type]
    assert d["ok"] is False and d["verdict"].startswith("FAIL: gated shifted fails")
    json.dumps(d, allow_nan=False)  # strict JSON: no NaN/inf anywhere
    table = render_table(r, width=100)  # type: ignore[arg-type]
    assert "shifted *" in table and "FAIL" in table and "nan" in table
    md = render_markdown(r)  # type: ignore[arg-type]
    assert md.startswith("## smcheck gradcheck: FAIL") and "| shifted | yes |" in md
    gh = render_github(r).splitlines()  # type: ignore[arg-type]
    assert gh[0].startswith("::error title=smcheck gradcheck") and "shifted:" in gh[0]
    assert any(line.startswith("::warning") and "naive:" in line for line in gh)
    assert gh[-1].startswith("::notice") and "FAIL" in gh[-1]
    # the title is a property: its ':' and ',' are escaped, the message's are not
    title = gh[0].split("::")[1]
    assert title == "error title=smcheck gradcheck a%3Ab%2Cc"


def test_github_caps_and_empty_reports() -> None:
    empty = gradcheck(np.array([[np.nan, 1.0]]), np.array([0]))
    assert to_dict(empty)["verdict"].startswith("FAIL: no row")
    gh = render_github(empty).splitlines()
    assert gh[0].startswith("::error") and len(gh) <= 2 * GITHUB_MAX + 1
    assert "no row" in render_table(empty)


def test_docs_cover_every_option_and_json_key() -> None:
    """docs/gradcheck.md names every option of the command and every key of the JSON."""
    import click

    from smcheck.cli.gradcheck_cmd import gradcheck_cmd

    doc = (Path(__file__).resolve().parent.parent / "docs" / "gradcheck.md").read_text()
    for param in gradcheck_cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert any(f"`{o}" in doc for o in param.opts), param.opts
    d = to_dict(_report(methods=["fused"]))  # type: ignore[arg-type]

    def keys(obj: object) -> set[str]:
        """Every key name in a JSON document; the names under methods/cases are data."""
        out: set[str] = set()
        if isinstance(obj, dict):
            for k, v in obj.items():
                out.add(k)
                if k == "methods":
                    out |= {k2 for m in v.values() for k2 in keys(m)}
                elif k != "cases":
                    out |= keys(v)
        elif isinstance(obj, list):
            out = {k for v in obj for k in keys(v)}
        return out

    for key in keys(d):
        assert f"`{key}`" in doc or f".{key}`" in doc, key


def test_an_untrusted_truth_fails_the_run_in_every_format() -> None:
    """A hand-built report whose two truths disagree: every renderer says so."""
    import dataclasses

    r = _report(dtype="float32", methods=["fused"])
    bad = dataclasses.replace(
        r,  # type: ignore[type-var]
        truth=dataclasses.replace(r.truth, ok=False, worst_fraction=0.5),  # type: ignore[attr-defined]
        ok=False,
    )
    assert to_dict(bad)["verdict"].startswith("FAIL: the truth is not trustworthy")
    assert "NOT trusted" in render_table(bad)
    assert render_github(bad).startswith("::error") and "0.5 of the tolerance" in render_github(bad)
    assert "not trustworthy" in render_markdown(bad)


# --- --baseline / --write-baseline ---------------------------------------------------------


def test_baseline_passes_on_itself_and_fails_on_a_worse_case(tmp_path: Path) -> None:
    base = str(tmp_path / "base.json")
    opts = ["--dtype", "float16", "--methods", "naive,fused", "--rows", "10", "-f", "json"]
    first = run(*opts, "--case", "random", "--write-baseline", base)
    assert first.exit_code == 0, first.output
    doc = json.loads(Path(base).read_text())
    assert doc["command"] == "gradcheck" and doc["report"]["methods"]["naive"]["passed"] is False
    assert doc["input"]["shape"] == [10, 10]

    same = run(*opts, "--case", "random", "--baseline", base)
    assert same.exit_code == 0, same.output
    assert same.stderr.startswith("smcheck: no regression against base.json")
    assert same.stdout == first.stdout

    # the extreme rows ([0, -800, 1], +-1000 shifts) make naive's gradient NaN in every row
    worse = run(*opts, "--case", "extreme", "--baseline", base)
    assert worse.exit_code == 1, worse.output
    lines = worse.stderr.splitlines()
    assert "  naive: nonfinite_grad_rows 1 -> 10 (rows 0, 1, 2, 3)" in lines
    assert not any(line.startswith("  fused:") for line in lines)  # fused is as good as before
    assert "  note: input content differs from the baseline's (sha256)" in lines


def test_baseline_a_gated_method_newly_failing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (12, 5)).astype(np.float32)
    xp, yp, base = tmp_path / "x.npy", tmp_path / "y.npy", str(tmp_path / "base.json")
    np.save(xp, x)
    np.save(yp, rng.integers(0, 5, 12))
    args = [str(xp), "--labels", str(yp), "--methods", "naive,fused", "--gate", "all", "-f", "json"]
    first = run(*args, "--write-baseline", base)
    assert first.exit_code == 0, first.output  # both methods pass in float32
    x[5, 2] = 100.0  # exp(100) overflows float32 (ln max = 88.7): naive's gradient is NaN
    np.save(xp, x)
    worse = run(*args, "--baseline", base)
    assert worse.exit_code == 1, worse.output
    lines = worse.stderr.splitlines()
    assert "  naive: nonfinite_grad_rows 0 -> 1 (row 5)" in lines
    assert "  naive: passed its gate in the baseline, fails now" in lines
    onto_input = run(*args, "--write-baseline", str(yp))
    assert onto_input.exit_code == 2 and "refusing to write" in onto_input.stderr


def test_baseline_does_not_excuse_a_run_that_checked_nothing(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3), np.float32))
    np.save(tmp_path / "y.npy", np.full(4, -100))
    args = [str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    base = str(tmp_path / "base.json")
    assert run(*args, "--write-baseline", base).exit_code == 1
    again = run(*args, "--baseline", base)
    assert again.exit_code == 1 and "no row to check" in again.stderr
    assert run(*args, "--baseline", base, "--exit-zero").exit_code == 0
