"""Hostile inputs to the readers (issue 13, the loading side): each is refused before it can
allocate, hang, run code or crash - exit 2, one line on stderr, no traceback, input unchanged.

Each test builds its input in tmp_path. Files that claim gigabytes are sparse: they cost no
disk, and a reader that believed them would allocate the gigabytes they claim.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.errors import InputError
from smcheck.evaluate import evaluate
from smcheck.loading import NpyRows, load_input

GiB = 2**30


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run where no smcheck.toml / [tool.smcheck] can change the defaults
    monkeypatch.chdir(tmp_path)


def _state(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Size, mtime and first 4 KiB of every file under ``root`` (sparse files are not read
    whole): what "the input is unchanged" is checked against."""
    paths = [root] if not root.is_dir() else sorted(root.rglob("*"))
    out = {}
    for p in paths:
        if p.is_symlink() or not p.is_file():
            out[str(p)] = (0, 0, os.readlink(p).encode() if p.is_symlink() else b"")
            continue
        st = p.stat()
        with p.open("rb") as f:
            out[str(p)] = (st.st_size, st.st_mtime_ns, f.read(4096))
    return out


def refused(args: list[str], *expect: str, inputs: list[Path]) -> str:
    """Run ``smcheck eval ARGS``: exit 2, one line naming the problem, inputs unchanged."""
    before = [_state(p) for p in inputs]
    r = CliRunner().invoke(cli, ["eval", *args, "--format", "json"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.stdout)
    assert len(lines) == 1 and lines[0].startswith("smcheck: error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for part in expect:
        assert part in lines[0], (part, lines[0])
    assert [_state(p) for p in inputs] == before
    return lines[0]


def refused_by_process(cmd: list[str], *expect: str, **kw: object) -> str:
    """The same through a real ``python -m smcheck`` process (for cases that could hang or
    kill the process: a FIFO, SIGBUS)."""
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[call-overload]
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("smcheck: error: "), proc.stderr
    for part in expect:
        assert part in lines[0], (part, lines[0])
    return str(lines[0])


def npy_header(path: Path, shape: tuple[int, ...], dtype: str, *, sparse: bool = True) -> Path:
    """A .npy whose header declares ``shape``; with ``sparse`` the file is as long as the header
    says (holes, no disk), else the header alone."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        start = f.tell()
    if sparse:
        os.truncate(path, start + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return path


def small_logits(path: Path = Path("x.npy")) -> Path:
    np.save(path, np.arange(12, dtype=np.float32).reshape(4, 3))
    return path


# --------------------------------------------------------------------------- sizes


def test_labels_npy_whose_header_claims_6_gb_is_refused_from_the_header() -> None:
    x = small_logits()
    lab = npy_header(Path("labels.npy"), (750_000_000,), "<i8")  # 6 GB of holes
    assert lab.stat().st_size > 6 * 10**9
    refused(
        ["x.npy", "--labels", "labels.npy"],
        "labels.npy: has 750000000 labels but x.npy has 4 rows",
        inputs=[x, lab],
    )
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="750000000 labels"):
            load_input(x, lab)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20  # the header was read, not the 6 GB it claims


def test_one_row_of_2_to_the_29_classes_names_the_limit_and_the_flag() -> None:
    x = npy_header(Path("wide.npy"), (1, 2**29), "<f4")  # 2 GiB of holes
    line = refused(
        ["wide.npy"],
        "wide.npy: one row of 536870912 classes needs about",
        "over the max_bytes limit of 8589934592; raise it with --max-bytes",
        inputs=[x],
    )
    assert "working memory" in line


def test_shapes_of_10_to_the_15_are_refused_in_every_format(tmp_path: Path) -> None:
    big = (10**15, 10)
    npy = npy_header(tmp_path / "big.npy", big, "<f4", sparse=False)
    refused([str(npy)], "big.npy: truncated: the header declares", inputs=[npy])
    store = _zarr_v3(tmp_path / "big.zarr", big, (1000, 10))
    refused([str(store)], "big.zarr: shape", "chunks, over the limit of 100000000", inputs=[store])
    labels = _zarr_v3(tmp_path / "y.zarr", (10**15,), (1000,), dtype="int64")
    x = small_logits(tmp_path / "x.npy")
    refused(
        [str(x), "--labels", str(labels)],
        "y.zarr: shape 1000000000000000 in chunks of 1000 is 1000000000000 chunks",
        inputs=[x, labels],
    )


def test_zarr_chunk_over_max_bytes_names_the_flag(tmp_path: Path) -> None:
    store = _zarr_v3(tmp_path / "c.zarr", (200_000, 1), (200_000, 1), dtype="float64")
    refused(
        [str(store), "--max-bytes", "1000000"],
        "c.zarr: one chunk (200000 x 1) holds 1600000 bytes, over the max_bytes limit of "
        "1000000; raise it with --max-bytes",
        inputs=[store],
    )


def test_zero_chunk_sizes_are_refused(tmp_path: Path) -> None:
    v3 = _zarr_v3(tmp_path / "z3.zarr", (4, 3), (0, 3))
    refused([str(v3)], "z3.zarr: chunk shape 0 x 3 has a zero", inputs=[v3])
    v2 = _zarr_v2(tmp_path / "z2.zarr", (4, 3), (4, 0))
    refused([str(v2)], "z2.zarr: chunk shape 4 x 0 has a zero", inputs=[v2])


def test_npz_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, logits=np.zeros((1_000_000, 8)))  # 64 MB in ~60 kB
    assert path.stat().st_size < 200_000
    refused(
        [str(path), "--max-bytes", "10000000"],
        "bomb.npz['logits']: declares 64000128 bytes uncompressed, over the max_bytes limit",
        inputs=[path],
    )


# --------------------------------------------------------------------------- zarr codecs


def _zarr_v3(
    path: Path,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: str = "float32",
    codecs: list[dict[str, object]] | None = None,
) -> Path:
    """A zarr v3 array written by hand (metadata only: missing chunks read as fill values)."""
    path.mkdir()
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": codecs
        or [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": 0, "checksum": False}},
        ],
        "attributes": {},
        "storage_transformers": [],
    }
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


def _zarr_v2(
    path: Path,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: str = "<f4",
    compressor: dict[str, object] | None = None,
    filters: list[dict[str, object]] | None = None,
) -> Path:
    path.mkdir()
    meta = {
        "zarr_format": 2,
        "shape": list(shape),
        "chunks": list(chunks),
        "dtype": dtype,
        "fill_value": 0,
        "order": "C",
        "filters": filters,
        "dimension_separator": ".",
        "compressor": compressor,
    }
    (path / ".zarray").write_text(json.dumps(meta))
    return path


class _Marker:
    """Unpickling this creates a file: proof that a chunk was unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path("UNPICKLED"), "code ran"))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("dtype", "filters", "compressor", "expect"),
    [
        ("|O", [{"id": "pickle"}], None, "holds Python objects"),
        ("<f8", [{"id": "pickle"}], None, "filter 'pickle' is not allowed"),
        ("<f8", [{"id": "msgpack2"}], None, "filter 'msgpack2' is not allowed"),
        ("<f8", None, {"id": "lzma"}, "compressor 'lzma' is not allowed"),
        ([["a", "<f8"]], None, None, "dtype [['a', '<f8']] is not numeric"),
    ],
)
def test_zarr_v2_pickle_filters_and_objects_are_refused_before_a_chunk_is_read(
    tmp_path: Path, dtype: object, filters: object, compressor: object, expect: str
) -> None:
    store = _zarr_v2(tmp_path / "p.zarr", (1,), (1,), dtype, compressor, filters)  # type: ignore[arg-type]
    (store / "0").write_bytes(pickle.dumps(np.array([_Marker()], dtype=object)))
    refused([str(store)], f"p.zarr: {expect}", inputs=[store])
    # as labels too: the same checks, whatever numcodecs would do with the chunk
    x = small_logits(tmp_path / "x.npy")
    refused([str(x), "--labels", str(store)], f"p.zarr: {expect}", inputs=[x, store])
    assert not Path("UNPICKLED").exists()


