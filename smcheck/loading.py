"""Files -> validated (logits, labels): the only module that reads user input.

Every problem with the data raises :class:`~smcheck.errors.InputError` with one line that names
the file, the row/line/column or array key, what is wrong and what was expected, e.g.
``labels.npy row 7: label 12 is outside [0, 10) (the logits have 10 classes)``. No other
exception type escapes for bad data; option conflicts raise :class:`~smcheck.errors.UsageError`.

Formats are recognised by content, never by extension:

* ``\\x93NUMPY`` - a ``.npy`` array, memory-mapped read-only (never unpickled);
* ``PK\\x03\\x04`` - a ``.npz`` archive of ``.npy`` members (sizes checked before decompressing);
* a directory holding ``zarr.json`` (zarr v3) or ``.zarray`` (zarr v2) - a zarr array store, read
  a block of rows at a time through :class:`ZarrLogits` (the optional extra ``[zarr]``);
* anything else - delimited text (comma, tab, semicolon or whitespace), or ``-`` for stdin.

Row numbers of arrays are 0-based indices (as in numpy); text positions are 1-based ``line N``
and ``column M`` as an editor shows them. The rules are listed in ``docs/validation.md``.
"""

from __future__ import annotations

import codecs
import csv
import importlib
import io
import math
import os
import re
import stat
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType
from typing import Any, BinaryIO, cast

import numpy as np

from .errors import InputError, UsageError
from .memmaps import release_pages

__all__ = ["LoadedInput", "ZarrLogits", "load_input"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive
_KIND_BY_EXTENSION = {
    ".npy": "npy",
    ".npz": "npz",
    ".csv": "text",
    ".tsv": "text",
    ".txt": "text",
}
_KIND_WORDS = {
    "npy": "a .npy array",
    "npz": "a .npz archive",
    "text": "a text file",
    "zarr": "a zarr store",
}
# metadata files that make a directory a zarr node: v3 keeps one zarr.json (node_type "array" or
# "group"); v2 keeps .zarray for an array and .zgroup for a group
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
# Exceptions numpy/zipfile/zlib raise for a corrupt container; each is turned into InputError.
_CORRUPT = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    NotImplementedError,  # an unsupported zip compression method
    RuntimeError,  # an encrypted zip member
    OverflowError,
    UnicodeDecodeError,
    SyntaxError,
    RecursionError,
)
_STREAM_CHUNK = 1 << 20
# rows of the logits looked at per step when counting inf/NaN in a memory-mapped array: keeps the
# temporary boolean mask near 16 MiB whatever N is
_CELLS_PER_CHUNK = 1 << 24
# integers above 2**53 are not all exactly representable in float64
_FLOAT64_EXACT_INT = 2**53


@dataclass(frozen=True)
class LoadedInput:
    """Validated logits (N, C) and optional labels, with what loading had to do to them.

    ``logits`` keeps the stored float dtype (float16/32/64), and may be a read-only
    ``np.memmap`` for ``.npy`` input or a :class:`ZarrLogits` for a zarr store; integer/bool
    logits are converted to float64 and text is parsed to float64 (both with a note).
    ``labels`` is 1-D int64 of length N, each either in ``[0, C)`` or equal to
    ``ignore_index``, or ``None`` in label-free mode.
    """

    # a zarr store gives a ZarrLogits: array-like (numpy reads it whole through __array__), and
    # read a block of rows at a time by evaluate's engines
    logits: np.ndarray
    labels: np.ndarray | None
    logits_name: str
    labels_name: str | None
    file_dtype: str
    original_shape: tuple[int, ...]
    # NaN/inf cells: counted while parsing text; None for arrays, counted on first use of
    # nonfinite_cells (a full pass over a possibly huge memmap that eval does not need: it
    # counts rows per chunk). Where the count field was, so positional construction still fits.
    counted_nonfinite: int | None
    overflowed_cells: int
    notes: tuple[str, ...] = ()

    @cached_property
    def nonfinite_cells(self) -> int:
        """Number of NaN/inf cells of the logits."""
        if self.counted_nonfinite is not None:
            return self.counted_nonfinite
        return _count_nonfinite(self.logits)

    @property
    def n_rows(self) -> int:
        """N, the number of rows (examples)."""
        return int(self.logits.shape[0])

    @property
    def n_classes(self) -> int:
        """C, the number of classes."""
        return int(self.logits.shape[1])


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """One input as given: a path on disk (``path``) or bytes already read (``data``)."""

    name: str
    path: str | None
    data: bytes | None
    kind: str  # "npy", "npz", "text" or "zarr", by content


def _open_source(
    given: str | os.PathLike[str], stdin: BinaryIO | None, max_bytes: int, notes: list[str]
) -> _Source:
    """Check that ``given`` is a readable file (or ``-``) and sniff its format from its bytes."""
    name = os.fspath(given)
    if name == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        if stream.isatty():  # reading would wait for typing: almost surely a forgotten pipe
            raise InputError("stdin ('-') is a terminal; pipe the logits in, e.g. cat x.csv |")
        piped = _read_stream(stream, "stdin", max_bytes)
        return _Source("stdin", None, piped, _sniff(piped[:8]))
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        if any(os.path.isfile(os.path.join(name, m)) for m in _ZARR_MARKERS):
            return _Source(name, name, None, "zarr")
        raise InputError(
            f"{name}: is a directory, expected a .npy, .npz or text file, or a zarr array store "
            "(a directory holding zarr.json or .zarray)"
        )
    data: bytes | None = None
    try:
        with open(name, "rb") as f:  # read only: an input is never opened for writing
            if stat.S_ISREG(st.st_mode):
                head = f.read(8)
            else:  # a pipe such as bash's <(...): it can be read once only, so keep the bytes
                data = _read_stream(f, name, max_bytes)
                head = data[:8]
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if data is None and not head:
        raise InputError(f"{name}: is empty, expected a .npy, .npz or text file")
    kind = _sniff(head)
    ext = os.path.splitext(name)[1].lower()
    claimed = _KIND_BY_EXTENSION.get(ext)
    if claimed is not None and claimed != kind:
        notes.append(f"{name} is {_KIND_WORDS[kind]} despite its {ext} extension (read by content)")
    return _Source(name, name if data is None else None, data, kind)


