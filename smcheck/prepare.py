"""The front door: logits and labels in, the working dtype, accumulation and checked labels out.

Every entry point (:func:`smcheck.cross_entropy`, :func:`smcheck.reference`, the analyses
:func:`~smcheck.evaluate`, :func:`~smcheck.gradcheck`, :func:`~smcheck.compare` and the
assertions of :mod:`smcheck.testing`) goes through here, so one array is accepted or refused
the same way everywhere. Two steps:

* :func:`check_input` - cheap, nothing rounded: shape (leading axes flattened to rows), the
  working dtype (named, else the array's own float dtype, bfloat16 and float8 included), the
  accumulation dtype, the cast mode and the labels. A memory-mapped ``.npy`` or a zarr store
  stays on disk (the streaming analyses round it a block of rows at a time);
* :func:`prepare_input` - :func:`check_input`, then the logits rounded to the working dtype and
  the loss options (class weights, label smoothing, soft targets) folded into coefficients:
  the :class:`Prepared` input both the methods and the reference read.

Why a method and the reference must share the rounded logits: the error reported is then the
method's alone; the input rounding's is in :attr:`Prepared.cast_report`.

>>> import numpy as np, ml_dtypes
>>> p = prepare_input(np.array([[2.0, 1.0, 0.1]], dtype=ml_dtypes.bfloat16), np.array([0]))
>>> p.working.name, p.accum.name, p.x.astype(np.float64).tolist()  # 0.1 -> 0.10009765625
('bfloat16', 'float32', [[2.0, 1.0, 0.10009765625]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .errors import InputError, UsageError, dims
from .precisions import (
    PRECISIONS,
    CastReport,
    Precision,
    cast_carrier,
    from_carrier,
    get_precision,
    resolve_accum,
    to_carrier,
)
from .variants import Variant, check_variant

__all__ = [
    "CASTS",
    "CheckedInput",
    "Prepared",
    "check_input",
    "check_labels",
    "file_dtype",
    "loss_coefficients",
    "prepare_input",
    "working_precision",
]

#: How logits are rounded to the working dtype: IEEE (overflow to inf) or clamped to +-max.
CASTS: tuple[str, ...] = ("ieee", "saturate")

DtypeLike = str | np.dtype | Precision


def working_precision(array_dtype: np.dtype, dtype: DtypeLike | None) -> Precision:
    """The working precision: ``dtype`` if named, else the array's own float dtype.

    ml_dtypes' bfloat16 and float8 arrays have numpy kind ``"V"`` and are floats all the same;
    an integer array has no precision of its own (UsageError: name one).

    >>> import ml_dtypes
    >>> working_precision(np.dtype(ml_dtypes.bfloat16), None).name
    'bfloat16'
    """
    if dtype is None and np.dtype(array_dtype).kind not in "fV":
        raise UsageError(f"logits of dtype {array_dtype}: name a working dtype")
    return get_precision(array_dtype if dtype is None else dtype)


def file_dtype(stored: str, dtype: str | None) -> tuple[str | None, bool]:
    """A command's working dtype for a file stored as ``stored`` (a dtype name, or "text").

    Returns ``(dtype, assumed)``: the dtype given; else None (the array's own float dtype, see
    :func:`working_precision`); else float32 for text and integer files, with ``assumed`` True.
    """
    if dtype is not None or stored in PRECISIONS:
        return dtype, False
    return "float32", True


_INT64_MAX = np.iinfo(np.int64).max


def class_indices(values: np.ndarray, c: int, ignore_index: int) -> tuple[np.ndarray, int | None]:
    """Labels as int64 and the first row that is neither a class in [0, c) nor ``ignore_index``
    (None when all are), range-checked in the stored dtype before any cast.

    The one checker behind :func:`check_labels` (the API) and the file loader. ``values`` is
    1-D: integers, booleans (classes 0 and 1), or whole finite floats (anything else raises
    :class:`InputError`). A cast first would wrap around: uint64 ``2**64 - 1`` becomes -1 (an
    ignored row when ``ignore_index=-1``), float ``1e30`` becomes -2**63 (with a RuntimeWarning).
    Values outside int64 are therefore bad before the cast, and ``ignore_index`` is compared
    with exact integers after it.

    >>> class_indices(np.array([2**64 - 1, 0], np.uint64), 3, -1)[1]
    0
    >>> class_indices(np.array([-1e30, 0.0]), 3, -2**63)[1]
    0
    """
    lab = np.asarray(values)
    if lab.dtype.kind == "b":
        lab = lab.astype(np.int64)
    if lab.dtype.kind == "u":
        fits = lab <= np.uint64(_INT64_MAX)
    elif lab.dtype.kind == "i":
        fits = np.ones(lab.shape, dtype=bool)
    elif lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise InputError(f"labels must be integers, got dtype {lab.dtype}")
        wide = lab.astype(np.float64)
        fits = (wide >= -(2.0**63)) & (wide < 2.0**63)  # both bounds exact in float64
    else:
        raise InputError(f"labels must be integers, got dtype {lab.dtype}")
    out = np.where(fits, lab, 0).astype(np.int64)
    ok = fits & ((out == ignore_index) | ((out >= 0) & (out < c)))
    bad = np.flatnonzero(~ok)
    return out, (int(bad[0]) if bad.size else None)


def label_text(value: Any) -> str:
    """A stored label as a message shows it: ``18446744073709551615``, ``1e+30``, ``3``."""
    if isinstance(value, (np.integer, np.bool_, int)):
        return str(int(value))
    f = float(value)
    return str(int(f)) if f.is_integer() and abs(f) < 2.0**63 else repr(f)


def check_labels(
    labels: Any, n: int, c: int, ignore_index: int = -100, row_offset: int = 0
) -> np.ndarray:
    """Class indices as int64, checked: shape (n,), integral, in [0, c) or ``ignore_index``.

    ``InputError`` names the first bad row (plus ``row_offset``, for a block of rows).

    >>> check_labels(np.array([0, 3]), 2, 3, row_offset=100)
    Traceback (most recent call last):
    ...
    smcheck.errors.InputError: row 101: label 3 is outside [0, 3) (and is not ignore_index -100)
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise InputError(f"labels have shape {dims(lab.shape)}, expected {n} (one per row)")
    out, row = class_indices(lab, c, ignore_index)
    if row is not None:
        raise InputError(
            f"row {row + row_offset}: label {label_text(lab[row])} is outside [0, {c})"
            f" (and is not ignore_index {ignore_index})"
        )
    return out


