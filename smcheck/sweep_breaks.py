"""Break points: each method's first overflow, NaN/inf loss or gradient and precision loss in the
scale grid, bisected to --tol and explained against the dtype's theory (ln max, ln of half the
smallest subnormal)."""

from __future__ import annotations

import math

from .precisions import get_precision
from .sweep_cells import Problem, ScaleStats, is_broken, measure
from .sweep_report import KINDS, Break, DtypeTheory

#: Elements a bisection round may evaluate for one bracket: cheap cells refine in one round.
REFINE_ELEMENTS = 1 << 15


def _explain(
    st: ScaleStats, theory: DtypeTheory, kind: str, method: str = ""
) -> tuple[str | None, str | None, float | None, float | None]:
    """Which threshold a break crossed: among the mechanisms its flags allow, the first (in the
    order exp, sum, 1/p_y) whose quantity is just past its threshold (ratio in [0.99, 1.03]:
    the bisection tolerance plus the rounding of the logits), else the closest one past it.
    Returns (cause, theory name, theory value, observed value)."""
    if kind == "precision":
        return "lost bits", None, None, None
    cands: list[tuple[str, str, float, float | None]] = []
    if st.overflow_frac:
        cands.append(("exp overflow", "ln(max)", theory.ln_max, st.largest_logit))
        cands.append(("sum overflow", "ln(max) of accum", theory.accum_ln_max, st.lse))
        cands.append(("1/p_y overflow", "ln(max)", theory.ln_max, st.loss))
    if st.underflow_frac:
        cands.append(("p_y underflow", "-ln(sub/2)", -theory.ln_underflow, st.loss))
    best: tuple[float, tuple[str | None, str | None, float | None, float | None]] | None = None
    for cause, name, value, obs in cands:
        if obs is None or obs / value < 0.99:
            continue
        d = abs(obs / value - 1)
        if d <= 0.03:
            best = (d, (cause, name, value, obs))
            break
        if best is None or d < best[0]:
            best = (d, (cause, name, value, obs))
    if best is not None and best[0] <= 0.1:
        return best[1]
    p = get_precision(theory.dtype)
    # the cases keep every logit within [-scale, scale]: a range past max needs 2 scale > max
    wide = st.largest_logit is not None and 2 * abs(st.largest_logit) > p.max
    if st.overflow_frac and method != "naive" and not p.has_inf and wide:
        # no threshold above explains it: in a dtype without inf (float8_e4m3fn) the shift
        # z - max(z) (which naive does not take) overflows to NaN once the row's range passes
        # the dtype's max
        return f"shift overflow (NaN: {theory.dtype} has no inf)", None, None, None
    if best is None:
        return ("overflow" if st.overflow_frac else None), None, None, None
    return best[1]


#: An open interval per (method, kind): [lo, hi] with lo ok and hi broken; lo None = broken from
#: the smallest scale on.
_Brackets = dict[tuple[str, str], list[float | None]]

_Cache = dict[tuple[str, float], ScaleStats]


def _refine(
    prob: Problem,
    scales: tuple[float, ...],
    grid: dict[str, list[ScaleStats]],
    tol: float,
    theory: DtypeTheory,
) -> list[Break]:
    """Break points of every method and kind: first broken grid scale, then bisection."""
    cache: _Cache = {
        (m, sc): st for m, stats in grid.items() for sc, st in zip(scales, stats, strict=True)
    }
    brackets, never = _grid_brackets(scales, grid, prob.max_bits)
    _near_misses(prob, scales, grid, brackets, cache)
    _rebracket(brackets, never, cache, prob.max_bits)

    def is_open(b: list[float | None]) -> bool:
        lo, hi = b
        return lo is not None and hi is not None and hi / lo > 1 + tol

    while True:
        todo = [(key, b) for key, b in brackets.items() if is_open(b)]
        if not todo:
            # a flag can be on in a window narrower than a grid step (the overflow flag while
            # 1/p_y is inf but p_y not yet 0): another kind's bisection may have landed in it
            if not _rebracket(brackets, never, cache, prob.max_bits):
                break
            continue
        _bisect(prob, todo, tuple(grid), cache, tol)
    return _breaks(prob, brackets, never, cache, theory)


def _grid_brackets(
    scales: tuple[float, ...], grid: dict[str, list[ScaleStats]], max_bits: float
) -> tuple[_Brackets, list[tuple[str, str]]]:
    """Each (method, kind)'s bracket around its first broken grid scale, and those never
    broken on the grid."""
    brackets: _Brackets = {}
    never: list[tuple[str, str]] = []
    for m, stats in grid.items():
        for kind in KINDS:
            first = next((i for i, st in enumerate(stats) if is_broken(st, kind, max_bits)), None)
            if first is None:
                never.append((m, kind))
            else:
                brackets[(m, kind)] = [scales[first - 1] if first else None, scales[first]]
    return brackets, never


