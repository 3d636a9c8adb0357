"""Correct numpy and JAX cross-entropy kernels (and a numpy one without a gradient)."""

from __future__ import annotations

import numpy as np


def numpy_good(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """(loss, grad of the returned loss): log-softmax shifted by each row's max, in float64.

    The gradient of row i is p_i - target_i, scaled as the reduction scales the loss.
    """
    z = np.asarray(logits).astype(np.float64)
    n, c = z.shape
    keep = labels != ignore_index
    safe = np.where(keep, labels, 0)
    d = z - z.max(axis=1, keepdims=True)
    logp = d - np.log(np.exp(d).sum(axis=1, keepdims=True))
    target = np.full((n, c), label_smoothing / c)
    target[np.arange(n), safe] += 1 - label_smoothing
    nll = -logp[np.arange(n), safe]
    if label_smoothing:  # not 0 * log(p): a -inf (masked) logit would give 0 * -inf = NaN
        nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
    loss = np.where(keep, nll, 0.0)
    grad = np.where(keep[:, None], np.exp(logp) - target, 0.0)
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return loss.sum(), grad
    count = np.count_nonzero(keep)
    return (loss.sum() / count if count else np.float64(np.nan)), grad / max(count, 1)


def numpy_loss_only(logits, labels):
    """Per-row losses only (no gradient): the gradient is not checked."""
    z = np.asarray(logits).astype(np.float64)
    d = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(d).sum(axis=1)) - d[np.arange(len(labels)), labels]


def jax_good(logits, labels, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """jax.nn.log_softmax in float32 (the input's dtype kept for the loss)."""
    import jax
    import jax.numpy as jnp

    z = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(z, axis=-1)
    keep = labels != ignore_index
    safe = jnp.where(keep, labels, 0)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
    if label_smoothing:  # not 0 * mean(log p): a masked -inf logit would make it NaN
        nll = (1 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    loss = jnp.where(keep, nll, 0.0)
    if reduction == "none":
        return loss.astype(logits.dtype)
    if reduction == "sum":
        return loss.sum().astype(logits.dtype)
    return (loss.sum() / keep.sum()).astype(logits.dtype)
