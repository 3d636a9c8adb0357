"""Gradient check: each method's dL/dz against two independent numerical derivatives.

Data flow: logits rounded to the working dtype (:func:`smcheck.prepare.prepare_input`) ->
probes (which derivatives to check) -> truth -> each method's gradient compared with it -> a
frozen :class:`GradcheckReport`. The truth is computed on the *same rounded inputs* the methods see.

Truth, two ways plus a witness:

* **complex step** (the truth errors are measured against): ``Im L(z + i h u) / h`` in
  complex128, with L evaluated as ``log(sum_j exp(z_j - c)) + c - z_y``. No difference of two
  loss values is formed, so there is no cancellation and h can be tiny; we use h = 2**-40, not
  1e-200: ``exp(z_j - c) * h`` must stay above float64's smallest subnormal, and with h = 1e-200
  every class with exp(z_j - c) < 1e-124 would lose its derivative to underflow. The shift c is
  real (the max of the real parts), except when the label holds the max: then c = z_y itself,
  i.e. L = log(1 + sum_{j != y} exp(z_j - z_y)), so that dL/dz_y = -(1 - p_y) is formed without
  cancelling 1 against p_y (a confident row's 1e-20 stays exact).
* **central differences** on the high-precision reference arithmetic (binary128 for float64
  work, float64 for float32 and narrower), Richardson-extrapolated from steps h and h/2:
  ``(4 D(h/2) - D(h)) / 3`` has error ``h**4 |L^(5)| / 480 + ~3 u (1 + ln C) / h``. The
  derivatives of log-sum-exp do not grow with |z| (they are moments of the softmax), and with an
  exact shift and the linear part -t u_y differenced exactly the rounding does not either, so
  the step is ``h = (u (1 + ln C))**(1/5)`` (u: unit roundoff) - not the textbook
  ``eps**(1/3) * max(1, |z|)``, whose truncation error grows like |z|**2 (on the seed's row,
  |z| = 800, it takes h = 4.8e-3 and errs by 3.6e-7 in float64; this step errs by 1.6e-13).
* **the reference gradient** of :mod:`smcheck.reference` (an analytic formula in high
  precision): a third witness, reported beside the two.

For float64 work a complex128 truth is itself only float64-accurate (~1e-16 relative), as
large as the error it is meant to measure. There the truth is the complex step **in
binary128** (:func:`complex_step_binary128`), kept as a double-double ``truth + truth_lo``, so
the error reported is the method's alone.

Probes (what is checked):

* the coordinates that matter in each row: the label, the argmax, the argmin, the next largest
  logits and a seeded random sample (``full=True``: every coordinate);
* random unit directions v (Gaussian, normalised): ``v . grad`` against the derivative along v,
  as torch's gradcheck ``fast_mode``. A direction's tolerance is the one each coordinate's
  tolerance implies, ``atol * |v|_1 + rtol * |v| . |g|``, so a direction fails only when some
  coordinate must.

Cost per row: the coordinates cost O(C + K**2) (the classes not probed are unperturbed, so their
sum is formed once), each direction O(C) per evaluation; ``full`` costs O(C**2).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import get_method, reference_of
from .errors import InputError, UsageError
from .frameworks import FRAMEWORK_METHODS
from .methods import DEFAULT_METHODS, METHODS, MethodFn
from .options import merge_options
from .precisions import Precision, get_precision
from .prepare import Prepared, prepare_input
from .reference import _split, _two_diff_residual, quad_dtype, reference_precision_name
from .synthetic import CASE_CHOICES, ROW_CASES, Synthetic, synthetic

__all__ = [
    "CASES",
    "CASE_CHOICES",
    "COMPLEX_STEP",
    "DEFAULT_TOLERANCES",
    "Consistency",
    "GradcheckOptions",
    "GradcheckReport",
    "MethodCheck",
    "Synthetic",
    "Truth",
    "WorstEntry",
    "cd_step",
    "central_difference",
    "complex_loss",
    "complex_step",
    "complex_step_binary128",
    "default_tolerance",
    "gradcheck",
    "synthetic",
]

#: Synthetic row kinds (:mod:`smcheck.synthetic`); ``all`` mixes them row by row.
CASES: tuple[str, ...] = tuple(ROW_CASES)

#: Step of the complex-step derivative (see the module docstring for why not 1e-200).
COMPLEX_STEP = 2.0**-40
#: Step of the binary128 complex step (float64 work): |h u_j| <= 2**-59, so cos(h u_j) rounds
#: to 1 and sin(h u_j) to h u_j in binary128 (their next terms are below 2**-118 relative).
COMPLEX_STEP_BINARY128 = 2.0**-60

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
#: ``full=True`` evaluates N * C**2 loss terms; beyond this it would take minutes.
FULL_BUDGET = 1 << 28
#: Logits per probe the working-dtype consistency check differences (rows are spread evenly).
CONSISTENCY_CELLS = 1 << 20
#: Inputs larger than this (N * C) need ``rows=`` (a sample): the directions hold N * C doubles.
MAX_CELLS = 1 << 24
_TOP_LOGITS = 3

#: A gradient-producing function: (x (N, C) in the working dtype, labels (N,)) -> (loss, grad).
_Evaluator = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray | None, np.ndarray]]


def default_tolerance(working: str | Precision) -> tuple[float, float]:
    """(atol, rtol) used when none is given (:data:`DEFAULT_TOLERANCES`)."""
    return DEFAULT_TOLERANCES[get_precision(working).name]


# --------------------------------------------------------------------------- the truth


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


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class WorstEntry:
    """One checked derivative: where it is, its truth, the method's value and the verdict."""

    method: str
    row: int  # row of the input (before any sampling)
    label: int
    case: str | None  # synthetic case of the row
    probe: str  # "class 7" or "direction 1"
    truth: float
    value: float  # the method's (NaN/inf when non-finite)
    abs_err: float | None  # None when the value is not finite
    tol: float
    ratio: float  # abs_err / tol; inf when non-finite

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0