def _bisect(
    prob: Problem,
    todo: list[tuple[tuple[str, str], list[float | None]]],
    methods: tuple[str, ...],
    cache: _Cache,
    tol: float,
) -> None:
    """One round of bisection: up to k points inside each open bracket of ``todo`` (k as many
    as a cell's rows allow within :data:`REFINE_ELEMENTS`), measured in shared batches, and
    each bracket narrowed to the points around its first broken one (in place)."""
    r, c = prob.base.shape
    k_budget = max(1, REFINE_ELEMENTS // (r * c))
    # point -> methods to run there, and whether the reference is needed there
    need_at: dict[float, tuple[set[str], list[bool]]] = {}
    points: dict[tuple[str, str], list[float]] = {}
    for (m, kind), (lo, hi) in todo:
        assert lo is not None and hi is not None
        need = math.ceil(math.log(hi / lo) / math.log1p(tol)) - 1
        k = max(1, min(k_budget, need))
        pts = [float(lo * (hi / lo) ** (j / (k + 1))) for j in range(1, k + 1)]
        points[(m, kind)] = pts
        with_ref = kind == "precision"
        for p in pts:
            if (m, p) in cache and (cache[(m, p)].has_ref or not with_ref):
                continue
            wanted, ref = need_at.setdefault(p, (set(), [False]))
            wanted.add(m)
            ref[0] = ref[0] or with_ref
    # points that need the same methods share one batch: one rounding, one reference
    batches: dict[tuple[tuple[str, ...], bool], list[float]] = {}
    for p, (wanted, ref) in need_at.items():
        order = tuple(x for x in methods if x in wanted)
        batches.setdefault((order, ref[0]), []).append(p)
    for (methods_t, with_ref), pts_list in batches.items():
        ordered = sorted(pts_list)
        measured = measure(prob, ordered, methods_t, with_ref)
        for m in methods_t:
            for p, st in zip(ordered, measured[m], strict=True):
                cache[(m, p)] = st
    for (m, kind), b in todo:
        pts = points[(m, kind)]
        hit = next((p for p in pts if is_broken(cache[(m, p)], kind, prob.max_bits)), None)
        if hit is None:
            b[0] = pts[-1]
        else:
            i = pts.index(hit)
            b[1] = hit
            if i > 0:
                b[0] = pts[i - 1]


def _breaks(
    prob: Problem,
    brackets: _Brackets,
    never: list[tuple[str, str]],
    cache: _Cache,
    theory: DtypeTheory,
) -> list[Break]:
    """A :class:`Break` per bracket, explained at its broken end, and one per kind never seen."""
    out: list[Break] = []
    for (m, kind), (lo, hi) in brackets.items():
        assert hi is not None
        st = cache[(m, hi)]
        cause, name, value, observed = _explain(st, theory, kind, m)
        v = prob.variant
        if name is not None and v is not None and v.softcap is not None:
            # the threshold speaks of the logits the softmax sees: c tanh(s z / c) stays within
            # (-c, c), so past the cap no scale reaches a threshold above c
            name += f" (softcap {v.softcap:g}: softmax sees |z| < {v.softcap:g})"
        out.append(
            Break(
                prob.dtype,
                prob.classes,
                prob.case,
                method=m,
                kind=kind,
                scale=hi,
                scale_lo=lo,
                largest_logit=st.largest_logit,
                margin=st.margin,
                loss=st.loss,
                cause=cause,
                theory=name,
                theory_value=value,
                observed=observed,
            )
        )
    out.extend(
        Break(prob.dtype, prob.classes, prob.case, method=m, kind=kind, scale=None)
        for m, kind in never
    )
    return out


def _near_misses(
    prob: Problem,
    scales: tuple[float, ...],
    grid: dict[str, list[ScaleStats]],
    brackets: dict[tuple[str, str], list[float | None]],
    cache: dict[tuple[str, float], ScaleStats],
) -> None:
    """Evaluate the geometric midpoint of every grid interval before a method's first precision
    break where an end loses more than half of ``max_bits``: a loss error can peak between two
    grid points (log1p in float16 with 32000 classes, where each exp term underflows while their
    sum does not, loses 6 bits for scales 16..18.6 only)."""
    want: dict[float, set[str]] = {}
    for m, stats in grid.items():
        b = brackets.get((m, "precision"))
        last = len(scales) - 1 if b is None else scales.index(b[1]) - 1  # type: ignore[arg-type]
        for i in range(max(last, 0)):
            e0 = stats[i].loss_max_excess_bits or 0.0
            e1 = stats[i + 1].loss_max_excess_bits or 0.0
            if max(e0, e1) > prob.max_bits / 2:
                want.setdefault(math.sqrt(scales[i] * scales[i + 1]), set()).add(m)
    batches: dict[tuple[str, ...], list[float]] = {}
    for p, methods in want.items():
        batches.setdefault(tuple(x for x in grid if x in methods), []).append(p)
    for methods_t, pts in batches.items():
        ordered = sorted(pts)
        measured = measure(prob, ordered, methods_t, with_ref=True)
        for m in methods_t:
            for p, st in zip(ordered, measured[m], strict=True):
                cache[(m, p)] = st


def _rebracket(
    brackets: dict[tuple[str, str], list[float | None]],
    never: list[tuple[str, str]],
    cache: dict[tuple[str, float], ScaleStats],
    max_bits: float,
) -> bool:
    """Move each break down to the smallest evaluated scale where its kind shows (bracketed by
    the evaluated scale just below it); True if any moved."""
    moved = False
    keys = list(brackets) + list(never)
    for m, kind in keys:
        hi = brackets[(m, kind)][1] if (m, kind) in brackets else math.inf
        assert hi is not None
        seen = sorted(
            (sc, st)
            for (mm, sc), st in cache.items()
            if mm == m and sc < hi and (st.has_ref or kind != "precision")
        )
        first = next((i for i, (_, st) in enumerate(seen) if is_broken(st, kind, max_bits)), None)
        if first is None:
            continue
        brackets[(m, kind)] = [seen[first - 1][0] if first else None, seen[first][0]]
        if (m, kind) in never:
            never.remove((m, kind))
        moved = True
    return moved
