"""Tests of smcheck.loading: every validation rule on a real file in tmp_path.

The builders at module level (``write``, ``save_npy``, ``save_npz``, ``make_zip_bomb``,
``make_bad_files``, ``make_good_files``) are plain functions so that the CLI tests can reuse the
same files: each :class:`BadInput` says how to call ``load_input`` and which substrings the
one-line error must contain.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from smcheck.errors import InputError, UsageError
from smcheck.loading import LoadedInput, load_input

# --------------------------------------------------------------------------- builders


def write(directory: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` (str as UTF-8 exactly, no newline translation) to directory/name."""
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def save_npy(directory: Path, name: str, array: np.ndarray, *, allow_pickle: bool = False) -> Path:
    """np.save to directory/name exactly (np.save would append .npy to another suffix)."""
    path = directory / name
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=allow_pickle)
    return path


def save_npz(directory: Path, name: str, compressed: bool = False, **arrays: np.ndarray) -> Path:
    """An .npz at directory/name exactly, with the given arrays as members."""
    path = directory / name
    with open(path, "wb") as f:
        if compressed:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        else:
            np.savez(f, **arrays)  # type: ignore[arg-type]
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def make_zip_bomb(directory: Path, name: str, n_values: int = 1_000_000) -> Path:
    """An .npz whose 'logits' member inflates to 8 * n_values bytes from a few KiB on disk."""
    path = directory / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("logits.npy", npy_bytes(np.zeros((n_values // 10, 10))))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class BadInput:
    """A bad input on disk: call ``load_input(logits, labels, **options)``; the message must
    contain every string of ``expect``."""

    logits: Path
    labels: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    expect: tuple[str, ...] = ()

    def load(self) -> LoadedInput:
        return load_input(self.logits, self.labels, **self.options)

    def cli_args(self) -> list[str] | None:
        """The same input as ``smcheck eval`` arguments, or None when an option has no flag
        (``max_bytes``)."""
        args = [str(self.logits)]
        if self.labels is not None:
            args += ["--labels", str(self.labels)]
        for key, value in self.options.items():
            if key not in ("logits_key", "labels_key", "label_column", "ignore_index"):
                return None
            args += ["--" + key.replace("_", "-"), str(value)]
        return args


GOOD_LOGITS = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [0.5, -1.0, 2.5]])


def _bad(d: Path, name: str, content: str | bytes, *expect: str, **options: Any) -> BadInput:
    return BadInput(write(d, name, content), options=options, expect=(name, *expect))


def _bad_labels(d: Path, name: str, labels: np.ndarray | str, *expect: str) -> BadInput:
    logits = save_npy(d, f"logits-for-{name}.npy", GOOD_LOGITS)
    if isinstance(labels, str):
        lab = write(d, name, labels)
    else:
        lab = save_npy(d, name, labels, allow_pickle=labels.dtype.hasobject)
    return BadInput(logits, lab, expect=(name, *expect))


def _npy_with_header(d: Path, name: str, header: bytes, version: bytes = b"\x01\x00") -> Path:
    return write(d, name, b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _zip(d: Path, name: str, members: dict[str, bytes]) -> Path:
    path = d / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


BAD_BUILDERS: dict[str, Callable[[Path], BadInput]] = {
    # files
    "missing": lambda d: BadInput(d / "nope.npy", expect=("nope.npy", "no such file")),
    "directory": lambda d: BadInput(_mkdir(d / "adir"), expect=("adir", "is a directory")),
    "empty_file": lambda d: _bad(d, "empty.csv", b"", "is empty"),
    # .npy
    "npy_pickle": lambda d: BadInput(
        save_npy(d, "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True),
        expect=("obj.npy", "pickle", "never unpickles"),
    ),
    "npy_structured": lambda d: BadInput(
        save_npy(d, "rec.npy", np.zeros(3, dtype=[("a", "f4"), ("b", "f4")])),
        expect=("rec.npy", "structured"),
    ),
    "npy_complex": lambda d: BadInput(
        save_npy(d, "cplx.npy", np.ones((2, 2), dtype=np.complex64)),
        expect=("cplx.npy", "complex"),
    ),
    "npy_strings": lambda d: BadInput(
        save_npy(d, "str.npy", np.array([["1", "2"]])), expect=("str.npy", "not numeric")
    ),
    "npy_bfloat16_void": lambda d: BadInput(
        save_npy(d, "bf16.npy", np.ones((2, 3), dtype=ml_dtypes.bfloat16)),
        expect=("bf16.npy", "void", "bfloat16", "float32"),
    ),
    "npy_0d": lambda d: BadInput(save_npy(d, "scalar.npy", np.array(3.0)), expect=("0-d",)),
    "npy_0_rows": lambda d: BadInput(
        save_npy(d, "rows0.npy", np.zeros((0, 5))), expect=("rows0.npy", "0 rows")
    ),
    "npy_0_classes": lambda d: BadInput(
        save_npy(d, "cls0.npy", np.zeros((5, 0))), expect=("cls0.npy", "0 classes")
    ),
    "npy_truncated": lambda d: BadInput(
        write(d, "trunc.npy", npy_bytes(np.ones((10, 10)))[:-8]),
        expect=("trunc.npy", "truncated", "800 bytes", "792"),
    ),
    "npy_bad_header": lambda d: BadInput(
        _npy_with_header(d, "hdr.npy", b"{'descr': '<f8', 'shape': (2, 2), oops}\n"),
        expect=("hdr.npy", "header"),
    ),
    "npy_negative_shape": lambda d: BadInput(
        _npy_with_header(
            d, "neg.npy", b"{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 2), }\n"
        ),
        expect=("neg.npy", "negative"),
    ),
    "npy_magic_only": lambda d: _bad(d, "magic.npy", b"\x93NUMPY", "header"),
    "npy_version_3": lambda d: BadInput(
        _npy_with_header(d, "v3.npy", b"{}\n", version=b"\x03\x00"),
        expect=("v3.npy", "version 3.0"),
    ),
    # .npz
    "npz_no_logits": lambda d: BadInput(
        save_npz(d, "ab.npz", a=np.ones((2, 2)), b=np.ones((2, 2))),
        expect=("ab.npz", "no 'logits'", "'a', 'b'"),
    ),
    "npz_missing_logits_key": lambda d: BadInput(
        save_npz(d, "k.npz", logits=np.ones((2, 2)), labels=np.zeros(2, dtype=int)),
        options={"logits_key": "scores"},
        expect=("k.npz", "no array 'scores'", "'logits', 'labels'"),
    ),
    "npz_missing_labels_key": lambda d: BadInput(
        save_npz(d, "k2.npz", logits=np.ones((2, 2))),
        options={"labels_key": "y"},
        expect=("k2.npz", "no array 'y'", "'logits'"),
    ),
    "npz_member_not_npy": lambda d: BadInput(
        _zip(d, "txt.npz", {"logits.npy": b"1,2,3\n"}),
        expect=("txt.npz", "'logits'", "not a .npy"),
    ),
    "npz_zip_bomb": lambda d: BadInput(
        make_zip_bomb(d, "bomb.npz"),
        options={"max_bytes": 100_000},
        expect=("bomb.npz", "max_bytes", "refusing to decompress"),
    ),
    "npz_corrupt": lambda d: _bad(d, "junk.npz", b"PK\x03\x04" + b"\x01" * 60, ".npz"),
    "npz_truncated": lambda d: BadInput(
        write(
            d, "half.npz", (save_npz(d, "full.npz", logits=np.ones((50, 50)))).read_bytes()[:3000]
        ),
        expect=("half.npz",),
    ),
    "npz_empty": lambda d: BadInput(_zip(d, "none.npz", {}), expect=("none.npz", "no arrays")),
    "npz_member_truncated_header": lambda d: BadInput(
        _zip(d, "mt.npz", {"logits.npy": npy_bytes(np.ones((4, 4)))[:-10]}),
        expect=("mt.npz['logits']", "truncated"),
    ),
    # text
    "text_ragged": lambda d: _bad(
        d, "ragged.csv", "1,2,3\n4,5,6\n7,8\n", "line 3", "has 2 cells, expected 3"
    ),
    "text_non_numeric": lambda d: _bad(
        d, "word.csv", "1,2,3\n4,abc,6\n", "line 2, column 2", "'abc'", "not a number"
    ),
    "text_non_numeric_after_header": lambda d: _bad(
        d, "word2.csv", "# c\nx,w\n1,2\n3,oops\n", "line 4, column 2 ('w')", "'oops'"
    ),
    "text_decimal_comma": lambda d: _bad(
        d, "euro.csv", "1,5;2,5\n3,0;4,0\n", "line 1, column 1", "decimal comma"
    ),
    "text_empty_cell": lambda d: _bad(d, "gap.csv", "1,2,3\n4,,6\n", "line 2, column 2", "empty"),
    "text_header_only": lambda d: _bad(d, "hdr.csv", "a,b,c\n", "header", "no data rows"),
    "text_comments_only": lambda d: _bad(d, "cmt.csv", "# x\n\n  # y\n", "no data rows"),
    "text_binary": lambda d: _bad(d, "bin.csv", b"1,2\x00\x01\n", "binary"),
    "text_not_utf8": lambda d: _bad(d, "latin.csv", b"1,2\n3,\xe94\n", "line 2", "UTF-8"),
    "text_underscore": lambda d: _bad(d, "us.csv", "1_000,2\n", "line 1, column 1", "'1_000'"),
    "text_unicode_digit": lambda d: _bad(d, "ar.csv", "1,2\n\u0661,2\n", "line 2, column 1"),
    "text_too_big": lambda d: _bad(d, "big.csv", "1,2\n" * 100, "--max-bytes", max_bytes=50),
    "label_column_name_no_header": lambda d: _bad(
        d, "nohdr.csv", "1,2,0\n3,4,1\n", "'label'", "no header", label_column="label"
    ),
    "label_column_name_unknown": lambda d: _bad(
        d,
        "hdr2.csv",
        "a,b,y\n1,2,0\n",
        "no column named 'label'",
        "'a', 'b', 'y'",
        label_column="label",
    ),
    "label_column_duplicate": lambda d: _bad(
        d, "dup.csv", "y,b,y\n1,2,0\n", "2 columns are named 'y'", label_column="y"
    ),
    "label_column_out_of_range": lambda d: _bad(
        d, "oor.csv", "1,2,0\n", "label column 5", "3 columns", label_column=5
    ),
    "label_column_only_column": lambda d: _bad(
        d, "only.csv", "0\n1\n", "only column", label_column=0
    ),
    "label_column_fraction": lambda d: _bad(
        d,
        "frac.csv",
        "a,b,y\n1,2,0\n3,4,1.5\n",
        "line 3",
        "1.5",
        "whole number",
        label_column="y",
    ),
    "label_column_too_big": lambda d: _bad(
        d,
        "big_label.csv",
        "a,b,y\n1,2,0\n3,4,2\n",
        "line 3",
        "label 2",
        "[0, 2)",
        label_column="y",
    ),
    "label_column_text": lambda d: _bad(
        d, "cat.csv", "a,b,y\n1,2,cat\n", "line 2, column 3 ('y')", "'cat'", label_column="y"
    ),
    "logits_key_on_text": lambda d: _bad(d, "t.csv", "1,2\n", "not an .npz", logits_key="x"),
    "label_column_on_npy": lambda d: BadInput(
        save_npy(d, "lc.npy", GOOD_LOGITS),
        options={"label_column": 0},
        expect=("lc.npy", "text input only"),
    ),
    # labels
    "labels_length": lambda d: _bad_labels(
        d, "short.npy", np.array([0, 1, 2]), "3 labels", "4 rows"
    ),
    "labels_fraction": lambda d: _bad_labels(
        d, "half.npy", np.array([0.0, 1.0, 3.5, 2.0]), "row 2", "3.5", "whole number"
    ),
    "labels_negative": lambda d: _bad_labels(
        d, "neg.npy", np.array([0, -3, 1, 2]), "row 1", "-3", "negative", "-100"
    ),
    "labels_too_big": lambda d: _bad_labels(
        d, "big.npy", np.array([0, 1, 2, 3]), "row 3", "label 3", "[0, 3)", "3 classes"
    ),
    "labels_uint64_huge": lambda d: _bad_labels(
        d, "u64.npy", np.array([0, 1, 2**64 - 1, 0], dtype=np.uint64), "row 2", "outside"
    ),
    "labels_nan": lambda d: _bad_labels(
        d, "nan.npy", np.array([0.0, np.nan, 1.0, 2.0]), "row 1", "nan", "not a class index"
    ),
    "labels_soft_targets": lambda d: _bad_labels(
        d, "soft.npy", np.full((4, 3), 1 / 3), "soft targets", "pass class indices"
    ),
    "labels_one_hot_two_ones": lambda d: _bad_labels(
        d,
        "oh.npy",
        np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]]),
        "row 1",
        "2 ones",
        "exactly one",
    ),
    "labels_2d_wrong_shape": lambda d: _bad_labels(
        d, "shape.npy", np.zeros((2, 2), dtype=int), "shape 2 x 2", "do not fit", "shape 4 x 3"
    ),
    "labels_pickle": lambda d: _bad_labels(
        d, "objl.npy", np.array([0, 1, None, 2], dtype=object), "pickle"
    ),
    "labels_text_word": lambda d: _bad_labels(
        d, "words.txt", "label\n0\n1\ntwo\n2\n", "line 4, column 1", "'two'"
    ),
    "labels_text_two_columns": lambda d: _bad_labels(
        d, "two.csv", "0,1\n1,1\n2,1\n0,1\n", "line 1", "2 cells", "one class index per line"
    ),
    "labels_text_negative": lambda d: _bad_labels(
        d, "negl.txt", "# labels\n0\n1\n\n-1\n2\n", "line 5", "negative"
    ),
    "labels_npz_ambiguous": lambda d: BadInput(
        save_npy(d, "lg.npy", GOOD_LOGITS),
        save_npz(d, "lab2.npz", a=np.zeros(4, dtype=int), b=np.zeros(4, dtype=int)),
        expect=("lab2.npz", "no 'labels'", "'a', 'b'"),
    ),
    "labels_key_on_npy": lambda d: BadInput(
        save_npy(d, "lg2.npy", GOOD_LOGITS),
        save_npy(d, "lab3.npy", np.zeros(4, dtype=int)),
        options={"labels_key": "y"},
        expect=("lab3.npy", "not an .npz"),
    ),
    "labels_in_npz_out_of_range": lambda d: BadInput(
        save_npz(d, "both.npz", logits=GOOD_LOGITS, labels=np.array([0, 1, 2, 7])),
        expect=("both.npz['labels'] row 3", "label 7", "[0, 3)"),
    ),
}


def make_bad_files(tmp_path: Path) -> dict[str, BadInput]:
    """Every bad input of BAD_BUILDERS, each written in its own directory under tmp_path."""
    files = {}
    for name, build in BAD_BUILDERS.items():
        directory = tmp_path / name
        directory.mkdir()
        files[name] = build(directory)
    return files


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("case", sorted(BAD_BUILDERS))
def test_bad_input_raises_one_line_input_error(tmp_path: Path, case: str) -> None:
    bad = BAD_BUILDERS[case](tmp_path)
    before = {p: sha256(p) for p in (bad.logits, bad.labels) if p is not None and p.is_file()}
    with pytest.raises(InputError) as info:
        bad.load()
    message = str(info.value)
    assert "\n" not in message
    for part in bad.expect:
        assert part in message, f"{part!r} not in {message!r}"
    assert {p: sha256(p) for p in before} == before  # inputs never modified


def test_make_bad_files_builds_every_case(tmp_path: Path) -> None:
    files = make_bad_files(tmp_path)
    assert set(files) == set(BAD_BUILDERS)
    for bad in files.values():  # built side by side, each case still fails as it should
        with pytest.raises(InputError) as info:
            bad.load()
        assert all(part in str(info.value) for part in bad.expect)
    args = files["label_column_text"].cli_args()
    assert args is not None and args[1:] == ["--label-column", "y"]
    assert files["npz_zip_bomb"].cli_args() is None


def test_zip_bomb_is_small_on_disk_and_refused_before_inflating(tmp_path: Path) -> None:
    bomb = make_zip_bomb(tmp_path, "bomb.npz", n_values=2_000_000)
    assert bomb.stat().st_size < 100_000  # 16 MB of zeros deflate to a few KiB
    with zipfile.ZipFile(bomb) as zf:
        assert zf.getinfo("logits.npy").file_size > 16_000_000
    with pytest.raises(InputError, match="16000128 bytes uncompressed"):
        load_input(bomb, max_bytes=1_000_000)
    # under a big enough limit the same file is an ordinary, valid input
    assert load_input(bomb, max_bytes=10**8).logits.shape == (200_000, 10)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root reads files whatever their mode"
)
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.csv", "1,2\n")
    path.chmod(0)
    try:
        with pytest.raises(InputError, match=r"secret\.csv: cannot read: permission denied"):
            load_input(path)
    finally:
        path.chmod(0o644)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux /proc")
