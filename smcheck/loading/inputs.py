"""``load_input``: files -> validated (logits, labels), the one entry point of loading."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, cast

import numpy as np

from ..errors import InputError, UsageError
from .labels import _load_labels_file, _validate_labels
from .logits import _count_nonfinite, _logits_from_array
from .npy import _array_from_source
from .npz import _Npz
from .sources import _KIND_WORDS, _file_bytes, _open_source
from .text import _text_logits
from .zarr_store import _zarr_logits


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
