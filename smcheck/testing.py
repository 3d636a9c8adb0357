"""Assertions for your own test suite: is a loss stable, does a kernel match the reference?

Two functions, both raising :class:`AssertionError` with a short report (which check failed,
in how many rows, and the worst rows with their index, label, max logit, value, reference and
error) so a failing pytest run says what is wrong without a debugger:

* :func:`assert_stable` runs smcheck's own formulations (``fused`` by default) in the dtype you
  name and checks them against the high-precision reference;
* :func:`assert_matches_reference` checks *your* loss (and gradient) - the output of a CUDA,
  Triton or JAX kernel, converted to a numpy array - against the reference of the same logits
  rounded to the working dtype.

Three checks, in this order, per method (or for your kernel):

* **non-finite** - the loss or gradient is NaN/inf where the reference is finite (or finite
  where the reference loss is +inf: a label on a masked ``-inf`` logit); for smcheck's methods
  also a row where an intermediate overflowed. Rows whose input holds NaN or +inf have no
  defined answer and are skipped, as are rows labelled ``ignore_index``.
* **loss** - ``|L - L*|`` in ulps of ``max(|L*|, 1)`` of the working dtype above ``max_loss_ulp``
  (the unit of ``smcheck eval --max-loss-ulp``, :func:`smcheck.metrics.loss_gate_err`). Below 1
  the error is absolute: a confident row's loss of 1e-20 that rounds to 0 costs training
  nothing, and its relative error is not a defect of the kernel.
* **grad** - ``max_j |g_j - g*_j|`` above ``max_grad_err`` (the gradient's entries are
  probabilities and ``p - 1``, all in [-1, 1], so an absolute bound is the natural one).

Default thresholds: :func:`smcheck.metrics.default_thresholds`, the same as ``smcheck eval``
(``max_loss_ulp = 4 + R(C) * eps(accum) / eps(dtype)``, R(C) the roundings of the class sum,
``max_grad_err = max_loss_ulp * eps(dtype)``; the reasoning is there). float16 with float32
sums, C = 50 000: 4.0 ulps; float32 throughout: 28 ulps. A real defect (overflow, a lost
``-onehot``, a missing shift, a ``log(p)`` of an underflowed ``p``) is off by orders of
magnitude more than this slack.

Memory stays bounded: rows are processed in chunks of about ``chunk_bytes`` bytes of working
arrays (default 64 MiB), so a (10**6, 32 000) memmap can be checked. The names are the CLI's
(``max_loss_ulp``, ``chunk_bytes``); the old ``max_ulp`` and ``memory`` still work for one release,
with a DeprecationWarning.

>>> import numpy as np
>>> z = np.array([[12.0, 0.0, -3.0], [1.0, 2.0, 3.0]])  # 12 > ln(65504) = 11.09
>>> assert_stable(z, np.array([0, 2]), dtype="float16")  # fused: fine
>>> assert_stable(z, np.array([0, 2]), dtype="float16", methods=("naive",))
Traceback (most recent call last):
...
AssertionError: smcheck: 1 check failed in float16 (accum float32), 2 rows x 3 classes
naive: non-finite loss/gradient or overflow in 1 of 2 rows; first:
  row  label  max logit  loss      reference          problem
    0      0         12   nan  6.4500939e-06  non-finite loss
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics
from .core import get_method, reference_of, run_method
from .errors import InputError, dims
from .kernel import assert_kernel as assert_kernel  # re-exported: smcheck.testing.assert_kernel
from .metrics import loss_gate_err
from .options import renamed_keywords
from .precisions import Precision
from .prepare import CheckedInput, Prepared, check_input, prepare_input
from .reference import ReferenceOutput

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MEMORY",
    "WORST_ROWS",
    "assert_kernel",
    "assert_matches_reference",
    "assert_stable",
    "default_thresholds",
]

#: Bytes of working arrays per chunk of rows (the reference's and one method's temporaries).
DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_MEMORY = DEFAULT_CHUNK_BYTES  # the old name, for one release
#: Rows listed per failed check in the report.
WORST_ROWS = 5

DtypeLike = str | np.dtype | Precision


def default_thresholds(
    n_classes: int,
    dtype: DtypeLike,
    accum: DtypeLike | None = None,
) -> tuple[float, float]:
    """Deprecated: :func:`smcheck.metrics.default_thresholds` ``(dtype, accum, classes)``, the
    one definition (this spelling takes the class count first). Same numbers.

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     default_thresholds(50_000, "float16")  # + 16 * 2**-13 ulps for the float32 sum
    (4.0, 0.00390625)
    """
    warnings.warn(
        "smcheck.testing.default_thresholds(n_classes, dtype, accum) is deprecated; use "
        "smcheck.metrics.default_thresholds(dtype, accum, classes)",
        DeprecationWarning,
        stacklevel=2,
    )
    return metrics.default_thresholds(dtype, accum, n_classes)


# --- collecting failures chunk by chunk --------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One offending row: where it is, what it holds, what came out and what should have."""

    row: int
    label: int
    max_logit: float
    value: float
    reference: float
    error: float  # ulps (loss), absolute (grad); inf for non-finite
    col: int = -1  # the gradient entry with the largest error
    note: str = ""  # non-finite check: what was wrong


