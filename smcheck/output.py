"""Output files that never destroy anything: not an input, not a device, not a symlink.

Where a report, a per-row table or a baseline goes decides how it is written:

* a **new path or a regular file** is replaced atomically: the bytes go to a temporary file in
  the destination's directory, are flushed and fsync'ed, and only then is the temporary file
  moved over the destination with :func:`os.replace` (atomic within one file system). A reader
  sees the old file or the complete new one, never a half-written one; the old file's mode
  (and, as root, its owner) is kept;
* a **symlink** is followed: its target is written as above, the link itself stays;
* a **character device, FIFO or socket** (``-o /dev/null``, ``-o >(gzip > r.gz)``, a log
  collector's socket) is written to directly: replacing it would turn ``/dev/null`` into a
  regular file for every other program on the machine. A FIFO is opened non-blocking, so a FIFO
  nobody reads is an error ("no process is reading it"), not a hang; once open it blocks as
  usual while the reader is slow;
* a **file descriptor link** (``/dev/stdout``, ``/dev/fd/N``, ``/proc/PID/fd/N``, or the very
  file stdout or stderr is redirected to) is written through the descriptor, never replaced:
  ``-o /dev/stdout >> log.txt`` appends to the log instead of renaming a new file over it;
* a directory or a block device is refused.

Writing onto an input - the same file (same device and inode: another spelling, a symlink, a
hard link) or anything inside an input directory (a zarr store) - is refused with
:class:`~smcheck.errors.InputError` before anything is written. On any error (a full disk, a
closed FIFO) or interruption (Ctrl-C, SIGTERM) the temporary file is removed, the destination is
left as it was, and the error is one line: ``no space left on device writing r.csv``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import InputError, UsageError

if TYPE_CHECKING:
    from .engine import PerRowBlock

__all__ = [
    "PerRowWriter",
    "atomic_path",
    "check_distinct",
    "check_not_input",
    "live_temp_files",
    "open_output",
    "write_atomic",
]

PathLike = str | os.PathLike[str]

#: Temporary files being written right now (removed on error, interruption or exit).
_LIVE: set[str] = set()


def live_temp_files() -> frozenset[str]:
    """The temporary output files that exist right now (for a signal handler's last cleanup)."""
    return frozenset(_LIVE)


def _name(path: PathLike) -> str:
    """A path for a one-line message: control characters and undecodable bytes escaped."""
    text = os.fspath(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _why(exc: OSError) -> str:
    """``No space left on device`` -> ``no space left on device``: the strerror as a phrase."""
    text = exc.strerror or type(exc).__name__
    return text[:1].lower() + text[1:]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _ancestors(path: str) -> Iterator[tuple[int, int]]:
    """Identities of ``path`` (if it exists) and of every directory above its real location."""
    real = Path(os.path.realpath(path))
    for p in (real, *real.parents):
        ident = _identity(str(p))
        if ident is not None:
            yield ident


def check_not_input(path: PathLike, inputs: Sequence[PathLike | None]) -> None:
    """Raise :class:`InputError` if ``path`` is one of ``inputs`` or lies inside one.

    Files are compared by identity (device and inode: symlinks, hard links and other spellings
    are caught); an input directory (a zarr store) covers everything under it. ``-`` (stdin)
    and None are skipped.
    """
    dest = os.fspath(path)
    inside = set(_ancestors(dest))
    for given in inputs:
        if given is None:
            continue
        src = os.fspath(given)
        if src == "-" or not src:
            continue
        ident = _identity(src)
        same = ident is not None and ident == _identity(dest)
        if same or os.path.realpath(dest) == os.path.realpath(src):
            raise InputError(f"refusing to write {_name(dest)}: it is the input file {_name(src)}")
        if ident is not None and ident in inside:
            raise InputError(
                f"refusing to write {_name(dest)}: it is inside the input {_name(src)}"
            )


def check_distinct(outputs: Mapping[str, PathLike | None]) -> None:
    """Raise :class:`UsageError` if two outputs (option -> path) are the same file.

    ``-o r.csv --per-row r.csv`` would write the report over the per-row table. A character
    device or FIFO named twice (``/dev/null``) loses nothing and is allowed.
    """
    seen: dict[tuple[Any, ...], str] = {}
    for option, given in outputs.items():
        if given is None or os.fspath(given) in ("", "-"):
            continue
        path = os.fspath(given)
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            st = None
        if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            continue
        key: tuple[Any, ...] = (
            (st.st_dev, st.st_ino) if st is not None else ("path", os.path.realpath(path))
        )
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} are the same file: {_name(path)}")
        seen[key] = option


def _default_mode() -> int:
    """0o666 less the umask: the mode ``open(path, "w")`` would give a new file.

    mkstemp makes its file 0o600; without this an atomic write would quietly make reports
    private. The umask can only be read by setting it, so it is set back at once.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _euid() -> int:
    """The effective user id (-1 where there is none: Windows)."""
    geteuid = getattr(os, "geteuid", None)
    return geteuid() if geteuid is not None else -1


def _check_link(dest: str) -> None:
    """Refuse a symlink planted by another user in a sticky world-writable directory (/tmp).

    The kernel's ``fs.protected_symlinks`` stops ``open`` from following such a link, but an
    atomic replace renames onto the resolved target and would bypass it: as root,
    ``-o /tmp/report.txt`` would replace whatever a stranger's link points at. Same rule as the
    kernel: the link must belong to us or to the directory's owner.
    """
    try:
        link = os.lstat(dest)
        if not stat.S_ISLNK(link.st_mode):
            return
        parent = os.stat(os.path.dirname(os.path.abspath(dest)))
    except (OSError, ValueError):
        return
    shared = parent.st_mode & stat.S_IWOTH and parent.st_mode & stat.S_ISVTX
    if shared and link.st_uid not in (_euid(), parent.st_uid):
        raise InputError(
            f"refusing to write {_name(dest)}: a symlink of another user (uid {link.st_uid}) "
            "in a world-writable directory"
        )


_FD_LINK = re.compile(
    r"^/(?:dev/(?:stdin|stdout|stderr|fd/\d+)|proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd/\d+)$"
)


def _fd_number(path: str) -> int | None:
    """``/dev/stdout`` -> 1, ``/dev/fd/3`` or ``/proc/self/fd/3`` -> 3: a descriptor of *this*
    process; None for anything else (another process's descriptor included)."""
    names = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    if path in names:
        return names[path]
    m = re.match(r"^/(?:dev|proc/(?:self|thread-self|(\d+))(?:/task/\d+)?)/fd/(\d+)$", path)
    if m is None or (m.group(1) is not None and int(m.group(1)) != os.getpid()):
        return None
    return int(m.group(2))


def _descriptor(dest: str) -> tuple[int | None, str] | None:
    """If ``dest`` is, or resolves through, a file descriptor link (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/PID/fd/N``) or is the very file of stdout/stderr: (our descriptor
    number or None, the link to open); else None.

    Such a path must be written through the descriptor, never replaced: ``-o /dev/stdout >>
    log.txt`` resolves to ``log.txt``, and an atomic replace would put a new file in its place
    and lose everything the log held before.
    """
    hop = os.path.abspath(dest)
    for _ in range(40):  # the kernel's own limit on a chain of links
        if _FD_LINK.match(hop):
            return _fd_number(hop), hop
        try:
            target = os.readlink(hop)
        except (OSError, ValueError):
            break
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), target))
    ident = _identity(dest)
    if ident is not None:
        for fd in (1, 2):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == ident:
                return fd, dest
    return None