@dataclass(frozen=True)
class Truth:
    """How far the truth can be trusted: complex step vs central differences vs reference."""

    complex_step: str
    central_difference: str
    reference: str
    agreement: float  # max |cs - cd| / max(1, |cs|) over every probe
    reference_agreement: float  # max |ref - cs| / max(1, |cs|)
    worst_fraction: float  # max |cs - cd| / tolerance of the probe (default, or looser given)
    reference_fraction: float  # max |ref - cs| / that tolerance
    probes: int
    ok: bool  # worst_fraction <= TRUTH_FRACTION


@dataclass(frozen=True)
class Consistency:
    """A method's own loss differenced in the working dtype against its own gradient.

    ``verdict``: ``consistent`` (every conclusive probe agrees and at least one was conclusive),
    ``inconsistent`` (some probe disagrees beyond the difference's error bound plus the
    tolerance), ``inconclusive`` (the difference quotient could not resolve the gradient),
    ``nonfinite`` (the loss or gradient is NaN/inf) or ``unavailable`` (no loss function).
    """

    verdict: str
    rows: int  # rows it ran on
    consistent: int
    inconsistent: int
    inconclusive: int
    below_resolution: int  # steps that rounded away: x + h == x - h in the working dtype
    nonfinite: int
    step: str  # how the step was chosen


@dataclass(frozen=True)
class MethodCheck:
    """One method's gradient against the truth."""

    name: str
    gated: bool
    passed: bool
    checked_entries: int
    failed_entries: int
    nonfinite_entries: int
    checked_directions: int
    failed_directions: int
    nonfinite_grad_rows: int
    max_abs_err: float | None  # over finite checked entries
    max_rel_err: float | None  # over entries whose truth is a normal number of the dtype
    max_ulp_err: float | None
    max_bits_err: float | None
    max_dir_err: float | None
    worst: WorstEntry | None
    consistency: Consistency


