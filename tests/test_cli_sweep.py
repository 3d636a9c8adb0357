"""``smcheck sweep`` end to end: CliRunner on a small grid, files in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from smcheck.cli import cli

SMALL = [
    "sweep",
    "--dtype",
    "float16",
    "--classes",
    "10",
    "--scales",
    "1:1e3:7",
    "--case",
    "margin,wrong",
    "--jobs",
    "1",
]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*SMALL, *args])
    return result.exit_code, result.stdout, result.stderr


def test_table_heat_map_and_breaks() -> None:
    code, out, err = run("--color", "never")
    assert code == 0, err
    assert "float16 (accumulate in float32): ln(max) = 11.09" in out
    assert "naive    " in out and "X" in out
    assert "1/p_y overflow" in out and "p_y underflow" in out and "exp overflow" in out
    assert "log1p: no break of any kind in this grid" in out
    assert "\x1b[" not in out
    assert err == ""


def test_json_schema_and_gate_pass() -> None:
    code, out, _ = run("--format", "json", "--gate", "log1p,fused")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "smcheck.sweep/1" and doc["ok"] is True
    assert doc["gate"] == ["fused", "log1p"]
    assert len(doc["grid"]) == 1 * 1 * 2 * 5 * 7
    kinds = {b["kind"] for b in doc["breaks"]}
    assert kinds == {"overflow", "nonfinite_loss", "nonfinite_grad", "precision"}


def test_gate_fails_with_exit_1() -> None:
    code, out, _ = run("--format", "json", "--gate", "shifted")
    assert code == 1
    assert json.loads(out)["ok"] is False
    code, out, _ = run("--format", "github", "--gate", "naive")
    assert code == 1
    assert out.startswith("::error title=smcheck sweep::naive breaks")


def test_markdown_to_output_file(tmp_path: Path) -> None:
    dest = tmp_path / "sweep.md"
    code, out, _ = run("--format", "markdown", "--output", str(dest))
    assert code == 0 and out == ""
    assert dest.read_text().startswith("## smcheck sweep: PASS")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scales", "1:2"], "--scales"),
        (["--gate", "nope"], "--gate"),
        (["--methods", "naive", "--gate", "fused"], "not among the swept"),
        (["--classes", "1"], ">= 2"),
        (["--classes", "ten"], "expected integers"),
        (["--case", "weird"], "--case"),
        (["--accum", "int4"], "unknown dtype"),
        (["--plot", "map.gif"], ".png or .svg"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_plot_png_and_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "map.png"
    svg = tmp_path / "map.svg"
    assert run("--format", "json", "--plot", str(png))[0] == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert run("--format", "json", "--plot", str(svg), "--methods", "naive,log1p")[0] == 0
    assert ET.fromstring(svg.read_bytes()).tag.endswith("svg")
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary behind


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    """A fresh interpreter where importing matplotlib fails (sys.modules entry None)."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from smcheck.cli import cli\n"
        f"cli({[*SMALL, '--plot', str(tmp_path / 'map.png')]!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "smcheck-xent[plot]" in proc.stderr and "matplotlib" in proc.stderr
    assert not (tmp_path / "map.png").exists()


