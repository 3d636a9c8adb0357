"""Start-up time of the ``smcheck`` CLI against ``python -c "import numpy"``, in one run.

Usage::

    python benchmarks/bench_startup.py            # 9 rounds
    python benchmarks/bench_startup.py --runs 21

Three commands are timed as fresh processes, interleaved round by round so that a busy machine
slows all three alike:

* ``numpy``: ``python -c "import numpy"`` - the floor any numpy program pays;
* ``help``: ``python -m smcheck --help`` (goal: at most 2x numpy);
* ``eval``: ``python -m smcheck eval`` on a tiny float32 file, 8 rows x 10 classes, with labels
  (goal: at most 3x numpy).

Each child runs in a temporary directory (no config file above it) with this checkout first on
``PYTHONPATH``, and with bytecode caching on, in a private ``PYTHONPYCACHEPREFIX``: an installed
smcheck has its ``.pyc`` files, and a checkout run with ``PYTHONDONTWRITEBYTECODE`` would
recompile every module on every start (~0.15 s). One warm-up round fills that cache. Printed:
the median and minimum wall time of each command and the ratios of the medians to numpy's.
The exit status is 1 when a median ratio is over its goal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"help": 2.0, "eval": 3.0}


def commands(work: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "numpy": [py, "-c", "import numpy"],
        "help": [py, "-m", "smcheck", "--help"],
        "eval": [py, "-m", "smcheck", "eval", str(work / "x.npy"), "--labels",
                 str(work / "y.npy")],
    }  # fmt: skip


def child_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # eval exits 1 on findings; anything else is broken
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9, help="timed rounds (default 9)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="smcheck-startup-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        np.save(work / "x.npy", (rng.standard_normal((8, 10)) * 3).astype(np.float32))
        np.save(work / "y.npy", rng.integers(0, 10, 8))
        cmds, env = commands(work), child_env(work)
        for cmd in cmds.values():  # warm-up: bytecode cache, page cache
            timed(cmd, env, work)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                times[name].append(timed(cmd, env, work))
    base = statistics.median(times["numpy"])
    print(f"start-up, {args.runs} rounds (python {sys.version.split()[0]}, numpy {np.__version__})")
    print(f"{'command':<8} {'median s':>9} {'min s':>7} {'x numpy':>8} {'goal':>6}")
    over = False
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = med / base
        goal = GOALS.get(name)
        mark = "" if goal is None else f"<= {goal:g}" + (" OVER" if ratio > goal else "")
        over |= goal is not None and ratio > goal
        print(f"{name:<8} {med:>9.3f} {min(ts):>7.3f} {ratio:>8.2f} {mark:>6}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
