"""One policy for running an analysis's independent tasks in parallel: forked processes where
that is safe, threads elsewhere, results always in task order.

Every analysis that fans work out goes through :func:`ordered_map` - eval's row chunks
(:func:`smcheck.engine.run`) and sweep's (dtype, classes, case) tasks
(:func:`smcheck.sweep.sweep`); the Dask engine (:mod:`smcheck.dask_engine`) is the one other way,
for a cluster, and merges in the same order.

* **Processes where safe.** The kernels are thousands of small numpy calls, which queue for the
  interpreter lock on threads: eval measured 1.4x on 2 cores with threads against ~1.8x with
  processes. Processes are *forked* (:func:`can_fork`: Linux, no other Python thread alive, not
  inside a daemonic pool worker, no framework method), so a task, memory-mapped input and all,
  is inherited, never pickled; only items and results cross the pipe. Sweep used to start a
  forkserver instead (workers that inherit no thread): :func:`can_fork` gives the same
  guarantee, and a pool of 2 forked workers started in 0.013 s where the first forkserver pool
  took 1.7 s (it imports smcheck again; the 2-core development machine, under load).
* **Threads elsewhere.** macOS and Windows (no safe fork), a process that runs other threads
  (a fork copies the locks they may hold), and PyTorch or JAX methods (their own thread pools
  do not survive a fork). Threads die with the process, so nothing can be orphaned there.
* **Bounded.** At most :func:`available_cpus` workers (more only queue for the same cores and
  multiply memory: :func:`cap_workers`), at most ``2 * workers`` tasks in flight.
* **Workers die with the parent.** A forked worker asks the kernel for SIGKILL when its parent
  dies (Linux ``prctl(PR_SET_PDEATHSIG)``) and exits at once if the parent is already gone;
  it ignores SIGINT (the parent handles Ctrl-C and ends the pool) and takes the default action
  for SIGTERM/SIGHUP whatever handler the parent installed. An exception in the parent -
  KeyboardInterrupt and SystemExit included - kills the workers instead of waiting for them.
* **A failed fork** (EAGAIN from a process limit, ENOMEM) is a :class:`~smcheck.errors.UsageError`
  naming the worker count, after the workers already started are killed: never a hang.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import UsageError
from .methods import METHODS

__all__ = ["available_cpus", "can_fork", "cap_workers", "ordered_map", "workers_note"]

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; the CPU count elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cap_workers(requested: int) -> int:
    """``requested`` workers, at most :func:`available_cpus` and at least 1.

    Beyond the CPUs, workers only take turns on the same cores while each holds its chunk's
    working arrays: ``--workers 100`` on 2 cores would be 100 forked processes and 50x the
    memory for no speed.
    """
    return max(1, min(int(requested), available_cpus()))


def workers_note(requested: int, option: str = "--workers") -> str | None:
    """The one-line note the CLI prints when ``requested`` is capped, else None."""
    capped = cap_workers(requested)
    if capped >= requested:
        return None
    return f"{option} {requested}: using {capped}, the CPUs this process may use"


def can_fork(methods: Iterable[str] = ()) -> bool:
    """Whether tasks may run in forked processes: Linux (macOS offers ``fork`` but its system
    libraries are not fork-safe), no other Python thread alive in this process (a fork copies
    locks that thread may hold), not inside a daemonic process (a pool worker may not have
    children), and none of ``methods`` a framework method (PyTorch and JAX run thread pools of
    their own that do not survive a fork; JAX's already do once it is imported)."""
    if not sys.platform.startswith("linux"):
        return False
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    if threading.active_count() > 1:
        return False
    if multiprocessing.current_process().daemon:
        return False
    if "jax" in sys.modules:
        # JAX starts C++ thread pools (invisible to threading.active_count) when imported and
        # warns at every fork that the child may deadlock: a process that has imported it - a
        # notebook, a test session that ran a jax method - runs the tasks on threads instead
        return False
    return all(m in METHODS for m in methods)


def ordered_map(
    task: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int,
    processes: bool,
) -> Iterator[R]:
    """``task(item)`` for every item, yielded in the order of ``items``.

    ``workers`` (capped by :func:`cap_workers`) run at most ``2 * workers`` tasks ahead of the
    consumer: in forked processes if ``processes`` (the caller decides with :func:`can_fork`;
    ``task`` is inherited by the fork, only items and results are pickled), else on threads.
    One worker, or one item, runs in this thread.
    """
    workers = min(cap_workers(workers), len(items))
    if workers <= 1:
        yield from map(task, items)
        return
    if processes:
        yield from _forked(task, items, workers)
        return
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smcheck")
    try:
        yield from _windowed(ex.submit, task, items, 2 * workers)
    except BaseException:
        # Ctrl-C or an abandoned generator: drop the queued tasks; a thread cannot be killed,
        # so the running ones (one task each) finish on their own
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def _windowed(
    submit: Callable[[Callable[[T], R], T], Future[R]],
    fn: Callable[[T], R],
    items: Sequence[T],
    window: int,
) -> Iterator[R]:
    """Results of ``fn`` over ``items`` in order, at most ``window`` submitted ahead."""
    pending = [submit(fn, it) for it in items[:window]]
    nxt = len(pending)
    while pending:
        fut = pending.pop(0)
        if nxt < len(items):
            pending.append(submit(fn, items[nxt]))
            nxt += 1
        yield fut.result()


#: The task of the forked map in progress: the workers inherit it with the rest of memory.
_INHERITED: Callable[[Any], Any] | None = None


def _call_inherited(item: Any) -> Any:
    assert _INHERITED is not None, "a forked worker inherits the task"
    return _INHERITED(item)


def _forked(task: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    global _INHERITED
    ex = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )

    def submit(fn: Callable[[T], R], item: T) -> Future[R]:
        try:
            with warnings.catch_warnings():
                # a fork-based pool forks all its workers at the first submit, before it starts
                # its own manager thread. Python >= 3.12 warns about forking beside any OS
                # thread - numpy's idle OpenBLAS pool included; can_fork has ruled out Python
                # threads, and the workers never call BLAS
                warnings.simplefilter("ignore", DeprecationWarning)
                return ex.submit(fn, item)
        except OSError as exc:  # fork or pipe failed: EAGAIN (process limit), ENOMEM, EMFILE
            raise UsageError(
                f"cannot start {workers} worker processes ({exc.strerror or exc}): "
                "use fewer workers, or 1"
            ) from None

    _INHERITED = task
    try:
        yield from _windowed(submit, _call_inherited, items, 2 * workers)
    except BaseException:
        # an error, Ctrl-C, SystemExit or an abandoned generator: end the workers now rather
        # than wait for up to 2 * workers tasks in flight (or for ever, after a failed fork)
        _kill_workers(ex)
        raise
    else:
        ex.shutdown(wait=True)
    finally:
        _INHERITED = None


def _kill_workers(ex: ProcessPoolExecutor) -> None:
    """SIGKILL every worker of ``ex`` and reap it, then shut the pool down without waiting.

    ``_processes`` is the pool's private pid -> Process map (CPython 3.8+); killing through it
    reaches exactly this pool's workers, and the pool's own manager thread then sees them gone.
    """
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=5)
    ex.shutdown(wait=False, cancel_futures=True)


def _worker_init(parent: int) -> None:
    """Runs first in each forked worker: die with the parent, leave Ctrl-C to it."""
    # the terminal sends SIGINT to the whole process group: the parent turns it into one line
    # and kills the pool; a worker must not print a KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a handler the parent installed (exit codes 143/129) is the parent's business: a worker
    # just ends
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; True if it agreed.

    The request is made after the fork, so the parent may have died in between: then the
    process has already been reparented and exits at once. Elsewhere (no prctl) no worker is
    ever forked (:func:`can_fork`), so there is nothing to do.
    """
    if not sys.platform.startswith("linux"):  # pragma: no cover - can_fork rules it out
        return False
    try:
        # the running program's symbols include the C library's: no ldconfig lookup per worker
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if os.getppid() != parent:
        os._exit(1)
    return ok
