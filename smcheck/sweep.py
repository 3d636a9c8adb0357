"""``sweep``: a stability map - where each method breaks as the logits grow, per precision.

The analysis behind ``smcheck sweep``. Synthetic logits ``base * scale`` (one fixed base pattern per
case, drawn once from a seeded generator, so every number here is a function of the scale alone) are
rounded to each working dtype with :func:`smcheck.prepare.prepare_input`, every method and the
reference run on the same rounded values, and each grid cell (dtype, classes, case, method, scale)
gets its fractions of non-finite/overflowed/underflowed rows and its errors. The base patterns are
normalised so that their largest entry is exactly 1: **the scale is the largest logit** (before
rounding).

Cases (rows of ``C`` classes, label ``y``; defined in :mod:`smcheck.synthetic`):

* ``random`` - N(0, 1) logits, random labels (an untrained classifier);
* ``confident`` - N(0, 1) logits, the label at each row's maximum;
* ``wrong`` - one logit at +1, the label at -1 (the row's minimum), the others uniform in
  [-0.9, -0.3]: margin z_y - max_{j != y} z_j = -2 * scale exactly, and the other classes stay
  far enough below the top that -log p_y is the margin to within ln(1 + C e^{-1.3 scale});
* ``margin`` - the label at +1, one other class at 0 and the rest uniform in [-0.5, 0]: margin
  +scale exactly (a fixed gap between the label and the rest).

Break points. For each (dtype, classes, case, method) and each kind

* ``overflow`` - some row's overflow flag (an intermediate became +-inf on finite input),
* ``nonfinite_loss`` / ``nonfinite_grad`` - some row's loss / gradient is NaN or inf,
* ``precision`` - some row's loss is off by more than ``max_bits`` bits beyond its condition
  number (see below),

the first broken grid scale is refined by bisection (several points per round when rows are
cheap) between the last good grid scale and it until ``scale / scale_lo <= 1 + tol``; the break
lies in (scale_lo, scale]. Each break is explained against the dtype's thresholds, computed from
the dtype itself:

* ``exp overflow`` - exp(z) rounds to inf once the largest logit exceeds ln(max);
* ``sum overflow`` - sum exp(z) rounds to inf in the accumulation dtype once the log-sum-exp
  exceeds its ln(max) (only an unshifted sum in a 16-bit accumulator gets there first);
* ``1/p_y overflow`` - a separate log-loss layer's -1/p_y rounds to -inf once p_y < 1/max,
  i.e. once the loss -ln p_y exceeds ln(max) (this breaks the chained gradient *before* p_y
  underflows; with few classes the loss is -margin, with 32000 it is -margin + ln(sum));
* ``p_y underflow`` - p_y rounds to 0 once it is at most half the smallest subnormal (round to
  nearest), i.e. once the loss exceeds -ln(smallest subnormal / 2) = -ln(sub) + ln 2.

The precision test counts the loss error in bits *beyond the problem's condition number*
kappa = sum |z_i| |dL/dz_i| / |L| (:func:`smcheck.metrics.condition_number`):
log2(1 + ulps / max(kappa, 1)). Rounding the shifted logits z - m in the working dtype alone
costs about log2(kappa) bits on a confident row (exp turns their absolute error into a relative
one), whatever the formulation; what is left is the formulation's own loss - a fused loss that
rounds to 0 once 1 + s' rounds to 1, say. The plain bits are reported too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .errors import UsageError
from .executor import available_cpus, can_fork, ordered_map
from .frameworks import FRAMEWORK_METHODS
from .methods import METHODS
from .options import renamed_keywords
from .precisions import Precision, get_precision, resolve_accum
from .reference import reference_precision_name
from .sweep_breaks import _refine
from .sweep_cells import Problem, cell_verdict, measure
from .sweep_report import KINDS, SCHEMA, Break, Cell, DtypeTheory, SweepReport
from .synthetic import PATTERN_CASES, case_pattern, check_size
from .variants import Variant, check_variant

__all__ = [
    "CASES",
    "DEFAULT_CLASSES",
    "DEFAULT_DTYPES",
    "DEFAULT_SCALES",
    "KINDS",
    "SCHEMA",
    "Break",
    "Cell",
    "DtypeTheory",
    "SweepConfig",
    "SweepReport",
    "auto_rows",
    "default_jobs",
    "default_workers",
    "parse_scales",
    "sweep",
]


DEFAULT_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
DEFAULT_CLASSES: tuple[int, ...] = (10, 32000)
DEFAULT_SCALES_SPEC = "0.1:1e4:40"

#: Elements (rows x classes) of one cell: ``auto_rows`` gives 64 rows at C = 10, 1 at C = 32000.
ROW_BUDGET = 1 << 10
#: Most scales a sweep takes, and most grid cells (a report holds each cell as an object of
#: about 1 KiB; the default grid has 6400).
MAX_SCALES = 100_000
MAX_CELLS = 1_000_000
#: Bytes per logit of a cell held at once: the logits, their rounding, the reference's
#: binary128 values and gradient, a method's gradient and the errors (generous: a limit on what
#: cannot fit at all, checked before anything is allocated).
SWEEP_BYTES_PER_VALUE = 128


def parse_scales(spec: str) -> tuple[float, ...]:
    """``"1,10,100"`` (a list) or ``"LO:HI:N"`` (N log-spaced points, both ends included).

    Sorted, duplicates removed; every scale must be finite and positive.

    >>> parse_scales("0.1:1000:5")
    (0.1, 1.0, 10.0, 100.0, 1000.0)
    >>> parse_scales("100, 1,10")
    (1.0, 10.0, 100.0)
    """
    text = spec.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            if n < 1 or not (0 < lo <= hi) or not math.isfinite(hi):
                raise ValueError
            if n > MAX_SCALES:  # before geomspace allocates them
                raise UsageError(f"--scales {spec!r}: {n} scales, at most {MAX_SCALES}")
            values = [lo] if n == 1 else np.geomspace(lo, hi, n).tolist()
            if n > 1:  # geomspace rounds the ends; give them back exactly
                values[0], values[-1] = lo, hi
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except UsageError:
        raise
    except ValueError:
        raise UsageError(
            f"--scales {spec!r}: expected a list '1,10,100' or 'LO:HI:N' (0 < LO <= HI, N >= 1)"
        ) from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if not values or bad:
        raise UsageError(f"--scales {spec!r}: scales must be finite and > 0")
    # round-trip through repr-stable floats so "0.1:1e4:40" is the same tuple on every machine
    return tuple(sorted({float(f"{v:.12g}") for v in values}))


DEFAULT_SCALES: tuple[float, ...] = parse_scales(DEFAULT_SCALES_SPEC)


def auto_rows(classes: int) -> int:
    """Rows per cell when none are given: about ``ROW_BUDGET`` logits, between 1 and 64 rows.

    >>> auto_rows(10), auto_rows(32000)
    (64, 1)
    """
    return max(1, min(64, ROW_BUDGET // classes))


#: Sweep's synthetic cases by name (the base patterns of :mod:`smcheck.synthetic`); the order
#: is the order reports list them in.
CASES = PATTERN_CASES


# ---------------------------------------------------------------------------------------------
# Configuration and report


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. ``accum``: a dtype name, ``None`` (each dtype's default: float32 for
    16/8-bit types) or ``"working"`` (accumulate in the working dtype itself)."""

    dtypes: tuple[str, ...] = DEFAULT_DTYPES
    classes: tuple[int, ...] = DEFAULT_CLASSES
    scales: tuple[float, ...] = DEFAULT_SCALES
    cases: tuple[str, ...] = tuple(CASES)
    methods: tuple[str, ...] = tuple(METHODS)
    accum: str | None = None
    rows: int | None = None  # None: auto_rows(classes)
    seed: int = 0
    max_bits: float = 4.0
    tol: float = 0.01
    gate: tuple[str, ...] = ()
    #: the loss variant swept (see :mod:`smcheck.variants`); the defaults are the plain loss
    z_loss: float = 0.0
    softcap: float | None = None
    logit_scale: float = 1.0

    @property
    def variant(self) -> Variant | None:
        """The loss variant (constants as given; the front door rounds them), or None."""
        v = check_variant(z_loss=self.z_loss, softcap=self.softcap, logit_scale=self.logit_scale)
        return v if v.active else None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(msg)

        need(bool(self.dtypes), "sweep: no dtype to sweep")
        object.__setattr__(
            self, "dtypes", tuple(dict.fromkeys(get_precision(d).name for d in self.dtypes))
        )
        need(bool(self.classes), "sweep: no class count to sweep")
        need(all(c >= 2 for c in self.classes), f"--classes {self.classes}: each must be >= 2")
        object.__setattr__(self, "classes", tuple(dict.fromkeys(int(c) for c in self.classes)))
        need(bool(self.scales), "sweep: no scale to sweep")
        need(all(math.isfinite(s) and s > 0 for s in self.scales), "--scales: must be finite, > 0")
        object.__setattr__(self, "scales", tuple(sorted(set(map(float, self.scales)))))
        for c in self.cases:
            need(c in CASES, f"unknown case {c!r}; expected one of: {', '.join(CASES)}")
        need(bool(self.cases), "sweep: no case to sweep")
        object.__setattr__(self, "cases", tuple(c for c in CASES if c in self.cases))
        known = (*METHODS, *FRAMEWORK_METHODS)  # framework methods (torch, jax) by name too
        for m in (*self.methods, *self.gate):
            need(m in known, f"unknown method {m!r}; expected one of: {', '.join(known)}")
        need(bool(self.methods), "sweep: no method to sweep")
        object.__setattr__(self, "methods", tuple(m for m in known if m in self.methods))
        missing = [m for m in self.gate if m not in self.methods]
        need(not missing, f"--gate {','.join(missing)}: not among the swept --methods")
        object.__setattr__(self, "gate", tuple(m for m in known if m in self.gate))
        if self.accum is not None and self.accum != "working":
            object.__setattr__(self, "accum", get_precision(self.accum).name)
        need(self.rows is None or self.rows >= 1, f"--rows {self.rows}: must be >= 1")
        for n_classes in self.classes:  # before any pattern is made
            check_size(self.rows_for(n_classes), n_classes, SWEEP_BYTES_PER_VALUE, "sweep")
        shape = (self.dtypes, self.classes, self.cases, self.methods, self.scales)
        cells = math.prod(len(axis) for axis in shape)
        need(
            cells <= MAX_CELLS,
            f"sweep: {' x '.join(str(len(a)) for a in shape)} (dtypes x classes x cases x methods "
            f"x scales) = {cells} cells, at most {MAX_CELLS}",
        )
        need(self.max_bits >= 0, f"--max-bits {self.max_bits}: must be >= 0")
        _ = self.variant  # UsageError naming the option
        need(0 < self.tol < 1, f"--tol {self.tol}: must be in (0, 1)")

    def accum_for(self, dtype: str) -> Precision:
        """The accumulation precision used with working dtype ``dtype``."""
        working = get_precision(dtype)
        return working if self.accum == "working" else resolve_accum(working, self.accum)

    def rows_for(self, classes: int) -> int:
        return self.rows if self.rows is not None else auto_rows(classes)


