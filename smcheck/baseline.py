"""Baselines: accept today's findings, fail only when a later run is worse.

A baseline file is a command's JSON report plus the identity of the input it was made from::

    {"schema": "smcheck.baseline/1", "command": "eval",
     "input": {"shape": [512, 1000], "dtype": "float32", "sha256": "...", "labels_sha256": ...},
     "report": { ...the command's --format json report... }}

:func:`compare` checks a new report against it, method by method, with the rules of the
report's schema (:data:`RULES`):

* a **count** (rows with overflow, NaN/inf loss, non-finite gradient...) that grows is a
  regression - the rows newly listed among the report's worst rows are named;
* an **error** (max loss error in ulps, max gradient error...) that grows by more than
  ``factor`` (default 2) *and* ends above a floor (1 ulp; eps of the working dtype for
  absolute and relative errors) is a regression - below the floor a change is rounding noise;
* a gated method that passed its gate and now fails is a regression.

What a "method" is depends on the command: eval's and gradcheck's methods, compare's ``loss``
and ``grad`` (their kernel's), and for compare a gated check (``loss-error``, ``nonfinite``...)
takes a method's place in the gate rule. ``sweep`` has no per-method numbers but break points:
a break that appears where the baseline had none, or moves to a smaller scale (beyond the
bisection's ``tol``), is a regression (:func:`sweep_breaks`).

An input whose shape, dtype or content differs from the baseline's is reported (a note, not a
failure: comparing the same check on new data is the point); sweep, which has no input file,
records its grid instead. Pure: dicts in, a :class:`BaselineResult` out;
:func:`input_identity` hashes arrays in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError
from .precisions import get_precision

__all__ = [
    "BASELINE_SCHEMA",
    "DEFAULT_FACTOR",
    "RULES",
    "BaselineResult",
    "Regression",
    "Rules",
    "compare",
    "check_baseline",
    "grid_identity",
    "input_identity",
    "load_identity",
    "make_baseline",
    "read_baseline",
    "render_result",
    "sweep_breaks",
]

BASELINE_SCHEMA = "smcheck.baseline/1"
#: An error metric regresses when it grows by more than this factor.
DEFAULT_FACTOR = 2.0
#: Bytes hashed per step, so a memory-mapped input is never loaded whole.
_HASH_CHUNK = 16 * 2**20
#: Largest baseline file read (a real one is a few kB to a few MB): ``/dev/zero`` or a 300 MB
#: file is refused after this many bytes instead of filling memory.
MAX_BASELINE_BYTES = 64 * 2**20
#: Longest integer literal accepted: counts and row ids, never hundreds of digits.
_MAX_INT_DIGITS = 20

Report = dict[str, Any]


def _eval_units(report: Report) -> dict[str, dict[str, Any]]:
    return dict(report.get("methods") or {})


def _eval_rows(report: Report, method: str, key: str) -> set[int]:
    """Rows eval's worst-rows list shows as non-finite for ``method`` (not for underflow)."""
    if key == "underflow_rows":
        return set()
    rows = set()
    for entry in report.get("worst_rows") or []:
        info = (entry.get("methods") or {}).get(method) or {}
        if info.get("nonfinite"):
            rows.add(int(entry["row"]))
    return rows


def _method_gates(ok_key: str) -> Callable[[Report], dict[str, bool]]:
    def gates(report: Report) -> dict[str, bool]:
        methods = report.get("methods") or {}
        return {m: bool(v.get(ok_key)) for m, v in methods.items() if v.get("gated")}

    return gates


def _gradcheck_rows(report: Report, method: str, key: str) -> set[int]:
    """Rows of gradcheck's worst derivatives that are NaN/inf for ``method``."""
    if key not in ("nonfinite_grad_rows", "nonfinite_entries"):
        return set()
    return {
        int(w["row"])
        for w in report.get("worst") or []
        if w.get("method") == method and w.get("nonfinite")
    }