def _reason(exc: BaseException) -> str:
    """The human part of an OSError ("Permission denied"), else the exception text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _read_stream(stream: BinaryIO, name: str, max_bytes: int) -> bytes:
    """Read a stream to its end, refusing more than ``max_bytes`` and obvious binary junk early."""
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = stream.read(_STREAM_CHUNK)
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
        if not chunk:
            break
        if not chunks and b"\x00" in chunk and not _is_container(chunk) and not _is_utf16(chunk):
            # stop at once: /dev/zero or a binary blob would otherwise be read up to max_bytes
            raise InputError(f"{name}: looks binary (NUL bytes), expected .npy, .npz or text")
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise InputError(f"{name}: more than max_bytes={max_bytes} bytes; refusing to read on")
    data = b"".join(chunks)
    if not data:
        raise InputError(f"{name}: is empty, expected a .npy, .npz or text file")
    return data


def _is_utf16(head: bytes) -> bool:
    return head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def _is_container(head: bytes) -> bool:
    return head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGICS)


def _sniff(head: bytes) -> str:
    """The format from the first bytes: the magic numbers of .npy and zip, else text."""
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGICS):
        return "npz"
    return "text"


def _file_bytes(src: _Source, max_bytes: int) -> bytes:
    """All the bytes of a source, refusing a file over ``max_bytes`` before reading it."""
    if src.data is not None:
        return src.data
    assert src.path is not None
    try:
        size = os.path.getsize(src.path)
        if size > max_bytes:
            raise InputError(
                f"{src.name}: {size} bytes is over the max_bytes limit of {max_bytes} for "
                "text input; save large inputs as .npy (memory-mapped, no limit)"
            )
        with open(src.path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"{src.name}: cannot read: {_reason(exc)}") from None


# --------------------------------------------------------------------------- .npy / .npz


@dataclass
class _Array:
    """An array read from a container, with the name to use in messages."""

    array: np.ndarray
    where: str  # "logits.npy" or "data.npz['logits']"
    stored: np.dtype


def _check_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse the dtypes smcheck cannot read as numbers; accept float, integer and bool."""
    if dtype.hasobject:
        raise InputError(
            f"{where}: holds Python objects (a pickle); smcheck never unpickles - save a numeric "
            "array (float16/32/64)"
        )
    if dtype.fields is not None:
        raise InputError(f"{where}: structured dtype {dtype} is not supported; save a plain array")
    if dtype.subdtype is not None:
        raise InputError(f"{where}: sub-array dtype {dtype} is not supported; save a plain array")
    kind = dtype.kind
    if kind == "c":
        raise InputError(
            f"{where}: complex dtype {dtype.name} is not supported; expected real numbers"
        )
    if kind == "V":
        hint = (
            " (ml_dtypes bfloat16 is saved like this: convert with .astype(np.float32), which is"
            " exact)"
            if dtype.itemsize in (1, 2)
            else ""
        )
        raise InputError(f"{where}: raw void dtype {dtype.str} has no numeric meaning{hint}")
    if kind == "f" and dtype.itemsize not in (2, 4, 8):
        raise InputError(
            f"{where}: {dtype.name} is not supported; expected float16, float32 or float64"
        )
    if kind not in "fiub":
        raise InputError(
            f"{where}: dtype {dtype.name} is not numeric; expected float16/32/64 (or integers)"
        )


def _read_npy_header(fp: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header with numpy's own parser (a literal, never code), as InputError."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise InputError(
                f"{where}: .npy format version {version[0]}.{version[1]} is not supported "
                "(expected 1.0 or 2.0)"
            )
    except InputError:
        raise
    except Exception as exc:
        # numpy tokenizes and literal_evals the header text: on hostile bytes that raises
        # ValueError, SyntaxError, tokenize.TokenError, ... - every one of them means "bad header"
        raise InputError(f"{where}: bad or truncated .npy header ({_short(exc)})") from None
    dtype = np.dtype(dtype)
    if any(int(d) < 0 for d in shape):  # numpy checks the type of each dimension, not its sign
        raise InputError(f"{where}: bad .npy header: negative dimension in shape {shape}")
    _check_dtype(dtype, where)
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _short(exc: BaseException) -> str:
    """One short line from an exception message (numpy's can be long and multi-line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize  # Python ints: a lying header cannot overflow this


def _truncated(where: str, shape: tuple[int, ...], dtype: np.dtype, have: int) -> InputError:
    return InputError(
        f"{where}: truncated: the header declares {dtype.name} shape {shape} "
        f"({_data_bytes(shape, dtype)} bytes of data) but only {max(have, 0)} bytes follow it"
    )


def _npy_from_path(path: str, where: str, *, mmap: bool) -> _Array:
    """A .npy file, memory-mapped read-only when ``mmap`` (after checking the header and size)."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_npy_header(f, where)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {_reason(exc)}") from None
    if _data_bytes(shape, dtype) > size - offset:
        raise _truncated(where, shape, dtype, size - offset)
    try:
        if mmap and math.prod(shape) > 0:  # mmap cannot map zero bytes
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            arr = np.load(path, allow_pickle=False)
    except _CORRUPT as exc:
        raise InputError(f"{where}: cannot read the array ({_short(exc)})") from None
    return _Array(arr, where, dtype)


def _npy_from_stream(fp: BinaryIO, available: int, where: str, max_bytes: int) -> _Array:
    """A .npy held in a stream of ``available`` bytes (stdin, a pipe, an .npz member)."""
    shape, fortran, dtype = _read_npy_header(fp, where)
    have = available - fp.tell()
    need = _data_bytes(shape, dtype)
    if need > max_bytes:
        raise InputError(
            f"{where}: the header declares {need} bytes of data, over the max_bytes limit of "
            f"{max_bytes}"
        )
    if need > have:
        raise _truncated(where, shape, dtype, have)
    try:
        data = fp.read(need)
        fp.read()  # to the end: a zip member checks its CRC only there
    except _CORRUPT as exc:
        raise InputError(f"{where}: cannot read the array data ({_short(exc)})") from None
    if len(data) < need:
        raise _truncated(where, shape, dtype, len(data))
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return _Array(arr.reshape(shape, order="F" if fortran else "C"), where, dtype)