# ---------------------------------------------------------------------------------------------
# Break points: grid, then bisection


def _run_task(
    config: SweepConfig, dtype: str, classes: int, case: str
) -> tuple[list[Cell], list[Break]]:
    """Grid and break points of one (dtype, classes, case): a unit of parallel work."""
    accum = config.accum_for(dtype)
    base, labels = case_pattern(case, classes, config.rows_for(classes), config.seed)
    prob = Problem(dtype, accum, classes, case, base, labels, config.max_bits, config.variant)
    grid = measure(prob, config.scales, config.methods, with_ref=True)
    cells = [
        Cell(
            dtype=dtype,
            classes=classes,
            case=case,
            method=m,
            scale=sc,
            nonfinite_loss_frac=st.nonfinite_loss_frac,
            nonfinite_grad_frac=st.nonfinite_grad_frac,
            overflow_frac=st.overflow_frac,
            underflow_frac=st.underflow_frac,
            loss_max_rel_err=st.loss_max_rel_err,
            grad_max_abs_err=st.grad_max_abs_err,
            accum=accum.name,
            rows=st.rows,
            largest_logit=st.largest_logit,
            margin=st.margin,
            loss=st.loss,
            loss_median_bits=st.loss_median_bits,
            loss_max_bits=st.loss_max_bits,
            loss_max_excess_bits=st.loss_max_excess_bits,
            loss_median_rel_err=st.loss_median_rel_err,
            mean_loss_rel_err=st.mean_loss_rel_err,
            verdict=cell_verdict(st, config.max_bits),
        )
        for m, stats in grid.items()
        for sc, st in zip(config.scales, stats, strict=True)
    ]
    theory = DtypeTheory.of(dtype, accum.name)
    return cells, _refine(prob, config.scales, grid, config.tol, theory)