@dataclass
class _Check:
    """Failures of one check of one method, merged over chunks (the worst rows kept)."""

    method: str
    check: str  # "non-finite", "loss", "grad"
    limit: float
    count: int = 0
    worst: list[_Row] = field(default_factory=list)

    def add(self, count: int, rows: list[_Row]) -> None:
        self.count += count
        # largest error first, ties (every non-finite row is inf) to the lowest row
        self.worst = sorted([*self.worst, *rows], key=lambda r: (-r.error, r.row))[:WORST_ROWS]


def _chunks(n: int, n_classes: int, chunk_bytes: int) -> Iterator[slice]:
    # a row costs about 24 float64 arrays of C values: the reference's ~10, one method's
    # temporaries and the error arrays here
    step = max(1, chunk_bytes // (24 * 8 * n_classes))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _offending(
    mask: np.ndarray,
    start: int,
    prep: Prepared,
    value: np.ndarray,
    reference: np.ndarray,
    error: np.ndarray,
    col: np.ndarray | None = None,
    notes: np.ndarray | None = None,
) -> tuple[int, list[_Row]]:
    """How many rows of ``mask`` (chunk-local) there are, and the worst of them as report rows.

    Only ``WORST_ROWS`` rows are materialised, so a chunk where every row fails costs no more.
    """
    idx = np.flatnonzero(mask)
    count = int(idx.size)
    order = np.lexsort((idx, -error[idx]))  # largest error first, then lowest row
    idx = idx[order[:WORST_ROWS]]
    assert prep.safe_labels is not None
    rows = []
    for i in idx.tolist():
        with np.errstate(invalid="ignore"):  # a NaN row's max is NaN: reported as is
            top = float(np.max(prep.x[i].astype(np.float64)))
        rows.append(
            _Row(
                row=start + i,
                label=int(prep.safe_labels[i]),
                max_logit=top,
                value=float(value[i]),
                reference=float(reference[i]),
                error=float(error[i]),
                col=-1 if col is None else int(col[i]),
                note="" if notes is None else str(notes[i]),
            )
        )
    return count, rows