class _Npz:
    """The members of an .npz archive by key ("logits" for "logits.npy"), read on demand."""

    def __init__(self, src: _Source, max_bytes: int) -> None:
        self.name = src.name
        self.max_bytes = max_bytes
        self._read_total = 0
        try:
            target: str | BinaryIO = (
                src.path if src.path is not None else io.BytesIO(src.data or b"")
            )
            self.zip = zipfile.ZipFile(target)
            infos = [i for i in self.zip.infolist() if not i.is_dir()]
        except Exception as exc:
            # on damaged bytes zipfile raises BadZipFile but also IndexError, struct.error,
            # UnicodeDecodeError, ...: each means the archive cannot be read
            raise InputError(f"{self.name}: not a readable .npz archive ({_short(exc)})") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            self.members[key] = info
        if not self.members:
            self.zip.close()
            raise InputError(f"{self.name}: the .npz archive holds no arrays")

    def keys_text(self) -> str:
        return ", ".join(repr(k) for k in self.members)

    def read(self, key: str) -> _Array:
        info = self.members[key]
        where = f"{self.name}[{key!r}]"
        # the declared uncompressed size is checked before a single byte is inflated: a few KiB
        # of DEFLATE can expand to gigabytes (a zip bomb)
        if info.file_size > self.max_bytes or self._read_total + info.file_size > self.max_bytes:
            raise InputError(
                f"{where}: declares {info.file_size} bytes uncompressed, over the max_bytes limit "
                f"of {self.max_bytes}; refusing to decompress it"
            )
        self._read_total += info.file_size
        try:
            with self.zip.open(info) as fp:
                head = fp.read(len(_NPY_MAGIC))
                if head != _NPY_MAGIC:
                    raise InputError(f"{where}: member {info.filename!r} is not a .npy array")
                # start again so that numpy's header reader sees the magic
            with self.zip.open(info) as fp:
                return _npy_from_stream(fp, info.file_size, where, self.max_bytes)  # type: ignore[arg-type]
        except InputError:
            raise
        except Exception as exc:  # zipfile/zlib on a damaged member: see __init__
            raise InputError(f"{where}: cannot read the member ({_short(exc)})") from None

    def close(self) -> None:
        self.zip.close()


def _array_from_source(src: _Source, max_bytes: int, *, mmap: bool) -> _Array:
    """A whole .npy source (a file: memory-mapped when ``mmap``; stdin/pipe bytes: in memory)."""
    if src.path is not None:
        return _npy_from_path(src.path, src.name, mmap=mmap)
    data = src.data or b""
    return _npy_from_stream(io.BytesIO(data), len(data), src.name, max_bytes)


# --------------------------------------------------------------------------- zarr stores


def _zarr() -> ModuleType:
    """The zarr package, or a one-line UsageError naming the extra that installs it."""
    try:
        return importlib.import_module("zarr")
    except ImportError:
        raise UsageError(
            "reading a zarr store needs zarr: pip install 'smcheck-xent[zarr]'"
        ) from None


def _open_zarr_array(path: str, where: str) -> Any:
    """The zarr array at ``path``, opened read-only; InputError for a group or bad metadata."""
    zarr = _zarr()
    try:
        node = zarr.open(store=path, mode="r")
    except Exception as exc:  # zarr raises many types on hostile metadata: all mean "unreadable"
        raise InputError(f"{where}: not a readable zarr array ({_short(exc)})") from None
    if not hasattr(node, "shape"):  # a Group: it has members, no shape
        try:
            keys = sorted(str(k) for k in node.array_keys())
        except Exception:  # listing is only for the message
            keys = []
        held = ", ".join(repr(k) for k in keys[:20]) or "no arrays"
        raise InputError(
            f"{where}: is a zarr group, not an array; give the directory of one of its arrays "
            f"(it holds: {held})"
        )
    return node


