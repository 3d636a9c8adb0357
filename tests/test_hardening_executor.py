"""Hardening of the executor: workers capped at the CPUs, workers die with their parent, a
failed fork is one line and exit 2 (never a hang), sizes that cannot fit refused up front.

The process tests run a small script (or the CLI) in a subprocess and kill it as a user or a CI
runner would; each reads the worker pids the script's tasks wrote and checks them in /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.errors import UsageError
from smcheck.executor import available_cpus, cap_workers, ordered_map, workers_note
from smcheck.sweep import MAX_CELLS, SweepConfig, parse_scales
from smcheck.synthetic import case_pattern, check_size, synthetic

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="worker processes are forked on Linux only")
two_cpus = pytest.mark.skipif(available_cpus() < 2, reason="one CPU: no worker is forked")

#: Forks two workers; each task writes its worker's pid into a folder. Task 0 sleeps for a
#: minute, the others return at once, so one worker is busy and the other soon idle. The mode
#: says how the parent ends: "wait" - signalled from outside while it waits for task 0;
#: "raise" - SystemExit as soon as task 1's result is in, task 0 still running.
SCRIPT = """
import os, sys, time
from smcheck.executor import ordered_map

folder, mode = sys.argv[1], sys.argv[2]

def task(i):
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(60 if i == 0 else 0.2)
    open(os.path.join(folder, f"{i}.done"), "w").close()
    return i

items = [1, 0, 2, 3] if mode == "raise" else [0, 1, 2, 3]
for _ in ordered_map(task, items, workers=2, processes=True):
    if mode == "raise":  # task 1 is done, task 0 is still running
        raise SystemExit("parent gives up")
"""


def _env() -> dict[str, str]:
    # this worktree's smcheck first; one BLAS thread (a process limit counts threads too)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for an init that does not reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ignores_sigint(pid: int) -> bool:
    """SIGINT in the process's ignored-signal mask (/proc/PID/status ``SigIgn``, bit n - 1)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return False


def _wait_for(cond: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _start_script(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], Path]:
    tmp_path.mkdir(exist_ok=True)
    script = tmp_path / "fan_out.py"
    script.write_text(SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    # stderr to a file, not a pipe: orphaned workers would hold a pipe open, and reading it to
    # the end would hang the test instead of failing it
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(pids), mode],
            env=_env(),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    return proc, pids


def _stderr(pids: Path) -> str:
    return (pids.parent / "stderr.txt").read_text()


def _worker_pids(pids: Path) -> list[int]:
    return [int(p.name) for p in pids.iterdir() if p.name.isdigit()]


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Kill the script if a failed assertion left it running."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _reap_leftovers(pids: list[int]) -> None:
    for pid in pids:  # only the workers this test's script forked
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- workers capped


def test_workers_are_capped_at_the_cpus() -> None:
    cpus = available_cpus()
    assert cap_workers(1000) == cpus and cap_workers(1) == 1 and cap_workers(0) == 1
    assert workers_note(cpus) is None
    note = workers_note(cpus + 98, "--jobs")
    assert note == f"--jobs {cpus + 98}: using {cpus}, the CPUs this process may use"

    def task(i: int) -> int:
        time.sleep(0.02)  # long enough that an uncapped pool would start a thread per task
        return threading.get_ident()

    idents = list(ordered_map(task, list(range(16)), workers=1000, processes=False))
    assert len(set(idents)) <= cpus


