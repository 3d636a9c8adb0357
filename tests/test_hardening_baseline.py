"""Hostile baselines: refused with one line naming the file, exit 2 - never a crash, never
read as "no regression" (issue 13)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.baseline import check_baseline, read_baseline
from smcheck.cli import cli
from smcheck.errors import InputError


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--no-config", *args])


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A real eval baseline of a small input with an overflow finding (naive in float16)."""
    x = tmp_path / "x.npy"
    np.save(x, np.array([[0.0, 12.0, 1.0], [1.0, 2.0, 3.0]], dtype=np.float32))
    base = tmp_path / "base.json"
    r = _run(
        "eval", str(x), "--dtype", "float16", "--methods", "all", "--write-baseline", str(base)
    )
    assert r.exit_code in (0, 1), r.output
    return x, base, json.loads(base.read_text())


def _edit_methods(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    for m in doc["report"]["methods"].values():
        m[key] = value
    return doc


HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "counts as strings": (
        lambda d: _edit_methods(d, "overflow_rows", "0"),
        "overflow_rows is '0', not a count",
    ),
    "counts as null": (lambda d: _edit_methods(d, "nan_loss_rows", None), "is null, not a count"),
    "counts as lists": (lambda d: _edit_methods(d, "inf_loss_rows", [0]), "is [0], not a count"),
    "counts negative": (lambda d: _edit_methods(d, "underflow_rows", -1), "is -1, not a count"),
    "counts as true": (lambda d: _edit_methods(d, "overflow_rows", True), "is true, not a count"),
    "errors as strings": (
        lambda d: _edit_methods(d, "loss_max_ulp_err", "1e9"),
        "loss_max_ulp_err is '1e9', not a number",
    ),
    "gate flag null": (lambda d: _edit_methods(d, "ok", None), "ok is null, not true/false"),
    "methods a list": (
        lambda d: {**d, "report": {**d["report"], "methods": [1, 2]}},
        "methods are malformed",
    ),
    "method a number": (
        lambda d: {**d, "report": {**d["report"], "methods": {"fused": 3}}},
        "'fused' is 3, not a table",
    ),
    "command not text": (
        lambda d: {**d, "command": ["eval"]},
        "a baseline of 'smcheck [\"eval\"]'",
    ),
    # regression: a baseline with no (or without the gated) method read as "no regression"
    "methods empty": (
        lambda d: {**d, "report": {**d["report"], "methods": {}}},
        "has no result for",
    ),
    "gated method missing": (
        lambda d: {
            **d,
            "report": {
                **d["report"],
                "methods": {k: v for k, v in d["report"]["methods"].items() if not v["gated"]},
            },
        },
        "which this run gates; write a new baseline",
    ),
    "not an object": (lambda d: [d], "not a smcheck baseline"),
    "input not a table": (lambda d: {**d, "input": "x"}, "'input' is not a table"),
}


def _one_line(r: Result, *parts: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert len(lines[0]) < 400
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_tampered_baseline_is_refused_not_read_as_no_regression(
    made: tuple[Path, Path, dict[str, Any]], name: str
) -> None:
    x, base, doc = made
    edit, expected = HOSTILE[name]
    base.write_text(json.dumps(edit(doc)))
    before = base.read_bytes()
    r = _run("eval", str(x), "--dtype", "float16", "--methods", "all", "--baseline", str(base))
    _one_line(r, "base.json", expected)
    assert base.read_bytes() == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b'{"schema": ' + b"9" * 5000 + b"}", "an integer of 5000 digits"),
        (b'{"schema": NaN}', "NaN (baselines hold finite numbers only)"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": 1', "not a JSON baseline (line 1 column 8"),
    ],
)
def test_unreadable_baseline_is_one_line(
    made: tuple[Path, Path, dict[str, Any]], text: bytes, expected: str
) -> None:
    x, base, _ = made
    base.write_bytes(text)
    _one_line(_run("eval", str(x), "--baseline", str(base)), "base.json", expected)


def test_huge_baseline_and_dev_zero_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(300 * 2**20)  # sparse: no disk used
    with pytest.raises(InputError, match="larger than 64 MiB"):
        read_baseline(str(big))
    with pytest.raises(InputError, match="larger than 1 MiB"):
        read_baseline("/dev/zero", limit=2**20)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 2), np.float32))
    _one_line(_run("eval", str(x), "--baseline", "/dev/zero"), "/dev/zero", "larger than 64 MiB")


def test_a_real_baseline_still_passes_its_own_check(
    made: tuple[Path, Path, dict[str, Any]],
) -> None:
    x, base, doc = made
    assert check_baseline(doc, "eval", "base.json") is doc
    r = _run("eval", str(x), "--dtype", "float16", "--methods", "all", "--baseline", str(base))
    assert r.exit_code == 0, r.output
    assert "no regression against base.json" in r.stderr


def test_regression_factor_must_be_finite(made: tuple[Path, Path, dict[str, Any]]) -> None:
    x, base, _ = made
    for bad in ("nan", "inf"):
        r = _run("eval", str(x), "--baseline", str(base), "--regression-factor", bad)
        assert r.exit_code == 2 and "is not a finite number" in r.stderr, r.output


def test_notes_from_a_hostile_baseline_stay_short_and_escaped(
    made: tuple[Path, Path, dict[str, Any]],
) -> None:
    x, base, doc = made
    doc["input"]["shape"] = list(range(200000))  # a megabyte-long line if printed as is
    doc["input"]["dtype"] = "\x1b]0;pwned\x07"
    doc["report"]["methods"]["\x1b[2J::stop-commands::x"] = dict(doc["report"]["methods"]["fused"])
    base.write_text(json.dumps(doc))
    r = _run("eval", str(x), "--dtype", "float16", "--methods", "all", "--baseline", str(base))
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert not any(line.startswith("::") for line in r.stderr.splitlines())
    assert max(len(line) for line in r.stderr.splitlines()) < 200