def test_read_error_is_an_input_error() -> None:
    # /proc/self/mem opens but fails to read at offset 0 (EIO): an OSError while reading
    with pytest.raises(InputError, match=r"/proc/self/mem: cannot read"):
        load_input("/proc/self/mem")


def test_label_column_and_labels_file_conflict(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "1,2\n")
    with pytest.raises(UsageError, match="not both"):
        load_input(path, path, label_column=0)


def test_both_from_stdin_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="stdin"):
        load_input("-", "-", stdin=io.BytesIO(b"1,2\n"))


@pytest.mark.parametrize(
    ("data", "expect"),
    [(b"", "stdin: is empty"), (b"\x00\x01\x02garbage", "stdin: looks binary")],
)
def test_bad_stdin(data: bytes, expect: str) -> None:
    with pytest.raises(InputError, match=expect):
        load_input("-", stdin=io.BytesIO(data))


def test_stdin_over_max_bytes() -> None:
    with pytest.raises(InputError, match="more than --max-bytes 10 bytes"):
        load_input("-", stdin=io.BytesIO(b"1,2\n" * 10), max_bytes=10)


# --------------------------------------------------------------------------- text, accepted


def test_csv_with_header_and_named_label_column(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x0,x1,x2,label\n1,2,3,0\n4,5,6,2\n")
    got = load_input(path, label_column="label")
    np.testing.assert_array_equal(got.logits, [[1, 2, 3], [4, 5, 6]])
    assert got.logits.dtype == np.float64
    assert got.labels is not None and got.labels.dtype == np.int64
    assert got.labels.tolist() == [0, 2]
    assert got.file_dtype == "text"
    assert got.original_shape == (2, 3)
    assert got.logits_name == str(path)
    assert got.labels_name == f"{path} column 4 ('label')"
    assert any("header" in n for n in got.notes)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("comma.csv", "1,2,3\n4,5,6\n"),
        ("tab.tsv", "1\t2\t3\n4\t5\t6\n"),
        ("semi.csv", "1;2;3\n4;5;6\n"),
        ("space.txt", "1 2  3\n  4\t5 6\n"),
        ("crlf.csv", "1,2,3\r\n4,5,6\r\n"),
        ("bom.csv", "\ufeff1,2,3\n4,5,6\n"),
        ("comments.csv", "# logits\n\n1,2,3\n   \n# more\n4,5,6\n\n"),
        ("trailing.csv", "1,2,3,\n4,5,6,\n"),
        ("quoted.csv", '"1","2","3"\n"4", "5" ,"6"\n'),
        ("spaces.csv", " 1 , 2 , 3 \n4,5,6"),
        ("forms.csv", "1.0,2e0,+3\n.4e1,5.,6.000\n"),
        ("header_trailing.csv", "a,b,c,\n1,2,3,\n4,5,6,\n"),
        ("old_mac.csv", "1,2,3\r4,5,6\r"),
    ],
)
def test_text_dialects(tmp_path: Path, name: str, content: str) -> None:
    got = load_input(write(tmp_path, name, content))
    np.testing.assert_array_equal(got.logits, [[1, 2, 3], [4, 5, 6]])
    assert got.labels is None and got.nonfinite_cells == 0 and got.overflowed_cells == 0


