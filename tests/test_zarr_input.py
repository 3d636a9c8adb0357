"""Zarr array stores as logits: the .npy path's results, read a block of rows at a time."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli
from smcheck.errors import InputError
from smcheck.evaluate import evaluate
from smcheck.loading import ZarrLogits, load_input

zarr = pytest.importorskip("zarr")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run where no smcheck.toml / [tool.smcheck] can change the defaults
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["eval", *args])


def as_json(r: Result) -> dict[str, Any]:
    assert r.exit_code in (0, 1), r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    for name in ("logits", "labels"):  # the input file names: the fields that may differ
        out["input"].pop(name)
    return out


def _store(path: Path, x: np.ndarray, chunk_rows: int = 8, **kw: Any) -> Path:
    chunks = (min(chunk_rows, x.shape[0]), *x.shape[1:]) if x.ndim else ()
    zarr.create_array(str(path), shape=x.shape, chunks=chunks, dtype=x.dtype, **kw)[...] = x
    return path


@pytest.fixture()
def data(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """60 x 50 float32 with NaN/inf rows and ignored labels, as x.npy, x.zarr and y.npy."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((60, 50)) * 8).astype(np.float32)
    x[3, 4] = np.nan
    x[10] = np.inf
    x[21, 7] = 1e4  # overflows exp in float32 for naive
    y = rng.integers(0, 50, 60)
    y[[5, 6, 30]] = -100
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    _store(tmp_path / "x.zarr", x)  # 8 rows per store chunk: a run reads many of them
    return x, y


def test_zarr_store_gives_the_npy_json(data: tuple[np.ndarray, np.ndarray]) -> None:
    args = ["--labels", "y.npy", "-f", "json", "--chunk-rows", "7", "--workers", "1"]
    npy = as_json(run("x.npy", *args))
    assert npy["input"]["nonfinite_input_rows"] == 2 and npy["input"]["ignored_rows"] == 3
    assert as_json(run("x.zarr", *args)) == npy
    # another chunking (one chunk for all rows) and a zarr v2 store give the same report
    assert as_json(run("x.zarr", *args[:-4])) == npy
    _store(Path("x2.zarr"), data[0], zarr_format=2)
    assert as_json(run("x2.zarr", *args)) == npy