def _run_indexed(
    config: SweepConfig, tasks: Sequence[tuple[str, int, str]], i: int
) -> tuple[list[Cell], list[Break]]:
    return _run_task(config, *tasks[i])


def _cost(config: SweepConfig, task: tuple[str, int, str]) -> float:
    """Rough relative cost of a task (binary128 reference and float16 arithmetic are slow)."""
    dtype, classes, _ = task
    weight = {"float64": 5.0, "float16": 4.0, "bfloat16": 1.5}.get(dtype, 1.0)
    return weight * classes * config.rows_for(classes)


def default_workers() -> int:
    """Worker processes: the CPUs this process may use, at most 8."""
    return min(8, available_cpus())


default_jobs = default_workers  # the old name, for one release


def sweep(config: SweepConfig | None = None, *, workers: int = 1, **deprecated: Any) -> SweepReport:
    """Sweep the grid of ``config`` and find every method's break points.

    ``workers > 1`` spreads the (dtype, classes, case) tasks over that many workers (at most the
    CPUs) through :func:`smcheck.executor.ordered_map` - forked processes where that is safe,
    else threads; the report is identical for any ``workers``. (``jobs=`` is the deprecated name
    of ``workers=``, as in the other analyses.)

    >>> rep = sweep(SweepConfig(dtypes=("float16",), classes=(10,), cases=("margin",),
    ...                         methods=("naive",), scales=(1.0, 20.0)))
    >>> b = next(b for b in rep.breaks if b.kind == "overflow")
    >>> b.cause, b.theory, b.scale_lo < 11.09 < b.scale <= 1.01 * b.scale_lo  # ln(65504)
    ('exp overflow', 'ln(max)', True)
    """
    named = {"workers": workers} if workers != 1 else {}
    given = renamed_keywords({**deprecated, **named}, {"jobs": "workers"}, "sweep")
    unknown = sorted(set(given) - {"workers"})
    if unknown:
        raise TypeError(f"sweep() got an unexpected keyword argument {unknown[0]!r}")
    workers = int(given.get("workers", 1))
    config = config or SweepConfig()
    tasks = [(d, c, k) for d in config.dtypes for c in config.classes for k in config.cases]
    # costliest first, so that no long task starts last while the other workers idle
    order = sorted(range(len(tasks)), key=lambda i: -_cost(config, tasks[i]))
    run = partial(_run_indexed, config, tasks)  # a forked worker inherits it, unpickled
    done = ordered_map(run, order, workers=workers, processes=can_fork(config.methods))
    by_index = dict(zip(order, done, strict=True))
    results = [by_index[i] for i in range(len(tasks))]
    cells = [cell for cs, _ in results for cell in cs]
    breaks = [b for _, bs in results for b in bs]
    d_ord = {d: i for i, d in enumerate(config.dtypes)}
    c_ord = {c: i for i, c in enumerate(config.classes)}
    k_ord = {k: i for i, k in enumerate(config.cases)}
    m_ord = {m: i for i, m in enumerate(config.methods)}

    def key(x: Cell | Break) -> tuple[int, int, int, int]:
        return d_ord[x.dtype], c_ord[x.classes], k_ord[x.case], m_ord[x.method]

    cells.sort(key=lambda x: (*key(x), x.scale))
    breaks.sort(key=lambda x: (*key(x), KINDS.index(x.kind)))
    theory = tuple(DtypeTheory.of(d, config.accum_for(d).name) for d in config.dtypes)
    ref = {d: reference_precision_name(get_precision(d), config.variant) for d in config.dtypes}
    return SweepReport(config, theory, tuple(cells), tuple(breaks), ref)
