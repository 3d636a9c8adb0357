"""Wall time of the default ``smcheck sweep`` (no options): the issue asks for < 10 s on 2 cores.

Usage::

    python benchmarks/bench_sweep.py            # 3 runs of the CLI, default --jobs
    python benchmarks/bench_sweep.py --runs 5 --jobs 1,2

Each run is ``python -m smcheck sweep --format json`` in a fresh interpreter (start-up, the
grid of 40 scales x 4 dtypes x classes {10, 32000} x 4 cases x 5 methods, the bisection of every
break and the JSON rendering included), output discarded. It prints the CPUs available, the load
average before the runs (other work on the machine slows the timings), then per ``--jobs`` value
the median and the fastest wall time, the median CPU time (less sensitive to other load than
wall time; measured with ``--jobs 1`` only: worker processes are forked from a forkserver, not
waited for by the run), the grid size and the break count of the last run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(jobs: int | None) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds (the run and its worker processes) and the JSON report."""
    cmd = [sys.executable, "-m", "smcheck", "sweep", "--format", "json"]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if proc.returncode not in (0, 1):
        sys.exit(f"sweep failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed, cpu, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--jobs", default="default", help="comma-separated --jobs values ('default': none given)"
    )
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {cpus()} CPUs available,")
    print(f"python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")
    for value in args.jobs.split(","):
        jobs = None if value == "default" else int(value)
        times, cpus_used = [], []
        doc: dict = {}
        for _ in range(args.runs):
            t, cpu, doc = run_once(jobs)
            times.append(t)
            cpus_used.append(cpu)
        found = sum(b["scale"] is not None for b in doc["breaks"])
        # workers are forked from a forkserver, not waited for by the run: only --jobs 1 counts
        cpu = f"{statistics.median(cpus_used):.2f} s" if jobs == 1 else "not measured"
        print(
            f"--jobs {value}: wall median {statistics.median(times):.2f} s, fastest "
            f"{min(times):.2f} s; CPU (user + sys) median {cpu}; {args.runs} runs; "
            f"{len(doc['grid'])} cells, {found} break points; load average after "
            f"{os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