def test_jobs_2_gives_the_same_json() -> None:
    one = run("--format", "json")[1]
    result = CliRunner().invoke(cli, [*SMALL[:-2], "--jobs", "2", "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(one)


def test_help_lists_every_option() -> None:
    result = CliRunner().invoke(cli, ["sweep", "--help"])
    assert result.exit_code == 0
    for opt in (
        "--dtype",
        "--accum",
        "--classes",
        "--scales",
        "--case",
        "--methods",
        "--rows",
        "--seed",
        "--max-bits",
        "--tol",
        "--gate",
        "--plot",
        "--format",
        "--output",
        "--color",
        "--jobs",
    ):
        assert opt in result.stdout


# --- --baseline / --write-baseline --------------------------------------------------------------

TINY = ["--no-config", "sweep", "--dtype", "float16", "--classes", "10", "--case", "margin"]
TINY += ["--methods", "naive,fused", "--scales", "1,20", "--jobs", "1"]


def _edit_baseline(src: Path, dest: Path, method: str, kind: str, scale: float | None) -> None:
    doc = json.loads(src.read_text())
    for b in doc["report"]["breaks"]:
        if (b["method"], b["kind"]) == (method, kind):
            b["scale"] = scale
    dest.write_text(json.dumps(doc))


def test_baseline_passes_on_itself_and_fails_on_an_earlier_or_new_break(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    invoke = CliRunner().invoke
    first = invoke(cli, [*TINY, "-f", "json", "--write-baseline", str(base)])
    assert first.exit_code == 0, first.output
    doc = json.loads(base.read_text())
    assert doc["command"] == "sweep" and doc["input"]["grid"]["scales"] == [1.0, 20.0]
    (overflow,) = [
        b for b in doc["report"]["breaks"] if (b["method"], b["kind"]) == ("naive", "overflow")
    ]
    assert 11.0 < overflow["scale"] < 11.2  # ln(65504) = 11.09

    same = invoke(cli, [*TINY, "-f", "json", "--baseline", str(base)])
    assert same.exit_code == 0, same.output
    assert same.stderr.splitlines() == ["smcheck: no regression against base.json"]
    assert same.stdout == first.stdout

    # a baseline whose naive overflowed only at scale 100: now it breaks at 11.1, earlier
    _edit_baseline(base, tmp_path / "later.json", "naive", "overflow", 100.0)
    earlier = invoke(cli, [*TINY, "--baseline", str(tmp_path / "later.json")])
    assert earlier.exit_code == 1, earlier.output
    assert earlier.stderr.splitlines() == [
        "smcheck: 1 regression against later.json:",
        "  naive: overflow in float16, C=10, case margin from scale 11.1 (baseline: 100)",
    ]
    # a baseline where naive never gave an inf loss in the swept range
    _edit_baseline(base, tmp_path / "never.json", "naive", "nonfinite_loss", None)
    new = invoke(cli, [*TINY, "--baseline", str(tmp_path / "never.json")])
    assert new.exit_code == 1, new.output
    assert "(never in the baseline's range)" in new.stderr
    # within --tol of the baseline's break point is the same break
    _edit_baseline(base, tmp_path / "close.json", "naive", "overflow", overflow["scale"] * 1.005)
    assert invoke(cli, [*TINY, "--baseline", str(tmp_path / "close.json")]).exit_code == 0


def test_baseline_grid_differences_are_notes(tmp_path: Path) -> None:
    base = str(tmp_path / "base.json")
    invoke = CliRunner().invoke
    assert invoke(cli, [*TINY, "--write-baseline", base]).exit_code == 0
    wider = [*TINY[:-4], "--scales", "1,30", "--jobs", "1", "--baseline", base]
    result = invoke(cli, wider)
    assert result.exit_code == 0, result.output
    assert "  note: grid differs from the baseline's: scales [1.0, 20.0] -> [1.0, 30.0]" in (
        result.stderr.splitlines()
    )
    out = str(tmp_path / "report.json")
    same = invoke(cli, [*TINY, "-o", out, "--write-baseline", out])
    assert same.exit_code == 2 and "--write-baseline and --output" in same.stderr


def test_a_gated_sweep_that_measured_nothing_fails() -> None:
    # 1e5 overflows float16 in the cast itself: every cell is inconclusive - not a pass
    args = ["sweep", "--dtype", "float16", "--classes", "10", "--scales", "1e5,2e5"]
    result = CliRunner().invoke(cli, [*args, "--case", "margin", "--gate", "naive"])
    assert result.exit_code == 1
    assert "nothing measured for naive" in result.stdout
