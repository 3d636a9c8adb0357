"""Data text never drives a terminal or a CI log (issue 13: text that reaches logs and terminals).

A file name, a CSV header, an npz key or a baseline's names are data. Written as they are, a file
named ``x\\n::stop-commands::tok`` starts a line that GitHub runs as a workflow command, an ESC
byte moves the cursor or recolours the log (also with ``--color never``), a bidi override
reorders what a reviewer reads, and a JUnit report with a C0 control is not XML. Each output
path gets a hostile input here: stdout and stderr must hold no raw control byte and no line that
a runner reads as a workflow command which smcheck did not mean to write; JUnit parses and JSON
holds the name exactly.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.render.common import gh_escape_data, gh_escape_property, md_cell, safe_text

#: A name that tries everything at once: a workflow command after a newline, a CSI sequence
#: (ESC and the one-byte C1 form), DEL, a bidi override, a tab, CR.
HOSTILE = "x\n::stop-commands::tok\x1b[31mred\x9b2J\x7f\u202egpj.\tz\r::error::owned"

#: Characters that must never reach stdout/stderr raw (newline itself is fine between lines).
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
#: The workflow commands smcheck means to write (``--format github`` only): kind and title.
_OURS = re.compile(r"::(error|warning|notice) title=smcheck[^:]*::")


def assert_inert(text: str, *, github: bool = False) -> None:
    """No raw control character, and no line a runner reads as a workflow command (GitHub trims
    leading whitespace first) unless it is one of smcheck's own annotations."""
    __tracebackhide__ = True
    raw = _RAW.search(text)
    assert raw is None, f"raw {raw.group()!r} in {text!r}"
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped.startswith("::"):
            continue
        assert github and _OURS.match(stripped), f"a workflow command not smcheck's: {line!r}"


# --------------------------------------------------------------------------- the function


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("x\n::stop-commands::tok", "x\\n::stop-commands::tok"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("\x00\x07\x08\t\r\x7f", "\\x00\\x07\\x08\\t\\r\\x7f"),
        ("c1 \x85 \x9b", "c1 \\x85 \\x9b"),
        ("\u202egpj.exe \u2066x\u2069", "\\u202egpj.exe \\u2066x\\u2069"),
        ("\u200e \u200f \u061c", "\\u200e \\u200f \\u061c"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("bytes \udcff", "bytes \\udcff"),  # a non-UTF-8 file name byte (surrogateescape)
        ("\ufffe\uffff", "\\ufffe\\uffff"),
    ],
)
def test_safe_text_escapes_every_control(text: str, shown: str) -> None:
    assert safe_text(text) == shown
    assert_inert(safe_text(text))
    shown.encode("utf-8")  # always writable to a UTF-8 stream


def test_safe_text_keeps_ordinary_text() -> None:
    for text in ("samples/run 1/logits.npy", "résumé – 日本語 ∑ 😀", "a:b,c|d%e\\f", ""):
        assert safe_text(text) is text or safe_text(text) == text
    assert safe_text(None) == "None" and safe_text(3) == "3"


def test_github_escapes_then_escapes_the_rest() -> None:
    # GitHub's own escapes for what it decodes (%, CR, LF; and : , in properties) ...
    assert gh_escape_data("50%\r\n") == "50%25%0D%0A"
    assert gh_escape_property("a:b,c") == "a%3Ab%2Cc"
    # ... and everything else shown escaped, since GitHub would print it raw
    assert gh_escape_data("a\x1b[31m\u202e") == "a\\x1b[31m\\u202e"
    assert md_cell("a|b\n") == "a\\|b\\n"


def test_a_wrapped_table_line_never_starts_a_workflow_command() -> None:
    """Escaped data text is one line, but a table wraps it: the continuation line of a note
    ``... ::stop-commands::tok`` would start with ``::`` (GitHub trims the indent first)."""
    from rich.text import Text

    from smcheck.render.common import render_to_text

    note = "note: " + "a" * 90 + " ::stop-commands::tok and \u00a0 ::error::x"
    text = render_to_text([Text(note)], color=False, width=100)
    assert len(text.splitlines()) == 2  # it did wrap
    assert_inert(text)
    assert ":\\x3astop-commands::tok" in text