def _check_soft(labels: Any, n: int, c: int, row_offset: int) -> np.ndarray:
    """Soft targets (N, C) as float64: probabilities, finite and non-negative."""
    soft = np.asarray(labels, dtype=np.float64)
    if soft.shape != (n, c):
        raise InputError(f"soft targets have shape {dims(soft.shape)}, expected {n} x {c}")
    bad = ~np.isfinite(soft) | (soft < 0)
    if bad.any():
        row = int(np.argmax(bad.any(axis=1))) + row_offset
        raise InputError(f"row {row}: soft targets must be finite and non-negative")
    return soft


@dataclass(frozen=True)
class CheckedInput:
    """The input checked, nothing rounded yet: what every analysis decides before any work.

    ``x`` is (N, C): the array as given with its leading axes flattened (a memmap or a zarr
    store stays on disk). ``labels`` are int64 class indices (ignored rows keep
    ``ignore_index``), ``soft_targets`` (N, C) probabilities, or both None (label-free).
    """

    x: Any  # np.ndarray (maybe a memmap), or a ZarrLogits: shape, dtype, row slices
    labels: np.ndarray | None
    soft_targets: np.ndarray | None
    working: Precision
    accum: Precision
    cast: str
    ignore_index: int
    original_shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def classes(self) -> int:
        return int(self.x.shape[1])


def _as_rows(logits: Any, name: str | None) -> tuple[Any, tuple[int, ...]]:
    """(N, C) logits and the shape as given; leading axes are rows, one axis is one row."""
    where = f"{name}: " if name else ""
    if not isinstance(logits, np.ndarray) and hasattr(logits, "original_shape"):
        x: Any = logits  # a ZarrLogits: (N, C) already, its leading axes flattened lazily
        shape = tuple(int(s) for s in logits.original_shape)
    else:
        # np.asarray would read a memmap into memory: it stays mapped (a view, not a copy)
        x = logits if isinstance(logits, np.ndarray) else np.asarray(logits)
        shape = tuple(int(s) for s in x.shape)
        if x.ndim == 1:
            x = x[None, :]
        elif x.ndim > 2:
            x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(
            f"{where}logits must have a class axis of length >= 1, got shape {dims(x.shape)}"
        )
    return x, shape