def test_text_special_values_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "special.csv", "nan,inf,-inf\n+inf,NaN,Infinity\n1e400,-1e400,1\n")
    got = load_input(path)
    assert got.nonfinite_cells == 8
    assert got.overflowed_cells == 2
    assert any("overflowed" in n and "1e400" in n for n in got.notes)
    row = got.logits[2]
    assert row[0] == np.inf and row[1] == -np.inf and row[2] == 1.0
    assert np.isnan(got.logits[0, 0]) and got.logits[0, 1] == np.inf


def test_text_keeps_float64_exactly(tmp_path: Path) -> None:
    # the shortest repr of a float64 round-trips through the text parser
    values = np.array([[0.1, 1e-300, 5e-324, 1.7976931348623157e308]])
    path = write(tmp_path, "exact.csv", ",".join(repr(float(v)) for v in values[0]) + "\n")
    np.testing.assert_array_equal(load_input(path).logits, values)


@pytest.mark.parametrize("column", [-1, 2, "2", "y"])
def test_label_column_by_index_or_name(tmp_path: Path, column: str | int) -> None:
    path = write(tmp_path, "lc.csv", "a,b,y\n1,2,1\n3,4,0\n5,6,-100\n")
    got = load_input(path, label_column=column)
    np.testing.assert_array_equal(got.logits, [[1, 2], [3, 4], [5, 6]])
    assert got.labels is not None and got.labels.tolist() == [1, 0, -100]