def _check_block(
    start: int,
    prep: Prepared,
    ref: ReferenceOutput,
    loss: np.ndarray,
    grad: np.ndarray | None,
    overflow: np.ndarray | None,
    max_loss_ulp: float,
    max_grad_err: float,
) -> dict[str, tuple[int, list[_Row]]]:
    """The three checks on one chunk of rows: (count, worst rows) per check name."""
    loss64 = np.asarray(loss).astype(np.float64)
    ref_loss = ref.loss if ref.loss_lo is None else ref.loss + ref.loss_lo
    # rows with NaN/+inf input (reference NaN) and ignored rows have no answer to check
    defined = ~np.isnan(ref.loss) & ~prep.ignored
    ref_finite = np.isfinite(ref.loss)
    # non-finite: finiteness disagrees with the reference (a +inf reference - a label on a -inf
    # logit - wants exactly +inf), or an intermediate overflowed
    with np.errstate(invalid="ignore"):
        loss_bad = np.where(ref_finite, ~np.isfinite(loss64), loss64 != ref.loss)
    grad_bad = np.zeros_like(loss_bad)
    out: dict[str, tuple[int, list[_Row]]] = {}
    g_err = g_col = g_val = g_ref = None
    if grad is not None:
        assert ref.grad is not None
        g64 = np.asarray(grad).astype(np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf: a non-finite entry, made inf below
            d = g64 - ref.grad
            if ref.grad_lo is not None:  # double-double reference: exact first difference
                d = d - ref.grad_lo
        d = np.where(np.isnan(d), np.inf, np.abs(d))
        g_col = np.argmax(d, axis=1)
        rows = np.arange(d.shape[0])
        g_err = d[rows, g_col]
        g_val = g64[rows, g_col]
        g_ref = ref.grad[rows, g_col]
        grad_bad = np.isfinite(ref.grad).all(axis=1) & ~np.isfinite(g64).all(axis=1)
    over = np.zeros_like(loss_bad) if overflow is None else overflow
    nonfinite = defined & (loss_bad | grad_bad | over)
    notes = np.where(
        loss_bad, "non-finite loss", np.where(grad_bad, "non-finite gradient", "overflow")
    )
    inf = np.full(loss64.shape, np.inf)
    out["non-finite"] = _offending(nonfinite, start, prep, loss64, ref_loss, inf, None, notes)

    # loss error in ulps of max(|L*|, 1): absolute below 1 (see the module docstring)
    measured = defined & ref_finite & ~nonfinite
    ulps = np.where(measured, loss_gate_err(loss64, ref.loss, prep.working, ref.loss_lo), 0.0)
    out["loss"] = _offending(ulps > max_loss_ulp, start, prep, loss64, ref_loss, ulps)
    if g_err is not None and g_val is not None and g_ref is not None:
        # the gradient is measured wherever the reference gradient is finite - also on a row
        # whose reference loss is +inf (a label on a -inf logit: gradient p - onehot, finite)
        assert ref.grad is not None
        g_measured = defined & np.isfinite(ref.grad).all(axis=1) & ~nonfinite
        g_err = np.where(g_measured, g_err, 0.0)
        out["grad"] = _offending(g_err > max_grad_err, start, prep, g_val, g_ref, g_err, g_col)
    return out


# --- the report ---------------------------------------------------------------------------------


def _num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.8g}"


_COLUMNS = {
    "non-finite": ["loss", "reference", "problem"],
    "loss": ["loss", "reference", "error (ulps)"],
    "grad": ["class", "grad", "reference", "abs error"],
}


def _render(
    func: str,
    checks: list[_Check],
    working: Precision,
    accum: Precision,
    shape: tuple[int, int],
    rows_checked: int,
) -> str:
    """The AssertionError message: a header, then per failed check one line and a small table."""
    n, c = shape
    lines = [
        f"smcheck: {len(checks)} check{'s' * (len(checks) != 1)} failed in {working.name} "
        f"(accum {accum.name}), {n} row{'s' * (n != 1)} x {c} classes"
    ]
    for chk in checks:
        if chk.check == "non-finite":
            what = "non-finite loss/gradient or overflow"
        elif chk.check == "loss":
            what = f"loss error > max_loss_ulp = {chk.limit:.3g} ulps of max(|L*|, 1)"
        else:
            what = f"gradient error > max_grad_err = {chk.limit:.3g} (max_j |g_j - g*_j|)"
        order = "first" if chk.check == "non-finite" else "worst"
        lines.append(f"{chk.method}: {what} in {chk.count} of {rows_checked} rows; {order}:")
        table = [["row", "label", "max logit", *_COLUMNS[chk.check]]]
        for r in chk.worst:
            cells = [str(r.row), str(r.label), _num(r.max_logit)]
            if chk.check == "grad":
                cells.append(str(r.col))
            last = r.note if chk.check == "non-finite" else f"{r.error:.3g}"
            table.append([*cells, _num(r.value), _num(r.reference), last])
        widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
        lines.extend(
            "  " + "  ".join(s.rjust(w) for s, w in zip(t, widths, strict=True)) for t in table
        )
    return "\n".join(lines)


# --- the two assertions -------------------------------------------------------------------------


def _check_args(
    logits: np.ndarray,
    labels: np.ndarray,
    dtype: DtypeLike,
    accum: DtypeLike | None,
    ignore_index: int,
) -> CheckedInput:
    """The front door (:func:`smcheck.prepare.check_input`): shapes, labels, both precisions."""
    return check_input(
        logits, labels, dtype=dtype, accum=accum, ignore_index=ignore_index, soft=False,
        require_labels=True,
    )  # fmt: skip


