"""The probes: each a few rows built to provoke one bug class, and the registry :data:`PROBES`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._base import IGNORE_INDEX, SMOOTHING, Precision

# --- the probes' inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """One probe's rows: logits (float64, before rounding), labels, what to call it with."""

    x: np.ndarray
    y: np.ndarray
    opts: dict[str, Any] = field(default_factory=dict)
    real_vocab: int = 0  # padding probe: columns past this are -inf padding


def _random(rng: np.random.Generator, n: int, v: int) -> tuple[np.ndarray, np.ndarray]:
    scales = np.array([0.5, 2.0, 8.0, 32.0])[np.arange(n) % 4]
    return rng.standard_normal((n, v)) * scales[:, None], rng.integers(0, v, n)


def _case_random(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    return _Case(*_random(rng, n, v))


def _case_confident(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x = rng.standard_normal((n, v))
    y = rng.integers(0, v, n)
    rows = np.arange(n)
    x[rows, y] = x.max(axis=1) + np.linspace(20, 100, n)  # loss ~ V e^-margin: 1e-9 ... 1e-40
    return _Case(x, y)


def _case_wrong(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x = rng.standard_normal((n, v)) * 4
    y = rng.integers(0, v, n)
    x[np.arange(n), y] = x.max(axis=1) - np.linspace(20, 100, n)  # p_y ~ e^-margin, loss large
    return _Case(x, y)


def _case_uniform(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    level = np.array([0.0, 1.0, -7.5, 100.0])[np.arange(n) % 4]
    return _Case(np.repeat(level[:, None], v, axis=1), rng.integers(0, v, n))


def _case_first_last(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x = rng.standard_normal((n, v)) * 3
    y = np.where(np.arange(n) % 2 == 0, 0, v - 1)
    top = np.arange(n) % 4 < 2  # half the rows also have their max at the label
    x[top, y[top]] = x[top].max(axis=1) + 5
    return _Case(x, y)


def _case_tail(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    # every class far below the last few: a dropped tail loses the row's mass, padded lanes
    # counted as logit 0 (instead of -inf) add e^0 = 1 each to a sum of about 1
    x = rng.uniform(-20, -10, (n, v))
    x[:, -1] = 0.0
    x[1::2, -3:] = rng.uniform(-1, 0, (len(x[1::2]), min(3, v)))
    y = np.where(np.arange(n) % 3 == 2, rng.integers(0, v, n), v - 1)
    return _Case(x, y)


def _offset_of(t: Precision) -> float:
    """+1e4 for float32/64; for 16-bit types half the largest power of two (exp overflows)."""
    if t.mantissa_bits >= 24:
        return 1e4
    return 2.0 ** (math.floor(math.log2(t.max)) - 1)


def _case_offset(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    c = _offset_of(t)
    # float32: N(0, 4) around 1e4; 16-bit: a few ulps of c (losses up to ~6 ulp(c): a mean of
    # 64 of them stays finite even in bfloat16 at 2**126)
    spread = 4.0 if t.mantissa_bits >= 24 else float(t.ulp(np.array([c]))[0])
    x = c + rng.standard_normal((n, v)) * spread
    x[::4] = c  # all-equal rows at the offset: loss log(V) exactly
    return _Case(x, rng.integers(0, v, n))


def _case_row_max_spread(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    # a shift by the batch max leaves exp(z - M) = exp(-2000) = 0 on the low rows
    base = np.array([0.0, 1000.0, -1000.0, 300.0, -300.0, 80.0, -80.0])
    offsets = np.clip(base[np.arange(n) % base.size], -t.max / 4, t.max / 4)
    x = rng.standard_normal((n, v)) * 3 + offsets[:, None]
    return _Case(x, rng.integers(0, v, n))


def _case_padding(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    pad = (-v) % 128 or 128  # padded to a multiple of 128, as vocabularies are
    return _Case(np.concatenate([x, np.full((n, pad), -np.inf)], axis=1), y, real_vocab=v)


def _ignored(rng: np.random.Generator, y: np.ndarray, share: float = 0.2) -> np.ndarray:
    n = len(y)
    k = max(1, round(share * n))
    y = y.copy()
    y[rng.choice(n, k, replace=False)] = IGNORE_INDEX
    return y


def _case_ignore_index(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    return _Case(x, _ignored(rng, y), {"ignore_index": IGNORE_INDEX, "reduction": "mean"})


def _case_all_ignored(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, _ = _random(rng, n, v)
    y = np.full(n, IGNORE_INDEX)
    return _Case(x, y, {"ignore_index": IGNORE_INDEX, "reduction": "mean"})


def _case_reduction(reduction: str) -> Callable[..., _Case]:
    def build(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
        x, y = _random(rng, n, v)
        return _Case(x, _ignored(rng, y), {"reduction": reduction, "ignore_index": IGNORE_INDEX})

    return build


def _case_label_smoothing(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    opts = {"label_smoothing": SMOOTHING, "ignore_index": IGNORE_INDEX, "reduction": "mean"}
    return _Case(x, _ignored(rng, y), opts)


def _case_nonfinite(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x, y = _random(rng, n, v)
    x[1, 0] = np.nan
    x[3, v // 2] = np.inf
    masked = (y[5] + 1) % v  # a -inf logit is a masked class: row 5 still has an answer
    x[5, masked] = -np.inf
    return _Case(x, y)


# --- the loss variants' probes (see smcheck.variants) ---------------------------------------------

#: The softcap and logit scale of the variant probes (Gemma 2 caps its final logits at 30).
SOFTCAP, LOGIT_SCALE = 30.0, 2.0
#: The z-loss coefficient of the z-loss probes (PaLM's 1e-4).
Z_LOSS = 1e-4
#: The keyword options of the loss variants: the stock kernels take none of them.
VARIANT_OPTIONS = frozenset({"softcap", "logit_scale", "z_loss", "smoothing_convention"})


def _case_softcap(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    # ordinary logits plus saturating ones (+-1e4, or +-max/2 in float8): c tanh(z / c) is
    # within (-30, 30) where z tanh(z / c) is the logit itself, and 1 - tanh**2 underflows
    x, y = _random(rng, n, v)
    big = min(1e4, t.max / 2)
    x[::2, 0] = big
    x[1::2, -1] = -big
    x[::3, v // 2] = big / 2
    return _Case(x, y, {"softcap": SOFTCAP})


def _case_scale_cap(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    # |z| ~ 20-40: c tanh(s z / c) and s c tanh(z / c) differ by tens
    x = rng.standard_normal((n, v)) * 20
    return _Case(x, rng.integers(0, v, n), {"softcap": SOFTCAP, "logit_scale": LOGIT_SCALE})


def _lse_offset(t: Precision) -> float:
    """A common logit offset where exp overflows float32 (and float64 for float64 work)."""
    return 100.0 if t.mantissa_bits <= 24 else 800.0


def _case_z_loss(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    # log-sum-exp ~ 100 (float64: 800): lambda lse**2 ~ 1 (64), and the unshifted sum
    # exp(z) overflows where the shifted one does not
    x = _lse_offset(t) + rng.standard_normal((n, v)) * 2
    return _Case(x, rng.integers(0, v, n), {"z_loss": Z_LOSS})


def _case_z_loss_off(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
    x = _lse_offset(t) + rng.standard_normal((n, v)) * 2
    return _Case(x, rng.integers(0, v, n), {"z_loss": 0.0})


def _case_smoothing(convention: str) -> Callable[..., _Case]:
    def build(rng: np.random.Generator, n: int, v: int, t: Precision) -> _Case:
        # the label's coefficient (1 - eps vs 1 - eps + eps / C) and the others' (eps / (C - 1)
        # vs eps / C) differ by eps / C: the losses by eps / C times the mean margin
        x, y = _random(rng, n, v)
        opts = {"label_smoothing": SMOOTHING, "smoothing_convention": convention}
        return _Case(x, y, opts)

    return build


# --- the probe registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A named case: what it builds, what bug it catches, which options it needs."""

    name: str
    catches: str  # the bug class, named in a failure's detail
    build: Callable[[np.random.Generator, int, int, Precision], _Case]
    needs: tuple[str, ...] = ()  # keyword options the kernel must accept
    kind: str = "accuracy"  # accuracy | determinism | batch_split


#: Every probe, in the order they run. Options in a case but not in ``needs`` (``reduction``,
#: ``ignore_index`` for rows that carry none) are passed only where the kernel accepts them.
PROBES: dict[str, Probe] = {
    p.name: p
    for p in (
        Probe("random", "accuracy at logit scales 0.5-32 (a loss kept in 16 bits, a sum "
              "accumulated in 16 bits, a wrong formula)", _case_random),
        Probe("confident", "confident rows, margins 20-100 (log of a rounded p, 1 - p "
              "cancellation: the loss e^-margin lost)", _case_confident),
        Probe("wrong", "confidently wrong rows (p_y rounded to 0: a clamped or infinite "
              "loss)", _case_wrong),
        Probe("uniform", "all-equal rows (loss log V exactly, gradient 1/V - onehot)",
              _case_uniform),
        Probe("first_last", "labels on the first and last class (an off-by-one gather, a "
              "dropped last block)", _case_first_last),
        Probe("tail", "the vocabulary tail (the last classes dropped, or padded block lanes "
              "counted, when V is not a multiple of the block size)", _case_tail),
        Probe("offset", "a large common offset (no max shift: exp overflows; the loss must "
              "be shift invariant)", _case_offset),
        Probe("row_max_spread", "rows with wildly different maxima (a shift by the batch max "
              "instead of each row's max)", _case_row_max_spread),
        Probe("padding", "appended -inf padding columns (loss and real columns' gradient "
              "unchanged, padded columns' gradient 0)", _case_padding),
        Probe("ignore_index", "20% of rows ignored, reduction mean (ignored rows counted in "
              "the mean: it divides by the counted rows)", _case_ignore_index,
              ("ignore_index",)),
        Probe("all_ignored", "every row ignored (loss NaN as PyTorch, or 0; gradient 0)",
              _case_all_ignored, ("ignore_index",)),
        Probe("reduction_none", "reduction='none' (each row's gradient scaled by its own "
              "upstream gradient; ignored rows 0)", _case_reduction("none"), ("reduction",)),
        Probe("reduction_sum", "reduction='sum'", _case_reduction("sum"), ("reduction",)),
        Probe("reduction_mean", "reduction='mean' (divides by the counted rows)",
              _case_reduction("mean"), ("reduction",)),
        Probe("label_smoothing", "label smoothing 0.1 with ignored rows (their smoothing term "
              "counted)", _case_label_smoothing, ("label_smoothing",)),
        Probe("inputs_unchanged", "the caller's logits and labels modified (a gradient "
              "written in place into the logits)", _case_random, kind="inputs"),
        Probe("determinism", "two identical calls must give identical bits",
              _case_random, kind="determinism"),
        Probe("batch_split", "a row's loss depends on which other rows share the batch",
              _case_random, kind="batch_split"),
        Probe("nonfinite_rows", "a NaN/inf row poisons the other rows", _case_nonfinite),
        Probe("softcap", "softcap 30 at saturating logits (z tanh(z/c) for c tanh(z/c), "
              "1 - tanh**2 that cancels)", _case_softcap, ("softcap",)),
        Probe("scale_then_cap", "logit_scale 2 then softcap 30 (the cap applied before the "
              "scale)", _case_scale_cap, ("softcap", "logit_scale")),
        Probe("z_loss", "z-loss 1e-4 at log-sum-exp ~100 (the z-loss from the unshifted sum "
              "of exp(z), or its gradient 2 lambda lse p missing)", _case_z_loss, ("z_loss",)),
        Probe("z_loss_off", "z_loss=0 at log-sum-exp ~100 (a z-loss added when disabled)",
              _case_z_loss_off, ("z_loss",)),
        Probe("smoothing_torch", "label smoothing 0.1, torch convention (eps/C on every "
              "class: Megatron's formula used)", _case_smoothing("torch"),
              ("label_smoothing", "smoothing_convention")),
        Probe("smoothing_megatron", "label smoothing 0.1, Megatron convention (eps/(C-1) on "
              "each other class: PyTorch's formula used)", _case_smoothing("megatron"),
              ("label_smoothing", "smoothing_convention")),
    )
}  # fmt: skip
