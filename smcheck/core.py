"""The public numerics API: :func:`cross_entropy` and :func:`reference`.

Both round the logits to the working dtype first (``cast``, through the front door
:func:`smcheck.prepare.prepare_input`) so that a method and the reference
see exactly the same numbers: the error reported is the method's, not the input rounding's
(that is in ``.cast_report``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UsageError
from .methods import (
    LSE_FORM,
    METHODS,
    SHARED_SOFTMAX_METHODS,
    LossTargets,
    MethodFn,
    ShiftedSoftmax,
    run_variant,
)
from .precisions import CastReport, Precision, accumulate, get_precision
from .prepare import Prepared, check_labels, loss_coefficients, prepare_input
from .reference import ReferenceOutput, ScaledLow, reference_block

__all__ = [
    "CrossEntropyResult",
    "Prepared",
    "check_labels",
    "loss_coefficients",
    "ReferenceResult",
    "cross_entropy",
    "prepare",
    "reference",
]


def prepare(
    logits: np.ndarray,
    labels: np.ndarray | None,
    *,
    dtype: str | np.dtype | Precision | None = None,
    cast_mode: str = "ieee",
    ignore_index: int = -100,
    weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    row_offset: int = 0,
) -> Prepared:
    """:func:`smcheck.prepare.prepare_input` under the name and ``cast_mode`` spelling the
    chunk kernel (:mod:`smcheck.engine`) calls it by; nothing of its own."""
    return prepare_input(
        logits, labels, dtype=dtype, cast=cast_mode, ignore_index=ignore_index, weight=weight,
        label_smoothing=label_smoothing, row_offset=row_offset,
    )  # fmt: skip


@dataclass(frozen=True)
class CrossEntropyResult:
    """One method's loss, gradient and per-row flags, in the working dtype.

    With labels: ``loss`` (N,), ``grad`` (N, C). Label-free: ``loss`` (N, C) = -log p_k for every
    class k and ``grad`` None. Ignored rows (``ignore_index``) have loss 0 and gradient 0, as
    PyTorch's ``reduction="none"``. Flags are False on ignored rows and on rows with non-finite
    input (those are input findings, see ``finite_input``).
    """

    method: str
    dtype: str
    accum: str
    loss: np.ndarray
    grad: np.ndarray | None
    overflow: np.ndarray
    underflow: np.ndarray
    finite_input: np.ndarray
    ignored: np.ndarray
    cast_report: CastReport
    mean_denominator: float = math.nan
    #: (N,) the z-loss term lambda lse**2 alone (already in ``loss``); None without z-loss
    z_loss: np.ndarray | None = None

    def reduced(self, reduction: str = "mean", convention: str = "torch") -> float:
        """The loss reduced in the working precision: the sum accumulated in ``accum`` and
        rounded to T; the mean is that sum divided (in ``accum``) by :attr:`mean_denominator`
        and rounded to T. See :func:`reduce_total` for ``convention``."""
        t, a = get_precision(self.dtype), get_precision(self.accum)
        total = accumulate(self.loss.reshape(1, -1), a)[0]
        return reduce_total(
            float(total.astype(t.dtype)),
            float(total),
            self.mean_denominator,
            reduction,
            convention,
            t,
        )

    @property
    def nonfinite_loss(self) -> np.ndarray:
        """Rows (label-free: row/class pairs) whose loss is NaN or inf."""
        return ~np.isfinite(self.loss)

    @property
    def nonfinite_grad(self) -> np.ndarray:
        """Rows whose gradient holds a NaN or inf."""
        if self.grad is None:
            raise ValueError("no gradient in label-free mode")
        return ~np.isfinite(self.grad).all(axis=1)


def get_method(name: str) -> MethodFn:
    """A core method (:data:`METHODS`) or a framework one (``torch``, ``jax``) by name."""
    from .frameworks import FRAMEWORK_METHODS

    if name in METHODS:
        return METHODS[name]
    if name in FRAMEWORK_METHODS:
        return FRAMEWORK_METHODS[name]
    known = ", ".join([*METHODS, *FRAMEWORK_METHODS])
    raise UsageError(f"unknown method {name!r}; expected one of: {known}")


def run_method(
    name: str,
    prep: Prepared,
    accum: Precision,
    shared: ShiftedSoftmax | None = None,
    *,
    carrier: bool = False,
) -> CrossEntropyResult:
    """Run one registered method on prepared input.

    ``shared`` (:func:`~smcheck.methods.shifted_softmax` of ``prep.xk`` in the same precisions)
    is handed to the methods that reuse it (:data:`~smcheck.methods.SHARED_SOFTMAX_METHODS`).
    ``carrier=True`` leaves smcheck's own methods' loss and gradient in the working dtype's
    carrier (float32 for 16/8-bit types: the same numbers, without the conversion).
    """
    fn = get_method(name)
    kw: dict[str, object] = {}
    # smcheck's own methods compute in the carrier; frameworks take T (for 16/8-bit types a
    # conversion of the whole block - and bfloat16's ml_dtypes import - only they need)
    x = prep.xk if name in METHODS else prep.x
    if name in METHODS:
        kw["carrier"] = carrier
        if shared is not None and name in SHARED_SOFTMAX_METHODS:
            kw["shared"] = shared
    targets = None
    if prep.coeff is not None:
        targets = LossTargets(
            prep.coeff, prep.weight, prep.label_smoothing, prep.soft_targets, prep.safe_labels
        )
    var = prep.variant
    if var is not None and name not in METHODS:
        # a framework computes the variant (and the smoothing convention) its own way, as its
        # users write it (see smcheck.frameworks)
        kw["variant"] = var
    if var is not None and var.changes_values and name in METHODS:
        # the shared softmax is of the untransformed logits: not this variant's
        out = run_variant(
            fn, x, prep.safe_labels, prep.working, accum, targets, var,
            form=LSE_FORM.get(name, "shifted"), carrier=carrier,
        )  # fmt: skip
    elif targets is None:
        out = fn(x, prep.safe_labels, prep.working, accum, **kw)
    else:
        out = fn(x, prep.safe_labels, prep.working, accum, targets, **kw)
    ok = prep.finite_input & ~prep.ignored
    loss, grad, zl = out.loss, out.grad, out.z_loss
    if prep.ignored.any():
        loss = loss.copy()
        loss[prep.ignored] = 0
        if grad is not None:
            grad = grad.copy()
            grad[prep.ignored] = 0
        if zl is not None:
            zl = np.where(prep.ignored, zl.dtype.type(0), zl)
    under = out.underflow & (ok if out.underflow.ndim == 1 else ok[:, None])
    return CrossEntropyResult(
        method=name,
        dtype=prep.working.name,
        accum=accum.name,
        loss=loss,
        grad=grad,
        overflow=out.overflow & ok,
        underflow=under,
        finite_input=prep.finite_input,
        ignored=prep.ignored,
        cast_report=prep.cast_report,
        mean_denominator=prep.mean_denominator,
        z_loss=zl,
    )


def reduce_total(
    total_t: float,
    total: float,
    denominator: float,
    reduction: str,
    convention: str = "torch",
    working: Precision | None = None,
) -> float:
    """Apply ``reduction`` ("sum" or "mean") to a summed loss.

    ``total_t`` is the sum as the caller reports it, ``total`` the unrounded one the mean divides.
    With no counted row (every label ignored) PyTorch's mean is NaN (0/0) and optax's
    convention is 0: ``convention="torch"|"jax"`` picks which.
    """
    if reduction == "sum":
        return total_t
    if reduction != "mean":
        raise UsageError(f"unknown reduction {reduction!r}; expected 'none', 'sum' or 'mean'")
    if convention not in ("torch", "jax"):
        raise UsageError(f"unknown convention {convention!r}; expected 'torch' or 'jax'")
    if denominator == 0:
        return math.nan if convention == "torch" else 0.0
    mean = total / denominator
    if working is None:
        return mean
    with np.errstate(over="ignore"):
        return float(np.array(mean).astype(working.dtype))


def cross_entropy(
    logits: np.ndarray,
    labels: np.ndarray | None,
    *,
    method: str = "fused",
    dtype: str | np.dtype | Precision | None = None,
    accum: str | np.dtype | Precision | None = None,
    cast: str = "ieee",
    ignore_index: int = -100,
    weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
) -> CrossEntropyResult:
    """Per-row softmax cross-entropy and its gradient, computed by ``method`` in ``dtype``.

    ``dtype=None`` uses the array's own dtype; the logits are first rounded to ``dtype``
    (``cast="ieee"`` or ``"saturate"``). Sums accumulate in ``accum`` (default float32 for
    16/8-bit types, else the working dtype). ``labels=None`` gives the label-free loss matrix;
    ``labels`` of shape (N, C) are soft targets. ``weight`` and ``label_smoothing`` are
    PyTorch's; ``result.reduced("mean")`` applies a reduction as PyTorch does. ``z_loss``,
    ``softcap``, ``logit_scale`` and ``smoothing_convention`` select a loss variant (see
    :mod:`smcheck.variants`: z <- s z, then c tanh(z / c), then the loss, plus lambda lse**2,
    reported alone in ``result.z_loss``); the gradient is with respect to the original logits.

    >>> import numpy as np
    >>> r = cross_entropy(np.array([[0.0, -800.0, 1.0]]), np.array([1]), method="fused")
    >>> r.loss.tolist(), r.grad.round(16).tolist()
    ([801.3132616875182], [[0.2689414213699951, -1.0, 0.7310585786300049]])
    """
    prep = prepare_input(
        logits, labels, dtype=dtype, accum=accum, cast=cast, ignore_index=ignore_index,
        weight=weight, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        logit_scale=logit_scale, smoothing_convention=smoothing_convention,
    )  # fmt: skip
    assert prep.accum is not None
    return run_method(method, prep, prep.accum)


@dataclass(frozen=True)
class ReferenceResult:
    """High-precision loss and gradient (float64 arrays; add ``*_lo`` for the full value).

    ``precision`` says which arithmetic produced them. Ignored rows have loss 0 and gradient 0.
    """

    loss: np.ndarray
    loss_lo: np.ndarray | None
    grad: np.ndarray | None
    grad_lo: np.ndarray | None
    prob: np.ndarray
    precision: str
    dtype: str
    ignored: np.ndarray
    finite_input: np.ndarray
    mean_denominator: float = math.nan
    #: (N,) the z-loss term lambda lse**2 alone (already in ``loss``); None without z-loss
    z_loss: np.ndarray | None = None

    def reduced(self, reduction: str = "mean", convention: str = "torch") -> float:
        """The exact reduction (math.fsum of the double-double losses), rounded to float64."""
        parts = [self.loss] if self.loss_lo is None else [self.loss, self.loss_lo]
        total = math.fsum(np.concatenate([p.ravel() for p in parts]))
        return reduce_total(total, total, self.mean_denominator, reduction, convention)


#: Logits per block of the reference: binary128 temporaries of one block stay near 100 MB.
REFERENCE_BLOCK_ELEMENTS = 1 << 22


def reference_of(prep: Prepared, block_elements: int = REFERENCE_BLOCK_ELEMENTS) -> ReferenceOutput:
    """Reference on prepared input, block of rows by block of rows (ignored rows are computed
    with label 0; callers mask them). Only one block is ever held in high precision."""
    # the values in their carrier (float32 for 16/8-bit types: no ml_dtypes conversion)
    x = prep.xk
    carrier = prep.working.bits < 32
    n, c = x.shape
    step = max(1, block_elements // max(c, 1))
    if n <= step:
        return reference_block(
            x, prep.safe_labels, prep.working, prep.coeff, carrier=carrier, variant=prep.variant
        )
    parts = [
        reference_block(
            x[i : i + step],
            None if prep.safe_labels is None else prep.safe_labels[i : i + step],
            prep.working,
            None if prep.coeff is None else prep.coeff[i : i + step],
            carrier=carrier,
            variant=prep.variant,
        )
        for i in range(0, n, step)
    ]

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    return ReferenceOutput(
        loss=np.concatenate([p.loss for p in parts]),
        loss_lo=cat("loss_lo"),
        grad=cat("grad"),
        grad_lo=cat("grad_lo"),
        prob=np.concatenate([p.prob for p in parts]),
        prob_rest=np.concatenate([p.prob_rest for p in parts]),
        precision=parts[0].precision,
        z_loss=cat("z_loss"),
        loss_scaled=_cat_scaled(parts),
    )


def _cat_scaled(parts: list[ReferenceOutput]) -> ScaledLow | None:
    """The blocks' :class:`ScaledLow` joined; a block without one has exponent 0 throughout."""
    if all(p.loss_scaled is None for p in parts):
        return None
    los, exps = [], []
    for p in parts:
        assert p.loss_lo is not None  # only a double-double reference has scaled low parts
        s = p.loss_scaled or ScaledLow(p.loss_lo, np.zeros(p.loss_lo.shape, np.int16))
        los.append(s.lo)
        exps.append(s.exp)
    return ScaledLow(np.concatenate(los), np.concatenate(exps))


