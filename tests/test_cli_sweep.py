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