def check_input(
    logits: Any,
    labels: Any = None,
    *,
    dtype: DtypeLike | None = None,
    accum: DtypeLike | None = None,
    cast: str = "ieee",
    ignore_index: int = -100,
    soft: bool = True,
    require_labels: bool = False,
    row_offset: int = 0,
    names: Sequence[str | None] = (None, None),
) -> CheckedInput:
    """Check logits (..., C) and labels without rounding anything (see the module docstring).

    ``labels`` are class indices (N,); with ``soft`` also soft targets (N, C). ``names`` (of
    the logits and the labels) prefix shape messages, ``row_offset`` is added to row numbers
    (a caller checking a block of rows). Raises :class:`InputError` (the data) or
    :class:`UsageError` (the arguments).

    >>> check_input(np.zeros((2, 3), np.int32))
    Traceback (most recent call last):
    ...
    smcheck.errors.UsageError: logits of dtype int32: name a working dtype
    """
    x, shape = _as_rows(logits, names[0])
    n, c = int(x.shape[0]), int(x.shape[1])
    working = working_precision(x.dtype, dtype)
    acc = resolve_accum(working, accum)
    if cast not in CASTS:
        raise UsageError(f"unknown cast mode {cast!r}; expected 'ieee' or 'saturate'")
    if labels is None and require_labels:
        raise UsageError("labels are required: one class index per row")
    lab = soft_t = None
    if labels is not None:
        if soft and np.ndim(labels) == 2:
            soft_t = _check_soft(labels, n, c, row_offset)
        else:
            try:
                lab = check_labels(labels, n, c, ignore_index, row_offset)
            except InputError as exc:
                raise InputError(f"{names[1]}: {exc}" if names[1] else str(exc)) from None
    return CheckedInput(x, lab, soft_t, working, acc, cast, ignore_index, shape)


@dataclass(frozen=True)
class Prepared:
    """Logits rounded to the working dtype, labels checked; shared by methods and reference.

    ``x`` is the logits in the working dtype; for 16/8-bit types the methods compute in float32
    (:attr:`xk`), and ``x`` is then made from that carrier on first use (its conversion to
    float16 is slow where values are subnormal, and the engine never needs it).
    """

    x_stored: np.ndarray | None  # (N, C) in the working dtype, or None: made from x_carrier
    labels: np.ndarray | None  # (N,) int64 as given (ignored rows keep ignore_index)
    safe_labels: np.ndarray | None  # ignored rows replaced by 0, for indexing
    ignored: np.ndarray  # (N,) bool
    finite_input: np.ndarray  # (N,) bool: every logit of the row is finite
    working: Precision
    cast_report: CastReport
    # Loss options folded into per-class coefficients (see :func:`loss_coefficients`); None for
    # the plain integer-label loss. Rounded once to the working dtype; the methods and the
    # reference both use these same values.
    coeff: np.ndarray | None = None
    weight: np.ndarray | None = None  # (C,) class weights as given (float64)
    label_smoothing: float = 0.0
    soft_targets: np.ndarray | None = None  # (N, C) probabilities as given (float64)
    # x in the working dtype's carrier (float32 for 16/8-bit types, the same values): what the
    # methods compute in; None means "convert x when asked"
    x_carrier: np.ndarray | None = None
    #: the accumulation precision named at the front door (the working dtype's default when
    #: none was: float32 for 16/8-bit types); None only for a Prepared built by hand
    accum: Precision | None = None
    #: the loss variant (logit scale, softcap, z-loss, smoothing convention), its constants
    #: rounded to the carrier (see :mod:`smcheck.variants`); None for the plain loss
    variant: Variant | None = None

    @cached_property
    def x(self) -> np.ndarray:
        """(N, C) logits in the working dtype."""
        if self.x_stored is not None:
            return self.x_stored
        assert self.x_carrier is not None
        return from_carrier(self.x_carrier, self.working)

    @property
    def xk(self) -> np.ndarray:
        """``x`` in the working dtype's carrier (see :attr:`Precision.carrier`)."""
        return to_carrier(self.x, self.working) if self.x_carrier is None else self.x_carrier

    @property
    def mean_denominator(self) -> float:
        """What ``reduction="mean"`` divides by, as PyTorch: the summed weight of the counted
        rows' labels (their count without weights); N for soft targets."""
        if self.soft_targets is not None:
            return float(self.x.shape[0])
        counted = ~self.ignored
        if self.labels is None:  # label-free: the mean over every (row, class) pair
            return float(np.count_nonzero(counted) * self.x.shape[1])
        if self.weight is None or self.safe_labels is None:
            return float(np.count_nonzero(counted))
        return math.fsum(self.weight[self.safe_labels[counted]])


