"""What a run found: frozen dataclasses, rendered by :mod:`smcheck.render.kernel`."""

from __future__ import annotations

import math
from dataclasses import dataclass

# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorstRow:
    """One of a probe's worst rows: where, the kernel's value, the reference, the error."""

    row: int
    label: int
    value: float  # the loss (or the gradient entry, for a gradient failure)
    reference: float
    error: float  # loss: ulps; gradient: absolute


@dataclass(frozen=True)
class ProbeResult:
    """One probe at one dtype and vocabulary size. ``status``: pass, fail or skip."""

    name: str
    dtype: str
    vocab: int
    rows: int
    status: str
    detail: str
    loss_max_ulp_err: float | None = None
    grad_max_err: float | None = None
    stock_loss_max_ulp_err: float | None = None
    stock_grad_max_err: float | None = None
    max_loss_ulp: float = math.nan
    max_grad_err: float = math.nan
    loss_dtype: str = ""
    worst: tuple[WorstRow, ...] = ()
    seconds: float = 0.0

    @property
    def passed(self) -> bool | None:
        """True/False; None when skipped."""
        return None if self.status == "skip" else self.status == "pass"

    @property
    def test_id(self) -> str:
        """``name[dtype-vocab]``, as a pytest item id."""
        return f"{self.name}[{self.dtype}-{self.vocab}]"


@dataclass(frozen=True)
class KernelReport:
    """What :func:`kernel` found: one :class:`ProbeResult` per (dtype, vocab, probe)."""

    target: str
    framework: str
    device: str
    stock: str
    judge: str
    seed: int
    dtypes: tuple[str, ...]
    vocab: tuple[int, ...]
    probes: tuple[ProbeResult, ...]
    seconds: float = 0.0

    @property
    def failed(self) -> tuple[ProbeResult, ...]:
        return tuple(p for p in self.probes if p.status == "fail")

    @property
    def skipped(self) -> tuple[ProbeResult, ...]:
        return tuple(p for p in self.probes if p.status == "skip")

    @property
    def ok(self) -> bool:
        """Every probe that ran passed (skipped probes do not fail a kernel)."""
        return not self.failed
