"""A numeric array shaped into (N, C) logits, with a note for each conversion."""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..memmaps import release_pages
from .common import _CELLS_PER_CHUNK, _FLOAT64_EXACT_INT, dims
from .npy import _Array


def check_logits_shape(shape: tuple[int, ...], where: str) -> None:
    """InputError unless ``shape`` can hold logits: at least 1 axis, classes last, no empty axis
    (every reader's header-only check, before a byte of data is read)."""
    if not shape:
        raise InputError(
            f"{where}: is a single number (0-d array); expected logits of shape (N, C)"
        )
    if shape[-1] == 0:
        raise InputError(
            f"{where}: shape {dims(shape)} has 0 classes; expected logits of shape (N, C)"
        )
    if math.prod(shape) == 0:
        raise InputError(
            f"{where}: shape {dims(shape)} has 0 rows; expected logits of shape (N, C)"
        )


def _logits_from_array(arr: _Array, notes: list[str]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Shape an array into (N, C) logits; returns (logits, original shape)."""
    a = arr.array
    where = arr.where
    shape = tuple(int(d) for d in a.shape)
    check_logits_shape(shape, where)
    if not a.dtype.isnative:
        # the arithmetic downstream wants native floats; this reads the array into memory
        a = a.astype(a.dtype.newbyteorder("="))
        notes.append(f"{where}: big-endian {arr.stored.name} converted to native byte order")
    if a.dtype.kind in "iub":
        big = a.dtype.kind != "b" and a.dtype.itemsize >= 8 and _max_abs_int(a) > _FLOAT64_EXACT_INT
        a = a.astype(np.float64)
        notes.append(int_logits_note(where, arr.stored.name, big))
    if a.ndim == 1:
        a = a.reshape(1, -1)
        notes.append(
            f"{where}: 1-d array of {shape[0]} values read as one row of {shape[0]} classes"
        )
    elif a.ndim > 2:
        a = a.reshape(-1, shape[-1])
        notes.append(
            f"{where}: {dims(shape)} flattened to {a.shape[0]} rows of {shape[-1]} classes "
            "(classes on the last axis)"
        )
    return a, shape


def int_logits_note(where: str, stored: str, big: bool) -> str:
    """What happened to integer logits: read as float64 here, checked in the working dtype
    (float32 unless --dtype says otherwise) - not "converted to float64" beside "dtype float32"."""
    exact = "values above 2**53 rounded" if big else "exactly"
    return (
        f"{where}: {stored} logits read as floating point ({exact}); integer logits are "
        "checked in float32 unless --dtype says otherwise"
    )


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