def test_label_column_first_without_header(tmp_path: Path) -> None:
    got = load_input(write(tmp_path, "first.csv", "1,0.5,0.25\n0,1.5,2.5\n"), label_column=0)
    assert got.labels is not None and got.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(got.logits, [[0.5, 0.25], [1.5, 2.5]])


def test_text_labels_file_with_header_and_integral_floats(tmp_path: Path) -> None:
    logits = save_npy(tmp_path, "l.npy", GOOD_LOGITS)
    labels = write(tmp_path, "labels.txt", "label\n0\n2.0\n# skipped\n1\n-100\n")
    got = load_input(logits, labels)
    assert got.labels is not None and got.labels.tolist() == [0, 2, 1, -100]
    assert got.labels_name == str(labels)


def test_single_column_text_is_one_class(tmp_path: Path) -> None:
    got = load_input(write(tmp_path, "one.txt", "1\n2\n3\n"))
    assert got.logits.shape == (3, 1)


def test_stdin_text_and_npy() -> None:
    got = load_input("-", stdin=io.BytesIO(b"1,2\n3,4\n"))
    assert got.logits_name == "-" and got.logits.tolist() == [[1, 2], [3, 4]]
    got = load_input("-", stdin=io.BytesIO(npy_bytes(np.eye(2, dtype=np.float32))))
    assert got.logits.dtype == np.float32 and got.logits.tolist() == [[1, 0], [0, 1]]
    assert got.file_dtype == "float32"


