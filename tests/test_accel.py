"""The optional compiled kernels (smcheck._accel) against the numpy path.

The numpy code is the reference implementation (:func:`smcheck.gradient_errors._numpy_sums`,
:func:`smcheck.precisions._round_block`, :func:`smcheck.precisions._round_f32_bf16_numpy`); the
compiled one must give the same sums of squares, maxima, reference norms and roundings bit for
bit (then every reported number is the same: tested on whole eval runs too). Where the module is
not built the comparisons skip, except under ``SMCHECK_REQUIRE_ACCEL=1`` (set by CI), where a
missing module fails.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck import accel as ac
from smcheck import gradient_errors as ge
from smcheck import precisions as pr
from smcheck.cli import cli


@pytest.fixture
def accel() -> types.ModuleType:
    mod = ac.accelerator()
    if mod is None and os.environ.get(ac.ACCEL_ENV, "1").strip() == "0":
        pytest.skip("the compiled kernels are turned off (SMCHECK_ACCEL=0)")
    if mod is None:
        if os.environ.get("SMCHECK_REQUIRE_ACCEL") == "1":
            pytest.fail("smcheck._accel is not built (SMCHECK_REQUIRE_ACCEL=1)")
        pytest.skip("smcheck._accel is not built here")
    return mod


def _both(
    mod: types.ModuleType, grads: list[np.ndarray], ref: np.ndarray, lo: np.ndarray | None
) -> None:
    n, c = ref.shape
    k = len(grads)
    want = (np.zeros((k, n)), np.zeros((k, n)), np.zeros(n))
    got = (np.full((k, n), 7.0), np.full((k, n), 7.0), np.full(n, 7.0))
    with np.errstate(all="ignore"):
        ge._numpy_sums(grads, ref, lo, want[2], want[0], want[1])
    mod.grad_errors(grads, n, c, ref, lo, got[2], got[0], got[1])
    names = ("sum of squares", "max square", "reference norm")
    for what, a, b in zip(names, want, got, strict=True):
        # bit for bit; NaN where NaN
        same = (a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))
        assert same.all(), (what, c, np.flatnonzero(~same.ravel())[:5])


# lengths that reach every branch of numpy's pairwise sum: below 8 terms, the 8-way unrolled
# block (with and without leftovers), and splits into halves at odd places
_LENGTHS = [*range(1, 140), 255, 256, 257, 1000, 1001, 4097, 32000, 32003, 50257]


@pytest.mark.parametrize("low", [False, True])
def test_sums_equal_numpys_bit_for_bit_at_every_length(accel: types.ModuleType, low: bool) -> None:
    rng = np.random.default_rng(11)
    for c in _LENGTHS:
        n = 4
        scale = np.array([[1.0], [1e-160], [1e150], [1.0 / c]])  # squares under- and overflow
        ref = rng.standard_normal((n, c)) * scale
        lo = ref * 2.0**-56 * rng.standard_normal((n, c)) if low else None
        with np.errstate(over="ignore"):
            g32 = (ref * (1 + 1e-6 * rng.standard_normal((n, c)))).astype(np.float32)
        g64 = ref * (1 + 1e-13 * rng.standard_normal((n, c)))
        g64[0, c // 3] = np.nan
        g32[3, c - 1] = -np.inf
        same = g32.copy()
        same[2, 0] = np.nextafter(same[2, 0], np.float32(np.inf))  # one row differs by an ulp
        _both(accel, [g32, same, g64, g64.copy(), g32], ref, lo)


def test_sums_of_rows_with_signed_zeros_and_nan_rows_equal_numpys(accel: types.ModuleType) -> None:
    ref = np.zeros((3, 20))
    ref[1] = -0.0
    g = np.zeros((3, 20), np.float32)
    g[0] = -0.0
    g[2] = np.nan
    prev = g.copy()
    prev[0] = 0.0  # +0 and -0 compare equal but differ in their bits: both give +0 squares
    _both(accel, [prev, g], ref, None)
    _both(accel, [prev, g], ref, ref.copy())


def test_grad_errors_many_is_the_same_with_and_without_it(
    accel: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((6, 300)) / 300
    lo = ref * 1e-17
    grads = [(ref * (1 + 1e-6 * rng.standard_normal(ref.shape))).astype(np.float32)] * 2
    grads.append(ref + 1e-20)
    on = ge.grad_errors_many(grads, ref, lo)
    monkeypatch.setenv(ac.ACCEL_ENV, "0")
    assert ac.accelerator() is None
    off = ge.grad_errors_many(grads, ref, lo)
    for a, b in zip(on, off, strict=True):
        for u, v in zip(a, b, strict=True):
            assert np.array_equal(u, v, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_eval_json_is_the_same_with_and_without_it(
    accel: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dtype: str
) -> None:
    """Whole eval runs, rows of every kind (confident, overflowing, NaN, inf, ignored), wide
    enough for the pairwise sum's splits: the JSON documents are identical."""
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((40, 3000)) * 8).astype(np.float32)
    x[1, 7] = 300.0
    x[2] = 0.0
    x[3, 9] = np.nan
    x[4, 1] = np.inf
    x[5] += 1e4
    y = rng.integers(0, 3000, 40)
    y[6] = -100
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    monkeypatch.chdir(tmp_path)
    args = ["--no-config", "eval", "x.npy", "--labels", "y.npy", "--dtype", dtype]
    args += ["--methods", "all", "--chunk-rows", "16", "--format", "json"]
    on = CliRunner().invoke(cli, args, catch_exceptions=False)
    monkeypatch.setenv(ac.ACCEL_ENV, "0")
    off = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert on.exit_code == off.exit_code and on.exit_code in (0, 1), on.output
    assert '"rel_err"' in on.stdout or '"grad' in on.stdout
    assert on.stdout == off.stdout