def reference(
    logits: np.ndarray,
    labels: np.ndarray | None,
    *,
    dtype: str | np.dtype | Precision | None = None,
    cast: str = "ieee",
    ignore_index: int = -100,
    weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
) -> ReferenceResult:
    """The reference loss and gradient of the logits rounded to ``dtype``.

    Accurate to eps(dtype) * 2**-20: relative for the loss; absolute for the gradient, in units
    of the largest a gradient entry can be, max(1, |s| (1 + 2 lambda |lse|)) (1 for the plain
    loss). float64 arithmetic with exact shifts for float32 and narrower, binary128 for float64;
    a loss variant (``z_loss``, ``softcap``, ``logit_scale``, as in :func:`cross_entropy`) in
    float64 or binary128 as :func:`smcheck.reference.variant_arithmetic` says. The z-loss term
    alone is in ``.z_loss``, accurate to that bound times lambda max(1, |lse|)**2 absolute (its
    relative error grows where lse cancels to ~0; the total loss is unaffected).

    >>> import numpy as np
    >>> r = reference(np.array([[0.0, -800.0, 1.0]]), np.array([1]))
    >>> r.precision, r.loss.tolist()
    ('binary128 (numpy-quaddtype)', [801.3132616875182])
    """
    prep = prepare_input(
        logits, labels, dtype=dtype, cast=cast, ignore_index=ignore_index, weight=weight,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
        smoothing_convention=smoothing_convention,
    )  # fmt: skip
    out = reference_of(prep)
    loss, loss_lo, grad, grad_lo = out.loss, out.loss_lo, out.grad, out.grad_lo
    if prep.ignored.any():
        loss = np.where(prep.ignored, 0.0, loss)
        loss_lo = None if loss_lo is None else np.where(prep.ignored, 0.0, loss_lo)
        if grad is not None:
            grad = np.where(prep.ignored[:, None], 0.0, grad)
        if grad_lo is not None:
            grad_lo = np.where(prep.ignored[:, None], 0.0, grad_lo)
    zl = out.z_loss
    if zl is not None and prep.ignored.any():
        zl = np.where(prep.ignored, 0.0, zl)
    return ReferenceResult(
        loss,
        loss_lo,
        grad,
        grad_lo,
        out.prob,
        out.precision,
        prep.working.name,
        prep.ignored,
        prep.finite_input,
        prep.mean_denominator,
        zl,
    )
