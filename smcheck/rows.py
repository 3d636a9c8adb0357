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

__all__ = [
    "PER_ROW_FIELDS",
    "PerRowBlock",
    "RowFacts",
    "per_row_block",
    "per_row_columns",
    "worst_rows",
]


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

    A row's ``score`` is, over methods, the largest of its loss error in ulps of max(|L*|, 1) and
    its gradient error in eps of the working dtype - both in the unit the gate counts in. The
    rows are ranked by that score; the methods table's largest loss *relative* error can sit on
    a row the score ranks low (a loss of 1e-6 off by 1e-8 is 1e-2 relative but 1e-8 ulps of 1),
    so the candidates also carry each method's largest relative error, kept by
    :meth:`WorstRows.select` beside the top ``top_k`` (label-free: at its own class, a pair the
    score did not rank, ``ranked`` False)."""
    if top_k <= 0 or not e.any():
        return WorstRows(top_k, {})
    n = rows_g.size
    names = list(per_method)
    if facts.labels is None:
        assert xf is not None
        # per pair: methods with a non-finite loss, then the largest gate error; keep each row's
        # worst class (first one on ties)
        bad = sum((~np.isfinite(per_method[m]["loss"])).astype(np.int64) for m in names)
        score = np.max([_finite_or(per_method[m]["gate_err"], -1.0) for m in names], axis=0)
        bad_row = bad.max(axis=1)
        k = np.argmax(np.where(bad == bad_row[:, None], score, -np.inf), axis=1)
        every = _candidates(k, k.astype(np.int64), True, eps, rows_g, facts, ref_loss, ref_lo,
                            ref_prob, xf, per_method)  # fmt: skip
        parts = [_take(every, e)]
        seen: set[tuple[int, int]] = set()
        for m in names:
            # the pair of this chunk with the method's largest finite relative error (lowest
            # (row, class) on ties, as the methods table's maximum), unless ranked already
            rel = np.where(e[:, None], per_method[m]["rel_err"], np.nan)
            finite = np.isfinite(rel)
            if not finite.any():
                continue
            best = rel[finite].max()
            i, c = (int(v[0]) for v in np.nonzero(finite & (rel == best)))
            if c == k[i] or (i, c) in seen:
                continue  # ranked already, or another method's largest too
            seen.add((i, c))
            one = np.zeros(n, bool)
            one[i] = True
            kc = np.full(n, c)
            got = _candidates(kc, kc.astype(np.int64), False, eps, rows_g, facts, ref_loss,
                              ref_lo, ref_prob, xf, per_method)  # fmt: skip
            parts.append(_take(got, one))
        cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    else:
        assert facts.safe_labels is not None
        got = _candidates(facts.safe_labels, facts.labels.astype(np.int64), True, eps, rows_g,
                          facts, ref_loss, ref_lo, ref_prob, None, per_method)  # fmt: skip
        cols = _take(got, e)
    return WorstRows.select(top_k, cols)


def _take(cols: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    return {name: v[keep] for name, v in cols.items()}


def _candidates(
    k: np.ndarray,
    label: np.ndarray,
    ranked: bool,
    eps: float,
    rows_g: np.ndarray,
    facts: RowFacts,
    ref_loss: np.ndarray,
    ref_lo: np.ndarray | None,
    ref_prob: np.ndarray,
    xf: np.ndarray | None,
    per_method: dict[str, dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The worst-row columns of every row of the chunk at class ``k`` (per row)."""
    n = rows_g.size
    idx = np.arange(n)
    margin = facts.margin
    if xf is not None:
        # label-free: the margin of the shown class; inf - inf on non-eligible rows, dropped by
        # the caller; a margin beyond max float64 is inf
        with np.errstate(invalid="ignore", over="ignore"):
            margin = facts.zmax - xf[idx, k].astype(np.float64)

    def pick(a: np.ndarray) -> np.ndarray:
        return a[idx, k] if a.ndim == 2 else a

    cols: dict[str, np.ndarray] = {
        "row": rows_g,
        "label": label,
        "ranked": np.full(n, ranked),
        "max_logit": facts.zmax,
        "margin": margin,
        "ref_p": pick(ref_prob),
        "ref_loss": pick(ref_loss) + (0.0 if ref_lo is None else pick(ref_lo)),
    }
    n_bad = np.zeros(n, np.int64)
    total = np.full(n, -1.0)
    for m, pm in per_method.items():
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
    return cols


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


PER_ROW_FIELDS = ("loss", "loss_ulp_err", "grad_rel_err", "overflow", "underflow", "nonfinite")


def per_row_columns(block: PerRowBlock) -> dict[str, np.ndarray]:
    """A chunk's per-row values as named columns: row, label, eligible, ref_loss, then
    ``<method>_<field>`` for each field of :data:`PER_ROW_FIELDS` (flags as 0/1)."""
    cols: dict[str, np.ndarray] = {
        "row": block.row,
        "label": block.label,
        "eligible": block.eligible.astype(np.int8),
        "ref_loss": block.ref_loss,
    }
    for m, values in block.methods.items():
        for f in PER_ROW_FIELDS:
            v = values[f]
            cols[f"{m}_{f}"] = v.astype(np.int8) if v.dtype == bool else v
    return cols
