"""Sweep's cells: one (dtype, classes, case) problem measured at many scales, per method.

:func:`measure` scales the problem's base pattern, rounds the stacked logits to the working
dtype once, runs the reference and each method on them and reduces every scale's rows to one
:class:`ScaleStats` - the numbers a grid cell shows and a break point is judged by
(:func:`is_broken`, :func:`cell_verdict`); :mod:`smcheck.sweep` builds the grid and bisects the
break points from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import core, metrics
from .precisions import Precision
from .prepare import prepare_input
from .reference import ReferenceOutput
from .variants import Variant

__all__ = ["CHUNK_ELEMENTS", "Problem", "ScaleStats", "cell_verdict", "is_broken", "measure"]

#: Elements evaluated in one batch of stacked scales (bounds memory: binary128 is 16 B a value).
CHUNK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class Problem:
    """One (dtype, classes, case): its base pattern (largest entry exactly 1) and labels, the
    accumulation dtype and the precision test's limit in bits."""

    dtype: str
    accum: Precision
    classes: int
    case: str
    base: np.ndarray
    labels: np.ndarray
    max_bits: float
    variant: Variant | None = None  # the loss variant swept; None: the plain loss


@dataclass(frozen=True)
class ScaleStats:
    """One method at one scale: a grid cell's fractions and errors (None: nothing measurable),
    the geometry a break is explained by, and whether the reference was run (``has_ref``)."""

    rows: int
    largest_logit: float | None
    margin: float | None
    loss: float | None
    lse: float | None
    nonfinite_loss_frac: float | None
    nonfinite_grad_frac: float | None
    overflow_frac: float | None
    underflow_frac: float | None
    has_ref: bool
    loss_median_bits: float | None = None
    loss_max_bits: float | None = None
    loss_max_excess_bits: float | None = None
    loss_median_rel_err: float | None = None
    loss_max_rel_err: float | None = None
    mean_loss_rel_err: float | None = None
    grad_max_abs_err: float | None = None


