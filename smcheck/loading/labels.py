"""Labels from any format, validated as class indices of the logits (or one-hot rows)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import InputError
from ..prepare import class_indices, label_text
from .common import _check_dtype, dims
from .npy import _array_from_source
from .npz import _Npz
from .sources import _KIND_WORDS, _file_bytes, _open_source
from .text import _text_labels
from .zarr_store import read_zarr_whole


@dataclass(frozen=True)
class RawLabels:
    """Labels as read, before validation: where they came from and how to name a row."""

    values: np.ndarray
    where: str  # "labels.npy", "data.npz['labels']", "x.csv column 3 ('label')"
    at: Callable[[int], str]  # row i as messages name it: "row 7" (arrays), "line 9" (text)
    name: str  # the labels' name in the report


@dataclass(frozen=True)
class LabelFit:
    """The logits the labels must fit: checked on a header's shape before its data is read."""

    n: int
    c: int
    logits_shape: tuple[int, ...]
    logits_name: str

    def check_shape(self, where: str, shape: tuple[int, ...]) -> None:
        """Refuse a labels shape that fits no form :func:`_validate_labels` accepts.

        A header can claim 750 million labels for a 4-row input (6 GB that a sparse file
        "holds"): refused from the header, with the message the data would have got.
        """
        n, c, logits_shape = self.n, self.c, self.logits_shape
        if len(shape) == 0:
            if n != 1:
                raise InputError(f"{where}: is a single number; expected {n} labels (one per row)")
            return
        fits = shape in (logits_shape[:-1], (n, c), logits_shape)
        if len(shape) >= 2 and not fits and not (len(shape) == 2 and shape[1] == 1):
            raise InputError(
                f"{where}: labels of shape {dims(shape)} do not fit logits of shape "
                f"{dims(logits_shape)}; expected {n} class indices, or one-hot rows of shape "
                f"{n} x {c}"
            )
        if not fits and shape[0] != n:
            raise InputError(
                f"{where}: has {shape[0]} labels but {self.logits_name} has {n} rows; expected "
                "one label per row"
            )


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
    LabelFit(n, c, logits_shape, logits_name).check_shape(where, lab.shape)
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
        at = lambda i: f"index [{', '.join(str(int(k)) for k in np.unravel_index(i, shape))}]"  # noqa: E731
        notes.append(f"{where}: labels of shape {dims(shape)} flattened like the logits")
    elif lab.ndim >= 2 and (lab.shape == (n, c) or lab.shape == logits_shape):
        lab = _from_one_hot(lab.reshape(n, c), where, at, notes)
    elif lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
        notes.append(f"{where}: labels of shape {lab.shape[0]} x 1 read as one column")
    elif lab.ndim >= 2:
        raise InputError(
            f"{where}: labels of shape {dims(lab.shape)} do not fit logits of shape "
            f"{dims(logits_shape)}; expected {n} class indices, or one-hot rows of shape "
            f"{n} x {c}"
        )
    if lab.shape[0] != n:
        raise InputError(
            f"{where}: has {lab.shape[0]} labels but {logits_name} has {n} rows; expected one "
            "label per row"
        )
    if lab.dtype.kind == "b":
        notes.append(f"{where}: boolean labels read as classes 0 and 1")
    if lab.dtype.kind == "f":
        wide = lab.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(wide))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{where} {at(i)}: label {float(wide[i])} is not a class index")
        frac = np.flatnonzero(wide != np.round(wide))
        if frac.size:
            i = int(frac[0])
            raise InputError(f"{where} {at(i)}: label {float(wide[i])!r} is not a whole number")
        lab = wide
    # the checker the API uses too: range-checked in the stored type, no wraparound
    out, first = class_indices(lab, c, ignore_index)
    if first is not None:
        i = first
        v = label_text(lab[i])
        if lab[i] < 0:
            raise InputError(
                f"{where} {at(i)}: label {v} is negative and is not the --ignore-index "
                f"value ({ignore_index}); expected a class index in [0, {c})"
            )
        raise InputError(
            f"{where} {at(i)}: label {v} is outside [0, {c}) ({logits_name} has {c} classes)"
        )
    return out


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
        notes.append(f"{where}: one-hot labels ({dims(m.shape)}) converted to class indices")
        return np.argmax(w, axis=1).astype(np.int64)
    if np.all(np.isfinite(w)) and np.all((w >= 0) & (w <= 1)):
        if np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-3):
            raise InputError(
                f"{where}: soft targets (probability rows) are not supported; pass class indices"
            )
    raise InputError(
        f"{where}: labels of shape {dims(m.shape)} are neither class indices nor one-hot rows "
        "(each row a single 1, the rest 0)"
    )


def _load_labels_file(
    labels: str | os.PathLike[str],
    labels_key: str | None,
    stdin: BinaryIO | None,
    max_bytes: int,
    notes: list[str],
    fit: LabelFit,
) -> RawLabels:
    """Raw labels from a .npy, .npz, zarr or text file, with the message names for them.

    An array's declared shape is checked against ``fit`` before its data is read.
    """
    src = _open_source(labels, stdin, max_bytes, notes)
    name = src.name
    if labels_key is not None and src.kind != "npz":
        raise InputError(
            f"{name}: --labels-key {labels_key!r} given but this is {_KIND_WORDS[src.kind]}, "
            "not an .npz"
        )
    if src.kind == "text":
        values, lines = _text_labels(_file_bytes(src, max_bytes), name, notes)
        return RawLabels(values, name, lambda i: f"line {lines[i]}", os.fspath(labels))
    if src.kind == "npy":
        arr = _array_from_source(src, max_bytes, mmap=False, check_shape=fit.check_shape)
        return RawLabels(arr.array, name, _row, os.fspath(labels))
    if src.kind == "zarr":  # one label per row: small enough to read whole, within max_bytes
        assert src.path is not None
        values = read_zarr_whole(src.path, name, max_bytes, fit.check_shape)
        return RawLabels(values, name, _row, os.fspath(labels))
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
                f"{npz.keys_text()} (name one with --labels-key)"
            )
        if key not in npz.members:
            raise InputError(f"{name}: no array {key!r}; it holds: {npz.keys_text()}")
        got = npz.read(key, fit.check_shape)
    finally:
        npz.close()
    return RawLabels(got.array, got.where, _row, os.fspath(labels))


def _row(i: int) -> str:
    """Row ``i`` of an array, as messages name it: 0-based, as numpy indexes it."""
    return f"row {i}"
