"""``smcheck compare``'s report: the frozen dataclasses, the checks, the worst rows and the
verdict in words (:mod:`smcheck.compare` measures and builds it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .precisions import PRECISIONS, Precision
from .variants import Variant

if TYPE_CHECKING:  # annotations only: compare.py imports this module
    from .compare import CompareOptions, _Setup
    from .compare_measure import _Blocks, _GradRows, _LossRows


#: Upper edges (ulps, inclusive) of the loss-error histogram; a last bin holds the rest.
HIST_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 65536.0)

#: Row ids kept per finding (the counts are complete).
MAX_ROW_IDS = 20

#: An error of at least half the value's scale is a wrong result, not an imprecise one:
#: |L - L*| >= max(|L*|, 1) / 2, or a gradient entry off by 0.5 (entries lie in [-1, 1]).
BROKEN_FRACTION = 0.5


@dataclass(frozen=True)
class HistBin:
    """Rows whose loss error (ulps) is in (previous upper, ``upper``]; ``upper`` None = above."""

    upper: float | None
    count: int


@dataclass(frozen=True)
class LossStats:
    """Their loss against the reference. Errors are None when no value could be measured.

    ``measured`` counts the values compared (both finite, row not ignored); for a reduction it
    is 1 or 0. ``*_ulp_err`` are in ulps of the working dtype at L*, ``*_bits`` are
    log2(ulps + 1), ``max_gate_ulp_err`` is in ulps of max(|L*|, 1) (what the gate bounds).
    """

    measured: int
    max_ulp_err: float | None
    p99_ulp_err: float | None
    median_ulp_err: float | None
    max_bits: float | None
    p99_bits: float | None
    median_bits: float | None
    max_rel_err: float | None
    median_rel_err: float | None
    max_abs_err: float | None
    max_gate_ulp_err: float | None
    worst_row: int | None
    histogram: tuple[HistBin, ...]
    nonfinite_rows: int
    nonfinite_row_ids: tuple[int, ...]
    nan_rows: int  # of the nonfinite rows: NaN
    inf_rows: int  # of the nonfinite rows: +-inf
    ref_nonfinite_rows: int
    ref_nonfinite_row_ids: tuple[int, ...]
    both_nonfinite_rows: int
    ignored_nonzero_rows: int
    their_value: float | None  # reductions: their number
    ref_value: float | None  # reductions: the reference mean/sum (rounded to float64)


@dataclass(frozen=True)
class GradStats:
    """Their gradient against the reference, per row (max over entries / normwise), in
    per-row units: for ``mean`` their gradient is multiplied by ``scale`` (the counted rows, or
    the summed weight of their labels with class weights)."""

    measured: int
    max_abs_err: float | None
    p99_abs_err: float | None
    median_abs_err: float | None
    max_rel_err: float | None
    median_rel_err: float | None
    worst_row: int | None
    nonfinite_rows: int
    nonfinite_row_ids: tuple[int, ...]
    ref_nonfinite_rows: int
    ref_nonfinite_row_ids: tuple[int, ...]
    both_nonfinite_rows: int
    ignored_nonzero_rows: int
    scale: float  # an int without class weights


@dataclass(frozen=True)
class WorstRow:
    """One of the worst rows, with the logit statistics that explain it."""

    row: int
    label: int
    issue: str  # "nonfinite", "ref-nonfinite" or "" (an error, ranked by size)
    their_loss: float | None  # None with a reduction
    ref_loss: float | None
    loss_ulp_err: float | None
    loss_rel_err: float | None
    grad_abs_err: float | None
    grad_worst_class: int | None  # the class where their gradient is furthest off
    max_logit: float
    min_logit: float
    label_logit: float
    margin: float  # max(z) - z_y: the loss is about this large when it is large
    ref_p_label: float  # reference probability of the label


@dataclass(frozen=True)
class Check:
    """One pass/fail check; only ``gated`` ones decide ``ok``."""

    name: str
    ok: bool
    gated: bool
    value: float | None
    limit: float | None
    message: str


@dataclass(frozen=True)
class CompareReport:
    """What :func:`compare` found. ``verdict``: ok, lossy (imprecise), broken (wrong or
    non-finite) or inconclusive (nothing measurable); ``ok`` is the gate's answer."""

    SCHEMA: ClassVar[str] = "smcheck.compare/1"

    logits: str
    labels: str | None
    loss_file: str
    grad_file: str | None
    rows: int
    classes: int
    dtype: str
    accum: str
    cast_mode: str
    reference_precision: str
    reduction: str
    counted_rows: int
    ignored_rows: int
    nonfinite_input_rows: int
    cast_changed: int
    cast_overflowed: int
    their_loss_dtype: str
    their_grad_dtype: str | None
    loss: LossStats
    grad: GradStats | None
    worst: tuple[WorstRow, ...]
    max_loss_ulp: float
    max_grad_err: float | None
    fail_on: tuple[str, ...]
    checks: tuple[Check, ...]
    verdict: str
    summary: str
    ok: bool
    notes: tuple[str, ...] = ()
    weight: str | None = None  # where the class weights came from; None without weights
    label_smoothing: float = 0.0
    convention: str = "torch"
    #: the loss variant checked (constants as used); None for the plain loss
    variant: Variant | None = None

    @property
    def cast(self) -> str:
        """How the logits were rounded (the CLI's and :class:`CompareOptions`' name)."""
        return self.cast_mode


