"""The chunk kernel and its merge: any number of rows in bounded memory, same answer every time.

:func:`chunk_stats` takes one block of rows and returns :class:`ChunkStats`, partial statistics
that :func:`merge` combines. Every field merges *exactly* - integer counts, maxima with the row
that holds them (ties go to the lowest row), integer histograms, exact sums and a worst-rows
list with a total order - so the merge is associative and commutative and the result of
:func:`run` is bit-for-bit the same for any chunk size, worker count or merge order.

* **Exact sums.** The mean loss (what training sees) is compared with the reference's through
  :class:`ExactSum`: every float64 is split into an integer significand and a power of two, the
  significands are added exactly per exponent in integers, and the total is one Python integer
  scaled by 2**-1126. The relative error of the mean is computed from the exact rationals and
  rounded once.
* **Medians.** Per-row errors go into a fixed histogram whose bins are the float64 exponent plus
  the 5 leading significand bits: 32 bins per octave. A quantile read from it is its bin's lower
  edge q, and the exact order statistic lies in [q, q * (1 + 2**-5)): within 3.1 % below it.
  Exact zeros (and subnormals) read as 0.
* **Label-free mode** (no labels): the loss of every (row, class) pair is measured; all counts
  and errors are over pairs. The gradient softmax - onehot(k) is checked for every class k when
  there are at most :data:`FULL_GRAD_CLASSES` classes (each row expanded into C labelled rows);
  above that for a fixed subset per row: argmax, argmin and :data:`RANDOM_GRAD_LABELS`
  pseudo-random classes (splitmix64 of the row index, so the same for any chunking).
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import partial, reduce

import numpy as np

from .core import CrossEntropyResult, Prepared, prepare, reference_of, run_method
from .memmaps import release_pages
from .methods import METHODS, SHARED_SOFTMAX_METHODS, ShiftedSoftmax, shifted_softmax
from .metrics import loss_abs_err, loss_rel_err, loss_ulp_err
from .precisions import CastReport, Precision, accumulate, round_in, to_carrier
from .reference import ReferenceOutput, reference_block

__all__ = [
    "FULL_GRAD_CLASSES",
    "NUMERICS_BLOCK",
    "HIST_BINS",
    "Histogram",
    "RANDOM_GRAD_LABELS",
    "ChunkStats",
    "EngineConfig",
    "ExactSum",
    "can_fork",
    "Extreme",
    "OVERFLOW_CAUSES",
    "InputStats",
    "MethodStats",
    "PerRowBlock",
    "WorstRows",
    "chunk_rows_for",
    "chunk_stats",
    "grad_errors",
    "grad_errors_many",
    "hist_quantile",
    "merge",
    "overflow_causes",
    "release_pages",
    "run",
    "total_of",
    "underflow_margin",
]

#: Significand bits kept by the error histogram: 2**5 = 32 bins per octave.
HIST_SUB_BITS = 5
_HIST_SHIFT = 52 - HIST_SUB_BITS
#: Number of histogram bins: every non-negative float64 (inf included) has one.
HIST_BINS = 1 << (11 + HIST_SUB_BITS)

#: Default logits per sub-block of a chunk's numerics (:attr:`EngineConfig.block_values`):
#: the reference, the methods and the gradient comparison of 2**19 logits keep their
#: temporaries at a few MiB each, while a chunk holds enough rows that the per-chunk work
#: (statistics, histograms, merging) stays small per row. Measured on 4096 x 32000 float32,
#: 2**15..2**21: 2**19 was fastest (smaller blocks pay Python overhead per block).
NUMERICS_BLOCK = 1 << 19

#: Label-free: at most this many classes, the gradient is checked for every class of every row.
FULL_GRAD_CLASSES = 32
#: Label-free with more classes: pseudo-random classes checked per row, besides argmax and argmin.
RANDOM_GRAD_LABELS = 3

# float64 x = m * 2**(E - 53) with m an integer, |m| < 2**53, E >= -1073 (np.frexp's exponent);
# x * 2**_SUM_SCALE is therefore an integer for every finite float64
_SUM_SCALE = 1126
_SUM_SPLIT = 26  # significand halves of < 2**27: a float64 bincount of 2**26 of them is exact
_SUM_SLICE = 1 << 24


@dataclass(frozen=True)
class ExactSum:
    """An exact sum of float64 values: ``num * 2**-1126`` (``num`` a Python int) and a count.

    >>> s = ExactSum.of(np.array([1e16, 1.0, -1e16]))
    >>> float(s.value()), s.count
    (1.0, 3)
    """

    num: int = 0
    count: int = 0

    @staticmethod
    def of(values: np.ndarray) -> ExactSum:
        """The exact sum of finite float64 ``values`` (1-D)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        num = 0
        for start in range(0, v.size, _SUM_SLICE):
            part = v[start : start + _SUM_SLICE]
            frac, expo = np.frexp(part)
            m = np.ldexp(frac, 53).astype(np.int64)  # exact: |m| < 2**53
            hi = m >> _SUM_SPLIT  # floor division: hi * 2**26 + lo == m, 0 <= lo < 2**26
            lo = m - (hi << _SUM_SPLIT)
            exps, inv = np.unique(expo, return_inverse=True)
            sum_hi = np.bincount(inv, weights=hi.astype(np.float64), minlength=exps.size)
            sum_lo = np.bincount(inv, weights=lo.astype(np.float64), minlength=exps.size)
            for e, h, low in zip(exps.tolist(), sum_hi.tolist(), sum_lo.tolist(), strict=True):
                num += ((int(h) << _SUM_SPLIT) + int(low)) << (e - 53 + _SUM_SCALE)
        return ExactSum(num, int(v.size))

    def __add__(self, other: ExactSum) -> ExactSum:
        return ExactSum(self.num + other.num, self.count + other.count)

    def value(self) -> Fraction:
        """The exact sum as a rational."""
        return Fraction(self.num, 1 << _SUM_SCALE)


@dataclass(frozen=True)
class Extreme:
    """A maximum and where it is: ``row`` (global) and ``col`` (class, label-free; else -1).

    ``value`` is NaN when nothing was measured. Ties go to the lowest (row, col).
    """

    value: float = math.nan
    row: int = -1
    col: int = -1

    @staticmethod
    def of(values: np.ndarray, rows: np.ndarray, cols: np.ndarray | None = None) -> Extreme:
        """Largest finite value of ``values`` (NaN and inf are counted elsewhere)."""
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.any():
            return Extreme()
        best = v[ok].max()
        # first occurrence in row-major order: the lowest (row, col) among ties
        i = int(np.flatnonzero(ok & (v == best))[0])
        col = -1 if cols is None else int(cols[i])
        return Extreme(float(best), int(rows[i]), col)

    def __add__(self, other: Extreme) -> Extreme:
        if math.isnan(other.value):
            return self
        if math.isnan(self.value):
            return other
        a = (-self.value, self.row, self.col)
        b = (-other.value, other.row, other.col)
        return self if a <= b else other