class ZarrLogits:
    """Logits (N, C) in a zarr array store, read a block of rows at a time.

    What the engine needs of its logits and nothing more: ``shape``, ``dtype``, ``ndim`` and
    ``x[a:b]`` for a block of rows, returned as a numpy array of ``dtype``. The store's leading
    axes are flattened to rows lazily (a row block reads only the chunks it touches), a
    big-endian block is swapped to native order and an integer or bool block converted to
    float64, as for ``.npy``. Pickling keeps the path only, so each Dask task opens the store
    itself instead of receiving the array. ``np.asarray(x)`` reads the whole store (for
    commands that need it in memory); ``rows_read``/``largest_read`` count the rows read.
    """

    ndim = 2

    def __init__(self, path: str, where: str, array: Any = None) -> None:
        self.path = path
        self.where = where
        arr = _open_zarr_array(path, where) if array is None else array
        self._array: Any = arr
        self.original_shape: tuple[int, ...] = tuple(int(d) for d in arr.shape)
        self.stored = np.dtype(arr.dtype)
        kind = self.stored.kind
        # what a block is returned as: integers and bools as float64 (as for .npy), floats in
        # native byte order; any other dtype is refused by the loader before a block is read
        self.dtype = (
            np.dtype(np.float64)
            if kind in "iub"
            else self.stored.newbyteorder("=")
            if kind == "f"
            else self.stored
        )
        c = self.original_shape[-1] if self.original_shape else 0
        self.shape = (math.prod(self.original_shape[:-1]), c)
        self.rows_read = 0
        self.largest_read = 0

    @property
    def array(self) -> Any:
        """The zarr array, opened on first use after unpickling (on a Dask worker)."""
        if self._array is None:
            self._array = _open_zarr_array(self.path, self.where)
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # the path travels, never the array or its open store
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("ZarrLogits reads blocks of rows: x[a:b]")
        lo, hi, _ = rows.indices(self.shape[0])
        hi = max(lo, hi)
        return self.raw(lo, hi).astype(self.dtype, copy=False)

    def raw(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) in the stored dtype, shape (hi - lo, C)."""
        lead = self.original_shape[:-1]
        if hi <= lo:
            block = np.empty((0, self.shape[1]), self.stored)
        elif not lead:  # a 1-d store is one row
            block = np.asarray(self.array[...]).reshape(1, -1)[lo:hi]
        else:
            parts = _zarr_rows(self.array, (), lead, lo, hi)
            block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.rows_read += max(0, hi - lo)
        self.largest_read = max(self.largest_read, hi - lo)
        return block.reshape(max(0, hi - lo), self.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0 : self.shape[0]]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ZarrLogits({self.path!r}, shape={self.shape}, dtype={self.dtype})"


def _zarr_rows(
    arr: Any, prefix: tuple[int, ...], lead: tuple[int, ...], lo: int, hi: int
) -> list[np.ndarray]:
    """Flattened rows [lo, hi) of ``arr[prefix]`` (leading axes ``lead``), as (k, C) blocks.

    Reads whole indices of the first leading axis in one call and recurses into the partial
    ones at either end, so a block touches only the store chunks holding its rows.
    """
    c = arr.shape[-1]
    if len(lead) == 1:
        return [np.asarray(arr[(*prefix, slice(lo, hi))]).reshape(-1, c)]
    inner = math.prod(lead[1:])
    out: list[np.ndarray] = []
    i = lo // inner
    if lo % inner:  # a partial first index
        stop = min(hi, (i + 1) * inner)
        out += _zarr_rows(arr, (*prefix, i), lead[1:], lo - i * inner, stop - i * inner)
        i += 1
    full = hi // inner
    if full > i:  # whole indices of the first axis
        out.append(np.asarray(arr[(*prefix, slice(i, full))]).reshape(-1, c))
        i = full
    if hi > i * inner:  # a partial last index
        out += _zarr_rows(arr, (*prefix, i), lead[1:], 0, hi - i * inner)
    return out


def _zarr_logits(src: _Source, notes: list[str]) -> tuple[ZarrLogits, tuple[int, ...]]:
    """A zarr array store as lazy (N, C) logits, checked as a .npy array is."""
    assert src.path is not None
    where = src.name
    x = ZarrLogits(src.path, where)
    shape = x.original_shape
    if x.stored.kind in "OSTU":  # zarr's string arrays (variable-length: object or StringDType)
        raise InputError(
            f"{where}: dtype {x.stored} is not numeric; expected float16/32/64 (or integers)"
        )
    _check_dtype(x.stored, where)
    if not shape:
        raise InputError(
            f"{where}: is a single number (0-d array); expected logits of shape (N, C)"
        )
    if shape[-1] == 0:
        raise InputError(f"{where}: shape {shape} has 0 classes; expected logits of shape (N, C)")
    if math.prod(shape) == 0:
        raise InputError(f"{where}: shape {shape} has 0 rows; expected logits of shape (N, C)")
    if not x.stored.isnative:
        notes.append(f"{where}: big-endian {x.stored.name} converted to native byte order")
    if x.stored.kind in "iub":
        big = (
            x.stored.kind != "b"
            and x.stored.itemsize >= 8
            and _zarr_max_abs_int(x) > (_FLOAT64_EXACT_INT)
        )
        notes.append(
            f"{where}: {x.stored.name} logits converted to float64"
            + (" (values above 2**53 were rounded)" if big else "")
        )
    if len(shape) == 1:
        notes.append(
            f"{where}: 1-d array of {shape[0]} values read as one row of {shape[0]} classes"
        )
    elif len(shape) > 2:
        notes.append(
            f"{where}: {shape} flattened to {x.shape[0]} rows of {shape[-1]} classes "
            "(classes on the last axis)"
        )
    return x, shape


def _zarr_max_abs_int(x: ZarrLogits) -> int:
    """Largest |value| of a 64-bit integer store, read a block of rows at a time."""
    step = max(1, _CELLS_PER_CHUNK // max(1, x.shape[1]))
    top = 0
    for i in range(0, x.shape[0], step):
        block = x.raw(i, min(i + step, x.shape[0]))
        top = max(top, abs(int(block.max())), abs(int(block.min())))
    return top


# --------------------------------------------------------------------------- logits arrays


def _logits_from_array(arr: _Array, notes: list[str]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Shape an array into (N, C) logits; returns (logits, original shape)."""
    a = arr.array
    where = arr.where
    shape = tuple(int(d) for d in a.shape)
    if a.ndim == 0:
        raise InputError(
            f"{where}: is a single number (0-d array); expected logits of shape (N, C)"
        )
    if shape[-1] == 0:
        raise InputError(f"{where}: shape {shape} has 0 classes; expected logits of shape (N, C)")
    if math.prod(shape) == 0:
        raise InputError(f"{where}: shape {shape} has 0 rows; expected logits of shape (N, C)")
    if not a.dtype.isnative:
        # the arithmetic downstream wants native floats; this reads the array into memory
        a = a.astype(a.dtype.newbyteorder("="))
        notes.append(f"{where}: big-endian {arr.stored.name} converted to native byte order")
    if a.dtype.kind in "iub":
        big = a.dtype.kind != "b" and a.dtype.itemsize >= 8 and _max_abs_int(a) > _FLOAT64_EXACT_INT
        a = a.astype(np.float64)
        notes.append(
            f"{where}: {arr.stored.name} logits converted to float64"
            + (" (values above 2**53 were rounded)" if big else "")
        )
    if a.ndim == 1:
        a = a.reshape(1, -1)
        notes.append(
            f"{where}: 1-d array of {shape[0]} values read as one row of {shape[0]} classes"
        )
    elif a.ndim > 2:
        a = a.reshape(-1, shape[-1])
        notes.append(
            f"{where}: {shape} flattened to {a.shape[0]} rows of {shape[-1]} classes "
            "(classes on the last axis)"
        )
    return a, shape


