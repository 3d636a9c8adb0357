"""Arrays of any shape read as numbers (compare's loss, gradient and weight files)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .common import DEFAULT_MAX_BYTES
from .npy import _array_from_source
from .npz import _Npz
from .sources import _KIND_WORDS, _file_bytes, _open_source, _Source
from .text import _text_logits
from .zarr_store import read_zarr_whole


@dataclass(frozen=True)
class LoadedValues:
    """An array read from a file: ``values`` as stored (float), and where it came from."""

    values: np.ndarray
    name: str  # "loss.npy" or "dump.npz['loss']"
    dtype: str  # stored dtype, or "text"


def load_values(
    path: str | os.PathLike[str],
    *,
    key: str | None,
    default_key: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dtype: str | None | bool = False,
) -> LoadedValues:
    """Read a float array of any shape (0-d included) from .npy, .npz, zarr or text.

    ``dtype``: the working dtype the user named (None: none named), for a ``.npy`` of raw
    2-byte (1-byte) values - bfloat16 (float8) saved with ml_dtypes - which is read as that
    type only when it is named, else refused saying so; False (the default): refused as any
    raw dtype.

    The same readers as :func:`~smcheck.loading.load_input`, with the same checks: the format
    is sniffed from the bytes; ``.npy`` is memory-mapped (blocks of rows read with positioned
    reads) and never unpickled; in an ``.npz`` the array is ``key``, else ``default_key``, else
    the only one, inflated only if its declared size is at most ``max_bytes``; text is one value
    per line, or a table. Integer and bool arrays are read as float64. Raises
    :class:`InputError` naming the file.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "loss.npy"
    >>> np.save(p, np.array([0.5, 2], dtype=np.float32))
    >>> got = load_values(p, key=None, default_key="loss")
    >>> got.values.tolist(), got.dtype
    ([0.5, 2.0], 'float32')
    >>> load_values(p, key="grad", default_key="loss")
    Traceback (most recent call last):
    ...
    smcheck.errors.InputError: ...loss.npy: key 'grad' given but this is a .npy array, not an .npz
    """
    notes: list[str] = []
    src = _open_source(path, None, max_bytes, notes)
    name = src.name
    if key is not None and src.kind != "npz":
        raise InputError(
            f"{name}: key {key!r} given but this is {_KIND_WORDS[src.kind]}, not an .npz"
        )
    if src.kind == "text":
        return LoadedValues(
            _text_logits(_file_bytes(src, max_bytes), name, None, [], label_names=False).logits,
            name,
            "text",
        )
    if src.kind == "npy":
        got = _array_from_source(src, max_bytes, mmap=True, raw_as=dtype)
        arr, where, stored = got.array, got.where, got.stored
    elif src.kind == "zarr":
        assert src.path is not None
        arr = read_zarr_whole(src.path, name, max_bytes)
        where, stored = name, arr.dtype
    else:
        arr, where, stored = _npz_member(src, key, default_key, max_bytes)
    if stored.kind != "f":  # integers and bools: exact in float64 up to 2**53
        arr = np.asarray(arr).astype(np.float64)
    return LoadedValues(arr, where, stored.name)


def _npz_member(
    src: _Source, key: str | None, default_key: str, max_bytes: int
) -> tuple[np.ndarray, str, np.dtype]:
    """``key``, else ``default_key``, else the only array of an .npz."""
    npz = _Npz(src, max_bytes)
    try:
        keys = list(npz.members)
        if key is not None:
            chosen = key
        elif default_key in keys:
            chosen = default_key
        elif len(keys) == 1:
            chosen = keys[0]
        else:
            raise InputError(
                f"{src.name}: no {default_key!r} array and more than one candidate; it holds: "
                f"{npz.keys_text()} (name one with --{default_key}-key)"
            )
        if chosen not in keys:
            raise InputError(f"{src.name}: no array {chosen!r}; it holds: {npz.keys_text()}")
        got = npz.read(chosen)
    finally:
        npz.close()
    return got.array, got.where, got.stored
