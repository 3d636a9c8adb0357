"""The rows a report shows one by one: a chunk's worst-row candidates and ``--per-row`` values.

Both are read off the per-row arrays the chunk kernel (:mod:`smcheck.engine`) keeps - the
:class:`RowFacts` of the input and each method's loss, errors and flags - and neither computes
anything numerical of its own: they pick, per row, the column (class) and the values to show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .precisions import CastReport
from .stats import WorstRows

__all__ = ["PerRowBlock", "RowFacts", "per_row_block", "worst_rows"]


@dataclass(frozen=True)
class PerRowBlock:
    """Per-row values of one chunk, for ``--per-row`` files (rows in order)."""

    row: np.ndarray
    label: np.ndarray  # -1 label-free
    eligible: np.ndarray
    ref_loss: np.ndarray
    methods: dict[str, dict[str, np.ndarray]]  # name -> loss, loss_ulp_err, grad_rel_err, flags


@dataclass(frozen=True)
class RowFacts:
    """What a chunk's rows look like, per row: labels, eligibility, extremes, input rounding."""

    labels: np.ndarray | None  # (n,) int64 as given; None label-free
    safe_labels: np.ndarray | None  # ignored rows replaced by 0
    ignored: np.ndarray  # (n,) bool
    finite_input: np.ndarray  # (n,) bool
    zmax: np.ndarray  # (n,) float64 row max of the rounded logits
    zmin: np.ndarray
    amax: np.ndarray  # (n,) int64 first argmax
    margin: np.ndarray  # max(z) - z_y (label-free: max(z) - min(z))
    cast: CastReport | None


def _finite_or(v: np.ndarray, fill: float) -> np.ndarray:
    return np.where(np.isfinite(v), v, fill)


def worst_rows(
    top_k: int,
    eps: float,
    rows_g: np.ndarray,
    facts: RowFacts,
    ref_loss: np.ndarray,
    ref_lo: np.ndarray | None,
    ref_prob: np.ndarray,
    xf: np.ndarray | None,
    e: np.ndarray,
    per_method: dict[str, dict[str, np.ndarray]],
) -> WorstRows:
    """Candidates for the worst-rows list: every eligible row (label-free: its worst class).

    A row's score is, over methods, the largest of its loss error in ulps of max(|L*|, 1) and its
    gradient error in eps of the working dtype - both in the unit the gate counts in."""
    if top_k <= 0 or not e.any():
        return WorstRows(top_k, {})
    n = rows_g.size
    idx = np.arange(n)
    names = list(per_method)
    zmax, margin = facts.zmax, facts.margin
    if facts.labels is None:
        assert xf is not None
        # per pair: methods with a non-finite loss, then the largest gate error; keep each row's
        # worst class (first one on ties)
        bad = sum((~np.isfinite(per_method[m]["loss"])).astype(np.int64) for m in names)
        score = np.max([_finite_or(per_method[m]["gate_err"], -1.0) for m in names], axis=0)
        bad_row = bad.max(axis=1)
        k = np.argmax(np.where(bad == bad_row[:, None], score, -np.inf), axis=1)
        label = k.astype(np.int64)
        # inf - inf on non-eligible rows, dropped below; a margin beyond max float64 is inf
        with np.errstate(invalid="ignore", over="ignore"):
            margin = zmax - xf[idx, k].astype(np.float64)
    else:
        assert facts.safe_labels is not None
        label = facts.labels.astype(np.int64)
        k = facts.safe_labels

    def pick(a: np.ndarray) -> np.ndarray:
        return a[idx, k] if a.ndim == 2 else a

    cols: dict[str, np.ndarray] = {
        "row": rows_g,
        "label": label,
        "max_logit": zmax,
        "margin": margin,
        "ref_p": ref_prob[idx, k] if ref_prob.ndim == 2 else ref_prob,
        "ref_loss": pick(ref_loss) + (0.0 if ref_lo is None else pick(ref_lo)),
    }
    n_bad = np.zeros(n, np.int64)
    total = np.full(n, -1.0)
    for m in names:
        pm = per_method[m]
        loss = pick(pm["loss"])
        gabs = pm["grad_abs_err"]
        nonfinite = ~np.isfinite(loss) | np.isinf(gabs)
        n_bad += nonfinite
        total = np.maximum(total, _finite_or(pick(pm["gate_err"]), -1.0))
        total = np.maximum(total, _finite_or(gabs / eps, -1.0))
        cols[f"{m}:loss"] = loss
        cols[f"{m}:rel_err"] = pick(pm["rel_err"])
        cols[f"{m}:ulp_err"] = pick(pm["ulp_err"])
        cols[f"{m}:grad_abs_err"] = gabs
        cols[f"{m}:nonfinite"] = nonfinite
    cols["n_bad"] = n_bad
    cols["score"] = total
    return WorstRows.select(top_k, {name: v[e] for name, v in cols.items()})


def per_row_block(
    rows_g: np.ndarray,
    facts: RowFacts,
    e: np.ndarray,
    ref_loss: np.ndarray,
    ref_lo: np.ndarray | None,
    per_method: dict[str, dict[str, np.ndarray]],
) -> PerRowBlock:
    """Per-row values. Label-free: the loss columns are the row's argmax class (its smallest
    loss), the error columns the worst over the row's classes (loss) and checked labels (grad)."""
    n = rows_g.size
    idx = np.arange(n)
    ref_loss = ref_loss + (0.0 if ref_lo is None else ref_lo)
    label_free = facts.labels is None
    if label_free:
        k = facts.amax
        label = np.full(n, -1, np.int64)
        ref_loss = ref_loss[idx, k] if n else np.zeros(0)
    else:
        assert facts.labels is not None
        label = facts.labels
    out: dict[str, dict[str, np.ndarray]] = {}
    for m, pm in per_method.items():
        loss, ulp, under = pm["loss"], pm["ulp_err"], pm["underflow"]
        if label_free:
            nonfinite_loss = ~np.isfinite(loss).all(axis=1)
            loss = loss[idx, k] if n else np.zeros(0)
            ulp = np.fmax.reduce(ulp, axis=1) if n else np.zeros(0)
            under = np.asarray(under.any(axis=1))
        else:
            nonfinite_loss = ~np.isfinite(loss)
        nonfinite = (nonfinite_loss | np.isinf(pm["grad_abs_err"])) & e
        out[m] = {
            "loss": loss,
            "loss_ulp_err": np.where(e, ulp, np.nan),
            "grad_rel_err": np.where(e, pm["grad_rel_err"], np.nan),
            "overflow": pm["overflow"] & e,
            "underflow": under & e,
            "nonfinite": nonfinite,
        }
    return PerRowBlock(rows_g, label, e, np.where(e, ref_loss, np.nan), out)