def test_labels_from_stdin(tmp_path: Path) -> None:
    logits = save_npy(tmp_path, "l.npy", GOOD_LOGITS)
    got = load_input(logits, "-", stdin=io.BytesIO(b"0\n1\n2\n0\n"))
    assert got.labels is not None and got.labels.tolist() == [0, 1, 2, 0]


def test_text_parse_speed(tmp_path: Path) -> None:
    # 10**6 cells must parse in a few seconds; 200k here keeps the suite fast
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2000, 100))
    path = tmp_path / "big.csv"
    np.savetxt(path, values, delimiter=",", fmt="%.17g")
    start = time.perf_counter()
    got = load_input(path)
    assert time.perf_counter() - start < 3.0
    np.testing.assert_array_equal(got.logits, values)


# --------------------------------------------------------------------------- .npy, accepted


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy_float_dtypes_kept_and_memory_mapped(tmp_path: Path, dtype: type) -> None:
    values: np.ndarray = GOOD_LOGITS.astype(dtype)
    path = save_npy(tmp_path, "f.npy", values)
    got = load_input(path)
    assert isinstance(got.logits, np.memmap)
    assert got.logits.dtype == dtype and not got.logits.flags.writeable
    np.testing.assert_array_equal(got.logits, values)
    assert got.file_dtype == np.dtype(dtype).name and got.notes == ()


def test_npy_nonfinite_counted(tmp_path: Path) -> None:
    values = np.array([[np.nan, 1.0], [np.inf, -np.inf]], dtype=np.float16)
    got = load_input(save_npy(tmp_path, "nf.npy", values))
    assert got.nonfinite_cells == 3 and got.overflowed_cells == 0


