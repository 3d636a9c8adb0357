"""``module:function`` or ``path/to/file.py:function`` -> the kernel (the CLI's TARGET)."""

from __future__ import annotations

from ._base import KernelFn, UsageError, _one_line

__all__ = ["load_target", "target_files"]


def load_target(target: str) -> KernelFn:
    """``module:function`` or ``path/to/file.py:function`` -> the function (imported as the
    user's own code, as pytest imports a test file: its directory first on ``sys.path``).

    Raises :class:`UsageError` naming what is wrong (no ``:``, no such file, an import error
    with its one-line text, no such attribute, not callable).
    """
    import importlib.util
    import os
    import sys

    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(f"kernel target {target!r}: expected module:function or file.py:function")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = os.path.abspath(where)
            if not os.path.isfile(path):
                raise UsageError(f"kernel target {target!r}: no such file {where}")
            folder = os.path.dirname(path)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            mod_name = "smcheck_kernel_" + os.path.splitext(os.path.basename(path))[0]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise UsageError(f"kernel target {target!r}: cannot import {where}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except UsageError:
        raise
    except BaseException as exc:  # the user's module failing to import is a bad target
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"kernel target {target!r}: import failed: {_one_line(exc)}") from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise UsageError(f"kernel target {target!r}: {where} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UsageError(f"kernel target {target!r}: {attr} is not callable")
    return fn  # type: ignore[no-any-return]


def target_files(fn: KernelFn) -> tuple[str, ...]:
    """The files the kernel ``fn`` came from - its function's source file and its module's
    ``__file__`` - which ``--output`` must never replace (``smcheck kernel mykernels:ce -o
    mykernels.py`` would overwrite the user's code with a report). Empty for what has no file
    (a builtin, a C extension's function without a module file)."""
    import inspect
    import sys

    files: list[str] = []
    try:
        source = inspect.getsourcefile(inspect.unwrap(fn))
    except (TypeError, ValueError):  # a builtin, a callable object, a partial
        source = None
    if source:
        files.append(source)
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    module_file = getattr(module, "__file__", None)
    if isinstance(module_file, str) and module_file not in files:
        files.append(module_file)
    return tuple(files)
