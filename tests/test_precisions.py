"""Dtype registry facts, casting modes and accumulation that really rounds."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from smcheck.errors import UsageError
from smcheck.precisions import PRECISIONS, accumulate, cast, get_precision, resolve_accum

# Exact facts from IEEE 754 / the OCP FP8 spec, written out independently of numpy's finfo.
FACTS = {
    # name: (mantissa bits incl. implicit, max, smallest normal, smallest subnormal)
    "float64": (53, (2 - 2.0**-52) * 2.0**1023, 2.0**-1022, 2.0**-1074),
    "float32": (24, (2 - 2.0**-23) * 2.0**127, 2.0**-126, 2.0**-149),
    "float16": (11, 65504.0, 2.0**-14, 2.0**-24),
    "bfloat16": (8, (2 - 2.0**-7) * 2.0**127, 2.0**-126, 2.0**-133),
    "float8_e4m3fn": (4, 448.0, 2.0**-6, 2.0**-9),
    "float8_e5m2": (3, 57344.0, 2.0**-14, 2.0**-16),
}


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_registry_facts(name: str) -> None:
    p = PRECISIONS[name]
    bits, mx, normal, sub = FACTS[name]
    assert p.mantissa_bits == bits
    assert p.eps == 2.0 ** (1 - bits)
    assert p.max == mx and p.smallest_normal == normal and p.smallest_subnormal == sub
    assert p.ln_max == pytest.approx(math.log(mx), rel=1e-15)
    assert p.ln_smallest_subnormal == pytest.approx(math.log(sub), rel=1e-15)
    assert p.default_accum == ("float32" if p.bits <= 16 else name)


def test_registry_completeness() -> None:
    assert set(PRECISIONS) == set(FACTS)


def test_lookup_by_alias_and_dtype() -> None:
    assert get_precision("bf16").name == "bfloat16"
    assert get_precision(np.float16).name == "float16"
    assert get_precision(ml_dtypes.float8_e5m2).name == "float8_e5m2"
    with pytest.raises(UsageError, match="unknown dtype 'float7'"):
        get_precision("float7")
    with pytest.raises(UsageError):
        get_precision(np.int32)


def test_ulp() -> None:
    f16 = get_precision("float16")
    assert f16.ulp(np.array([1.0]))[0] == 2.0**-10
    assert f16.ulp(np.array([1.5]))[0] == 2.0**-10
    assert f16.ulp(np.array([2.0]))[0] == 2.0**-9
    assert f16.ulp(np.array([1e-8]))[0] == 2.0**-24  # subnormal step
    assert get_precision("float64").ulp(np.array([1.0]))[0] == 2.0**-52


def test_bfloat16_accumulation_really_rounds() -> None:
    # ml_dtypes' own bfloat16 sum of 5000 ones stagnates at 256 (sequential); our pairwise tree
    # rounds each partial sum: every partial is a power of two until 4096 + 904 = 5000 -> 4992
    ones = np.ones((1, 5000), dtype=ml_dtypes.bfloat16)
    assert float(accumulate(ones, get_precision("bfloat16"))[0]) == 4992.0
    assert float(accumulate(ones, get_precision("float32"))[0]) == 5000.0


def test_float16_accumulation_is_not_numpys_hidden_float32() -> None:
    # numpy's float16 sum accumulates in float32 internally; ours rounds each addition to float16
    x = np.full((1, 4096), 0.1, dtype=np.float16)
    f16 = float(accumulate(x, get_precision("float16"))[0])
    f32 = float(accumulate(x, get_precision("float32"))[0])
    exact = 4096 * float(np.float16(0.1))
    assert f32 == pytest.approx(exact, rel=1e-6)
    # float16 spacing at 409.5 is 0.25: the tree sums of equal terms are exact until then
    assert abs(f16 - exact) <= 0.25
    x = np.array([[2048.0, 1.0]], dtype=np.float16)  # 2049 is not a float16 (spacing 2)
    assert float(accumulate(x, get_precision("float16"))[0]) == 2048.0
    assert float(accumulate(x, get_precision("float32"))[0]) == 2049.0


def test_accumulation_overflow_is_inf() -> None:
    x = np.array([[60000.0, 60000.0]], dtype=np.float16)
    assert np.isinf(accumulate(x, get_precision("float16"))[0])
    assert float(accumulate(x, get_precision("float32"))[0]) == 120000.0


def test_resolve_accum_defaults() -> None:
    assert resolve_accum(get_precision("float16"), None).name == "float32"
    assert resolve_accum(get_precision("float64"), None).name == "float64"
    assert resolve_accum(get_precision("float16"), "float16").name == "float16"


def test_cast_modes() -> None:
    f16 = get_precision("float16")
    y, rep = cast(np.array([1.0, 70000.0, -70000.0, 1e-9, 0.1]), f16)
    assert y.tolist()[:4] == [1.0, math.inf, -math.inf, 0.0]
    assert rep.overflowed == 2 and rep.flushed_to_zero == 1 and rep.saturated == 0
    assert rep.max_rel_change == 1.0  # 1e-9 flushed to zero
    _, rep = cast(np.array([1.0, 0.1]), f16)
    assert rep.max_rel_change == pytest.approx(abs(float(np.float16(0.1)) - 0.1) / 0.1)
    assert rep.changed == 1
    y, rep = cast(np.array([1.0, 70000.0, -70000.0]), f16, mode="saturate")
    assert y.tolist() == [1.0, 65504.0, -65504.0] and rep.saturated == 2 and rep.overflowed == 0
    e4 = get_precision("float8_e4m3fn")
    y, rep = cast(np.array([500.0, 1.0]), e4)
    assert math.isnan(float(y[0])) and rep.overflowed == 1  # no inf in e4m3fn: NaN
    y, rep = cast(np.array([500.0, np.inf]), e4, mode="saturate")
    assert float(y[0]) == 448.0 and math.isnan(float(y[1]))
    with pytest.raises(UsageError):
        cast(np.array([1.0]), f16, mode="clip")


def test_fast_float16_rounding_matches_numpy_cast() -> None:
    from smcheck.precisions import round_to

    f16 = get_precision("float16")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # every float16 value, the midpoints between neighbours (ties to even) and one float32
    # step either side of each midpoint
    h = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    hf = np.sort(h[np.isfinite(h)].astype(np.float32))
    mid = ((hf[:-1].astype(np.float64) + hf[1:]) / 2).astype(np.float32)
    up, down = np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))
    extra = np.float32([65504, 65519.99, 65520, 1e-8, 2.9802322e-08, 0, -0.0, np.inf, -np.inf])
    for values in (x, np.concatenate([hf, mid, up, down, extra])):
        with np.errstate(all="ignore"):
            want = values.astype(np.float16)
        got = round_to(values, f16)
        nan = np.isnan(want)
        assert np.array_equal(nan, np.isnan(got))
        np.testing.assert_array_equal(want.view(np.uint16)[~nan], got.view(np.uint16)[~nan])
    assert round_to(np.ones((2, 3), np.float32), f16).shape == (2, 3)


# --- the float32 carrier of 16/8-bit types ----------------------------------------------------

_NARROW = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]


def _f32_sample(seed: int = 0) -> np.ndarray:
    """Random float32 bit patterns (NaN payloads, infs, subnormals included) and every 997th
    pattern across the 16/8-bit ranges, both signs."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32)
    sweep = np.arange(0x30000000, 0x48000000, 997, dtype=np.uint32)
    special = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FFFFFFF, 1, 0x80000001]
    special = np.array(special, dtype=np.uint32)
    return np.concatenate([bits, sweep, sweep | np.uint32(0x80000000), special]).view(np.float32)