def test_a_module_that_disagrees_with_numpy_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load-time self-check: a build whose sums are off by one ulp (as unsafe compiler
    flags would give) is refused with a warning and the numpy path runs."""
    import sys

    def grad_errors(grads, n, c, ref, lo, ref_sq, sq, top):  # type: ignore[no-untyped-def]
        ge._numpy_sums(grads, ref, lo, ref_sq, sq, top)
        sq[0, 0] = np.nextafter(sq[0, 0], np.inf)  # one ulp off

    def numpy_sums(grads, n, c, ref, lo, ref_sq, sq, top):  # type: ignore[no-untyped-def]
        ge._numpy_sums(grads, ref, lo, ref_sq, sq, top)

    real = ac.accelerator()  # before sys.modules holds the fake (None where not built)
    fake = types.ModuleType("smcheck._accel")
    fake.grad_errors = grad_errors  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "smcheck._accel", fake)
    warns = pytest.warns(RuntimeWarning, match="differs from the numpy path .gradient errors")
    with np.errstate(all="ignore"), warns:
        assert ac._load() is None
    fake.grad_errors = numpy_sums  # type: ignore[attr-defined]
    if real is None:
        return
    fake.round_grid = real.round_grid  # type: ignore[attr-defined]

    def bad_bf16(x: np.ndarray, out: np.ndarray) -> None:  # one bit off in the first value
        real.round_bf16(x, out)
        out.view(np.uint32)[0] ^= 1

    fake.round_bf16 = bad_bf16  # type: ignore[attr-defined]
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="rounding to bfloat16"):
        assert ac._load() is None
    fake.round_bf16 = real.round_bf16  # type: ignore[attr-defined]
    with np.errstate(all="ignore"):
        assert ac._load() is fake


def test_arrays_it_does_not_take_go_to_numpy(accel: types.ModuleType) -> None:
    ref = np.ones((3, 10))
    sq, top = np.zeros((1, 3)), np.zeros((1, 3))
    for g in (
        np.ones((3, 10), np.float16),  # not float32/float64
        np.ones((3, 10), ">f4"),  # not native byte order
        np.ones((10, 3), np.float32).T,  # not C-contiguous
    ):
        assert not ge._compiled_sums([g], ref, None, None, sq, top)
    assert not ge._compiled_sums([np.ones((3, 10))], np.asfortranarray(ref), None, None, sq, top)
    assert ge._compiled_sums([np.ones((3, 10), np.float32)], ref, None, None, sq, top)
    with pytest.raises(ValueError, match="C-contiguous"):  # the module checks what it is given
        accel.grad_errors([np.ones((3, 9))], 3, 10, ref, None, None, sq, top)


def _float32_probe() -> np.ndarray:
    """float32 values of both signs: every exponent with mantissas at and beside the rounding
    points; every pattern of the 16 low mantissa bits (all of bfloat16's and float16's rounding
    cases, ties included) in the exponents where the 16/8-bit types have their subnormals,
    normals and overflow (float32 exponents 100..150); 2**20 random bit patterns (NaN payloads
    included). (An exhaustive run over all 2**32 inputs agreed too: see docs/performance.md.)"""
    e = np.arange(256, dtype=np.uint32) << np.uint32(23)
    edge = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0xFFFF, 0x10000, 0x7FFFF, 0x80000, 0x7FFFFF])
    every = (e[:, None] | edge[None, :].astype(np.uint32)).ravel()
    low = np.arange(1 << 16, dtype=np.uint32) | np.uint32(0x3F0000)
    window = (e[100:151, None] | low[None, :]).ravel()
    rnd = np.random.default_rng(4).integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    bits = np.concatenate([every, window])
    return np.concatenate([bits, bits | np.uint32(0x80000000), rnd]).view(np.float32)


@pytest.mark.parametrize("name", ["float16", "float8_e4m3fn", "float8_e5m2"])
def test_grid_rounding_equals_numpys_bit_for_bit(accel: types.ModuleType, name: str) -> None:
    x = _float32_probe()
    t = pr.get_precision(name)
    f, emin, emax = pr._round_grid_params(t)
    for mode, src in enumerate((x, np.abs(x), np.abs(x[np.abs(x) < 2.0**emax]))):
        want = np.empty_like(src)
        with np.errstate(all="ignore"):
            for i in range(0, src.size, 1 << 16):
                sl = slice(i, i + (1 << 16))
                pr._round_block(src[sl], want[sl], t, unit=mode == 2, nonneg=mode == 1)
        got = np.empty_like(src)
        accel.round_grid(src, got, f, emin, emax, mode, float(t.max), t.has_inf)
        assert ac._same(want, got), (name, mode)
        # in place (out is x), as round_in(overwrite=True) calls it
        inplace = src.copy()
        accel.round_grid(inplace, inplace, f, emin, emax, mode, float(t.max), t.has_inf)
        assert ac._same(want, inplace)


def test_bfloat16_rounding_equals_ml_dtypes_bit_for_bit(accel: types.ModuleType) -> None:
    import ml_dtypes

    x = _float32_probe()
    got = np.empty_like(x)
    accel.round_bf16(x, got)
    assert ac._same(pr._round_f32_bf16_numpy(x), got)
    # and the independent conversion, NaN aside (ml_dtypes' NaN is a quiet NaN of any payload)
    with np.errstate(all="ignore"):
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    ok = np.isnan(x)
    assert np.array_equal(want[~ok].view(np.uint32), got[~ok].view(np.uint32))
    assert np.isnan(got[ok]).all()


def test_the_self_check_catches_a_different_order_on_long_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """numpy before 2.3 summed rows longer than 8192 in buffer-sized pieces (0 + pw(8192) +
    pw(next 8192) + ...): a kernel in that order (or a numpy in it) agrees on short rows only,
    and the check's 20000-wide rows refuse it."""
    import sys

    def chunked(grads, n, c, ref, lo, ref_sq, sq, top):  # type: ignore[no-untyped-def]
        ge._numpy_sums(grads, ref, lo, ref_sq, sq, top)
        for m, g in enumerate(grads):
            d = np.subtract(g, ref, dtype=np.float64)
            if lo is not None:
                d -= lo
            d *= d
            parts = [np.add.reduce(d[:, i : i + 8192], axis=1) for i in range(0, c, 8192)]
            sq[m] = sum(parts, np.zeros(n))

    fake = types.ModuleType("smcheck._accel")
    fake.grad_errors = chunked  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "smcheck._accel", fake)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="gradient errors"):
        assert ac._load() is None