def test_npy_fortran_order(tmp_path: Path) -> None:
    values = np.asfortranarray(GOOD_LOGITS.astype(np.float32))
    got = load_input(save_npy(tmp_path, "fortran.npy", values))
    np.testing.assert_array_equal(got.logits, values)


def test_npy_big_endian_converted(tmp_path: Path) -> None:
    got = load_input(save_npy(tmp_path, "be.npy", GOOD_LOGITS.astype(">f4")))
    assert got.logits.dtype == np.dtype("=f4")
    np.testing.assert_array_equal(got.logits, GOOD_LOGITS)
    assert got.file_dtype == "float32"
    assert any("big-endian" in n for n in got.notes)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.bool_])
def test_npy_integer_and_bool_become_float64(tmp_path: Path, dtype: type) -> None:
    values: np.ndarray = np.array([[0, 1, 1], [1, 0, 1]], dtype=dtype)
    got = load_input(save_npy(tmp_path, "i.npy", values))
    assert got.logits.dtype == np.float64 and got.file_dtype == np.dtype(dtype).name
    np.testing.assert_array_equal(got.logits, values.astype(np.float64))
    assert any(
        "logits read as floating point" in n and "checked in float32" in n for n in got.notes
    )


def test_npy_huge_integers_note_rounding(tmp_path: Path) -> None:
    got = load_input(save_npy(tmp_path, "h.npy", np.array([[2**60 + 1, 0]], dtype=np.int64)))
    assert any("2**53" in n for n in got.notes)


def test_npy_1d_is_one_row(tmp_path: Path) -> None:
    got = load_input(save_npy(tmp_path, "row.npy", np.array([1000.0, 1.0])))
    assert got.logits.shape == (1, 2) and got.original_shape == (2,)
    assert any("one row" in n for n in got.notes)


def test_npy_3d_flattened_with_matching_labels(tmp_path: Path) -> None:
    values = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    labels = np.array([[0, 1, 2], [3, -100, 0]])
    got = load_input(save_npy(tmp_path, "seq.npy", values), save_npy(tmp_path, "sl.npy", labels))
    assert got.logits.shape == (6, 4) and got.original_shape == (2, 3, 4)
    np.testing.assert_array_equal(got.logits, values.reshape(6, 4))
    assert got.labels is not None and got.labels.tolist() == [0, 1, 2, 3, -100, 0]
    assert any("flattened to 6 rows of 4 classes" in n for n in got.notes)


def test_flattened_labels_error_names_the_index(tmp_path: Path) -> None:
    values = np.zeros((2, 3, 4))
    labels = np.array([[0, 1, 2], [3, 9, 0]])
    with pytest.raises(InputError, match=r"sl2\.npy index \[1, 1\]: label 9"):
        load_input(save_npy(tmp_path, "s.npy", values), save_npy(tmp_path, "sl2.npy", labels))


def test_extension_that_lies_is_read_by_content(tmp_path: Path) -> None:
    got = load_input(write(tmp_path, "really_text.npy", "1,2\n3,4\n"))
    assert got.logits.tolist() == [[1, 2], [3, 4]]
    assert any("despite its .npy extension" in n for n in got.notes)
    got = load_input(write(tmp_path, "really.csv", npy_bytes(GOOD_LOGITS)))
    np.testing.assert_array_equal(got.logits, GOOD_LOGITS)
    assert any("a .npy array despite its .csv extension" in n for n in got.notes)


def test_unicode_path_with_spaces(tmp_path: Path) -> None:
    directory = tmp_path / "mes données é"
    directory.mkdir()
    got = load_input(save_npy(directory, "logits ü.npy", GOOD_LOGITS))
    np.testing.assert_array_equal(got.logits, GOOD_LOGITS)


# --------------------------------------------------------------------------- .npz, accepted


def test_npz_logits_labels_and_extra_keys(tmp_path: Path) -> None:
    path = save_npz(
        tmp_path,
        "run.npz",
        compressed=True,
        logits=GOOD_LOGITS.astype(np.float32),
        labels=np.array([0, 1, 2, 0]),
        meta=np.array([1.0]),
    )
    got = load_input(path)
    assert got.logits.dtype == np.float32 and got.file_dtype == "float32"
    assert got.labels is not None and got.labels.tolist() == [0, 1, 2, 0]
    assert got.labels_name == f"{path}['labels']"


def test_npz_single_array_is_logits(tmp_path: Path) -> None:
    got = load_input(save_npz(tmp_path, "one.npz", arr_0=GOOD_LOGITS))
    np.testing.assert_array_equal(got.logits, GOOD_LOGITS)
    assert got.labels is None
    assert any("'arr_0' taken as the logits" in n for n in got.notes)


def test_npz_custom_keys(tmp_path: Path) -> None:
    path = save_npz(tmp_path, "k.npz", scores=GOOD_LOGITS, y=np.array([2, 2, 1, 0]), z=np.ones(1))
    got = load_input(path, logits_key="scores", labels_key="y")
    assert got.labels is not None and got.labels.tolist() == [2, 2, 1, 0]