def _max_abs_int(a: np.ndarray) -> int:
    flat = a.reshape(-1)
    return max(abs(int(flat.max())), abs(int(flat.min())))


def _count_nonfinite(a: np.ndarray) -> int:
    """inf/NaN cells of a 2-D float array, a block of rows at a time (a memmap stays on disk)."""
    if a.dtype.kind != "f":
        return 0
    step = max(1, _CELLS_PER_CHUNK // max(1, a.shape[1]))
    bad = 0
    for i in range(0, a.shape[0], step):
        block = a[i : i + step]
        bad += int(block.size - np.count_nonzero(np.isfinite(block)))
        release_pages(block)  # a memmap's scanned pages need not stay resident
    return bad


# --------------------------------------------------------------------------- text

# A number as smcheck reads it: decimal point '.', optional exponent, inf/infinity/nan in any
# case. Python's float() alone would also take '1_000' and non-ASCII digits.
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.I | re.ASCII
)
_NUMBER_CHARS = re.compile(r"[^0-9.eE+\-nNaAiIfFtTyY\x1f]")
_NUMBER_START = re.compile(r"[+-]?\.?\d", re.ASCII)
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?", re.ASCII)


@dataclass
class _Table:
    """Cells of a delimited text file: data rows, their line numbers, and the header if any."""

    name: str
    rows: list[list[str]]
    lines: list[int]  # 1-based line number of each data row
    header: list[str] | None
    header_line: int | None
    delimiter: str | None  # None: runs of whitespace
    notes: list[str] = field(default_factory=list)


