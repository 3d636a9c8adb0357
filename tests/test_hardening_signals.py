"""SIGINT, SIGTERM, SIGHUP at any moment: one line on stderr, exit 128 + signum, no temp file,
the previous output intact - in a real process, since the point is what the process does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from smcheck._entry import EXIT_STATUS, is_cli

ROOT = Path(__file__).resolve().parents[1]


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "smcheck", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(pred: object, proc: subprocess.Popen[str], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not pred():  # type: ignore[operator]
        if proc.poll() is not None:
            pytest.fail(f"smcheck exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _finish(proc: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _logits(tmp_path: Path) -> Path:
    # big enough that the run is still going when the signal arrives (the file is mapped, so
    # loading costs nothing), small enough to write quickly
    x = np.random.default_rng(0).normal(size=(4000, 2000)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_is_cli_recognises_the_entry_points() -> None:
    assert is_cli(["/usr/bin/python3", "-I", "-m", "smcheck", "eval", "x.npy"])
    assert is_cli(["python", "-msmcheck"])
    assert is_cli(["/venv/bin/python", "/venv/bin/smcheck", "eval"])
    assert not is_cli(["python", "-m", "smcheck_other"])
    assert not is_cli(["python", "-c", "import smcheck"])
    assert is_cli(["python", "-X", "importtime", "-W", "error", "-m", "smcheck", "eval"])
    assert not is_cli(["python", "-X", "dev", "train.py"])


def test_sigint_during_imports_is_one_line_no_traceback(tmp_path: Path) -> None:
    x = _logits(tmp_path)
    proc = _start(["eval", str(x)], tmp_path)
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.exists():
        proc.kill()
        proc.communicate()
        pytest.skip("needs /proc to see the import in progress")
    # numpy's extension modules mapped: smcheck/__init__ is importing, numerics not started
    _wait_for(lambda: "numpy" in maps.read_text(), proc, "the numpy import")
    code, err = _finish(proc, signal.SIGINT)
    assert code == EXIT_STATUS[signal.SIGINT] == 130
    assert err.splitlines() == ["smcheck: interrupted"], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("signum", "what"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated"), (signal.SIGHUP, "hangup")],
)
def test_signal_during_the_write_keeps_previous_output_and_leaves_no_temp_file(
    tmp_path: Path, signum: int, what: str
) -> None:
    x = _logits(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    rows = out / "rows.csv"
    rows.write_text("previous per-row table\n")
    report = out / "report.txt"
    report.write_text("previous report\n")
    proc = _start(
        ["eval", str(x), "--per-row", str(rows), "-o", str(report), "--workers", "1"], tmp_path
    )
    # the per-row table streams into its temporary file while the run goes on
    _wait_for(lambda: bool(_temp_files(out)), proc, "the per-row temporary file")
    code, err = _finish(proc, signum)
    assert code == EXIT_STATUS[signum] == 128 + signum
    assert err.splitlines() == [f"smcheck: {what}"], err
    assert _temp_files(out) == []
    assert rows.read_text() == "previous per-row table\n"
    assert report.read_text() == "previous report\n"