@pytest.mark.parametrize("name", _NARROW)
def test_round_in_is_the_dtypes_own_rounding_bit_for_bit(name: str) -> None:
    from smcheck.precisions import round_in

    p = get_precision(name)
    x = _f32_sample()
    with np.errstate(all="ignore"):
        want = x.astype(p.dtype).astype(np.float32)  # numpy's / ml_dtypes' own cast
    got = round_in(x, p)
    assert got.dtype == np.float32
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), x[~same][:5]
    # ties to even, in the normal and the subnormal range
    spacing = np.float32(p.smallest_subnormal)
    ties = (np.arange(1, 4000, 2, dtype=np.float32) * spacing / 2).astype(np.float32)
    ties = np.concatenate([ties, np.float32(1.0) + np.float32(p.eps / 2) * np.arange(1, 9)])
    assert np.array_equal(round_in(ties, p), ties.astype(p.dtype).astype(np.float32))
    # the fast paths promise less: non-negative values below 2, and scratch input
    unit = np.abs(x[np.isfinite(x)]) % np.float32(2.0)
    want_unit = unit.astype(p.dtype).astype(np.float32)
    assert np.array_equal(round_in(unit, p, unit=True), want_unit)
    scratch = unit.copy()
    assert np.array_equal(round_in(scratch, p, unit=True, overwrite=True), want_unit)
    nonneg = np.abs(x)  # NaN, +inf, values past the max that overflow
    with np.errstate(all="ignore"):
        want_nonneg = nonneg.astype(p.dtype).astype(np.float32)
    got = round_in(nonneg, p, nonneg=True)
    same = (got.view(np.uint32) == want_nonneg.view(np.uint32)) | np.isnan(want_nonneg)
    assert same.all() and np.array_equal(np.isnan(got), np.isnan(want_nonneg))


