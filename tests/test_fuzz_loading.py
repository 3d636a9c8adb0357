"""Property tests: on arbitrary or near-valid files, load_input returns a valid LoadedInput or
raises InputError - never another exception, and never hangs.

Each test is small by default (a few seconds in all). Set ``SMCHECK_FUZZ_EXAMPLES=5000`` to
fuzz for longer; the per-example ``deadline`` catches a parser that hangs or goes quadratic.
"""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smcheck.errors import InputError
from smcheck.loading import LoadedInput, load_input

EXAMPLES = int(os.environ.get("SMCHECK_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # ms per example: any input here loads in milliseconds unless something hangs
    database=None,  # no .hypothesis directory left behind by a test run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
IGNORE = -100
MAX_BYTES = 1 << 20  # keeps a lying npz member or a huge declared shape from allocating much


#: The stated memory bound: loading any of these inputs (each under a few KiB on disk, at most
#: MAX_BYTES after decompression) allocates at most this much at its peak (tracemalloc, which
#: numpy reports its buffers to) - a lying header must not make the loader allocate its claim.
PEAK_BYTES = 32 << 20


def check(logits: Path, labels: Path | None = None, **options: object) -> LoadedInput | None:
    """Load; assert the result is valid, or that the failure was an InputError."""
    tracemalloc.start()
    try:
        got = load_input(logits, labels, max_bytes=MAX_BYTES, **options)  # type: ignore[arg-type]
    except InputError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= PEAK_BYTES, peak
    assert got.logits.ndim == 2
    n, c = got.logits.shape
    assert n >= 1 and c >= 1
    assert got.logits.dtype in (np.float16, np.float32, np.float64)
    assert got.nonfinite_cells == int(got.logits.size - np.count_nonzero(np.isfinite(got.logits)))
    assert 0 <= got.overflowed_cells <= got.nonfinite_cells
    if got.labels is not None:
        assert got.labels.dtype == np.int64 and got.labels.shape == (n,)
        ok = (got.labels == IGNORE) | ((got.labels >= 0) & (got.labels < c))
        assert ok.all()
    return got


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Truncate, flip bytes, or splice junk - the ways a real file gets damaged."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if not buf:
            break
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        i = draw(st.integers(0, len(buf) - 1))
        if op == "truncate":
            del buf[i:]
        elif op == "flip":
            buf[i] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[i : i + draw(st.integers(1, 8))]
    return bytes(buf)


CELLS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "nan",
            "-inf",
            "+inf",
            "Infinity",
            "1e400",
            "-1e999",
            "1,5",
            "",
            " ",
            '"2"',
            "abc",
            "1_0",
            "0x10",
            "1e",
            ".",
            "-",
            "\u0661",
            "\ufeff1",
            "#",
            "NaN",
            "1.5e-320",
        ]
    ),
)


