"""Where a gradient is checked and how it is judged: the probes (coordinates and random directions),
the truth at them, the working-dtype consistency check, and each method's errors against the
tolerance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .core import reference_of
from .errors import UsageError
from .gradcheck_report import (
    Consistency,
    MethodCheck,
    Truth,
    WorstEntry,
)
from .gradcheck_truth import (
    COMPLEX_STEP,
    COMPLEX_STEP_BINARY128,
    _arith,
    _two_diff,
    central_difference,
    complex_step,
    complex_step_binary128,
    variant_central_difference,
    variant_complex_step,
    variant_complex_step_binary128,
)
from .methods import MethodFn
from .precisions import Precision, get_precision
from .prepare import prepare_input
from .reference import reference_precision_name
from .variants import Variant

#: Default (atol, rtol) per working dtype. A correct fused gradient errs by about
#: (2 + log2(C) * eps(accum) / eps) * eps per entry (shift, exp, division, p_y - 1, the sum's
#: tree); these leave room for that at any C up to 2**20 and for accumulation in the working
#: dtype, and are still far below any formula bug (a missing -onehot or a sign flip is O(p)).
#: 16/8-bit: JAX's check_grads table (float16 1e-2, bfloat16 and float8 1e-1) where a correct
#: fused gradient fits it; float8 needs about 2 eps.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-13, 1e-13),
    "float32": (1e-5, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (1e-1, 1e-1),
    "float8_e4m3fn": (2.5e-1, 2.5e-1),
    "float8_e5m2": (5e-1, 5e-1),
}

#: The truth is trusted when complex step and central differences agree within this fraction of
#: every probe's tolerance (the dtype's default, or the given one where that is looser).
TRUTH_FRACTION = 0.1

#: Largest logits (as loss terms) one batch of the truth holds: ~2**21 complex128 = 32 MiB.
_BATCH_TERMS = 1 << 21

#: Logits per probe the working-dtype consistency check differences (rows are spread evenly).
CONSISTENCY_CELLS = 1 << 20

_TOP_LOGITS = 3

#: A gradient-producing function: (x (N, C) in the working dtype, labels (N,)) -> (loss, grad).
_Evaluator = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray | None, np.ndarray]]


def default_tolerance(working: str | Precision) -> tuple[float, float]:
    """(atol, rtol) used when none is given (:data:`DEFAULT_TOLERANCES`)."""
    return DEFAULT_TOLERANCES[get_precision(working).name]


def _select(x: np.ndarray, y: np.ndarray, sample: int, rng: np.random.Generator) -> np.ndarray:
    """(N, K) distinct classes per row, label first: label, argmax, argmin, the next largest
    logits, then a random sample. K = min(C, 3 + _TOP_LOGITS + sample), the same for every row."""
    n, c = x.shape
    k = min(c, 3 + _TOP_LOGITS + sample)
    if k == c:
        rest = np.argsort(rng.random((n, c)), axis=1)  # every class, label first below
        cand = np.concatenate([y[:, None], rest], axis=1)
    else:
        top = np.argpartition(-x, _TOP_LOGITS, axis=1)[:, : _TOP_LOGITS + 1]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(x, top, 1), axis=1), 1)
        rand = rng.integers(0, c, (n, 2 * sample))
        fill = (rng.integers(0, c, (n, 1)) + np.arange(k)) % c  # k distinct: never short
        cols = [y[:, None], x.argmax(axis=1)[:, None], x.argmin(axis=1)[:, None], top, rand, fill]
        cand = np.concatenate(cols, axis=1)
    # first occurrences, in order: a stable sort puts each value's first position first
    order = np.argsort(cand, axis=1, kind="stable")
    srt = np.take_along_axis(cand, order, 1)
    first_sorted = np.ones_like(srt, dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first = np.zeros_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, 1)
    keep = first & (np.cumsum(first, axis=1) <= k)
    return cand[keep].reshape(n, k)


def _directions(n: int, c: int, count: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((count, n, c))
    return v / np.linalg.norm(v, axis=2, keepdims=True)


def _row_chunks(n: int, terms_per_row: int) -> list[slice]:
    step = max(1, _BATCH_TERMS // max(terms_per_row, 1))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _rest_sum(x: np.ndarray, sel: np.ndarray, dt: np.dtype) -> np.ndarray:
    """sum_{j not in sel} exp(x_j - max x) per row, in ``dt`` (exact shifts)."""
    xf = np.asarray(x, dtype=np.float64)
    m = xf.max(axis=1)
    out = np.zeros(xf.shape[0], dtype=dt)
    mask = np.ones(xf.shape, dtype=bool)
    np.put_along_axis(mask, sel, False, 1)
    if not mask.any():
        return out
    for sl in _row_chunks(xf.shape[0], xf.shape[1]):
        # far-off classes underflow (exactly enough); numpy-quaddtype's sum raises a spurious
        # invalid flag on terms below ~1e-308 (its result is right)
        with np.errstate(under="ignore", invalid="ignore"):
            if dt == np.float64:
                d, r = _two_diff(xf[sl], m[sl, None])
                e = np.exp(d) * (1.0 + r)
            else:
                e = np.exp(xf[sl].astype(dt) - m[sl].astype(dt)[:, None])
            e[~mask[sl]] = 0
            out[sl] = e.sum(axis=1)
    return out


def _wide_truth(working: Precision) -> bool:
    """Whether the truth is the binary128 complex step (float64 work): complex128's ~1e-16
    relative error would be as large as the float64 error it measures."""
    return working.mantissa_bits > 24


def _truth_entries(
    x: np.ndarray, y: np.ndarray, sel: np.ndarray, working: Precision
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Complex step (the truth, and its low part: zeros unless float64) and central difference
    of every (row, selected class): (N, K) each."""
    n, k = sel.shape
    dt, _ = _arith(working)
    wide = _wide_truth(working)
    xs = np.take_along_axis(np.asarray(x, dtype=np.float64), sel, 1)
    y_pos = np.argmax(sel == y[:, None], axis=1)
    rest64 = None if wide else _rest_sum(x, sel, np.dtype(np.float64))
    rest_p = _rest_sum(x, sel, dt) if rest64 is None else rest64
    cs = np.empty((n, k))
    cs_lo = np.zeros((n, k))
    cd = np.empty((n, k))
    eye = np.eye(k)
    for sl in _row_chunks(n, k * k):
        rows = np.arange(sl.start, sl.stop)
        xb = np.repeat(xs[rows], k, axis=0)  # (rows * K, K): row r, probe j
        ub = np.tile(eye, (len(rows), 1))
        yb = np.repeat(y_pos[rows], k)
        rb = np.repeat(rest_p[rows], k)
        if rest64 is None:
            hi, lo = complex_step_binary128(xb, yb, ub, rb)
            cs[rows], cs_lo[rows] = hi.reshape(-1, k), lo.reshape(-1, k)
        else:
            cs[rows] = complex_step(xb, yb, ub, rb).reshape(-1, k)
        cd[rows] = central_difference(xb, yb, ub, working, rb).reshape(-1, k)
    return cs, cs_lo, cd