@pytest.mark.parametrize("name", _NARROW)
def test_float32_cast_fast_route_reports_what_the_float64_route_reports(name: str) -> None:
    from smcheck.precisions import _cast_wide, cast_carrier

    p = get_precision(name)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(50_000) * np.exp(rng.uniform(-30, 15, 50_000))).astype(np.float32)
    x[:6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45]
    big = min(p.max * 1.5, 3e38)  # beyond the type's max, within float32's
    x[6:10] = [big, -big, p.max, p.smallest_subnormal / 3]
    for sample in (x, x[10:], np.zeros(5, np.float32), np.float32([1.0, 2.0])):
        out, rep, carrier = cast_carrier(sample, p)
        want, want_rep = _cast_wide(sample, p, "ieee")
        assert rep == want_rep
        assert out.dtype == p.dtype
        assert np.array_equal(out.view(np.uint8), want.view(np.uint8)) or np.array_equal(
            out, want, equal_nan=True
        )
        assert np.array_equal(carrier, want.astype(np.float32), equal_nan=True)


@pytest.mark.parametrize("subnormal_share", [0.0, 0.001, 0.5, 1.0])
def test_from_carrier_gives_the_same_float16_bits_by_either_route(subnormal_share: float) -> None:
    """Carrier values go back to float16 exactly - by numpy's cast when few are subnormal, by
    the integer route when many are (numpy's cast is slow there): the same bits either way."""
    from smcheck.precisions import from_carrier, round_in

    p = get_precision("float16")
    rng = np.random.default_rng(4)
    n = 4096
    tiny = rng.random(n) < subnormal_share
    v = np.where(tiny, rng.uniform(-6e-5, 6e-5, n), rng.standard_normal(n) * 100)
    v[:4] = [0.0, -0.0, np.inf, np.nan]
    carrier = round_in(v.astype(np.float32), p)
    got = from_carrier(carrier, p)
    with np.errstate(all="ignore"):
        want = carrier.astype(np.float16)
    assert got.dtype == np.float16
    assert np.array_equal(got.view(np.uint16)[4:], want.view(np.uint16)[4:])
    assert np.array_equal(got[:4], want[:4], equal_nan=True)
    assert np.signbit(got[1])


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_registry_facts_equal_finfo(name: str) -> None:
    # the registry writes the facts from each type's shape (no ml_dtypes import at start-up);
    # numpy's and ml_dtypes' finfo are the independent source
    p = PRECISIONS[name]
    fi = (
        np.finfo(p.dtype) if name in ("float64", "float32", "float16") else ml_dtypes.finfo(p.dtype)
    )
    assert p.dtype == np.dtype(getattr(ml_dtypes, name, None) or name)
    assert (p.bits, p.mantissa_bits) == (fi.bits, fi.nmant + 1)
    assert (p.eps, p.max) == (float(fi.eps), float(fi.max))
    assert (p.smallest_normal, p.smallest_subnormal) == (
        float(fi.smallest_normal),
        float(fi.smallest_subnormal),
    )
    assert p.has_inf == bool(np.isinf(np.array(np.inf).astype(p.dtype)))