def test_misaligned_arrays_go_to_numpy(accel: types.ModuleType) -> None:
    raw = np.zeros(3 * 10 * 8 + 1, np.uint8)
    ref = np.frombuffer(raw.data, np.float64, 30, offset=1).reshape(3, 10)  # address 8k + 1
    assert not ref.flags.aligned
    sq, top = np.zeros((1, 3)), np.zeros((1, 3))
    assert not ge._compiled_sums([np.ones((3, 10))], ref, None, None, sq, top)
    raw32 = np.zeros(4 * 100 + 1, np.uint8)
    x = np.frombuffer(raw32.data, np.float32, 100, offset=1)
    x.flags.writeable = True  # a view of a writable buffer
    assert not x.flags.aligned
    x[:] = np.linspace(-3, 3, 100, dtype=np.float32)
    got = pr.round_in(x, pr.get_precision("float16"))
    want = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(got, want)


def test_sizes_that_would_wrap_around_are_refused(accel: types.ModuleType) -> None:
    z = np.zeros(0)
    with pytest.raises(ValueError, match="too large"):
        accel.grad_errors([z], 2**61, 8, z, None, None, [z], [z])


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_both_rounding_paths_equal_the_independent_cast(name: str) -> None:
    """The numpy rounding (what runs without a C compiler) and, where built, the compiled one,
    each against the cast by numpy (float16) or ml_dtypes on the probe - not only against each
    other. NaN lanes: NaN either way."""
    import ml_dtypes

    x = _float32_probe()
    t = pr.get_precision(name)
    typ = np.float16 if name == "float16" else getattr(ml_dtypes, name)
    with np.errstate(all="ignore"):
        want = x.astype(typ).astype(np.float32)
        numpy_path = np.empty_like(x)
        if name == "bfloat16":
            pr._round_f32_bf16_numpy(x, numpy_path)
        else:
            for i in range(0, x.size, 1 << 16):
                sl = slice(i, i + (1 << 16))
                pr._round_block(x[sl], numpy_path[sl], t, unit=False)
    paths = {"numpy": numpy_path}
    mod = ac.accelerator()
    if mod is not None:
        compiled = np.empty_like(x)
        if name == "bfloat16":
            mod.round_bf16(x, compiled)
        else:
            f, emin, emax = pr._round_grid_params(t)
            mod.round_grid(x, compiled, f, emin, emax, 0, float(t.max), t.has_inf)
        paths["compiled"] = compiled
    for path, got in paths.items():
        same = (want.view(np.uint32) == got.view(np.uint32)) | (np.isnan(want) & np.isnan(got))
        assert same.all(), (path, x[~same][:5])