def _ids(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask)[:MAX_ROW_IDS])


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _verdict(
    loss: LossStats,
    grad: GradStats | None,
    lr: _LossRows,
    checks: tuple[Check, ...],
    empty: str | None,
) -> str:
    """broken (wrong or non-finite), inconclusive (nothing measured), lossy or ok."""
    broken = (
        loss.nonfinite_rows > 0
        or loss.ignored_nonzero_rows > 0
        or bool(np.any(lr.scaled_err[lr.measured] >= BROKEN_FRACTION))
        # a number where PyTorch's mean over nothing is NaN: wrong under this convention
        or (empty == "torch" and loss.ref_nonfinite_rows > 0)
    )
    if grad is not None:
        broken = broken or grad.nonfinite_rows > 0 or grad.ignored_nonzero_rows > 0
        broken = broken or (grad.max_abs_err or 0.0) >= BROKEN_FRACTION
    if broken:
        return "broken"
    if loss.measured == 0:
        return "inconclusive"
    if any(not ch.ok for ch in checks if ch.name in ("loss-error", "grad-error")):
        return "lossy"
    return "ok"


def _report_notes(
    st: _Setup, opts: CompareOptions, nonfinite_input: int, overflowed: int, empty: str | None
) -> tuple[str, ...]:
    """The caller's notes, then the input's and the stored dtypes' (errors are in T's ulps)."""
    working = st.ci.working
    out = [
        *opts.notes,
        *_notes(working, opts.cast, nonfinite_input, overflowed, empty, st.counted),
    ]
    for what, dt in (("loss", st.their_loss_dtype), ("gradient", st.their_grad_dtype)):
        if dt in PRECISIONS and dt != working.name:
            out.append(
                f"their {what} is stored as {dt} but the working dtype is {working.name}: "
                f"errors are in {working.name} ulps"
            )
    return tuple(out)


def _summary(checks: tuple[Check, ...]) -> str:
    """The failed checks, most severe first; else what the error checks measured."""
    severity = ("nonfinite", "grad-error", "loss-error", "ignored", "ref-nonfinite")
    failed = sorted((ch for ch in checks if not ch.ok), key=lambda ch: severity.index(ch.name))
    if failed:
        return "; ".join(ch.message for ch in failed)
    return "; ".join(ch.message for ch in checks if ch.name in ("loss-error", "grad-error"))


def _notes(
    working: Precision,
    cast_mode: str,
    nonfinite_input: int,
    overflowed: int,
    empty: str | None,
    counted: int,
) -> list[str]:
    out = []
    if nonfinite_input:
        out.append(
            f"{nonfinite_input} row(s) of the logits hold NaN/inf after rounding to "
            f"{working.name}: the reference is NaN there (or +inf for a label on a -inf logit)"
        )
    if overflowed:
        out.append(
            f"{overflowed} logit(s) overflowed when rounded to {working.name} (cast {cast_mode})"
        )
    if empty is not None:
        why = "every row is ignored" if counted == 0 else "the counted rows' labels weigh 0"
        out.append(
            f"{why}: the reference mean is NaN (0/0), as PyTorch's (--convention torch)"
            if empty == "torch"
            else f"{why}: the reference mean is 0, optax's convention (--convention jax)"
        )
    return out