@st.composite
def csv_bytes(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(0, 6))
    cols = draw(st.integers(1, 5))
    delim = draw(st.sampled_from([",", ";", "\t", " ", "  "]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = []
    if draw(st.booleans()):
        lines.append(delim.join(draw(st.text(max_size=5)) for _ in range(cols)))
    for _ in range(rows):
        width = cols if draw(st.integers(0, 9)) else draw(st.integers(0, cols + 2))
        line = delim.join(draw(CELLS) for _ in range(width))
        if draw(st.integers(0, 9)) == 0:
            line = draw(st.sampled_from(["# comment", "", "   "]))
        lines.append(line)
    text = newline.join(lines) + draw(st.sampled_from(["", newline]))
    data = text.encode("utf-8", errors="surrogatepass")
    return mutate(data, draw) if draw(st.booleans()) else data


DTYPES = st.sampled_from(
    ["<f2", "<f4", "<f8", ">f4", ">f8", "<i4", ">i8", "<u8", "|b1", "|u1", "<c8", "|V2", "<U3"]
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    dtype = np.dtype(draw(DTYPES))
    size = int(np.prod(shape))
    raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    data = npy_bytes(draw(arrays()))
    if draw(st.booleans()):
        # damage the header region in particular: it is what a parser trusts
        end = min(len(data), 128)
        i = draw(st.integers(0, end - 1))
        data = data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i + 1 :]
    return mutate(data, draw) if draw(st.booleans()) else data


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    buf = io.BytesIO()
    members = draw(st.sampled_from([("logits",), ("logits", "labels"), ("x",), ("a", "b")]))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name in members:
            if name == "labels":
                labels = np.asarray(draw(st.lists(st.integers(-101, 5), max_size=5)))
                zf.writestr("labels.npy", npy_bytes(labels))
            else:
                zf.writestr(f"{name}.npy", npy_bytes(draw(arrays())))
    return mutate(buf.getvalue(), draw)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "any.bin"
    path.write_bytes(data)
    check(path)


@FUZZ
@given(data=st.one_of(st.binary(max_size=256), csv_bytes(), npy_files(), npz_files()))
def test_stdin(data: bytes) -> None:
    try:
        got = load_input("-", stdin=io.BytesIO(data), max_bytes=MAX_BYTES)
    except InputError:
        return
    assert got.logits.ndim == 2 and got.logits_name == "-"


@FUZZ
@given(data=csv_bytes(), label_column=st.sampled_from([None, 0, -1, 2, "y", "0"]))
def test_near_valid_csv(fuzz_dir: Path, data: bytes, label_column: str | int | None) -> None:
    path = fuzz_dir / "near.csv"
    path.write_bytes(data)
    check(path, label_column=label_column)


@FUZZ
@given(data=npy_files())
def test_near_valid_npy(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "near.npy"
    path.write_bytes(data)
    check(path)


@FUZZ
@given(data=npz_files())
def test_near_valid_npz(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "near.npz"
    path.write_bytes(data)
    check(path)


@FUZZ
@given(
    labels=st.one_of(npy_files(), csv_bytes(), npz_files()),
    ignore_index=st.sampled_from([IGNORE]),
)
def test_near_valid_labels(fuzz_dir: Path, labels: bytes, ignore_index: int) -> None:
    logits = fuzz_dir / "good.npy"
    logits.write_bytes(npy_bytes(np.zeros((3, 4), dtype=np.float32)))
    path = fuzz_dir / "labels.dat"
    path.write_bytes(labels)
    check(logits, path, ignore_index=ignore_index)


@FUZZ
@given(
    labels=st.lists(
        st.one_of(st.integers(-200, 10), st.floats(-200, 10), st.just(float("nan"))),
        min_size=1,
        max_size=6,
    ),
    dtype=st.sampled_from(["<f2", "<f8", "<i1", "<i8", ">u4", "|b1"]),
)
def test_label_values(fuzz_dir: Path, labels: list[float], dtype: str) -> None:
    logits = fuzz_dir / "three.npy"
    logits.write_bytes(npy_bytes(np.zeros((len(labels), 3))))
    path = fuzz_dir / "values.npy"
    with np.errstate(invalid="ignore", over="ignore"):  # wrapping to the dtype is the point
        path.write_bytes(npy_bytes(np.array(labels).astype(dtype)))
    check(logits, path)


def _text_result(data: bytes, label_column: str | int | None, block_bytes: int) -> object:
    from smcheck.loading.text import _text_logits

    notes: list[str] = []
    try:
        got = _text_logits(data, "t.csv", label_column, notes, block_bytes)
    except InputError as exc:
        return ("error", str(exc))
    lines = [got.lines[i] for i in range(len(got.lines))]
    labels = None if got.label_values is None else got.label_values.tobytes()
    return (got.logits.tobytes(), got.logits.shape, labels, got.label_where, lines, notes)


@FUZZ
@given(
    data=st.one_of(csv_bytes(), st.text("0123456789.,;-e\n\r#\t nax\"'").map(str.encode)),
    label_column=st.sampled_from([None, 0, -1, 2, "y"]),
    block_bytes=st.integers(0, 40),
)
def test_text_in_any_block_size_parses_as_one_block(
    data: bytes, label_column: str | int | None, block_bytes: int
) -> None:
    """The block-at-a-time text parser gives the one-block (whole-file) result: values, line
    numbers, notes, or the same first error."""
    whole = _text_result(data, label_column, 1 << 30)
    assert _text_result(data, label_column, block_bytes) == whole