def _decode(data: bytes, name: str) -> str:
    """Text from bytes: UTF-8 (a BOM is dropped), or UTF-16 when it starts with its BOM
    (what Windows PowerShell's ``>`` writes)."""
    encoding = "utf-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif b"\x00" in data:
        raise InputError(f"{name}: looks binary (NUL bytes), expected .npy, .npz or text")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n" if encoding == "utf-8" else b"\n\x00") + 1
        raise InputError(
            f"{name} line {line}: not {encoding.upper()} text (byte {data[exc.start]:#04x}); "
            "expected .npy, .npz or UTF-8 text"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


def _sniff_delimiter(first: str) -> str | None:
    """The delimiter of the first line: tab, then ';', then ','; else runs of whitespace.

    ';' wins over ',' so that a European file with decimal commas is split on ';' and its
    decimal commas are then reported, not silently read as extra columns. The first line
    alone decides, so that a ragged row later is reported as ragged.
    """
    for delim in ("\t", ";", ","):
        if delim in first:
            return delim
    return None


def _split(
    lines: list[str], delimiter: str | None, name: str, numbers: list[int]
) -> list[list[str]]:
    """Cells of each line. Quotes are honoured within a line only: a number file has no
    multi-line quoted fields, and one row per line keeps the line numbers in messages right."""
    if delimiter is None:
        # whitespace-separated: no quoting rules beyond dropping quotes around a cell
        return [[c.strip("\"'") for c in line.split()] for line in lines]
    try:
        rows = list(csv.reader(lines, delimiter=delimiter, quotechar='"', strict=False))
    except csv.Error:
        rows = []
    if len(rows) != len(lines):
        # an unbalanced quote made csv join lines into one record: split line by line instead
        rows = []
        for line, number in zip(lines, numbers, strict=True):
            try:
                rows.append(next(csv.reader([line], delimiter=delimiter, strict=False), []))
            except csv.Error as exc:
                raise InputError(f"{name} line {number}: cannot split ({_short(exc)})") from None
    return [[c.strip().strip('"').strip() for c in row] for row in rows]


def _is_number(cell: str) -> bool:
    return _NUMBER.fullmatch(cell) is not None


def _read_table(data: bytes, name: str) -> _Table:
    """Split text into rows of cells, handling comments, blank lines, BOM, CRLF, a header row
    and a delimiter at the end of every line."""
    text = _decode(data, name)
    raw_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines: list[str] = []
    numbers: list[int] = []
    for i, line in enumerate(raw_lines, 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(line)
            numbers.append(i)
    if not lines:
        raise InputError(f"{name}: no data rows (the file is empty, blank or only comments)")
    delimiter = _sniff_delimiter(lines[0])
    rows = _split(lines, delimiter, name, numbers)
    notes: list[str] = []
    header: list[str] | None = None
    header_line: int | None = None
    if any(_is_header_cell(c) for c in rows[0]):
        header, header_line = rows[0], numbers[0]
        rows, numbers = rows[1:], numbers[1:]
        shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
        notes.append(f"{name} line {header_line} read as a header: {shown}")
        if header[0] == "" and len(header) > 1:
            notes.append(
                f"{name}: column 1 has no name in the header - a pandas index written by "
                "to_csv? It is read as a logit column (write with index=False)"
            )
    if not rows:
        raise InputError(f"{name}: has a header (line {header_line}) but no data rows")
    if delimiter is not None and all(row and row[-1] == "" for row in rows) and len(rows[0]) > 1:
        rows = [row[:-1] for row in rows]  # a delimiter at the end of every line
    if header is not None and len(header) == len(rows[0]) + 1 and header[-1] == "":
        header = header[:-1]  # the header line ends with a delimiter too
    return _Table(name, rows, numbers, header, header_line, delimiter, notes)


def _is_header_cell(cell: str) -> bool:
    """A name, not a number. A cell that starts like a number ('1_000', '1.2.3', '1,5') or is
    empty is bad data in a first data row, to be reported with its line and column."""
    return cell != "" and not _is_number(cell) and _NUMBER_START.match(cell) is None


def _check_rectangular(table: _Table) -> int:
    width = len(table.rows[0])
    for row, line in zip(table.rows, table.lines, strict=True):
        if len(row) != width:
            raise InputError(
                f"{table.name} line {line}: has {len(row)} cells, expected {width} "
                f"(as on line {table.lines[0]})"
            )
    if table.header is not None and len(table.header) != width:
        raise InputError(
            f"{table.name} line {table.header_line}: the header has {len(table.header)} names "
            f"but the data rows have {width} cells"
        )
    return width


def _column_label(table: _Table, col: int) -> str:
    if table.header is not None and col < len(table.header) and table.header[col]:
        return f"column {col + 1} ({table.header[col]!r})"
    return f"column {col + 1}"


def _parse_numbers(table: _Table, columns: list[int], what: str) -> tuple[np.ndarray, int]:
    """The cells of ``columns`` as a float64 (rows, len(columns)) array; counts overflowed cells.

    Fast path: Python's float() on every cell, plus one scan of all the characters for anything
    float() accepts but a number file should not hold ('_', non-ASCII digits). A failure falls
    back to a cell-by-cell scan that names the first bad line and column.
    """
    n = len(table.rows)
    width = len(columns)
    cells = [row[c] for row in table.rows for c in columns]
    try:
        values = np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))
        clean = _NUMBER_CHARS.search("\x1f".join(cells)) is None
    except ValueError:
        clean = False
        values = np.empty(0)
    if not clean:
        for i, cell in enumerate(cells):
            if not _is_number(cell):
                _bad_cell(table, i // width, columns[i % width], cell, what)
        # not reached while _NUMBER and float() agree; still an InputError, never a crash
        raise InputError(f"{table.name}: cannot read the cells as numbers ({what})")
    # '1e400' is a finite number that float() turned into inf without a word: count those
    overflowed = sum("inf" not in cells[int(i)].lower() for i in np.flatnonzero(np.isinf(values)))
    return values.reshape(n, width), overflowed


def _bad_cell(table: _Table, row: int, col: int, cell: str, what: str) -> None:
    where = f"{table.name} line {table.lines[row]}, {_column_label(table, col)}"
    if cell == "":
        raise InputError(f"{where}: empty cell; expected a number ({what})")
    shown = cell if len(cell) <= 40 else cell[:37] + "..."
    if _DECIMAL_COMMA.fullmatch(cell):
        raise InputError(
            f"{where}: {shown!r} uses a decimal comma, which is not supported; write numbers "
            "with a '.' decimal point (e.g. 1.5)"
        )
    raise InputError(f"{where}: {shown!r} is not a number; expected {what}")


def _resolve_label_column(table: _Table, label_column: str | int, width: int) -> int:
    """A header name (exact), else a 0-based index (negative from the end) - as a column index."""
    by_name = isinstance(label_column, str) and (
        not _is_int_text(label_column)
        or (table.header is not None and label_column in table.header)
    )
    if isinstance(label_column, str) and by_name:
        if table.header is None:
            raise InputError(
                f"{table.name}: label column {label_column!r} is given by name but the file has "
                "no header row (its first line is numeric); give a 0-based column index"
            )
        matches = [i for i, h in enumerate(table.header) if h == label_column]
        if not matches:
            names = ", ".join(repr(h) for h in table.header[:20])
            raise InputError(
                f"{table.name}: no column named {label_column!r} in the header (line "
                f"{table.header_line}); columns are: {names}"
            )
        if len(matches) > 1:
            raise InputError(
                f"{table.name}: {len(matches)} columns are named {label_column!r}; give a "
                "0-based column index"
            )
        return matches[0]
    index = int(label_column)
    col = index + width if index < 0 else index
    if not 0 <= col < width:
        raise InputError(
            f"{table.name}: label column {index} is out of range for {width} columns "
            f"(0-based: 0..{width - 1}, or negative from the end)"
        )
    return col


def _is_int_text(s: str) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", s) is not None


@dataclass
class _TextLogits:
    logits: np.ndarray
    overflowed: int
    label_values: np.ndarray | None
    label_where: str | None
    lines: list[int]


def _text_logits(
    data: bytes, name: str, label_column: str | int | None, notes: list[str]
) -> _TextLogits:
    table = _read_table(data, name)
    notes.extend(table.notes)
    width = _check_rectangular(table)
    columns = list(range(width))
    label_values: np.ndarray | None = None
    label_where: str | None = None
    overflowed = 0
    if label_column is not None:
        col = _resolve_label_column(table, label_column, width)
        label_values, _ = _parse_numbers(table, [col], "a class index")
        label_values = label_values[:, 0]
        label_where = f"{name} {_column_label(table, col)}"
        columns.remove(col)
        if not columns:
            raise InputError(f"{name}: the label column is the only column; no logits are left")
    logits, over = _parse_numbers(table, columns, "a logit")
    overflowed += over
    if overflowed:
        notes.append(
            f"{name}: {overflowed} cell(s) overflowed float64 when parsed (e.g. 1e400) and were "
            "read as +-inf"
        )
    return _TextLogits(logits, overflowed, label_values, label_where, table.lines)


def _text_labels(data: bytes, name: str, notes: list[str]) -> tuple[np.ndarray, list[int]]:
    """A text labels file: one label per line; a non-numeric first line is a header."""
    table = _read_table(data, name)
    notes.extend(table.notes)
    width = _check_rectangular(table)
    if width != 1:
        raise InputError(
            f"{name} line {table.lines[0]}: has {width} cells; a labels file holds one class "
            "index per line"
        )
    values, _ = _parse_numbers(table, [0], "a class index")
    return values[:, 0], table.lines


# --------------------------------------------------------------------------- labels


def _validate_labels(
    raw: np.ndarray,
    *,
    where: str,
    at: Callable[[int], str],
    n: int,
    c: int,
    logits_shape: tuple[int, ...],
    logits_name: str,
    ignore_index: int,
    notes: list[str],
) -> np.ndarray:
    """Labels as 1-D int64 of length ``n``: class indices in [0, c) or ``ignore_index``.

    ``at(i)`` names row ``i`` for messages ("row 7", "line 9").
    """
    lab = np.asarray(raw)
    _check_dtype(lab.dtype, where)
    if not lab.dtype.isnative:
        lab = lab.astype(lab.dtype.newbyteorder("="))
    lead = logits_shape[:-1]
    if lab.ndim == 0:
        if n != 1:
            raise InputError(f"{where}: is a single number; expected {n} labels (one per row)")
        lab = lab.reshape(1)
    elif lab.ndim >= 2 and lab.shape == lead:
        lab = lab.reshape(-1)
        shape = lead
        at = lambda i: f"index {tuple(int(k) for k in np.unravel_index(i, shape))}"  # noqa: E731
        notes.append(f"{where}: labels of shape {shape} flattened like the logits")
    elif lab.ndim >= 2 and (lab.shape == (n, c) or lab.shape == logits_shape):
        lab = _from_one_hot(lab.reshape(n, c), where, at, notes)
    elif lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
        notes.append(f"{where}: labels of shape {lab.shape[0], 1} read as one column")
    elif lab.ndim >= 2:
        raise InputError(
            f"{where}: labels of shape {lab.shape} do not fit logits of shape {logits_shape}; "
            f"expected {n} class indices, or one-hot rows of shape ({n}, {c})"
        )
    if lab.shape[0] != n:
        raise InputError(
            f"{where}: has {lab.shape[0]} labels but {logits_name} has {n} rows; expected one "
            "label per row"
        )
    if lab.dtype.kind == "b":
        lab = lab.astype(np.int64)
        notes.append(f"{where}: boolean labels read as classes 0 and 1")
    if lab.dtype.kind == "f":
        wide = lab.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(wide))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{where} {at(i)}: label {wide[i]} is not a class index")
        frac = np.flatnonzero(wide != np.round(wide))
        if frac.size:
            i = int(frac[0])
            raise InputError(f"{where} {at(i)}: label {wide[i]!r} is not a whole number")
        values: np.ndarray = wide
    else:
        values = lab
    # range check in the stored type (float or integer): casting an out-of-range float or a
    # uint64 above 2**63 to int64 first would wrap around
    ok = (values == ignore_index) | ((values >= 0) & (values < c))
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = int(bad[0])
        v = str(int(values[i])) if values.dtype.kind in "iu" else _label_text(values[i])
        if values[i] < 0:
            raise InputError(
                f"{where} {at(i)}: label {v} is negative and is not ignore_index "
                f"({ignore_index}); expected a class index in [0, {c})"
            )
        raise InputError(
            f"{where} {at(i)}: label {v} is outside [0, {c}) ({logits_name} has {c} classes)"
        )
    return values.astype(np.int64)


