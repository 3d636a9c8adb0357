"""zarr array stores: metadata and codecs checked, chunks read a block of rows at a time."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from .common import (
    _CELLS_PER_CHUNK,
    _FLOAT64_EXACT_INT,
    DEFAULT_MAX_BYTES,
    _check_dtype,
    _short,
    dims,
)
from .logits import check_logits_shape, int_logits_note
from .npy import ShapeCheck
from .sources import _Source
from .zarr_guard import GuardedStore, check_store


def _zarr() -> ModuleType:
    """The zarr package, or a one-line UsageError naming the extra that installs it."""
    try:
        return importlib.import_module("zarr")
    except ImportError:
        raise UsageError(
            "reading a zarr store needs zarr: pip install 'smcheck-xent[zarr]'"
        ) from None


def _open_zarr_array(path: str, where: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """The zarr array at ``path``, opened read-only; InputError for a group or bad metadata.

    The metadata is checked against smcheck's allow-lists first (:func:`check_store`), and
    zarr reads through a :class:`GuardedStore`: no chunk is decoded before it is checked.
    """
    zarr = _zarr()
    facts = check_store(path, where, max_bytes)
    try:
        store = GuardedStore.open(path, where, facts, max_bytes)
        node = zarr.open(store=store, mode="r")
    except InputError:
        raise
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
    if facts is None:  # zarr found an array where the checks saw no array metadata
        raise InputError(f"{where}: not a readable zarr array (no zarr.json or .zarray)")
    return node


def read_zarr_whole(
    path: str, where: str, max_bytes: int, check_shape: ShapeCheck | None = None
) -> np.ndarray:
    """A whole (small) zarr array, e.g. labels: its declared shape and size are checked first."""
    arr = _open_zarr_array(path, where, max_bytes)
    if check_shape is not None:
        check_shape(where, tuple(int(d) for d in arr.shape))
    need = math.prod(int(d) for d in arr.shape) * np.dtype(arr.dtype).itemsize
    if need > max_bytes:
        raise InputError(
            f"{where}: declares {need} bytes of data, over the max_bytes limit of {max_bytes}; "
            "raise it with --max-bytes"
        )
    return _read_chunks(where, arr, lambda: np.asarray(arr[...]))


def _read_chunks(
    where: str,
    arr: Any,
    read: Callable[[], Any],
    box: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> Any:
    """``read()`` of ``arr``'s chunks, with any failure to read or decode a chunk as a one-line
    InputError.

    The chunks of ``box`` (first and last element index per axis; None: the whole array) are
    read and checked first, here: a link, FIFO or bomb raises before zarr starts its tasks,
    which an error inside one of them would leave pending ("Task was destroyed but it is
    pending!" at exit). A chunk refused inside zarr all the same (outside the box) is handed
    to zarr empty and reported as refused.
    """
    store = arr.store
    facts = getattr(store, "facts", None)
    keys: list[str] = []
    if facts is not None and all(d > 0 for d in facts.shape):
        if box is None:
            box = (tuple(0 for _ in facts.shape), tuple(d - 1 for d in facts.shape))
        keys = facts.chunk_keys(*box)
    try:
        if keys:
            store.precheck(keys)
        got = read()
    except (InputError, UsageError):
        raise
    except Exception as exc:  # a corrupt chunk: zarr/numcodecs raise many types
        refused = getattr(arr.store, "refused", None)
        if refused is not None:
            raise refused from None
        raise InputError(f"{where}: cannot read the zarr array ({_short(exc)})") from None
    finally:
        if keys:
            store.forget(keys)
    refused = getattr(arr.store, "refused", None)
    if refused is not None:  # never used: an empty chunk does not decode
        raise refused
    return got


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

    def __init__(
        self, path: str, where: str, array: Any = None, *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.path = path
        self.where = where
        self.max_bytes = max_bytes
        arr = _open_zarr_array(path, where, max_bytes) if array is None else array
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
            self._array = _open_zarr_array(self.path, self.where, self.max_bytes)
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
            block = _read_chunks(self.where, self.array, lambda: np.asarray(self.array[...]))
            block = block.reshape(1, -1)[lo:hi]
        else:
            parts = _read_chunks(
                self.where,
                self.array,
                lambda: _zarr_rows(self.array, (), lead, lo, hi),  # type: ignore[arg-type,return-value]
                _row_box(self.original_shape, lo, hi),
            )
            block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.rows_read += max(0, hi - lo)
        self.largest_read = max(self.largest_read, hi - lo)
        return block.reshape(max(0, hi - lo), self.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0 : self.shape[0]]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ZarrLogits({self.path!r}, shape={self.shape}, dtype={self.dtype})"


def _row_box(shape: tuple[int, ...], lo: int, hi: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First and last element index per axis of the box holding flattened rows [lo, hi).

    Rows are the leading axes flattened: once the first and last rows differ on an axis, the
    axes after it are spanned whole; the class axis is always whole.
    """
    lead = shape[:-1]
    first = [int(i) for i in np.unravel_index(lo, lead)]
    last = [int(i) for i in np.unravel_index(hi - 1, lead)]
    for k in range(len(lead)):
        if first[k] != last[k]:
            for j in range(k + 1, len(lead)):
                first[j], last[j] = 0, lead[j] - 1
            break
    return (*first, 0), (*last, shape[-1] - 1)


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


def _zarr_logits(
    src: _Source, max_bytes: int, notes: list[str]
) -> tuple[ZarrLogits, tuple[int, ...]]:
    """A zarr array store as lazy (N, C) logits, checked as a .npy array is."""
    assert src.path is not None
    where = src.name
    x = ZarrLogits(src.path, where, max_bytes=max_bytes)
    shape = x.original_shape
    if x.stored.kind in "OSTU":  # zarr's string arrays (variable-length: object or StringDType)
        raise InputError(
            f"{where}: dtype {x.stored} is not numeric; expected float16/32/64 (or integers)"
        )
    _check_dtype(x.stored, where)
    check_logits_shape(tuple(shape), where)
    if not x.stored.isnative:
        notes.append(f"{where}: big-endian {x.stored.name} converted to native byte order")
    if x.stored.kind in "iub":
        big = (
            x.stored.kind != "b"
            and x.stored.itemsize >= 8
            and _zarr_max_abs_int(x) > (_FLOAT64_EXACT_INT)
        )
        notes.append(int_logits_note(where, x.stored.name, big))
    if len(shape) == 1:
        notes.append(
            f"{where}: 1-d array of {shape[0]} values read as one row of {shape[0]} classes"
        )
    elif len(shape) > 2:
        notes.append(
            f"{where}: {dims(shape)} flattened to {x.shape[0]} rows of {shape[-1]} classes "
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
