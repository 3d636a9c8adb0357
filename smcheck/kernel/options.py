"""What :func:`~smcheck.kernel.kernel` does: :class:`KernelOptions`, named as ``smcheck
kernel``'s flags (``judge``, ``max_loss_ulp``, ``seed``...), checked before any probe runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._base import FRAMEWORKS, JUDGES, UsageError

__all__ = ["RENAMED", "KernelOptions"]

#: Old keyword names of :func:`~smcheck.kernel.kernel` -> the names of :class:`KernelOptions`:
#: ``gate`` is a list of methods in every other analysis; the kernel's is how a probe is judged.
RENAMED = {"gate": "judge"}


@dataclass(frozen=True)
class KernelOptions:
    """The probe suite's options. ``framework`` (torch, jax, numpy; None: detected from what the
    kernel returns), ``dtypes`` (None: float32 and bfloat16, numpy float32), ``vocab`` sizes
    (None: :data:`~smcheck.kernel.DEFAULT_VOCAB`, or :data:`~smcheck.kernel.QUICK_VOCAB` with
    ``quick``), ``rows`` per probe (None: about 2**19 logits' worth), ``probes`` (names or
    "all"), ``seed``, the torch/jax ``device``, the limits ``max_loss_ulp`` and ``max_grad_err``
    (None: ``smcheck eval``'s defaults), ``judge`` (one of :data:`~smcheck.kernel.JUDGES`),
    ``stock`` (run the framework's stock cross-entropy beside it) and ``target`` (the name
    reported).

    >>> KernelOptions(judge="strict")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    smcheck.errors.UsageError: unknown judge 'strict'; expected one of: either, reference, ...
    """

    framework: str | None = None
    dtypes: str | Sequence[str] | None = None
    vocab: Sequence[int] | None = None
    rows: int | None = None
    probes: str | Sequence[str] = "all"
    seed: int = 0
    device: str | None = None
    max_loss_ulp: float | None = None
    max_grad_err: float | None = None
    judge: str = "either"
    quick: bool = False
    stock: bool = True
    target: str | None = None

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise UsageError(f"unknown judge {self.judge!r}; expected one of: {', '.join(JUDGES)}")
        if self.framework is not None and self.framework not in FRAMEWORKS:
            raise UsageError(
                f"unknown framework {self.framework!r}; expected one of: {', '.join(FRAMEWORKS)}"
            )
        if self.seed < 0:  # numpy's generators take no negative seed
            raise UsageError(f"seed must be non-negative, got {self.seed}")
        if self.rows is not None and self.rows < 1:
            raise UsageError(f"rows must be positive, got {self.rows}")
        if self.vocab is not None and (not self.vocab or any(v < 2 for v in self.vocab)):
            got = ", ".join(map(str, self.vocab)) or "none"
            raise UsageError(f"vocabulary sizes must be at least 2, got {got}")
