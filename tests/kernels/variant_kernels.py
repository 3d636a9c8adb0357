"""Torch kernels of the loss variants (smcheck.variants): :func:`good` (correct) and one broken
kernel per mistake the issue names, each :func:`good` with one line changed; ``BROKEN`` maps
each to the probe meant to catch it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _ce(logits, labels, ignore_index, reduction, label_smoothing, softcap, logit_scale, z_loss,
        smoothing_convention, mistake=None):  # fmt: skip
    """The variant in float32 (float64 for float64): scale, cap, log-softmax shifted by the
    row max, smoothing, z-loss from torch.logsumexp; the loss in the input dtype."""
    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(wide)
    if mistake == "cap_before_scale":
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        z = z * logit_scale
    else:
        z = z * logit_scale
        if softcap is not None:
            # the right form is c * tanh(z / c); the mistake multiplies by z itself
            z = (z if mistake == "z_tanh" else softcap) * torch.tanh(z / softcap)
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.zeros_like(labels))
    logp = torch.log_softmax(z, dim=1)
    logp_y = logp.gather(1, safe[:, None])[:, 0]
    nll = -logp_y
    convention = smoothing_convention
    if mistake == "wrong_convention":
        convention = "torch" if smoothing_convention == "megatron" else "megatron"
    if label_smoothing:
        if convention == "torch":
            nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(dim=1)
        else:  # the smoothed target distribution, as Megatron builds it
            t = torch.full_like(logp, label_smoothing / (z.shape[1] - 1))
            t.scatter_(1, safe[:, None], 1 - label_smoothing)
            nll = -(t * logp).sum(dim=1)
    lam = z_loss or (1e-4 if mistake == "z_loss_always" else 0.0)
    if lam:
        if mistake == "z_loss_unshifted":
            lse = z.exp().sum(dim=1).log()
        else:
            lse = torch.logsumexp(z, dim=1)
        nll = nll + lam * lse.square()
    loss = torch.where(keep, nll, torch.zeros_like(nll))
    if reduction == "none":
        return loss.to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    return (loss.sum() / keep.sum()).to(logits.dtype)


def good(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0, softcap=None,
         logit_scale=1.0, z_loss=0.0, smoothing_convention="torch"):  # fmt: skip
    """Correct."""
    return _ce(logits, labels, ignore_index, reduction, label_smoothing, softcap, logit_scale,
               z_loss, smoothing_convention)  # fmt: skip


def _broken(mistake):
    def fn(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0,
           softcap=None, logit_scale=1.0, z_loss=0.0, smoothing_convention="torch"):  # fmt: skip
        return _ce(logits, labels, ignore_index, reduction, label_smoothing, softcap,
                   logit_scale, z_loss, smoothing_convention, mistake)  # fmt: skip

    fn.__name__ = mistake
    return fn


z_tanh = _broken("z_tanh")
cap_before_scale = _broken("cap_before_scale")
z_loss_unshifted = _broken("z_loss_unshifted")
z_loss_always = _broken("z_loss_always")
wrong_convention = _broken("wrong_convention")

#: Each broken kernel and the probe that must catch it.
BROKEN: dict[str, tuple[str, ...]] = {
    "z_tanh": ("softcap", "scale_then_cap"),
    "cap_before_scale": ("scale_then_cap",),
    "z_loss_unshifted": ("z_loss",),
    "z_loss_always": ("z_loss_off",),
    "wrong_convention": ("smoothing_torch", "smoothing_megatron"),
}