def test_cli_workers_beyond_the_cpus_is_a_one_line_note(tmp_path: Path) -> None:
    cpus = available_cpus()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((20, 6)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 6, 20))
    args = ["eval", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    res = CliRunner().invoke(cli, [*args, "--workers", str(cpus + 100), "--chunk-rows", "3"])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[0] == (
        f"smcheck: note: --workers {cpus + 100}: using {cpus}, the CPUs this process may use"
    )
    # the note is the only addition: the report is that of a capped run
    plain = CliRunner().invoke(cli, [*args, "--workers", str(cpus), "--chunk-rows", "3"])
    assert res.stdout == plain.stdout
    assert res.stderr.splitlines()[1:] == plain.stderr.splitlines()
    sweep = ["sweep", "--dtype", "float16", "--classes", "10", "--scales", "1,100", "--rows", "2"]
    res = CliRunner().invoke(cli, [*sweep, "--workers", str(cpus + 1)])
    assert res.exit_code in (0, 1), res.output
    assert f"smcheck: note: --workers {cpus + 1}: using {cpus}" in res.stderr


# --------------------------------------------------------------------------- die with the parent


@linux_only
@two_cpus
def test_workers_die_when_the_parent_is_killed(tmp_path: Path) -> None:
    # two parents at once (their start-up is most of the time): one SIGKILLed, one SIGTERMed
    runs = {
        sig: _start_script(tmp_path / sig.name, "wait") for sig in (signal.SIGKILL, signal.SIGTERM)
    }
    pids: dict[signal.Signals, list[int]] = {}
    try:
        for sig, (_, folder) in runs.items():
            assert _wait_for(lambda f=folder: len(_worker_pids(f)) >= 2, 60), sig
            pids[sig] = _worker_pids(folder)
            assert all(_alive(p) for p in pids[sig])
        for sig, (proc, _) in runs.items():
            proc.send_signal(sig)
            proc.wait(timeout=30)
        for sig, workers in pids.items():
            # PR_SET_PDEATHSIG: the kernel kills each worker as its parent dies
            assert _wait_for(lambda w=workers: not any(_alive(p) for p in w), 10), (sig, workers)
    finally:
        for proc, _ in runs.values():
            _end(proc)
        _reap_leftovers([p for w in pids.values() for p in w])


@linux_only
@two_cpus
def test_ctrl_c_ends_the_workers_without_waiting_and_without_their_tracebacks(
    tmp_path: Path,
) -> None:
    proc, folder = _start_script(tmp_path, "wait")
    pids: list[int] = []
    try:
        assert _wait_for(lambda: len(_worker_pids(folder)) >= 2, 60)
        assert _wait_for(lambda: len(list(folder.glob("*.done"))) == 3, 60)  # one worker idle
        pids = _worker_pids(folder)
        assert all(_ignores_sigint(p) for p in pids)
        start = time.monotonic()
        # a terminal's Ctrl-C goes to the whole process group: workers ignore it, the parent's
        # KeyboardInterrupt ends the pool
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        assert time.monotonic() - start < 10  # not the 60 s the task sleeps
        err = _stderr(folder)
        assert proc.returncode != 0 and err.rstrip().endswith("KeyboardInterrupt")
        # an idle worker interrupted would print a traceback of its own
        assert err.count("KeyboardInterrupt") == 1 and "ForkProcess" not in err
        assert not any(_alive(p) for p in pids)
    finally:
        _end(proc)
        _reap_leftovers(pids)


@linux_only
@two_cpus
def test_an_exception_in_the_parent_does_not_wait_for_the_tasks_in_flight(tmp_path: Path) -> None:
    proc, folder = _start_script(tmp_path, "raise")
    pids: list[int] = []
    try:
        proc.wait(timeout=30)  # the task in flight sleeps for 60 s
        pids = _worker_pids(folder)
        assert proc.returncode == 1 and _stderr(folder).strip() == "parent gives up"
        assert pids and not any(_alive(p) for p in pids)
    finally:
        _end(proc)
        _reap_leftovers(pids)


# --------------------------------------------------------------------------- a failed fork


def _process_limit_of_one() -> list[str] | None:
    """A command prefix under which fork fails with EAGAIN (RLIMIT_NPROC = 1), or None.

    ``prlimit`` sets the limit (not a ``preexec_fn``: forking the test process itself would
    trip JAX's at-fork warning). root is exempt from RLIMIT_NPROC: as root the command runs as
    nobody, keeping only the right to read this checkout and the interpreter."""
    prlimit = shutil.which("prlimit")
    if not LINUX or prlimit is None:
        return None
    if os.geteuid() != 0:
        return [prlimit, "--nproc=1:1"]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = "--reuid=65534 --regid=65534 --clear-groups"
    keep = "--inh-caps=+dac_read_search --ambient-caps=+dac_read_search"
    return [prlimit, "--nproc=1:1", setpriv, *drop.split(), *keep.split()]


@two_cpus
def test_regression_failed_fork_is_one_line_and_exit_2_not_a_hang(tmp_path: Path) -> None:
    prefix = _process_limit_of_one()
    if prefix is None:
        pytest.skip("no way to set a process limit here")
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.standard_normal((40, 8)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 8, 40))
    tmp_path.chmod(0o755)  # readable by nobody
    cmd = [*prefix, sys.executable, "-m", "smcheck", "eval", "x.npy", "--labels", "y.npy"]
    proc = subprocess.run(
        [*cmd, "--workers", "2", "--chunk-rows", "5"],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("smcheck: error: cannot start 2 worker processes (")
    assert proc.stdout == b""


# --------------------------------------------------------------------------- impossible sizes


def test_regression_sizes_that_cannot_fit_are_refused_before_allocating() -> None:
    with pytest.raises(UsageError, match=r"--rows 1000000000 x --classes 1000000 = 1e\+15 logits"):
        synthetic("random", rows=10**9, classes=10**6)
    with pytest.raises(UsageError, match=r"more than this machine's .* of memory"):
        check_size(10**12, 10, 8, "sweep")
    check_size(1000, 1000, 128, "sweep")  # 128 MB: fits
    base, _ = case_pattern("random", 10, 3, seed=0)  # the patterns themselves are unchanged
    assert base.shape == (3, 10)


@pytest.mark.parametrize(
    "args",
    [
        ["gradcheck", "--rows", str(10**9), "--classes", str(10**6)],
        ["sweep", "--rows", str(10**9), "--classes", str(10**6), "--dtype", "float16"],
    ],
)
def test_cli_impossible_sizes_exit_2_with_the_size_and_the_limit(args: list[str]) -> None:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"smcheck: error: {args[0]}: --rows 1000000000 x --classes 1000000")
    assert "1e+15 logits need about" in line and "of memory" in line
    assert res.stdout == ""


def test_regression_sweep_grids_too_large_are_refused_before_allocating() -> None:
    # 10**12 log-spaced scales would be 8 TB before the first cell
    with pytest.raises(UsageError, match=r"1000000000000 scales, at most 100000"):
        parse_scales("1:1e4:1000000000000")
    scales = tuple(float(s) for s in range(1, 50_001))
    with pytest.raises(
        UsageError, match=rf"2 x 2 x 4 x 5 x 50000 .* = 4000000 cells, at most {MAX_CELLS}"
    ):
        SweepConfig(dtypes=("float16", "float32"), classes=(10, 100), scales=scales)
    # a large but possible grid is fine
    assert len(SweepConfig(scales=scales[:100]).scales) == 100