#: compare: what is compared of their loss and of their gradient. The loss error is the gated
#: one, in ulps of max(|L*|, 1): ulps at L* itself swing wildly on a confident row's tiny loss.
_COMPARE_KEYS = {
    "loss": ("nonfinite_rows", "ref_nonfinite_rows", "ignored_nonzero_rows", "max_gate_ulp_err"),
    "grad": ("nonfinite_rows", "ref_nonfinite_rows", "ignored_nonzero_rows", "max_abs_err"),
}


def _compare_units(report: Report) -> dict[str, dict[str, Any]]:
    return {
        unit: {k: report[unit].get(k) for k in keys}
        for unit, keys in _COMPARE_KEYS.items()
        if isinstance(report.get(unit), dict)
    }


def _compare_rows(report: Report, unit: str, key: str) -> set[int]:
    """compare lists the first row ids of each finding: ``nonfinite_rows`` -> ``..._row_ids``."""
    ids = (report.get(unit) or {}).get(key.removesuffix("rows") + "row_ids") or []
    return {int(i) for i in ids}


def _compare_gates(report: Report) -> dict[str, bool]:
    return {c["name"]: bool(c.get("ok")) for c in report.get("checks") or [] if c.get("gated")}


def _no_units(report: Report) -> dict[str, dict[str, Any]]:
    return {}


def _no_gates(report: Report) -> dict[str, bool]:
    return {}


def _no_rows(report: Report, unit: str, key: str) -> set[int]:
    return set()


def _break_key(b: dict[str, Any]) -> tuple[str, int, str, str, str]:
    return (b["dtype"], b["classes"], b["case"], b["method"], b["kind"])


def sweep_breaks(old: Report, new: Report) -> tuple[list[Regression], list[str]]:
    """Break points of a sweep that appear or move to a smaller scale; notes on the rest.

    Breaks are bisected until ``scale / scale_lo <= 1 + tol``, so the same break point found
    twice lies within that ratio: only ``after < before / (1 + tol)`` is a move.

    >>> b = {"dtype": "float16", "classes": 10, "case": "margin", "method": "naive",
    ...      "kind": "overflow", "scale": 100.0}
    >>> old = {"config": {"tol": 0.01}, "breaks": [b]}
    >>> new = {"config": {"tol": 0.01}, "breaks": [{**b, "scale": 11.134}]}
    >>> print(sweep_breaks(old, new)[0][0].describe())
    naive: overflow in float16, C=10, case margin from scale 11.1 (baseline: 100)
    """
    tol = max(float((r.get("config") or {}).get("tol") or 0.0) for r in (old, new))
    before = {_break_key(b): b.get("scale") for b in old.get("breaks") or []}
    old_scales = [float(v) for v in (old.get("config") or {}).get("scales") or []]
    reach = max(old_scales, default=math.inf)  # the baseline looked no further than this
    regressions, missing, added, beyond = [], 0, 0, 0
    for b in new.get("breaks") or []:
        key = _break_key(b)
        now = b.get("scale")
        if key not in before:
            added += now is not None
            continue
        then = before[key]
        if now is None or (then is not None and now >= then / (1 + tol)):
            continue
        if then is None and now > reach * (1 + tol):  # beyond the baseline's range: unknown
            beyond += 1
            continue
        dtype, classes, case, method, kind = key
        where = f"{kind} in {dtype}, C={classes}, case {case} from scale {_num(now)}"
        was = "never in the baseline's range" if then is None else f"baseline: {_num(then)}"
        regressions.append(Regression(method, kind, then, now, detail=f"{where} ({was})"))
    missing = len(before.keys() - {_break_key(b) for b in new.get("breaks") or []})
    notes = []
    if missing:
        notes.append(f"{missing} break points of the baseline's grid not swept now")
    if added:
        notes.append(f"{added} breaks in cells the baseline did not sweep (nothing to compare)")
    if beyond:
        notes.append(
            f"{beyond} breaks above the baseline's largest scale {_num(reach)} (not compared)"
        )
    return regressions, notes