def _label_text(v: object) -> str:
    f = float(v)  # type: ignore[arg-type]
    return str(int(f)) if f.is_integer() else repr(f)


def _from_one_hot(
    m: np.ndarray, where: str, at: Callable[[int], str], notes: list[str]
) -> np.ndarray:
    """One-hot rows (a single 1, the rest 0) -> class indices; soft targets are refused."""
    w = m.astype(np.float64)
    if np.all((w == 0) | (w == 1)):
        ones = np.count_nonzero(w, axis=1)
        bad = np.flatnonzero(ones != 1)
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{where} {at(i)}: one-hot row has {int(ones[i])} ones; each row needs exactly "
                "one 1 (the class)"
            )
        notes.append(f"{where}: one-hot labels {m.shape} converted to class indices")
        return np.argmax(w, axis=1).astype(np.int64)
    if np.all(np.isfinite(w)) and np.all((w >= 0) & (w <= 1)):
        if np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-3):
            raise InputError(
                f"{where}: soft targets (probability rows) are not supported; pass class indices"
            )
    raise InputError(
        f"{where}: labels of shape {m.shape} are neither class indices nor one-hot rows "
        "(each row a single 1, the rest 0)"
    )


# --------------------------------------------------------------------------- load_input


def load_input(
    logits: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    *,
    logits_key: str | None = None,
    labels_key: str | None = None,
    label_column: str | int | None = None,
    ignore_index: int = -100,
    max_bytes: int = 8 * 2**30,
    stdin: BinaryIO | None = None,
) -> LoadedInput:
    """Read and validate logits (N, C) and optional integer labels from files.

    ``logits``/``labels`` are paths (``-`` reads stdin, from ``stdin`` or ``sys.stdin.buffer``);
    the format is sniffed from the bytes. In an ``.npz`` the arrays are ``logits`` and
    ``labels`` (or ``logits_key``/``labels_key``); when ``labels`` is not given, a ``labels``
    array in the logits ``.npz`` is used, else ``label_column`` of a text file, else there are
    no labels (``labels=None``, label-free mode). ``max_bytes`` bounds what is read into memory:
    text and stdin bytes and each decompressed ``.npz`` member (a ``.npy`` file is memory-mapped
    and has no limit).

    Raises :class:`InputError` naming the file and row/line/column for any bad data.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = p.write_text("a,b,label\\n1000,1,0\\n0,-800,1\\n")
    >>> got = load_input(p, label_column="label")
    >>> got.logits.tolist(), got.labels.tolist()
    ([[1000.0, 1.0], [0.0, -800.0]], [0, 1])
    >>> _ = p.write_text("1,2\\n3\\n")
    >>> load_input(p)
    Traceback (most recent call last):
    ...
    smcheck.errors.InputError: ...x.csv line 2: has 1 cells, expected 2 (as on line 1)
    """
    notes: list[str] = []
    if max_bytes <= 0:
        raise UsageError(f"max_bytes must be positive, got {max_bytes}")
    if labels is not None and label_column is not None:
        raise UsageError("give either a labels file or label_column, not both")
    if labels is not None and os.fspath(labels) == "-" and os.fspath(logits) == "-":
        raise UsageError("logits and labels cannot both be read from stdin ('-')")
    src = _open_source(logits, stdin, max_bytes, notes)
    name = src.name
    if logits_key is not None and src.kind != "npz":
        raise InputError(
            f"{name}: logits_key {logits_key!r} given but this is {_KIND_WORDS[src.kind]}, "
            "not an .npz"
        )
    if labels is None and labels_key is not None and src.kind != "npz":
        raise InputError(
            f"{name}: labels_key {labels_key!r} given but this is {_KIND_WORDS[src.kind]}, "
            "not an .npz (and no labels file was given)"
        )
    if label_column is not None and src.kind != "text":
        raise InputError(
            f"{name}: label_column applies to text input only; this is {_KIND_WORDS[src.kind]}"
        )

    raw_labels: np.ndarray | None = None
    labels_where: str | None = None
    labels_name: str | None = None
    at: Callable[[int], str] = lambda i: f"row {i}"  # noqa: E731 - arrays: 0-based numpy rows
    overflowed = 0

    if src.kind == "text":
        parsed = _text_logits(_file_bytes(src, max_bytes), name, label_column, notes)
        arr2d, overflowed = parsed.logits, parsed.overflowed
        original_shape = tuple(int(d) for d in arr2d.shape)
        nonfinite: int | None = int(arr2d.size - np.count_nonzero(np.isfinite(arr2d)))
        file_dtype = "text"
        if parsed.label_values is not None:
            raw_labels = parsed.label_values
            labels_where = labels_name = parsed.label_where
            text_lines = parsed.lines
            at = lambda i: f"line {text_lines[i]}"  # noqa: E731
    elif src.kind == "npy":
        arr = _array_from_source(src, max_bytes, mmap=True)
        arr2d, original_shape = _logits_from_array(arr, notes)
        nonfinite = None
        file_dtype = arr.stored.name
    elif src.kind == "zarr":
        zarr_logits, original_shape = _zarr_logits(src, notes)
        arr2d = cast(np.ndarray, zarr_logits)  # duck-typed: shape, dtype, rows; see LoadedInput
        nonfinite = None
        file_dtype = zarr_logits.stored.name
    else:
        npz = _Npz(src, max_bytes)
        try:
            key = _pick_logits_key(npz, logits_key, labels_key if labels is None else None, notes)
            arr = npz.read(key)
            arr2d, original_shape = _logits_from_array(arr, notes)
            nonfinite = None
            file_dtype = arr.stored.name
            lkey = labels_key or "labels"
            if lkey in npz.members and lkey != key:
                if labels is None:
                    got = npz.read(lkey)
                    raw_labels, labels_where = got.array, got.where
                    labels_name = got.where
                else:
                    notes.append(
                        f"{name}: its {lkey!r} array is ignored; labels come from "
                        f"{os.fspath(labels)}"
                    )
            elif labels_key is not None and labels is None:
                raise InputError(f"{name}: no array {labels_key!r}; it holds: {npz.keys_text()}")
        finally:
            npz.close()

    if labels is not None:
        raw_labels, labels_where, at = _load_labels_file(
            labels, labels_key, stdin, max_bytes, notes
        )
        labels_name = os.fspath(labels)

    n, c = int(arr2d.shape[0]), int(arr2d.shape[1])
    labels_out: np.ndarray | None = None
    if raw_labels is not None:
        assert labels_where is not None
        labels_out = _validate_labels(
            raw_labels,
            where=labels_where,
            at=at,
            n=n,
            c=c,
            logits_shape=original_shape,
            logits_name=name,
            ignore_index=ignore_index,
            notes=notes,
        )
    return LoadedInput(
        logits=arr2d,
        labels=labels_out,
        logits_name=os.fspath(logits),
        labels_name=labels_name,
        file_dtype=file_dtype,
        original_shape=original_shape,
        overflowed_cells=overflowed,
        notes=tuple(notes),
        counted_nonfinite=nonfinite,
    )


