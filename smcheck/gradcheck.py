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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import get_method
from .errors import InputError, UsageError, dims
from .frameworks import FRAMEWORK_METHODS
from .gradcheck_probes import (
    DEFAULT_TOLERANCES,
    TRUTH_FRACTION,
    _check_method,
    _consistency,
    _Evaluator,
    _evaluator,
    _judge_truth,
    _pick_rows,
    _probe,
    _Probes,
    default_tolerance,
)
from .gradcheck_report import (
    Consistency,
    GradcheckReport,
    MethodCheck,
    Truth,
    WorstEntry,
)
from .gradcheck_truth import (
    COMPLEX_STEP,
    cd_step,
    central_difference,
    complex_loss,
    complex_step,
    complex_step_binary128,
)
from .methods import DEFAULT_METHODS, LSE_FORM, METHODS, MethodFn, run_variant
from .options import merge_options
from .precisions import Precision
from .prepare import Prepared, prepare_input
from .synthetic import CASE_CHOICES, ROW_CASES, Synthetic, synthetic
from .variants import Variant, variant_fields

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


#: ``full=True`` evaluates N * C**2 loss terms; beyond this it would take minutes.
FULL_BUDGET = 1 << 28
#: Inputs larger than this (N * C) need ``rows=`` (a sample): the directions hold N * C doubles.
MAX_CELLS = 1 << 24


# --------------------------------------------------------------------------- the truth


# --------------------------------------------------------------------------- report


# --------------------------------------------------------------------------- probes


# --------------------------------------------------------------------------- consistency


# --------------------------------------------------------------------------- the analysis


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
    variant: Variant | None = None,
) -> dict[str, _Evaluator | None]:
    """name -> evaluator (None: a precomputed gradient). Gated registered methods are added.

    Under a ``variant``, smcheck's methods run through :func:`smcheck.methods.run_variant`
    (scale, cap, z-loss and the chain rule in the working dtype, as a kernel does them) and
    framework methods compute it their own way; a custom function and a precomputed gradient
    are the user's kernel of the whole variant loss, taken as given."""
    names = list(DEFAULT_METHODS if methods is None else methods)
    known = (*METHODS, *FRAMEWORK_METHODS)  # framework methods (torch, jax) by name too
    for name in names:
        if name not in known:
            raise UsageError(f"unknown method {name!r}; expected one of: {', '.join(known)}")
    extra = dict(custom or {})
    names += [g for g in gate if g in known and g not in names and g not in extra]
    fns: dict[str, _Evaluator | None] = {
        name: _evaluator(_variant_method(name, variant), working, accum)
        for name in names
        if name not in extra
    }
    fns.update({name: _evaluator(fn, working, accum) for name, fn in extra.items()})
    fns.update(dict.fromkeys(given))
    unknown = [g for g in gate if g not in fns]
    if unknown:
        raise UsageError(f"gate names {', '.join(unknown)}, which is not run")
    return fns


def _variant_method(name: str, variant: Variant | None) -> MethodFn:
    """Registered method ``name`` computing the loss ``variant`` (itself when there is none)."""
    fn = get_method(name)
    if variant is None:
        return fn
    if name not in METHODS:  # a framework writes the variant as its users do

        def framework(x: np.ndarray, y: np.ndarray, t: Precision, a: Precision) -> Any:
            return fn(x, y, t, a, variant=variant)

        return framework
    if not variant.changes_values:
        return fn

    def method(x: np.ndarray, y: np.ndarray, t: Precision, a: Precision) -> Any:
        return run_variant(fn, x, y, t, a, None, variant, form=LSE_FORM.get(name, "shifted"))

    return method


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
    ``z_loss``, ``softcap``, ``logit_scale`` (and ``smoothing_convention``, which changes
    nothing here: gradcheck has no label smoothing) select a loss variant
    (:mod:`smcheck.variants`); gradients are checked with respect to the original logits.

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
    #: the loss variant checked (see :mod:`smcheck.variants`); the defaults are the plain loss
    z_loss: float = 0.0
    softcap: float | None = None
    logit_scale: float = 1.0
    smoothing_convention: str = "torch"

    def __post_init__(self) -> None:
        variant_fields(self)  # UsageError naming the option
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
    variant = sel.first.variant
    fns = _gradients_under_test(
        opts.methods, opts.custom, given, opts.gate, working, sel.first.accum, variant
    )
    p = _probe(
        sel.x, sel.y, sel.row_ids, opts.row_cases, working, opts.full, opts.sample,
        opts.directions, rng, variant,
    )  # fmt: skip
    truth = _judge_truth(p, working, atol, rtol, variant)
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
        ignore_index=opts.ignore_index, z_loss=opts.z_loss, softcap=opts.softcap,
        logit_scale=opts.logit_scale, smoothing_convention=opts.smoothing_convention,
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
                    f"gradient {name!r} has shape {dims(g0.shape)},"
                    f" expected {dims(sel.first.x.shape)}"
                )
            loss0, grad = None, g0[sel.row_ids]
        else:
            loss0, grad = fn(sel.x, sel.y)
        check, worst = _check_method(name, grad, p, working, atol, rtol, opts.top)
        l0 = None if loss0 is None else np.asarray(loss0).astype(np.float64)
        g64 = np.asarray(grad).astype(np.float64)
        cons = _consistency(
            fn, sel.x, sel.y, l0, g64, p.dirs, working, atol, rtol, opts.consistency_step,
            sel.first.variant,
        )  # fmt: skip
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
        variant=first.variant,
    )
