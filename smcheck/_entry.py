"""The console entry point: signal handlers first, then the command line.

``smcheck`` (the console script) and ``python -m smcheck`` must answer SIGINT, SIGTERM and
SIGHUP at any moment with one line on stderr and exit 130, 143 or 129 - no traceback, no
temporary file left, the previous output intact. Python's own SIGINT handler raises
KeyboardInterrupt wherever the main thread happens to be: in the first second that is inside
``import numpy``, whose traceback would be the only output. So handlers are installed before
anything heavy is imported, in two stages:

* while importing (this module is imported first by ``smcheck/__init__.py``, and only acts when
  the process *is* the CLI - a library user's handlers are left alone): there is nothing to
  clean up yet, so the handler prints its line and leaves at once with :func:`os._exit`;
* while running: the handler raises :class:`Signalled`, which unwinds through every ``with``
  block (an output's temporary file is removed there, the destination left as it was) up to
  :func:`main`, which prints the line and returns the exit status.

A signal the parent ignores (``nohup`` ignores SIGHUP) stays ignored. After the first signal
the others are ignored, so a second Ctrl-C cannot interrupt the cleanup. A forked worker that
gets the terminal's SIGINT exits quietly; its parent reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType

__all__ = ["EXIT_STATUS", "Signalled", "main"]

#: 128 + the signal number, as a shell reports a process killed by it (SIGHUP: not on Windows).
EXIT_STATUS: dict[int, int] = {
    getattr(signal, name): 128 + getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP")
    if hasattr(signal, name)
}
_WHAT: dict[int, str] = {
    getattr(signal, name): what
    for name, what in (("SIGINT", "interrupted"), ("SIGTERM", "terminated"), ("SIGHUP", "hangup"))
    if hasattr(signal, name)
}
_MAIN_PID = os.getpid()


class Signalled(BaseException):  # noqa: N818 - not an error: a request to stop
    """Raised in the main thread by a handled signal; a BaseException, so ``except Exception``
    (the CLI's internal-error net) lets it through to :func:`main`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _say(signum: int) -> None:
    with contextlib.suppress(OSError):  # stderr closed: nothing to tell
        os.write(2, f"smcheck: {_WHAT[signum]}\n".encode())


def _ignore_further() -> None:
    for s in EXIT_STATUS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(s, signal.SIG_IGN)


def _while_importing(signum: int, frame: FrameType | None) -> None:
    _say(signum)
    os._exit(EXIT_STATUS[signum])


def _while_running(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker: the parent says it, once
        os._exit(EXIT_STATUS[signum])
    _ignore_further()
    raise Signalled(signum)


def _install(handler: signal.Handlers | object) -> None:
    for s in EXIT_STATUS:
        with contextlib.suppress(OSError, ValueError):  # ValueError: not the main thread
            if signal.getsignal(s) is not signal.SIG_IGN:
                signal.signal(s, handler)  # type: ignore[arg-type]


def is_cli(argv: list[str] | None = None) -> bool:
    """Whether this process was started as smcheck: the ``smcheck`` script or ``-m smcheck``.

    >>> is_cli(["python", "-P", "-m", "smcheck", "eval"]), is_cli(["/venv/bin/smcheck", "-h"])
    (True, True)
    >>> is_cli(["python", "-m", "pytest"]), is_cli(["python", "train.py"])
    (False, False)
    """
    args = list(sys.orig_argv if argv is None else argv)
    skip = False
    for i, a in enumerate(args[1:], 1):
        if skip:  # the value of -X/-W/--check-hash-based-pycs
            skip = False
            continue
        if a in ("-X", "-W", "--check-hash-based-pycs"):
            skip = True
        elif a == "-m":
            return args[i + 1 : i + 2] == ["smcheck"]
        elif a.startswith("-m"):
            return a == "-msmcheck"
        elif a == "-c" or a.startswith("-c"):
            return False
        elif not a.startswith("-"):  # the script: the console entry point is named smcheck
            return os.path.basename(a).removesuffix(".exe") == "smcheck"
    return bool(args) and os.path.basename(args[0]).removesuffix(".exe") == "smcheck"


def _open_std_fds() -> None:
    """Fill closed fds 0-2 with /dev/null, so no file smcheck opens becomes "stdout".

    Python sets ``sys.stdout`` to None for a closed fd 1 (the CLI then refuses to print the
    report: exit 2), but the next ``open`` would get fd 1 and a stray write would land there.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a handled signal ends it with one line and 128 + its number."""
    _install(_while_importing)
    _open_std_fds()
    from .cli import cli
    from .output import live_temp_files

    _install(_while_running)
    try:
        cli.main(args=argv, prog_name="smcheck")
    except SystemExit:
        _install(_while_importing)  # done: a late signal just exits, no traceback at shutdown
        raise
    except Signalled as stop:
        for tmp in live_temp_files():  # the with-blocks removed theirs; this is the backstop
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _say(stop.signum)
        return EXIT_STATUS[stop.signum]
    return 0  # pragma: no cover - cli.main exits via SystemExit


if is_cli():
    _install(_while_importing)