@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts of values in the fixed log-scale bins, stored sparsely: sorted bin numbers and
    their counts (a bin is the float64's exponent and 5 leading significand bits)."""

    bins: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @staticmethod
    def of(values: np.ndarray) -> Histogram:
        """Histogram of the non-negative, non-NaN ``values`` (NaN is not binned)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        idx = np.abs(v).view(np.int64) >> _HIST_SHIFT
        bins, counts = np.unique(idx, return_counts=True)
        return Histogram(bins.astype(np.int64), counts.astype(np.int64))

    def __add__(self, o: Histogram) -> Histogram:
        if not o.bins.size:
            return self
        if not self.bins.size:
            return o
        bins, inv = np.unique(np.concatenate([self.bins, o.bins]), return_inverse=True)
        counts = np.zeros(bins.size, np.int64)
        np.add.at(counts, inv, np.concatenate([self.counts, o.counts]))
        return Histogram(bins, counts)

    def __eq__(self, o: object) -> bool:
        if not isinstance(o, Histogram):
            return NotImplemented
        return np.array_equal(self.bins, o.bins) and np.array_equal(self.counts, o.counts)

    @property
    def total(self) -> int:
        """Number of values binned."""
        return int(self.counts.sum())


def _hist(values: np.ndarray) -> Histogram:
    return Histogram.of(values)


def hist_quantile(hist: Histogram, q: float) -> float | None:
    """The lower ``q``-quantile of the binned values, as its bin's lower edge; None if empty.

    The exact order statistic v satisfies ``result <= v < result * (1 + 2**-5)``. Bin 0 (exactly 0
    and subnormals) reads as 0.0; the bin of inf as inf.

    >>> h = _hist(np.array([0.0, 1.0, 1.0, 3.1]))
    >>> hist_quantile(h, 0.5), hist_quantile(h, 1.0)
    (1.0, 3.0625)
    """
    total = hist.total
    if total == 0:
        return None
    rank = min(int(math.floor(q * (total - 1))), total - 1)  # lower quantile, 0-based
    b = int(hist.bins[int(np.searchsorted(np.cumsum(hist.counts), rank + 1))])
    if b == 0:
        return 0.0
    return float(np.array(b << _HIST_SHIFT, dtype=np.int64).view(np.float64))


@dataclass(frozen=True)
class MethodStats:
    """Partial statistics of one method over the eligible rows (pairs, label-free) of a chunk."""

    measured: int = 0  # eligible rows/pairs whose reference loss is finite
    nan_loss: int = 0
    inf_loss: int = 0
    overflow: int = 0
    underflow: int = 0
    grad_checked: int = 0  # rows/pairs whose gradient was compared
    nonfinite_grad: int = 0
    loss_rel: Extreme = Extreme()
    loss_ulp: Extreme = Extreme()
    loss_gate: Extreme = Extreme()  # ulps of max(|L*|, 1): what --max-loss-ulp gates
    grad_abs: Extreme = Extreme()
    grad_rel: Extreme = Extreme()
    rel_hist: Histogram = field(default_factory=Histogram)
    ulp_hist: Histogram = field(default_factory=Histogram)
    loss_sum: ExactSum = ExactSum()  # finite losses over measured rows
    ref_sum: ExactSum = ExactSum()  # reference losses (hi + lo) over the same rows
    # overflow rows by what overflowed first, in the order of OVERFLOW_CAUSES
    overflow_causes: tuple[int, ...] = (0,) * 5

    def __add__(self, o: MethodStats) -> MethodStats:
        return MethodStats(
            self.measured + o.measured,
            self.nan_loss + o.nan_loss,
            self.inf_loss + o.inf_loss,
            self.overflow + o.overflow,
            self.underflow + o.underflow,
            self.grad_checked + o.grad_checked,
            self.nonfinite_grad + o.nonfinite_grad,
            self.loss_rel + o.loss_rel,
            self.loss_ulp + o.loss_ulp,
            self.loss_gate + o.loss_gate,
            self.grad_abs + o.grad_abs,
            self.grad_rel + o.grad_rel,
            self.rel_hist + o.rel_hist,
            self.ulp_hist + o.ulp_hist,
            self.loss_sum + o.loss_sum,
            self.ref_sum + o.ref_sum,
            tuple(a + b for a, b in zip(self.overflow_causes, o.overflow_causes, strict=True)),
        )

    def mean_loss_rel_err(self) -> float | None:
        """|mean L - mean L*| / |mean L*| over measured rows, exactly; None if L is not finite."""
        if self.measured == 0 or self.loss_sum.count != self.measured:
            return None
        ref = self.ref_sum.value()
        diff = abs(self.loss_sum.value() - ref)
        if ref == 0:
            return 0.0 if diff == 0 else None
        return float(diff / abs(ref))


@dataclass(frozen=True)
class InputStats:
    """What the input looks like (over the whole chunk) and the reference's own findings."""

    rows: int = 0
    eligible: int = 0  # finite input, label not ignored
    ignored: int = 0
    nonfinite_input: int = 0
    ref_nonfinite: int = 0  # eligible rows (pairs) whose reference loss is not finite
    logit_max: Extreme = Extreme()  # largest finite logit of an eligible row (col: its class)
    logit_min: float = math.nan
    margin_max: Extreme = Extreme()  # max(z) - z_y (label-free: max(z) - min(z))
    rows_over_ln_max: int = 0  # eligible rows with max(z) > ln(max) of the working dtype
    rows_margin_underflow: int = 0  # eligible rows with margin > underflow_margin(working)
    cast: CastReport | None = None

    def __add__(self, o: InputStats) -> InputStats:
        lo = self.logit_min if math.isnan(o.logit_min) else min(self.logit_min, o.logit_min)
        if math.isnan(self.logit_min):
            lo = o.logit_min
        return InputStats(
            self.rows + o.rows,
            self.eligible + o.eligible,
            self.ignored + o.ignored,
            self.nonfinite_input + o.nonfinite_input,
            self.ref_nonfinite + o.ref_nonfinite,
            self.logit_max + o.logit_max,
            lo,
            self.margin_max + o.margin_max,
            self.rows_over_ln_max + o.rows_over_ln_max,
            self.rows_margin_underflow + o.rows_margin_underflow,
            _merge_cast(self.cast, o.cast),
        )


def _merge_cast(a: CastReport | None, b: CastReport | None) -> CastReport | None:
    if a is None:
        return b
    if b is None:
        return a
    return replace(
        a,
        values=a.values + b.values,
        changed=a.changed + b.changed,
        max_abs_change=max(a.max_abs_change, b.max_abs_change),
        max_rel_change=max(a.max_rel_change, b.max_rel_change),
        overflowed=a.overflowed + b.overflowed,
        saturated=a.saturated + b.saturated,
        flushed_to_zero=a.flushed_to_zero + b.flushed_to_zero,
    )


#: Per-row columns every worst row carries (besides one ``<method>:<field>`` per method).
WORST_FIELDS = ("row", "label", "max_logit", "margin", "ref_p", "ref_loss", "n_bad", "score")
#: Per-method fields of a worst row.
WORST_METHOD_FIELDS = ("loss", "rel_err", "ulp_err", "grad_abs_err", "nonfinite")


@dataclass(frozen=True)
class WorstRows:
    """The K worst rows, as columns. Order: most methods non-finite, then largest gate error
    over methods, then lowest row - a total order, so merging is exact."""

    k: int
    cols: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.cols["row"].size) if self.cols else 0

    @staticmethod
    def select(k: int, cols: dict[str, np.ndarray]) -> WorstRows:
        """Keep the ``k`` worst of the candidate rows in ``cols``."""
        if not cols or cols["row"].size == 0 or k <= 0:
            return WorstRows(k, {})
        order = np.lexsort((cols["label"], cols["row"], -cols["score"], -cols["n_bad"]))[:k]
        return WorstRows(k, {name: v[order] for name, v in cols.items()})

    def __add__(self, o: WorstRows) -> WorstRows:
        if not o.cols:
            return self
        if not self.cols:
            return o
        both = {n: np.concatenate([self.cols[n], o.cols[n]]) for n in self.cols}
        return WorstRows.select(self.k, both)