def _truth_directions(
    x: np.ndarray, y: np.ndarray, dirs: np.ndarray, working: Precision
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Complex step (with its low part, as :func:`_truth_entries`) and central difference
    along every direction: (D, N) each."""
    n, c = x.shape
    cs = np.empty(dirs.shape[:2])
    cs_lo = np.zeros(dirs.shape[:2])
    cd = np.empty(dirs.shape[:2])
    xf = np.asarray(x, dtype=np.float64)
    for sl in _row_chunks(n, c):
        for i in range(dirs.shape[0]):
            if _wide_truth(working):
                cs[i, sl], cs_lo[i, sl] = complex_step_binary128(xf[sl], y[sl], dirs[i, sl])
            else:
                cs[i, sl] = complex_step(xf[sl], y[sl], dirs[i, sl])
        if dirs.shape[0]:
            cd[:, sl] = central_difference(xf[sl], y[sl], dirs[:, sl], working)
    return cs, cs_lo, cd


def _variant_truth(
    x: np.ndarray,
    y: np.ndarray,
    sel: np.ndarray,
    dirs: np.ndarray,
    working: Precision,
    variant: Variant,
) -> tuple[np.ndarray, ...]:
    """:func:`_truth_entries` and :func:`_truth_directions` under a loss variant that changes
    values: (cs_e, lo_e, cd_e, cs_d, lo_d, cd_d).

    Every probe perturbs a full row (an entry is the direction e_j): the classes left out of a
    probe are transformed too (s z, c tanh), so the plain truth's shortcut of summing them once
    untransformed does not apply. Cost O(K C) per row, as the directions' O(D C).
    """
    n, c = x.shape
    k = sel.shape[1]
    xf = np.asarray(x, dtype=np.float64)
    wide = _wide_truth(working)

    def cs(xb: np.ndarray, yb: np.ndarray, ub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if wide:
            return variant_complex_step_binary128(xb, yb, ub, variant)
        return variant_complex_step(xb, yb, ub, variant), np.zeros(len(xb))

    cs_e, lo_e, cd_e = np.empty((n, k)), np.zeros((n, k)), np.empty((n, k))
    for sl in _row_chunks(n, k * c):
        rows = np.arange(sl.start, sl.stop)
        xb = np.repeat(xf[rows], k, axis=0)  # (rows * K, C): row r, probe j
        yb = np.repeat(y[rows], k)
        ub = np.zeros_like(xb)
        ub[np.arange(len(xb)), sel[rows].ravel()] = 1.0
        hi, lo = cs(xb, yb, ub)
        cs_e[rows], lo_e[rows] = hi.reshape(-1, k), lo.reshape(-1, k)
        cd_e[rows] = variant_central_difference(xb, yb, ub, variant).reshape(-1, k)
    cs_d, lo_d, cd_d = np.empty(dirs.shape[:2]), np.zeros(dirs.shape[:2]), np.empty(dirs.shape[:2])
    for sl in _row_chunks(n, c):
        for i in range(dirs.shape[0]):
            cs_d[i, sl], lo_d[i, sl] = cs(xf[sl], y[sl], dirs[i, sl])
        if dirs.shape[0]:
            cd_d[:, sl] = variant_central_difference(xf[sl], y[sl], dirs[:, sl], variant)
    return cs_e, lo_e, cd_e, cs_d, lo_d, cd_d


def _loss_noise(loss: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """Bound on the rounding error of a working-dtype loss: 2 eps (|L| + max|z| + log C + 1).

    The intermediates of every formulation (z - m, the log-sum-exp, an unshifted exp's argument)
    are at most that large and each loses about eps of its size.
    """
    big = np.abs(x).max(axis=1)
    return 2 * eps * (np.abs(loss) + big + math.log(x.shape[1]) + 1)


def _variant_bounds(
    x: np.ndarray, u: np.ndarray, spread: np.ndarray, variant: Variant
) -> tuple[np.ndarray, np.ndarray, float]:
    """Bounds on the third derivative L3 along u, the Hessian's norm over the plain loss's
    1/2, and the logits' growth max(1, |s|) for the noise, under a loss variant. The plain
    loss's bounds are for s = 1, no cap and no z-loss: with s = 2 its L3 is 8 times larger,
    and the check would call a correct method inconsistent.

    With a = |s|, b = |s|/c, r = max|u|: the first derivatives of z'' = c tanh(s z / c) move
    the logits by v with |v_j| <= R = a r, the second and third by |w_j| <= 0.77 a b r**2 and
    |q_j| <= 2 a b**2 r**3 (B = b r). By Faa di Bruno, L3 <= 0.0962 spread(v)**3
    + 3 spread(v) (1.54 R B) / 4 + 4 R B**2 (a third central moment, a covariance, a gradient
    of l1 norm <= 2). lse shares these bounds, with |lse'| <= R and |lse''| <= R**2 + 1.54 R B;
    lambda lse**2 adds 2 lambda (3 |lse'| |lse''| + |lse| L3), |lse| <= max|z''| + ln C.
    """
    a = abs(variant.logit_scale)
    b = 0.0 if variant.softcap is None else a / variant.softcap
    r = np.abs(u).max(axis=1)
    big_r, big_b = a * r, b * r
    sp = a * spread if variant.softcap is None else 2 * big_r
    ce3 = 0.0962 * sp**3 + 0.75 * sp * 1.54 * big_r * big_b + 4 * big_r * big_b**2
    zmax = a * np.abs(x).max(axis=1)
    if variant.softcap is not None:
        zmax = np.minimum(zmax, variant.softcap)
    lse = zmax + math.log(x.shape[1])
    lam = variant.z_loss
    m3 = ce3 + 2 * lam * (3 * big_r * (big_r**2 + 1.54 * big_r * big_b) + lse * ce3)
    hess = (a * a + 3.08 * a * b) * (1 + 2 * lam * (lse + 1))
    return m3, hess, max(a, 1.0)


def _consistency_block(
    fn: _Evaluator,
    x: np.ndarray,
    y: np.ndarray,
    loss0: np.ndarray,
    g0: np.ndarray,
    u: np.ndarray,
    working: Precision,
    atol: float,
    rtol: float,
    step: float | None,
    variant: Variant | None = None,
) -> dict[str, int]:
    """Central difference of the method's own loss, in the working dtype, along u (n, C).

    The points x +- t u are rounded to the working dtype and the step actually taken
    (delta = x+ - x-, exact) is what the gradient is dotted with. Error bound of the quotient:
    rounding (noise(L+) + noise(L-)) / 2t, truncation t**2/6 * |L'''| with
    |L'''| <= 0.0962 * (max u - min u)**3 (a third central moment), and the rounded points'
    off-centre (|x+ + x-|/2 - x) * |H| * |delta| / 2t with |H| <= 1/2.
    """
    eps = working.eps
    spread = u.max(axis=1) - u.min(axis=1)
    m3 = 0.0962 * spread**3
    hess, grow = np.ones(x.shape[0]), 1.0  # grow: the transformed logits' size over the input's
    if variant is not None and variant.changes_values:
        m3, hess, grow = _variant_bounds(x, u, spread, variant)
    if step is None:  # balance rounding noise/t against truncation t**2 m3 / 6
        # m3 = 0 only for C = 1 (L is constant): any step will do, take a coordinate's
        curv = np.where(m3 > 0, m3, 0.0962)
        t = np.exp2(np.round(np.log2((3 * _loss_noise(loss0, x * grow, eps) / curv) ** (1 / 3))))
    else:
        t = np.full(x.shape[0], float(step))
    # rounding the points to the working dtype may overflow: that is a finding (inf), not noise
    with np.errstate(over="ignore", invalid="ignore"):
        xp = (x + t[:, None] * u).astype(working.dtype)
        xm = (x - t[:, None] * u).astype(working.dtype)
    lp, _ = fn(xp, y)
    lm, _ = fn(xm, y)
    assert lp is not None and lm is not None
    lp64, lm64 = lp.astype(np.float64), lm.astype(np.float64)
    xp64, xm64 = xp.astype(np.float64), xm.astype(np.float64)
    delta = xp64 - xm64
    # inf - inf in non-finite rows gives NaN: those rows are counted as non-finite below
    with np.errstate(invalid="ignore", over="ignore"):
        fd = (lp64 - lm64) / (2 * t)
        pred = (g0 * delta).sum(axis=1) / (2 * t)
        off = 0.5 * hess * np.linalg.norm(0.5 * (xp64 + xm64) - x, axis=1)
        bound = (
            (_loss_noise(lp64, xp64 * grow, eps) + _loss_noise(lm64, xm64 * grow, eps)) / (2 * t)
            + t**2 / 6 * m3
            + off * np.linalg.norm(delta, axis=1) / (2 * t)
        )
        finite = np.isfinite(fd) & np.isfinite(pred) & np.isfinite(bound)
        finite &= np.isfinite(loss0) & np.isfinite(g0).all(axis=1)
        below = finite & ~(delta != 0).any(axis=1)
        diff = np.abs(fd - pred)
        bad = finite & ~below & (diff > bound + atol + rtol * np.abs(pred))
        resolved = bound <= 0.25 * np.maximum(np.abs(pred), np.abs(fd)) + atol
        good = finite & ~below & ~bad & resolved
    return {
        "consistent": int(np.count_nonzero(good)),
        "inconsistent": int(np.count_nonzero(bad)),
        "inconclusive": int(np.count_nonzero(finite & ~bad & ~good)),
        "below_resolution": int(np.count_nonzero(below)),
        "nonfinite": int(np.count_nonzero(~finite)),
    }


def _consistency(
    fn: _Evaluator | None,
    x: np.ndarray,
    y: np.ndarray,
    loss0: np.ndarray | None,
    g0: np.ndarray,
    dirs: np.ndarray,
    working: Precision,
    atol: float,
    rtol: float,
    step: float | None,
    variant: Variant | None = None,
) -> Consistency:
    """The working-dtype check along the label coordinate and direction 0.

    It runs on at most ``CONSISTENCY_CELLS // C`` rows spread evenly over the input: each probe
    evaluates the method twice on whole rows, the costliest part in 16-bit dtypes.
    """
    rule = f"h = {step:g}" if step is not None else "h = (3 noise(L) / |L'''|)**(1/3)"
    if fn is None or loss0 is None:
        return Consistency("unavailable", 0, 0, 0, 0, 0, 0, rule)
    n, c = x.shape
    take = np.unique(np.linspace(0, n - 1, min(n, max(1, CONSISTENCY_CELLS // c))).astype(int))
    xf = x[take].astype(np.float64)
    yt, l0, gt = y[take], loss0[take].astype(np.float64), g0[take]
    total = dict.fromkeys(
        ("consistent", "inconsistent", "inconclusive", "below_resolution", "nonfinite"), 0
    )
    for sl in _row_chunks(len(take), 4 * c):
        label = np.zeros((sl.stop - sl.start, c))
        label[np.arange(sl.stop - sl.start), yt[sl]] = 1.0
        probes = [label, dirs[0, take[sl]]] if dirs.shape[0] else [label]
        for u in probes:
            got = _consistency_block(
                fn, xf[sl], yt[sl], l0[sl], gt[sl], u, working, atol, rtol, step, variant
            )
            for key, val in got.items():
                total[key] += val
    if total["inconsistent"]:
        verdict = "inconsistent"
    elif total["nonfinite"]:
        verdict = "nonfinite"
    elif total["consistent"]:
        verdict = "consistent"
    else:
        verdict = "inconclusive"
    return Consistency(verdict, len(take), *total.values(), rule)  # type: ignore[arg-type,call-arg]


def _evaluator(fn: MethodFn, working: Precision, accum: Precision) -> _Evaluator:
    def run(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        out = fn(x, y, working, accum)
        if out.grad is None or out.grad.shape != x.shape:
            raise UsageError("a method must return a gradient of the logits' shape")
        return out.loss, out.grad

    return run


def _ratio(err: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """err / tol with 0/0 = 0 and x/0 = inf (a zero tolerance demands exact equality)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(err == 0, 0.0, err / tol)


def _mixed(err: np.ndarray, ref: np.ndarray) -> float:
    """max err / max(1, |ref|): absolute below magnitude 1, relative above."""
    if err.size == 0:
        return 0.0
    return float(np.max(err / np.maximum(1.0, np.abs(ref))))


def _max_or_none(a: np.ndarray) -> float | None:
    return float(a.max()) if a.size else None


def _pick_rows(x: np.ndarray, y: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` positions: the largest margin max(z) - z_y and the largest max|z| first (where
    gradients break), then a seeded random sample; returned in input order."""
    xf = np.asarray(x, dtype=np.float64)
    margin = xf.max(axis=1) - xf[np.arange(len(y)), y]
    first = [int(np.argmax(margin)), int(np.argmax(np.abs(xf).max(axis=1)))]
    others = rng.permutation(len(y))
    order = list(dict.fromkeys([*first, *others.tolist()]))[:rows]
    return np.sort(np.array(order, dtype=np.int64))


@dataclass(frozen=True)
class _Probes:
    """Where derivatives are checked (rows, classes, directions) and the witnesses there."""

    row_ids: np.ndarray  # (N,) input row of each checked row
    y: np.ndarray  # (N,) its label
    cases: list[str] | None  # synthetic case of each input row
    sel: np.ndarray  # (N, K) classes checked, per row
    dirs: np.ndarray  # (D, N, C) unit directions
    cs_e: np.ndarray  # (N, K) complex step: the truth
    cs_d: np.ndarray  # (D, N)
    lo_e: np.ndarray  # the truth's low parts (float64 work: truth = cs + lo), else zeros
    lo_d: np.ndarray
    cd_e: np.ndarray  # central differences
    cd_d: np.ndarray
    ref_e: np.ndarray  # the reference gradient
    ref_d: np.ndarray
    l1: np.ndarray  # (D, N) |v|_1
    gabs: np.ndarray  # (D, N) |v| . |g_ref|

    def tolerances(self, atol: float, rtol: float) -> tuple[np.ndarray, np.ndarray]:
        """atol + rtol |g*| per entry; atol |v|_1 + rtol |v| . |g*| per direction."""
        return atol + rtol * np.abs(self.cs_e), atol * self.l1 + rtol * self.gabs

    def entry(
        self,
        method: str,
        flat: int,
        values: tuple[np.ndarray, np.ndarray],
        tols: tuple[np.ndarray, np.ndarray],
        ratio: float,
    ) -> WorstEntry:
        """Derivative ``flat`` (entries first, then directions) as a report entry."""
        n, k = self.sel.shape
        if flat < n * k:
            i, j = divmod(flat, k)
            probe, at = f"class {int(self.sel[i, j])}", (0, i, j)
        else:
            d, i = divmod(flat - n * k, n)
            probe, at = f"direction {d}", (1, d, i)
        side, a, b = at
        t = (self.cs_e, self.cs_d)[side][a, b]
        t_lo = (self.lo_e, self.lo_d)[side][a, b]
        v, tl = values[side][a, b], tols[side][a, b]
        rid = int(self.row_ids[i])
        return WorstEntry(
            method=method,
            row=rid,
            label=int(self.y[i]),
            case=None if self.cases is None else self.cases[rid],
            probe=probe,
            truth=float(t),
            value=float(v),
            abs_err=float(abs((v - t) - t_lo)) if np.isfinite(v) else None,
            tol=float(tl),
            ratio=ratio,
        )


def _probe(
    x: np.ndarray,
    y: np.ndarray,
    row_ids: np.ndarray,
    cases: Sequence[str] | None,
    working: Precision,
    full: bool,
    sample: int,
    directions: int,
    rng: np.random.Generator,
    variant: Variant | None = None,
) -> _Probes:
    """Choose the probes and compute the truth and both witnesses there (of the loss
    ``variant``, constants already rounded to the carrier, when it changes values)."""
    n, c = x.shape
    sel = np.tile(np.arange(c), (n, 1)) if full else _select(x.astype(np.float64), y, sample, rng)
    dirs = _directions(n, c, directions, rng)
    if variant is not None and variant.changes_values:
        cs_e, lo_e, cd_e, cs_d, lo_d, cd_d = _variant_truth(x, y, sel, dirs, working, variant)
    else:
        cs_e, lo_e, cd_e = _truth_entries(x, y, sel, working)
        cs_d, lo_d, cd_d = _truth_directions(x, y, dirs, working)
    v = variant or Variant()
    ref = reference_of(
        prepare_input(
            x, y, dtype=working, z_loss=v.z_loss, softcap=v.softcap,
            logit_scale=v.logit_scale, smoothing_convention=v.smoothing_convention,
        )
    )  # fmt: skip
    assert ref.grad is not None
    g_ref = ref.grad if ref.grad_lo is None else ref.grad + ref.grad_lo
    return _Probes(
        row_ids=row_ids,
        y=y,
        cases=None if cases is None else list(cases),
        sel=sel,
        dirs=dirs,
        cs_e=cs_e,
        cs_d=cs_d,
        lo_e=lo_e,
        lo_d=lo_d,
        cd_e=cd_e,
        cd_d=cd_d,
        ref_e=np.take_along_axis(g_ref, sel, 1),
        ref_d=(dirs * g_ref).sum(axis=2),
        l1=np.abs(dirs).sum(axis=2),
        gabs=(np.abs(dirs) * np.abs(g_ref)).sum(axis=2),
    )


def _judge_truth(
    p: _Probes, working: Precision, atol: float, rtol: float, variant: Variant | None = None
) -> Truth:
    """How well complex step, central differences and the reference agree.

    The truth is judged against the dtype's default tolerance, or the given one where looser: a
    tolerance of 0 cannot be met by any truth, and that says nothing about the truth.
    """
    a_def, r_def = default_tolerance(working)
    trust_e, trust_d = p.tolerances(max(atol, a_def), max(rtol, r_def))

    def worst(gap_e: np.ndarray, gap_d: np.ndarray) -> tuple[float, float]:
        mixed = max(_mixed(gap_e, p.cs_e), _mixed(gap_d, p.cs_d))
        frac = max(_max_or_none(_ratio(gap_e, trust_e)) or 0.0,
                   _max_or_none(_ratio(gap_d, trust_d)) or 0.0)  # fmt: skip
        return mixed, frac

    agreement, fraction = worst(np.abs(p.cs_e - p.cd_e), np.abs(p.cs_d - p.cd_d))
    ref_agreement, ref_fraction = worst(np.abs(p.ref_e - p.cs_e), np.abs(p.ref_d - p.cs_d))
    cd_arith = "float64 with exact shifts" if working.mantissa_bits <= 24 else "binary128"
    cs = f"complex step in complex128, h = 2**{int(math.log2(COMPLEX_STEP))}"
    if _wide_truth(working):
        h128 = int(math.log2(COMPLEX_STEP_BINARY128))
        cs = f"complex step in binary128, h = 2**{h128}, kept as a double-double"
    cd = f"central differences in {cd_arith}, Richardson on h and h/2, h = (u (1 + ln C))**(1/5)"
    if variant is not None and variant.changes_values:
        cs += f", of the variant ({variant.describe()}) in complex arithmetic"
        cd = (
            "central differences of the variant's binary128 reference loss, Richardson on h "
            "and h/2, h = (u (1 + ln C))**(1/5) / max(1, |s|, |s|/c)"
        )
    return Truth(
        complex_step=cs,
        central_difference=cd,
        reference=reference_precision_name(working, variant),
        agreement=agreement,
        reference_agreement=ref_agreement,
        worst_fraction=fraction,
        reference_fraction=ref_fraction,
        probes=int(p.cs_e.size + p.cs_d.size),
        ok=p.sel.shape[0] > 0 and fraction <= TRUTH_FRACTION,
    )


def _check_method(
    name: str,
    grad: np.ndarray,
    p: _Probes,
    working: Precision,
    atol: float,
    rtol: float,
    top: int,
) -> tuple[MethodCheck, list[WorstEntry]]:
    """One gradient (N, C) against the truth at the probes; its worst entries, one per row.

    The returned check's consistency is a placeholder ("unavailable") for the caller to fill.
    """
    n = p.sel.shape[0]
    tol_e, tol_d = p.tolerances(atol, rtol)
    g64 = np.asarray(grad).astype(np.float64)
    vals_e = np.take_along_axis(g64, p.sel, 1)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: counted below
        vals_d = (p.dirs * g64).sum(axis=2)
        fin_e, fin_d = np.isfinite(vals_e), np.isfinite(vals_d)
        # (v - t) - t_lo: the first difference is exact where v is near t (Sterbenz), so a
        # float64 error is measured below float64's ulp; t_lo = 0 for narrower dtypes
        err_e = np.where(fin_e, np.abs((vals_e - p.cs_e) - p.lo_e), np.inf)
        err_d = np.where(fin_d, np.abs((vals_d - p.cs_d) - p.lo_d), np.inf)
    r_e, r_d = _ratio(err_e, tol_e), _ratio(err_d, tol_d)
    # relative and ulp errors need a truth with full relative accuracy: a normal number of the
    # working dtype, and one whose complex128 step exp(d) h was not subnormal (the binary128
    # step of float64 work keeps its accuracy far below)
    floor = working.smallest_normal
    if not _wide_truth(working):
        floor = max(floor, float(np.finfo(np.float64).smallest_normal) / COMPLEX_STEP)
    normal = fin_e & (np.abs(p.cs_e) >= floor)
    ulps = err_e[normal] / working.ulp(p.cs_e[normal])
    failed_e = int(np.count_nonzero(r_e > 1))
    failed_d = int(np.count_nonzero(r_d > 1))
    nonfinite_rows = int(np.count_nonzero(~np.isfinite(g64).all(axis=1)))
    r_all = np.concatenate([r_e.ravel(), r_d.ravel()])
    ranked: list[WorstEntry] = []
    if r_all.size:
        # the worst entries, one per row (a NaN row would fill the list alone)
        order = np.argsort(-r_all, kind="stable")
        k, d = p.sel.shape[1], p.cs_d.shape[0]
        row_of = np.concatenate([np.repeat(np.arange(n), k), np.tile(np.arange(n), d)])
        _, at = np.unique(row_of[order], return_index=True)
        picks = order[np.sort(at)][: max(top, 1)]
        ranked = [
            p.entry(name, int(f), (vals_e, vals_d), (tol_e, tol_d), float(r_all[f])) for f in picks
        ]
    check = MethodCheck(
        name=name,
        gated=False,
        passed=n > 0 and failed_e == 0 and failed_d == 0 and nonfinite_rows == 0,
        checked_entries=int(p.cs_e.size),
        failed_entries=failed_e,
        nonfinite_entries=int(np.count_nonzero(~fin_e)),
        checked_directions=int(p.cs_d.size),
        failed_directions=failed_d,
        nonfinite_grad_rows=nonfinite_rows,
        max_abs_err=_max_or_none(err_e[fin_e]),
        max_rel_err=_max_or_none(err_e[normal] / np.abs(p.cs_e[normal])),
        max_ulp_err=_max_or_none(ulps),
        max_bits_err=None if not ulps.size else float(np.log2(ulps.max() + 1)),
        max_dir_err=_max_or_none(err_d[fin_d]),
        worst=ranked[0] if ranked else None,
        consistency=Consistency("unavailable", 0, 0, 0, 0, 0, 0, ""),
    )
    return check, ranked[:top]
