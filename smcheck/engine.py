"""The chunk kernel: one block of rows in, mergeable statistics of every method out.

:func:`chunk_stats` takes one block of rows and returns :class:`~smcheck.stats.ChunkStats`,
partial statistics that merge exactly (:mod:`smcheck.stats`), so the result of :func:`run` is
bit-for-bit the same for any chunk size, worker count or merge order. :func:`run` spreads the
blocks over :func:`smcheck.executor.ordered_map`.

* **Labelled mode.** A chunk is worked in sub-blocks of :attr:`EngineConfig.block_values`
  logits: rounding to the working dtype, the reference, every method, the overflow diagnosis
  (:mod:`smcheck.diagnosis`) and the gradient comparison (:mod:`smcheck.gradient_errors`);
  only per-row values are kept.
* **Label-free mode** (no labels): the loss of every (row, class) pair is measured; all counts
  and errors are over pairs. The gradient softmax - onehot(k) is checked for every class k when
  there are at most :data:`FULL_GRAD_CLASSES` classes (each row expanded into C labelled rows);
  above that for a fixed subset per row: argmax, argmin and :data:`RANDOM_GRAD_LABELS`
  pseudo-random classes (splitmix64 of the row index, so the same for any chunking).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from .accel import accelerator
from .core import CrossEntropyResult, reference_of, run_method
from .diagnosis import OVERFLOW_CAUSES, overflow_causes, underflow_margin
from .executor import can_fork, ordered_map
from .gradient_errors import grad_errors_many
from .memmaps import release_pages
from .methods import SHARED_SOFTMAX_METHODS, ShiftedSoftmax, shifted_softmax
from .metrics import loss_gate_err, loss_rel_err, loss_ulp_err
from .precisions import CastReport, Precision
from .prepare import Prepared, prepare_input
from .reference import ReferenceOutput, ScaledLow, reference_block
from .rows import PerRowBlock, RowFacts, per_row_block, worst_rows
from .stats import (
    ChunkStats,
    ExactSum,
    Extreme,
    Histogram,
    InputStats,
    MethodStats,
    merge,
    merge_cast,
)
from .variants import Variant

__all__ = [
    "FULL_GRAD_CLASSES",
    "NUMERICS_BLOCK",
    "RANDOM_GRAD_LABELS",
    "EngineConfig",
    "chunk_rows_for",
    "chunk_stats",
    "grad_labels",
    "run",
]

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


@dataclass(frozen=True)
class EngineConfig:
    """What the kernel computes: working and accumulation precision, methods, worst-row count."""

    working: Precision
    accum: Precision
    methods: tuple[str, ...]
    cast: str = "ieee"
    ignore_index: int = -100
    top_k: int = 10
    per_row: bool = False
    #: logits per sub-block of a chunk's numerics (see :data:`NUMERICS_BLOCK`); a speed knob
    #: only - every step is per row, so results do not depend on it (tested)
    block_values: int = NUMERICS_BLOCK
    #: the loss variant checked (:mod:`smcheck.variants`); None for the plain loss
    variant: Variant | None = None

    def prepare(self, x: np.ndarray, labels: np.ndarray | None, **kw: object) -> Prepared:
        """:func:`prepare_input` with this configuration's dtype, cast and loss variant."""
        v = self.variant or Variant()
        return prepare_input(
            x, labels, dtype=self.working, cast=self.cast, z_loss=v.z_loss, softcap=v.softcap,
            logit_scale=v.logit_scale, smoothing_convention=v.smoothing_convention,
            **kw,  # type: ignore[arg-type]
        )  # fmt: skip


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
    ref_scaled: ScaledLow | None = None,
) -> tuple[MethodStats, dict[str, np.ndarray]]:
    """Loss statistics of one method's result over the ``measured`` rows (pairs) of a block;
    its ``causes`` (per row, :func:`overflow_causes`) split the overflow count by cause."""
    loss = res.loss
    loss64 = np.asarray(loss, dtype=np.float64)
    causes = res.causes
    rel = loss_rel_err(loss, ref_loss, ref_lo, ref_scaled)
    ulp = loss_ulp_err(loss, ref_loss, cfg.working, ref_lo)
    gate = loss_gate_err(loss, ref_loss, cfg.working, ref_lo)
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
        rel_hist=Histogram.of(rel[m]),
        ulp_hist=Histogram.of(ulp[m]),
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
class _Numerics:
    """The labelled chunk's row facts, reference values per row, and each method's
    :class:`_MethodRows`."""

    facts: RowFacts
    ref_loss: np.ndarray
    ref_lo: np.ndarray | None
    ref_p: np.ndarray  # reference probability of the label (label-free: (n, C))
    methods: dict[str, _MethodRows]
    ref_scaled: ScaledLow | None = None  # low parts with an exponent (float64, losses < 2**-968)


