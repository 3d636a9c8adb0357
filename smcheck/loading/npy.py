"""``.npy`` arrays: the header checked against the file before a byte of data is read."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..errors import InputError
from .common import _CORRUPT, _check_dtype, _reason, _short, dims
from .sources import _Source

#: Called with (where, declared shape) before an array's data is read; raises InputError.
ShapeCheck = Callable[[str, tuple[int, ...]], None]


@dataclass
class _Array:
    """An array read from a container, with the name to use in messages."""

    array: np.ndarray
    where: str  # "logits.npy" or "data.npz['logits']"
    stored: np.dtype


#: The float dtypes numpy saves as raw bytes (``np.save`` of an ml_dtypes array writes descr
#: ``'<V2'`` or ``'|V1'``: numpy has no name for them), by width: what ``--dtype`` may read them as.
RAW_FLOATS: dict[int, tuple[str, ...]] = {
    2: ("bfloat16",),
    1: ("float8_e4m3fn", "float8_e5m2"),
}


def _raw_float(dtype: np.dtype, raw_as: str | None, where: str) -> np.dtype:
    """The float dtype a raw 1- or 2-byte .npy is read as: the working dtype the user named,
    when it is one of :data:`RAW_FLOATS` of that width - never a guess, since two bytes could
    as well be float16 bits or anything else.

    >>> _raw_float(np.dtype("V2"), "bf16", "h.npy").name
    'bfloat16'
    >>> _raw_float(np.dtype("V2"), None, "h.npy")
    Traceback (most recent call last):
    ...
    smcheck.errors.InputError: h.npy: a 2-byte raw dtype (bfloat16 ...): pass --dtype bfloat16 ...
    """
    names = RAW_FLOATS[dtype.itemsize]
    if raw_as is not None:
        from ..errors import UsageError
        from ..precisions import get_precision

        try:
            named = get_precision(raw_as)
        except UsageError:
            named = None  # an unknown --dtype is its own usage error, reported by its checker
        if named is not None and named.name in names:
            return np.dtype(named.dtype)
    what = "bfloat16" if dtype.itemsize == 2 else "float8"
    flags = " or ".join(f"--dtype {n}" for n in names)
    raise InputError(
        f"{where}: a {dtype.itemsize}-byte raw dtype ({what} saved with ml_dtypes?): pass {flags}"
        f" (numpy reads it as void {dtype.str}; or save it .astype(np.float32), which is exact)"
    )


def _read_npy_header(
    fp: BinaryIO, where: str, raw_as: str | None | bool = False
) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header with numpy's own parser (a literal, never code), as InputError.

    ``raw_as``: where the caller knows the working dtype the user named (a name, or None when
    none was named), a raw 1- or 2-byte void array is read as that float type
    (:func:`_raw_float`); ``False`` (labels, say): refused as any void dtype is."""
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
        raise InputError(f"{where}: bad .npy header: negative dimension in shape {dims(shape)}")
    plain_void = dtype.kind == "V" and dtype.fields is None and dtype.subdtype is None
    if raw_as is not False and plain_void and dtype.itemsize in RAW_FLOATS:
        assert raw_as is not True
        dtype = _raw_float(dtype, raw_as, where)  # allow-listed: no _check_dtype
    else:
        _check_dtype(dtype, where)
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize  # Python ints: a lying header cannot overflow this


def _truncated(where: str, shape: tuple[int, ...], dtype: np.dtype, have: int) -> InputError:
    return InputError(
        f"{where}: truncated: the header declares {dtype.name} shape {dims(shape)} "
        f"({_data_bytes(shape, dtype)} bytes of data) but only {max(have, 0)} bytes follow it"
    )


