"""A fused linear cross-entropy kernel seen as a plain cross-entropy kernel, exactly.

``smcheck kernel --linear`` must run a linear kernel (the signature of
``torch.nn.functional.linear_cross_entropy``) through the plain probe suite too: overflowing
and confident rows, ignored labels, reductions, smoothing, determinism. Those probes hand a
kernel logits z (N, C). A linear kernel computes z = h Wᵀ itself, so :func:`as_plain` feeds it
an embedding whose product is z *exactly*, in any working dtype and any accumulation:

* C <= N: h = z, W = I_C (D = C). Each z_ij = sum_k h_ik W_jk has one nonzero product,
  z_ij * 1, so the kernel's matmul returns z bit for bit (a float32 or a bfloat16
  accumulator adds only zeros to it), and dL/dz = dL/dh = G W = G, again one product per entry.
* C > N: h = I_N, W = zᵀ (D = N): z = I zᵀᵀ, and dL/dz = (dL/dW)ᵀ = (Gᵀ I)ᵀ - dW of each
  class collects G_ij from row i alone, so a kernel that sums dW across row chunks in bfloat16
  adds zeros and stays exact.

So every difference the plain probes measure is the kernel's softmax and loss, not its matmul
(which the linear probes judge). Two limits: the logits must be finite (0 * inf and 0 * NaN are
NaN, so -inf padding or a NaN row would spread to other entries - those probes are skipped), and
a kernel that rounds h and W to TF32 before its matmul (torch's ``allow_tf32`` on a GPU) changes
z = h itself; float32, bfloat16 and float16 matmuls of the values as given are exact.

The identity is min(N, C)² values: the probes use about 2**19 logits, so at most 2**19 more.
torch only, like the linear probes.

>>> import torch
>>> from torch.nn.functional import linear_cross_entropy
>>> z = torch.tensor([[3.0, -1.0, 0.5]], requires_grad=True)
>>> plain = as_plain(linear_cross_entropy)
>>> loss = plain(z, torch.tensor([0]), reduction="sum")
>>> loss.backward()
>>> bool(loss == torch.nn.functional.cross_entropy(z.detach(), torch.tensor([0]), reduction="sum"))
True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["as_plain"]

#: Keywords of a linear kernel that have no meaning for plain logits (the bias is zero: W = I
#: or W = zᵀ carries every value; a chunking ``options`` object is the kernel's own business).
_LINEAR_ONLY = ("linear_bias",)


def as_plain(fn: Callable[..., Any], unknown_signature: Sequence[str] = ()) -> Callable[..., Any]:
    """The plain kernel ``plain(logits, target, **options)`` computed by the linear kernel
    ``fn(input, linear_weight, target, **options)`` through an exact embedding (module
    docstring). Its signature lists ``fn``'s keyword options (so the probe runner passes only
    those ``fn`` accepts), without ``linear_bias``; where ``fn`` has no signature to read, the
    keywords ``unknown_signature`` (the ones the linear probes assume such a kernel takes)."""

    def plain(logits: Any, target: Any, **options: Any) -> Any:
        import torch

        n, c = logits.shape
        if c <= n:
            eye = torch.eye(c, dtype=logits.dtype, device=logits.device)
            return fn(logits, eye, target, **options)
        eye = torch.eye(n, dtype=logits.dtype, device=logits.device)
        # a transposed view: the gradient flows back to the logits through it; contiguous
        # because a kernel may (rightly) ask for a row-major weight
        return fn(eye, logits.t().contiguous(), target, **options)

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    kinds = inspect.Parameter
    if sig is None:
        keywords = [kinds(k, kinds.KEYWORD_ONLY, default=None) for k in unknown_signature]
    else:
        # the first three positional parameters are (input, linear_weight, target); what is
        # left - keyword-only parameters, positional ones past the third, **kwargs - are options
        keywords, seen = [], 0
        for p in sig.parameters.values():
            if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD) and seen < 3:
                seen += 1
            elif p.kind is kinds.VAR_POSITIONAL or p.name in _LINEAR_ONLY:
                continue
            elif p.kind is kinds.VAR_KEYWORD:
                keywords.append(p)
            else:
                keywords.append(p.replace(kind=kinds.KEYWORD_ONLY))
        keywords.sort(key=lambda p: p.kind is kinds.VAR_KEYWORD)  # **kwargs last
    positional = [
        kinds("logits", kinds.POSITIONAL_OR_KEYWORD),
        kinds("target", kinds.POSITIONAL_OR_KEYWORD),
    ]
    plain.__signature__ = inspect.Signature(positional + keywords)  # type: ignore[attr-defined]
    plain.__name__ = f"as_plain({getattr(fn, '__name__', 'kernel')})"
    return plain
