"""``smcheck eval --hidden --weight``: chunked fused linear cross-entropy against the reference.

The analysis behind the command's linear mode: :func:`evaluate_linear` runs
:func:`~smcheck.linear.reference_linear` once and :func:`~smcheck.linear.linear_cross_entropy`
for each ``grad_accum`` asked for, with the chunking given, and measures the four outputs:

* loss: per row |L - L*| in ulps of max(|L*|, 1) of the working dtype (the gate metric of
  plain eval, :func:`~smcheck.metrics.loss_gate_err`), and the reduced loss's relative error;
* dh, dW, db: normwise ||g - g*|| / ||g*|| over the whole array.

A check passes when the loss is within ``max_loss_ulp`` and every gradient within
``max_grad_err`` (default :func:`default_grad_err`: eps(working) - rounding the output to the
working dtype costs eps/2 normwise and the rounded grad_logits tile as much again - plus the
float32 logits' error; bfloat16 accumulation over many chunks costs more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UsageError, dims
from .linear import (
    GRAD_ACCUMS,
    LinearReference,
    LinearResult,
    linear_cross_entropy,
    normwise_rel_err,
    reference_linear,
)
from .metrics import default_thresholds, kernel_thresholds, loss_gate_err
from .precisions import Precision, get_precision
from .variants import Variant, check_variant

__all__ = [
    "LinearCheck",
    "LinearEvalReport",
    "compare_linear",
    "default_grad_err",
    "evaluate_linear",
    "linear_variant",
    "measure_linear",
    "variant_kwargs",
]


@dataclass(frozen=True)
class LinearCheck:
    """One chunked configuration's errors against the reference (None: no bias)."""

    grad_accum: str
    chunk_rows: int
    chunk_vocab: int
    chunks_rows: int
    chunks_vocab: int
    loss_max_ulps: float
    loss_reduced_rel_err: float
    grad_hidden_err: float
    grad_weight_err: float
    grad_bias_err: float | None
    ok: bool


@dataclass(frozen=True)
class LinearEvalReport:
    """What ``smcheck eval --hidden H --weight W --labels Y`` reports."""

    hidden_name: str
    weight_name: str
    bias_name: str | None
    labels_name: str
    rows: int
    dim: int
    vocab: int
    counted_rows: int
    working: str
    reduction: str
    label_smoothing: float
    reference_loss: float
    reference_split_blocks: int
    reference_blocks: int
    max_loss_ulp: float
    max_grad_err: float
    checks: tuple[LinearCheck, ...]
    #: the loss variant checked (constants as used); None for the plain loss
    variant: Variant | None = None
    #: the reference's arithmetic after the logits, and its a-posteriori bounds on the relative
    #: (normwise) error of its own dh, dW, db (db None without a bias; inf: not resolved)
    reference_precision: str = "float64"
    reference_bounds: tuple[float, float, float | None] = (math.nan, math.nan, None)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def verdict(self) -> str:
        bad = [c.grad_accum for c in self.checks if not c.ok]
        if not bad:
            return f"pass: every configuration within the gate ({len(self.checks)} checked)"
        return f"fail: {', '.join(bad)} gradient accumulation exceeds the gate"


def default_grad_err(working: Precision, vocab: int) -> float:
    """The default normwise gradient limit: eps(working) - the output's rounding (eps/2) and
    the rounded grad_logits tile's (eps/2) - plus the float32 logits' own error, eval's
    k * eps(float32) with k = 4 + ceil(log2 V) (:func:`smcheck.metrics.kernel_thresholds`: a
    kernel's sum taken as a tree).

    >>> default_grad_err(get_precision("bfloat16"), 1000) == 2.0**-7 + 14 * 2.0**-23
    True
    """
    k, _ = kernel_thresholds("float32", "float32", vocab)
    return working.eps + k * get_precision("float32").eps


def linear_variant(
    hidden: Any,
    weight: Any,
    dtype: Any,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
) -> Variant | None:
    """The loss variant validated, its constants rounded to the working dtype's carrier (as
    the kernel holds them, and as the reference then uses them); None for the plain loss.

    >>> linear_variant(np.zeros((1, 2), np.float32), np.zeros((3, 2)), None, logit_scale=0.1)
    Variant(z_loss=0.0, softcap=None, logit_scale=0.10000000149011612, smoothing_convention='torch')
    """
    v = check_variant(
        z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
        smoothing_convention=smoothing_convention,
        classes=np.shape(weight)[0] if np.ndim(weight) == 2 else None,
    )  # fmt: skip
    if not v.active:
        return None
    dt = dtype if dtype is not None else np.asarray(hidden).dtype
    if dtype is None and np.dtype(dt).kind not in "fV":
        return v  # check_linear names the problem: no working dtype
    return v.rounded(get_precision(dt).carrier)


