"""The optional compiled kernels (:mod:`smcheck._accel`, built from ``smcheck/_accel.c``).

Three numpy passes of eval dominate its time and are plain IEEE arithmetic, so a compiled
version can give the same bits: the gradient-error sums
(:func:`smcheck.gradient_errors._numpy_sums`: sums of squares in numpy's pairwise order and
their max) and the roundings of float32 values to a 16/8-bit grid
(:func:`smcheck.precisions._round_block`) and to bfloat16
(:func:`smcheck.precisions._round_f32_bf16`). The numpy code is the reference implementation;
the compiled one is used only where it is built (``pip install`` compiles it when a C compiler
is found), not turned off with ``SMCHECK_ACCEL=0``, and gives the numpy path's bits on a small
input of every kind when first asked for (~10 ms, once per process). Every number smcheck
reports is the same either way (tested on whole eval runs).
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import numpy as np

__all__ = ["ACCEL_ENV", "accelerator"]

#: Set to ``0`` to run the numpy path even where :mod:`smcheck._accel` is built.
ACCEL_ENV = "SMCHECK_ACCEL"

_checked: list[ModuleType | None] = []  # the checked module (or None), once per process


def accelerator() -> ModuleType | None:
    """:mod:`smcheck._accel` when it is built, not turned off (``SMCHECK_ACCEL=0``) and agrees
    with the numpy path (checked once per process); else None."""
    if os.environ.get(ACCEL_ENV, "1").strip() == "0":
        return None
    if not _checked:
        _checked.append(_load())
    return _checked[0]


def _load() -> ModuleType | None:
    try:
        mod = importlib.import_module("smcheck._accel")
    except ImportError:
        return None
    with np.errstate(all="ignore"):
        problem = _self_check(mod)
    if problem:
        warnings.warn(
            f"smcheck._accel differs from the numpy path ({problem}: a build with unsafe "
            "compiler flags, or a numpy that sums in another order?): using numpy",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return mod


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, NaN payloads aside."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ia, ib = a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")
    return bool(((ia == ib) | (np.isnan(a) & np.isnan(b))).all())


def _self_check(mod: ModuleType) -> str:
    """'' when ``mod`` gives the numpy path's bits on small inputs of every kind, else what
    differs."""
    from .gradient_errors import _numpy_sums
    from .precisions import _round_block, _round_f32_bf16_numpy, _round_grid_params, get_precision

    # deterministic values without numpy.random (its import alone costs more than the check)
    def noise(shape: tuple[int, int], seed: float) -> np.ndarray:
        return np.sin(np.arange(shape[0] * shape[1]).reshape(shape) * seed + seed)

    # every kind of gradient term: float32 and float64, with and without a low part, rows
    # equal to the previous method's, NaN and inf, lengths below 8, up to 128, split in two
    # (20000: numpy before 2.3 summed rows longer than 8192 in pieces - a different order)
    n = 3
    for c in (5, 100, 1000, 20000):
        ref = noise((n, c), 0.7) / c
        lo = ref * 2.0**-60 * noise((n, c), 1.3)
        g32 = (ref * (1 + 1e-6 * noise((n, c), 2.1))).astype(np.float32)
        g64 = ref * (1 + 1e-14 * noise((n, c), 3.7))
        g32[n // 2, c // 2], g64[n - 1, c - 1] = np.nan, np.inf
        grads: list[np.ndarray] = [g32, g32.copy(), g64, g64.copy()]
        for low in (None, lo):
            want = (np.zeros((4, n)), np.zeros((4, n)), np.zeros(n))
            got = (np.zeros((4, n)), np.zeros((4, n)), np.zeros(n))
            _numpy_sums(grads, ref, low, want[2], want[0], want[1])
            mod.grad_errors(grads, n, c, ref, low, got[2], got[0], got[1])
            if not all(_same(a, b) for a, b in zip(want, got, strict=True)):
                return "gradient errors"
    # every float32 exponent, both signs, mantissas at and beside the types' rounding points
    e = np.arange(256, dtype=np.uint32) << np.uint32(23)
    mant = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x2000, 0x7FFF, 0x8000, 0x8001, 0x7FFFFF])
    bits = (e[:, None] | mant[None, :].astype(np.uint32)).ravel()
    x = np.concatenate([bits, bits | np.uint32(0x80000000)]).view(np.float32)
    for name in ("float16", "float8_e4m3fn", "float8_e5m2"):
        t = get_precision(name)
        f, emin, emax = _round_grid_params(t)
        for mode, src in enumerate((x, np.abs(x), np.abs(x[np.abs(x) < 2.0**emax]))):
            want32 = np.empty_like(src)
            _round_block(src, want32, t, unit=mode == 2, nonneg=mode == 1)
            got32 = np.empty_like(src)
            mod.round_grid(src, got32, f, emin, emax, mode, float(t.max), t.has_inf)
            if not _same(want32, got32):
                return f"rounding to {name}"
    got32 = np.empty_like(x)
    mod.round_bf16(x, got32)
    if not _same(_round_f32_bf16_numpy(x), got32):
        return "rounding to bfloat16"
    return ""
