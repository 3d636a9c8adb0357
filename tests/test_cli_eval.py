"""``smcheck eval`` end to end: CliRunner on real files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import smcheck
from smcheck.cli import cli
from smcheck.evaluate import evaluate

from .test_render_eval import check_schema


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run where no smcheck.toml / [tool.smcheck] can change the defaults
    monkeypatch.chdir(tmp_path)
    for var in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["eval", *args], env=env, input=stdin)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A float32 classifier whose rows 0..5 overflow exp in float16 (logit 12 > 11.09)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 3, (40, 6)).astype(np.float32)
    x[:6, 2] = 12.0
    y = rng.integers(0, 6, 40)
    y[39] = -100
    paths = {
        "x": tmp_path / "x.npy",
        "y": tmp_path / "y.npy",
        "ytxt": tmp_path / "y.txt",
        "npz": tmp_path / "d.npz",
        "csv": tmp_path / "d.csv",
    }
    np.save(paths["x"], x)
    np.save(paths["y"], y)
    paths["ytxt"].write_text("\n".join(map(str, y)) + "\n")
    np.savez(paths["npz"], scores=x, target=y)
    lines = ["a,b,c,d,e,f,label"] + [
        ",".join(repr(float(v)) for v in row) + f",{lab}" for row, lab in zip(x, y, strict=True)
    ]
    paths["csv"].write_text("\n".join(lines) + "\n")
    return paths


def as_json(result: Result) -> dict:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


# ---------------------------------------------------------------- formats of input


def test_npy_with_labels_json_schema(files: dict[str, Path]) -> None:
    r = run(str(files["x"]), "--labels", str(files["y"]), "--dtype", "float16", "-f", "json")
    assert r.exit_code == 0, r.output
    doc = as_json(r)
    check_schema(doc)
    assert doc["input"]["rows"] == 40 and doc["input"]["classes"] == 6
    assert doc["input"]["dtype"] == "float16" and doc["input"]["accum"] == "float32"
    assert doc["input"]["ignored_rows"] == 1
    assert doc["methods"]["naive"]["overflow_rows"] == 6
    assert doc["methods"]["naive"]["ok"] is False
    assert doc["methods"]["fused"]["ok"] is True and doc["ok"] is True
    assert list(doc["methods"]) == ["naive", "shifted", "fused", "log1p"]
    # the numbers are the library's
    rep = evaluate(np.load(files["x"]), np.load(files["y"]), dtype="float16")
    assert doc["methods"]["fused"]["loss_max_ulp_err"] == rep.method("fused").loss_max_ulp_err


def test_npz_keys_csv_label_column_txt_labels_and_stdin_agree(files: dict[str, Path]) -> None:
    base = ["--dtype", "float32", "-f", "json"]
    docs = [
        as_json(run(str(files["x"]), "--labels", str(files["y"]), *base)),
        as_json(run(str(files["npz"]), "--logits-key", "scores", "--labels-key", "target", *base)),
        as_json(run(str(files["csv"]), "--label-column", "label", *base)),
        as_json(run(str(files["csv"]), "--label-column", "6", *base)),
        as_json(run(str(files["x"]), "--labels", str(files["ytxt"]), *base)),
        as_json(run("-", "--label-column", "label", *base, stdin=files["csv"].read_text())),
    ]
    for d in docs[1:]:
        assert d["methods"] == docs[0]["methods"]


def test_text_defaults_to_float32(files: dict[str, Path]) -> None:
    doc = as_json(run(str(files["csv"]), "--label-column", "label", "-f", "json"))
    assert doc["input"]["dtype"] == "float32"


def test_lm_shaped_input_is_flattened(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.save(tmp_path / "lm.npy", rng.standard_normal((2, 8, 50)).astype(np.float16))
    np.save(tmp_path / "lab.npy", rng.integers(0, 50, 16))
    doc = as_json(run("lm.npy", "--labels", "lab.npy", "-f", "json"))
    assert (doc["input"]["rows"], doc["input"]["classes"]) == (16, 50)
    assert doc["input"]["original_shape"] == [2, 8, 50]
    assert doc["input"]["dtype"] == "float16"


def test_label_free_bare_call_says_so(files: dict[str, Path]) -> None:
    r = run(str(files["x"]), "--dtype", "float16")
    assert r.exit_code == 0, r.output
    assert "label-free mode" in r.stdout
    assert "counts over (row, class) pairs" in r.stdout
    doc = as_json(run(str(files["x"]), "--dtype", "float16", "-f", "json"))
    assert doc["input"]["labels"] is None and doc["input"]["label_free"] is True
    assert doc["methods"]["naive"]["overflow_rows"] == 6 * 6  # 6 rows x 6 classes


# ---------------------------------------------------------------- options


def test_methods_all_and_gate_and_thresholds(files: dict[str, Path]) -> None:
    x, y = str(files["x"]), str(files["y"])
    doc = as_json(run(x, "--labels", y, "--methods", "all", "-f", "json"))
    assert list(doc["methods"]) == list(smcheck.METHODS)
    doc = as_json(run(x, "--labels", y, "--methods", "fused", "--gate", "log1p", "-f", "json"))
    assert list(doc["methods"]) == ["fused", "log1p"]
    assert doc["gate"]["methods"] == ["log1p"]
    doc = as_json(run(x, "--labels", y, "--max-loss-ulp", "0", "--max-grad-err", "1", "-f", "json"))
    assert doc["gate"]["max_loss_ulp"] == 0.0 and doc["gate"]["max_grad_err"] == 1.0


def test_exit_codes(files: dict[str, Path], tmp_path: Path) -> None:
    x, y = str(files["x"]), str(files["y"])
    assert run(x, "--labels", y, "--dtype", "float16").exit_code == 0
    failing = run(x, "--labels", y, "--dtype", "float16", "--gate", "naive")
    assert failing.exit_code == 1
    assert "naive overflows on 6 rows" in failing.stdout
    assert run(x, "--labels", y, "--dtype", "f16", "--gate", "naive", "--exit-zero").exit_code == 0
    assert run(x, "--labels", y, "--gate", "fused", "--max-loss-ulp", "0").exit_code == 1
    # --fail-on none: naive's overflow no longer fails it (its finite rows are accurate)
    r = run(x, "--labels", y, "--dtype", "f16", "--gate", "naive", "--fail-on", "none")
    assert r.exit_code == 0 and "broken" in r.stdout  # still described, not gated
    # bad usage and bad input: exit 2 with one line on stderr
    for args in (
        [x, "--methods", "nope"],
        [x, "--fail-on", "nan"],
        [x, "--dtype", "float7"],
        [str(tmp_path / "missing.npy")],
    ):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.count("\n") == 1 and "error" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full(40, 9))
    r = run(x, "--labels", str(bad))
    assert r.exit_code == 2 and "bad.npy" in r.stderr and "row 0" in r.stderr
    assert run(x, "--format", "yaml").exit_code == 2
    r = run(str(files["npz"]), "--logits-key", "scores", "--max-bytes", "100")
    assert r.exit_code == 2 and "100" in r.stderr and r.stderr.count("\n") == 1


def test_no_eligible_row_exits_1(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, dtype=np.float32))
    r = run("nan.npy", "-f", "json")
    assert r.exit_code == 1
    assert "no eligible row" in r.stderr
    assert json.loads(r.stdout)["ok"] is False


def test_ignore_index_cast_accum_and_top(tmp_path: Path) -> None:
    x = np.array([[70000.0, 0.0], [1.0, 2.0], [3.0, 1.0]])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([0, 7, 1]))
    args = ["x.npy", "--labels", "y.npy", "--dtype", "float16", "-f", "json"]
    doc = as_json(run(*args, "--ignore-index", "7"))
    assert doc["input"]["ignored_rows"] == 1
    assert doc["input"]["nonfinite_input_rows"] == 1  # 70000 overflows float16 to inf
    assert doc["input"]["cast_overflowed"] == 1
    doc = as_json(run(*args, "--ignore-index", "7", "--cast", "saturate", "--accum", "float16"))
    assert doc["input"]["nonfinite_input_rows"] == 0 and doc["input"]["cast_saturated"] == 1
    assert doc["input"]["accum"] == "float16"
    assert len(doc["worst_rows"]) == 2
    doc = as_json(run(*args, "--ignore-index", "7", "--top", "1"))
    assert len(doc["worst_rows"]) == 1
    r = run(*args[:-2], "--ignore-index", "7", "--top", "0")
    assert "Worst rows" not in r.stdout


@pytest.mark.parametrize("fmt", ["markdown", "github", "junit"])
def test_ci_formats(files: dict[str, Path], fmt: str) -> None:
    r = run(str(files["x"]), "--labels", str(files["y"]), "--dtype", "float16", "-f", fmt)
    assert r.exit_code == 0
    first = {"markdown": "## smcheck eval: PASS", "github": "::warning", "junit": "<?xml"}[fmt]
    assert r.stdout.startswith(first)


def test_output_file_is_written_and_never_an_input(files: dict[str, Path]) -> None:
    x, y = str(files["x"]), str(files["y"])
    r = run(x, "--labels", y, "-f", "json", "--output", "report.json")
    assert r.exit_code == 0 and r.stdout == ""
    check_schema(json.loads(Path("report.json").read_text()))
    before = files["y"].read_bytes()
    r = run(x, "--labels", y, "-o", y)
    assert r.exit_code == 2 and "refusing to write" in r.stderr
    assert files["y"].read_bytes() == before


@pytest.mark.parametrize("suffix", ["csv", "npz"])
def test_per_row_file_against_the_library(files: dict[str, Path], suffix: str) -> None:
    x = np.load(files["x"])
    y = np.load(files["y"])
    r = run(str(files["x"]), "--labels", str(files["y"]), "--dtype", "float16",
            "--per-row", f"rows.{suffix}", "--chunk-rows", "7")  # fmt: skip
    assert r.exit_code == 0, r.output
    if suffix == "npz":
        with np.load(f"rows.{suffix}") as z:
            cols = {k: z[k] for k in z.files}
    else:
        lines = Path("rows.csv").read_text().splitlines()
        head = lines[0].split(",")
        data = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
        cols = {h: data[:, i] for i, h in enumerate(head)}
    assert cols["row"].tolist() == list(range(40))
    assert cols["label"].tolist() == y.tolist()
    ref = smcheck.reference(x, y, dtype="float16")
    np.testing.assert_array_equal(cols["ref_loss"][:39], ref.loss[:39])
    assert np.isnan(cols["ref_loss"][39])
    for name in ("naive", "fused"):
        res = smcheck.cross_entropy(x, y, method=name, dtype="float16")
        np.testing.assert_array_equal(cols[f"{name}_loss"], res.loss.astype(np.float64))
        bad = ~np.isfinite(res.loss) | ~np.isfinite(res.grad).all(axis=1)
        bad[39] = False
        assert cols[f"{name}_nonfinite"].astype(bool).tolist() == bad.tolist()
    assert cols["naive_overflow"].sum() == 6


def test_per_row_bad_suffix_is_usage_error(files: dict[str, Path]) -> None:
    r = run(str(files["x"]), "--per-row", "rows.txt")
    assert r.exit_code == 2 and ".csv or .npz" in r.stderr


# ---------------------------------------------------------------- colour


def test_colour_policy(files: dict[str, Path]) -> None:
    x = str(files["x"])
    assert "\x1b[" not in run(x).stdout  # not a terminal: plain
    assert "\x1b[" in run(x, env={"FORCE_COLOR": "1"}).stdout
    assert "\x1b[" not in run(x, env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout
    assert "\x1b[" in run(x, "--color", "always", env={"NO_COLOR": "1"}).stdout
    assert "\x1b[" not in run(x, "--color", "never", env={"FORCE_COLOR": "1"}).stdout
    # a report file is not a terminal: plain unless forced
    assert run(x, "-o", "plain.txt").exit_code == 0
    assert "\x1b[" not in Path("plain.txt").read_text()
    assert run(x, "-o", "forced.txt", "--color", "always").exit_code == 0
    assert "\x1b[" in Path("forced.txt").read_text()
    # colour never leaks into machine formats
    assert "\x1b[" not in run(x, "-f", "json", "--color", "always").stdout


# ---------------------------------------------------------------- chunking


def test_chunked_run_equals_one_shot(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    np.save(tmp_path / "big.npy", (rng.standard_normal((300, 64)) * 6).astype(np.float32))
    np.save(tmp_path / "lab.npy", rng.integers(0, 64, 300))
    args = ["big.npy", "--labels", "lab.npy", "--dtype", "float16", "-f", "json"]
    one = as_json(run(*args, "--chunk-rows", "300", "--workers", "1"))
    assert as_json(run(*args, "--chunk-rows", "16", "--workers", "2")) == one
    # a 0.01 MiB budget forces many chunks (one row of 64 classes costs ~12 KiB)
    assert as_json(run(*args, "--chunk-mb", "0.01")) == one


# ---------------------------------------------------------------- samples

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_samples_are_what_the_script_makes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "made"
    out.mkdir()
    mod.main(out)
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".npy", ".npz", ".csv"))
    for name in made:
        assert (out / name).read_bytes() == (SAMPLES / name).read_bytes(), name
    assert sum((SAMPLES / n).stat().st_size for n in made) < 1_000_000


def test_samples_show_what_their_readme_says() -> None:
    s = str(SAMPLES)
    healthy = as_json(run(f"{s}/healthy_f32.npy", "--labels", f"{s}/healthy_labels.npy",
                          "--dtype", "float16", "-f", "json"))  # fmt: skip
    assert all(m["verdict"] == "ok" for m in healthy["methods"].values())
    over = as_json(run(f"{s}/overconfident_f32.npy", "--labels", f"{s}/overconfident_labels.npy",
                       "--dtype", "float16", "-f", "json"))  # fmt: skip
    assert over["methods"]["naive"]["verdict"] == "broken"
    assert over["methods"]["shifted"]["verdict"] == "broken"
    assert over["methods"]["fused"]["verdict"] == "ok" and over["ok"]
    csv = as_json(run(f"{s}/classifier.csv", "--label-column", "label", "-f", "json"))
    assert csv["input"]["ignored_rows"] == 1 and csv["input"]["rows"] == 40
    lm = as_json(run(f"{s}/lm_logits_f16.npy", "--labels", f"{s}/lm_labels.npy", "-f", "json"))
    assert lm["input"]["original_shape"] == [4, 32, 512] and lm["input"]["dtype"] == "float16"


# ---------------------------------------------------------------- documentation is complete

DOC = Path(__file__).resolve().parent.parent / "docs" / "eval.md"


def test_every_option_format_and_json_key_is_documented(files: dict[str, Path]) -> None:
    from smcheck.cli.eval_cmd import RENDERERS, eval_cmd

    doc = DOC.read_text(encoding="utf-8")
    for param in eval_cmd.params:
        if getattr(param, "hidden", False) or not param.opts or not param.opts[0].startswith("-"):
            continue
        assert f"`{param.opts[0]}" in doc, param.opts[0]
    for fmt in RENDERERS:
        assert f"`--format {fmt}`" in doc or f"`{fmt}`" in doc, fmt
    d = as_json(run(str(files["x"]), "--labels", str(files["y"]), "-f", "json"))
    keys = set(d) | set(d["input"]) | set(d["gate"]) | set(d["methods"]["fused"])
    keys |= set(d["worst_rows"][0]) | set(d["worst_rows"][0]["methods"]["fused"])
    for key in keys - {"methods"}:
        assert f"`{key}`" in doc, key


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from smcheck.cli.options import progress_reporter

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    with progress_reporter(io.StringIO()) as cb:
        assert cb is None
    tty = Tty()
    with progress_reporter(tty) as cb:
        assert cb is not None
        cb(5, 10)
        cb(10, 10)
    assert "10/10" in tty.getvalue()


def test_dask_engine_gives_the_local_json(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    rng = np.random.default_rng(6)
    np.save(tmp_path / "x.npy", (rng.standard_normal((2, 20, 30)) * 6).astype(np.float16))
    np.save(tmp_path / "y.npy", rng.integers(0, 30, 40))
    args = ["x.npy", "--labels", "y.npy", "-f", "json", "--chunk-rows", "7", "--workers", "2"]
    local = as_json(run(*args))
    assert as_json(run(*args, "--engine", "dask")) == local
    r = run(str(SAMPLES / "classifier.csv"), "--label-column", "label", "--engine", "dask")
    assert r.exit_code == 2 and "--engine dask reads a .npy file" in r.stderr


# ---------------------------------------------------------------- --baseline / --write-baseline


def test_baseline_passes_on_itself_and_names_one_more_overflowing_row(
    files: dict[str, Path], tmp_path: Path
) -> None:
    base = tmp_path / "base.json"
    args = [str(files["x"]), "--labels", str(files["y"]), "--dtype", "float16", "-f", "json"]
    first = run(*args, "--gate", "naive", "--write-baseline", str(base))
    assert first.exit_code == 1, first.output  # naive overflows on rows 0..5: its own status
    doc = json.loads(base.read_text())
    assert doc["command"] == "eval" and doc["report"] == json.loads(first.stdout)
    assert doc["input"]["shape"] == [40, 6] and doc["input"]["dtype"] == "float32"

    same = run(*args, "--gate", "naive", "--baseline", str(base))
    assert same.exit_code == 0, same.output  # today's findings are accepted
    assert same.stderr.splitlines() == [
        "smcheck: no regression against base.json (errors may grow up to 2x)"
    ]
    assert same.stdout == first.stdout  # the report itself is unchanged

    x = np.load(files["x"])
    x[30, 4] = 11.5  # exp(11.5) = 98715 > 65504: one more overflowing row in float16
    np.save(files["x"], x)
    worse = run(*args, "--gate", "naive", "--baseline", str(base))
    assert worse.exit_code == 1, worse.output
    lines = worse.stderr.splitlines()
    assert lines[0].startswith("smcheck: ") and "regressions against base.json:" in lines[0]
    assert "  naive: overflow_rows 6 -> 7 (row 30)" in lines
    assert "  note: input content differs from the baseline's (sha256)" in lines
    assert run(*args, "--baseline", str(base), "--exit-zero").exit_code == 0


def test_write_baseline_never_onto_an_input_or_the_report(
    files: dict[str, Path], tmp_path: Path
) -> None:
    x, y = str(files["x"]), str(files["y"])
    before = files["y"].read_bytes()
    onto_input = run(x, "--labels", y, "--write-baseline", y)
    assert onto_input.exit_code == 2 and "refusing to write" in onto_input.stderr
    assert files["y"].read_bytes() == before
    out = str(tmp_path / "r.json")
    same = run(x, "--labels", y, "-o", out, "--write-baseline", out)
    assert same.exit_code == 2 and "--write-baseline and --output" in same.stderr
    assert not Path(out).exists()  # refused before the run


def test_baseline_of_another_command_is_bad_input(files: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "sweep-base.json"
    other.write_text(json.dumps({"schema": "smcheck.baseline/1", "command": "sweep"}))
    r = run(str(files["x"]), "--labels", str(files["y"]), "--baseline", str(other))
    assert r.exit_code == 2 and r.stdout == ""  # checked before the run: no report
    assert "a baseline of 'smcheck sweep', not of 'smcheck eval'" in r.stderr


def test_baseline_does_not_excuse_a_run_that_checked_nothing(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, np.float32))
    base = str(tmp_path / "base.json")
    assert run(str(tmp_path / "nan.npy"), "--write-baseline", base).exit_code == 1
    again = run(str(tmp_path / "nan.npy"), "--baseline", base)
    assert again.exit_code == 1  # no regression, but no row was eligible either
    assert "smcheck: no regression against base.json" in again.stderr
    assert "no eligible row" in again.stderr


@pytest.mark.parametrize("flag", ["--max-loss-ulp", "--max-grad-err"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_regression_nan_or_inf_threshold_is_a_usage_error(
    files: dict[str, Path], flag: str, value: str
) -> None:
    # a NaN threshold compares false with every error: it would switch the check off
    r = run(str(files["x"]), "--labels", str(files["y"]), flag, value)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert [line for line in r.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: Invalid value for '{flag}': '{value}' is not a finite number."
        if value != "-inf"
        else f"Error: Invalid value for '{flag}': -inf is not in the range x>=0."
    ]


def test_regression_nan_threshold_from_the_config_file_is_a_usage_error(
    files: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "smcheck.toml").write_text("[eval]\nmax-loss-ulp = nan\n")
    r = run(str(files["x"]), "--labels", str(files["y"]))
    assert r.exit_code == 2, r.output
    assert "max-loss-ulp" in r.stderr and "finite" in r.stderr


def test_regression_reference_beyond_float64_row_is_shown(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.array([[1.7e308, -1.7e308, 0.0], [1.0, 2.0, 3.0]]))
    np.save(tmp_path / "l.npy", np.array([1, 0]))
    r = run(str(tmp_path / "w.npy"), "--labels", str(tmp_path / "l.npy"))
    assert r.exit_code == 0, r.output
    assert "largest margin  inf (max(z) - z_y, row 0)" in r.stdout
    assert "not measured    1 rows whose reference loss is not finite" in r.stdout
    assert "Warning" not in r.stderr
    d = as_json(run(str(tmp_path / "w.npy"), "--labels", str(tmp_path / "l.npy"), "-f", "json"))
    assert d["input"]["ref_nonfinite_rows"] == 1
