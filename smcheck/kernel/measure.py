"""One outcome against the reference: the loss error in ulps of max(|L*|, 1), the gradient's
max_j |g_j - g*_j| (scaled back per row), and the hard problems (non-finite, padding, ignored
rows)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import dims
from ._base import WORST_ROWS, Precision, Prepared, loss_gate_err, reference_of
from .frameworks import _Outcome
from .report import WorstRow

# --- measuring one outcome against the reference ------------------------------------------------


@dataclass(frozen=True)
class _Measure:
    loss_ulp: float  # inf: non-finite where the reference is finite (or a wrong shape)
    grad_err: float | None  # None: no gradient to measure
    problems: tuple[str, ...]  # hard failures whatever the judge
    worst: tuple[WorstRow, ...]


@dataclass(frozen=True)
class _Truth:
    """The reference of one case's rows (float64; ignored rows 0)."""

    prep: Prepared
    loss: np.ndarray  # (N,) hi + lo
    loss_hi: np.ndarray
    loss_lo: np.ndarray | None
    grad: np.ndarray  # (N, C)
    defined: np.ndarray  # (N,) rows with an answer (no NaN/+inf input)


def _truth(prep: Prepared) -> _Truth:
    ref = reference_of(prep)
    assert ref.grad is not None
    ign = prep.ignored
    hi = np.where(ign, 0.0, ref.loss)
    lo = None if ref.loss_lo is None else np.where(ign, 0.0, ref.loss_lo)
    grad = ref.grad if ref.grad_lo is None else ref.grad + ref.grad_lo
    grad = np.where(ign[:, None], 0.0, grad)
    loss = hi if lo is None else hi + lo
    return _Truth(prep, loss, hi, lo, grad, ~np.isnan(ref.loss) | ign)


def _ulps(value: np.ndarray, exact: np.ndarray, t: Precision) -> np.ndarray:
    """The gate metric of every command (:func:`~smcheck.metrics.loss_gate_err`: |L - L*| in
    ulps of max(|L*|, 1) of T), then :func:`_judge_nonfinite`: a probe has no row to leave
    uncounted."""
    return _judge_nonfinite(loss_gate_err(value, exact, t), value, exact)


def _judge_nonfinite(err: np.ndarray, value: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """The kernel's step after the gate metric, which is NaN where either loss is non-finite
    (eval counts those rows apart): the reference's own infinity returned exactly costs 0
    ulps; any other disagreement in finiteness - ``inf`` or NaN for a finite L*, a finite value
    for an infinite L* - is infinitely wrong (``inf``), so that no limit passes it.

    >>> _judge_nonfinite(np.array([np.nan, np.nan, 2.0]), np.array([np.inf, np.nan, 1.0]),
    ...                  np.array([np.inf, 3.0, 1.0]))
    array([ 0., inf,  2.])
    """
    same_inf = np.isinf(exact) & (value == exact)
    return np.where(same_inf, 0.0, np.where(np.isnan(err), np.inf, err))


def _measure(
    out: _Outcome, truth: _Truth, reduction: str, cot: np.ndarray | None, real_vocab: int
) -> _Measure:
    """The loss error (ulps) and gradient error of one outcome, and its hard problems."""
    prep, t = truth.prep, truth.prep.working
    n, c = prep.x.shape
    assert out.loss is not None
    problems: list[str] = []
    worst: list[WorstRow] = []
    labels = prep.labels if prep.labels is not None else np.zeros(n, dtype=np.int64)
    if out.loss.shape == (n,):
        err = _ulps(out.loss, truth.loss, t)
        err = np.where(truth.defined, err, 0.0)
        loss_ulp = float(err.max()) if n else 0.0
        bad = truth.defined & np.isfinite(truth.loss) & ~np.isfinite(out.loss)
        if bad.any():
            problems.append(f"non-finite loss in {int(bad.sum())} of {n} rows")
        worst.extend(
            WorstRow(int(i), int(labels[i]), float(out.loss[i]), float(truth.loss[i]),
                     float(err[i]))
            for i in np.argsort(-err, kind="stable")[:WORST_ROWS]
            if err[i] > 0
        )  # fmt: skip
        scale = np.ones(n) if cot is None else cot
    elif out.loss.shape == ():
        value = float(out.loss)
        total = math.fsum(truth.loss_hi[truth.defined]) + (
            0.0 if truth.loss_lo is None else math.fsum(truth.loss_lo[truth.defined])
        )
        denominator = prep.mean_denominator if reduction == "mean" else 1.0
        if not truth.defined.all():  # a NaN row makes any reduction NaN: nothing to measure
            loss_ulp = 0.0
        elif denominator == 0:  # every row ignored: NaN (PyTorch) or 0 (optax) both accepted
            loss_ulp = 0.0 if (math.isnan(value) or value == 0) else math.inf
            if loss_ulp:
                problems.append(f"every row ignored gave loss {value:.8g}, expected NaN or 0")
        else:
            exact = total / denominator
            loss_ulp = float(_ulps(np.array([value]), np.array([exact]), t)[0])
            if not math.isfinite(value) and math.isfinite(exact):
                problems.append(f"non-finite {reduction} loss {value}")
            if loss_ulp > 0:
                worst.append(WorstRow(-1, -1, value, exact, loss_ulp))
        scale = np.full(n, 1.0 / denominator if denominator else 1.0)
    else:
        want = f"a scalar or {n} values (one per row)"
        problem = f"loss has shape {dims(out.loss.shape)}, expected {want}"
        return _Measure(math.inf, None, (problem,), ())
    grad_err = None
    if out.grad is not None:
        g = out.grad
        if g.shape != (n, c):
            problems.append(f"gradient has shape {dims(g.shape)}, expected {n} x {c}")
        else:
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                d = np.abs(g / scale[:, None] - truth.grad)
            d = np.where(np.isnan(d), np.inf, d)
            d = np.where(truth.defined[:, None], d, 0.0)
            per_row = d.max(axis=1) if c else np.zeros(n)
            grad_err = float(per_row.max()) if n else 0.0
            finite_ref = np.isfinite(truth.grad).all(axis=1) & truth.defined
            nf = finite_ref & ~np.isfinite(g).all(axis=1)
            if nf.any():
                problems.append(f"non-finite gradient in {int(nf.sum())} of {n} rows")
            if real_vocab and real_vocab < c:
                pad = np.abs(g[truth.defined, real_vocab:])
                if np.any(pad != 0):
                    top = float(np.max(np.where(np.isnan(pad), np.inf, pad)))
                    problems.append(f"nonzero gradient in the -inf padding columns (max |g| "
                                    f"{top:.3g})")  # fmt: skip
            if prep.ignored.any():
                rows = prep.ignored & truth.defined
                if np.any(g[rows] != 0):
                    problems.append("nonzero gradient on ignored rows")
    return _Measure(loss_ulp, grad_err, tuple(problems), tuple(worst))