def _npy_from_path(
    path: str,
    where: str,
    *,
    mmap: bool,
    max_bytes: int,
    check_shape: ShapeCheck | None = None,
    raw_as: str | None | bool = False,
) -> _Array:
    """A .npy file, memory-mapped read-only when ``mmap`` (after checking the header and size);
    read whole (at most ``max_bytes`` of data) otherwise. ``raw_as``: see
    :func:`_read_npy_header`."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_npy_header(f, where, raw_as)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {_reason(exc)}") from None
    if check_shape is not None:
        check_shape(where, shape)
    if _data_bytes(shape, dtype) > size - offset:
        raise _truncated(where, shape, dtype, size - offset)
    if not mmap and _data_bytes(shape, dtype) > max_bytes:
        # labels are read whole: a header may claim gigabytes that a sparse file "holds"
        raise InputError(
            f"{where}: the header declares {_data_bytes(shape, dtype)} bytes of data, over the "
            f"max_bytes limit of {max_bytes}; raise it with --max-bytes"
        )
    try:
        if mmap and math.prod(shape) > 0:  # mmap cannot map zero bytes
            arr: np.ndarray = NpyRows.open(path, where, shape, fortran, dtype, offset)
        else:
            arr = np.load(path, allow_pickle=False)
            if arr.dtype != dtype:  # a raw void array read as the float type named
                arr = arr.view(dtype)
    except _CORRUPT as exc:
        raise InputError(f"{where}: cannot read the array ({_short(exc)})") from None
    return _Array(arr, where, dtype)


def _npy_from_stream(
    fp: BinaryIO,
    available: int,
    where: str,
    max_bytes: int,
    check_shape: ShapeCheck | None = None,
    raw_as: str | None | bool = False,
) -> _Array:
    """A .npy held in a stream of ``available`` bytes (stdin, a pipe, an .npz member)."""
    shape, fortran, dtype = _read_npy_header(fp, where, raw_as)
    if check_shape is not None:
        check_shape(where, shape)
    have = available - fp.tell()
    need = _data_bytes(shape, dtype)
    if need > max_bytes:
        raise InputError(
            f"{where}: the header declares {need} bytes of data, over the max_bytes limit of "
            f"{max_bytes}; raise it with --max-bytes"
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


def _array_from_source(
    src: _Source,
    max_bytes: int,
    *,
    mmap: bool,
    check_shape: ShapeCheck | None = None,
    raw_as: str | None | bool = False,
) -> _Array:
    """A whole .npy source (a file: memory-mapped when ``mmap``; stdin/pipe bytes: in memory).
    ``raw_as``: see :func:`_read_npy_header`."""
    if src.path is not None:
        return _npy_from_path(
            src.path, src.name, mmap=mmap, max_bytes=max_bytes, check_shape=check_shape,
            raw_as=raw_as,
        )  # fmt: skip
    data = src.data or b""
    return _npy_from_stream(io.BytesIO(data), len(data), src.name, max_bytes, check_shape, raw_as)


class NpyRows(np.memmap):
    """A read-only memory map of a ``.npy`` file whose blocks of rows are read with ``pread``.

    Touching a page of a memory map past the end of a file that shrank since it was mapped
    kills the process with SIGBUS ("Bus error"), which Python cannot catch. The engines read
    their logits as ``x[a:b]`` row blocks: here such a block (and ``x[i]``) is read with a
    positioned read into a fresh array, so a truncated file gives a short read and an
    :class:`InputError` ("x.npy: changed while it was being read"), exit 2. Any other index
    first checks that the file is still the one mapped and long enough, then reads through the
    map. Everything else is an ``np.memmap`` (``filename``, ``offset``, ``_mmap``; the Dask
    engine and ``release_pages`` rely on them).

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(p, np.arange(12.0).reshape(4, 3))
    >>> x = NpyRows.open(p, "x.npy", (4, 3), False, np.dtype("<f8"), 128)
    >>> x[1:3].tolist()
    [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    >>> os.truncate(p, 128 + 24)
    >>> x[1:3]
    Traceback (most recent call last):
    ...
    smcheck.errors.InputError: x.npy: changed while it was being read (it now holds 152 bytes, ...
    """

    _reader: _RowReader | None = None

    @classmethod
    def open(
        cls,
        path: str,
        where: str,
        shape: tuple[int, ...],
        fortran: bool,
        dtype: np.dtype,
        offset: int,
    ) -> NpyRows:
        """Map ``path`` (header already checked) and attach the reader of its rows."""
        order = "F" if fortran else "C"
        arr = cls(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)  # type: ignore[call-overload]
        st = os.stat(path)
        arr._reader = _RowReader(
            path, where, offset, arr.nbytes, st.st_dev, st.st_ino, _address(arr)
        )
        return arr

    def __array_finalize__(self, obj: object) -> None:
        super().__array_finalize__(obj)
        reader = getattr(obj, "_reader", None)
        # a reshape of the whole map keeps the reader; a slice or a computed array does not
        whole = (
            reader is not None and getattr(self, "_mmap", None) is not None and reader.covers(self)
        )
        self._reader = reader if whole else None

    def __array_wrap__(
        self, arr: np.ndarray, context: Any = None, return_scalar: bool = False
    ) -> Any:
        # what np.memmap does for itself: a ufunc's result is a plain array (or a scalar)
        arr = np.ndarray.__array_wrap__(self, arr, context, return_scalar)
        if self is arr:
            return arr
        return arr[()] if return_scalar else arr.view(np.ndarray)

    def __getitem__(self, index: Any) -> Any:
        reader = self._reader
        if reader is not None and self.ndim >= 1:
            n = self.shape[0]
            if isinstance(index, slice) and index.step in (None, 1) and self.flags.c_contiguous:
                lo, hi, _ = index.indices(n)
                return reader.rows(self, lo, max(lo, hi))
            if isinstance(index, int | np.integer) and not isinstance(index, bool):
                i = int(index) + (n if int(index) < 0 else 0)
                if 0 <= i < n and self.flags.c_contiguous:
                    return reader.rows(self, i, i + 1)[0]
            reader.check()  # anything else reads through the map: the file must still fit
        res = super().__getitem__(index)
        if isinstance(res, NpyRows) and getattr(res, "_mmap", None) is None:
            return res.view(np.ndarray)
        return res


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


@dataclass(frozen=True)
class _RowReader:
    """Where a mapped array's bytes are in its file, and which file that is."""

    path: str
    where: str
    offset: int
    nbytes: int
    dev: int
    ino: int
    address: int

    def covers(self, a: np.ndarray) -> bool:
        """Whether ``a`` is the whole mapped array (maybe reshaped), not a part of it."""
        return _address(a) == self.address and a.nbytes == self.nbytes

    def check(self) -> int:
        """An open descriptor of the file, after checking it is the one mapped and long enough."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise self._changed(f"it cannot be opened: {_reason(exc)}") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            os.close(fd)
            raise self._changed("it was replaced by another file")
        if st.st_size < self.offset + self.nbytes:
            os.close(fd)
            raise self._changed(
                f"it now holds {st.st_size} bytes, {self.offset + self.nbytes} expected"
            )
        return fd

    def rows(self, a: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the C-ordered ``a``, read from the file into a new array."""
        out = np.empty((hi - lo, *a.shape[1:]), dtype=a.dtype)
        if out.nbytes == 0:
            return out
        row_bytes = out.nbytes // (hi - lo)
        fd = self.check()
        try:
            # through a uint8 view: the buffer protocol has no code for ml_dtypes' bfloat16
            view = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            done = 0
            start = self.offset + lo * row_bytes
            while done < out.nbytes:
                got = os.preadv(fd, [view[done:]], start + done)
                if got == 0:  # end of file before the rows' end: it shrank since check()
                    size = os.fstat(fd).st_size
                    raise self._changed(
                        f"it now holds {size} bytes, {self.offset + self.nbytes} expected"
                    )
                done += got
        except OSError as exc:
            raise self._changed(f"reading failed: {_reason(exc)}") from None
        finally:
            os.close(fd)
        return out

    def _changed(self, how: str) -> InputError:
        return InputError(f"{self.where}: changed while it was being read ({how})")