def variant_kwargs(variant: Variant | None) -> dict[str, Any]:
    """The keyword arguments of ``variant`` for :func:`~smcheck.linear.reference_linear` and
    :func:`~smcheck.linear.linear_cross_entropy` (none for the plain loss)."""
    if variant is None:
        return {}
    return {
        "z_loss": variant.z_loss,
        "softcap": variant.softcap,
        "logit_scale": variant.logit_scale,
        "smoothing_convention": variant.smoothing_convention,
    }


def measure_linear(
    got: LinearResult,
    ref: LinearReference,
    labels: np.ndarray,
    ignore_index: int,
    max_loss_ulp: float,
    max_grad_err: float,
    *,
    grad_accum: str,
    chunk_rows: int,
    chunk_vocab: int,
) -> LinearCheck:
    """The errors of one kernel's outputs against the reference, and the gate's verdict."""
    counted = labels != ignore_index
    ulps = loss_gate_err(got.loss[counted], ref.loss[counted], ref.working)
    loss_ulps = float(np.max(np.where(np.isnan(ulps), np.inf, ulps), initial=0.0))
    rr = ref.loss_reduced
    red = abs(got.loss_reduced - rr) / abs(rr) if rr else abs(got.loss_reduced - rr)
    if not math.isfinite(got.loss_reduced):
        red = math.inf
    gh = normwise_rel_err(got.grad_hidden, ref.grad_hidden)
    gw = normwise_rel_err(got.grad_weight, ref.grad_weight)
    gb = (
        None
        if got.grad_bias is None or ref.grad_bias is None
        else normwise_rel_err(got.grad_bias, ref.grad_bias)
    )
    grads = [gh, gw] + ([] if gb is None else [gb])
    ok = loss_ulps <= max_loss_ulp and all(g <= max_grad_err for g in grads)
    return LinearCheck(
        grad_accum, chunk_rows, chunk_vocab, got.chunks_rows, got.chunks_vocab, loss_ulps, red,
        gh, gw, gb, ok,
    )  # fmt: skip


def evaluate_linear(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    dtype: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
    chunk_rows: int = 1024,
    chunk_vocab: int = 4096,
    grad_accums: Sequence[str] = ("float32", "bfloat16"),
    max_loss_ulp: float | None = None,
    max_grad_err: float | None = None,
    names: tuple[str, str, str, str] = ("hidden", "weight", "bias", "labels"),
) -> LinearEvalReport:
    """Reference once, then the chunked kernel per ``grad_accums`` entry, measured; the loss
    variant (:mod:`smcheck.variants`) goes to both."""
    for a in grad_accums:
        if a not in GRAD_ACCUMS:
            raise UsageError(f"unknown grad_accum {a!r}; expected one of {', '.join(GRAD_ACCUMS)}")
    variant = linear_variant(
        hidden, weight, dtype, z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
        smoothing_convention=smoothing_convention,
    )  # fmt: skip
    ref = reference_linear(
        hidden, weight, labels, bias=bias, dtype=dtype, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, names=names,
        **variant_kwargs(variant),
    )  # fmt: skip
    mlu, mge = _limits(ref, max_loss_ulp, max_grad_err)
    lab = np.asarray(labels).astype(np.int64)
    checks = []
    for a in grad_accums:
        got = linear_cross_entropy(
            hidden, weight, labels, bias=bias, dtype=dtype, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, chunk_rows=chunk_rows,
            chunk_vocab=chunk_vocab, grad_accum=a, names=names, **variant_kwargs(variant),
        )  # fmt: skip
        checks.append(
            measure_linear(
                got,
                ref,
                lab,
                ignore_index,
                mlu,
                mge,
                grad_accum=a,
                chunk_rows=chunk_rows,
                chunk_vocab=chunk_vocab,
            )  # fmt: skip
        )
    return _report(ref, names, bias is not None, lab, ignore_index, label_smoothing, variant,
                   (mlu, mge), tuple(checks))  # fmt: skip