def test_zarr_v3_codec_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    codecs = [{"name": "bytes"}, {"name": "numcodecs.pickle"}]
    store = _zarr_v3(tmp_path / "p3.zarr", (4, 3), (4, 3), codecs=codecs)
    refused([str(store)], "p3.zarr: codec 'numcodecs.pickle' is not allowed", inputs=[store])
    sharded = [{"name": "sharding_indexed", "configuration": {}}]
    store = _zarr_v3(tmp_path / "s3.zarr", (4, 3), (4, 3), codecs=sharded)
    refused([str(store)], "codec 'sharding_indexed' is not allowed", inputs=[store])


def _real_store(path: Path, **kw: object) -> Path:
    zarr = pytest.importorskip("zarr")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    zarr.create_array(str(path), shape=x.shape, chunks=(2, 3), dtype=x.dtype, **kw)[...] = x
    return path


def test_zarr_chunk_that_inflates_to_2_gib_is_refused_from_its_header(tmp_path: Path) -> None:
    store = _real_store(tmp_path / "b.zarr")
    # a zstd frame header declaring 2 GiB of content (single segment, 4-byte size) + junk:
    # numcodecs would allocate the 2 GiB it declares before finding out
    frame = (0xFD2FB528).to_bytes(4, "little") + bytes([0xA0]) + (2 * GiB).to_bytes(4, "little")
    (store / "c" / "0" / "0").write_bytes(frame + b"\x00" * 64)
    refused(
        [str(store)],
        "b.zarr/c/0/0: chunk decodes to 2147483648 bytes, but a chunk of (2, 3) float32 holds 24",
        inputs=[store],
    )


