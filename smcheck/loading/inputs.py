"""``load_input``: files -> validated (logits, labels), the one entry point of loading."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, cast

import numpy as np

from ..errors import InputError, UsageError
from .common import DEFAULT_MAX_BYTES, ROW_BYTES_PER_CLASS, ROW_BYTES_PER_CLASS_LABEL_FREE
from .labels import LabelFit, RawLabels, _load_labels_file, _validate_labels
from .logits import _count_nonfinite, _logits_from_array
from .npy import _array_from_source
from .npz import _Npz
from .sources import _KIND_WORDS, _file_bytes, _open_source, _Source
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
    max_bytes: int = DEFAULT_MAX_BYTES,
    stdin: BinaryIO | None = None,
    raw_as: str | None | bool = False,
) -> LoadedInput:
    """Read and validate logits (N, C) and optional integer labels from files.

    ``logits``/``labels`` are paths (``-`` reads stdin, from ``stdin`` or ``sys.stdin.buffer``);
    the format is sniffed from the bytes. In an ``.npz`` the arrays are ``logits`` and
    ``labels`` (or ``logits_key``/``labels_key``); when ``labels`` is not given, a ``labels``
    array in the logits ``.npz`` is used, else ``label_column`` of a text file, else there are
    no labels (``labels=None``, label-free mode). ``max_bytes`` bounds what is read into memory:
    text and stdin bytes, each decompressed ``.npz`` member or zarr chunk, the labels, and the
    working memory of one row of logits (a ``.npy`` file is read a block of rows at a time and
    has no size limit). ``raw_as``: the working dtype the user named (None: none), for a
    ``.npy`` of raw 2-byte values (bfloat16 saved with ml_dtypes), read as bfloat16 only when
    that is named; False (the default): refused as any raw dtype.

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
    _check_options(logits, labels, label_column, max_bytes)
    src = _open_source(logits, stdin, max_bytes, notes)
    _check_keys_fit(src, labels, logits_key, labels_key, label_column)
    own_labels_key = labels_key if labels is None else None
    if src.kind == "text":
        got = _read_text(src, label_column, max_bytes, notes)
    elif src.kind == "npy":
        got = _read_npy(src, max_bytes, notes, raw_as)
    elif src.kind == "zarr":
        got = _read_zarr(src, max_bytes, notes)
    else:
        got = _read_npz(src, logits_key, own_labels_key, labels, max_bytes, notes)
    n, c = int(got.logits.shape[0]), int(got.logits.shape[1])
    raw = got.labels
    label_free = raw is None and labels is None
    _check_row_fits(src.name, c, label_free, max_bytes)
    if labels is not None:
        fit = LabelFit(n, c, got.original_shape, src.name)
        raw = _load_labels_file(labels, labels_key, stdin, max_bytes, notes, fit)
    labels_out: np.ndarray | None = None
    if raw is not None:
        labels_out = _validate_labels(
            raw.values,
            where=raw.where,
            at=raw.at,
            n=n,
            c=c,
            logits_shape=got.original_shape,
            logits_name=src.name,
            ignore_index=ignore_index,
            notes=notes,
        )
    return LoadedInput(
        logits=got.logits,
        labels=labels_out,
        logits_name=os.fspath(logits),
        labels_name=None if raw is None else raw.name,
        file_dtype=got.file_dtype,
        original_shape=got.original_shape,
        overflowed_cells=got.overflowed,
        notes=tuple(notes),
        counted_nonfinite=got.nonfinite,
    )


@dataclass
class _ReadLogits:
    """What one format's reader gives: (N, C) logits and the facts the report needs."""

    logits: np.ndarray
    original_shape: tuple[int, ...]
    file_dtype: str
    nonfinite: int | None = None  # counted while parsing text; None: counted on first use
    overflowed: int = 0
    labels: RawLabels | None = None  # labels found beside the logits (.npz array, text column)


def _check_options(
    logits: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None,
    label_column: str | int | None,
    max_bytes: int,
) -> None:
    """Refuse option combinations before any file is opened."""
    if max_bytes <= 0:
        raise UsageError(f"--max-bytes must be positive, got {max_bytes}")
    if labels is not None and label_column is not None:
        raise UsageError("give either --labels or --label-column, not both")
    if labels is not None and os.fspath(labels) == "-" and os.fspath(logits) == "-":
        raise UsageError("logits and labels cannot both be read from stdin ('-')")


