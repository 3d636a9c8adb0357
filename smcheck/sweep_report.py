"""``smcheck sweep``'s report: a dtype's theory (its thresholds), the grid's cells, the break
points, and the report that holds them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .precisions import get_precision

if TYPE_CHECKING:  # an annotation only: sweep.py imports this module
    from .sweep import SweepConfig


SCHEMA = "smcheck.sweep/1"

#: Break kinds, in the order reports list them.
KINDS: tuple[str, ...] = ("overflow", "nonfinite_loss", "nonfinite_grad", "precision")


@dataclass(frozen=True)
class DtypeTheory:
    """A working dtype's thresholds (natural logs), computed from the dtype's own facts."""

    dtype: str
    accum: str
    ln_max: float  # exp(z) overflows above this; so does 1/p once ln p < -ln_max
    ln_smallest_subnormal: float
    ln_underflow: float  # ln(smallest subnormal / 2): a value at most this rounds to 0
    eps: float
    accum_ln_max: float  # a sum in the accumulation dtype overflows past this log-sum-exp

    @classmethod
    def of(cls, dtype: str, accum: str) -> DtypeTheory:
        p = get_precision(dtype)
        return cls(
            dtype=p.name,
            accum=accum,
            ln_max=p.ln_max,
            ln_smallest_subnormal=p.ln_smallest_subnormal,
            ln_underflow=p.ln_smallest_subnormal - math.log(2.0),
            eps=p.eps,
            accum_ln_max=get_precision(accum).ln_max,
        )


@dataclass(frozen=True)
class Cell:
    """One grid cell. Fractions are over the rows whose rounded input is finite; errors over
    the rows where they are measurable (finite loss/gradient); ``None`` = nothing measurable."""

    dtype: str
    classes: int
    case: str
    method: str
    scale: float
    nonfinite_loss_frac: float | None
    nonfinite_grad_frac: float | None
    overflow_frac: float | None
    underflow_frac: float | None
    loss_max_rel_err: float | None
    grad_max_abs_err: float | None
    accum: str
    rows: int  # rows with finite rounded input
    largest_logit: float | None  # largest rounded logit of the cell
    margin: float | None  # z_y - max_{j != y} z_j of the most extreme row (see _geometry)
    loss: float | None  # largest exact loss -ln p_y of the cell's rows (float64)
    loss_median_bits: float | None
    loss_max_bits: float | None
    loss_max_excess_bits: float | None  # bits beyond the condition number: the precision test
    loss_median_rel_err: float | None
    mean_loss_rel_err: float | None  # of the mean loss over the cell's rows
    verdict: str  # ok, lossy (precision), broken (overflow / non-finite), inconclusive


@dataclass(frozen=True)
class Break:
    """Where one kind of failure first appears; ``scale`` None: never in the swept range.

    The failure starts in (``scale_lo``, ``scale``]; ``scale_lo`` None means it is already there
    at the smallest swept scale. ``observed`` is the quantity the ``theory`` threshold speaks
    of (the largest logit, or -margin) at ``scale``.
    """

    dtype: str
    classes: int
    case: str
    method: str
    kind: str
    scale: float | None
    scale_lo: float | None = None
    largest_logit: float | None = None
    margin: float | None = None
    loss: float | None = None
    cause: str | None = None
    theory: str | None = None
    theory_value: float | None = None
    observed: float | None = None

    @property
    def deviation(self) -> float | None:
        """observed / theory_value - 1 (how far past the threshold the break was seen)."""
        if self.observed is None or not self.theory_value:
            return None
        return self.observed / self.theory_value - 1.0


@dataclass(frozen=True)
class SweepReport:
    config: SweepConfig
    theory: tuple[DtypeTheory, ...]
    cells: tuple[Cell, ...]
    breaks: tuple[Break, ...]
    reference: dict[str, str] = field(default_factory=dict)  # dtype -> reference arithmetic

    @property
    def gate_failures(self) -> tuple[Break, ...]:
        """Breaks (found in range) of gated methods."""
        return tuple(b for b in self.breaks if b.scale is not None and b.method in self.config.gate)

    @property
    def gate_unmeasured(self) -> tuple[str, ...]:
        """Gated methods with no measurable cell at all (every input overflowed the dtype)."""
        return tuple(
            m
            for m in self.config.gate
            if all(c.verdict == "inconclusive" for c in self.cells if c.method == m)
        )

    @property
    def ok(self) -> bool:
        """No gated method breaks anywhere in the grid, and each was measured somewhere (true
        when nothing is gated): a sweep that checked nothing is not a pass."""
        return not self.gate_failures and not self.gate_unmeasured