def test_compare_table_note_wrapping_onto_a_command() -> None:
    import dataclasses

    from smcheck.render.compare import render

    from .test_compare import _hand_report

    notes = ("a" * 93 + " ::stop-commands::tok", "header " + HOSTILE)
    report = dataclasses.replace(_hand_report(), notes=notes, logits=HOSTILE)
    for fmt in FORMATS:
        text = render(report, fmt, color=False, width=100)
        assert_inert(text, github=fmt == "github")


# --------------------------------------------------------------------------- the commands


FORMATS = ("table", "json", "markdown", "github", "junit")


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    """Logits, labels and a kernel's dumps under hostile names (the CSV with a hostile header)."""
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((6, 4)) * 3).astype(np.float32)
    y = rng.integers(0, 4, 6)
    d = tmp_path / ("dir" + HOSTILE)
    d.mkdir()
    paths = {
        "logits": d / f"logits{HOSTILE}.npy",
        "labels": d / f"labels{HOSTILE}.npy",
        "loss": d / f"loss{HOSTILE}.npy",
        "grad": d / f"grad{HOSTILE}.npy",
        "csv": d / f"table{HOSTILE}.csv",
    }
    np.save(paths["logits"], z)
    np.save(paths["labels"], y)
    zd = z.astype(np.float64)
    p = np.exp(zd - zd.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.save(paths["loss"], (-np.log(p[np.arange(6), y])).astype(np.float32))
    g = p.copy()
    g[np.arange(6), y] -= 1
    np.save(paths["grad"], g.astype(np.float32))
    header = ",".join(f"c{i}\x1b[2J\u202e::x" for i in range(4)) + ",label"
    rows = "\n".join(",".join(map(str, r)) + f",{t}" for r, t in zip(z, y, strict=True))
    paths["csv"].write_text(header + "\n" + rows + "\n", encoding="utf-8")
    return paths


def _run(
    args: list[str], color: str = "never", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(cli, [*args, "--color", color], env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _check(code: int, out: str, err: str, fmt: str) -> None:
    __tracebackhide__ = True
    assert code in (0, 1), (code, err)
    assert_inert(out, github=fmt == "github")
    assert_inert(err)
    if fmt == "junit":
        ET.fromstring(out)
    if fmt == "json":
        json.loads(out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_hostile_file_names(hostile: dict[str, Path], fmt: str) -> None:
    args = ["eval", str(hostile["logits"]), "--labels", str(hostile["labels"]), "-f", fmt]
    code, out, err = _run(args)
    _check(code, out, err, fmt)
    if fmt == "json":  # the name itself, exactly: JSON escapes it (strict, valid)
        assert json.loads(out)["input"]["logits"] == str(hostile["logits"])
    if fmt == "table":
        wide = _run(args, env={"COLUMNS": "1000"})[1]  # COLUMNS honoured: the name unwrapped
        assert str(hostile["logits"].parent / "").replace(HOSTILE, safe_text(HOSTILE)) in wide
        assert safe_text(hostile["logits"].name) in wide
        coloured = _run(args, color="always")[1]
        assert "\x1b[" in coloured  # rich's own colour codes; the data's shown escaped
        assert_inert(re.sub(r"\x1b\[[0-9;]*m", "", coloured))


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_hostile_csv_header(hostile: dict[str, Path], fmt: str) -> None:
    args = ["eval", str(hostile["csv"]), "--label-column", "label", "-f", fmt]
    code, out, err = _run(args)
    _check(code, out, err, fmt)
    if fmt == "json":
        notes = " ".join(json.loads(out)["input"]["notes"])
        assert "c0\x1b[2J\u202e::x" in notes  # the header, exactly, in JSON


@pytest.mark.parametrize("fmt", ("table", "json", "markdown", "github"))
def test_gradcheck_hostile_file_names(hostile: dict[str, Path], fmt: str) -> None:
    args = ["gradcheck", str(hostile["logits"]), "--labels", str(hostile["labels"]), "-f", fmt]
    _check(*_run(args), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_compare_hostile_file_names(hostile: dict[str, Path], fmt: str) -> None:
    args = [
        "compare", str(hostile["logits"]), "--labels", str(hostile["labels"]),
        "--loss", str(hostile["loss"]), "--grad", str(hostile["grad"]), "-f", fmt,
    ]  # fmt: skip
    _check(*_run(args), fmt)


def test_error_line_of_a_hostile_missing_file(tmp_path: Path) -> None:
    code, out, err = _run(["eval", str(tmp_path / f"missing{HOSTILE}.npy")])
    assert code == 2 and out == ""
    assert_inert(err)
    assert len(err.splitlines()) == 1 and err.startswith("smcheck: error: ")
    assert "\\x1b[31m" in err and "\\u202e" in err  # shown, escaped


def test_error_line_of_a_hostile_npz_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.npz"
    np.savez(path, **{f"k{HOSTILE}": np.zeros((2, 3), np.float32), "b": np.zeros(2)})
    code, out, err = _run(["eval", str(path), "--logits-key", "nope"])
    assert code == 2
    assert_inert(err)
    assert len(err.splitlines()) == 1


def test_hostile_baseline_names_on_stderr(hostile: dict[str, Path], tmp_path: Path) -> None:
    """A baseline is a file someone else may have written: its method names reach stderr."""
    args = ["eval", str(hostile["logits"]), "--labels", str(hostile["labels"]), "-f", "json"]
    base = tmp_path / "base.json"
    assert _run([*args, "--write-baseline", str(base)])[0] == 0
    doc = json.loads(base.read_text())
    doc["report"]["methods"][f"evil{HOSTILE}"] = doc["report"]["methods"]["fused"]
    doc["report"]["input"]["dtype"] = f"float32{HOSTILE}"
    base.write_text(json.dumps(doc))
    code, out, err = _run([*args, "--baseline", str(base)])
    assert code in (0, 1, 2), err
    assert_inert(out)
    assert_inert(err)
    assert "evil" in err or "float32" in err, err  # the note is shown, escaped


def test_hostile_output_name_in_the_written_junit(hostile: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / f"r{HOSTILE}.xml"
    args = ["eval", str(hostile["logits"]), "-f", "junit", "-o", str(report)]
    code, out, err = _run(args)
    assert code in (0, 1), err
    assert_inert(out + err)
    suite = ET.fromstring(report.read_text(encoding="utf-8")).find("testsuite")
    assert suite is not None and safe_text(HOSTILE) in (suite.get("name") or "")


def test_config_values_shown_escaped(tmp_path: Path) -> None:
    """``smcheck config`` prints a config file's values: data, not commands."""
    (tmp_path / "smcheck.toml").write_text(
        '[eval]\noutput = "x\\n::stop-commands::tok\\u001b[31m\\u202e"\n', encoding="utf-8"
    )
    config = ["--config", str(tmp_path / "smcheck.toml"), "config"]
    text = CliRunner().invoke(cli, config, catch_exceptions=False)
    as_json = CliRunner().invoke(cli, [*config, "--format", "json"], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert_inert(text.stdout)
    assert "x\\n::stop-commands::tok\\x1b[31m\\u202e" in text.stdout
    doc = json.loads(as_json.stdout)
    assert doc["commands"]["eval"]["output"]["value"] == "x\n::stop-commands::tok\x1b[31m\u202e"


def test_click_usage_error_quoting_a_hostile_argument(hostile: dict[str, Path]) -> None:
    """``smcheck eval runs/*.npy`` with two matches: click names the extra argument."""
    result = CliRunner().invoke(cli, ["eval", str(hostile["logits"]), str(hostile["labels"])])
    assert result.exit_code == 2
    assert_inert(result.stdout + result.stderr)
    assert "\\x1b[31m" in result.stderr