def _check_keys_fit(
    src: _Source,
    labels: str | os.PathLike[str] | None,
    logits_key: str | None,
    labels_key: str | None,
    label_column: str | int | None,
) -> None:
    """Array keys apply to an .npz, a label column to text: refuse them for another format."""
    name, kind = src.name, src.kind
    if logits_key is not None and kind != "npz":
        raise InputError(
            f"{name}: --logits-key {logits_key!r} given but this is {_KIND_WORDS[kind]}, "
            "not an .npz"
        )
    if labels is None and labels_key is not None and kind != "npz":
        raise InputError(
            f"{name}: --labels-key {labels_key!r} given but this is {_KIND_WORDS[kind]}, "
            "not an .npz (and no labels file was given)"
        )
    if label_column is not None and kind != "text":
        raise InputError(
            f"{name}: --label-column applies to text input only; this is {_KIND_WORDS[kind]}"
        )


def _check_row_fits(name: str, classes: int, label_free: bool, max_bytes: int) -> None:
    """Refuse logits whose single row cannot be worked on within ``max_bytes``.

    The engine works on at least one whole row at a time: its C logits in float64 and the
    reference's and methods' temporaries, ``ROW_BYTES_PER_CLASS`` bytes per class (eight times
    that label-free). One row of 2**29 classes needs ~20 GiB with labels: refused here, before
    the engine's MemoryError.
    """
    per_class = ROW_BYTES_PER_CLASS_LABEL_FREE if label_free else ROW_BYTES_PER_CLASS
    need = classes * per_class
    if need > max_bytes:
        raise InputError(
            f"{name}: one row of {classes} classes needs about {need} bytes of working memory, "
            f"over the max_bytes limit of {max_bytes}; raise it with --max-bytes if this "
            "machine has the memory"
        )


def _read_text(
    src: _Source, label_column: str | int | None, max_bytes: int, notes: list[str]
) -> _ReadLogits:
    parsed = _text_logits(_file_bytes(src, max_bytes), src.name, label_column, notes)
    arr2d = parsed.logits
    raw: RawLabels | None = None
    if parsed.label_values is not None:
        assert parsed.label_where is not None
        lines = parsed.lines
        raw = RawLabels(
            parsed.label_values, parsed.label_where, lambda i: f"line {lines[i]}",
            parsed.label_where,
        )  # fmt: skip
    return _ReadLogits(
        arr2d,
        tuple(int(d) for d in arr2d.shape),
        "text",
        nonfinite=int(arr2d.size - np.count_nonzero(np.isfinite(arr2d))),
        overflowed=parsed.overflowed,
        labels=raw,
    )


def _read_npy(
    src: _Source, max_bytes: int, notes: list[str], raw_as: str | None | bool = False
) -> _ReadLogits:
    arr = _array_from_source(src, max_bytes, mmap=True, raw_as=raw_as)
    arr2d, original_shape = _logits_from_array(arr, notes)
    return _ReadLogits(arr2d, original_shape, arr.stored.name)


def _read_zarr(src: _Source, max_bytes: int, notes: list[str]) -> _ReadLogits:
    zarr_logits, original_shape = _zarr_logits(src, max_bytes, notes)
    # duck-typed: shape, dtype and row slices, which is all the engines use; see LoadedInput
    return _ReadLogits(cast(np.ndarray, zarr_logits), original_shape, zarr_logits.stored.name)


def _read_npz(
    src: _Source,
    logits_key: str | None,
    labels_key: str | None,
    labels: str | os.PathLike[str] | None,
    max_bytes: int,
    notes: list[str],
) -> _ReadLogits:
    """The logits array of an .npz, and its labels array unless a labels file is given."""
    npz = _Npz(src, max_bytes)
    try:
        key = _pick_logits_key(npz, logits_key, labels_key, notes)
        arr = npz.read(key)
        arr2d, original_shape = _logits_from_array(arr, notes)
        raw: RawLabels | None = None
        lkey = labels_key or "labels"
        if lkey in npz.members and lkey != key:
            if labels is None:
                fit = LabelFit(int(arr2d.shape[0]), int(arr2d.shape[1]), original_shape, src.name)
                got = npz.read(lkey, fit.check_shape)
                raw = RawLabels(got.array, got.where, lambda i: f"row {i}", got.where)
            else:
                notes.append(
                    f"{src.name}: its {lkey!r} array is ignored; labels come from "
                    f"{os.fspath(labels)}"
                )
        elif labels_key is not None:
            raise InputError(f"{src.name}: no array {labels_key!r}; it holds: {npz.keys_text()}")
    finally:
        npz.close()
    return _ReadLogits(arr2d, original_shape, arr.stored.name, labels=raw)


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
        f"{npz.name}: no 'logits' array; it holds: {npz.keys_text()} (name one with --logits-key)"
    )