@dataclass(frozen=True)
class Rules:
    """What to compare in a report schema.

    ``units`` picks the report's methods (name -> flat dict of numbers); ``counts`` and
    ``errors`` are keys of those dicts (``errors`` maps a key to ``"ulp"``, floor 1 ulp, or
    ``"eps"``, floor eps(dtype)); ``rows(report, method, count_key)`` names the rows behind a
    count; ``gates`` gives each gated name and whether it passed; ``extra(old, new)`` adds a
    command's own regressions and notes (sweep's break points).
    """

    counts: tuple[str, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    units: Callable[[Report], dict[str, dict[str, Any]]] = _eval_units
    rows: Callable[[Report, str, str], set[int]] = _eval_rows
    gates: Callable[[Report], dict[str, bool]] = _method_gates("ok")
    extra: Callable[[Report, Report], tuple[list[Regression], list[str]]] | None = None


#: Comparison rules by report schema (a command's ``--format json`` ``"schema"`` field).
RULES: dict[str, Rules] = {
    "smcheck.eval/1": Rules(
        counts=(
            "overflow_rows",
            "nan_loss_rows",
            "inf_loss_rows",
            "nonfinite_grad_rows",
            "underflow_rows",
        ),
        errors={
            "loss_max_ulp_err": "ulp",
            "loss_p99_ulp_err": "ulp",
            "grad_max_abs_err": "eps",
            "mean_loss_rel_err": "eps",
        },
    ),
    # relative errors and bits are left out: a gradient entry near 0 makes them noise
    "smcheck.gradcheck/1": Rules(
        counts=("nonfinite_grad_rows", "nonfinite_entries", "failed_entries", "failed_directions"),
        errors={"max_abs_err": "eps", "max_ulp_err": "ulp", "max_dir_err": "eps"},
        rows=_gradcheck_rows,
        gates=_method_gates("passed"),
    ),
    "smcheck.compare/1": Rules(
        counts=("nonfinite_rows", "ref_nonfinite_rows", "ignored_nonzero_rows"),
        errors={"max_gate_ulp_err": "ulp", "max_abs_err": "eps"},
        units=_compare_units,
        rows=_compare_rows,
        gates=_compare_gates,
    ),
    "smcheck.sweep/1": Rules(units=_no_units, rows=_no_rows, gates=_no_gates, extra=sweep_breaks),
}


@dataclass(frozen=True)
class Regression:
    """One way the new run is worse: ``method``, the metric, before and after, affected rows.

    ``detail``, when given, is the whole description after ``method:`` (sweep's break points).
    """

    method: str
    metric: str
    before: float | None
    after: float | None
    rows: tuple[int, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        """``fused: overflow_rows 0 -> 1 (rows 17)``."""
        if self.detail:
            return f"{self.method}: {self.detail}"
        if self.metric == "gate":
            return f"{self.method}: passed its gate in the baseline, fails now"
        text = f"{self.method}: {self.metric} {_num(self.before)} -> {_num(self.after)}"
        if self.rows:
            text += f" (row{'s' * (len(self.rows) > 1)} {', '.join(map(str, self.rows))})"
        return text


@dataclass(frozen=True)
class BaselineResult:
    """Regressions (fail), input differences and other notes (reported only);
    ``errors_compared``: whether error metrics (and so the factor) took part."""

    regressions: list[Regression] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors_compared: bool = True

    @property
    def ok(self) -> bool:
        """True when nothing got worse."""
        return not self.regressions


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int) or float(x).is_integer():
        return str(int(x))
    return f"{x:.3g}"


def input_identity(logits: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Shape, dtype and SHA-256 of the logits (and labels): what a baseline was made from.

    Rows are hashed in slices of about 16 MiB, so a memory-mapped file is read, never held.

    >>> ident = input_identity(np.zeros((2, 3), np.float32))
    >>> ident["shape"], ident["dtype"], ident["sha256"] == hashlib.sha256(bytes(24)).hexdigest()
    ([2, 3], 'float32', True)
    """
    x = np.asarray(logits)

    def digest(a: np.ndarray) -> str:
        h = hashlib.sha256()
        flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
        step = max(1, _HASH_CHUNK // max(1, flat.shape[1] * a.itemsize))
        for start in range(0, flat.shape[0], step):
            h.update(np.ascontiguousarray(flat[start : start + step]).tobytes())
        return h.hexdigest()

    out: dict[str, Any] = {
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "sha256": digest(x),
    }
    if labels is not None:
        out["labels_sha256"] = digest(np.asarray(labels))
    return out


def load_identity(logits: str, labels: str | None = None, **load: Any) -> dict[str, Any]:
    """:func:`input_identity` of files, read again with :func:`smcheck.loading.load_input`
    (``load``: its keyword arguments) - for a command whose analysis loads them itself.

    Standard input cannot be read twice: ``-`` gives an identity without shape or hash.
    """
    if "-" in (logits, labels):
        return {"source": "stdin"}
    from .loading import load_input

    got = load_input(logits, labels, **load)
    return input_identity(got.logits, got.labels)


def grid_identity(report: Report) -> dict[str, Any]:
    """sweep's identity: its grid (``config`` of the report), as it has no input file."""
    return {"grid": report.get("config")}


def make_baseline(command: str, report: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """The baseline document for ``--write-baseline``."""
    return {"schema": BASELINE_SCHEMA, "command": command, "input": identity, "report": report}


def _short(value: Any, limit: int = 40) -> str:
    """A value for a one-line message: JSON-ish, cut at ``limit`` characters with "…"."""
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(value: Any) -> str:
    """A value for a note as before (``float32``, ``[512, 1000]``) when short and printable;
    else :func:`_short` (a hostile baseline's megabyte-long shape or escape sequences)."""
    text = str(value)
    return text if len(text) <= 40 and text.isprintable() else _short(value)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise InputError(f"an integer of {len(text)} digits")
    return int(text)


def _parse_constant(text: str) -> float:
    raise InputError(f"{text} (baselines hold finite numbers only)")


def read_baseline(path: str, limit: int = MAX_BASELINE_BYTES) -> Any:
    """The JSON document in ``path``, read in bounded memory; :class:`InputError` naming the
    file for anything that is not plain JSON of reasonable size and depth.

    At most ``limit`` bytes are read (``/dev/zero`` stops there), integers of more than 20
    digits and ``NaN``/``Infinity`` are refused (``--write-baseline`` never writes them), and
    nesting too deep for the parser is an error, not a crash.
    """
    from .output import _name

    where = _name(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{where}: baseline file does not exist") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot read the baseline ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise InputError(
            f"{where}: baseline larger than {limit // 2**20} MiB (not a smcheck baseline)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 (byte {exc.start}), not a JSON baseline") from None
    try:
        return json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{where}: not a JSON baseline (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise InputError(f"{where}: not a smcheck baseline (JSON nested too deeply)") from None
    except InputError as exc:
        raise InputError(f"{where}: not a smcheck baseline ({exc})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_report(report: dict[str, Any], name: str) -> None:
    """Every number :func:`compare` reads is a number: a baseline whose counts were replaced by
    strings, null or lists would otherwise compare as "no regression"."""
    rules = RULES[report["schema"]]
    where = f"{name}: not a valid smcheck baseline"
    try:
        units = rules.units(report)
    except (AttributeError, TypeError, KeyError, ValueError):
        raise InputError(f"{where}: its report's methods are malformed") from None
    for unit, values in units.items():
        if not isinstance(values, dict):
            raise InputError(f"{where}: {_short(unit)} is {_short(values)}, not a table")
        for key in rules.counts:
            v = values.get(key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise InputError(f"{where}: {_short(unit)} {key} is {_short(v)}, not a count")
        for key in rules.errors:
            v = values.get(key)
            if v is not None and not _is_number(v):
                raise InputError(f"{where}: {_short(unit)} {key} is {_short(v)}, not a number")
    # a gate's verdict must be true/false: a null "ok" would read as "failed already", so a
    # newly failing gate would not count as a regression
    flags: list[tuple[str, Any]] = []
    if rules.units is _eval_units:
        ok_key = "passed" if report["schema"] == "smcheck.gradcheck/1" else "ok"
        flags = [
            (f"{_short(m)} {k}", v.get(k))
            for m, v in (report.get("methods") or {}).items()
            for k in ("gated", ok_key)
        ]
    elif report["schema"] == "smcheck.compare/1":
        checks = report.get("checks") or []
        if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
            raise InputError(f"{where}: 'checks' is {_short(checks)}, not a list of checks")
        flags = [
            (f"check {_short(c.get('name'))} {k}", c.get(k))
            for c in checks
            for k in ("gated", "ok")
        ]
    for what, v in flags:
        if not isinstance(v, bool):
            raise InputError(f"{where}: {what} is {_short(v)}, not true/false")
    if rules.extra is sweep_breaks:
        breaks = report.get("breaks")
        if not isinstance(breaks, list):
            raise InputError(f"{where}: 'breaks' is {_short(breaks)}, not a list")
        for b in breaks:
            ok = isinstance(b, dict) and all(
                isinstance(b.get(k), str) for k in ("dtype", "case", "method", "kind")
            )
            ok = ok and isinstance(b.get("classes"), int) and not isinstance(b["classes"], bool)
            if not ok or not (b.get("scale") is None or _is_number(b.get("scale"))):
                raise InputError(f"{where}: a break point is {_short(b)}")


def check_baseline(baseline: Any, command: str, name: str) -> dict[str, Any]:
    """``baseline`` if it is a baseline of ``command``; else :class:`InputError` naming ``name``.

    >>> check_baseline({"schema": "smcheck.baseline/1", "command": "eval", "report": {
    ...     "schema": "smcheck.eval/1", "methods": {"fused": {"overflow_rows": "0"}}}},
    ...     "eval", "b.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    smcheck.errors.InputError: b.json: not a valid ...: 'fused' overflow_rows is '0', not a count
    """
    if not isinstance(baseline, dict) or baseline.get("schema") != BASELINE_SCHEMA:
        raise InputError(f"{name}: not a smcheck baseline (expected schema {BASELINE_SCHEMA!r})")
    if baseline.get("command") != command:
        other = baseline.get("command")
        other = other if isinstance(other, str) and other.isidentifier() else _short(other)
        raise InputError(f"{name}: a baseline of 'smcheck {other}', not of 'smcheck {command}'")
    report = baseline.get("report")
    if not isinstance(report, dict) or report.get("schema") not in RULES:
        raise InputError(f"{name}: the baseline's report has no known schema")
    _check_report(report, name)
    if not isinstance(baseline.get("input", {}), dict):
        raise InputError(f"{name}: not a valid smcheck baseline: 'input' is not a table")
    return baseline


def _identity_notes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    notes = []
    for key, what in (("shape", "shape"), ("dtype", "dtype")):
        if old.get(key) != new.get(key):
            notes.append(
                f"input {what} differs from the baseline's: {_plain(old.get(key))} -> "
                f"{_plain(new.get(key))}"
            )
    if not notes and old.get("sha256") != new.get("sha256"):
        notes.append("input content differs from the baseline's (sha256)")
    if old.get("labels_sha256") != new.get("labels_sha256"):
        notes.append("labels differ from the baseline's")
    old_grid, new_grid = old.get("grid") or {}, new.get("grid") or {}
    if not isinstance(old_grid, dict):
        old_grid = {"grid": old_grid}
    notes += [
        f"grid differs from the baseline's: {_plain(key)} {_plain(old_grid.get(key))} -> "
        f"{_plain(new_grid.get(key))}"
        for key in dict.fromkeys([*old_grid, *new_grid])
        if old_grid.get(key) != new_grid.get(key)
    ]
    return notes


def _floor(kind: str, dtype: str | None) -> float:
    if kind == "ulp":
        return 1.0
    try:
        return get_precision(dtype).eps if dtype else 0.0
    except ValueError:  # a dtype this version does not know: no floor
        return 0.0


def compare(
    baseline: dict[str, Any],
    report: dict[str, Any],
    identity: dict[str, Any],
    *,
    command: str,
    factor: float = DEFAULT_FACTOR,
    name: str = "baseline",
) -> BaselineResult:
    """Regressions of ``report`` against ``baseline`` (see the module docstring).

    ``name`` (the file) is used in the :class:`InputError` raised for a file that is not a
    baseline of ``command``.
    """
    base = check_baseline(baseline, command, name)
    old = base["report"]
    if report.get("schema") != old.get("schema"):
        raise InputError(
            f"{name}: report schema {old.get('schema')!r}, this run writes {report.get('schema')!r}"
        )
    rules = RULES[old["schema"]]
    notes = _identity_notes(base.get("input") or {}, identity)
    dtype = (report.get("input") or {}).get("dtype")
    if dtype != (old.get("input") or {}).get("dtype"):
        notes.append(f"working dtype differs: {(old.get('input') or {}).get('dtype')} -> {dtype}")
    regressions: list[Regression] = []
    old_methods = rules.units(old)
    new_methods = rules.units(report)
    gone = sorted(old_methods.keys() - new_methods.keys())
    notes += [f"{_plain(m)}: in the baseline, not run now" for m in gone[:10]]
    if len(gone) > 10:
        notes.append(f"... and {len(gone) - 10} more methods in the baseline, not run now")
    for method in new_methods.keys() - old_methods.keys():
        notes.append(f"{method}: not in the baseline (nothing to compare)")
    for method, now in new_methods.items():
        then = old_methods.get(method)
        if then is None:
            continue
        for key in rules.counts:
            b, a = then.get(key), now.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and a > b:
                rows = rules.rows(report, method, key) - rules.rows(old, method, key)
                regressions.append(Regression(method, key, b, a, tuple(sorted(rows))))
        for key, kind in rules.errors.items():
            b, a = then.get(key), now.get(key)
            if not (isinstance(a, int | float) and isinstance(b, int | float)):
                continue
            if a > factor * b and a > _floor(kind, dtype) and math.isfinite(a):
                regressions.append(Regression(method, key, b, a))
    old_gates, new_gates = rules.gates(old), rules.gates(report)
    known = old_methods.keys() | old_gates.keys()
    known |= {str(c.get("name")) for c in old.get("checks") or [] if isinstance(c, dict)}
    missing = sorted(g for g in new_gates if g not in known)
    if missing:
        # nothing to compare a gated method with would read as "no regression": a baseline
        # with "methods": {} would pass any run
        raise InputError(
            f"{name}: has no result for {_plain(missing[0])}, which this run gates; write a "
            "new baseline with --write-baseline"
        )
    for gated, ok in new_gates.items():
        if old_gates.get(gated) and not ok:
            regressions.append(Regression(gated, "gate", None, None))
    if rules.extra is not None:
        more, more_notes = rules.extra(old, report)
        regressions += more
        notes += more_notes
    return BaselineResult(regressions, notes, bool(rules.errors))


def render_result(result: BaselineResult, name: str, factor: float = DEFAULT_FACTOR) -> str:
    """A short text block for stderr: one line per regression, then the notes.

    >>> r = BaselineResult([Regression("fused", "overflow_rows", 0, 1, (17,))], ["x"])
    >>> print(render_result(r, "base.json"))
    smcheck: 1 regression against base.json:
      fused: overflow_rows 0 -> 1 (row 17)
      note: x
    """
    if result.ok:
        head = f"smcheck: no regression against {name}"
        if result.errors_compared:
            head += f" (errors may grow up to {factor:g}x)"
    else:
        n = len(result.regressions)
        head = f"smcheck: {n} regression{'s' * (n != 1)} against {name}:"
    from .render.common import safe_text  # a baseline's names are data: shown escaped

    lines = [safe_text(head)]
    lines += [f"  {safe_text(r.describe())}" for r in result.regressions]
    lines += [f"  note: {safe_text(n)}" for n in result.notes]
    return "\n".join(lines)
