"""Loss variants real models train with: logit scale, soft-capping, z-loss, Megatron smoothing.

One order for every method, the reference and every command (s = ``logit_scale``,
c = ``softcap``, lambda = ``z_loss``, eps = ``label_smoothing``):

1. z <- s * z                                   (default s = 1: nothing)
2. z <- c * tanh(z / c)                         (default: no cap)
3. loss_i = sum_k t_ik (-log softmax(z)_ik)     (weights and smoothing as before, with
   ``smoothing_convention`` "torch": eps/C on every class and 1 - eps + eps/C on the label, or
   "megatron": eps/(C - 1) on each other class and 1 - eps on the label)
4. loss_i += lambda * (log sum_k exp z_ik)**2   (default lambda = 0; also reported alone)

Gradients are with respect to the *original* logits: dL/dz = s * (1 - tanh(u)**2) * dL/dz''
with u = s z / c. The constants are held as a kernel holds its scalar arguments: in the
working dtype's carrier (float32 for float32 and narrower types, float64 for float64), and the
method and the reference use those same rounded constants - the error reported is the
method's, not the rounding of 1/sqrt(d) to float32.

>>> v = check_variant(softcap=30.0, logit_scale=0.125)
>>> v.describe()
'logit_scale=0.125, softcap=30'
>>> check_variant(softcap=-1.0)
Traceback (most recent call last):
...
smcheck.errors.UsageError: softcap must be a finite number > 0, got -1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import UsageError

__all__ = ["CONVENTIONS", "Variant", "check_variant", "variant_fields"]

#: How label smoothing spreads eps: PyTorch over all C classes, Megatron over the other C - 1.
CONVENTIONS: tuple[str, ...] = ("torch", "megatron")


@dataclass(frozen=True)
class Variant:
    """The loss variant (see the module docstring); the defaults are the plain loss."""

    z_loss: float = 0.0
    softcap: float | None = None
    logit_scale: float = 1.0
    smoothing_convention: str = "torch"

    @property
    def transforms(self) -> bool:
        """The logits are transformed (scaled or capped) before the softmax."""
        return self.logit_scale != 1.0 or self.softcap is not None

    @property
    def changes_values(self) -> bool:
        """Something other than the coefficients changes: the logits or the z-loss term."""
        return self.transforms or self.z_loss != 0.0

    @property
    def active(self) -> bool:
        return self.changes_values or self.smoothing_convention != "torch"

    def rounded(self, carrier: np.dtype) -> Variant:
        """The constants rounded to ``carrier`` (where a kernel holds its scalar arguments).

        A cap or scale that overflows the carrier (1e39 in float32) is refused: the kernel
        could not hold it either."""

        def r(v: float, name: str) -> float:
            with np.errstate(over="ignore"):
                out = float(np.asarray(v, dtype=np.float64).astype(carrier))
            if not math.isfinite(out) or (v != 0 and out == 0):
                raise UsageError(f"{name}={v} is not representable in {np.dtype(carrier).name}")
            return out

        return replace(
            self,
            z_loss=r(self.z_loss, "z_loss"),
            softcap=None if self.softcap is None else r(self.softcap, "softcap"),
            logit_scale=r(self.logit_scale, "logit_scale"),
        )

    def describe(self) -> str:
        """One line naming what differs from the plain loss ('' for the plain loss)."""
        parts = []
        if self.logit_scale != 1.0:
            parts.append(f"logit_scale={self.logit_scale:g}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap:g}")
        if self.z_loss != 0.0:
            parts.append(f"z_loss={self.z_loss:g}")
        if self.smoothing_convention != "torch":
            parts.append(f"smoothing_convention={self.smoothing_convention}")
        return ", ".join(parts)

    def as_json(self) -> dict[str, Any]:
        """The non-default fields, for a report's JSON (nothing for the plain loss)."""
        out: dict[str, Any] = {}
        if self.logit_scale != 1.0:
            out["logit_scale"] = self.logit_scale
        if self.softcap is not None:
            out["softcap"] = self.softcap
        if self.z_loss != 0.0:
            out["z_loss"] = self.z_loss
        if self.smoothing_convention != "torch":
            out["smoothing_convention"] = self.smoothing_convention
        return out


def _finite(v: Any, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {v!r}") from None
    return f


def check_variant(
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
    classes: int | None = None,
) -> Variant:
    """Validate the variant options (``UsageError`` naming the option and the value).

    softcap > 0 and finite; logit_scale finite and nonzero; z_loss >= 0 and finite; the
    convention one of :data:`CONVENTIONS`; Megatron's eps/(C - 1) needs ``classes`` >= 2.
    """
    zl = _finite(z_loss, "z_loss")
    if not (math.isfinite(zl) and zl >= 0):
        raise UsageError(f"z_loss must be a finite number >= 0, got {z_loss}")
    cap = None
    if softcap is not None:
        cap = _finite(softcap, "softcap")
        if not (math.isfinite(cap) and cap > 0):
            raise UsageError(f"softcap must be a finite number > 0, got {softcap}")
    sc = _finite(logit_scale, "logit_scale")
    if not (math.isfinite(sc) and sc != 0):
        raise UsageError(f"logit_scale must be a finite nonzero number, got {logit_scale}")
    if smoothing_convention not in CONVENTIONS:
        raise UsageError(
            f"unknown smoothing_convention {smoothing_convention!r}; expected 'torch' or 'megatron'"
        )
    if smoothing_convention == "megatron" and classes is not None and classes < 2:
        raise UsageError(
            "smoothing_convention='megatron' spreads eps over the other C - 1 classes:"
            f" it needs at least 2 classes, got {classes}"
        )
    return Variant(zl, cap, sc, smoothing_convention)


def variant_fields(obj: Any) -> Variant:
    """The :class:`Variant` of an options object with fields z_loss, softcap, logit_scale and
    smoothing_convention (validated)."""
    return check_variant(
        z_loss=obj.z_loss,
        softcap=obj.softcap,
        logit_scale=obj.logit_scale,
        smoothing_convention=obj.smoothing_convention,
    )
