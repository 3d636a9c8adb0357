"""The named synthetic inputs - gradcheck's mixed rows, sweep's unit patterns - defined once.

Two commands make logits of their own, for two different purposes, and both call their cases
``random``, ``confident`` and ``wrong`` on the command line:

* **Rows** (:func:`synthetic`, ``smcheck gradcheck --case``): rows of one fixed spread,
  z ~ N(0, scale**2), each row then edited into its kind; ``all`` mixes the kinds row by row.
  A gradient check needs every kind at once and a label that is *clearly* on top or at the
  bottom, so its "confident" row puts the label a margin of 2..6 x scale above every other
  class (p_y = 1 - O(e**-2scale)).
* **Patterns** (:func:`case_pattern`, ``smcheck sweep --case``): one base pattern whose largest
  entry is exactly 1, multiplied by a growing scale - the scale *is* the largest logit, which the
  break-point theory (ln(max) of the dtype) is stated in. Its "confident" is an N(0, 1) row with
  the label at the row's own maximum, at whatever gap the draw gives, since the margin must grow
  with the scale alone.

These are different inputs, and each command's JSON pins its numbers, so they stay two
families with descriptive internal names (``_row_label_above_max``,
``_pattern_label_at_max``...); the command-line names map onto them in :data:`ROW_CASES` and
:data:`PATTERN_CASES`. :func:`check_size` refuses a size that cannot fit in memory before
anything is allocated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import UsageError

__all__ = [
    "CASE_CHOICES",
    "PATTERN_CASES",
    "ROW_CASES",
    "Synthetic",
    "case_pattern",
    "check_size",
    "memory_limit",
    "synthetic",
]


# --------------------------------------------------------------------------- size limits


def memory_limit() -> int:
    """Bytes of physical memory on this machine (2**34 where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 1 << 34


def _bytes(n: float) -> str:
    if n >= 2**60:  # a Python int past float's range would raise OverflowError in :.3g
        return f"{_count(n)} bytes"
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"


def _count(n: int | float) -> str:
    """A count as a message writes it: exact up to 15 digits, else 3 significant digits - also
    for a Python int of 400 digits (``f"{n:.3g}"`` raises OverflowError past 1.8e308).

    >>> _count(4096), _count(10**15), _count(10**400 - 1)
    ('4096', '1e+15', '1e+400')
    """
    if n < 10**15:
        return str(n)
    if n < 10**300:
        return f"{n:.3g}"
    digits = str(int(n))
    lead = round(int(digits[:4]) / 1000, 2)  # 9.999 -> 10.0: carry into the exponent
    exp = len(digits) - 1 + (lead >= 10)
    lead = lead / 10 if lead >= 10 else lead
    return f"{lead:g}e+{exp}"


def check_size(
    rows: int, classes: int, bytes_per_value: int, what: str, classes_flag: str = "--classes"
) -> None:
    """Refuse ``rows`` x ``classes`` synthetic logits whose working arrays - about
    ``bytes_per_value`` bytes per logit - exceed this machine's memory, before allocating.
    ``classes_flag`` names the command's option for the classes (kernel: ``--vocab``).

    >>> check_size(10**9, 10**6, 64, "gradcheck")
    Traceback (most recent call last):
    ...
    smcheck.errors.UsageError: gradcheck: --rows 1000000000 x --classes 1000000 = 1e+15 logits ...
    """
    need = rows * classes * bytes_per_value  # Python ints: no overflow at 10**15
    limit = memory_limit()
    if need > limit:
        raise UsageError(
            f"{what}: --rows {_count(rows)} x {classes_flag} {_count(classes)}"
            f" = {_count(rows * classes)} logits "
            f"need about {_bytes(need)}, more than this machine's {_bytes(limit)} of memory"
        )


# --------------------------------------------------------------------------- gradcheck's rows


@dataclass(frozen=True)
class Synthetic:
    """Reproducible synthetic logits (float64, rounded later) with labels and each row's case."""

    logits: np.ndarray
    labels: np.ndarray
    cases: tuple[str, ...]
    description: str


def _row_as_drawn(z: np.ndarray, y: np.ndarray, i: int, margin: float) -> None:
    """``random``: N(0, scale**2) logits and a uniform label, as drawn."""


def _row_label_above_max(z: np.ndarray, y: np.ndarray, i: int, margin: float) -> None:
    """``confident``: the label's logit lifted to the largest other logit + margin."""
    z[i, y[i]] = np.delete(z[i], y[i]).max() + margin


def _row_label_below_min(z: np.ndarray, y: np.ndarray, i: int, margin: float) -> None:
    """``wrong``: the label's logit dropped to the smallest other logit - margin (p_y
    underflows in float16)."""
    z[i, y[i]] = np.delete(z[i], y[i]).min() - margin


def _row_all_equal(z: np.ndarray, y: np.ndarray, i: int, margin: float) -> None:
    """``uniform``: every logit equal to the first (ties at the max, p = 1/C)."""
    z[i] = z[i, 0]


def _row_extreme(z: np.ndarray, y: np.ndarray, i: int, variant: int) -> None:
    """``extreme``, the ``variant``-th in turn (mod 4): the seed's row [0, -800, 1] with label 1,
    +1000 (naive's exp overflows), -1000 (naive's sum is 0), a 100x spread."""
    if variant == 0:  # the seed: p_1 = exp(-801) / (1 + e**-1) underflows in float64
        z[i, :3] = [0.0, -800.0, 1.0][: z.shape[1]]
        y[i] = 1
    elif variant == 1:
        z[i] += 1000.0
    elif variant == 2:
        z[i] -= 1000.0
    else:
        z[i] *= 100.0


RowFn = Callable[[np.ndarray, np.ndarray, int, float], None]

#: gradcheck's row kinds by command-line name (``extreme`` is :func:`_row_extreme`, which
#: counts its rows).
ROW_CASES: dict[str, RowFn | None] = {
    "random": _row_as_drawn,
    "confident": _row_label_above_max,
    "wrong": _row_label_below_min,
    "uniform": _row_all_equal,
    "extreme": None,
}
CASE_CHOICES: tuple[str, ...] = (*ROW_CASES, "all")
#: ``all``: the kinds in turn, an ``extreme`` row first (row 0 is the seed's case).
_MIX: tuple[str, ...] = ("extreme", "random", "confident", "wrong", "uniform")
#: Bytes per logit gradcheck holds at once for synthetic rows: the logits, their rounding, the
#: truth's complex128 batch and the directions (generous: a limit on what cannot fit at all).
GRADCHECK_BYTES_PER_VALUE = 64


def synthetic(
    case: str = "all", *, rows: int = 50, classes: int = 10, scale: float = 4.0, seed: int = 0
) -> Synthetic:
    """Synthetic rows of one case, or of all cases mixed row by row (``"all"``).

    With logits z ~ N(0, scale**2) and a uniform random label, unless the case says otherwise:

    * ``random`` - as is;
    * ``confident`` - the label is the max by a margin in [2, 6] * scale (p_y ~ 1);
    * ``wrong`` - the label is the min by a margin in [2, 6] * scale (p_y underflows in float16);
    * ``uniform`` - every logit equal (ties at the max, p = 1/C);
    * ``extreme`` - in turn: the seed's row [0, -800, 1] (label 1, further classes random), a
      row shifted by +1000 (naive's exp overflows), one shifted by -1000 (naive's sum is 0) and
      one with 100x the spread.

    >>> s = synthetic("all", rows=5, classes=3)
    >>> s.cases
    ('extreme', 'random', 'confident', 'wrong', 'uniform')
    >>> s.logits[0].tolist(), int(s.labels[0])
    ([0.0, -800.0, 1.0], 1)
    """
    if case not in CASE_CHOICES:
        raise UsageError(f"unknown case {case!r}; expected one of: {', '.join(CASE_CHOICES)}")
    if rows < 1:
        raise UsageError(f"rows must be at least 1, got {rows}")
    if classes < 2:
        raise UsageError(f"classes must be at least 2 (the seed's case needs 2), got {classes}")
    if not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"scale must be a positive number, got {scale}")
    check_size(rows, classes, GRADCHECK_BYTES_PER_VALUE, "gradcheck")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, classes)) * scale
    y = rng.integers(0, classes, rows)
    margin = rng.uniform(2.0, 6.0, rows) * scale
    kinds = tuple(case if case != "all" else _MIX[i % len(_MIX)] for i in range(rows))
    n_extreme = 0
    for i, kind in enumerate(kinds):
        edit = ROW_CASES[kind]
        if edit is None:
            _row_extreme(z, y, i, n_extreme % 4)
            n_extreme += 1
        else:
            edit(z, y, i, float(margin[i]))
    desc = f"synthetic {case}: {rows} x {classes} logits, scale {scale:g}, seed {seed}"
    return Synthetic(z, y.astype(np.int64), kinds, desc)


