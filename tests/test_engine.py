"""The chunk kernel and its merge: exact sums, histogram quantiles, extremes, chunk invariance."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smcheck.core import prepare
from smcheck.diagnosis import OVERFLOW_CAUSES, overflow_causes
from smcheck.engine import (
    FULL_GRAD_CLASSES,
    RANDOM_GRAD_LABELS,
    EngineConfig,
    chunk_rows_for,
    chunk_stats,
    grad_labels,
    run,
)
from smcheck.gradient_errors import grad_errors
from smcheck.memmaps import release_pages
from smcheck.metrics import grad_abs_err, grad_rel_err
from smcheck.precisions import get_precision
from smcheck.stats import (
    HIST_BINS,
    WORST_FIELDS,
    WORST_METHOD_FIELDS,
    ExactSum,
    Extreme,
    Histogram,
    MethodStats,
    _hist,
    hist_quantile,
)


def exact(values: np.ndarray) -> Fraction:
    """Independent exact sum: Fraction of every float64 (Python's exact rationals)."""
    return sum((Fraction(float(v)) for v in values), Fraction(0))


# ---------------------------------------------------------------- ExactSum


@pytest.mark.parametrize(
    "values",
    [
        [1e16, 1.0, -1e16],
        [1e308, 1e308, -1e308, -1e308, 5e-324],  # would overflow in float64
        [0.1] * 10,
        [5e-324, -5e-324, 2.2250738585072014e-308, 1e-320],  # subnormals
        [-3.5, -0.25, 2.0**-60, 2.0**60],
        [],
    ],
)
def test_exact_sum_is_exact(values: list[float]) -> None:
    v = np.array(values, dtype=np.float64)
    s = ExactSum.of(v)
    assert s.value() == exact(v)
    assert s.count == len(values)


def test_exact_sum_random_cancellation_and_merge_order() -> None:
    rng = np.random.default_rng(3)
    v = rng.standard_normal(5000) * np.exp2(rng.integers(-60, 60, 5000))
    v = np.concatenate([v, -v[:2500]])  # heavy cancellation
    whole = ExactSum.of(v)
    assert whole.value() == exact(v)
    parts = [ExactSum.of(v[i : i + 777]) for i in range(0, v.size, 777)]
    fwd = parts[0]
    for p in parts[1:]:
        fwd = fwd + p
    back = parts[-1]
    for p in reversed(parts[:-1]):
        back = p + back
    assert fwd == back == whole
    # correctly rounded, as math.fsum is
    assert float(whole.value()) == math.fsum(v.tolist())


# ---------------------------------------------------------------- histogram quantiles


def test_hist_quantile_bound_against_exact_order_statistics() -> None:
    rng = np.random.default_rng(5)
    v = np.abs(rng.standard_normal(10001)) * np.exp2(rng.integers(-30, 10, 10001))
    v[:1000] = 0.0
    h = _hist(v)
    assert h.total == v.size and h.bins.max() < HIST_BINS
    assert h == _hist(v[:5000]) + _hist(v[5000:]) == _hist(v[5000:]) + _hist(v[:5000])
    srt = np.sort(v)
    for q in (0.0, 0.05, 0.5, 0.9, 0.99, 1.0):
        exact_q = srt[int(math.floor(q * (v.size - 1)))]
        got = hist_quantile(h, q)
        assert got is not None
        if exact_q == 0:
            assert got == 0.0
        else:
            # the documented bound: got <= exact < got * (1 + 2**-5)
            assert got <= exact_q < got * (1 + 2**-5)


def test_hist_quantile_edges() -> None:
    assert hist_quantile(Histogram(), 0.5) is None
    assert hist_quantile(_hist(np.array([np.inf, np.inf])), 0.5) == math.inf
    assert hist_quantile(_hist(np.array([np.nan, 0.5])), 0.5) == 0.5  # NaN is not binned
    assert hist_quantile(_hist(np.array([1.0, 2.0])), 0.5) == 1.0  # the lower median


# ---------------------------------------------------------------- extremes


def test_extreme_ties_go_to_the_lowest_row_and_merge_commutes() -> None:
    a = Extreme.of(np.array([1.0, 3.0, 3.0]), np.array([10, 11, 12]))
    assert (a.value, a.row) == (3.0, 11)
    b = Extreme.of(np.array([3.0, np.inf, np.nan]), np.array([5, 6, 7]))
    assert (b.value, b.row) == (3.0, 5)  # inf/NaN are counted elsewhere, not maxima
    assert a + b == b + a == b
    empty = Extreme.of(np.array([np.nan]), np.array([0]))
    assert math.isnan(empty.value) and empty + a == a and a + empty == a


# ---------------------------------------------------------------- label-free gradient labels


def test_grad_labels_all_classes_when_few() -> None:
    x = np.arange(12.0).reshape(3, 4)
    rows, cols = grad_labels(x, 0)
    assert rows.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert cols.tolist() == [0, 1, 2, 3] * 3


def test_grad_labels_subset_is_deterministic_and_contains_argmax_argmin() -> None:
    rng = np.random.default_rng(0)
    c = FULL_GRAD_CLASSES + 50
    x = rng.standard_normal((20, c))
    rows, cols = grad_labels(x, 100)
    for r in range(20):
        mine = set(cols[rows == r].tolist())
        assert int(np.argmax(x[r])) in mine and int(np.argmin(x[r])) in mine
        assert 2 <= len(mine) <= 2 + RANDOM_GRAD_LABELS
    keys = rows * c + cols
    assert np.all(np.diff(keys) > 0)  # sorted, no repeats
    # the same rows seen in another chunking get the same classes
    r2, c2 = grad_labels(x[7:], 107)
    assert set(zip((r2 + 7).tolist(), c2.tolist(), strict=True)) == {
        (r, k) for r, k in zip(rows.tolist(), cols.tolist(), strict=True) if r >= 7
    }


def test_chunk_rows_for_respects_the_budget() -> None:
    # labelled: 8 bytes per logit of the chunk plus one sub-block of 2**19 logits at 80 bytes
    sub = (2**19 // 32000) * 32000
    assert chunk_rows_for(32000, 4, False, 64 * 2**20) == (64 * 2**20 - 80 * sub) // (8 * 32000)
    assert chunk_rows_for(10**7, 4, False, 2**20) == 1  # one row at least
    assert chunk_rows_for(1000, 4, True, 2**26) < chunk_rows_for(1000, 4, False, 2**26)


# ---------------------------------------------------------------- chunk invariance


def _same(a: MethodStats, b: MethodStats) -> bool:
    for f in a.__dataclass_fields__:
        x, y = getattr(a, f), getattr(b, f)
        if isinstance(x, Extreme):
            same_value = x.value == y.value or (math.isnan(x.value) and math.isnan(y.value))
            if (x.row, x.col) != (y.row, y.col) or not same_value:
                return False
        elif x != y:
            return False
    return True


# the fork cases are forced here (the engine itself never forks once JAX is imported: see
# test_an_imported_jax_rules_fork_out); JAX, imported by an earlier test, warns at each fork
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
@pytest.mark.parametrize("label_free", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_run_is_identical_for_any_chunking_and_worker_count(label_free: bool, dtype: str) -> None:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((97, 40)) * 7).astype(np.float32)
    x[3, 2] = np.nan
    y = rng.integers(0, 40, 97)
    y[5] = -100
    t = get_precision(dtype)
    cfg = EngineConfig(t, get_precision("float32"), ("naive", "shifted", "fused", "log1p"))
    lab = None if label_free else y
    ref = run(x, lab, cfg, chunk_rows=97)
    # chunk rows, workers, forked processes or threads, logits per numerics sub-block
    for rows, workers, fork, block in (
        (1, 1, False, 40),
        (10, 2, False, 1 << 19),
        (33, 3, False, 120),
        (10, 2, True, 1 << 19),
        (33, 2, True, 80),
        (97, 1, False, 280),
    ):
        c = replace(cfg, block_values=block)
        got = run(x, lab, c, chunk_rows=rows, workers=workers, processes=fork)
        assert got.input == ref.input
        for m in cfg.methods:
            assert _same(got.methods[m], ref.methods[m]), (m, rows, workers, fork, block)
        for k, v in ref.worst.cols.items():
            assert np.array_equal(got.worst.cols[k], v, equal_nan=True), k


def test_chunks_run_in_forked_processes_only_where_that_is_safe() -> None:
    import threading

    from smcheck.executor import can_fork

    # alone in the process (threads left by other tests, e.g. dask's, or an imported JAX, rule
    # fork out too)
    alone = threading.active_count() == 1 and "jax" not in sys.modules
    assert can_fork(("naive", "fused")) == alone
    # torch and jax keep thread pools of their own: threads, not fork
    assert not can_fork(("fused", "torch"))
    # another Python thread may hold a lock the child would inherit locked
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not can_fork(("fused",))
    finally:
        stop.set()
        other.join()


def test_progress_and_per_row_blocks_come_in_row_order() -> None:
    x = np.random.default_rng(1).standard_normal((25, 6)).astype(np.float32)
    cfg = EngineConfig(get_precision("float32"), get_precision("float32"), ("fused",))
    seen: list[tuple[int, int]] = []
    starts: list[int] = []
    run(
        x,
        np.zeros(25, np.int64),
        cfg,
        chunk_rows=4,
        workers=2,
        progress=lambda d, t: seen.append((d, t)),
        per_row=lambda b: starts.append(int(b.row[0])),
    )
    assert seen == [(min(i + 4, 25), 25) for i in range(0, 25, 4)]
    assert starts == list(range(0, 25, 4))


def test_method_counts_against_an_independent_count() -> None:
    # float16: exp(z) overflows for z > ln(65504) = 11.09; rows with one logit of 12 overflow
    x = np.zeros((50, 5), dtype=np.float16)
    over_rows = [2, 3, 17, 40, 41, 49]
    x[over_rows, 1] = 12.0
    x[:, 4] = 11.0  # exp(11) = 59874 < 65504: not an overflow by itself
    y = np.zeros(50, np.int64)
    y[over_rows[:2]] = 1  # label on the overflowing class: p_y = inf/inf = NaN
    cfg = EngineConfig(get_precision("float16"), get_precision("float32"), ("naive", "fused"))
    st = run(x, y, cfg, chunk_rows=7)
    assert st.input.rows_over_ln_max == len(over_rows)
    assert st.methods["naive"].overflow == len(over_rows)
    assert st.methods["naive"].nan_loss == 2
    assert st.methods["naive"].inf_loss == 4  # p_y = 1/inf = 0: -log 0 = inf
    assert st.methods["naive"].nonfinite_grad == len(over_rows)
    assert st.methods["fused"].overflow == 0 and st.methods["fused"].nan_loss == 0
    assert st.methods["fused"].measured == 50
    # exp overflowed in all six (the chunks' cause counts merge by addition)
    assert st.methods["naive"].overflow_causes == (0, len(over_rows), 0, 0, 0)


def test_overflow_causes_per_row_against_hand_facts() -> None:
    # float16 rows, label 1, accumulated in float16:
    # 0: [12, 0]: exp(12) = 162755 > 65520 (the float16 overflow threshold): exp
    # 1: [10, 10, 10, 10]-like sum: four exp(10) = 22032 sum to 88128 > 65520: sum
    # 2: [0, -12]: p_y = e^-12 / (1 + e^-12) = 6.1e-6 in (0, 1/65520): -1/p_y overflows: grad
    # 3: [1, 2]: nothing (not flagged)
    t, a = get_precision("float16"), get_precision("float16")
    x = np.array([[12, 0, -30, -30], [10, 10, 10, 10], [0, -12, -30, -30], [1, 2, 0, 0]], t.dtype)
    y = np.array([1, 1, 1, 1])
    flagged = np.array([True, True, True, False])
    got = overflow_causes("naive", x, y, flagged, t, a)
    assert [OVERFLOW_CAUSES[i] if i >= 0 else None for i in got] == ["exp", "sum", "grad", None]
    # shifted: d <= 0, so exp(d) <= 1 and four of them sum to 4; its -1/p_y row is the same
    got = overflow_causes("shifted", x[1:3], y[1:3], flagged[1:3], t, a)
    assert [OVERFLOW_CAUSES[i] for i in got] == ["other", "grad"]
    # label-free: no -1/p_y is computed, so a flagged row nothing explains is "other"
    got = overflow_causes("shifted", x[2:3], None, np.array([True]), t, a)
    assert [OVERFLOW_CAUSES[i] for i in got] == ["other"]


def test_grad_errors_equal_the_metrics_functions() -> None:
    rng = np.random.default_rng(2)
    g = rng.standard_normal((8, 5)).astype(np.float32)
    ref = g.astype(np.float64) + rng.standard_normal((8, 5)) * 1e-7
    lo = rng.standard_normal((8, 5)) * 1e-24
    g[1, 2] = np.nan
    g[2, 0] = np.inf
    ref[3, 1] = np.nan  # reference not finite: not measurable
    ref[4] = 0.0  # ||g*|| = 0
    g[4] = 0.0
    for low in (None, lo):
        gabs, grel, bad = grad_errors(g, ref, low)
        np.testing.assert_array_equal(gabs, grad_abs_err(g, ref, low))
        np.testing.assert_array_equal(grel, grad_rel_err(g, ref, low))
        assert bad.tolist() == [False, True, True] + [False] * 5
        with np.errstate(invalid="ignore"):
            norm = np.sqrt(np.sum(ref * ref, axis=1))
        shared = grad_errors(g, ref, low, ref_norm=norm)
        np.testing.assert_array_equal(shared[1], grel)


def test_grad_errors_bad_rows_when_the_difference_overflows_or_the_reference_is_inf() -> None:
    # float64 gradients: row 0 finite but g - g* = 1.5e308 + 1.5e308 overflows (not a bad
    # gradient); row 1 an inf reference entry (not measurable, g finite: not bad); row 2 a NaN
    # gradient and an inf reference; row 3 a -inf gradient. Checked against plain scans.
    g = np.array([[1.5e308, 0.0], [0.5, 0.5], [np.nan, 0.5], [-np.inf, 1.0]])
    ref = np.array([[-1.5e308, 0.0], [np.inf, 0.5], [np.inf, 0.5], [0.0, 1.0]])
    with np.errstate(over="ignore", invalid="ignore"):
        gabs, grel, bad = grad_errors(g, ref, ref_norm=np.ones(4))
    assert bad.tolist() == (~np.isfinite(g).all(axis=1)).tolist() == [False, False, True, True]
    ref_bad = ~np.isfinite(ref).all(axis=1)
    assert np.isnan(gabs).tolist() == ref_bad.tolist() == [False, True, True, False]
    assert gabs[0] == np.inf and gabs[3] == np.inf and grel[3] == np.inf


def test_root_of_a_rounded_square_is_the_magnitude_in_radix_2() -> None:
    """grad_errors reads max |d| off max fl(d**2): sqrt(fl(x**2)) = |x| whenever fl(x**2) is
    normal and finite. Exhaustive over float32's [1, 4) (every float32 scales into it by a power
    of 4, which the square and the root carry exactly), and float64 values across the range
    grad_errors trusts, near powers of two and near sqrt(2) * 2**e (the squares' binade edges)."""
    x = np.arange(
        np.float32(1).view(np.uint32), np.float32(4).view(np.uint32), dtype=np.uint32
    ).view(np.float32)
    np.testing.assert_array_equal(np.sqrt(x * x), x)
    rng = np.random.default_rng(0)
    e = rng.integers(-499, 511, 1_000_000)
    for m in (rng.uniform(1, 2, e.size), np.full(e.size, np.sqrt(2.0)), np.ones(e.size)):
        v = np.ldexp(m, e)
        for w in (v, np.nextafter(v, 0), np.nextafter(v, np.inf)):
            np.testing.assert_array_equal(np.sqrt(w * w), w)


def test_grad_errors_where_the_square_underflows_or_overflows() -> None:
    """Rows whose squared differences leave float64's normal range take max |d| from d itself:
    all differences ~1e-200 (the square underflows to 0), one of 1e200 (it overflows to inf),
    exact zeros, and ordinary rows beside them - the same values as the metrics functions."""
    ref = np.array([[3e-200, -3e-200, 0.0], [0.5, -0.5, 0.0], [1.0, -1.0, 0.0], [0.5, 0.25, -0.75]])
    g = ref.copy()
    g[0] = [6e-200, -1e-199, 1e-300]  # differences 3e-200, -7e-200, 1e-300
    g[1, 2] = 1e200
    g[3, 1] += 2.0**-30
    with np.errstate(under="ignore"):
        gabs, grel, bad = grad_errors(g, ref)
        np.testing.assert_array_equal(gabs, grad_abs_err(g, ref))
        np.testing.assert_array_equal(grel, grad_rel_err(g, ref))
    assert gabs[0] == np.abs(g[0] - ref[0]).max() and 6e-200 < gabs[0] < 8e-200
    assert gabs[1] == 1e200 and gabs[2] == 0.0 and gabs[3] == 2.0**-30
    assert not bad.any()


def test_release_pages_keeps_values_and_skips_plain_arrays(tmp_path) -> None:
    a = np.arange(3000 * 8, dtype=np.float32).reshape(3000, 8)
    np.save(tmp_path / "a.npy", a)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    block = mm[1000:2000]
    before = np.array(block)
    assert release_pages(block) is True
    np.testing.assert_array_equal(block, before)  # pages come back from the file
    assert release_pages(a[10:20]) is False
    cfg = EngineConfig(get_precision("float32"), get_precision("float32"), ("fused",))
    got = run(mm, None, cfg, chunk_rows=512)
    assert got.methods["fused"].measured == 3000 * 8


_VALUES = st.one_of(
    st.floats(-40, 40, width=32),
    st.sampled_from([np.inf, -np.inf, np.nan, 11.5, -17.0]),
)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_property_chunking_never_changes_the_stats(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 10), label="rows")
    c = data.draw(st.integers(1, 40), label="classes")
    x = data.draw(hnp.arrays(np.float32, (n, c), elements=_VALUES), label="x")
    labelled = data.draw(st.booleans(), label="labelled")
    y = None
    if labelled:
        y = np.array(data.draw(st.lists(st.integers(-1, c - 1), min_size=n, max_size=n)))
        y[y == -1] = -100
    dtype = data.draw(st.sampled_from(["float16", "bfloat16", "float32"]), label="dtype")
    rows = data.draw(st.integers(1, n), label="chunk rows")
    cfg = EngineConfig(get_precision(dtype), get_precision("float32"), ("naive", "fused", "log1p"))
    whole = run(x, y, cfg, chunk_rows=n)
    parts = run(x, y, cfg, chunk_rows=rows)
    assert parts.input == whole.input
    for m in cfg.methods:
        assert _same(parts.methods[m], whole.methods[m]), m
    # the stable formulations are finite wherever the input is finite
    for m in ("fused", "log1p"):
        st_m = whole.methods[m]
        assert st_m.nan_loss == st_m.inf_loss == st_m.overflow == st_m.nonfinite_grad == 0


def test_worst_rows_columns_are_the_declared_fields() -> None:
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    cfg = EngineConfig(get_precision("float32"), get_precision("float32"), ("naive", "fused"))
    for y in (np.zeros(6, np.int64), None):
        cols = run(x, y, cfg, chunk_rows=4).worst.cols
        want = set(WORST_FIELDS) | {f"{m}:{f}" for m in cfg.methods for f in WORST_METHOD_FIELDS}
        assert set(cols) == want


def test_grad_errors_many_reuse_equal_rows_and_match_one_at_a_time() -> None:
    """Rows equal to the previous method's gradient take its errors: the same values as
    comparing every method on its own, whatever the row block (NaN rows are recomputed)."""
    from smcheck.gradient_errors import grad_errors_many

    rng = np.random.default_rng(5)
    n, c = 9, 70000  # rows wider than one comparison block
    ref = rng.standard_normal((n, c))
    a = (ref + rng.standard_normal((n, c)) * 1e-6).astype(np.float32)
    b = a.copy()
    b[[1, 4, 7]] += np.float32(1e-3)  # rows that differ from the previous method
    b[2, 5] = np.nan  # equal rows with a NaN are not "equal"
    a[2, 5] = np.nan
    c3 = b.copy()  # equal to b on every row: all its errors are taken over
    lo = rng.standard_normal((n, c)) * 1e-22
    for low in (None, lo):
        many = grad_errors_many([a, b, c3], ref, low)
        for g, (gabs, grel, bad) in zip((a, b, c3), many, strict=True):
            want = grad_errors(g, ref, low)
            for u, v in zip((gabs, grel, bad), want, strict=True):
                assert np.array_equal(u, v, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_overflow_causes_read_off_the_shared_softmax_equal_the_recomputed_ones(dtype: str) -> None:
    from smcheck.methods import shifted_softmax

    t, a = get_precision(dtype), get_precision("float32")
    rng = np.random.default_rng(9)
    raw = rng.standard_normal((40, 64)) * min(30.0, t.max / 8)
    raw[3, :] = min(400.0, t.max / 2)  # ties at a large value
    raw[5, 7] = -min(t.max, 1e4)  # a shift that overflows where there is no inf
    x = np.asarray(prepare(raw, None, dtype=t).xk)  # values of T in its carrier
    y = rng.integers(0, 64, 40)
    every = np.ones(40, bool)  # ask for every row, flagged or not
    with np.errstate(all="ignore"):
        sm = shifted_softmax(x, t, a)
    for name in ("shifted", "fused"):
        want = overflow_causes(name, x, y, every, t, a)
        got = overflow_causes(name, x, y, every, t, a, sm)
        assert np.array_equal(got, want), (name, got, want)


def test_an_imported_jax_rules_fork_out() -> None:
    # JAX's thread pools exist from its import on and it warns at every fork (a RuntimeWarning
    # that the child may deadlock): a process that imported it must run chunks on threads
    pytest.importorskip("jax")
    code = (
        "import sys, smcheck.executor as e; before = e.can_fork(('fused',)); import jax; "
        "jax.numpy.zeros(1); sys.exit(0 if before and not e.can_fork(('fused',)) else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _can_fork_in_child(queue: object) -> None:
    from smcheck.executor import can_fork

    queue.put(can_fork(("fused",)))  # type: ignore[attr-defined]


def test_no_fork_inside_a_daemonic_process() -> None:
    """A multiprocessing pool's worker is daemonic and may not have children: the engine uses
    threads there (it used to fail with 'daemonic processes are not allowed to have children')."""
    import multiprocessing
    import warnings

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # and JAX, if an earlier test imported it
        child = ctx.Process(target=_can_fork_in_child, args=(queue,), daemon=True)
        child.start()
    assert queue.get(timeout=60) is False
    child.join(timeout=60)


def test_an_empty_chunk_reports_an_empty_cast() -> None:
    t = get_precision("float16")
    cfg = EngineConfig(t, get_precision("float32"), ("fused",))
    st, _ = chunk_stats(np.zeros((0, 5), np.float32), np.zeros(0, np.int64), 0, cfg)
    assert st.input.cast is not None and st.input.cast.values == 0