def compare_linear(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    loss: Any,
    grad_hidden: Any = None,
    grad_weight: Any = None,
    grad_bias: Any = None,
    bias: Any = None,
    dtype: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    smoothing_convention: str = "torch",
    max_loss_ulp: float | None = None,
    max_grad_err: float | None = None,
    names: tuple[str, str, str, str] = ("hidden", "weight", "bias", "labels"),
) -> LinearEvalReport:
    """A linear kernel's dumped outputs against the reference: ``loss`` per row (N,) or one
    reduced number, gradients of the reduced loss (of the sum for ``reduction="none"``); a
    gradient not given is not checked (its error is reported as 0 with no check). The label
    smoothing and loss variant are those their kernel computed."""
    variant = linear_variant(
        hidden, weight, dtype, z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
        smoothing_convention=smoothing_convention,
    )  # fmt: skip
    ref = reference_linear(
        hidden, weight, labels, bias=bias, dtype=dtype, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, names=names,
        **variant_kwargs(variant),
    )  # fmt: skip
    n = ref.grad_hidden.shape[0]
    lv = np.asarray(loss, dtype=np.float64).reshape(-1)
    if lv.size == 1 and n != 1:
        per_row = np.full(n, np.nan)  # not dumped: the reduced loss is gated instead
        reduced = float(lv[0])
    elif lv.size == n:
        per_row = lv
        counted = np.asarray(labels) != ignore_index
        total = math.fsum(lv[counted].tolist())
        reduced = total / max(int(counted.sum()), 1) if reduction == "mean" else total
    else:
        raise UsageError(f"loss has {lv.size} values: expected {n} (one per row) or 1")

    def given(x: Any, ref_x: np.ndarray | None, what: str) -> np.ndarray | None:
        if x is None or ref_x is None:
            return ref_x  # not checked: the reference itself (error 0)
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape != ref_x.shape:
            raise UsageError(f"{what} has shape {dims(arr.shape)}, expected {dims(ref_x.shape)}")
        return arr

    got = LinearResult(
        loss=per_row,
        loss_reduced=reduced,
        grad_hidden=given(grad_hidden, ref.grad_hidden, "grad_hidden"),  # type: ignore[arg-type]
        grad_weight=given(grad_weight, ref.grad_weight, "grad_weight"),  # type: ignore[arg-type]
        grad_bias=given(grad_bias, ref.grad_bias, "grad_bias"),
        chunks_rows=0,
        chunks_vocab=0,
    )
    mlu, mge = _limits(ref, max_loss_ulp, max_grad_err)
    lab = np.asarray(labels).astype(np.int64)
    check = measure_linear(got, ref, lab, ignore_index, mlu, mge, grad_accum="dump",
                           chunk_rows=0, chunk_vocab=0)  # fmt: skip
    if lv.size != n:  # one reduced number: gate its error in ulps of max(|L*|, 1)
        ulps = float(loss_gate_err(np.array([reduced]), np.array([ref.loss_reduced]),
                                   ref.working)[0])  # fmt: skip
        ok = ulps <= mlu and check.grad_hidden_err <= mge and check.grad_weight_err <= mge
        ok = ok and (check.grad_bias_err is None or check.grad_bias_err <= mge)
        check = LinearCheck("dump", 0, 0, 0, 0, ulps, check.loss_reduced_rel_err,
                            check.grad_hidden_err, check.grad_weight_err, check.grad_bias_err,
                            ok)  # fmt: skip
    return _report(ref, names, bias is not None, lab, ignore_index, label_smoothing, variant,
                   (mlu, mge), (check,))  # fmt: skip


def _limits(
    ref: LinearReference, max_loss_ulp: float | None, max_grad_err: float | None
) -> tuple[float, float]:
    """The gate: eval's loss threshold for the vocabulary (float32 accumulation, as tensor
    cores) and :func:`default_grad_err`, unless given."""
    v = ref.grad_weight.shape[0]
    loss_k, _ = default_thresholds(ref.working, "float32", v)
    mlu = loss_k if max_loss_ulp is None else max_loss_ulp
    mge = default_grad_err(ref.working, v) if max_grad_err is None else max_grad_err
    return mlu, mge


def _report(
    ref: LinearReference, names: tuple[str, str, str, str], has_bias: bool, lab: np.ndarray,
    ignore_index: int, label_smoothing: float, variant: Variant | None,
    limits: tuple[float, float], checks: tuple[LinearCheck, ...],
) -> LinearEvalReport:  # fmt: skip
    """The report of ``checks`` against ``ref`` (eval's and compare's linear mode)."""
    (n, d), v = ref.grad_hidden.shape, ref.grad_weight.shape[0]
    return LinearEvalReport(
        hidden_name=names[0], weight_name=names[1], bias_name=names[2] if has_bias else None,
        labels_name=names[3], rows=n, dim=d, vocab=v,
        counted_rows=int(np.count_nonzero(lab != ignore_index)), working=ref.working.name,
        reduction=ref.reduction, label_smoothing=float(label_smoothing),
        reference_loss=ref.loss_reduced, reference_split_blocks=ref.split_blocks,
        reference_blocks=ref.blocks, max_loss_ulp=limits[0], max_grad_err=limits[1],
        checks=checks, variant=variant, reference_precision=ref.precision,
        # the reference's own a-posteriori gradient bounds (relative, normwise)
        reference_bounds=(ref.grad_hidden_bound, ref.grad_weight_bound, ref.grad_bias_bound),
    )  # fmt: skip