@dataclass(frozen=True)
class GradcheckReport:
    """Everything ``gradcheck`` found; renderers turn it into text."""

    source: str
    rows: int  # rows checked (row/label pairs when label-free)
    input_rows: int
    classes: int
    dtype: str
    accum: str
    cast: str
    label_free: bool
    skipped_nonfinite: int
    ignored: int
    cases: tuple[tuple[str, int], ...]  # synthetic case -> rows
    full: bool
    entries_per_row: int
    directions: int
    seed: int
    atol: float
    rtol: float
    tolerance_source: str
    truth: Truth
    methods: tuple[MethodCheck, ...]
    gate: tuple[str, ...]
    worst: tuple[WorstEntry, ...]
    notes: tuple[str, ...]
    ok: bool

    @property
    def truth_agreement(self) -> float:
        return self.truth.agreement


# --------------------------------------------------------------------------- probes


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


# --------------------------------------------------------------------------- consistency


def _loss_noise(loss: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """Bound on the rounding error of a working-dtype loss: 2 eps (|L| + max|z| + log C + 1).

    The intermediates of every formulation (z - m, the log-sum-exp, an unshifted exp's argument)
    are at most that large and each loses about eps of its size.
    """
    big = np.abs(x).max(axis=1)
    return 2 * eps * (np.abs(loss) + big + math.log(x.shape[1]) + 1)


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
    if step is None:  # balance rounding noise/t against truncation t**2 m3 / 6
        # m3 = 0 only for C = 1 (L is constant): any step will do, take a coordinate's
        curv = np.where(m3 > 0, m3, 0.0962)
        t = np.exp2(np.round(np.log2((3 * _loss_noise(loss0, x, eps) / curv) ** (1 / 3))))
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
        off = 0.5 * np.linalg.norm(0.5 * (xp64 + xm64) - x, axis=1)
        bound = (
            (_loss_noise(lp64, xp64, eps) + _loss_noise(lm64, xm64, eps)) / (2 * t)
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
                fn, xf[sl], yt[sl], l0[sl], gt[sl], u, working, atol, rtol, step
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


# --------------------------------------------------------------------------- the analysis


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
) -> _Probes:
    """Choose the probes and compute the truth and both witnesses there."""
    n, c = x.shape
    sel = np.tile(np.arange(c), (n, 1)) if full else _select(x.astype(np.float64), y, sample, rng)
    dirs = _directions(n, c, directions, rng)
    cs_e, lo_e, cd_e = _truth_entries(x, y, sel, working)
    cs_d, lo_d, cd_d = _truth_directions(x, y, dirs, working)
    ref = reference_of(prepare_input(x, y, dtype=working))
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


def _judge_truth(p: _Probes, working: Precision, atol: float, rtol: float) -> Truth:
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
    return Truth(
        complex_step=cs,
        central_difference=f"central differences in {cd_arith}, Richardson on h and h/2, "
        "h = (u (1 + ln C))**(1/5)",
        reference=reference_precision_name(working),
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


def _rows_to_check(
    first: Prepared, rows: int | None, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(input row, label) of every checked row, and notes saying how they were chosen.

    Rows with NaN/inf logits and ignored rows are left out. Without labels each row is checked
    with its argmax and its argmin as the label (once when they coincide). ``rows`` keeps a
    sample: the largest margin, the largest |z|, then seeded random rows.
    """
    notes: list[str] = []
    row_ids = np.flatnonzero(first.finite_input & ~first.ignored)
    if first.labels is None:
        xe = first.x[row_ids].astype(np.float64)
        hi, lo = xe.argmax(axis=1), xe.argmin(axis=1)
        two = hi != lo
        row_ids = np.repeat(row_ids, np.where(two, 2, 1))
        y = np.stack([hi, lo], axis=1)[np.stack([np.ones_like(two), two], axis=1)]
        notes.append("label-free: each row is checked with its argmax and its argmin as label")
    else:
        assert first.safe_labels is not None
        y = first.safe_labels[row_ids]
    if rows is not None and len(row_ids) > rows:
        keep = _pick_rows(first.x[row_ids], y, rows, rng)
        notes.append(
            f"checked {rows} of {len(row_ids)} rows: the largest margin, the largest |z| "
            f"and a random sample (seed {seed})"
        )
        row_ids, y = row_ids[keep], y[keep]
    return row_ids, y, notes


def _gradients_under_test(
    methods: Sequence[str] | None,
    custom: Mapping[str, MethodFn] | None,
    given: Mapping[str, np.ndarray],
    gate: Sequence[str],
    working: Precision,
    accum: Precision,
) -> dict[str, _Evaluator | None]:
    """name -> evaluator (None: a precomputed gradient). Gated registered methods are added."""
    names = list(DEFAULT_METHODS if methods is None else methods)
    known = (*METHODS, *FRAMEWORK_METHODS)  # framework methods (torch, jax) by name too
    for name in names:
        if name not in known:
            raise UsageError(f"unknown method {name!r}; expected one of: {', '.join(known)}")
    extra = dict(custom or {})
    names += [g for g in gate if g in known and g not in names and g not in extra]
    fns: dict[str, _Evaluator | None] = {
        name: _evaluator(get_method(name), working, accum) for name in names if name not in extra
    }
    fns.update({name: _evaluator(fn, working, accum) for name, fn in extra.items()})
    fns.update(dict.fromkeys(given))
    unknown = [g for g in gate if g not in fns]
    if unknown:
        raise UsageError(f"gate names {', '.join(unknown)}, which is not run")
    return fns


@dataclass(frozen=True)
class GradcheckOptions:
    """What :func:`gradcheck` does, named as ``smcheck gradcheck``'s flags and config keys.

    ``methods`` are registered names (default naive, shifted, fused, log1p); ``custom`` adds
    functions with the methods' signature ``fn(x, y, working, accum) -> MethodOutput``;
    ``gradients`` adds precomputed (N, C) gradients of the input rows (no loss, so no
    consistency check). ``gate`` names the methods that must pass for ``report.ok``; a
    registered gated method is run even when not listed. Errors pass when
    ``|g - g*| <= atol + rtol |g*|`` (defaults: :data:`DEFAULT_TOLERANCES`). ``directions``
    random unit directions and ``sample`` random coordinates per row are probed (``full``:
    every coordinate); ``rows`` checks a seeded sample of that many rows; ``top`` worst entries
    are listed. ``source`` and ``row_cases`` (a synthetic input's case per row) are reported.

    >>> GradcheckOptions(atol=-1.0)
    Traceback (most recent call last):
    ...
    smcheck.errors.UsageError: atol must be a finite number >= 0, got -1.0
    """

    dtype: str | np.dtype | Precision | None = None
    accum: str | np.dtype | Precision | None = None
    cast: str = "ieee"
    ignore_index: int = -100
    methods: Sequence[str] | None = None
    custom: Mapping[str, MethodFn] | None = None
    gradients: Mapping[str, np.ndarray] | None = None
    gate: Sequence[str] = ("fused",)
    atol: float | None = None
    rtol: float | None = None
    directions: int = 2
    sample: int = 4
    full: bool = False
    consistency_step: float | None = None
    rows: int | None = None
    seed: int = 0
    top: int = 5
    source: str = "array"
    row_cases: Sequence[str] | None = None

    def __post_init__(self) -> None:
        for name, val in (("atol", self.atol), ("rtol", self.rtol)):
            if val is not None and not (math.isfinite(val) and val >= 0):
                raise UsageError(f"{name} must be a finite number >= 0, got {val}")
        for name, ival in (("directions", self.directions), ("sample", self.sample),
                           ("top", self.top)):  # fmt: skip
            if ival < 0:
                raise UsageError(f"{name} must be >= 0, got {ival}")
        if self.rows is not None and self.rows < 1:
            raise UsageError(f"rows must be at least 1, got {self.rows}")
        step = self.consistency_step
        if step is not None and not (math.isfinite(step) and step > 0):
            raise UsageError(f"consistency step must be a positive number, got {step}")


@dataclass(frozen=True)
class _Rows:
    """The rows to check (rounded to the working dtype), their labels, and how they were
    chosen."""

    first: Prepared  # the whole input, rounded (accumulation included)
    row_ids: np.ndarray
    y: np.ndarray
    x: np.ndarray  # first.x[row_ids], contiguous
    skipped: int  # rows with NaN/inf logits
    notes: list[str]


def gradcheck(
    logits: np.ndarray,
    labels: np.ndarray | None = None,
    options: GradcheckOptions | None = None,
    **fields: Any,
) -> GradcheckReport:
    """Check each method's gradient against complex-step and central-difference derivatives.

    ``options`` is a :class:`GradcheckOptions`, or give its fields as keywords (both: the
    keywords replace those fields). Without labels each row is checked twice, with its argmax
    and its argmin as the label. The seed's row, in float32:

    >>> import numpy as np
    >>> r = gradcheck(np.array([[0.0, -800.0, 1.0]]), np.array([1]), dtype="float32")
    >>> {m.name: m.passed for m in r.methods}
    {'naive': False, 'shifted': False, 'fused': True, 'log1p': True}
    >>> r.methods[1].nonfinite_grad_rows, r.ok, r.truth.ok
    (1, True, True)
    """
    opts = merge_options(GradcheckOptions, options, fields, {}, "gradcheck")
    rng = np.random.default_rng([opts.seed, 1])  # the row sample, then the probes
    sel = _rows_checked(logits, labels, opts, rng)
    working = sel.first.working
    assert sel.first.accum is not None
    a_def, r_def = default_tolerance(working)
    atol = a_def if opts.atol is None else float(opts.atol)
    rtol = r_def if opts.rtol is None else float(opts.rtol)
    given = dict(opts.gradients or {})
    fns = _gradients_under_test(
        opts.methods, opts.custom, given, opts.gate, working, sel.first.accum
    )
    p = _probe(
        sel.x, sel.y, sel.row_ids, opts.row_cases, working, opts.full, opts.sample,
        opts.directions, rng,
    )  # fmt: skip
    truth = _judge_truth(p, working, atol, rtol)
    notes = list(sel.notes)
    if truth.reference_fraction > TRUTH_FRACTION:
        notes.append(
            "the reference gradient disagrees with the complex-step truth by "
            f"{truth.reference_fraction:.2g} of the tolerance: a bug in smcheck's reference"
        )
    checks, worst = _check_methods(fns, given, sel, p, opts, atol, rtol)
    if len(sel.row_ids) == 0:
        notes.append("no row to check: every row is ignored or has NaN/inf logits")
    return _report(sel, p, truth, checks, worst, opts, atol, rtol, notes)


def _rows_checked(
    logits: np.ndarray, labels: np.ndarray | None, opts: GradcheckOptions, rng: np.random.Generator
) -> _Rows:
    """The input through the front door, and the rows to check (UsageError when too many)."""
    first = prepare_input(
        logits, labels, dtype=opts.dtype, accum=opts.accum, cast=opts.cast,
        ignore_index=opts.ignore_index,
    )  # fmt: skip
    if first.labels is None and opts.gradients:
        raise UsageError("precomputed gradients need labels")
    row_ids, y, notes = _rows_to_check(first, opts.rows, rng, opts.seed)
    n, c = len(row_ids), first.x.shape[1]
    if n * c > MAX_CELLS:
        raise UsageError(
            f"{n} rows x {c} classes is more than gradcheck holds at once ({MAX_CELLS} logits): "
            f"check a sample with --rows"
        )
    if opts.full and n * c * c > FULL_BUDGET:
        raise UsageError(
            f"--full on {n} rows x {c} classes evaluates {n * c * c:.2g} loss terms "
            f"(limit {FULL_BUDGET:.2g}): check fewer rows with --rows, or drop --full"
        )
    skipped = int(np.count_nonzero(~first.finite_input & ~first.ignored))
    if skipped:
        notes.append(f"{skipped} rows with NaN/inf logits are skipped (no derivative to check)")
    x = np.ascontiguousarray(first.x[row_ids])
    return _Rows(first, row_ids, y, x, skipped, notes)


def _check_methods(
    fns: Mapping[str, _Evaluator | None],
    given: Mapping[str, np.ndarray],
    sel: _Rows,
    p: _Probes,
    opts: GradcheckOptions,
    atol: float,
    rtol: float,
) -> tuple[list[MethodCheck], list[WorstEntry]]:
    """Each gradient against the truth at the probes, with its consistency check; the worst
    list takes each method's worst, then each one's second worst, ..."""
    working = sel.first.working
    checks: list[MethodCheck] = []
    ranked: list[list[WorstEntry]] = []
    for name, fn in fns.items():
        if fn is None:
            g0 = np.asarray(given[name])
            if g0.shape != sel.first.x.shape:
                raise InputError(
                    f"gradient {name!r} has shape {g0.shape}, expected {sel.first.x.shape}"
                )
            loss0, grad = None, g0[sel.row_ids]
        else:
            loss0, grad = fn(sel.x, sel.y)
        check, worst = _check_method(name, grad, p, working, atol, rtol, opts.top)
        l0 = None if loss0 is None else np.asarray(loss0).astype(np.float64)
        g64 = np.asarray(grad).astype(np.float64)
        cons = _consistency(
            fn, sel.x, sel.y, l0, g64, p.dirs, working, atol, rtol, opts.consistency_step
        )
        checks.append(dataclasses.replace(check, gated=name in opts.gate, consistency=cons))
        ranked.append(worst)
    worst_all = [w for rank in itertools.zip_longest(*ranked) for w in rank if w is not None]
    return checks, worst_all


def _report(
    sel: _Rows,
    p: _Probes,
    truth: Truth,
    checks: list[MethodCheck],
    worst: list[WorstEntry],
    opts: GradcheckOptions,
    atol: float,
    rtol: float,
    notes: list[str],
) -> GradcheckReport:
    first, n = sel.first, len(sel.row_ids)
    assert first.accum is not None
    cases: tuple[tuple[str, int], ...] = ()
    if opts.row_cases is not None:
        picked = [opts.row_cases[int(r)] for r in sel.row_ids]
        cases = tuple((k, picked.count(k)) for k in dict.fromkeys(picked))
    given_tol = opts.atol is not None or opts.rtol is not None
    return GradcheckReport(
        source=opts.source,
        rows=n,
        input_rows=int(first.x.shape[0]),
        classes=int(first.x.shape[1]),
        dtype=first.working.name,
        accum=first.accum.name,
        cast=opts.cast,
        label_free=first.labels is None,
        skipped_nonfinite=sel.skipped,
        ignored=int(np.count_nonzero(first.ignored)),
        cases=cases,
        full=opts.full,
        entries_per_row=int(p.sel.shape[1]),
        directions=opts.directions,
        seed=opts.seed,
        atol=atol,
        rtol=rtol,
        tolerance_source="given" if given_tol else "default for " + first.working.name,
        truth=truth,
        methods=tuple(checks),
        gate=tuple(opts.gate),
        worst=tuple(worst[: opts.top]),
        notes=tuple(notes),
        ok=n > 0 and truth.ok and all(m.passed for m in checks if m.gated),
    )
