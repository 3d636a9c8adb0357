"""Speed and memory of ``smcheck eval`` against baselines timed in the same process run.

Usage::

    python benchmarks/bench_eval.py                   # 4096 x 32000 float32, 5 rounds
    python benchmarks/bench_eval.py --rows 512 --runs 3 --memory-gb 0.25,1
    python benchmarks/bench_eval.py --memory-gb 1,4   # the issue's 1 GB and 4 GB files

It writes the logits (standard normal * 3, seed 0) and random labels to a temporary directory,
then prints a table of median wall times and ratios:

* ``torch``: one ``torch.nn.functional.cross_entropy`` forward + backward in float32 on the
  whole array (skipped with a note when torch is not installed); also timed as five calls back
  to back (its best case: buffers warm), a row of its own;
* ``scipy``: ``scipy.special.logsumexp(axis=1)`` (skipped when scipy is missing);
* ``numpy``: a plain max-shifted cross-entropy (loss and gradient) in float32;
* ``smcheck eval`` (float32, float16 and bfloat16 working dtypes) as a subprocess of the CLI,
  default methods, JSON output - so interpreter start-up and file reading are included;
* the same float32 and float16 runs with the compiled kernels off (``SMCHECK_ACCEL=0``, the
  numpy path: see smcheck/accel.py), unless ``--no-numpy-path``: their ``/float32`` is their
  time over the compiled float32 run of the same round.

Fairness on a shared machine: the time of the same torch call varies by up to 2x from one run
to the next when other processes compete for the cores, so torch and smcheck are timed
*interleaved* - each round runs torch, smcheck float32, torch, smcheck float16, torch,
smcheck bfloat16 (torch, the numpy-path runs) - and every smcheck run is paired with the torch
run just before it. The table gives the medians of the times and, as the headline, the median
of the per-pair ratios (``/torch``) and of the per-round ratios to float32 (``/float32``); both
runs of a pair saw about the same load. Both sides get one untimed warm-up (torch's thread
pool, smcheck's bytecode).

Peak resident memory of each CLI run is the child's own VmHWM (Linux ``/proc/self/status``)
and the largest ``ru_maxrss`` of the worker processes it forks (``--workers``, default the core
count); a forked worker counts the pages it shares with its parent too, so the printed total is
an upper bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# The child reports its own peak resident set (VmHWM of its fresh address space) at exit. The
# rusage of a child (os.wait4, /usr/bin/time run from here) is no good here: Linux carries the
# forking parent's high-water mark - this process holds the 524 MB array - across exec.
_WRAP = """
import sys
from smcheck.cli import cli
try:
    cli.main(args=sys.argv[1:], prog_name="smcheck")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
import resource
with open("/proc/self/status") as f:
    hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"\\nSMCHECK_VMHWM_KB {hwm} {workers}\\n")
sys.exit(code)
"""


def _cli_env() -> dict[str, str]:
    """The environment of a CLI run: as an installed tool runs. PYTHONDONTWRITEBYTECODE (set on
    some CI images) would make every start recompile smcheck's modules, ~0.1 s that an installed
    package, whose bytecode pip compiled, never pays; an untimed first run writes the bytecode."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall seconds and peak RSS (MB) of one ``smcheck`` CLI run in a child process: its own,
    and the largest of its worker processes' (forked: each counts the pages it shares with the
    CLI process too, so parent + workers x largest is an upper bound of the total)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAP, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        env={**_cli_env(), **(env or {})},
    )
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"smcheck {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    kb = [ln.split()[1:] for ln in proc.stderr.splitlines() if ln.startswith("SMCHECK_VMHWM_KB")]
    if not kb:
        return wall, float("nan"), float("nan")
    return wall, float(kb[-1][0]) / 1024, float(kb[-1][1]) / 1024


