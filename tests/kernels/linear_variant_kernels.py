"""Torch fused linear cross-entropy kernels with the loss variants: :func:`variant` computes
them right (the logits in the working dtype, then float32 as Liger's kernels do); each other
function carries one bug real kernels have shipped."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


def variant(
    input: Any, linear_weight: Any, target: Any, *, linear_bias: Any = None,
    reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0,
    softcap: float | None = None, logit_scale: float = 1.0, z_loss: float = 0.0,
    smoothing_convention: str = "torch", bug: str | None = None,
) -> Any:  # fmt: skip
    z = F.linear(input, linear_weight, linear_bias).float()
    if bug == "cap_before_scale" and softcap is not None:
        z = logit_scale * softcap * torch.tanh(z / softcap)
    else:
        z = z * logit_scale
        if softcap is not None:
            z = (
                z * torch.tanh(z / softcap)
                if bug == "z_tanh"
                else softcap * torch.tanh(z / softcap)
            )
    keep = target != ignore_index
    safe = torch.where(keep, target, 0)
    conv = smoothing_convention
    if bug == "other_convention":
        conv = "megatron" if conv == "torch" else "torch"
    if conv == "megatron" and label_smoothing:
        t = torch.full_like(z, label_smoothing / (z.shape[1] - 1))
        t.scatter_(1, safe[:, None], 1 - label_smoothing)
        loss = F.cross_entropy(z, t, reduction="none")
    else:
        loss = F.cross_entropy(z, safe, reduction="none", label_smoothing=label_smoothing)
    lse = torch.logsumexp(z, dim=1)
    if bug == "zloss_shifted":
        lse = lse - z.max(dim=1).values.detach()
    lam = 1e-4 if bug == "zloss_always" else z_loss
    if lam:
        loss = loss + lam * lse.square()
    loss = torch.where(keep, loss, 0.0)
    if reduction == "sum" and bug != "sum_as_mean":
        return loss.sum().to(input.dtype)
    return (loss.sum() / keep.sum()).to(input.dtype)


def _bug(name: str) -> Any:
    def kernel(input: Any, linear_weight: Any, target: Any, **kw: Any) -> Any:
        return variant(input, linear_weight, target, bug=name, **kw)

    kernel.__name__ = name
    return kernel


cap_before_scale = _bug("cap_before_scale")
z_tanh = _bug("z_tanh")
zloss_shifted = _bug("zloss_shifted")
zloss_always = _bug("zloss_always")
other_convention = _bug("other_convention")
sum_as_mean = _bug("sum_as_mean")