def test_npz_logits_with_labels_beside(tmp_path: Path) -> None:
    path = save_npz(tmp_path, "x.npz", x=GOOD_LOGITS, labels=np.array([2, 2, 1, 0]))
    got = load_input(path)
    np.testing.assert_array_equal(got.logits, GOOD_LOGITS)
    assert got.labels is not None and got.labels.tolist() == [2, 2, 1, 0]


def test_separate_labels_file_wins_over_npz_labels(tmp_path: Path) -> None:
    path = save_npz(tmp_path, "x.npz", logits=GOOD_LOGITS, labels=np.array([2, 2, 1, 0]))
    labels = save_npz(tmp_path, "y.npz", anything=np.array([0, 0, 0, 1]))
    got = load_input(path, labels)
    assert got.labels is not None and got.labels.tolist() == [0, 0, 0, 1]
    assert any("ignored" in n for n in got.notes)


def test_npz_from_stdin() -> None:
    buf = io.BytesIO()
    np.savez(buf, logits=GOOD_LOGITS, labels=np.array([0, 1, 2, 0]))
    got = load_input("-", stdin=io.BytesIO(buf.getvalue()))
    assert got.labels is not None and got.labels.tolist() == [0, 1, 2, 0]


# --------------------------------------------------------------------------- labels, accepted


def test_one_hot_labels_become_indices(tmp_path: Path) -> None:
    one_hot = np.eye(3, dtype=np.float32)[[2, 0, 1, 1]]
    got = load_input(
        save_npy(tmp_path, "l.npy", GOOD_LOGITS), save_npy(tmp_path, "oh.npy", one_hot)
    )
    assert got.labels is not None and got.labels.tolist() == [2, 0, 1, 1]
    assert any("one-hot" in n for n in got.notes)


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 1, 2, -100]),
        np.array([0.0, 1.0, 2.0, -100.0], dtype=np.float16),
        np.array([0, 1, 2, 156], dtype=np.uint8).astype(np.int16) - np.array([0, 0, 0, 256]),
        np.array([[0], [1], [2], [-100]], dtype=np.int32),
        np.array([0, 1, 2, -100], dtype=">i8"),
    ],
)
def test_labels_forms(tmp_path: Path, labels: np.ndarray) -> None:
    got = load_input(save_npy(tmp_path, "l.npy", GOOD_LOGITS), save_npy(tmp_path, "y.npy", labels))
    assert got.labels is not None and got.labels.dtype == np.int64
    assert got.labels.tolist() == [0, 1, 2, -100]


def test_custom_ignore_index(tmp_path: Path) -> None:
    logits = save_npy(tmp_path, "l.npy", GOOD_LOGITS)
    labels = save_npy(tmp_path, "y.npy", np.array([0, 255, 2, 1]))
    assert load_input(logits, labels, ignore_index=255).labels.tolist() == [0, 255, 2, 1]  # type: ignore[union-attr]
    with pytest.raises(InputError, match="row 1: label 255 is outside"):
        load_input(logits, labels)


def test_bool_labels(tmp_path: Path) -> None:
    logits = save_npy(tmp_path, "l.npy", GOOD_LOGITS[:, :2])
    got = load_input(logits, save_npy(tmp_path, "b.npy", np.array([True, False, True, True])))
    assert got.labels is not None and got.labels.tolist() == [1, 0, 1, 1]


def test_inputs_unchanged_after_loading(tmp_path: Path) -> None:
    paths = [
        write(tmp_path, "a.csv", "x,y,label\n1,2,0\n3,4,1\n"),
        save_npy(tmp_path, "b.npy", GOOD_LOGITS),
        save_npz(tmp_path, "c.npz", logits=GOOD_LOGITS, labels=np.array([0, 1, 2, 0])),
    ]
    before = [sha256(p) for p in paths]
    load_input(paths[0], label_column="label")
    load_input(paths[1], write(tmp_path, "l.txt", "0\n1\n2\n0\n"))
    load_input(paths[2])
    assert [sha256(p) for p in paths] == before


def test_labels_key_without_any_npz_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--labels-key 'y' given .* not an \.npz"):
        load_input(write(tmp_path, "t.csv", "1,2\n"), labels_key="y")


def test_npz_with_only_labels_has_no_logits(tmp_path: Path) -> None:
    path = save_npz(tmp_path, "lab.npz", labels=np.array([0, 1]))
    with pytest.raises(InputError, match=r"no 'logits' array; it holds: 'labels'"):
        load_input(path)


def test_labels_npz_with_single_array(tmp_path: Path) -> None:
    logits = save_npy(tmp_path, "l.npy", GOOD_LOGITS)
    got = load_input(logits, save_npz(tmp_path, "y.npz", targets=np.array([0, 1, 2, 0])))
    assert got.labels is not None and got.labels.tolist() == [0, 1, 2, 0]
    assert got.labels_name == str(tmp_path / "y.npz")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_read_once(tmp_path: Path) -> None:
    # bash's <(...) hands over a pipe: it can be read only once, so it is read as a stream
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(b"1,2\n3,4\n")

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        got = load_input(fifo)
    finally:
        writer.join(timeout=5)
    assert got.logits.tolist() == [[1, 2], [3, 4]]