def numpy_ce(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = np.log(s[:, 0]) - (x[rows, y] - m[:, 0])
    grad = e / s
    grad[rows, y] -= 1
    return loss, grad


def write_npy(path: Path, rows: int, classes: int, seed: int = 0) -> None:
    """Write standard-normal * 3 float32 logits without holding them all in memory."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, classes))
    rng = np.random.default_rng(seed)
    step = max(1, (64 << 20) // (4 * classes))
    for i in range(0, rows, step):
        n = min(step, rows - i)
        out[i : i + n] = (rng.standard_normal((n, classes), dtype=np.float32)) * 3
    out.flush()
    del out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=32000)
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--memory-gb", default="", help="comma list of file sizes for the RSS test")
    ap.add_argument(
        "--no-numpy-path",
        dest="numpy_path",
        action="store_false",
        help="skip the float32/float16 runs with the compiled kernels off (SMCHECK_ACCEL=0)",
    )
    args = ap.parse_args()
    rows, classes = args.rows, args.classes
    workers = os.cpu_count() or 1  # smcheck eval's default --workers

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        logits, labels = d / "logits.npy", d / "labels.npy"
        write_npy(logits, rows, classes)
        y = np.random.default_rng(1).integers(0, classes, rows)
        np.save(labels, y)
        x = np.load(logits)
        results: list[tuple[str, float | None, str]] = []

        torch_ce: Callable[[], object] | None = None
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            xt = torch.from_numpy(x)
            yt = torch.from_numpy(y)

            def torch_ce() -> None:
                z = xt.clone().requires_grad_(True)
                torch.nn.functional.cross_entropy(z, yt).backward()

            torch_ce()  # untimed: thread pool and allocator warm-up
            # torch at its best, for reference: five calls back to back, nothing in between
            # (its allocator keeps the buffers warm); the headline pairs each smcheck run with
            # a torch call just before it instead
            t = median_time(torch_ce, 5)
            results.append(("torch, 5 calls back to back (best case)", t, ""))
        except ImportError:
            torch_ce = None
        try:
            from scipy.special import logsumexp

            t = median_time(lambda: logsumexp(x, axis=1), 5)
            results.append(("scipy.special.logsumexp(axis=1)", t, ""))
        except ImportError:
            results.append(("scipy.special.logsumexp(axis=1)", None, "scipy not installed"))
        results.append(("numpy max-shifted CE + grad", median_time(lambda: numpy_ce(x, y), 5), ""))

        rss: dict[str, tuple[float, float]] = {}
        tiny = d / "tiny.npy"
        np.save(tiny, x[:2])
        run_cli(["eval", str(tiny)])  # untimed: writes smcheck's bytecode if it has none
        # each run: (label, working dtype, extra environment); "numpy path" runs turn the
        # compiled kernels off (smcheck.accel), for their gain measured in the same rounds
        runs = [("float32", "float32", {}), ("float16", "float16", {})]
        runs += [("bfloat16", "bfloat16", {})]
        if args.numpy_path:
            runs += [("float32, numpy path", "float32", {"SMCHECK_ACCEL": "0"})]
            runs += [("float16, numpy path", "float16", {"SMCHECK_ACCEL": "0"})]
        dtypes = tuple(label for label, _, _ in runs)
        torch_times: list[float] = []
        times: dict[str, list[float]] = {dt: [] for dt in dtypes}
        pair: dict[str, list[float]] = {dt: [] for dt in dtypes}  # smcheck / torch just before
        for _ in range(args.runs):
            for dtype, working, env in runs:
                t_torch = None
                if torch_ce is not None:
                    t0 = time.perf_counter()
                    torch_ce()
                    t_torch = time.perf_counter() - t0
                    torch_times.append(t_torch)
                cli = ["eval", str(logits), "--labels", str(labels), "--dtype", working]
                wall, own, worker = run_cli([*cli, "--format", "json"], env)
                times[dtype].append(wall)
                if t_torch is not None:
                    pair[dtype].append(wall / t_torch)
                old = rss.get(dtype, (0.0, 0.0))
                rss[dtype] = (max(old[0], own), max(old[1], worker))

        med = statistics.median
        base = med(torch_times) if torch_times else None
        note = "" if torch_ce is not None else "torch not installed"
        rows_out: list[tuple[str, float | None, str, float | None, float | None]] = [
            ("torch cross_entropy fwd+bwd (float32)", base, note, 1.0 if base else None, None)
        ]
        for name, t, note in results:
            rows_out.append((name, t, note, t / base if t and base else None, None))
        for dtype in dtypes:
            per_round = [a / b for a, b in zip(times[dtype], times["float32"], strict=True)]
            rows_out.append(
                (
                    f"smcheck eval --dtype {dtype}".replace(", numpy path", " (numpy path)"),
                    med(times[dtype]),
                    "",
                    med(pair[dtype]) if pair[dtype] else None,
                    med(per_round),
                )
            )
        print(
            f"logits {rows} x {classes} float32 ({rows * classes * 4 / 1e6:.0f} MB), "
            f"{os.cpu_count()} cores, {args.runs} interleaved rounds (torch, smcheck, ...): "
            "median seconds; /torch = median of per-pair ratios, /float32 = median of per-round "
            "ratios (baselines: median time / median torch time)"
        )
        print(f"{'what':44s} {'seconds':>9s} {'/torch':>8s} {'/float32':>9s}")
        for name, t, note, vs_torch, vs_f32 in rows_out:
            if t is None:
                print(f"{name:44s} {'-':>9s}   ({note})")
                continue
            a = f"{vs_torch:8.2f}" if vs_torch is not None else "       -"
            b = f"{vs_f32:9.2f}" if vs_f32 is not None else ""
            print(f"{name:44s} {t:9.3f} {a} {b}")
        if torch_times:
            print(
                f"torch times over the rounds: min {min(torch_times):.3f} s, max "
                f"{max(torch_times):.3f} s; smcheck float32: min {min(times['float32']):.3f} s, "
                f"max {max(times['float32']):.3f} s"
            )
        from smcheck.accel import accelerator

        print(
            "compiled kernels (smcheck._accel): "
            + ("built and used" if accelerator() else "not available: every run is the numpy path")
        )
        for dtype, (own, worker) in rss.items():
            print(
                f"peak RSS smcheck eval --dtype {dtype}: {own:.0f} MB, largest worker process "
                f"{worker:.0f} MB (upper bound of the total: {own + workers * worker:.0f} MB)"
            )

        for gb in [float(v) for v in args.memory_gb.split(",") if v]:
            big = d / f"big_{gb}.npy"
            n = int(gb * 2**30 / (4 * classes))
            write_npy(big, n, classes, seed=2)
            lab = d / f"big_{gb}_labels.npy"
            np.save(lab, np.random.default_rng(3).integers(0, classes, n))
            wall, own, worker = run_cli(["eval", str(big), "--labels", str(lab), "-f", "json"])
            print(
                f"{gb:g} GB file ({n} rows): {wall:.1f} s, peak RSS {own:.0f} MB, largest worker "
                f"{worker:.0f} MB (total at most {own + workers * worker:.0f} MB)"
            )
            big.unlink()


if __name__ == "__main__":
    main()
