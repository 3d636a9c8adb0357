"""Working precisions: a registry of dtypes with their facts, input casting and accumulation.

Every number smcheck reports is "in" one of these precisions. Two knobs are explicit:

* ``accum`` - the dtype a reduction (a sum over classes) accumulates in. Every partial sum is
  rounded to ``accum``: we never call ``ndarray.sum`` on a 16-bit array, because numpy's float16
  ``sum`` secretly accumulates in float32 while ml_dtypes' bfloat16 ``sum`` really rounds (5000
  ones sum to 256). :func:`accumulate` does a pairwise tree, as a GPU block reduction does.
* ``cast`` - how an input is rounded to the working dtype: ``"ieee"`` (round to nearest, overflow
  to inf - or to NaN for float8_e4m3fn, which has no inf) or ``"saturate"`` (finite values beyond
  the largest finite number are clamped to it, as FP8 training recipes do).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .accel import accelerator
from .errors import UsageError

__all__ = [
    "PRECISIONS",
    "CastReport",
    "Precision",
    "accumulate",
    "cast",
    "cast_carrier",
    "from_carrier",
    "round_in",
    "to_carrier",
    "get_precision",
    "resolve_accum",
]


@dataclass(frozen=True)
class Precision:
    """Facts about one working dtype (all values are exact float64 numbers)."""

    name: str
    dtype_name: str  # numpy's name of the dtype (ml_dtypes' types resolve on first use)
    bits: int
    mantissa_bits: int  # explicit + implicit significand bits (float32: 24)
    eps: float  # 2**(1 - mantissa_bits): spacing of numbers just above 1
    max: float  # largest finite value
    smallest_normal: float
    smallest_subnormal: float
    has_inf: bool
    default_accum: str  # name of the accumulation dtype used when the user names none

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype. bfloat16 and float8 come from ml_dtypes, imported here on first use:
        importing it costs ~0.5 s, more than the rest of smcheck's start-up together."""
        return _dtype(self.dtype_name)

    @property
    def ln_max(self) -> float:
        """exp(z) overflows in this dtype iff z > ln(max) (up to the last rounding)."""
        return math.log(self.max)

    @property
    def ln_smallest_subnormal(self) -> float:
        """exp(z) underflows to 0 in this dtype for z below about this value."""
        return math.log(self.smallest_subnormal)

    @property
    def carrier(self) -> np.dtype:
        """The dtype the methods compute in: float32 for 16- and 8-bit types, whose values it
        holds exactly (every result is then rounded to this type by :func:`round_in`), else
        the dtype itself. numpy's float16 loops are slow wherever a value is subnormal - a
        softmax is mostly subnormal probabilities - and ml_dtypes' loops convert every operand
        anyway."""
        return self.dtype if self.bits >= 32 else np.dtype(np.float32)

    def ulp(self, x: np.ndarray) -> np.ndarray:
        """Spacing of this dtype at |x| (float64), floored at the subnormal step.

        For x in [2**e, 2**(e+1)) the spacing is 2**(e - mantissa_bits + 1); for |x| below the
        smallest normal it is the smallest subnormal. inf/NaN give NaN.
        """
        a = np.abs(np.asarray(x, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            _, e = np.frexp(a)  # a = f * 2**e with f in [0.5, 1)
            spacing = np.ldexp(1.0, e - self.mantissa_bits)
        spacing = np.maximum(spacing, self.smallest_subnormal)
        return np.where(np.isfinite(a), spacing, np.nan)


@functools.cache
def _dtype(name: str) -> np.dtype:
    if name in ("float64", "float32", "float16"):
        return np.dtype(name)
    import ml_dtypes  # only for the types numpy lacks (see Precision.dtype)

    return np.dtype(getattr(ml_dtypes, name))


def _make(
    name: str,
    bits: int,
    mantissa_bits: int,
    emin: int,
    max_: float,
    has_inf: bool,
    default_accum: str,
) -> Precision:
    """The facts of a binary floating-point type from its shape: ``mantissa_bits`` significand
    bits (the implicit one included), smallest normal exponent ``emin``. tests/test_precisions.py
    checks every entry against numpy's and ml_dtypes' ``finfo``."""
    return Precision(
        name=name,
        dtype_name=name,
        bits=bits,
        mantissa_bits=mantissa_bits,
        eps=math.ldexp(1.0, 1 - mantissa_bits),
        max=max_,
        smallest_normal=math.ldexp(1.0, emin),
        smallest_subnormal=math.ldexp(1.0, emin - mantissa_bits + 1),
        has_inf=has_inf,
        default_accum=default_accum,
    )


PRECISIONS: dict[str, Precision] = {
    "float64": _make(
        "float64", 64, 53, -1022, float.fromhex("0x1.fffffffffffffp+1023"), True, "float64"
    ),
    "float32": _make("float32", 32, 24, -126, float.fromhex("0x1.fffffep+127"), True, "float32"),
    "float16": _make("float16", 16, 11, -14, 65504.0, True, "float32"),
    "bfloat16": _make("bfloat16", 16, 8, -126, float.fromhex("0x1.fep+127"), True, "float32"),
    # e4m3fn: no inf, and only S.1111.111 is NaN, so the largest finite value is 1.75 * 2**8
    "float8_e4m3fn": _make("float8_e4m3fn", 8, 4, -6, 448.0, False, "float32"),
    "float8_e5m2": _make("float8_e5m2", 8, 3, -14, 57344.0, True, "float32"),
}

_ALIASES = {
    "f64": "float64",
    "double": "float64",
    "f32": "float32",
    "single": "float32",
    "f16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp8": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn",
    "float8": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
}


def get_precision(dtype: str | np.dtype | type | Precision) -> Precision:
    """Look a working precision up by name (``"float16"``, ``"bf16"``...) or numpy dtype."""
    if isinstance(dtype, Precision):
        return dtype
    if isinstance(dtype, str):
        key = _ALIASES.get(dtype.lower(), dtype.lower())
        if key in PRECISIONS:
            return PRECISIONS[key]
        raise UsageError(f"unknown dtype {dtype!r}; expected one of: {', '.join(PRECISIONS)}")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise UsageError(f"unknown dtype {dtype!r}") from exc
    for p in PRECISIONS.values():
        if p.dtype_name == dt.name and p.dtype == dt:  # by name first: no ml_dtypes import
            return p
    raise UsageError(f"dtype {dt} is not a supported working precision ({', '.join(PRECISIONS)})")


def resolve_accum(working: Precision, accum: str | np.dtype | Precision | None) -> Precision:
    """The accumulation precision: the named one, else float32 for 16/8-bit types, else working."""
    if accum is None:
        return PRECISIONS[working.default_accum]
    return get_precision(accum)


@dataclass(frozen=True)
class CastReport:
    """What rounding the input to the working dtype did (reported apart from algorithm error)."""

    dtype: str
    mode: str
    values: int
    changed: int  # values not exactly representable (rounded)
    max_abs_change: float  # over values finite before and after
    max_rel_change: float
    overflowed: int  # finite before, inf/NaN after (ieee mode)
    saturated: int  # finite before, clamped to +-max (saturate mode)
    flushed_to_zero: int  # nonzero before, zero after


def cast(x: np.ndarray, precision: Precision, mode: str = "ieee") -> tuple[np.ndarray, CastReport]:
    """Round ``x`` to the working dtype; returns the rounded array and a :class:`CastReport`.

    ``mode="ieee"`` rounds to nearest-even and overflows to inf (NaN for float8_e4m3fn);
    ``mode="saturate"`` first clamps finite values to [-max, max]. inf and NaN inputs are kept
    as they are (they are input findings, not rounding) - except that float8_e4m3fn cannot hold
    inf, so inf becomes NaN there in both modes.

    >>> import numpy as np
    >>> y, rep = cast(np.array([1.0, 70000.0]), get_precision("float16"))
    >>> y.tolist(), rep.overflowed
    ([1.0, inf], 1)
    >>> y, rep = cast(np.array([1.0, 70000.0]), get_precision("float16"), mode="saturate")
    >>> y.tolist(), rep.saturated
    ([1.0, 65504.0], 1)
    """
    out, report, _ = cast_carrier(x, precision, mode)
    assert out is not None
    return out, report


def cast_carrier(
    x: np.ndarray, precision: Precision, mode: str = "ieee", *, working_copy: bool = True
) -> tuple[np.ndarray | None, CastReport, np.ndarray]:
    """:func:`cast`, also returning the rounded values in ``precision.carrier``.

    ``working_copy=False`` may return None for the working-dtype array when it would have to
    be made from the carrier (the caller converts it if it ever needs it).
    """
    if mode not in ("ieee", "saturate"):
        raise UsageError(f"unknown cast mode {mode!r}; expected 'ieee' or 'saturate'")
    src = np.asarray(x)
    # by name first: float32 input to bfloat16 work never imports ml_dtypes (~0.5 s a process)
    if src.dtype.name == precision.dtype_name and src.dtype == precision.dtype:
        report = CastReport(precision.name, mode, int(src.size), 0, 0.0, 0.0, 0, 0, 0)
        return src, report, to_carrier(src, precision)
    if mode == "ieee" and src.dtype == np.float32 and precision.carrier == np.float32:
        out32, report = _cast_float32(src, precision)
        return (from_carrier(out32, precision) if working_copy else None), report, out32
    if not working_copy and precision.carrier == np.float32 and precision.bits < 32:
        # rounded in float64 arithmetic, held in the carrier: no ml_dtypes import (~0.6 s)
        back, report = _cast_wide(src, precision, mode, grid=True)
        return None, report, back.astype(np.float32)  # grid values: exact in float32
    out, report = _cast_wide(src, precision, mode)
    return out, report, to_carrier(out, precision)


def _cast_wide(
    src: np.ndarray, precision: Precision, mode: str, grid: bool = False
) -> tuple[np.ndarray, CastReport]:
    """:func:`cast` through float64 (any input dtype, both modes). ``grid=True`` (a 16/8-bit
    type) returns the rounded values in float64 (:func:`_round_f64_grid`, the same numbers as
    the cast to the type) instead of in the type."""
    wide = orig = src.astype(np.float64)
    finite_before = np.isfinite(wide)
    saturated = 0
    if mode == "saturate":
        over = finite_before & (np.abs(wide) > precision.max)
        saturated = int(np.count_nonzero(over))
        if saturated:
            wide = np.where(over, np.copysign(precision.max, wide), wide)
    # overflow in the cast is the finding we count below, not noise
    with np.errstate(over="ignore", invalid="ignore"):
        out = _round_f64_grid(wide, precision) if grid else wide.astype(precision.dtype)
    back = out if grid else out.astype(np.float64)
    finite_after = np.isfinite(back)
    both = finite_before & finite_after
    # inf - inf on non-finite cells is masked out by `both`
    with np.errstate(divide="ignore", invalid="ignore"):
        # measured against the original values: a saturated value changed too
        diff = np.where(both, np.abs(back - orig), 0.0)
        rel = np.where(both & (orig != 0), diff / np.abs(orig), 0.0)
    report = CastReport(
        dtype=precision.name,
        mode=mode,
        values=int(src.size),
        changed=int(np.count_nonzero(diff)),
        max_abs_change=float(diff.max(initial=0.0)),
        max_rel_change=float(rel.max(initial=0.0)),
        overflowed=int(np.count_nonzero(finite_before & ~finite_after)),
        saturated=saturated,
        flushed_to_zero=int(np.count_nonzero(both & (orig != 0) & (back == 0))),
    )
    return out, report


def _round_f64_grid(x: np.ndarray, working: Precision) -> np.ndarray:
    """float64 ``x`` rounded once to a 16- or 8-bit type (to nearest even; overflow to inf, or
    NaN in a type without inf), in float64: the same numbers as ``x.astype(type)`` through
    numpy (float16) or ml_dtypes (tested, ties and random bit patterns included), without
    importing ml_dtypes. :func:`_round_block` in float64, where adding M = +-2**(e' + 52 - f)
    puts x where float64's own spacing is the type's: float64 holds every value of these
    types, so this is one rounding, never two. ``x`` is kept.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    _round_block(x, out, working, unit=False)
    return out


def _cast_float32(src: np.ndarray, precision: Precision) -> tuple[np.ndarray, CastReport]:
    """:func:`cast` of float32 input to a 16/8-bit type (``ieee`` mode), in float32: the
    rounded values in the carrier, and the same report as the float64 route (tested).

    The change |rounded - x| is exact in float32 (the two are within a factor 2 unless the
    value rounded to 0, where the change is |x| itself); the largest relative change is found
    in float32 and its candidates re-divided in float64, so it is correctly rounded too.
    """
    r = round_in(src, precision)
    finite_before = finite_after = None
    # inf - inf and NaN lanes are masked out below (when there are any)
    with np.errstate(invalid="ignore"):
        diff = np.subtract(r, src)
    np.abs(diff, out=diff)
    # rounding keeps inf and NaN and a finite r had a finite input, so r is finite everywhere
    # exactly when every change is: NaN (a NaN input, inf - inf) and inf (an overflow) both
    # make the largest change non-finite - one pass that the largest change needs anyway
    top_abs = np.max(diff, initial=np.float32(0.0))
    if not np.isfinite(top_abs):
        finite_before, finite_after = np.isfinite(src), np.isfinite(r)
        diff[~(finite_before & finite_after)] = 0
        top_abs = np.max(diff, initial=np.float32(0.0))
    # count_nonzero of a boolean array: several times faster than of a float32 one
    changed = int(np.count_nonzero(diff != 0))
    max_rel = 0.0
    flushed = 0
    if changed:
        # 0/0 = NaN where src = 0 (then r = 0 too): fmax skips it
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(src)
            np.divide(diff, rel, out=rel)
        top = np.fmax.reduce(rel, axis=None)
        # float32 division is within 2**-24 of the float64 one: the exact maximum is among these
        cand = np.flatnonzero(rel >= top * np.float32(1 - 2**-20))
        flat = src.reshape(-1)
        wide = diff.reshape(-1)[cand].astype(np.float64) / np.abs(flat[cand].astype(np.float64))
        max_rel = float(wide.max())
        # a value flushed to zero changed by all of itself, a relative change of exactly 1 (any
        # other rounding changes less): without one, nothing was flushed and nothing is counted
        if top >= 1:
            # the zeros after less the zeros before: a zero input rounds to zero
            flushed = int(np.count_nonzero(r == 0)) - int(np.count_nonzero(src == 0))
    report = CastReport(
        dtype=precision.name,
        mode="ieee",
        values=int(src.size),
        changed=changed,
        max_abs_change=float(top_abs),
        max_rel_change=max_rel,
        overflowed=0
        if finite_before is None or finite_after is None
        else int(np.count_nonzero(finite_before & ~finite_after)),
        saturated=0,
        flushed_to_zero=flushed,  # nonzero and finite before, zero after
    )
    return r, report


_F16_REBIAS = np.uint32((((15 - 127) << 23) + 0xFFF) % 2**32)  # exponent 127 -> 15, minus 1/2 ulp
_F16_MAGIC = np.uint32((127 - 15 + 23 - 10 + 1) << 23)  # 0.5: aligns subnormal bits at the bottom


def _f32_to_f16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 with round-to-nearest-even: the same bits as ``astype`` (NaN payloads
    aside), through integer operations. numpy's own cast raises the floating-point underflow
    flag element by element for subnormal results, which makes a softmax (most probabilities
    are float16 subnormals or 0) about 5x slower than this."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    sign = (u >> 16) & np.uint32(0x8000)
    a = u & np.uint32(0x7FFFFFFF)
    # normal results: rebias the exponent and round the 13 dropped bits to nearest even
    out = (a + _F16_REBIAS + ((a >> 13) & np.uint32(1))) >> 13
    # subnormal or zero results: adding 0.5 puts the 10 kept bits at the bottom and float32's
    # own round-to-nearest-even rounds them (0.5 is normal: no underflow on the way)
    with np.errstate(invalid="ignore"):  # NaN lanes, replaced below
        small = (a.view(np.float32) + _F16_MAGIC.view(np.float32)).view(np.uint32) - _F16_MAGIC
    out = np.where(a < np.uint32(113 << 23), small, out)
    out = np.where(a >= np.uint32((127 + 16) << 23), np.uint32(0x7C00), out)  # overflow: inf
    out = np.where(a > np.uint32(0x7F800000), np.uint32(0x7E00), out)  # NaN
    return (out | sign).astype(np.uint16).view(np.float16).reshape(np.shape(x))


def round_in(
    x: np.ndarray,
    working: Precision,
    *,
    unit: bool = False,
    nonneg: bool = False,
    overwrite: bool = False,
) -> np.ndarray:
    """``x`` rounded once to ``working`` (to nearest even; overflow to inf, or NaN in
    float8_e4m3fn), returned in ``working.carrier``: the same numbers as ``round_to``, held in
    float32 for 16- and 8-bit types. ``unit=True`` promises values >= 0 (or NaN; +inf only in a
    type with inf) far below the type's max - probabilities, exponentials of shifted logits -,
    ``nonneg=True`` values >= 0 (or NaN/+inf) that may overflow, and ``overwrite=True`` that
    ``x`` is a temporary the result may reuse: all three only save time.

    >>> import numpy as np
    >>> r = round_in(np.array([1 + 2**-11, 65520.0, 1e-8], dtype=np.float32), get_precision("f16"))
    >>> r.dtype, r.tolist()  # a tie to even, an overflow, an underflow
    (dtype('float32'), [1.0, inf, 0.0])
    """
    if working.bits >= 32:  # the carrier is the dtype itself
        return round_to(x, working)
    if x.dtype == np.float32:
        if working.name == "bfloat16":
            return _round_f32_bf16(x, overwrite)
        return _round_f32_grid(x, working, unit, overwrite, nonneg)
    return round_to(x, working).astype(working.carrier)  # one rounding to T; T -> float32 exact


def to_carrier(x: np.ndarray, working: Precision) -> np.ndarray:
    """Values of ``working`` (in its dtype, or already in its carrier) in ``working.carrier``."""
    return np.asarray(x).astype(working.carrier, copy=False)


def from_carrier(x: np.ndarray, working: Precision) -> np.ndarray:
    """Carrier values (already rounded to ``working``) in the working dtype itself: exact."""
    if x.dtype == working.dtype:
        return x
    if working.dtype == np.float16 and x.dtype == np.float32:
        # numpy's cast is fast except that it raises the underflow flag element by element for
        # every subnormal result (~60 ns each): take the integer route when more than a few are
        a = np.abs(x)
        subnormal = np.count_nonzero((a < np.float32(working.smallest_normal)) & (a != 0))
        if subnormal > x.size // 64:
            return _f32_to_f16(x)
    with np.errstate(over="ignore", under="ignore"):
        return x.astype(working.dtype)


#: Elements per block of :func:`_round_f32_grid`: its ~10 passes then run in the core's cache
#: (256 KiB of float32) instead of streaming the whole array from memory ~10 times.
_GRID_BLOCK = 1 << 16


def _round_f32_grid(
    x: np.ndarray,
    working: Precision,
    unit: bool = False,
    overwrite: bool = False,
    nonneg: bool = False,
) -> np.ndarray:
    """float32 ``x`` rounded to the grid of a 16- or 8-bit type (not bfloat16), in float32.

    For |x| in [2**e, 2**(e+1)) the type's spacing is 2**(e - f) (f fraction bits), or its
    fixed subnormal spacing below the smallest normal 2**emin. Adding M = +-2**(e' + 23 - f),
    with e' = e clamped to [emin, emax + 1], puts x in [M, 2M) where float32's own spacing is
    exactly that: the addition rounds x to the grid (to nearest even: M is an even multiple of
    the spacing) and subtracting M again is exact. Only |x| >= 2**emax can round past the
    type's max: those overflow. inf and NaN pass through unchanged.

    ``unit=True`` promises x >= 0 (or NaN; +inf only in a type with inf, whose overflow it is)
    and below 2**emax - a probability or an exponential of a shifted logit - and skips the sign
    and overflow handling; ``nonneg=True``
    promises x >= 0 (or NaN/+inf) and skips the sign handling only.
    ``overwrite=True`` lets the result reuse ``x``'s memory (a temporary of the caller's).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = x if overwrite else np.empty_like(x)
    src, dst = x.reshape(-1), out.reshape(-1)
    mod = accelerator() if x.flags.aligned and out.flags.aligned else None
    if mod is not None:  # the same operations in one compiled pass (smcheck.accel)
        f, emin, emax = _round_grid_params(working)
        mode = 2 if unit else 1 if nonneg else 0
        mod.round_grid(src, dst, f, emin, emax, mode, float(working.max), working.has_inf)
        return out
    for i in range(0, src.size, _GRID_BLOCK):
        _round_block(src[i : i + _GRID_BLOCK], dst[i : i + _GRID_BLOCK], working, unit, nonneg)
    return out


def _round_grid_params(working: Precision) -> tuple[int, int, int]:
    """Fraction bits f, and the exponents of the smallest normal and of the largest power of
    two below the max, of a 16/8-bit type: the parameters of :func:`_round_block`."""
    f = working.mantissa_bits - 1
    emin = int(math.log2(working.smallest_normal))
    emax = int(math.floor(math.log2(working.max)))
    return f, emin, emax


#: float dtype -> (its unsigned integer view, fraction bits, exponent bias)
_LAYOUTS: dict[np.dtype, tuple[type[np.unsignedinteger], int, int]] = {
    np.dtype(np.float32): (np.uint32, 23, 127),
    np.dtype(np.float64): (np.uint64, 52, 1023),
}


def _round_block(
    x: np.ndarray, out: np.ndarray, working: Precision, unit: bool, nonneg: bool = False
) -> None:
    """:func:`_round_f32_grid` of one block, into ``out`` (which may be ``x`` itself): the
    numpy implementation (the reference of :mod:`smcheck._accel`'s ``round_grid``). ``x`` is
    float32 or float64 (:func:`_round_f64_grid`); ``out`` has its dtype. For |x| in
    [2**e, 2**(e+1)), M = +-2**(e' + p - f) with e' = e clamped to [emin, emax + 1] and p the
    fraction bits of x's dtype."""
    f, emin, emax = _round_grid_params(working)
    ut, p, bias = _LAYOUTS[x.dtype]
    ft = x.dtype.type
    u = x.view(ut)
    ex = u & ut((2 * bias + 1) << p)  # the exponent field of x: 2**e
    lo, hi = ut((bias + emin) << p), ut((bias + 1 + emax) << p)
    shift = ut((p - f) << p)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN lanes pass through
        if unit:
            # below 2**emin: fixed spacing (np.clip: several times faster than np.maximum
            # with a scalar in numpy 2.x)
            np.clip(ex, lo, hi, out=ex)
            ex += shift
            m = ex.view(x.dtype)
            np.add(x, m, out=out)
            out -= m
            return
        big = ex >= ut((bias + emax) << p)
        np.clip(ex, lo, hi, out=ex)
        ex += shift
        if not nonneg:
            sign = u & ut(1 << (8 * x.itemsize - 1))
            ex |= sign  # M with the sign of x (integer ops: faster than np.copysign)
        m = ex.view(x.dtype)
        np.add(x, m, out=out)
        out -= m
    if not nonneg:
        bits = out.view(ut)
        np.bitwise_or(bits, sign, out=bits)  # a value rounded to 0 keeps its sign, as IEEE does
    if big.any():
        over = big & (np.abs(out) > ft(working.max))  # NaN compares False: stays NaN
        out[over] = np.copysign(ft(np.inf if working.has_inf else np.nan), out[over])


_BF16_NAN = np.uint32(0x7FC00000)  # ml_dtypes' NaN: quiet, the input's sign kept


def _round_f32_bf16(x: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 (to nearest even), in float32: the same bits as
    ml_dtypes' ``astype(bfloat16).astype(float32)`` for every float32 (tested), in integer
    operations on blocks that stay in the core's cache - several times faster than ml_dtypes'
    two conversions, and no ml_dtypes import.

    bfloat16 is float32's top 16 bits, subnormals and all: adding 0x7FFF plus the lowest kept
    bit and clearing the low 16 bits rounds the magnitude to nearest even, carries into the
    exponent where it must (up to inf: max float32 rounds to inf, as bfloat16 has no room
    above 0x1.fep127) and keeps the sign. Only NaN needs care: its payload could carry into
    the sign bit, so NaN lanes are set to ml_dtypes' quiet NaN.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = x if overwrite else np.empty_like(x)
    mod = accelerator() if x.flags.aligned and out.flags.aligned else None
    if mod is not None:  # the same operations in one compiled pass (smcheck.accel)
        mod.round_bf16(x.reshape(-1), out.reshape(-1))
        return out
    return _round_f32_bf16_numpy(x, out)


def _round_f32_bf16_numpy(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`_round_f32_bf16` in numpy (the reference of :mod:`smcheck._accel`'s
    ``round_bf16``); ``out`` may be ``x`` itself."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x) if out is None else out
    fsrc = x.reshape(-1)
    src, dst = fsrc.view(np.uint32), out.reshape(-1).view(np.uint32)
    tmp = np.empty(min(src.size, _GRID_BLOCK), np.uint32)
    for i in range(0, src.size, _GRID_BLOCK):
        u, o = src[i : i + _GRID_BLOCK], dst[i : i + _GRID_BLOCK]
        # NaN lanes, found by one read-only pass (min propagates NaN) before ``o`` may
        # overwrite ``u``
        nan_at: np.ndarray | None = None
        nan_bits = np.zeros(0, np.uint32)
        if np.isnan(np.minimum.reduce(fsrc[i : i + _GRID_BLOCK], initial=np.float32(0))):
            nan_at = np.isnan(fsrc[i : i + _GRID_BLOCK])
            nan_bits = _BF16_NAN | (u[nan_at] & np.uint32(0x80000000))
        t = np.right_shift(u, np.uint32(16), out=tmp[: u.size])
        t &= np.uint32(1)
        t += np.uint32(0x7FFF)
        np.add(u, t, out=o)
        o &= np.uint32(0xFFFF0000)
        if nan_at is not None:
            o[nan_at] = nan_bits
    return out


def round_to(x: np.ndarray, working: Precision) -> np.ndarray:
    """``x`` rounded once to the working dtype (to nearest even; overflow to inf)."""
    if working.dtype == np.float16 and x.dtype == np.float32:
        return _f32_to_f16(x)
    # overflow to inf is a finding the callers count; NaN stays NaN (ml_dtypes calls it invalid)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(working.dtype, copy=False)


def accumulate(x: np.ndarray, accum: Precision) -> np.ndarray:
    """Sum over the last axis with every partial sum rounded to ``accum``.

    The terms are converted to ``accum`` (exact when ``accum`` is at least as wide). For float32
    and float64 accumulation this is numpy's own pairwise summation, which keeps its partial sums
    in the array's dtype (blocks of 128 terms with 8 running sums, blocks combined pairwise).
    For 16- and 8-bit accumulation numpy cannot be trusted (its float16 ``sum`` accumulates in
    float32; ml_dtypes' bfloat16 ``sum`` is sequential), so the sum is an explicit pairwise tree:
    zeros (exact) pad to a power of two and halves are added, ``s[j] = x[j] + x[j + h]`` - the
    order of a GPU block reduction. Each ``+`` is one numpy operation on arrays of ``accum``
    dtype, rounded once to ``accum`` (numpy/ml_dtypes compute it in float32 and round, which is
    correctly rounded because float32 has more than 2p + 2 bits).

    >>> import numpy as np, ml_dtypes
    >>> ones = np.ones((1, 5000), dtype=ml_dtypes.bfloat16)
    >>> float(accumulate(ones, get_precision("bfloat16"))[0])  # 5000 rounds to 4992 in bfloat16
    4992.0
    >>> float(accumulate(ones, get_precision("float32"))[0])
    5000.0
    """
    a = np.asarray(x).astype(accum.dtype, copy=False)
    n = a.shape[-1]
    if n == 0:
        return np.zeros(a.shape[:-1], dtype=accum.dtype)
    # overflow of a partial sum is a finding (the caller flags inf), not noise
    with np.errstate(over="ignore", invalid="ignore"):
        if accum.bits >= 32:
            return np.add.reduce(a, axis=-1)
        size = 1 << (n - 1).bit_length()
        if size != n:
            pad = np.zeros((*a.shape[:-1], size - n), dtype=accum.dtype)
            a = np.concatenate([a, pad], axis=-1)
        while size > 1:
            size //= 2
            a = a[..., :size] + a[..., size : 2 * size]
    # a copy: with one term (and a dtype needing no conversion) a[..., 0] is a view of x, which
    # a caller may change after summing
    return a[..., 0].copy()