@dataclass(frozen=True)
class ChunkStats:
    """Everything :func:`run` needs from a block of rows; ``a + b`` is :func:`merge`."""

    input: InputStats
    methods: dict[str, MethodStats]
    worst: WorstRows

    def __add__(self, o: ChunkStats) -> ChunkStats:
        return merge(self, o)


def merge(a: ChunkStats, b: ChunkStats) -> ChunkStats:
    """Combine two partial statistics (associative and commutative, exact)."""
    return ChunkStats(
        a.input + b.input,
        {name: a.methods[name] + b.methods[name] for name in a.methods},
        a.worst + b.worst,
    )


@dataclass(frozen=True)
class PerRowBlock:
    """Per-row values of one chunk, for ``--per-row`` files (rows in order)."""

    row: np.ndarray
    label: np.ndarray  # -1 label-free
    eligible: np.ndarray
    ref_loss: np.ndarray
    methods: dict[str, dict[str, np.ndarray]]  # name -> loss, loss_ulp_err, grad_rel_err, flags


@dataclass(frozen=True)
class EngineConfig:
    """What the kernel computes: working and accumulation precision, methods, worst-row count."""

    working: Precision
    accum: Precision
    methods: tuple[str, ...]
    cast_mode: str = "ieee"
    ignore_index: int = -100
    top_k: int = 10
    per_row: bool = False
    #: logits per sub-block of a chunk's numerics (see :data:`NUMERICS_BLOCK`); a speed knob
    #: only - every step is per row, so results do not depend on it (tested)
    block_values: int = NUMERICS_BLOCK


def _gate_err(abs_err: np.ndarray, ref: np.ndarray, working: Precision) -> np.ndarray:
    """|L - L*| in ulps of max(|L*|, 1): relative above a loss of 1, absolute (in eps) below."""
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.abs(np.nan_to_num(ref, nan=1.0, posinf=1.0)), 1.0)
    return abs_err / working.ulp(scale)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 arithmetic wraps modulo 2**64 by design)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def grad_labels(x: np.ndarray, row0: int) -> tuple[np.ndarray, np.ndarray]:
    """Label-free gradient pairs of a block: (local row, class), sorted and without repeats.

    All classes when C <= FULL_GRAD_CLASSES; else argmax, argmin and RANDOM_GRAD_LABELS classes
    drawn from splitmix64(global row * 8 + j), so a row gets the same classes in any chunk.
    """
    n, c = x.shape
    if c <= FULL_GRAD_CLASSES:
        rows = np.repeat(np.arange(n), c)
        return rows, np.tile(np.arange(c), n)
    glob = np.arange(row0, row0 + n, dtype=np.uint64)
    picks = [np.argmax(x, axis=1), np.argmin(x, axis=1)]
    for j in range(RANDOM_GRAD_LABELS):
        h = _splitmix64(glob * np.uint64(8) + np.uint64(j))
        picks.append((h % np.uint64(c)).astype(np.int64))
    keys = np.unique(np.arange(n)[:, None] * c + np.stack(picks, axis=1))
    return keys // c, keys % c


def underflow_margin(working: Precision) -> float:
    """The margin beyond which exp(-margin) rounds to 0 in ``working``: -ln(smallest subnormal / 2).

    Round to nearest sends a value to 0 only below half the smallest subnormal (exactly half
    ties to the even 0; exp of a nonzero rational is never exactly that), so p = exp(d) / s
    with s >= 1 is 0 once d < ln(smallest subnormal) - ln 2: 17.33 in float16, 103.97 in float32.

    >>> from smcheck.precisions import get_precision
    >>> round(underflow_margin(get_precision("float16")), 2)
    17.33
    """
    return math.log(2.0) - working.ln_smallest_subnormal


#: What overflowed first in a row a method flags: z - max(z) (only a dtype without inf shows it:
#: NaN), exp(z) (naive's unshifted exp), the sum of exps in the accumulation dtype, the chained
#: backward's -1/p_y, or something else (none of these reproduced).
OVERFLOW_CAUSES = ("shift", "exp", "sum", "grad", "other")


def _over(a: np.ndarray, prec: Precision) -> np.ndarray:
    """Elementwise overflow: inf, or NaN in a dtype without inf (how it overflows there)."""
    return np.isinf(a) if prec.has_inf else np.isnan(a)


