"""bfloat16 (and float8) ``.npy`` files saved with ml_dtypes: descr ``'<V2'`` (``'|V1'``).

numpy has no name for ml_dtypes' types, so ``np.save`` writes them as raw void bytes. smcheck
reads such a file as bfloat16 only when the user names ``--dtype bfloat16`` (float8: a float8
dtype name) - two raw bytes could as well be float16 bits - and otherwise refuses it in one
line that says what to pass. Labels are never read this way.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli

BF16_MESSAGE = (
    "a 2-byte raw dtype (bfloat16 saved with ml_dtypes?): pass --dtype bfloat16 (numpy reads "
    "it as void |V2; or save it .astype(np.float32), which is exact)"
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture()
def linear_files(tmp_path: Path) -> None:
    """The same bfloat16 values saved raw (h_bf.npy: '<V2') and as exact float32 (h_f.npy)."""
    rng = np.random.default_rng(2)
    h = rng.standard_normal((24, 8)).astype(ml_dtypes.bfloat16)
    w = rng.standard_normal((37, 8)).astype(ml_dtypes.bfloat16)
    np.save("h_bf.npy", h)
    np.save("w_bf.npy", w)
    np.save("h_f.npy", h.astype(np.float32))
    np.save("w_f.npy", w.astype(np.float32))
    np.save("y.npy", rng.integers(0, 37, 24))
    assert b"'descr': '<V2'" in Path("h_bf.npy").read_bytes()[:80]


def _numbers(doc: dict) -> dict:  # type: ignore[type-arg]
    lin = dict(doc["linear"])
    for k in ("hidden", "weight"):
        lin.pop(k)
    return lin


@pytest.mark.usefixtures("linear_files")
def test_linear_eval_reads_raw_bf16_npy_as_bfloat16_when_named() -> None:
    raw = run("eval", "--hidden", "h_bf.npy", "--weight", "w_bf.npy", "--labels", "y.npy",
              "--dtype", "bfloat16", "-f", "json")  # fmt: skip
    exact = run("eval", "--hidden", "h_f.npy", "--weight", "w_f.npy", "--labels", "y.npy",
                "--dtype", "bf16", "-f", "json")  # fmt: skip
    assert raw.exit_code == exact.exit_code == 0, raw.output
    assert _numbers(json.loads(raw.output)) == _numbers(json.loads(exact.output))


@pytest.mark.usefixtures("linear_files")
@pytest.mark.parametrize("dtype", [[], ["--dtype", "float32"], ["--dtype", "float16"]])
def test_linear_eval_refuses_raw_bf16_npy_unless_bfloat16_is_named(dtype: list[str]) -> None:
    r = run("eval", "--hidden", "h_bf.npy", "--weight", "w_f.npy", "--labels", "y.npy", *dtype)
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [f"smcheck: error: h_bf.npy: {BF16_MESSAGE}"]


@pytest.mark.usefixtures("linear_files")
def test_compare_linear_reads_raw_bf16_dumps() -> None:
    np.save("loss.npy", np.zeros(24, ml_dtypes.bfloat16))
    r = run("compare", "--hidden", "h_bf.npy", "--linear-weight", "w_bf.npy", "--labels",
            "y.npy", "--loss", "loss.npy", "--dtype", "bfloat16", "-f", "json")  # fmt: skip
    assert r.exit_code == 1, r.output  # a loss of 0: read, and far from the reference
    assert json.loads(r.output)["linear"]["dtype"] == "bfloat16"


def test_plain_eval_raw_bf16_logits_equal_the_float32_copy_in_row_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 20)) * 3).astype(ml_dtypes.bfloat16)
    np.save("xb.npy", x)
    np.save("xf.npy", x.astype(np.float32))
    np.save("y.npy", rng.integers(0, 20, 64))
    # several row blocks: each read from the map with a positioned read (NpyRows.rows), which
    # once failed on bfloat16 ("cannot include dtype 'E' in a buffer", exit 3)
    args = ["--labels", "y.npy", "--dtype", "bfloat16", "-f", "json", "--workers", "1",
            "--chunk-mb", "0.001"]  # fmt: skip
    raw, exact = run("eval", "xb.npy", *args), run("eval", "xf.npy", *args)
    assert raw.exit_code == exact.exit_code, raw.output
    assert raw.output.replace("xb.npy", "xf.npy") == exact.output
    r = run("eval", "xb.npy", "--labels", "y.npy")
    assert r.exit_code == 2 and r.output.strip() == f"smcheck: error: xb.npy: {BF16_MESSAGE}"


def test_raw_1_byte_npy_needs_a_float8_name(tmp_path: Path) -> None:
    x = np.linspace(-4, 4, 60).reshape(6, 10).astype(ml_dtypes.float8_e4m3fn)
    np.save("x8.npy", x)
    np.save("y.npy", np.arange(6))
    assert b"V1'" in Path("x8.npy").read_bytes()[:80]
    ok = run("eval", "x8.npy", "--labels", "y.npy", "--dtype", "float8_e4m3fn", "-f", "json")
    assert ok.exit_code in (0, 1), ok.output
    assert json.loads(ok.output)["input"]["dtype"] == "float8_e4m3fn"
    bad = run("eval", "x8.npy", "--labels", "y.npy", "--dtype", "bfloat16")
    assert bad.exit_code == 2
    assert bad.output.strip() == (
        "smcheck: error: x8.npy: a 1-byte raw dtype (float8 saved with ml_dtypes?): pass "
        "--dtype float8_e4m3fn or --dtype float8_e5m2 (numpy reads it as void |V1; or save it "
        ".astype(np.float32), which is exact)"
    )


def test_raw_labels_are_never_read_as_bfloat16(tmp_path: Path) -> None:
    np.save("x.npy", np.zeros((4, 3), np.float32))
    np.save("y.npy", np.arange(4).astype(ml_dtypes.bfloat16))
    r = run("eval", "x.npy", "--labels", "y.npy", "--dtype", "bfloat16")
    assert r.exit_code == 2
    assert "y.npy: raw void dtype |V2 has no numeric meaning" in r.output


def test_truncated_raw_bf16_npy_is_still_refused_from_its_header(tmp_path: Path) -> None:
    np.save("x.npy", np.zeros((64, 8), ml_dtypes.bfloat16))
    data = Path("x.npy").read_bytes()
    Path("x.npy").write_bytes(data[:-10])
    np.save("y.npy", np.zeros(64, np.int64))
    r = run("eval", "x.npy", "--labels", "y.npy", "--dtype", "bfloat16")
    assert r.exit_code == 2
    assert "x.npy: truncated: the header declares bfloat16 shape 64 x 8 (1024 bytes" in r.output


def test_structured_two_byte_void_is_not_taken_for_bfloat16(tmp_path: Path) -> None:
    np.save("x.npy", np.zeros((4, 3), dtype=[("a", "V2")]))
    np.save("y.npy", np.zeros(4, np.int64))
    r = run("eval", "x.npy", "--labels", "y.npy", "--dtype", "bfloat16")
    assert r.exit_code == 2 and "structured dtype" in r.output