def _pick_logits_key(
    npz: _Npz, logits_key: str | None, labels_key: str | None, notes: list[str]
) -> str:
    """``logits_key``, else ``logits``, else the only array (besides the labels) - else refuse."""
    if logits_key is not None:
        if logits_key not in npz.members:
            raise InputError(f"{npz.name}: no array {logits_key!r}; it holds: {npz.keys_text()}")
        return logits_key
    if "logits" in npz.members:
        return "logits"
    others = [k for k in npz.members if k != (labels_key or "labels")]
    if len(others) == 1:
        notes.append(f"{npz.name}: its only array {others[0]!r} taken as the logits")
        return others[0]
    raise InputError(
        f"{npz.name}: no 'logits' array; it holds: {npz.keys_text()} (name one with logits_key)"
    )


def _load_labels_file(
    labels: str | os.PathLike[str],
    labels_key: str | None,
    stdin: BinaryIO | None,
    max_bytes: int,
    notes: list[str],
) -> tuple[np.ndarray, str, Callable[[int], str]]:
    """Raw labels from a .npy, .npz or text file, with the message names for them."""
    src = _open_source(labels, stdin, max_bytes, notes)
    name = src.name
    if labels_key is not None and src.kind != "npz":
        raise InputError(
            f"{name}: labels_key {labels_key!r} given but this is {_KIND_WORDS[src.kind]}, "
            "not an .npz"
        )
    if src.kind == "text":
        values, lines = _text_labels(_file_bytes(src, max_bytes), name, notes)
        return values, name, lambda i: f"line {lines[i]}"
    if src.kind == "npy":
        arr = _array_from_source(src, max_bytes, mmap=False)
        return arr.array, name, lambda i: f"row {i}"
    if src.kind == "zarr":  # one label per row: small enough to read whole
        assert src.path is not None
        try:
            values = np.asarray(_open_zarr_array(src.path, name)[...])
        except (InputError, UsageError):
            raise
        except Exception as exc:
            raise InputError(f"{name}: cannot read the zarr array ({_short(exc)})") from None
        return values, name, lambda i: f"row {i}"
    npz = _Npz(src, max_bytes)
    try:
        if labels_key is not None:
            key = labels_key
        elif "labels" in npz.members:
            key = "labels"
        elif len(npz.members) == 1:
            key = next(iter(npz.members))
        else:
            raise InputError(
                f"{name}: no 'labels' array and more than one candidate; it holds: "
                f"{npz.keys_text()} (name one with labels_key)"
            )
        if key not in npz.members:
            raise InputError(f"{name}: no array {key!r}; it holds: {npz.keys_text()}")
        got = npz.read(key)
    finally:
        npz.close()
    return got.array, got.where, lambda i: f"row {i}"