def overflow_causes(
    name: str,
    x: np.ndarray,
    labels: np.ndarray | None,
    flagged: np.ndarray,
    cfg: EngineConfig,
    shared: ShiftedSoftmax | None = None,
) -> np.ndarray:
    """Per row, the index in :data:`OVERFLOW_CAUSES` of what overflowed first; -1 if not flagged.

    Recomputes, on the ``flagged`` rows of ``x`` (already in the working dtype T) only, the
    intermediates of the method's definition in their own dtypes: d = z - max(z) (T; the
    unshifted naive has none), exp (T), the sum of exps (accumulation dtype A; log1p's is
    1 + the sum without the argmax term) and, for the chained methods (naive, shifted), the
    label's -1/p_y (T) with p = exp / sum (division in A, rounded to T). Frameworks' methods and
    the online method's running sum are not recomputed: their rows fall back to "sum" when the
    plain sum overflows, else "other". ``shared``, the :func:`~smcheck.methods.shifted_softmax`
    of ``x`` the methods used, saves recomputing it for shifted and fused.
    """
    t, a = cfg.working, cfg.accum
    code = np.full(x.shape[0], -1, np.int8)
    rows = np.flatnonzero(flagged)
    if rows.size == 0:
        return code
    if shared is not None and name in ("shifted", "fused"):
        code[rows] = _shared_causes(name, shared, labels, rows, cfg)
        return code
    z = x[rows]
    found = np.zeros(rows.size, bool)
    cause = np.full(rows.size, OVERFLOW_CAUSES.index("other"), np.int8)

    def mark(hit: np.ndarray | np.bool_, what: str) -> None:
        new = np.asarray(hit) & ~found
        cause[new] = OVERFLOW_CAUSES.index(what)
        found[:] |= new

    # overflow is what is being diagnosed here: inf/NaN intermediates are expected
    z = to_carrier(z, t)  # every step rounded to T, in T's carrier, as the methods compute
    with np.errstate(all="ignore"):
        # exp, subtraction and rounding are monotone: a row's largest exp(z) is exp(max z), its
        # most negative shift min z - max z. Rows settled by these are not recomputed in full.
        zmax = z.max(axis=1)
        if name == "naive":
            mark(_over(round_in(np.exp(zmax), t), t), "exp")
        elif not t.has_inf:  # with inf, a shift to -inf only makes exp exactly 0
            mark(_over(round_in(z.min(axis=1) - zmax, t), t), "shift")
        if found.all():
            code[rows] = cause
            return code
        todo = np.flatnonzero(~found)
        z, zmax = z[todo], zmax[todo]
        if name == "naive":
            e = round_in(np.exp(z), t)
        else:
            d = round_in(z - zmax[:, None], t)
            e = round_in(np.exp(d), t)
        hit = np.zeros(rows.size, bool)

        def mark_todo(h: np.ndarray | np.bool_, what: str) -> None:
            hit[:] = False
            hit[todo] = h
            mark(hit, what)

        mark_todo(_over(e, t).any(axis=1), "exp")
        if name == "log1p":
            rest = e.copy()
            rest[np.arange(todo.size), np.argmax(z, axis=1)] = 0
            s = accumulate(rest, a) + a.dtype.type(1.0)
        else:
            s = accumulate(e, a)
        mark_todo(_over(s, a), "sum")
        if name in ("naive", "shifted") and labels is not None:
            p_y = round_in(e[np.arange(todo.size), labels[rows[todo]]].astype(s.dtype) / s, t)
            g_y = round_in(np.divide(p_y.dtype.type(-1.0), p_y), t)
            mark_todo(_over(g_y, t) & (p_y != 0) & np.isfinite(p_y), "grad")
    code[rows] = cause
    return code


def _shared_causes(
    name: str,
    sm: ShiftedSoftmax,
    labels: np.ndarray | None,
    rows: np.ndarray,
    cfg: EngineConfig,
) -> np.ndarray:
    """:func:`overflow_causes` of shifted or fused on ``rows``, read off the intermediates they
    computed: the shift d (T), exp(d) (T, at most 1: it cannot overflow), their sum (A) and,
    for shifted, the label's -1/p_y (T)."""
    t, a = cfg.working, cfg.accum
    cause = np.full(rows.size, OVERFLOW_CAUSES.index("other"), np.int8)
    found = np.zeros(rows.size, bool)

    def mark(hit: np.ndarray, what: str) -> None:
        new = hit & ~found
        cause[new] = OVERFLOW_CAUSES.index(what)
        found[:] |= new

    # overflow is what is being diagnosed here: inf/NaN intermediates are expected
    with np.errstate(all="ignore"):
        if not t.has_inf:  # with inf, a shift to -inf only makes exp exactly 0
            mark(_over(sm.d[rows].min(axis=1), t), "shift")  # NaN propagates through min
        s = sm.s[rows]
        mark(_over(s, a), "sum")
        if name == "shifted" and labels is not None:
            p_y = round_in(sm.e_a[rows, labels[rows]].astype(s.dtype) / s, t)
            g_y = round_in(np.divide(p_y.dtype.type(-1.0), p_y), t)
            mark(_over(g_y, t) & (p_y != 0) & np.isfinite(p_y), "grad")
    return cause