def _underflow_hint(blocks: _Blocks, their_bad: np.ndarray, working: Precision) -> str:
    """Why their loss is inf, when the margins say so: p_y = exp(-margin) underflows to 0 in
    the working dtype once margin > -ln(smallest subnormal / 2) (17.33 in float16: round to
    nearest sends only values below half the smallest subnormal to 0), and a kernel that takes
    -log(softmax(z)_y) then returns -log(0) = inf."""
    with np.errstate(invalid="ignore"):  # inf - inf on rows with non-finite logits
        margin = blocks.cat("max_logit") - blocks.cat("label_logit")
    worst = float(np.nanmax(np.where(their_bad, margin, np.nan), initial=-np.inf))
    limit = -(working.ln_smallest_subnormal - math.log(2))
    if not worst > limit:
        return ""
    return (
        f". Margins max(z) - z_y reach {worst:.3g} > {limit:.4g} = -ln(smallest {working.name} "
        "subnormal / 2): p_y underflows to 0 there, so -log(softmax(z)_y) is inf; compute the loss "
        "as logsumexp(z) - z_y (a fused log-softmax)"
    )


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _rows_text(count: int, ids: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in ids[:5]) + (", ..." if count > 5 else "")
    return f"{count} row(s) ({shown})" if ids else f"{count} value(s)"


def _checks(
    loss: LossStats,
    grad: GradStats | None,
    loss_limit: float,
    grad_limit: float | None,
    fail_on: tuple[str, ...],
    reduction: str,
    empty: str | None = None,
) -> tuple[Check, ...]:
    """The five checks, in report order: loss error, gradient error (with a gradient), their
    values non-finite, the reference non-finite, ignored rows non-zero. ``empty``: the
    convention, when the mean is over nothing (PyTorch NaN, optax 0)."""
    what = "their loss" if reduction == "none" else f"their {reduction} loss"
    out = [_loss_check(loss, loss_limit, what, empty)]
    if grad is not None and grad_limit is not None:
        out.append(_grad_check(grad, grad_limit))
    out.append(_nonfinite_check(loss, grad, "nonfinite" in fail_on))
    out.append(_ref_nonfinite_check(loss, grad, "ref-nonfinite" in fail_on))
    ig = loss.ignored_nonzero_rows + (grad.ignored_nonzero_rows if grad else 0)
    message = (
        f"{ig} ignored row(s) have a non-zero loss or gradient (PyTorch gives 0)"
        if ig
        else "ignored rows are 0"
    )
    out.append(Check("ignored", ig == 0, "ignored" in fail_on, float(ig), 0.0, message))
    return tuple(out)


def _loss_check(loss: LossStats, limit: float, what: str, empty: str | None) -> Check:
    """Their loss error in ulps of max(|L*|, 1) against ``limit`` (always gated)."""
    if empty is not None:
        # a mean over nothing: under torch a measured value is their NaN matching 0/0
        ok = loss.measured > 0 and (loss.max_gate_ulp_err or 0.0) <= limit
        nothing = "with nothing to divide by (no counted rows, or their labels weigh 0)"
        ref = {"torch": "PyTorch's mean is NaN (0/0)", "jax": "optax's mean is 0"}
        alt = {
            "torch": "optax returns 0 (--convention jax)",
            "jax": "PyTorch returns NaN (--convention torch)",
        }
        message = (
            f"{what} is {loss.their_value!r}{':' if ok else ' but'} {nothing} {ref[empty]}, the "
            f"reference under --convention {empty}" + ("" if ok else f"; {alt[empty]}")
        )
        return Check("loss-error", ok, True, 0.0 if ok else None, limit, message)
    if loss.measured == 0:
        message = f"{what}: nothing to measure (every row ignored or non-finite)"
        return Check("loss-error", False, True, None, limit, message)
    v = loss.max_gate_ulp_err
    assert v is not None
    ok = v <= limit
    rel = "over" if not ok else "within"
    message = (
        f"{what} is off by up to {_g(v)} ulps of max(|L|, 1) ({rel} the limit "
        f"{_g(limit)}; {_g(loss.max_ulp_err)} ulps at L)"
    )
    return Check("loss-error", ok, True, v, limit, message)


def _grad_check(grad: GradStats, limit: float) -> Check:
    """Their gradient's largest absolute error against ``limit`` (always gated)."""
    v = grad.max_abs_err
    ok = v is not None and v <= limit
    msg = (
        "their gradient: nothing to measure"
        if v is None
        else f"their gradient is off by up to {_g(v)} ({'within' if ok else 'over'} the "
        f"limit {_g(limit)})"
    )
    return Check("grad-error", ok, True, v, limit, msg)