def _extremes(xf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row max, min (float64) and first argmax of rounded logits in their carrier (exact)."""
    if xf.shape[0] == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    k = np.argmax(xf, axis=1)
    zmax = xf[np.arange(xf.shape[0]), k].astype(np.float64)  # the max (NaN on a NaN row, too)
    return zmax, xf.min(axis=1).astype(np.float64), k


class _LabelledRows:
    """Per-row values of a labelled chunk, filled sub-block by sub-block (each step writes the
    rows ``i:j`` of its sub-block); :meth:`numerics` packs them once the chunk is done."""

    def __init__(self, n: int, names: tuple[str, ...]) -> None:
        self.names = names
        self.labels = np.zeros(n, np.int64)
        self.safe = np.zeros(n, np.int64)
        self.ignored = np.zeros(n, bool)
        self.finite = np.zeros(n, bool)
        self.zmax, self.zmin, self.zlab = np.zeros(n), np.zeros(n), np.zeros(n)
        self.amax = np.zeros(n, np.int64)
        self.cast: CastReport | None = None
        self.ref_loss = np.zeros(n)
        self.ref_lo: np.ndarray | None = None
        self.ref_scaled: ScaledLow | None = None
        self.ref_p = np.zeros(n)
        self.loss = {m: np.zeros(n) for m in names}
        self.over = {m: np.zeros(n, bool) for m in names}
        self.under = {m: np.zeros(n, bool) for m in names}
        self.causes = {m: np.zeros(n, np.int8) for m in names}
        self.gabs = {m: np.zeros(n) for m in names}
        self.grel = {m: np.zeros(n) for m in names}
        self.bad = {m: np.zeros(n, bool) for m in names}

    def facts(self, sub: Prepared, i: int, j: int) -> None:
        """Labels, eligibility, row extremes and the label's logit of the rounded sub-block."""
        assert sub.labels is not None and sub.safe_labels is not None
        self.cast = merge_cast(self.cast, sub.cast_report)
        self.labels[i:j], self.safe[i:j] = sub.labels, sub.safe_labels
        self.ignored[i:j], self.finite[i:j] = sub.ignored, sub.finite_input
        self.zmax[i:j], self.zmin[i:j], self.amax[i:j] = _extremes(sub.xk)
        self.zlab[i:j] = sub.xk[np.arange(j - i), sub.safe_labels]

    def reference(self, sub: Prepared, i: int, j: int) -> ReferenceOutput:
        """The reference of the sub-block; its loss and the label's p are kept per row."""
        assert sub.safe_labels is not None
        # a sub-block is within the reference's own block size (REFERENCE_BLOCK_ELEMENTS): one
        # call; the gradient takes the softmax's memory and only the labels' p are kept
        arg = self.amax[i:j] if sub.xk.dtype == np.float32 else None
        ref = reference_block(
            sub.xk, sub.safe_labels, sub.working, keep_prob=False, row_argmax=arg, carrier=True,
            variant=sub.variant,
        )  # fmt: skip
        self.ref_loss[i:j] = ref.loss
        if ref.loss_lo is not None:
            if self.ref_lo is None:
                self.ref_lo = np.zeros(self.ref_loss.size)
            self.ref_lo[i:j] = ref.loss_lo
        if ref.loss_scaled is not None:
            if self.ref_scaled is None:  # rows of other sub-blocks: their ordinary low parts
                assert self.ref_lo is not None
                zero = np.zeros(self.ref_lo.size, np.int16)
                self.ref_scaled = ScaledLow(self.ref_lo.copy(), zero)
            self.ref_scaled.lo[i:j] = ref.loss_scaled.lo
            self.ref_scaled.exp[i:j] = ref.loss_scaled.exp
        elif self.ref_scaled is not None and ref.loss_lo is not None:
            self.ref_scaled.lo[i:j] = ref.loss_lo
        self.ref_p[i:j] = ref.prob
        return ref

    def methods(
        self, sub: Prepared, ref: ReferenceOutput, cfg: EngineConfig, i: int, j: int
    ) -> None:
        """Every method on the sub-block: loss, flags, overflow causes, and its gradient's
        errors against the reference's (the (n, C) gradients are dropped here)."""
        assert ref.grad is not None and sub.safe_labels is not None
        e = sub.finite_input & ~sub.ignored
        shared = _shared_softmax(sub, cfg, self.amax[i:j])
        grads = []
        for m in self.names:
            res = _run(m, sub, cfg, shared)
            self.loss[m][i:j] = res.loss
            self.over[m][i:j] = res.overflow
            self.under[m][i:j] = res.underflow
            self.causes[m][i:j] = overflow_causes(
                m, sub.xk, sub.safe_labels, res.overflow & e, cfg.working, cfg.accum, shared
            )
            assert res.grad is not None
            grads.append(res.grad)
        del shared
        errors = grad_errors_many(grads, ref.grad, ref.grad_lo)
        for m, (ga, gr, b) in zip(self.names, errors, strict=True):
            self.gabs[m][i:j], self.grel[m][i:j], self.bad[m][i:j] = ga, gr, b

    def numerics(self, cast: CastReport, row0: int) -> _Numerics:
        # inf - inf on rows with non-finite input: those rows are not eligible, their margin
        # unused; a margin beyond max float64 (1.7e308 - -1.7e308) overflows to inf, its
        # correct rounding
        with np.errstate(invalid="ignore", over="ignore"):
            margin = self.zmax - self.zlab
        facts = RowFacts(
            self.labels, self.safe, self.ignored, self.finite, self.zmax, self.zmin, self.amax,
            margin, cast,
        )  # fmt: skip
        rows = np.arange(row0, row0 + self.labels.size, dtype=np.int64)
        # the reference gradient of a row with finite logits is finite (probabilities in
        # [0, 1]): the eligible rows are the measured ones
        measured = self.finite & ~self.ignored
        per_method = {
            m: _MethodRows(
                self.loss[m],
                self.over[m],
                self.under[m],
                self.causes[m],
                (self.gabs[m], self.grel[m], self.bad[m]),
                measured,
                rows,
                None,
            )  # fmt: skip
            for m in self.names
        }
        return _Numerics(
            facts, self.ref_loss, self.ref_lo, self.ref_p, per_method, ref_scaled=self.ref_scaled
        )


def _labelled_numerics(
    x: np.ndarray, labels: np.ndarray, cfg: EngineConfig, row0: int
) -> _Numerics:
    """A labelled chunk, sub-block by sub-block of ``cfg.block_values`` logits: rounding to
    the working dtype, the row facts, the reference, the methods and the gradient comparison;
    only per-row values are kept. Every step is per row, so the values do not depend on the
    sub-block size.
    """
    n, c = x.shape
    step = max(1, cfg.block_values // max(c, 1))
    acc = _LabelledRows(n, cfg.methods)
    for i in range(0, n, step):
        j = min(i + step, n)
        sub = cfg.prepare(x[i:j], labels[i:j], ignore_index=cfg.ignore_index, row_offset=row0 + i)
        acc.facts(sub, i, j)
        ref = acc.reference(sub, i, j)
        acc.methods(sub, ref, cfg, i, j)
    cast = acc.cast
    if cast is None:  # no rows: the report of rounding nothing
        cast = cfg.prepare(x, labels).cast_report
    assert cast is not None
    return acc.numerics(cast, row0)


def _label_free_methods(
    prep: Prepared, cfg: EngineConfig, e: np.ndarray, ref: ReferenceOutput, row0: int
) -> dict[str, _MethodRows]:
    """Label-free: every method's (n, C) losses; gradients checked on the pairs of
    :func:`grad_labels`, each pair a labelled row of its own."""
    pr, pc = grad_labels(prep.xk, row0)
    keep = e[pr]
    pr, pc = pr[keep], pc[keep]
    gprep = cfg.prepare(prep.xk[pr], pc)
    gref = reference_of(gprep)
    assert gref.grad is not None
    g_measured = np.isfinite(gref.grad).all(axis=1)
    shared = _shared_softmax(prep, cfg)
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    grads = []
    for name in cfg.methods:
        res = _run(name, prep, cfg, shared)
        causes = overflow_causes(
            name, prep.xk, prep.safe_labels, res.overflow & e, cfg.working, cfg.accum, shared
        )
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
    xf: np.ndarray | None = None
    if labels is None:
        prep = cfg.prepare(x, None)
        xf = prep.xk  # float32/float64 carrier: fast exact reductions
        nums = _label_free_numerics(prep, cfg, row0)
    else:
        nums = _labelled_numerics(np.asarray(x), labels, cfg, row0)
    facts = nums.facts
    e = facts.finite_input & ~facts.ignored
    # the loss is measured per row, label-free per (row, class) pair
    measured = (e[:, None] if labels is None else e) & np.isfinite(nums.ref_loss)
    inp = _input_stats(facts, nums.ref_loss, e, rows_g, cfg.working)
    methods, per_method = _method_stats(nums, cfg, measured, row0, label_free=labels is None)
    worst = worst_rows(
        cfg.top_k, cfg.working.eps, rows_g, facts, nums.ref_loss, nums.ref_lo, nums.ref_p, xf, e,
        per_method,
    )  # fmt: skip
    per_row = None
    if cfg.per_row:
        per_row = per_row_block(rows_g, facts, e, nums.ref_loss, nums.ref_lo, per_method)
    return ChunkStats(inp, methods, worst), per_row


def _label_free_numerics(prep: Prepared, cfg: EngineConfig, row0: int) -> _Numerics:
    """A label-free chunk: the row facts, the reference of every (row, class) pair and each
    method's :class:`_MethodRows`."""
    zmax, zmin, amax = _extremes(prep.xk)
    # inf - inf on rows with non-finite input: not eligible, their margin unused
    with np.errstate(invalid="ignore", over="ignore"):
        margin = zmax - zmin
    facts = RowFacts(
        None, None, prep.ignored, prep.finite_input, zmax, zmin, amax, margin, prep.cast_report
    )
    ref = reference_of(prep)
    e = facts.finite_input & ~facts.ignored
    methods = _label_free_methods(prep, cfg, e, ref, row0)
    return _Numerics(facts, ref.loss, ref.loss_lo, ref.prob, methods, ref_scaled=ref.loss_scaled)


def _input_stats(
    facts: RowFacts, ref_loss: np.ndarray, e: np.ndarray, rows_g: np.ndarray, working: Precision
) -> InputStats:
    """What the chunk's input looks like over its eligible rows ``e``, and how many of them
    (pairs, label-free) the reference itself cannot measure."""
    zmax, zmin, margin = facts.zmax, facts.zmin, facts.margin
    e_loss = e[:, None] if ref_loss.ndim == 2 else e
    return InputStats(
        rows=int(e.size),
        eligible=int(e.sum()),
        ignored=int(facts.ignored.sum()),
        nonfinite_input=int((~facts.finite_input).sum()),
        ref_nonfinite=int(np.count_nonzero(e_loss & ~np.isfinite(ref_loss))),
        logit_max=Extreme.of(zmax[e], rows_g[e], facts.amax[e]),
        logit_min=float(zmin[e].min()) if e.any() else math.nan,
        margin_max=_largest(margin[e], rows_g[e]),
        rows_over_ln_max=int(np.count_nonzero(e & (zmax > working.ln_max))),
        rows_margin_underflow=int(np.count_nonzero(e & (margin > underflow_margin(working)))),
        cast=facts.cast,
    )


def _method_stats(
    nums: _Numerics, cfg: EngineConfig, measured: np.ndarray, row0: int, *, label_free: bool
) -> tuple[dict[str, MethodStats], dict[str, dict[str, np.ndarray]]]:
    """Each method's loss and gradient statistics, and its per-row arrays for the worst rows
    and per-row files (label-free: gradient errors as the worst over each row's checked
    classes)."""
    n = int(nums.facts.finite_input.size)
    methods: dict[str, MethodStats] = {}
    per_method: dict[str, dict[str, np.ndarray]] = {}
    for name in cfg.methods:
        mr = nums.methods[name]
        st, arrays = _loss_stats(
            mr, cfg, nums.ref_loss, nums.ref_lo, measured, row0, nums.ref_scaled
        )
        gst, gabs, grel = _grad_stats(mr.grad_errors, mr.grad_measured, mr.grad_rows, mr.grad_cols)
        if label_free:
            gabs, grel = (
                _row_max(gabs, mr.grad_rows - row0, n),
                _row_max(grel, mr.grad_rows - row0, n),
            )
        methods[name] = st + gst
        per_method[name] = {**arrays, "grad_abs_err": gabs, "grad_rel_err": grel}
    return methods, per_method


def _largest(values: np.ndarray, rows: np.ndarray) -> Extreme:
    """Largest value and its (lowest) row, +inf included (a margin beyond max float64)."""
    top = np.isposinf(values)
    if top.any():
        return Extreme(math.inf, int(rows[int(np.argmax(top))]), -1)
    return Extreme.of(values, rows)


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
    ``workers`` blocks' working arrays. With ``workers > 1`` (at most the CPUs) blocks run in
    parallel through :func:`smcheck.executor.ordered_map`, at most ``2 * workers`` in flight:
    in forked worker processes where that is safe (:func:`smcheck.executor.can_fork`;
    ``processes=None`` decides, True/False forces), else on threads. ``per_row`` receives each
    block's :class:`PerRowBlock` in row order; ``progress(rows_done, rows_total)`` is called
    after each block.
    """
    n = int(logits.shape[0])
    step = max(1, int(chunk_rows))
    cfg = replace(cfg, per_row=per_row is not None)
    release_pages(logits)  # pages a loader touched (e.g. scanning for inf) need not stay mapped
    starts = list(range(0, n, step)) or [0]
    fork = can_fork(cfg.methods) if processes is None else processes
    if len(starts) > 1:
        accelerator()  # loaded and self-checked once here, not again in every worker
    task = partial(_task, logits, labels, cfg, step)  # a forked worker inherits it, unpickled
    total: ChunkStats | None = None
    for start, (st, rows) in zip(
        starts, ordered_map(task, starts, workers=workers, processes=fork), strict=True
    ):
        total = st if total is None else merge(total, st)
        if per_row is not None and rows is not None:
            per_row(rows)
        if progress is not None:
            progress(min(start + step, n), n)
    assert total is not None
    return total


def _task(
    logits: np.ndarray, labels: np.ndarray | None, cfg: EngineConfig, step: int, start: int
) -> tuple[ChunkStats, PerRowBlock | None]:
    block = logits[start : start + step]
    lab = None if labels is None else np.asarray(labels[start : start + step])
    try:
        return chunk_stats(np.asarray(block), lab, start, cfg)
    finally:
        release_pages(block)