def chunk_rows_for(
    n_classes: int,
    n_methods: int,
    label_free: bool,
    budget: int,
    block_values: int = NUMERICS_BLOCK,
) -> int:
    """Rows per chunk so the kernel's working arrays stay near ``budget`` bytes.

    Labelled: a chunk holds its rows as read and in the working dtype (~8 bytes per logit) and
    one numerics sub-block of ``block_values`` logits at a time, whose reference, methods and
    gradient comparison need about 80 bytes per logit. Label-free keeps every method's (C,)
    losses and errors per row and the expanded gradient rows: about 24 float64 arrays of C
    values per row plus those.
    """
    if not label_free:
        sub_block = max(1, block_values // max(n_classes, 1)) * n_classes  # logits
        free = budget - 80 * sub_block
        return max(1, free // (8 * n_classes))
    per_row = 24 * 8 * n_classes
    per_row += 3 * 8 * n_classes * n_methods
    k = n_classes if n_classes <= FULL_GRAD_CLASSES else 2 + RANDOM_GRAD_LABELS
    per_row += k * 24 * 8 * n_classes
    return max(1, budget // per_row)


def _loss_stats(
    res: _MethodRows,
    cfg: EngineConfig,
    ref_loss: np.ndarray,
    ref_lo: np.ndarray | None,
    measured: np.ndarray,
    row0: int,
) -> tuple[MethodStats, dict[str, np.ndarray]]:
    """Loss statistics of one method's result over the ``measured`` rows (pairs) of a block;
    its ``causes`` (per row, :func:`overflow_causes`) split the overflow count by cause."""
    loss = res.loss
    loss64 = np.asarray(loss, dtype=np.float64)
    causes = res.causes
    rel = loss_rel_err(loss, ref_loss, ref_lo)
    ulp = loss_ulp_err(loss, ref_loss, cfg.working, ref_lo)
    gate = _gate_err(loss_abs_err(loss, ref_loss, ref_lo), ref_loss, cfg.working)
    over = res.overflow if loss.ndim == 1 else np.broadcast_to(res.overflow[:, None], loss.shape)
    m = measured
    pos = np.nonzero(m)
    rows = pos[0] + row0
    cols = pos[1] if loss.ndim == 2 else None
    lm = loss64[m]
    ref_sum = ExactSum.of(ref_loss[m])
    if ref_lo is not None:  # the double-double's low parts: same rows, not counted again
        ref_sum = ExactSum(ref_sum.num + ExactSum.of(ref_lo[m]).num, ref_sum.count)
    counted = over & m
    if causes is None:
        by_cause = (0,) * (len(OVERFLOW_CAUSES) - 1) + (int(np.count_nonzero(counted)),)
    else:
        cz = causes if loss.ndim == 1 else np.broadcast_to(causes[:, None], loss.shape)
        by_cause = tuple(
            int(np.count_nonzero(counted & (cz == i))) for i in range(len(OVERFLOW_CAUSES))
        )
    stats = MethodStats(
        measured=int(np.count_nonzero(m)),
        nan_loss=int(np.count_nonzero(np.isnan(lm))),
        inf_loss=int(np.count_nonzero(np.isinf(lm))),
        overflow=int(np.count_nonzero(over & m)),
        underflow=int(np.count_nonzero(res.underflow & m)),
        loss_rel=Extreme.of(rel[m], rows, cols),
        loss_ulp=Extreme.of(ulp[m], rows, cols),
        loss_gate=Extreme.of(gate[m], rows, cols),
        rel_hist=_hist(rel[m]),
        ulp_hist=_hist(ulp[m]),
        loss_sum=ExactSum.of(lm[np.isfinite(lm)]),
        ref_sum=ref_sum,
        overflow_causes=by_cause,
    )
    arrays = {
        "loss": loss64,
        "rel_err": rel,
        "ulp_err": ulp,
        "gate_err": gate,
        "overflow": res.overflow,
        "underflow": res.underflow,
    }
    return stats, arrays


def _grad_stats(
    errors: tuple[np.ndarray, np.ndarray, np.ndarray],
    measured: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray | None,
) -> tuple[MethodStats, np.ndarray, np.ndarray]:
    """Gradient statistics over the ``measured`` rows from one method's :func:`grad_errors`;
    ``rows``/``cols`` name them globally."""
    gabs, grel, bad = errors
    m = measured
    c = None if cols is None else cols[m]
    st = MethodStats(
        grad_checked=int(np.count_nonzero(m)),
        nonfinite_grad=int(np.count_nonzero(bad & m)),
        grad_abs=Extreme.of(gabs[m], rows[m], c),
        grad_rel=Extreme.of(grel[m], rows[m], c),
    )
    return st, np.where(m, gabs, np.nan), np.where(m, grel, np.nan)


#: Values per row block of :func:`grad_errors` (512 KiB of float64).
_ERR_BLOCK = 1 << 16


def grad_errors(
    grad: np.ndarray,
    ref: np.ndarray,
    ref_lo: np.ndarray | None = None,
    *,
    ref_norm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~smcheck.metrics.grad_abs_err` and :func:`~smcheck.metrics.grad_rel_err` in one
    pass over the (N, C) difference (the same values, bit for bit; tested), and the rows whose
    gradient is not finite. ``ref_norm`` (||g*||_2 per row) may be passed in when several
    methods share one reference (see :func:`grad_errors_many`)."""
    return grad_errors_many([grad], ref, ref_lo, ref_norm=ref_norm)[0]


def grad_errors_many(
    grads: Sequence[np.ndarray],
    ref: np.ndarray,
    ref_lo: np.ndarray | None = None,
    *,
    ref_norm: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`grad_errors` of several methods' gradients against one reference.

    The work runs in row blocks of about 2**16 values: each block of the reference is read
    from memory once for all methods, and each difference with its ~5 passes stays in the
    core's cache instead of streaming an (N, C) float64 array five times per method. Per row
    the operations are the same for any block size, so the values are too.
    """
    ref = np.asarray(ref)
    n, c = ref.shape
    k = len(grads)
    gabs = np.zeros((k, n))
    sq = np.zeros((k, n))
    ref_sq = np.zeros(n) if ref_norm is None else None
    step = max(1, _ERR_BLOCK // max(c, 1))
    buf = np.empty((min(step, n), c))
    # Methods often agree to the last bit on a row (fused and log1p on ~90 % of rows whose label
    # is not the argmax): a row equal to the previous method's has its errors, not recomputed
    same = [np.zeros(n, bool)]
    for m in range(1, k):
        a, b = grads[m], grads[m - 1]
        eq = a.shape == b.shape and a.dtype == b.dtype
        with np.errstate(invalid="ignore"):
            # a look at a few rows first: methods that never agree (naive and shifted) are not
            # compared in full - a speed choice only, the errors are the same either way
            if eq and n > 8:
                eq = bool((a[:4] == b[:4]).all(axis=1).any())
            same.append((a == b).all(axis=1) if eq else np.zeros(n, bool))
    # inf - inf and NaN where the method's gradient is non-finite: those rows are set to inf
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(0, n if c else 0, step):
            j = min(i + step, n)
            r = ref[i:j]
            if ref_sq is not None:
                d = np.multiply(r, r, out=buf[: j - i])
                np.add.reduce(d, axis=1, out=ref_sq[i:j])
            for m, g in enumerate(grads):
                if same[m][i:j].all():  # NaN never compares equal: such rows are computed
                    gabs[m, i:j], sq[m, i:j] = gabs[m - 1, i:j], sq[m - 1, i:j]
                    continue
                d = np.subtract(g[i:j], r, dtype=np.float64, out=buf[: j - i])  # one rounding
                if ref_lo is not None:
                    d -= ref_lo[i:j]
                # max |d| = max(max d, -min d): two read-only passes instead of writing |d|
                # (NaN propagates through max, min and maximum; an inf of either sign gives inf)
                np.maximum(d.max(axis=1), np.negative(d.min(axis=1)), out=gabs[m, i:j])
                np.multiply(d, d, out=d)
                np.add.reduce(d, axis=1, out=sq[m, i:j])
        gabs += 0.0  # -0.0 -> 0.0
        den = np.sqrt(ref_sq) if ref_sq is not None else np.asarray(ref_norm)
        nums = np.sqrt(sq)
    # A non-finite entry of g or of the reference makes d non-finite there, and max() keeps NaN
    # and inf: only rows whose gabs is not finite can be bad, so only they are scanned again.
    # The reference's rows are scanned once for all methods.
    ref_bad = _nonfinite_rows(ref, np.asarray(~np.isfinite(gabs).all(axis=0)))
    out = []
    for m, g in enumerate(grads):
        bad = _nonfinite_rows(np.asarray(g), ~np.isfinite(gabs[m]))
        out.append(_finish_grad_errors(bad, ref_bad, gabs[m], nums[m], den))
    return out


def _nonfinite_rows(a: np.ndarray, maybe: np.ndarray) -> np.ndarray:
    """Rows of ``a`` (among the ``maybe`` ones) holding a NaN or an inf: a row's max is NaN
    or +inf, or its min -inf, exactly then - two read-only passes, no boolean temporaries."""
    bad = np.zeros(a.shape[0], bool)
    if not maybe.any() or a.shape[1] == 0:
        return bad
    sub = a if np.count_nonzero(maybe) * 4 > a.shape[0] else a[maybe]  # a copy only if few
    with np.errstate(invalid="ignore"):
        hit = ~(np.isfinite(sub.max(axis=1)) & np.isfinite(sub.min(axis=1)))
    if sub is a:
        return hit & maybe
    bad[maybe] = hit
    return bad


def _finish_grad_errors(
    bad: np.ndarray, ref_bad: np.ndarray, gabs: np.ndarray, num: np.ndarray, den: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mark non-finite rows and divide the norms (see :func:`grad_errors`)."""
    gabs = np.where(bad, np.inf, gabs)
    num = np.where(bad, np.inf, num)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 0.0, np.inf))
    return np.where(ref_bad, np.nan, gabs), np.where(ref_bad, np.nan, rel), bad


def _row_max(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Per-row maximum of pair values (NaN ignored; NaN for a row with none)."""
    out = np.full(n, -np.inf)
    np.maximum.at(out, rows, np.where(np.isnan(values), -np.inf, values))
    return np.where(np.isneginf(out), np.nan, out)


def _run(
    name: str, prep: Prepared, cfg: EngineConfig, shared: ShiftedSoftmax | None = None
) -> CrossEntropyResult:
    """One method on a block. NaN input rows are not eligible, so the 'invalid' warning that
    methods.online's first block max raises for them in bfloat16/float8 (outside its errstate)
    is noise here."""
    with np.errstate(invalid="ignore"):
        return run_method(name, prep, cfg.accum, shared, carrier=True)


def _shared_softmax(
    prep: Prepared, cfg: EngineConfig, argmax: np.ndarray | None = None
) -> ShiftedSoftmax | None:
    """The max-shifted softmax, computed once when two or more methods would each compute it
    (``argmax``: the rows' first argmax, if known)."""
    if len(SHARED_SOFTMAX_METHODS.intersection(cfg.methods)) < 2:
        return None
    with np.errstate(invalid="ignore"):  # NaN input rows: not eligible, see _run
        return shifted_softmax(prep.xk, cfg.working, cfg.accum, argmax)


@dataclass(frozen=True)
class _MethodRows:
    """One method's per-row (label-free: per-pair) results in a chunk: all the statistics need
    once the (N, C) gradients have been compared and dropped."""

    loss: np.ndarray  # (n,) float64; label-free (n, C)
    overflow: np.ndarray  # (n,) bool
    underflow: np.ndarray  # (n,) bool; label-free (n, C)
    causes: np.ndarray  # (n,) int8, see overflow_causes
    grad_errors: tuple[np.ndarray, np.ndarray, np.ndarray]  # gabs, grel, bad per gradient row
    grad_measured: np.ndarray  # gradient rows compared
    grad_rows: np.ndarray  # global row of each gradient row
    grad_cols: np.ndarray | None  # label-free: the class of each gradient row


@dataclass(frozen=True)
class _RowFacts:
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


@dataclass(frozen=True)
class _Numerics:
    """The labelled chunk's row facts, reference values per row, and each method's
    :class:`_MethodRows`."""

    facts: _RowFacts
    ref_loss: np.ndarray
    ref_lo: np.ndarray | None
    ref_p: np.ndarray  # reference probability of the label
    methods: dict[str, _MethodRows]


def _extremes(xf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row max, min (float64) and first argmax of rounded logits in their carrier (exact)."""
    if xf.shape[0] == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    k = np.argmax(xf, axis=1)
    zmax = xf[np.arange(xf.shape[0]), k].astype(np.float64)  # the max (NaN on a NaN row, too)
    return zmax, xf.min(axis=1).astype(np.float64), k


def _labelled_numerics(
    x: np.ndarray, labels: np.ndarray, cfg: EngineConfig, row0: int
) -> _Numerics:
    """A labelled chunk, sub-block by sub-block of ``cfg.block_values`` logits: rounding to
    the working dtype, the reference, the methods and the gradient comparison; only per-row
    values are kept. Every step is per row, so the values do not depend on the sub-block size.
    """
    n, c = x.shape
    step = max(1, cfg.block_values // max(c, 1))
    names = cfg.methods
    lab = np.zeros(n, np.int64)
    safe = np.zeros(n, np.int64)
    ignored = np.zeros(n, bool)
    finite = np.zeros(n, bool)
    zmax, zmin, zlab = np.zeros(n), np.zeros(n), np.zeros(n)
    amax = np.zeros(n, np.int64)
    cast_report: CastReport | None = None
    ref_loss = np.zeros(n)
    ref_lo: np.ndarray | None = None
    ref_p = np.zeros(n)
    loss = {m: np.zeros(n) for m in names}
    over = {m: np.zeros(n, bool) for m in names}
    under = {m: np.zeros(n, bool) for m in names}
    causes = {m: np.zeros(n, np.int8) for m in names}
    gabs = {m: np.zeros(n) for m in names}
    grel = {m: np.zeros(n) for m in names}
    bad = {m: np.zeros(n, bool) for m in names}
    for i in range(0, n, step):
        j = min(i + step, n)
        sub = prepare(
            x[i:j], labels[i:j], dtype=cfg.working, cast_mode=cfg.cast_mode,
            ignore_index=cfg.ignore_index, row_offset=row0 + i,
        )  # fmt: skip
        assert sub.labels is not None and sub.safe_labels is not None
        cast_report = _merge_cast(cast_report, sub.cast_report)
        lab[i:j], safe[i:j] = sub.labels, sub.safe_labels
        ignored[i:j], finite[i:j] = sub.ignored, sub.finite_input
        xf = sub.xk
        zmax[i:j], zmin[i:j], amax[i:j] = _extremes(xf)
        zlab[i:j] = xf[np.arange(j - i), sub.safe_labels]
        e = sub.finite_input & ~sub.ignored
        # a sub-block is within the reference's own block size (REFERENCE_BLOCK_ELEMENTS): one
        # call; the gradient takes the softmax's memory and only the labels' p are kept
        arg = amax[i:j] if sub.xk.dtype == np.float32 else None
        ref = reference_block(
            sub.xk, sub.safe_labels, sub.working, keep_prob=False, row_argmax=arg, carrier=True
        )
        assert ref.grad is not None
        ref_loss[i:j] = ref.loss
        if ref.loss_lo is not None:
            if ref_lo is None:
                ref_lo = np.zeros(n)
            ref_lo[i:j] = ref.loss_lo
        ref_p[i:j] = ref.prob
        shared = _shared_softmax(sub, cfg, amax[i:j])
        grads = []
        for m in names:
            res = _run(m, sub, cfg, shared)
            loss[m][i:j] = res.loss
            over[m][i:j] = res.overflow
            under[m][i:j] = res.underflow
            flagged = res.overflow & e
            causes[m][i:j] = overflow_causes(m, xf, sub.safe_labels, flagged, cfg, shared)
            assert res.grad is not None
            grads.append(res.grad)
        del shared
        errors = grad_errors_many(grads, ref.grad, ref.grad_lo)
        for m, (ga, gr, b) in zip(names, errors, strict=True):
            gabs[m][i:j], grel[m][i:j], bad[m][i:j] = ga, gr, b
    if cast_report is None:  # no rows: the report of rounding nothing
        cast_report = prepare(x, labels, dtype=cfg.working, cast_mode=cfg.cast_mode).cast_report
    # inf - inf on rows with non-finite input: those rows are not eligible, their margin unused;
    # a margin beyond max float64 (1.7e308 - -1.7e308) overflows to inf, its correct rounding
    with np.errstate(invalid="ignore", over="ignore"):
        margin = zmax - zlab
    facts = _RowFacts(lab, safe, ignored, finite, zmax, zmin, amax, margin, cast_report)
    rows = np.arange(row0, row0 + n, dtype=np.int64)
    # the reference gradient of a row with finite logits is finite (probabilities in [0, 1]):
    # the eligible rows are the measured ones
    measured = finite & ~ignored
    return _Numerics(
        facts,
        ref_loss,
        ref_lo,
        ref_p,
        {
            m: _MethodRows(
                loss[m],
                over[m],
                under[m],
                causes[m],
                (gabs[m], grel[m], bad[m]),
                measured,
                rows,
                None,
            )  # fmt: skip
            for m in names
        },
    )


def _label_free_methods(
    prep: Prepared, cfg: EngineConfig, e: np.ndarray, ref: ReferenceOutput, row0: int
) -> dict[str, _MethodRows]:
    """Label-free: every method's (n, C) losses; gradients checked on the pairs of
    :func:`grad_labels`, each pair a labelled row of its own."""
    pr, pc = grad_labels(prep.xk, row0)
    keep = e[pr]
    pr, pc = pr[keep], pc[keep]
    gprep = prepare(prep.xk[pr], pc, dtype=cfg.working, cast_mode=cfg.cast_mode)
    gref = reference_of(gprep)
    assert gref.grad is not None
    g_measured = np.isfinite(gref.grad).all(axis=1)
    shared = _shared_softmax(prep, cfg)
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    grads = []
    for name in cfg.methods:
        res = _run(name, prep, cfg, shared)
        causes = overflow_causes(name, prep.xk, prep.safe_labels, res.overflow & e, cfg, shared)
        loss = np.asarray(res.loss, dtype=np.float64)
        out[name] = (loss, res.overflow, res.underflow, causes)
        gres = _run(name, gprep, cfg)
        assert gres.grad is not None
        grads.append(gres.grad)
    errors = grad_errors_many(grads, gref.grad, gref.grad_lo)
    return {
        name: _MethodRows(*out[name], err, g_measured, pr.astype(np.int64) + row0, pc)
        for name, err in zip(cfg.methods, errors, strict=True)
    }


def chunk_stats(
    x: np.ndarray, labels: np.ndarray | None, row0: int, cfg: EngineConfig
) -> tuple[ChunkStats, PerRowBlock | None]:
    """The chunk kernel: partial statistics of rows ``row0 .. row0 + len(x)`` of the input.

    ``x`` (n, C) as stored; it is rounded to ``cfg.working`` here, once, and the methods and the
    reference all consume those rounded values. ``labels`` (n,) are int64 labels already checked
    against C, or None for the label-free mode.
    """
    n = int(x.shape[0])
    rows_g = np.arange(row0, row0 + n, dtype=np.int64)
    label_free = labels is None
    prep: Prepared | None = None
    if label_free:
        prep = prepare(x, None, dtype=cfg.working, cast_mode=cfg.cast_mode)
        xf: np.ndarray | None = prep.xk  # float32/float64 carrier: fast exact reductions
        zmax, zmin, amax = _extremes(prep.xk)
        # inf - inf on rows with non-finite input: not eligible, their margin unused
        with np.errstate(invalid="ignore", over="ignore"):
            margin = zmax - zmin
        facts = _RowFacts(
            None, None, prep.ignored, prep.finite_input, zmax, zmin, amax, margin,
            prep.cast_report,
        )  # fmt: skip
        ref = reference_of(prep)
        ref_loss, ref_lo, ref_prob = ref.loss, ref.loss_lo, ref.prob
    else:
        assert labels is not None
        xf = None
        nums = _labelled_numerics(np.asarray(x), labels, cfg, row0)
        facts = nums.facts
        ref_loss, ref_lo, ref_prob = nums.ref_loss, nums.ref_lo, nums.ref_p
    e = facts.finite_input & ~facts.ignored
    zmax, zmin, amax, margin = facts.zmax, facts.zmin, facts.amax, facts.margin
    ref_finite = np.isfinite(ref_loss)
    e_loss = e[:, None] if label_free else e
    measured = e_loss & ref_finite
    inp = InputStats(
        rows=n,
        eligible=int(e.sum()),
        ignored=int(facts.ignored.sum()),
        nonfinite_input=int((~facts.finite_input).sum()),
        ref_nonfinite=int(np.count_nonzero(e_loss & ~ref_finite)),
        logit_max=Extreme.of(zmax[e], rows_g[e], amax[e]),
        logit_min=float(zmin[e].min()) if e.any() else math.nan,
        margin_max=_largest(margin[e], rows_g[e]),
        rows_over_ln_max=int(np.count_nonzero(e & (zmax > cfg.working.ln_max))),
        rows_margin_underflow=int(np.count_nonzero(e & (margin > underflow_margin(cfg.working)))),
        cast=facts.cast,
    )
    methods: dict[str, MethodStats] = {}
    per_method: dict[str, dict[str, np.ndarray]] = {}
    if label_free:
        assert prep is not None
        per_rows = _label_free_methods(prep, cfg, e, ref, row0)
    else:
        per_rows = nums.methods
    for name in cfg.methods:
        mr = per_rows[name]
        st, arrays = _loss_stats(mr, cfg, ref_loss, ref_lo, measured, row0)
        gst, gabs, grel = _grad_stats(mr.grad_errors, mr.grad_measured, mr.grad_rows, mr.grad_cols)
        if label_free:
            gabs, grel = (
                _row_max(gabs, mr.grad_rows - row0, n),
                _row_max(grel, mr.grad_rows - row0, n),
            )
        methods[name] = st + gst
        per_method[name] = {**arrays, "grad_abs_err": gabs, "grad_rel_err": grel}
    worst = _worst(cfg, rows_g, facts, ref_loss, ref_lo, ref_prob, xf, e, per_method)
    per_row = _per_row(rows_g, facts, e, ref_loss, ref_lo, per_method) if cfg.per_row else None
    return ChunkStats(inp, methods, worst), per_row


def _largest(values: np.ndarray, rows: np.ndarray) -> Extreme:
    """Largest value and its (lowest) row, +inf included (a margin beyond max float64)."""
    top = np.isposinf(values)
    if top.any():
        return Extreme(math.inf, int(rows[int(np.argmax(top))]), -1)
    return Extreme.of(values, rows)


def _finite_or(v: np.ndarray, fill: float) -> np.ndarray:
    return np.where(np.isfinite(v), v, fill)


def _worst(
    cfg: EngineConfig,
    rows_g: np.ndarray,
    facts: _RowFacts,
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
    if cfg.top_k <= 0 or not e.any():
        return WorstRows(cfg.top_k, {})
    n = rows_g.size
    idx = np.arange(n)
    eps = cfg.working.eps
    names = cfg.methods
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
    return WorstRows.select(cfg.top_k, {name: v[e] for name, v in cols.items()})


def _per_row(
    rows_g: np.ndarray,
    facts: _RowFacts,
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


def run(
    logits: np.ndarray,
    labels: np.ndarray | None,
    cfg: EngineConfig,
    *,
    chunk_rows: int,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    per_row: Callable[[PerRowBlock], None] | None = None,
    processes: bool | None = None,
) -> ChunkStats:
    """Run :func:`chunk_stats` over row blocks of ``logits`` (N, C) and merge, in row order.

    ``logits`` may be a memory map: a block is read when its task runs, so memory stays near
    ``workers`` blocks' working arrays. With ``workers > 1`` blocks run in parallel, at most
    ``2 * workers`` in flight: in forked worker processes where that is safe
    (:func:`can_fork`; ``processes=None`` decides, True/False forces), else on threads. The
    kernel is thousands of numpy calls per chunk, and on threads they queue for the
    interpreter lock: measured 1.4x on 2 cores with threads, against ~1.8x with processes.
    ``per_row`` receives each block's :class:`PerRowBlock` in row order;
    ``progress(rows_done, rows_total)`` is called after each block.
    """
    global _FORKED
    n = int(logits.shape[0])
    step = max(1, int(chunk_rows))
    cfg = replace(cfg, per_row=per_row is not None)
    release_pages(logits)  # pages a loader touched (e.g. scanning for inf) need not stay mapped
    starts = list(range(0, n, step)) or [0]
    parallel = workers > 1 and len(starts) > 1
    use_fork = parallel and (can_fork(cfg) if processes is None else processes)
    total: ChunkStats | None = None
    if use_fork:
        _FORKED = (logits, labels, cfg, step)  # inherited by the forked workers, not pickled
    try:
        task = _forked_task if use_fork else partial(_task, logits, labels, cfg, step)
        results = _ordered(task, starts, workers if parallel else 1, use_fork)
        for start, (st, rows) in zip(starts, results, strict=True):
            total = st if total is None else merge(total, st)
            if per_row is not None and rows is not None:
                per_row(rows)
            if progress is not None:
                progress(min(start + step, n), n)
    finally:
        if use_fork:
            _FORKED = None
    assert total is not None
    return total


#: (logits, labels, config, chunk rows) of the run in progress, for forked workers.
_FORKED: tuple[np.ndarray, np.ndarray | None, EngineConfig, int] | None = None


def can_fork(cfg: EngineConfig) -> bool:
    """Whether chunks may run in forked processes: Linux (macOS offers ``fork`` but its system
    libraries are not fork-safe), no other Python thread alive in this process (a fork copies
    locks that thread may hold), and no framework method (PyTorch and JAX run thread pools of
    their own that do not survive a fork)."""
    if not sys.platform.startswith("linux"):
        return False
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    if threading.active_count() > 1:
        return False
    if multiprocessing.current_process().daemon:  # a pool worker may not have children
        return False
    return all(m in METHODS for m in cfg.methods)


def _task(
    logits: np.ndarray, labels: np.ndarray | None, cfg: EngineConfig, step: int, start: int
) -> tuple[ChunkStats, PerRowBlock | None]:
    block = logits[start : start + step]
    lab = None if labels is None else np.asarray(labels[start : start + step])
    try:
        return chunk_stats(np.asarray(block), lab, start, cfg)
    finally:
        release_pages(block)


def _forked_task(start: int) -> tuple[ChunkStats, PerRowBlock | None]:
    assert _FORKED is not None, "a forked worker inherits the run's input"
    return _task(*_FORKED, start)


def _ordered(
    task: Callable[[int], tuple[ChunkStats, PerRowBlock | None]],
    starts: Sequence[int],
    workers: int,
    fork: bool = False,
) -> Iterator[tuple[ChunkStats, PerRowBlock | None]]:
    """Results of ``task`` over ``starts`` in order, at most 2 * workers computed ahead."""
    if workers <= 1:
        yield from map(task, starts)
        return
    window = 2 * workers
    with _executor(workers, fork) as ex:
        with warnings.catch_warnings():
            # a fork-based pool forks all its workers at the first submit, before it starts its
            # own manager thread. Python >= 3.12 warns about forking beside any OS thread -
            # numpy's idle OpenBLAS pool included; can_fork has ruled out Python threads, and
            # the workers never call BLAS
            warnings.simplefilter("ignore", DeprecationWarning)
            pending = [ex.submit(task, s) for s in starts[:window]]
        nxt = len(pending)
        while pending:
            fut = pending.pop(0)
            if nxt < len(starts):
                pending.append(ex.submit(task, starts[nxt]))
                nxt += 1
            yield fut.result()


def _executor(workers: int, fork: bool) -> Executor:
    if not fork:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smcheck")
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))


def total_of(parts: Iterable[ChunkStats]) -> ChunkStats:
    """Merge any number of partial statistics (in the order given)."""
    return reduce(merge, parts)
