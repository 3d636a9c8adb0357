"""Torch cross-entropy kernels: :func:`good` (hand-written, correct) and one broken kernel per
bug class. Each broken kernel is :func:`good` with one line changed; ``BROKEN`` maps each to the
probe meant to catch it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# optional like torch itself: pytest's doctest collection imports this module too
torch = pytest.importorskip("torch")

LogSoftmax = Callable[[torch.Tensor], torch.Tensor]


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    """(z - m) - log(sum exp(z - m)), m each row's max: exp <= 1 never overflows, and z - m is
    exact near the max, so a large common offset costs nothing (z - (m + log s) would round
    m + log s at the offset's ulp: 1e-3 at 1e4 in float32)."""
    m = z.max(dim=1, keepdim=True).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # a row of -inf: no NaN shift
    d = z - m
    return d - d.exp().sum(dim=1, keepdim=True).log()


def _ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    logsm: LogSoftmax = log_softmax,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy in float32 (float64 for float64), the loss returned in the input dtype."""
    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(wide)
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.zeros_like(labels))
    logp = logsm(z)
    nll = -logp.gather(1, safe[:, None])[:, 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(dim=1)
    loss = torch.where(keep, nll, torch.zeros_like(nll))
    if reduction == "none":
        return loss.to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    return (loss.sum() / (keep.sum() if count is None else count)).to(logits.dtype)


def good(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Correct: row-max shift, float32 sums, ignored rows out of the mean."""
    return _ce(logits, labels, ignore_index, reduction, label_smoothing)


def plain(logits, labels):
    """Correct, but takes no options: the option probes are skipped; returns the mean."""
    return _ce(logits, labels, -100, "mean", 0.0)


def loss_in_bf16(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: the loss stored in bfloat16 (8 significant bits) before it is returned."""
    loss = _ce(logits, labels, ignore_index, reduction, label_smoothing)
    return loss.to(torch.bfloat16).to(logits.dtype)


def no_max_shift(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: log(sum(exp(z))) unshifted: exp overflows to inf above 88.7 in float32."""
    return _ce(
        logits,
        labels,
        ignore_index,
        reduction,
        label_smoothing,
        lambda z: z - z.exp().sum(dim=1, keepdim=True).log(),
    )


def batch_max_shift(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: shifted by the batch's max, not each row's: exp(z - M) underflows on low rows."""

    def logsm(z):
        d = z - z.max()
        return d - d.exp().sum(dim=1, keepdim=True).log()

    return _ce(logits, labels, ignore_index, reduction, label_smoothing, logsm)


BLOCK = 128


def tail_dropped(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: the sum runs over whole blocks of 128 classes only: the last V % 128 are dropped."""

    def logsm(z):
        d = z - z.max(dim=1, keepdim=True).values
        return d - d[:, : z.shape[1] // BLOCK * BLOCK].exp().sum(dim=1, keepdim=True).log()

    return _ce(logits, labels, ignore_index, reduction, label_smoothing, logsm)


def padding_counted(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: V padded to a multiple of 128 with logit 0 (not -inf): each pad adds exp(0 - m)."""

    def logsm(z):
        padded = torch.nn.functional.pad(z, (0, -z.shape[1] % BLOCK), value=0.0)
        return log_softmax(padded)[:, : z.shape[1]]

    return _ce(logits, labels, ignore_index, reduction, label_smoothing, logsm)


def ignored_in_mean(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: the mean divides by every row, ignored ones included."""
    count = torch.tensor(float(labels.shape[0]))
    return _ce(logits, labels, ignore_index, reduction, label_smoothing, count=count)


class _RowLoss(torch.autograd.Function):
    """Per-row loss with a hand-written backward that treats its upstream gradient as one
    number (right for mean and sum, where it is uniform; wrong for reduction='none')."""

    @staticmethod
    def forward(ctx, z, labels):  # type: ignore[override]
        p = torch.softmax(z.float(), dim=1)
        ctx.save_for_backward(p, labels)
        return (-log_softmax(z.float()).gather(1, labels[:, None])[:, 0]).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        p, labels = ctx.saved_tensors
        g = p - torch.nn.functional.one_hot(labels, p.shape[1]).to(p.dtype)
        return (g * grad_out.float().mean()).to(grad_out.dtype), None


def none_grad_wrong(logits, labels, reduction="mean"):
    """Bug: reduction='none' backward ignores each row's own upstream gradient."""
    loss = _RowLoss.apply(logits, labels)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


class _InPlace(torch.autograd.Function):
    """The memory-saving trick of fused kernels, done wrong: the gradient computed in the
    forward pass is stored into the caller's logits tensor."""

    @staticmethod
    def forward(ctx, z, labels):  # type: ignore[override]
        n = z.shape[0]
        p = torch.softmax(z.float(), dim=1)
        loss = (-log_softmax(z.float()).gather(1, labels[:, None])[:, 0]).mean()
        g = (p - torch.nn.functional.one_hot(labels, z.shape[1]).float()) / n
        z.copy_(g.to(z.dtype))  # overwrites the caller's logits
        ctx.save_for_backward(z)
        return loss.to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (g,) = ctx.saved_tensors
        return g * grad_out, None


def grad_in_place(logits, labels):
    """Bug: the gradient written into the caller's logits."""
    return _InPlace.apply(logits, labels)


def nondeterministic(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: the classes summed in a different order on every call (as atomics do)."""

    def logsm(z):
        d = z - z.max(dim=1, keepdim=True).values
        return d - d[:, torch.randperm(z.shape[1])].exp().sum(dim=1, keepdim=True).log()

    return _ce(logits, labels, ignore_index, reduction, label_smoothing, logsm)


def batch_dependent(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: a 'fast path' for batches under 16 rows reads the logits in bfloat16."""
    z = logits if logits.shape[0] >= 16 else logits.to(torch.bfloat16).to(logits.dtype)
    return _ce(z, labels, ignore_index, reduction, label_smoothing)


def accum16(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: the sum of exp(z - m) accumulated in bfloat16 (a pairwise tree, rounding each add)."""

    def logsm(z):
        d = z - z.max(dim=1, keepdim=True).values
        e = d.exp().to(torch.bfloat16)
        while e.shape[1] > 1:
            e = torch.nn.functional.pad(e, (0, e.shape[1] % 2))
            e = e[:, ::2] + e[:, 1::2]  # rounded to bfloat16 at every level
        return d - e.float().log()

    return _ce(logits, labels, ignore_index, reduction, label_smoothing, logsm)


def nan_poisons(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Bug: logits centred by the batch's mean first (harmless for finite input: a common
    shift) - one NaN or inf logit makes every row NaN."""
    return _ce(logits - logits.mean(), labels, ignore_index, reduction, label_smoothing)


def raises_on_bf16(logits, labels):
    """Not a numerics bug: the kernel refuses bfloat16 with an exception."""
    if logits.dtype == torch.bfloat16:
        raise NotImplementedError("bfloat16 is not supported\x1b[31m")
    return _ce(logits, labels, -100, "mean", 0.0)


#: broken kernel -> the probe meant to catch it
BROKEN: dict[str, str] = {
    "loss_in_bf16": "random",
    "no_max_shift": "offset",
    "batch_max_shift": "row_max_spread",
    "tail_dropped": "tail",
    "padding_counted": "tail",
    "ignored_in_mean": "ignore_index",
    "none_grad_wrong": "reduction_none",
    "grad_in_place": "inputs_unchanged",
    "nondeterministic": "determinism",
    "batch_dependent": "batch_split",
    "accum16": "random",
    "nan_poisons": "nonfinite_rows",
}
