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

An input whose shape, dtype or content differs from the baseline's is reported (a note, not a
failure: comparing the same check on new data is the point). Pure: dicts in, a
:class:`BaselineResult` out; :func:`input_identity` hashes arrays in bounded memory.
"""

from __future__ import annotations

import hashlib
import math
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
    "input_identity",
    "make_baseline",
    "render_result",
]

BASELINE_SCHEMA = "smcheck.baseline/1"
#: An error metric regresses when it grows by more than this factor.
DEFAULT_FACTOR = 2.0
#: Bytes hashed per step, so a memory-mapped input is never loaded whole.
_HASH_CHUNK = 16 * 2**20


@dataclass(frozen=True)
class Rules:
    """What to compare in a report schema: per-method counts, and errors with their floor.

    ``floors`` maps an error key to ``"ulp"`` (floor 1 ulp) or ``"eps"`` (floor eps(dtype)).
    """

    counts: tuple[str, ...]
    errors: dict[str, str]
    methods_key: str = "methods"


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
}


@dataclass(frozen=True)
class Regression:
    """One way the new run is worse: ``method``, the metric, before and after, affected rows."""

    method: str
    metric: str
    before: float | None
    after: float | None
    rows: tuple[int, ...] = ()

    def describe(self) -> str:
        """``fused: overflow_rows 0 -> 1 (rows 17)``."""
        if self.metric == "gate":
            return f"{self.method}: passed its gate in the baseline, fails now"
        text = f"{self.method}: {self.metric} {_num(self.before)} -> {_num(self.after)}"
        if self.rows:
            text += f" (row{'s' * (len(self.rows) > 1)} {', '.join(map(str, self.rows))})"
        return text


@dataclass(frozen=True)
class BaselineResult:
    """Regressions (fail), input differences and other notes (reported only)."""

    regressions: list[Regression] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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


def make_baseline(command: str, report: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """The baseline document for ``--write-baseline``."""
    return {"schema": BASELINE_SCHEMA, "command": command, "input": identity, "report": report}


def _check_baseline(baseline: Any, command: str, name: str) -> dict[str, Any]:
    if not isinstance(baseline, dict) or baseline.get("schema") != BASELINE_SCHEMA:
        raise InputError(f"{name}: not a smcheck baseline (expected schema {BASELINE_SCHEMA!r})")
    if baseline.get("command") != command:
        raise InputError(
            f"{name}: a baseline of 'smcheck {baseline.get('command')}', not of 'smcheck {command}'"
        )
    report = baseline.get("report")
    if not isinstance(report, dict) or report.get("schema") not in RULES:
        raise InputError(f"{name}: the baseline's report has no known schema")
    return baseline


def _identity_notes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    notes = []
    for key, what in (("shape", "shape"), ("dtype", "dtype")):
        if old.get(key) != new.get(key):
            notes.append(
                f"input {what} differs from the baseline's: {old.get(key)} -> {new.get(key)}"
            )
    if not notes and old.get("sha256") != new.get("sha256"):
        notes.append("input content differs from the baseline's (sha256)")
    if old.get("labels_sha256") != new.get("labels_sha256"):
        notes.append("labels differ from the baseline's")
    return notes


def _nonfinite_rows(report: dict[str, Any], method: str) -> set[int]:
    """Rows the report's worst-rows list shows as non-finite for ``method``."""
    rows = set()
    for entry in report.get("worst_rows") or []:
        info = (entry.get("methods") or {}).get(method) or {}
        if info.get("nonfinite"):
            rows.add(int(entry["row"]))
    return rows


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
    base = _check_baseline(baseline, command, name)
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
    old_methods = old.get(rules.methods_key) or {}
    new_methods = report.get(rules.methods_key) or {}
    for method in old_methods.keys() - new_methods.keys():
        notes.append(f"{method}: in the baseline, not run now")
    for method in new_methods.keys() - old_methods.keys():
        notes.append(f"{method}: not in the baseline (nothing to compare)")
    for method, now in new_methods.items():
        then = old_methods.get(method)
        if then is None:
            continue
        new_rows = tuple(sorted(_nonfinite_rows(report, method) - _nonfinite_rows(old, method)))
        for key in rules.counts:
            b, a = then.get(key), now.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and a > b:
                rows = new_rows if key != "underflow_rows" else ()
                regressions.append(Regression(method, key, b, a, rows))
        for key, kind in rules.errors.items():
            b, a = then.get(key), now.get(key)
            if not (isinstance(a, int | float) and isinstance(b, int | float)):
                continue
            if a > factor * b and a > _floor(kind, dtype) and math.isfinite(a):
                regressions.append(Regression(method, key, b, a))
        if then.get("gated") and now.get("gated") and then.get("ok") and not now.get("ok"):
            regressions.append(Regression(method, "gate", None, None))
    return BaselineResult(regressions, notes)


def render_result(result: BaselineResult, name: str, factor: float = DEFAULT_FACTOR) -> str:
    """A short text block for stderr: one line per regression, then the notes.

    >>> r = BaselineResult([Regression("fused", "overflow_rows", 0, 1, (17,))], ["x"])
    >>> print(render_result(r, "base.json"))
    smcheck: 1 regression against base.json:
      fused: overflow_rows 0 -> 1 (row 17)
      note: x
    """
    if result.ok:
        head = f"smcheck: no regression against {name} (errors may grow up to {factor:g}x)"
    else:
        n = len(result.regressions)
        head = f"smcheck: {n} regression{'s' * (n != 1)} against {name}:"
    lines = [head]
    lines += [f"  {r.describe()}" for r in result.regressions]
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)