def test_dask_engine_on_a_zarr_store_gives_the_local_json(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    pytest.importorskip("distributed")
    args = ["x.zarr", "--labels", "y.npy", "-f", "json", "--chunk-rows", "7", "--workers", "2"]
    local = as_json(run(*args))
    assert as_json(run(*args, "--engine", "dask")) == local


def test_the_engine_reads_one_chunk_of_rows_at_a_time(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = data
    lazy = load_input("x.zarr", "y.npy").logits
    assert isinstance(lazy, ZarrLogits) and lazy.rows_read == 0  # loading reads no data
    got = evaluate(lazy, y, chunk_rows=7, workers=1)
    assert lazy.largest_read == 7 and lazy.rows_read == 60  # each row once, 7 at a time
    assert got == evaluate(x, y, chunk_rows=7, workers=1)


def test_leading_axes_are_flattened_lazily(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float16)
    z = ZarrLogits(str(_store(tmp_path / "x4.zarr", x, chunk_rows=1)), "x4.zarr")
    flat = x.reshape(-1, 5)
    assert z.shape == (24, 5) and z.original_shape == (2, 3, 4, 5) and z.dtype == np.float16
    for lo in range(25):
        for hi in range(lo, 26):
            assert np.array_equal(z[lo:hi], flat[lo:hi]), (lo, hi)
    assert z.largest_read == 24 and np.array_equal(np.asarray(z), flat)
    got = load_input(tmp_path / "x4.zarr")
    assert any("flattened to 24 rows of 5 classes" in n for n in got.notes)
    assert got.original_shape == (2, 3, 4, 5)


def test_a_pickled_store_holds_its_path_not_its_data(data: tuple[np.ndarray, np.ndarray]) -> None:
    lazy = load_input("x.zarr").logits
    assert isinstance(lazy, ZarrLogits)
    blob = pickle.dumps(lazy)
    assert len(blob) < 2000  # the array is 12000 bytes
    again = pickle.loads(blob)
    assert np.array_equal(again[10:20], data[0][10:20], equal_nan=True)


def test_integer_and_big_endian_stores_convert_like_npy(tmp_path: Path) -> None:
    ints = np.arange(12, dtype=np.int32).reshape(4, 3)
    got = load_input(_store(tmp_path / "i.zarr", ints))
    assert got.file_dtype == "int32" and got.logits.dtype == np.float64
    assert np.array_equal(got.logits[0:4], ints)
    assert "i.zarr: int32 logits read as floating point (exactly)" in got.notes[0]
    big = _store(tmp_path / "b.zarr", np.ones((3, 2), ">f8"), zarr_format=2)
    got = load_input(big)
    assert got.logits[0:3].dtype == np.dtype("=f8") and "big-endian" in got.notes[0]


def _hostile(d: Path) -> dict[str, tuple[Path, str]]:
    os.mkdir(d / "plain")
    grp = zarr.create_group(str(d / "g.zarr"))
    grp.create_array("logits", shape=(2, 2), dtype="f4")
    os.mkdir(d / "bad.zarr")
    (d / "bad.zarr" / "zarr.json").write_text("{not json")
    strings = zarr.create_array(str(d / "s.zarr"), shape=(2,), dtype=str)
    strings[...] = np.array(["a", "b"])
    return {
        "plain directory": (d / "plain", "is a directory, expected a .npy, .npz or text file"),
        "group": (d / "g.zarr", "is a zarr group, not an array; give the directory of one of"),
        "bad metadata": (d / "bad.zarr", "bad.zarr: not a readable zarr array"),
        "strings": (d / "s.zarr", "s.zarr: dtype 'string' is not numeric"),
        "complex": (
            _store(d / "c.zarr", np.ones((2, 2), np.complex64)),
            "c.zarr: complex dtype complex64 is not supported",
        ),
        "0-d": (_store(d / "z.zarr", np.float32(1.0)), "z.zarr: is a single number (0-d array)"),
        "0 rows": (_store(d / "r.zarr", np.ones((0, 3), np.float32)), "shape 0 x 3 has 0 rows"),
        "0 classes": (
            _store(d / "k.zarr", np.ones((3, 0), np.float32)),
            "shape 3 x 0 has 0 classes",
        ),
    }


HOSTILE = ("plain directory", "group", "bad metadata", "strings", "complex", "0-d", "0 rows")


@pytest.mark.parametrize("case", [*HOSTILE, "0 classes"])
def test_hostile_stores_are_one_line_errors(tmp_path: Path, case: str) -> None:
    path, expect = _hostile(tmp_path)[case]
    with pytest.raises(InputError, match="^" + str(path)):
        load_input(path)
    r = run(str(path))
    assert r.exit_code == 2 and expect in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_labels_that_do_not_fit_the_store(data: tuple[np.ndarray, np.ndarray]) -> None:
    np.save("y59.npy", data[1][:59])
    r = run("x.zarr", "--labels", "y59.npy")
    assert r.exit_code == 2
    assert "y59.npy: has 59 labels but x.zarr has 60 rows; expected one label per row" in r.stderr
    _store(Path("y.zarr"), data[1])  # labels may be a zarr store too
    assert as_json(run("x.zarr", "--labels", "y.zarr", "-f", "json")) == as_json(
        run("x.zarr", "--labels", "y.npy", "-f", "json")
    )


def test_without_zarr_a_store_is_a_usage_error(data: tuple[np.ndarray, np.ndarray]) -> None:
    # a fresh interpreter in which `import zarr` fails, as where the extra is not installed
    code = "import sys; sys.modules['zarr'] = None; from smcheck.cli import cli; cli()"
    r = subprocess.run(
        [sys.executable, "-c", code, "eval", "x.zarr"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "smcheck: error: reading a zarr store needs zarr: pip install 'smcheck-xent[zarr]'\n"
    )
