"""``smcheck gradcheck``'s report: the frozen dataclasses of the truth, the consistency check and
each method's result."""

from __future__ import annotations

from dataclasses import dataclass

from .variants import Variant


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
    #: the loss variant checked (:mod:`smcheck.variants`, constants as rounded); None: plain
    variant: Variant | None = None

    @property
    def truth_agreement(self) -> float:
        return self.truth.agreement