# --------------------------------------------------------------------------- sweep's patterns


def _normal(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    g = rng.standard_normal((rows, classes))
    top = g.flat[np.argmax(np.abs(g))]
    return g / top  # largest |g| becomes exactly +1 (N(0, 1) is symmetric: the sign is free)


def _pattern_normal(
    rng: np.random.Generator, rows: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``random``: N(0, 1) logits, random labels (an untrained classifier)."""
    base = _normal(rng, rows, classes)
    return base, rng.integers(0, classes, size=rows)


def _pattern_label_at_max(
    rng: np.random.Generator, rows: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``confident``: N(0, 1) logits, the label at each row's maximum (no margin imposed)."""
    base = _normal(rng, rows, classes)
    return base, np.argmax(base, axis=1)


def _two_positions(
    rng: np.random.Generator, rows: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    first = rng.integers(0, classes, size=rows)
    second = (first + rng.integers(1, classes, size=rows)) % classes  # != first
    return first, second


def _pattern_label_at_min(
    rng: np.random.Generator, rows: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``wrong``: one logit at +1, the label at -1, the others uniform in [-0.9, -0.3]: margin
    -2 * scale exactly."""
    base = rng.uniform(-0.9, -0.3, size=(rows, classes))
    top, label = _two_positions(rng, rows, classes)
    r = np.arange(rows)
    base[r, top] = 1.0
    base[r, label] = -1.0
    return base, label


def _pattern_fixed_margin(
    rng: np.random.Generator, rows: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``margin``: the label at +1, one other class at 0, the rest uniform in [-0.5, 0]: margin
    +scale exactly."""
    base = rng.uniform(-0.5, 0.0, size=(rows, classes))
    label, runner_up = _two_positions(rng, rows, classes)
    r = np.arange(rows)
    base[r, runner_up] = 0.0
    base[r, label] = 1.0
    return base, label


PatternFn = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]

#: sweep's patterns by command-line name; the order is the order reports list them in, and a
#: case's position seeds its generator (so it must not change).
PATTERN_CASES: dict[str, PatternFn] = {
    "random": _pattern_normal,
    "confident": _pattern_label_at_max,
    "wrong": _pattern_label_at_min,
    "margin": _pattern_fixed_margin,
}


def case_pattern(case: str, classes: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The base pattern (rows, classes) float64 and labels of a sweep case; logits = base * scale.

    Deterministic in (case, classes, rows, seed) and the same for every dtype.

    >>> base, labels = case_pattern("margin", 4, 2, seed=0)
    >>> float(base.max()), [float(base[i, labels[i]]) for i in range(2)]
    (1.0, [1.0, 1.0])
    """
    if case not in PATTERN_CASES:
        raise UsageError(f"unknown case {case!r}; expected one of: {', '.join(PATTERN_CASES)}")
    rng = np.random.default_rng([seed, list(PATTERN_CASES).index(case), classes, rows])
    return PATTERN_CASES[case](rng, rows, classes)
