"""What every reader shares: magic numbers, limits, the dtype check and short messages."""

from __future__ import annotations

import struct
import zipfile
import zlib

import numpy as np

from ..errors import InputError, dims  # noqa: F401  (dims: re-exported for the readers)

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive
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
#: What is read into memory at most by default (``--max-bytes``): text and stdin bytes, one .npz
#: member or zarr chunk, the labels, one row's working memory.
DEFAULT_MAX_BYTES = 8 * 2**30
#: Working memory of one row, per class: the row in float64 and the reference's and methods'
#: temporaries. Measured with tracemalloc on evaluate() of one row of 2**21 classes, default
#: methods: 36 bytes labelled, 311 label-free (every class is a label: more per-class arrays).
ROW_BYTES_PER_CLASS = 40
ROW_BYTES_PER_CLASS_LABEL_FREE = 320
# rows of the logits looked at per step when counting inf/NaN in a memory-mapped array: keeps the
# temporary boolean mask near 16 MiB whatever N is
_CELLS_PER_CHUNK = 1 << 24
# integers above 2**53 are not all exactly representable in float64
_FLOAT64_EXACT_INT = 2**53


def _reason(exc: BaseException) -> str:
    """The human part of an OSError ("Permission denied"), else the exception text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _short(exc: BaseException) -> str:
    """One short line from an exception message (numpy's can be long and multi-line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


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
