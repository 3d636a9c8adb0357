"""Torch fused linear cross-entropy kernels for the linear probes: :func:`chunked` sums dW and
db over row chunks in a dtype of its choice (float32: correct; bfloat16: the known bug)."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")


class _Chunked(torch.autograd.Function):
    """Loss and gradients computed chunk by chunk in the forward (as fused kernels do); dW and
    db are summed across row chunks in ``accum``, each partial sum rounded to it."""

    @staticmethod
    def forward(
        ctx: Any, h: Any, w: Any, b: Any, y: Any, chunk: int, accum: Any, shuffle: bool,
        drop_tail: bool,
    ) -> Any:  # fmt: skip
        n = h.shape[0]
        counted = y != -100
        denom = max(int(counted.sum()), 1)
        dh = torch.zeros_like(h, dtype=torch.float32)
        dw = torch.zeros(w.shape, dtype=accum)
        db = torch.zeros(w.shape[0], dtype=accum)
        total = torch.zeros((), dtype=torch.float32)
        # drop_tail: the grid covers n // chunk chunks, the last partial chunk never runs
        starts = torch.arange(0, n - n % chunk if drop_tail else n, chunk)
        if shuffle:  # as atomics do: the row chunks land in dW in a different order per call
            starts = starts[torch.randperm(len(starts))]
        for r0 in starts.tolist():
            hc, yc = h[r0 : r0 + chunk], y[r0 : r0 + chunk]
            z = (hc @ w.T + b).float()  # logits in the working dtype, softmax in float32
            keep = yc != -100
            safe = torch.where(keep, yc, 0)
            lse = torch.logsumexp(z, dim=1)
            nll = lse - z.gather(1, safe[:, None])[:, 0]
            total += torch.where(keep, nll, 0).sum()
            g = torch.softmax(z, dim=1)
            g[torch.arange(len(yc)), safe] -= 1
            g = (g * keep[:, None] / denom).to(h.dtype)
            dh[r0 : r0 + chunk] = (g @ w).float()
            dw = (dw + (g.T @ hc).to(accum)).to(accum)
            db = (db + g.float().sum(0).to(accum)).to(accum)
        ctx.save_for_backward(dh.to(h.dtype), dw.to(w.dtype), db.to(b.dtype))
        return (total / denom).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        dh, dw, db = ctx.saved_tensors
        return dh * grad, dw * grad, db * grad, None, None, None, None, None


def chunked(
    input: Any, linear_weight: Any, target: Any, *, linear_bias: Any = None,
    reduction: str = "mean", ignore_index: int = -100, chunk: int = 8, accum: str = "float32",
    shuffle: bool = False, drop_tail: bool = False,
) -> Any:  # fmt: skip
    """A row-chunked fused linear cross-entropy (``reduction="mean"`` only)."""
    assert reduction == "mean" and ignore_index == -100
    b = (
        linear_bias
        if linear_bias is not None
        else torch.zeros(linear_weight.shape[0], dtype=input.dtype)
    )
    return _Chunked.apply(input, linear_weight, b, target, chunk, getattr(torch, accum), shuffle,
                          drop_tail)  # fmt: skip


def chunked_bf16_accum(input: Any, linear_weight: Any, target: Any, **kw: Any) -> Any:
    """The bug: dW and db summed in bfloat16 over 128 row chunks of 8 rows."""
    return chunked(input, linear_weight, target, accum="bfloat16", **kw)


def chunked_nondeterministic(input: Any, linear_weight: Any, target: Any, **kw: Any) -> Any:
    """The bug: dW and db summed in float32 over row chunks taken in a random order per call
    (as atomic adds do): accurate each time, but two calls differ in the last bits."""
    return chunked(input, linear_weight, target, shuffle=True, **kw)


def chunked_drops_tail(
    input: Any, linear_weight: Any, target: Any, *, chunk: int = 8, **kw: Any
) -> Any:
    """The bug: the last partial row chunk is never computed - exact while ``chunk`` divides N
    (the default 8 divides every probe's N), wrong rows at ``chunk=61``."""
    return chunked(input, linear_weight, target, chunk=chunk, drop_tail=True, **kw)
