"""Mergeable statistics: partial results of row blocks that combine exactly, in any order.

Every type here merges with ``+`` *exactly* - integer counts, maxima with the row that holds
them (ties go to the lowest row), integer histograms, exact sums and a worst-rows list with a
total order - so a merge is associative and commutative and a run's result is bit-for-bit the
same for any chunk size, worker count or merge order.

* **Exact sums.** The mean loss (what training sees) is compared with the reference's through
  :class:`ExactSum`: every float64 is split into an integer significand and a power of two, the
  significands are added exactly per exponent in integers, and the total is one Python integer
  scaled by 2**-1126. The relative error of the mean is computed from the exact rationals and
  rounded once.
* **Medians.** Per-row errors go into a fixed histogram whose bins are the float64 exponent plus
  the 5 leading significand bits: 32 bins per octave. A quantile read from it is its bin's lower
  edge q, and the exact order statistic lies in [q, q * (1 + 2**-5)): within 3.1 % below it.
  Exact zeros (and subnormals) read as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import reduce

import numpy as np

from .precisions import CastReport

__all__ = [
    "HIST_BINS",
    "WORST_FIELDS",
    "WORST_METHOD_FIELDS",
    "ChunkStats",
    "ExactSum",
    "Extreme",
    "Histogram",
    "InputStats",
    "MethodStats",
    "WorstRows",
    "hist_quantile",
    "merge",
    "merge_cast",
    "total_of",
]

#: Significand bits kept by the error histogram: 2**5 = 32 bins per octave.
HIST_SUB_BITS = 5
_HIST_SHIFT = 52 - HIST_SUB_BITS
#: Number of histogram bins: every non-negative float64 (inf included) has one.
HIST_BINS = 1 << (11 + HIST_SUB_BITS)

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
            merge_cast(self.cast, o.cast),
        )


def merge_cast(a: CastReport | None, b: CastReport | None) -> CastReport | None:
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
WORST_FIELDS = (
    "row",
    "label",
    "ranked",  # False: kept only as a method's largest relative error (label-free, other class)
    "max_logit",
    "margin",
    "ref_p",
    "ref_loss",
    "n_bad",
    "score",
)
#: Per-method fields of a worst row.
WORST_METHOD_FIELDS = ("loss", "rel_err", "ulp_err", "grad_abs_err", "nonfinite")


@dataclass(frozen=True)
class WorstRows:
    """The K worst rows, as columns. Order: most methods non-finite, then largest gate error
    over methods (``score``), then lowest row - a total order, so merging is exact.

    Beside those K (of the ``ranked`` candidates) it keeps, per method, the candidate with the
    largest finite loss relative error (``<method>:rel_err``; lowest (row, label) on ties, as
    :class:`Extreme`), so the row behind the methods table's largest relative error is listed
    even where the gate error ranks it low. Both choices are a maximum over candidates, so
    merging stays exact."""

    k: int
    cols: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.cols["row"].size) if self.cols else 0

    @staticmethod
    def select(k: int, cols: dict[str, np.ndarray]) -> WorstRows:
        """Keep the ``k`` worst of the candidate rows in ``cols``, and each method's largest
        relative error."""
        if not cols or cols["row"].size == 0 or k <= 0:
            return WorstRows(k, {})
        order = np.lexsort((cols["label"], cols["row"], -cols["score"], -cols["n_bad"]))
        ranked = cols["ranked"][order]
        keep = np.zeros(order.size, bool)
        keep[np.flatnonzero(ranked)[:k]] = True
        by_place = np.lexsort((cols["label"], cols["row"]))  # lowest (row, label) first
        for name in cols:
            if name.endswith(":rel_err"):
                rel = cols[name][by_place]
                finite = np.isfinite(rel)
                if finite.any():
                    best = by_place[np.flatnonzero(finite & (rel == rel[finite].max()))[0]]
                    keep[np.flatnonzero(order == best)[0]] = True
        order = order[keep]
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


def total_of(parts: Iterable[ChunkStats]) -> ChunkStats:
    """Merge any number of partial statistics (in the order given)."""
    return reduce(merge, parts)
