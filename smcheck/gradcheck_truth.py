"""The truth for dL/dz, two independent ways: complex-step derivatives (complex128; binary128 for
float64 work) and central differences with Richardson extrapolation on the high-precision
reference."""

from __future__ import annotations

import math

import numpy as np

from .precisions import Precision, get_precision
from .reference import _sech2, _split, _two_diff_residual, _variant_core, quad_dtype
from .variants import Variant

#: Step of the complex-step derivative (see the module docstring for why not 1e-200).
COMPLEX_STEP = 2.0**-40

#: Step of the binary128 complex step (float64 work): |h u_j| <= 2**-59, so cos(h u_j) rounds
#: to 1 and sin(h u_j) to h u_j in binary128 (their next terms are below 2**-118 relative).
COMPLEX_STEP_BINARY128 = 2.0**-60


def _two_diff(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d, r with d = fl(a - b) and a - b = d + r exactly (the reference's TwoSum)."""
    d = a - b
    return d, _two_diff_residual(a, b, d)


def complex_loss(z: np.ndarray, y: np.ndarray, rest: np.ndarray | None = None) -> np.ndarray:
    """L(z) = log(sum_j exp(z_j - c)) + c - z_y for complex z (M, K), c chosen on the real part.

    c = max_j Re z_j, except c = z_y (complex) where the label holds the max. ``rest`` (M,) adds
    sum exp(z_j - max Re z) over classes left out of ``z`` (unperturbed, so real); the max must
    be among the columns given. The real part of z_j - c is made exact with TwoSum
    (exp(d + r) = exp(d)(1 + r)), so float64 logits far apart lose nothing in the shift.

    >>> float(complex_loss(np.array([[0.0, -800.0, 1.0]], complex), np.array([1]))[0].real)
    801.3132616875182
    """
    rows = np.arange(z.shape[0])
    zr = z.real
    m = zr.max(axis=1)
    zy = z[rows, y]
    c = np.where(zr[rows, y] == m, zy, m.astype(complex))
    dr, rr = _two_diff(zr, c.real[:, None])
    w = np.exp(dr + 1j * (z.imag - c.imag[:, None])) * (1.0 + rr)
    s = w.sum(axis=1)
    if rest is not None:
        s = s + rest * np.exp(m - c)  # exp(m - c) = exp(-i Im c): the pivot's phase
    return np.log(s) + (c - zy)


def complex_step(
    x: np.ndarray, y: np.ndarray, u: np.ndarray, rest: np.ndarray | None = None
) -> np.ndarray:
    """Derivative of the loss of rows ``x`` (M, K) along ``u`` (M, K): Im L(x + i h u) / h.

    >>> g = complex_step(np.array([[0.0, -800.0, 1.0]] * 3), np.array([1] * 3), np.eye(3))
    >>> g.round(15).tolist()  # softmax - onehot, d/dz_1 = p_1 - 1 = -1 + 1e-348
    [0.268941421369995, -1.0, 0.731058578630005]
    """
    zc = np.asarray(x, dtype=np.float64) + 1j * (COMPLEX_STEP * np.asarray(u, dtype=np.float64))
    # exp underflows to 0 for classes far below the max; that is the float64 truth, not noise
    with np.errstate(under="ignore"):
        return complex_loss(zc, y, rest).imag / COMPLEX_STEP


def complex_step_binary128(
    x: np.ndarray, y: np.ndarray, u: np.ndarray, rest: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`complex_step` in binary128: Im L(x + i h u) / h as a double-double (hi, lo).

    The same loss as :func:`complex_loss` (c = max Re z, or z_y where the label holds the max;
    ``rest`` (M,) in binary128 adds the unperturbed classes left out of ``x``), with complex
    numbers as pairs of binary128 arrays and h = :data:`COMPLEX_STEP_BINARY128`. Every phase
    theta_j = h (u_j - Im c / h) is at most 2**-59, so exp(a + i theta) = e**a (1 + i theta)
    and arg(s) = Im s / Re s to binary128's rounding (the next terms are theta**2 / 2, theta**2
    / 6 and (Im s / Re s)**2 / 3 relative, below 2**-118): the derivative comes out as
    sum_j e**(d_j) (u_j - u_c) / s + u_c - u_y, u_c = u_y at the pivot, else 0 - no difference
    of loss values, so every entry keeps ~2**-110 relative accuracy down to float64's
    subnormals (the complex128 step loses entries whose e**(d_j) h is subnormal).

    >>> hi, lo = complex_step_binary128(np.array([[0.0, -40.0]]), np.array([0]), np.eye(2)[:1])
    >>> float(hi[0]), float(lo[0])  # -e**-40 / (1 + e**-40) with its low part
    (-4.248354255291589e-18, -1.063261941480036e-34)
    """
    quad = quad_dtype()
    if quad is None:  # pragma: no cover - numpy-quaddtype is a hard dependency
        raise RuntimeError("numpy-quaddtype is required to check float64 gradients")
    xf = np.asarray(x, dtype=np.float64)
    uf = np.asarray(u, dtype=np.float64)
    rows = np.arange(xf.shape[0])
    m = xf.max(axis=1)
    uy = uf[rows, y]
    pivot = xf[rows, y] == m
    u_c = np.where(pivot, uy, 0.0)  # Im c / h: the pivot moves with its own step
    # far-off classes underflow (binary128 reaches e**-11355); numpy-quaddtype's exp and sum
    # raise spurious underflow/invalid flags on terms below ~1e-308 (the results are right)
    with np.errstate(under="ignore", invalid="ignore"):
        e = np.exp(xf.astype(quad) - m.astype(quad)[:, None])  # Re z_j - Re c, c real part m
        h = np.asarray(COMPLEX_STEP_BINARY128).astype(quad)
        theta = h * (uf - u_c[:, None]).astype(quad)  # exact: float64 difference, power of 2
        re_s = e.sum(axis=1)
        im_s = (e * theta).sum(axis=1)
        if rest is not None:  # rest * exp(-i Im c): the left-out classes, unperturbed
            r = np.asarray(rest).astype(quad)
            re_s = re_s + r
            im_s = im_s - r * (h * u_c.astype(quad))
        d = (im_s / re_s) / h + (u_c - uy).astype(quad)
    return _split(d)


def _arith(working: Precision) -> tuple[np.dtype, float]:
    """The reference arithmetic for ``working`` and its unit roundoff."""
    if working.mantissa_bits > 24:
        quad = quad_dtype()
        if quad is None:  # pragma: no cover
            raise RuntimeError("numpy-quaddtype is required to check float64 gradients")
        return quad, 2.0**-113
    return np.dtype(np.float64), 2.0**-53


def cd_step(working: str | Precision, classes: int) -> float:
    """Default central-difference step: (u (1 + ln C))**(1/5), rounded to a power of 2.

    With the shift exact and the loss's linear part -t u_y differenced exactly, what rounding
    leaves in phi(t) is about u (1 + ln C) (the log-sum-exp's size), whatever |z| is; the
    Richardson value's error is h**4 |phi^(5)| / 480 + ~3 u (1 + ln C) / h, smallest near this h.
    A power of 2 keeps h/2 and t * u exact.
    """
    _, unit = _arith(get_precision(working))
    return float(np.exp2(np.round(np.log2(unit * (1 + math.log(max(classes, 1)))) / 5)))


def central_difference(
    x: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    working: str | Precision = "float64",
    rest: np.ndarray | None = None,
    *,
    step: float | None = None,
    richardson: bool = True,
) -> np.ndarray:
    """Derivative of the loss of rows ``x`` (M, K) along ``u`` (M, K), or along each of
    ``u`` (D, M, K) (one result per direction), by central differences.

    Evaluated in the reference arithmetic of ``working`` (binary128 for float64, else float64)
    on L(x + t u) = log(sum_j exp(d_j + t u_j) + rest) - (d_y + t u_y), d = x - max x (exact).
    The linear part's difference is exactly -2 t u_y, so only the log-sum-exp is differenced;
    where the label holds the max, the shift follows it (d relative to x_y + t u_y), so that
    dL/dx_y = -(1 - p_y) comes out without cancelling 1 against p_y. ``step`` defaults to
    :func:`cd_step`; ``richardson`` combines h and h/2. ``rest`` (M,) is the sum of exp(x_j -
    max x) over classes left out of ``x``, in that arithmetic. Returns float64.

    >>> d = central_difference(np.array([[0.0, -800.0, 1.0]]), np.array([1]), np.array([[0, 1, 0]]))
    >>> float(d[0])
    -1.0
    """
    p = get_precision(working)
    dt, _ = _arith(p)
    xf = np.asarray(x, dtype=np.float64)
    rows = np.arange(xf.shape[0])
    h = cd_step(p, xf.shape[1]) if step is None else float(step)
    m = xf.max(axis=1)
    pivot = xf[rows, y] == m
    r = None if rest is None else np.asarray(rest).astype(dt)
    t0 = h / 2 if richardson else h
    # numpy-quaddtype's exp and sum raise spurious underflow/invalid flags on terms below ~1e-308
    # (the results are right); float64 underflow of far-off classes is exact enough too
    with np.errstate(under="ignore", invalid="ignore"):
        # binary128 exp is the cost: exp(d + t w) = exp(d) exp(t w) with exp(d) shared by every
        # direction, and exp(+-h w) is the square of exp(+-h w / 2): four points, two more exps
        e = np.exp(xf.astype(dt) - m.astype(dt)[:, None])  # the shift is exact in dt

        def one(uf: np.ndarray) -> np.ndarray:
            uy = uf[rows, y]
            shift = np.where(pivot, uy, 0.0)  # the pivot's own move, out of every exponent
            tw = t0 * (uf - shift[:, None])  # float64; exact scaling by a power of 2
            grow, shrink = np.exp(tw.astype(dt)), np.exp((-tw).astype(dt))

            def lse(factor: np.ndarray, t: float) -> np.ndarray:
                s = (e * factor).sum(axis=1)
                if r is not None:  # the left-out classes move with the pivot only
                    s = s + r * np.exp((-t * shift).astype(dt))
                return np.log(s)

            def diff(up: np.ndarray, down: np.ndarray, t: float) -> np.ndarray:
                return (lse(up, t) - lse(down, -t)) / np.asarray(2 * t).astype(dt)

            out = diff(grow, shrink, t0)
            if richardson:  # D(h/2) is ``out``; D(h) from the squares
                out = (4 * out - diff(grow * grow, shrink * shrink, h)) / 3
            return out.astype(np.float64) - np.where(pivot, 0.0, uy)

        uf = np.asarray(u, dtype=np.float64)
        return np.stack([one(v) for v in uf]) if uf.ndim == 3 else one(uf)


def variant_complex_step(
    x: np.ndarray, y: np.ndarray, u: np.ndarray, variant: Variant
) -> np.ndarray:
    """:func:`complex_step` of a loss variant (complex128): z' = c tanh(s z / c) computed in
    complex arithmetic, then the loss of z' plus lambda lse(z')**2, all of full rows.

    numpy's complex tanh keeps the first-order part i h s u (1 - tanh(a)**2) to float64's
    relative accuracy (it is formed from sech**2, not from 1 - tanh**2), so a capped logit deep
    in tanh's tail has a tiny but exact derivative rather than 0 from cancellation.

    >>> g = variant_complex_step(np.array([[0.0, 1.0]]), np.array([0]), np.eye(2)[:1],
    ...                          Variant(logit_scale=2.0))
    >>> round(float(g[0]), 12)  # 2 (p_0 - 1) with p = softmax([0, 2])
    -1.761594155956
    """
    zc = np.asarray(x, dtype=np.float64) + 1j * (COMPLEX_STEP * np.asarray(u, dtype=np.float64))
    rows = np.arange(zc.shape[0])
    # exp underflows for classes far below the max; tanh's tail underflows likewise: both are
    # the float64 truth, not noise
    with np.errstate(under="ignore"):
        if variant.logit_scale != 1.0:
            zc = zc * variant.logit_scale
        if variant.softcap is not None:
            zc = variant.softcap * np.tanh(zc / variant.softcap)
        loss = complex_loss(zc, y)
        if variant.z_loss != 0.0:
            lse = loss + zc[rows, y]
            loss = loss + variant.z_loss * lse * lse
    return loss.imag / COMPLEX_STEP


def variant_complex_step_binary128(
    x: np.ndarray, y: np.ndarray, u: np.ndarray, variant: Variant
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`variant_complex_step` in binary128 (float64 work), as a double-double (hi, lo).

    With h = :data:`COMPLEX_STEP_BINARY128` only the first-order imaginary part survives
    binary128's rounding: s (x + i h u) = s x + i h s u; tanh(a + i e) = tanh(a) + i e (1 -
    tanh(a)**2) when |e| <= 2**-59 (the next term is e**2 relative), with 1 - tanh**2 written
    as 4 e^{-2|a|} / (1 + e^{-2|a|})**2 so it does not cancel where tanh(a) rounds to +-1. So
    z' = x' + i h u' with u' = s u sech(a)**2, and Im L / h is
    D = sum_j p_j (u'_j - u'_y) (no 1 - p_y cancellation) plus the z-loss's
    2 lambda lse(x') (D + u'_y).

    >>> hi, lo = variant_complex_step_binary128(np.array([[0.0, 1.0]]), np.array([0]),
    ...                                         np.eye(2)[:1], Variant(logit_scale=2.0))
    >>> float(hi[0])
    -1.7615941559557649
    """
    quad = quad_dtype()
    if quad is None:  # pragma: no cover - numpy-quaddtype is a hard dependency
        raise RuntimeError("numpy-quaddtype is required to check float64 gradients")
    rows = np.arange(np.shape(x)[0])
    # far-off classes underflow; numpy-quaddtype raises spurious flags below ~1e-308
    with np.errstate(under="ignore", invalid="ignore", over="ignore"):
        z = np.asarray(x, dtype=np.float64).astype(quad)
        w = np.asarray(u, dtype=np.float64).astype(quad)
        if variant.logit_scale != 1.0:
            s = np.asarray(variant.logit_scale, dtype=np.float64).astype(quad)
            z, w = z * s, w * s
        if variant.softcap is not None:
            c = np.asarray(variant.softcap, dtype=np.float64).astype(quad)
            a = z / c
            z, w = c * np.tanh(a), w * _sech2(a)
        m = z.max(axis=1)
        e = np.exp(z - m[:, None])
        total = e.sum(axis=1)
        wy = w[rows, y]
        d = (e * (w - wy[:, None])).sum(axis=1) / total
        if variant.z_loss != 0.0:
            lam = np.asarray(variant.z_loss, dtype=np.float64).astype(quad)
            lse = m + np.log(total)
            d = d + 2 * lam * lse * (d + wy)
    return _split(d)


def variant_central_difference(
    x: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    variant: Variant,
    *,
    step: float | None = None,
) -> np.ndarray:
    """Derivative of a variant's loss along ``u`` (M, K) or each of ``u`` (D, M, K) by central
    differences of the binary128 reference loss (:func:`smcheck.reference._variant_core`, the
    variant's own reference for every working dtype), Richardson on h and h/2.

    The step is :func:`cd_step` for binary128 divided by the variant's largest slope
    max(1, |s|, |s|/c) (a power of 2): the loss's fifth derivative grows like that slope**5.
    Returns float64.
    """
    quad = quad_dtype()
    if quad is None:  # pragma: no cover
        raise RuntimeError("numpy-quaddtype is required for a loss variant's reference")
    xq = np.asarray(x, dtype=np.float64).astype(quad)
    slope = max(1.0, abs(variant.logit_scale))
    if variant.softcap is not None:
        slope = max(slope, abs(variant.logit_scale) / variant.softcap)
    h0 = cd_step("float64", xq.shape[1]) if step is None else float(step)
    h = h0 if step is not None else h0 / float(np.exp2(np.ceil(np.log2(slope))))

    def loss(t: float, w: np.ndarray) -> np.ndarray:
        zq = xq + np.asarray(t * w, dtype=np.float64).astype(quad)
        return _variant_core(zq, y, None, variant)[0]

    def one(w: np.ndarray) -> np.ndarray:
        def diff(t: float) -> np.ndarray:
            return (loss(t, w) - loss(-t, w)) / np.asarray(2 * t).astype(quad)

        return ((4 * diff(h / 2) - diff(h)) / 3).astype(np.float64)

    uf = np.asarray(u, dtype=np.float64)
    with np.errstate(under="ignore", invalid="ignore", over="ignore", divide="ignore"):
        return np.stack([one(v) for v in uf]) if uf.ndim == 3 else one(uf)