def test_importing_smcheck_precisions_does_not_import_ml_dtypes() -> None:
    import subprocess
    import sys

    code = (
        "import sys, smcheck.precisions as p; p.get_precision('float16'); "
        "p.get_precision(__import__('numpy').dtype('float32')); "
        "assert 'ml_dtypes' not in sys.modules; p.get_precision('bf16').dtype; "
        "assert 'ml_dtypes' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_rounding_in_bit_operations_matches_ml_dtypes_at_every_boundary() -> None:
    """bfloat16 rounds float32 in integer operations (no ml_dtypes call): every one of the 2**16
    upper halves (all signs, exponents and kept bits) with the lower halves that decide the
    rounding - 0, 1, just below, at and above the tie, all ones - give ml_dtypes' bits, NaN
    payloads included (checked once over all 2**32 float32 patterns as well)."""
    import ml_dtypes

    from smcheck.precisions import round_in

    hi = np.arange(2**16, dtype=np.uint32) << np.uint32(16)
    low = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF], dtype=np.uint32)
    x = (hi[:, None] | low[None, :]).reshape(-1).view(np.float32)
    with np.errstate(all="ignore"):
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    p = get_precision("bfloat16")
    np.testing.assert_array_equal(round_in(x, p).view(np.uint32), want.view(np.uint32))
    scratch = x.copy()
    got = round_in(scratch, p, overwrite=True)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_float64_grid_rounding_is_the_cast_to_the_type(name: str) -> None:
    """_round_f64_grid (float64 input, 16/8-bit work, no ml_dtypes) gives the numbers of the
    independent cast (numpy's float16, ml_dtypes' others), one rounding from float64: ties and
    values a hair beside them (where rounding through float32 first would differ), the type's
    subnormals and their ties, the overflow boundary, specials, and random bit patterns."""
    import ml_dtypes

    from smcheck.precisions import _round_f64_grid

    t = get_precision(name)
    typ = np.float16 if name == "float16" else getattr(ml_dtypes, name)
    f = t.mantissa_bits - 1
    rng = np.random.default_rng(7)
    n = 50_000
    e = rng.integers(-30, 20, n)
    tie = (1 + rng.integers(0, 2**f, n) / 2**f) * 2.0**e + 2.0 ** (e - f - 1)
    sub = (rng.integers(0, 2**f, n) + 0.5) * t.smallest_subnormal
    edge = t.max * (1 + np.linspace(-(2.0**-f), 2.0**-f, 2001))
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, 5e-324, t.smallest_subnormal])
    rnd = rng.integers(0, 2**64, 200_000, dtype=np.uint64).view(np.float64)
    x = np.concatenate([tie, tie * (1 + 2.0**-45), tie * (1 - 2.0**-45), sub, edge, specials, rnd])
    x = np.concatenate([x, -x])
    with np.errstate(all="ignore"):
        want = x.astype(typ).astype(np.float64)
        via32 = x.astype(np.float32).astype(typ).astype(np.float64)
    before = x.copy()
    got = _round_f64_grid(x, t)
    assert np.array_equal(x.view(np.uint64), before.view(np.uint64))  # the input is kept
    same = (want.view(np.uint64) == got.view(np.uint64)) | (np.isnan(want) & np.isnan(got))
    assert same.all(), x[~same][:5]
    # the test can tell one rounding from two: through float32 some ties go the other way
    assert not np.array_equal(want, via32, equal_nan=True)


def test_a_float64_input_audited_in_bfloat16_does_not_import_ml_dtypes() -> None:
    """The default sweep (float64 logits, bfloat16 among its dtypes) and eval of a float64 file
    in bfloat16 round in float64 arithmetic: ml_dtypes (~0.6 s a process) is not imported."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from smcheck.prepare import prepare_input\n"
        "from smcheck import core\n"
        "x = np.linspace(-40, 40, 60).reshape(6, 10)\n"
        "p = prepare_input(x, np.arange(6), dtype='bfloat16')\n"
        "core.reference_of(p); core.run_method('fused', p, p.accum, carrier=True)\n"
        "print('ml_dtypes' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mode", ["ieee", "saturate"])
@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_carrier_only_cast_reports_what_the_cast_to_the_type_reports(name: str, mode: str) -> None:
    """cast_carrier(working_copy=False) of non-float32 input (and of float32 in saturate mode)
    rounds in float64 arithmetic without the type: the same carrier values and the same
    CastReport as the cast to the type, for float64, float16, int64 and float32 input."""
    from smcheck.precisions import _cast_wide, cast_carrier

    p = get_precision(name)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(40_000) * np.exp(rng.uniform(-40, 14, 40_000))
    x[:8] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324, p.max * 1.5, -p.max * 1.02]
    x[8:11] = [p.max, p.smallest_subnormal / 2, p.smallest_subnormal * 0.75]
    big_ints = np.array([2**62, -(2**62), 65519, 65521, 449, 465, 0, -1], np.int64)
    with np.errstate(over="ignore"):
        inputs = [x, x.astype(np.float16), x.astype(np.float32), big_ints]
    for sample in inputs:
        if sample.dtype == np.float32 and mode == "ieee":
            continue  # the float32 route, tested above
        out, rep, carrier = cast_carrier(sample, p, mode, working_copy=False)
        want, want_rep = _cast_wide(sample, p, mode)
        assert out is None or out is sample  # input already in the type: kept as it is
        assert rep == want_rep, sample.dtype
        expect = want.astype(np.float32)
        same = (carrier.view(np.uint32) == expect.view(np.uint32)) | (
            np.isnan(carrier) & np.isnan(expect)
        )
        assert carrier.dtype == np.float32 and same.all(), sample.dtype
