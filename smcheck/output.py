"""Atomic output files that can never clobber an input.

A report or an ``.npz`` of per-row errors is written to a temporary file in the destination's
directory and moved over the destination with :func:`os.replace` (atomic on POSIX and Windows
within one file system). A reader therefore sees the old file or the complete new one, never a
half-written one; on any error, or Ctrl-C, the temporary file is removed and the destination is
left as it was. Writing onto one of the inputs (the same file under another spelling, through a
symlink or a hard link) is refused with :class:`~smcheck.errors.InputError` before anything is
written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import InputError

__all__ = ["atomic_path", "check_not_input", "write_atomic"]


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: same inode when both exist, else same resolved path."""
    try:
        if os.path.samefile(a, b):  # catches hard links and symlinks
            return True
    except (OSError, ValueError):  # one does not exist yet (or a NUL byte in a path)
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_not_input(path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Raise :class:`InputError` if ``path`` is (the same file as) one of ``inputs``.

    ``-`` (stdin) among the inputs is skipped: it is not a file that can be overwritten.
    """
    dest = os.fspath(path)
    for given in inputs:
        src = os.fspath(given)
        if src == "-":
            continue
        if _same_file(dest, src):
            raise InputError(f"refusing to write {dest}: it is the input file {src}")


def _default_mode() -> int:
    """0o666 less the umask: the mode ``open(path, "w")`` would give a new file.

    mkstemp makes its file 0o600; without this an atomic write would quietly make reports
    private. The umask can only be read by setting it, so it is set back at once.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path`` atomically.

    The temporary file sits next to ``path`` (so the final rename stays on one file system) and
    ends with the same suffix (``np.savez`` would otherwise append ``.npz`` to it). If the body
    raises - KeyboardInterrupt included - the temporary file is removed and ``path`` is left
    untouched. Raises :class:`InputError` if ``path`` is one of ``inputs``, is a directory, or
    cannot be written.

    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("ok")
    >>> out.read_text()
    'ok'
    """
    dest = Path(os.fspath(path))
    check_not_input(dest, inputs)
    if dest.is_dir():
        raise InputError(f"cannot write {dest}: it is a directory")
    directory = dest.parent
    if not directory.is_dir():
        raise InputError(f"cannot write {dest}: directory {directory} does not exist")
    try:
        mode = dest.stat().st_mode & 0o7777 if dest.exists() else _default_mode()
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=directory
        )
    except OSError as exc:
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as exc:
        _remove(tmp)
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # already gone (the writer moved it) is fine
        tmp.unlink()


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes,
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Write ``data`` (str as UTF-8, or bytes) to ``path`` atomically; never onto an input.

    The bytes are flushed to disk before the rename, so after a crash ``path`` holds either the
    old contents or all of the new ones.

    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> write_atomic(out, '{"ok": true}\\n')
    >>> out.read_text()
    '{"ok": true}\\n'
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path, inputs=inputs) as tmp, open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
