"""How an analysis takes its options: an options dataclass, or the same fields as keywords.

Every analysis has one frozen options class (:class:`~smcheck.evaluate.EvalOptions`,
:class:`~smcheck.gradcheck.GradcheckOptions`, :class:`~smcheck.compare.CompareOptions`) whose
field names are the CLI's flags and the config file's keys (``cast``, ``top``,
``max_loss_ulp``, ``workers``), so one concept has one name everywhere. The old keyword names
(``cast_mode``, ``top_k``, ``worst``, ``max_ulp``, ``memory``) still work for one release, with a
:class:`DeprecationWarning` naming the new one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import UsageError

__all__ = ["merge_options", "renamed_keywords"]

T = TypeVar("T")


def renamed_keywords(
    fields: Mapping[str, Any], renamed: Mapping[str, str], where: str, stacklevel: int = 3
) -> dict[str, Any]:
    """``fields`` with each deprecated name of ``renamed`` (old -> new) moved to its new name.

    Warns once per old name used (``stacklevel`` 3: the caller of the function that called
    this); both names at once is a :class:`UsageError`.
    """
    out = dict(fields)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise UsageError(f"{where}: {old}= is the deprecated name of {new}=; give only {new}=")
        warnings.warn(
            f"{where}({old}=...) is deprecated and will be removed in the next release; use "
            f"{new}=...",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        out[new] = out.pop(old)
    return out


def merge_options(
    cls: type[T],
    options: T | None,
    fields: Mapping[str, Any],
    renamed: Mapping[str, str],
    where: str,
) -> T:
    """``options`` (default ``cls()``) with ``fields`` replaced; deprecated names warn.

    An unknown keyword is a :class:`TypeError`, as for any Python function.

    >>> @dataclasses.dataclass(frozen=True)
    ... class Opts:
    ...     top: int = 10
    >>> merge_options(Opts, None, {"top": 3}, {"top_k": "top"}, "f")
    Opts(top=3)
    """
    given = renamed_keywords(fields, renamed, where, stacklevel=4)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    if options is not None and not isinstance(options, cls):
        got = type(options).__name__
        raise TypeError(f"{where}(): options must be a {cls.__name__}, got {got}")
    base = cls() if options is None else options
    return dataclasses.replace(base, **given) if given else base  # type: ignore[type-var]