def _nonfinite_check(loss: LossStats, grad: GradStats | None, gated: bool) -> Check:
    """Their values NaN/inf where the reference is finite (a bug in their kernel)."""
    nf = loss.nonfinite_rows + (grad.nonfinite_rows if grad else 0)
    parts = []
    if loss.nonfinite_rows:
        parts.append(f"loss on {_rows_text(loss.nonfinite_rows, loss.nonfinite_row_ids)}")
    if grad is not None and grad.nonfinite_rows:
        parts.append(f"gradient on {_rows_text(grad.nonfinite_rows, grad.nonfinite_row_ids)}")
    message = (
        "their " + " and ".join(parts) + " is NaN/inf where the reference is finite"
        if nf
        else "no NaN/inf where the reference is finite"
    )
    return Check("nonfinite", nf == 0, gated, float(nf), 0.0, message)


def _ref_nonfinite_check(loss: LossStats, grad: GradStats | None, gated: bool) -> Check:
    """Their values finite where the reference is not (a non-finite input hidden)."""
    rn = loss.ref_nonfinite_rows + (grad.ref_nonfinite_rows if grad else 0)
    parts = []
    if loss.ref_nonfinite_rows:
        parts.append(f"loss on {_rows_text(loss.ref_nonfinite_rows, loss.ref_nonfinite_row_ids)}")
    if grad is not None and grad.ref_nonfinite_rows:
        ids = grad.ref_nonfinite_row_ids
        parts.append(f"gradient on {_rows_text(grad.ref_nonfinite_rows, ids)}")
    message = (
        "their " + " and ".join(parts) + " is finite where the reference is NaN/inf "
        "(non-finite input hidden)"
        if rn
        else "finite only where the reference is"
    )
    return Check("ref-nonfinite", rn == 0, gated, float(rn), 0.0, message)


def _worst_rows(
    k: int,
    labels: np.ndarray,
    counted: np.ndarray,
    lr: _LossRows | None,
    gr: _GradRows | None,
    blocks: _Blocks,
    working: Precision,
) -> tuple[WorstRow, ...]:
    """The ``k`` worst counted rows: non-finite where the reference is finite first, then finite
    where it is not, then by error (loss in ulps of max(|L|, 1), gradient in ulps of 1).
    ``lr`` is None with a reduction (no per-row loss): the gradient alone ranks the rows."""
    if k <= 0 or (lr is None and gr is None):
        return ()
    n = counted.shape[0]
    issue = np.zeros(n, dtype=np.int8)
    score = np.zeros(n)
    if lr is not None:
        issue = np.where(lr.their_bad, 2, np.where(lr.ref_bad, 1, 0)).astype(np.int8)
        score = np.where(np.isnan(lr.gate_err), 0.0, lr.gate_err)
    if gr is not None:
        issue = np.maximum(issue, np.where(gr.their_bad, 2, np.where(gr.ref_bad, 1, 0)))
        score = np.maximum(score, np.where(np.isfinite(gr.abs_err), gr.abs_err, 0.0) / working.eps)
    cand = np.flatnonzero(counted & ((issue > 0) | (score > 0)))
    order = cand[np.lexsort((cand, -score[cand], -issue[cand]))][:k]
    max_logit, min_logit = blocks.cat("max_logit"), blocks.cat("min_logit")
    label_logit, p_label = blocks.cat("label_logit"), blocks.cat("p_label")
    ref_hi = blocks.cat("ref_hi")
    names = {2: "nonfinite", 1: "ref-nonfinite", 0: ""}
    out = []
    for r in order.tolist():
        with np.errstate(invalid="ignore"):  # inf - inf for rows with non-finite logits
            margin = float(max_logit[r] - label_logit[r])
        out.append(
            WorstRow(
                row=r,
                label=int(labels[r]),
                issue=names[int(issue[r])],
                their_loss=None if lr is None else float(lr.theirs[r]),
                ref_loss=None if lr is None else float(ref_hi[r]),
                loss_ulp_err=None if lr is None else _opt(float(lr.ulp_err[r])),
                loss_rel_err=None if lr is None else _opt(float(lr.rel_err[r])),
                grad_abs_err=None if gr is None else _opt(float(gr.abs_err[r])),
                grad_worst_class=None if gr is None else int(gr.worst_class[r]),
                max_logit=float(max_logit[r]),
                min_logit=float(min_logit[r]),
                label_logit=float(label_logit[r]),
                margin=margin,
                ref_p_label=float(p_label[r]),
            )
        )
    return tuple(out)