def test_zarr_gzip_bomb_chunk_is_refused_after_a_bounded_inflate(tmp_path: Path) -> None:
    store = _zarr_v2(tmp_path / "g.zarr", (4, 3), (4, 3), compressor={"id": "zlib", "level": 1})
    (store / "0.0").write_bytes(zlib.compress(b"\x00" * (64 * 2**20), 9))  # 64 MiB in 64 kB
    assert (store / "0.0").stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"g.zarr/0.0: chunk decodes to 49\+ bytes"):
            load_input(store).logits[0:4]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # inflated one byte past the chunk's size, not 64 MiB
    refused([str(store)], "g.zarr/0.0: chunk decodes to 49+ bytes", inputs=[store])


def test_corrupt_zarr_chunk_is_exit_2_not_3(tmp_path: Path) -> None:
    store = _real_store(tmp_path / "k.zarr")
    chunk = store / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3])  # header intact, the frame cut short
    refused([str(store)], "k.zarr: cannot read the zarr array", inputs=[store])


def test_zarr_chunk_symlinked_out_of_the_store_is_not_followed(tmp_path: Path) -> None:
    store = _real_store(tmp_path / "l.zarr")
    secret = tmp_path / "secret"
    secret.write_bytes((store / "c" / "0" / "0").read_bytes())
    os.remove(store / "c" / "0" / "0")
    os.symlink(secret, store / "c" / "0" / "0")
    refused([str(store)], "l.zarr/c/0/0: is a symbolic link", inputs=[store, secret])
    # a linked directory on the way to a chunk: the same
    store2 = _real_store(tmp_path / "d.zarr")
    os.rename(store2 / "c" / "1", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", store2 / "c" / "1")
    refused([str(store2)], "d.zarr/c/1: is a symbolic link", inputs=[store2])


def test_zarr_chunk_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    store = _real_store(tmp_path / "f.zarr")
    os.remove(store / "c" / "0" / "0")
    os.mkfifo(store / "c" / "0" / "0")  # opened for reading, it would block for a writer
    refused_by_process(
        [sys.executable, "-m", "smcheck", "eval", str(store)],
        "f.zarr/c/0/0: is not a regular file",
        cwd=tmp_path,
    )


# --------------------------------------------------------------------------- changed inputs


def test_npy_truncated_while_eval_reads_it_is_exit_2_not_a_bus_error(tmp_path: Path) -> None:
    """The labels are a FIFO: the CLI has mapped the logits and waits for the labels, the test
    then truncates the logits and sends the labels. Reading a memory map past the new end of
    file would be SIGBUS (exit -7); the rows are read with positioned reads instead."""
    x = np.random.default_rng(0).standard_normal((4000, 64)).astype(np.float32)
    logits = tmp_path / "x.npy"
    np.save(logits, x)
    fifo = tmp_path / "labels"
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "smcheck", "eval", str(logits), "--labels", str(fifo)]
    cmd += ["--workers", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # opens once the CLI has mapped the logits and opened the labels; polled (never a
        # blocking open, which would wait for ever if the CLI stopped before reading the labels)
        deadline = time.monotonic() + 60
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the CLI never opened the labels: {proc.communicate()}")
            time.sleep(0.01)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "w") as w:
            os.truncate(logits, logits.stat().st_size // 2)
            w.write("\n".join(str(i % 64) for i in range(4000)) + "\n")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, (proc.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "x.npy: changed while it was being read (it now holds" in err


def test_npy_rows_read_by_pread_match_the_map_and_detect_truncation(tmp_path: Path) -> None:
    x = np.arange(60, dtype=np.float64).reshape(4, 3, 5)
    np.save(tmp_path / "x.npy", x)
    got = load_input(tmp_path / "x.npy").logits
    assert isinstance(got, NpyRows) and got.shape == (12, 5)  # flattened, still read by rows
    flat = x.reshape(12, 5)
    for lo in range(13):
        for hi in range(lo, 13):
            block = got[lo:hi]
            assert type(block) is np.ndarray and np.array_equal(block, flat[lo:hi])
    assert np.array_equal(got[-1], flat[-1]) and type(np.exp(got)) is np.ndarray
    assert type(got.max()) is np.float64
    rep = evaluate(got, None, workers=1)
    os.truncate(tmp_path / "x.npy", 200)
    with pytest.raises(InputError, match=r"x.npy: changed while it was being read"):
        evaluate(got, None, workers=1)
    assert rep.input.rows == 12


def test_npy_replaced_by_another_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones((3, 2), np.float32))
    got = load_input(path).logits
    os.remove(path)
    np.save(path, np.zeros((3, 2), np.float32))
    with pytest.raises(InputError, match="changed while it was being read .it was replaced"):
        got[0:3]


# --------------------------------------------------------------------------- stdin


def test_closed_stdin_is_one_line(tmp_path: Path) -> None:
    refused_by_process(
        ["sh", "-c", f'exec "{sys.executable}" -m smcheck eval - 0<&-'],
        "stdin ('-') is closed",
        cwd=tmp_path,
    )


# --- one label checker for the API and the file loader ------------------------------------------

_X4 = np.array([[0.0, 1.0, 2.0]] * 4, dtype=np.float32)


def _both(tmp_path: Path, labels: np.ndarray, ignore_index: int) -> list[str]:
    """The error each path (API, file) gives for ``labels``, or "" where it accepts them."""
    import smcheck

    said = []
    try:
        smcheck.cross_entropy(_X4, labels, ignore_index=ignore_index)
        said.append("")
    except InputError as exc:
        said.append(str(exc))
    np.save(tmp_path / "x.npy", _X4)
    np.save(tmp_path / "y.npy", labels)
    try:
        load_input(tmp_path / "x.npy", tmp_path / "y.npy", ignore_index=ignore_index)
        said.append("")
    except InputError as exc:
        said.append(str(exc))
    return said


def test_regression_uint64_max_label_is_not_ignore_index_minus_one(tmp_path: Path) -> None:
    """2**64-1 was cast to int64 (-1) by the API and the row silently ignored."""
    labels = np.array([2**64 - 1, 0, 1, 2], dtype=np.uint64)
    api, files = _both(tmp_path, labels, -1)
    assert "row 0: label 18446744073709551615 is outside [0, 3)" in api
    assert "row 0: label 18446744073709551615 is outside [0, 3)" in files


def test_regression_huge_float_label_is_refused_without_wraparound(tmp_path: Path) -> None:
    """1e30 was cast to int64 with a RuntimeWarning (an error under filterwarnings) and
    reported as label -9223372036854775808."""
    api, files = _both(tmp_path, np.array([1e30, 0.0, 1.0, 2.0]), -100)
    assert "row 0: label 1e+30 is outside [0, 3)" in api
    assert "row 0: label 1e+30 is outside [0, 3)" in files
    assert "9223372036854775808" not in api + files


def test_regression_huge_negative_float_label_is_not_ignore_index_int64_min(
    tmp_path: Path,
) -> None:
    """-1e30 wrapped to -2**63 and matched ignore_index=-2**63: accepted as an ignored row."""
    api, files = _both(tmp_path, np.array([-1e30, 0.0, 1.0, 2.0]), -(2**63))
    assert "row 0: label -1e+30 is outside [0, 3)" in api
    assert "row 0: label -1e+30 is negative and is not the --ignore-index value" in files


def test_regression_boolean_labels_are_classes_0_and_1_for_the_api_too(tmp_path: Path) -> None:
    """Files accepted boolean labels, the API refused them: now both read classes 0 and 1."""
    import smcheck

    labels = np.array([True, False, True, False])
    assert _both(tmp_path, labels, -100) == ["", ""]
    import math

    loss = smcheck.cross_entropy(_X4, labels).loss
    lse = math.log(1 + math.e + math.e**2)  # logits 0, 1, 2: loss of class k is lse - k
    assert np.allclose(loss, [lse - 1, lse, lse - 1, lse], rtol=1e-6)
