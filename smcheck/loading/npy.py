"""``.npy`` arrays: the header checked against the file before a byte of data is read."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import InputError
from .common import _CORRUPT, _check_dtype, _reason, _short
from .sources import _Source


@dataclass
class _Array:
    """An array read from a container, with the name to use in messages."""

    array: np.ndarray
    where: str  # "logits.npy" or "data.npz['logits']"
    stored: np.dtype


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


def _array_from_source(src: _Source, max_bytes: int, *, mmap: bool) -> _Array:
    """A whole .npy source (a file: memory-mapped when ``mmap``; stdin/pipe bytes: in memory)."""
    if src.path is not None:
        return _npy_from_path(src.path, src.name, mmap=mmap)
    data = src.data or b""
    return _npy_from_stream(io.BytesIO(data), len(data), src.name, max_bytes)