#: Old keyword names of the assertions -> the CLI's names.
RENAMED = {"max_ulp": "max_loss_ulp", "memory": "chunk_bytes"}


def _options(old: dict[str, Any], func: str, **given: Any) -> dict[str, Any]:
    """``given`` (None: not given) with the deprecated keywords of ``old`` moved to their new
    names; both names of one option is a UsageError, an unknown keyword a TypeError."""
    named = {k: v for k, v in given.items() if v is not None}
    moved = renamed_keywords({**old, **named}, RENAMED, func, stacklevel=4)
    unknown = sorted(set(moved) - set(given))
    if unknown:
        raise TypeError(f"{func}() got an unexpected keyword argument {unknown[0]!r}")
    given.update(moved)
    if "chunk_bytes" in given and given["chunk_bytes"] is None:
        given["chunk_bytes"] = DEFAULT_CHUNK_BYTES
    return given


def _limits(
    ci: CheckedInput, max_loss_ulp: float | None, max_grad_err: float | None
) -> tuple[float, float]:
    """The thresholds given, else the defaults for the input's dtypes and classes."""
    lim_loss, lim_grad = metrics.default_thresholds(ci.working, ci.accum, ci.classes)
    return (
        lim_loss if max_loss_ulp is None else max_loss_ulp,
        lim_grad if max_grad_err is None else max_grad_err,
    )


def _prepared_chunks(
    ci: CheckedInput, chunk_bytes: int
) -> Iterator[tuple[slice, Prepared, ReferenceOutput]]:
    """Each chunk of rows rounded to the working dtype (label errors name the global row) and
    its reference."""
    assert ci.labels is not None
    for sl in _chunks(ci.rows, ci.classes, chunk_bytes):
        prep = prepare_input(
            ci.x[sl], ci.labels[sl], dtype=ci.working, accum=ci.accum,
            ignore_index=ci.ignore_index, row_offset=sl.start,
        )  # fmt: skip
        yield sl, prep, reference_of(prep)


def _new_checks(
    names: Sequence[str], loss_limit: float, grad_limit: float, with_grad: bool
) -> dict[tuple[str, str], _Check]:
    kinds = [("non-finite", math.inf), ("loss", loss_limit)]
    if with_grad:
        kinds.append(("grad", grad_limit))
    return {(m, k): _Check(m, k, lim) for m in names for k, lim in kinds}


def _raise_if_failed(
    func: str, checks: dict[tuple[str, str], _Check], ci: CheckedInput, checked: int
) -> None:
    __tracebackhide__ = True
    working, accum, shape = ci.working, ci.accum, (ci.rows, ci.classes)
    failed = [chk for chk in checks.values() if chk.count]
    if failed:
        raise AssertionError(_render(func, failed, working, accum, shape, checked))
    if checked == 0:  # as the commands: a check of nothing is not a pass
        raise AssertionError(
            f"smcheck: {func} checked nothing: none of the {shape[0]} rows is checkable "
            "(every label ignored, or NaN/+inf logits)"
        )