def _open_descriptor(fd: int | None, link: str, dest: str) -> IO[bytes]:
    """Our descriptor ``fd`` duplicated (same offset, same append mode as the shell set), or
    another process's descriptor opened through its ``/proc`` link: appending to a regular
    file (a fresh open starts at offset 0 and would overwrite what it holds)."""
    try:
        if fd is not None:
            return os.fdopen(os.dup(fd), "wb")
        st = os.stat(link)
        if not stat.S_ISREG(st.st_mode):
            return _open_direct(link, st, dest)
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        return os.fdopen(os.open(link, flags), "wb")
    except OSError as exc:
        raise InputError(f"cannot write {_name(dest)}: {_why(exc)}") from None


def _destination(
    path: PathLike, inputs: Sequence[PathLike | None]
) -> tuple[str, tuple[int | None, str] | None, str, os.stat_result | None]:
    """``path`` checked against the inputs, then resolved: (the name given, the descriptor to
    write through or None, where the bytes go, its stat if it exists) - see :func:`_descriptor`
    and :func:`_target`."""
    dest = os.fspath(path)
    check_not_input(dest, inputs)
    via = _descriptor(dest)
    real, st = _target(dest) if via is None else (dest, None)
    return dest, via, real, st


def _target(dest: str) -> tuple[str, os.stat_result | None]:
    """Where the bytes go: the symlink's final target (or the path), and its stat if it exists.

    A device, FIFO or socket keeps the name given: the kernel follows ``/dev/fd/63`` (bash's
    ``>(...)``) to its pipe, where :func:`os.path.realpath` would give a name that is not a
    path. Raises :class:`InputError` for a directory, a block device or a missing directory.
    """
    _check_link(dest)
    try:
        st: os.stat_result | None = os.stat(dest)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise InputError(f"cannot write {_name(dest)}: {_why(exc)}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"cannot write {_name(dest)}: it is a directory")
        if stat.S_ISBLK(st.st_mode):
            raise InputError(f"refusing to write {_name(dest)}: it is a block device")
        if not stat.S_ISREG(st.st_mode):
            return dest, st
    real = os.path.realpath(dest)  # follows every link; a dangling one gives its target
    for kernel in ("/proc", "/sys"):
        if real == kernel or real.startswith(kernel + "/"):
            # no temporary file can be made there ("no such file or directory" said nothing
            # useful) and writing one of its files changes the kernel, not a report
            raise InputError(
                f"refusing to write {_name(dest)}: it is a kernel interface file in {kernel}, "
                "not a file for a report"
            )
    if st is not None:
        return real, st
    directory = os.path.dirname(real) or "."
    if not os.path.isdir(directory):
        raise InputError(f"cannot write {_name(dest)}: directory {_name(directory)} does not exist")
    return real, None


def _open_direct(real: str, st: os.stat_result, dest: str) -> IO[bytes]:
    """A character device, FIFO or socket, opened for writing without creating anything."""
    mode = st.st_mode
    try:
        if stat.S_ISSOCK(mode):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(real)
            except OSError:
                sock.close()
                raise
            fh = sock.makefile("wb")
            sock.close()  # the file holds the connection; closing it closes the socket
            return fh
        flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
        if stat.S_ISFIFO(mode):
            # non-blocking open: ENXIO at once when no process has the FIFO open for reading,
            # where a plain open would wait forever; then back to blocking writes
            fd = os.open(real, flags | os.O_NONBLOCK)
            os.set_blocking(fd, True)
        elif stat.S_ISCHR(mode):
            fd = os.open(real, flags)
        else:
            raise InputError(f"refusing to write {_name(dest)}: not a regular file")
        return os.fdopen(fd, "wb")
    except OSError as exc:
        if exc.errno == errno.ENXIO and stat.S_ISFIFO(mode):
            raise InputError(
                f"cannot write {_name(dest)}: it is a FIFO and no process is reading it"
            ) from None
        raise InputError(f"cannot write {_name(dest)}: {_why(exc)}") from None


@contextlib.contextmanager
def open_output(path: PathLike, *, inputs: Sequence[PathLike | None] = ()) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through; committed only when the body finishes.

    A regular file or a new path gets a temporary file next to it that replaces it after the
    body, once every byte is flushed and fsync'ed; a device, FIFO or socket is written directly
    (see the module docstring). If the body raises - KeyboardInterrupt or a signal included -
    the temporary file is removed and ``path`` is left untouched. An :class:`OSError` (a full
    disk) becomes :class:`InputError` naming ``path``.

    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.txt"
    >>> with open_output(out) as f:
    ...     _ = f.write(b"ok")
    >>> out.read_text()
    'ok'
    """
    dest, via, real, st = _destination(path, inputs)
    if via is not None or (st is not None and not stat.S_ISREG(st.st_mode)):
        if via is not None:
            fh = _open_descriptor(*via, dest)
        else:
            assert st is not None
            fh = _open_direct(real, st, dest)
        try:
            yield fh
            fh.flush()
        except OSError as exc:
            with contextlib.suppress(OSError):
                fh.close()
            raise InputError(f"{_why(exc)} writing {_name(dest)}") from None
        finally:
            with contextlib.suppress(OSError):
                fh.close()
        return
    directory, base = os.path.split(real)
    suffix = os.path.splitext(base)[1]
    fd, tmp = _make_temp(dest, f".{base}.", f".tmp{suffix}", directory or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _commit(tmp, real, st)
        _LIVE.discard(tmp)
    except OSError as exc:
        _remove(tmp)
        raise InputError(f"{_why(exc)} writing {_name(dest)}") from None
    except BaseException:
        _remove(tmp)
        raise


def _make_temp(dest: str, prefix: str, suffix: str, directory: str | None) -> tuple[int, str]:
    """Create a temporary file (0o600, O_EXCL) whose name is in :data:`_LIVE` *before* it
    exists: a signal handler may raise between any two statements, and a file created but not
    yet recorded would be left behind (masking signals does not help: another thread - an
    OpenBLAS worker - takes the signal and the main thread still runs the handler)."""
    where = directory or tempfile.gettempdir()
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        name = os.path.join(where, f"{prefix}{secrets.token_hex(4)}{suffix}")
        _LIVE.add(name)
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            _LIVE.discard(name)
        except OSError as exc:
            _LIVE.discard(name)
            raise InputError(f"cannot write {_name(dest)}: {_why(exc)}") from None
    raise InputError(f"cannot write {_name(dest)}: no free temporary file name in {_name(where)}")


def _commit(tmp: str, real: str, old: os.stat_result | None) -> None:
    if old is None:
        os.chmod(tmp, _default_mode())
    else:
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        if _euid() == 0 and (old.st_uid, old.st_gid) != (0, 0):
            # root rewriting a user's report: the file stays theirs
            with contextlib.suppress(OSError):
                os.chown(tmp, old.st_uid, old.st_gid)
    os.replace(tmp, real)


def _remove(tmp: str) -> None:
    with contextlib.suppress(OSError):  # already gone is fine
        os.unlink(tmp)
    _LIVE.discard(tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, inputs: Sequence[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary *path* for writers that want a file name; see :func:`open_output`.

    The temporary path ends with the destination's suffix (``np.savez`` would otherwise append
    ``.npz``). Its bytes are copied through :func:`open_output` once the body returns, so a
    device or FIFO destination is written directly and a regular one atomically.

    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("ok")
    >>> out.read_text()
    'ok'
    """
    dest, via, real, st = _destination(path, inputs)
    if via is None and (st is None or stat.S_ISREG(st.st_mode)):
        directory = os.path.dirname(real) or "."
    else:
        directory = None  # a device or a descriptor: stage in the temporary directory instead
    suffix = os.path.splitext(real)[1]
    fd, tmp = _make_temp(dest, ".smcheck.", f".tmp{suffix}", directory)
    os.close(fd)
    try:
        yield Path(tmp)
        if directory is not None:
            try:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                _commit(tmp, real, st)
            except OSError as exc:
                raise InputError(f"{_why(exc)} writing {_name(dest)}") from None
        else:
            with open(tmp, "rb") as src, open_output(dest, inputs=inputs) as out:
                while chunk := src.read(2**20):
                    out.write(chunk)
    except OSError as exc:
        raise InputError(f"{_why(exc)} writing {_name(dest)}") from None
    finally:
        _remove(tmp)


def write_atomic(
    path: PathLike, data: str | bytes, *, inputs: Sequence[PathLike | None] = ()
) -> None:
    """Write ``data`` (str as UTF-8, or bytes) to ``path`` through :func:`open_output`.

    >>> import pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> write_atomic(out, '{"ok": true}\\n')
    >>> out.read_text()
    '{"ok": true}\\n'
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with open_output(path, inputs=inputs) as f:
        f.write(payload)


def _is_stream(path: str) -> bool:
    """A character device, FIFO or socket (written directly, its name has no suffix)."""
    if _descriptor(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class PerRowWriter:
    """A ``per_row`` sink for :func:`smcheck.evaluate.evaluate` writing ``.csv`` (streamed) or
    ``.npz`` (kept in memory: N rows x a few columns, then saved) through :func:`open_output`;
    use as a context manager. Nothing is committed unless the whole run finished.

    Label-free mode: ``label`` is -1, ``ref_loss`` and ``<method>_loss`` are the row's argmax
    class (its smallest loss), error columns the worst over the row's classes (loss) and its
    checked labels (gradient).
    """

    def __init__(self, path: str, inputs: Sequence[PathLike | None] = ()) -> None:
        suffix = path.lower().rsplit(".", 1)[-1] if "." in path else ""
        if suffix not in ("csv", "npz"):
            if not _is_stream(path):
                raise UsageError(f"--per-row {_name(path)}: the file name must end in .csv or .npz")
            suffix = "csv"  # /dev/null, a FIFO, bash's >(...): CSV, the format that streams
        self.path = path
        self.kind = suffix
        self.inputs = tuple(inputs)
        self._parts: list[dict[str, Any]] = []
        self._header_done = False
        self._ctx: contextlib.AbstractContextManager[IO[bytes]] | None = None
        self._fh: IO[bytes] | None = None
        self._columns: Callable[[PerRowBlock], dict[str, Any]] | None = None

    def __enter__(self) -> PerRowWriter:
        from .rows import per_row_columns

        self._columns = per_row_columns
        self._ctx = open_output(self.path, inputs=self.inputs)
        self._fh = self._ctx.__enter__()
        return self

    def __call__(self, block: PerRowBlock) -> None:
        import numpy as np

        assert self._columns is not None and self._fh is not None, "use PerRowWriter as a `with`"
        cols = self._columns(block)
        if self.kind == "npz":
            self._parts.append(cols)
            return
        if not self._header_done:
            self._fh.write((",".join(cols) + "\n").encode("utf-8"))
            self._header_done = True
        if block.row.size == 0:
            return
        fmts = ["%d" if v.dtype.kind in "iu" else "%.17g" for v in cols.values()]
        table = np.column_stack([v.astype(np.float64) for v in cols.values()])
        np.savetxt(self._fh, table, fmt=fmts, delimiter=",")

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._ctx is not None
        if exc[0] is None and self.kind == "npz":
            import numpy as np

            try:
                names = self._parts[0].keys() if self._parts else ()
                merged = {n: np.concatenate([p[n] for p in self._parts]) for n in names}
                assert self._fh is not None
                np.savez(self._fh, **merged)  # type: ignore[arg-type]  # numpy stubs
            except BaseException as error:  # a full disk: removes the temp file, keeps the old
                if not self._ctx.__exit__(type(error), error, error.__traceback__):
                    raise
                return None
        return self._ctx.__exit__(*exc)