def _opt(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _fracs(flag: np.ndarray, finite: np.ndarray, n: np.ndarray) -> list[float | None]:
    hits = (flag & finite).sum(axis=1)
    return [float(h / k) if k else None for h, k in zip(hits, n, strict=True)]


def _max_med(values: np.ndarray, measured: np.ndarray) -> tuple[list[float | None], ...]:
    """Per scale (axis 0): max and median of ``values`` over ``measured`` rows (None if none)."""
    n = measured.sum(axis=1)
    srt = np.sort(np.where(measured, values, np.inf), axis=1)
    mx: list[float | None] = []
    med: list[float | None] = []
    for i, k in enumerate(n):
        if k == 0:
            mx.append(None)
            med.append(None)
            continue
        mx.append(_opt(srt[i, k - 1]))
        med.append(_opt(0.5 * (srt[i, (k - 1) // 2] + srt[i, k // 2])))
    return mx, med


def _geometry(x: np.ndarray, labels: np.ndarray, s: int, r: int) -> dict[str, list]:
    """Per scale: largest rounded logit, most extreme margin, largest loss and log-sum-exp.

    Margin of a row: z_y - max_{j != y} z_j; the cell's margin is its most negative row margin
    when some label is below another logit (p_y heads for 0), else its largest one. The loss
    -ln p_y = lse(z) - z_y and lse(z) are float64 (a description of the rounded input to compare
    with the thresholds at 1%; the errors are measured against the core's reference).
    """
    z = x.astype(np.float64)
    rows = np.arange(z.shape[0])
    # inf/NaN logits (an input that overflowed in the cast) give NaN here: not measured
    with np.errstate(invalid="ignore", over="ignore"):
        z_y = z[rows, labels].copy()
        z[rows, labels] = -np.inf
        other = z.max(axis=1)
        z[rows, labels] = z_y
        row_max = np.maximum(other, z_y)
        # log1p form: lse - z_y = (m - z_y) + log1p(sum_{j != argmax} exp(z_j - m)), which keeps
        # a confident row's tiny loss (lse - z_y would cancel it to 0)
        e = np.exp(z - row_max[:, None])
        e[rows, np.argmax(z, axis=1)] = 0.0
        rest = np.log1p(np.sum(e, axis=1))
        lse = row_max + rest
        loss = ((row_max - z_y) + rest).reshape(s, r)
        margin = (z_y - other).reshape(s, r)
        lse = lse.reshape(s, r)
        row_max = row_max.reshape(s, r)

    def top(a: np.ndarray) -> float | None:
        a = a[np.isfinite(a)]
        return float(a.max()) if a.size else None

    out: dict[str, list] = {"largest_logit": [], "margin": [], "loss": [], "lse": []}
    for i in range(s):
        out["largest_logit"].append(top(row_max[i]))
        out["loss"].append(top(loss[i]))
        out["lse"].append(top(lse[i]))
        mg = margin[i][np.isfinite(margin[i])]
        if not mg.size:
            out["margin"].append(None)
        else:
            out["margin"].append(float(mg.min()) if mg.min() < 0 else float(mg.max()))
    return out


def measure(
    prob: Problem, scales: Sequence[float], methods: Sequence[str], with_ref: bool
) -> dict[str, list[ScaleStats]]:
    """Stats of each method at each scale; the scales' rows are stacked into few core calls."""
    r, c = prob.base.shape
    out: dict[str, list[ScaleStats]] = {m: [] for m in methods}
    per_chunk = max(1, CHUNK_ELEMENTS // (r * c))
    sc_all = np.asarray(scales, dtype=np.float64)
    for start in range(0, len(sc_all), per_chunk):
        sc = sc_all[start : start + per_chunk]
        s = len(sc)
        # a scale past float64's range gives inf logits: counted as non-finite input below
        with np.errstate(over="ignore"):
            logits = (sc[:, None, None] * prob.base[None]).reshape(s * r, c)
        labels = np.tile(prob.labels, s)
        v = prob.variant or Variant()
        prep = prepare_input(
            logits, labels, dtype=prob.dtype, z_loss=v.z_loss, softcap=v.softcap,
            logit_scale=v.logit_scale,
        )  # fmt: skip
        finite = prep.finite_input.reshape(s, r)
        n_fin = finite.sum(axis=1)
        geo = _geometry(prep.xk, labels, s, r)  # the carrier: the same values, in float32
        ref = core.reference_of(prep) if with_ref else None
        # the condition number is the problem's (reference only): once for every method
        kappa = None
        if ref is not None and ref.grad is not None:
            kappa = metrics.condition_number(prep.xk, ref.grad, ref.loss)
        for m in methods:
            res = core.run_method(m, prep, prob.accum, carrier=True)  # values of T, in float32
            assert res.grad is not None
            nl = res.nonfinite_loss.reshape(s, r)
            ng = res.nonfinite_grad.reshape(s, r)
            common = {
                "nonfinite_loss_frac": _fracs(nl, finite, n_fin),
                "nonfinite_grad_frac": _fracs(ng, finite, n_fin),
                "overflow_frac": _fracs(res.overflow.reshape(s, r), finite, n_fin),
                "underflow_frac": _fracs(res.underflow.reshape(s, r), finite, n_fin),
            }
            errs: dict[str, list] = {}
            if ref is not None and kappa is not None:
                errs = _errors(res, kappa, ref, prep.working, finite, nl, s, r)
            for i in range(s):
                out[m].append(
                    ScaleStats(
                        rows=int(n_fin[i]),
                        **{k: v[i] for k, v in geo.items()},
                        has_ref=ref is not None,
                        **{k: v[i] for k, v in common.items()},
                        **{k: v[i] for k, v in errs.items()},
                    )
                )
    return out


def _errors(
    res: core.CrossEntropyResult,
    kappa: np.ndarray,
    ref: ReferenceOutput,
    working: Precision,
    finite: np.ndarray,
    nl: np.ndarray,
    s: int,
    r: int,
) -> dict[str, list]:
    """Loss errors (bits, relative), mean-loss error and gradient error per scale."""
    ref_loss, ref_lo = ref.loss, ref.loss_lo
    rel = metrics.loss_rel_err(res.loss, ref_loss, ref_lo, ref.loss_scaled).reshape(s, r)
    bits = metrics.bits_of_error(metrics.loss_ulp_err(res.loss, ref_loss, working, ref_lo)).reshape(
        s, r
    )
    measured = finite & np.isfinite(bits)
    max_bits, med_bits = _max_med(bits, measured)
    # error beyond what the problem forces: kappa * eps is the relative error that rounding
    # the shifted logits alone causes (exp turns an absolute error of z - m into a relative one)
    with np.errstate(invalid="ignore"):  # NaN rows (non-finite input or loss) stay NaN
        excess = metrics.bits_of_error(
            metrics.loss_ulp_err(res.loss, ref_loss, working, ref_lo) / np.maximum(kappa, 1.0)
        ).reshape(s, r)
    max_excess, _ = _max_med(excess, finite & np.isfinite(excess))
    max_rel, med_rel = _max_med(rel, finite & np.isfinite(rel))
    assert res.grad is not None and ref.grad is not None
    g_err = metrics.grad_abs_err(res.grad, ref.grad, ref.grad_lo).reshape(s, r)
    g_max, _ = _max_med(g_err, finite & np.isfinite(g_err))
    # error of the batch-mean loss (what reduction="mean" reports): sum of signed row errors
    loss64 = np.asarray(res.loss, dtype=np.float64).reshape(s, r)
    hi = ref_loss.reshape(s, r)
    lo = np.zeros_like(hi) if ref_lo is None else ref_lo.reshape(s, r)
    mean_rel: list[float | None] = []
    for i in range(s):
        f = finite[i]
        if not f.any() or nl[i][f].any():
            mean_rel.append(None)  # a non-finite row makes the mean non-finite: counted apart
            continue
        num = abs(float(np.sum((loss64[i][f] - hi[i][f]) - lo[i][f])))
        den = abs(float(np.sum(hi[i][f]) + np.sum(lo[i][f])))
        mean_rel.append(num / den if den > 0 else (0.0 if num == 0 else None))
    return {
        "loss_median_bits": med_bits,
        "loss_max_bits": max_bits,
        "loss_max_excess_bits": max_excess,
        "loss_median_rel_err": med_rel,
        "loss_max_rel_err": max_rel,
        "mean_loss_rel_err": mean_rel,
        "grad_max_abs_err": g_max,
    }


def is_broken(st: ScaleStats, kind: str, max_bits: float) -> bool:
    if kind == "overflow":
        return bool(st.overflow_frac)
    if kind == "nonfinite_loss":
        return bool(st.nonfinite_loss_frac)
    if kind == "nonfinite_grad":
        return bool(st.nonfinite_grad_frac)
    return st.loss_max_excess_bits is not None and st.loss_max_excess_bits > max_bits


def cell_verdict(st: ScaleStats, max_bits: float) -> str:
    if st.rows == 0:
        return "inconclusive"
    if any(is_broken(st, k, max_bits) for k in ("overflow", "nonfinite_loss", "nonfinite_grad")):
        return "broken"
    return "lossy" if is_broken(st, "precision", max_bits) else "ok"