def assert_stable(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    dtype: DtypeLike,
    methods: Sequence[str] = ("fused",),
    accum: DtypeLike | None = None,
    max_loss_ulp: float | None = None,
    max_grad_err: float | None = None,
    ignore_index: int = -100,
    chunk_bytes: int | None = None,
    **deprecated: Any,
) -> None:
    """Assert that smcheck's ``methods`` compute loss and gradient of these logits accurately.

    The logits are rounded to ``dtype`` (sums in ``accum``: default float32 for 16/8-bit types)
    and each method is checked against the reference of the rounded logits. ``None``
    thresholds take :func:`smcheck.metrics.default_thresholds`. Raises :class:`AssertionError`
    listing every failed check with its worst rows; bad arguments raise
    :class:`smcheck.UsageError` or :class:`smcheck.InputError` (both ``ValueError``).

    >>> import numpy as np
    >>> z = np.array([[0.0, 1.0], [12.0, 0.0]])  # exp(12) = 162755 > 65504, float16's max
    >>> assert_stable(z, np.array([1, 0]), dtype="float16")  # fused shifts first: fine
    >>> assert_stable(z, np.array([1, 0]), dtype="float16", methods=("naive",))
    Traceback (most recent call last):
    ...
    AssertionError: smcheck: 1 check failed in float16 (accum float32), 2 rows x 2 classes
    naive: non-finite loss/gradient or overflow in 1 of 2 rows; first:
      row  label  max logit  loss      reference          problem
        1      0         12   nan  6.1441935e-06  non-finite loss
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    chunk_bytes = _options(deprecated, "assert_stable", chunk_bytes=chunk_bytes)["chunk_bytes"]
    for m in methods:
        get_method(m)  # UsageError naming the known methods, before any work
    ci = _check_args(logits, labels, dtype, accum, ignore_index)
    lim_loss, lim_grad = _limits(ci, max_loss_ulp, max_grad_err)
    checks = _new_checks(methods, lim_loss, lim_grad, with_grad=True)
    checked = 0
    for sl, prep, ref in _prepared_chunks(ci, chunk_bytes):
        checked += int(np.count_nonzero(~np.isnan(ref.loss) & ~prep.ignored))
        for m in methods:
            res = run_method(m, prep, ci.accum)
            found = _check_block(
                sl.start, prep, ref, res.loss, res.grad, res.overflow, lim_loss, lim_grad
            )
            for k, (count, rows) in found.items():
                checks[(m, k)].add(count, rows)
    _raise_if_failed("assert_stable", checks, ci, checked)


def assert_matches_reference(
    loss: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    dtype: DtypeLike,
    grad: np.ndarray | None = None,
    accum: DtypeLike | None = None,
    max_loss_ulp: float | None = None,
    max_grad_err: float | None = None,
    ignore_index: int = -100,
    chunk_bytes: int | None = None,
    **deprecated: Any,
) -> None:
    """Assert that your per-row ``loss`` (and ``grad``) match the reference of ``logits``.

    ``loss`` (N,) and ``grad`` (N, C) are your kernel's outputs as numpy arrays (any float
    dtype; from PyTorch: ``t.float().cpu().numpy()``). The reference is computed on the logits
    rounded to ``dtype`` - the precision your kernel reads them in. ``accum`` is the precision
    your kernel sums in; it only sets the default thresholds
    (:func:`smcheck.metrics.default_thresholds`). Ignored rows (label ``ignore_index``) and rows
    with NaN/+inf logits are not checked.

    >>> import numpy as np
    >>> z = np.array([[2.0, 0.0, -1.0]], dtype=np.float16)
    >>> from smcheck import reference
    >>> good = reference(z, np.array([0]), dtype="float16").loss.astype(np.float16)
    >>> assert_matches_reference(good, z, np.array([0]), dtype="float16")
    >>> assert_matches_reference(good + np.float16(0.0625), z, np.array([0]), dtype="float16")
    Traceback (most recent call last):
    ...
    AssertionError: smcheck: 1 check failed in float16 (accum float32), 1 row x 3 classes
    kernel: loss error > max_loss_ulp = 4 ulps of max(|L*|, 1) in 1 of 1 rows; worst:
      row  label  max logit       loss   reference  error (ulps)
        0      0          2  0.2322998  0.16984602            64
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    given = _options(
        deprecated, "assert_matches_reference", max_loss_ulp=max_loss_ulp,
        chunk_bytes=chunk_bytes,
    )  # fmt: skip
    ci = _check_args(logits, labels, dtype, accum, ignore_index)
    n, c = ci.rows, ci.classes
    lv = np.asarray(loss)
    if lv.shape != (n,):
        raise InputError(f"loss has shape {dims(lv.shape)}, expected {n}: one value per row")
    gv = None if grad is None else np.asarray(grad)
    if gv is not None and gv.shape != (n, c):
        raise InputError(f"grad has shape {dims(gv.shape)}, expected {n} x {c} like the logits")
    lim_loss, lim_grad = _limits(ci, given["max_loss_ulp"], max_grad_err)
    checks = _new_checks(["kernel"], lim_loss, lim_grad, with_grad=gv is not None)
    checked = 0
    for sl, prep, ref in _prepared_chunks(ci, given["chunk_bytes"]):
        checked += int(np.count_nonzero(~np.isnan(ref.loss) & ~prep.ignored))
        g = None if gv is None else gv[sl]
        found = _check_block(sl.start, prep, ref, lv[sl], g, None, lim_loss, lim_grad)
        for k, (count, rows) in found.items():
            checks[("kernel", k)].add(count, rows)
    _raise_if_failed("assert_matches_reference", checks, ci, checked)