def test_messages_are_one_line_without_the_traceback_chain(tmp_path: Path) -> None:
    # 'from None' everywhere: the CLI prints str(exc), and a chained cause would only confuse
    bad = make_bad_files(tmp_path)
    for case in ("npy_bad_header", "npz_corrupt", "missing"):
        with pytest.raises(InputError) as info:
            bad[case].load()
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_utf16_text_with_bom(tmp_path: Path) -> None:
    # Windows PowerShell's `>` writes UTF-16LE with a BOM
    path = write(tmp_path, "ps.csv", "a,b\r\n1,2\r\n3,4\r\n".encode("utf-16"))
    assert load_input(path).logits.tolist() == [[1, 2], [3, 4]]


def test_stdin_messages_say_stdin_but_name_stays_dash() -> None:
    got = load_input("-", stdin=io.BytesIO(b"1,2\n"))
    assert got.logits_name == "-"
    with pytest.raises(InputError, match=r"^stdin line 2: has 1 cells"):
        load_input("-", stdin=io.BytesIO(b"1,2\n3\n"))


def test_header_with_empty_last_name_keeps_its_column(tmp_path: Path) -> None:
    got = load_input(write(tmp_path, "h.csv", "a,b,\n1,2,3\n"))
    assert got.logits.tolist() == [[1, 2, 3]]


def test_pandas_index_column_gets_a_note(tmp_path: Path) -> None:
    got = load_input(write(tmp_path, "pd.csv", ",a,b\n0,1.5,2\n1,3,4\n"))
    assert got.logits.tolist() == [[0, 1.5, 2], [1, 3, 4]]
    assert any("pandas index" in n for n in got.notes)


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_stdin_terminal_is_refused_instead_of_waiting() -> None:
    with pytest.raises(InputError, match="terminal"):
        load_input("-", stdin=_Terminal(b"1,2\n"))


# --------------------------------------------------------------------------- text in blocks

BLOCK_CASES = {
    "plain": ("1,2,3\n4,5,6\n7,8,9\n", None),
    "header, label column, comments and blanks": (
        "a,b,label\n# c\n1,2,0\n\n3,4,1\r\n5,6e400,1\n",
        "label",
    ),
    "trailing delimiter on every line": ("a,b,\n1,2,\n3,4,\n5,6,\n", None),
    "trailing delimiter stops on a later line": ("1,2,\n3,4,\n5,6,\n7,8,9\n", None),
    "bad cell before a ragged row": ("1,2\n3,x\n5,6\n7\n", None),
    "bad logit before a bad label": ("1,2,0\n1,x,0\n1,2,y\n", 2),
    "decimal comma late": ("1;2\n3;4\n5;6,5\n", None),
    "header only": ("a,b\n\n# nothing\n", None),
    "old mac line ends": ("1,2\r3,4\r5,6\r", None),
    "header width": ("a,b,c\n1,2\n3,4\n", None),
    "label column missing": ("a,b\n1,2\n3,4\n", "z"),
    "utf-8 BOM and whitespace": ("\ufeff1 2 3\n4 5 6\n", None),
}


def _parsed(content: str, label_column: str | int | None, block_bytes: int) -> object:
    from smcheck.loading.text import _text_logits

    notes: list[str] = []
    try:
        got = _text_logits(content.encode(), "t.csv", label_column, notes, block_bytes)
    except InputError as exc:
        return ("error", str(exc))
    lines = [got.lines[i] for i in range(len(got.lines))]
    labels = None if got.label_values is None else got.label_values.tolist()
    return (got.logits.tolist(), labels, got.label_where, lines, got.overflowed, notes)


@pytest.mark.parametrize("case", sorted(BLOCK_CASES))
def test_text_read_in_blocks_gives_the_whole_file_result(case: str) -> None:
    """Every block size, down to one line per block, gives what one block (the whole file,
    as the parser read it before it read in blocks) gives: values, line numbers, notes, and
    the same first error."""
    content, label_column = BLOCK_CASES[case]
    whole = _parsed(content, label_column, 10**9)
    for block_bytes in (0, 1, 3, 7, 16):
        assert _parsed(content, label_column, block_bytes) == whole, block_bytes


def test_csv_costs_about_twice_its_size_in_memory(tmp_path: Path) -> None:
    """Regression: a CSV cost ~11x its size (every cell a Python string at once); parsed a
    block at a time it costs its bytes, its float64 values and one block of strings."""
    import tracemalloc

    x = np.random.default_rng(0).standard_normal((4000, 50)).astype(np.float32)
    buf = io.StringIO()
    np.savetxt(buf, x, delimiter=",", fmt="%.9g")  # 9 digits: float32 round-trips exactly
    path = write(tmp_path, "m.csv", buf.getvalue())
    size = path.stat().st_size
    tracemalloc.start()
    try:
        got = load_input(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(got.logits.astype(np.float32), x)
    assert peak < 3 * size, peak / size  # measured 2.1x
