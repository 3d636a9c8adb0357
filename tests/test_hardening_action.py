"""The GitHub Action never imports modules from the repository it checks.

``python -m smcheck`` and ``python -c`` put the working directory first on ``sys.path``: a
``click.py`` (or ``shlex.py``, ``numpy.py``) committed to the repository under test would run
inside the CI step with its secrets. The action's scripts run Python with ``-P``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gh_action.sh"

PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text("ran from the working directory")
raise SystemExit("planted module imported")
"""


def test_action_does_not_import_modules_from_the_working_directory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "PWNED"
    for name in ("click.py", "shlex.py", "numpy.py", "rich.py"):
        (repo / name).write_text(PLANTED.format(marker=str(marker)))
    np.save(repo / "x.npy", np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], dtype=np.float32))
    summary = tmp_path / "summary.md"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this checkout's smcheck, as an installed one would be
        "SMCHECK_PYTHON": sys.executable,
        "SMCHECK_COMMAND": "eval x.npy",
        "GITHUB_STEP_SUMMARY": str(summary),
        "NO_COLOR": "1",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert not marker.exists(), proc.stderr
    assert "planted module" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "smcheck" in summary.read_text()


@pytest.mark.parametrize("path", ["action.yml", "scripts/gh_action.sh"])
def test_every_python_call_of_the_action_is_isolated(path: str) -> None:
    text = (ROOT / path).read_text()
    calls = re.findall(r'"\$py"\s+(-\S+)', text)
    assert calls, 'the action runs Python as "$py"'
    assert all(flag in ("-P", "-I") for flag in calls), calls