def loss_coefficients(
    n: int,
    c: int,
    labels: np.ndarray | None,
    ignored: np.ndarray,
    weight: np.ndarray | None,
    label_smoothing: float,
    soft: np.ndarray | None,
    convention: str = "torch",
) -> np.ndarray:
    """Per-row, per-class coefficients c_ik with loss_i = sum_k c_ik (-log p_ik) (float64).

    Integer labels (PyTorch's CrossEntropyLoss): c = (1 - eps) w_y onehot(y) + (eps / C) w;
    soft targets t: c = w * ((1 - eps) t + eps / C); ignored rows: c = 0. The gradient is then
    dL_i/dz_ij = p_ij sum_k c_ik - c_ij. ``convention="megatron"`` spreads eps over the other
    C - 1 classes instead: c = w * ((1 - eps) onehot(y) + eps / (C - 1) (1 - onehot(y))), and
    for soft targets c = w * ((1 - eps) t + eps (1 - t) / (C - 1)) - both sum to 1 unweighted.
    """
    w = np.ones(c) if weight is None else weight
    if convention == "megatron":
        other = label_smoothing / (c - 1)
        if soft is not None:
            return w[None, :] * ((1 - label_smoothing) * soft + other * (1 - soft))
        assert labels is not None
        coeff = np.broadcast_to(other * w, (n, c)).copy()
        rows = np.arange(n)
        coeff[rows, labels] = (1 - label_smoothing) * w[labels]
        coeff[ignored] = 0
        return coeff
    if soft is not None:
        return w[None, :] * ((1 - label_smoothing) * soft + label_smoothing / c)
    assert labels is not None
    coeff = np.broadcast_to((label_smoothing / c) * w, (n, c)).copy()
    rows = np.arange(n)
    coeff[rows, labels] += (1 - label_smoothing) * w[labels]
    coeff[ignored] = 0
    return coeff


def _check_loss_options(
    weight: np.ndarray | None, label_smoothing: float, c: int
) -> np.ndarray | None:
    if not 0.0 <= label_smoothing <= 1.0:  # NaN fails both comparisons
        raise UsageError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if weight is None:
        return None
    w = np.asarray(weight, dtype=np.float64)
    if w.shape != (c,):
        raise InputError(f"weight must be {c} numbers (one per class), got shape {dims(w.shape)}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise InputError(f"weight[{k}] is {float(w[k])!r}: class weights must be finite and >= 0")
    return w


def prepare_input(
    logits: Any,
    labels: Any = None,
    *,
    dtype: DtypeLike | None = None,
    accum: DtypeLike | None = None,
    cast: str = "ieee",
    ignore_index: int = -100,
    weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    row_offset: int = 0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
) -> Prepared:
    """Round logits to the working dtype and validate labels (``InputError`` naming the row).

    ``labels`` are class indices (N,), or soft targets (N, C) of non-negative probabilities;
    ``weight`` (C,) and ``label_smoothing`` in [0, 1] are PyTorch's ``CrossEntropyLoss`` options.
    ``z_loss``, ``softcap``, ``logit_scale`` and ``smoothing_convention`` select a loss variant
    (:mod:`smcheck.variants`; validated here, the constants rounded to the carrier).
    ``row_offset`` is added to row numbers in messages (a caller working on a block of rows):

    >>> prepare_input(np.zeros((3, 4)), np.array([0, 9, 1]), row_offset=1000)
    Traceback (most recent call last):
    ...
    smcheck.errors.InputError: row 1001: label 9 is outside [0, 4) (and is not ignore_index -100)
    """
    ci = check_input(
        logits, labels, dtype=dtype, accum=accum, cast=cast, ignore_index=ignore_index,
        row_offset=row_offset,
    )  # fmt: skip
    # C order before anything is summed: numpy's sum over the last axis is pairwise only along
    # contiguous rows; a Fortran-ordered or strided view is summed sequentially (C - 1 roundings
    # in a row instead of ~log2 C), so one float32 audit of the same numbers would differ (fused
    # at C = 1000: 5.9 ulp instead of 0.9). A no-op (no copy) for a C-ordered array or memmap.
    xr, report, xk = cast_carrier(np.ascontiguousarray(ci.x), ci.working, cast, working_copy=False)
    n, c = xk.shape
    w = _check_loss_options(weight, label_smoothing, c)
    var: Variant | None = check_variant(
        z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
        smoothing_convention=smoothing_convention, classes=c,
    )  # fmt: skip
    assert var is not None
    var = var.rounded(ci.working.carrier) if var.active else None
    convention = "torch" if var is None else var.smoothing_convention
    lab, soft = ci.labels, ci.soft_targets
    if lab is None:
        ignored = np.zeros(n, dtype=bool)
        safe = None
    else:
        ignored = lab == ignore_index
        safe = np.where(ignored, 0, lab)
    finite = np.isfinite(xk).all(axis=1)
    coeff = None
    if soft is not None or w is not None or label_smoothing > 0:
        full = loss_coefficients(n, c, safe, ignored, w, label_smoothing, soft, convention)
        with np.errstate(over="ignore"):  # a weight beyond T's range is T's inf: a finding
            coeff = full.astype(ci.working.dtype)
    return Prepared(
        xr, lab, safe, ignored, finite, ci.working, report, coeff, w, label_smoothing, soft, xk,
        ci.accum, var,
    )  # fmt: skip
