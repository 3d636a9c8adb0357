"""Every bad input of the loading tests, fed to the real CLI: exit 2, one line, no traceback,
and the input files' bytes unchanged (issue: hostile and broken input)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli

from .test_loading import BAD_BUILDERS, BadInput


def _digest(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "" for p in paths]


def _check_one_line_error(code: int, stderr: str, stdout: str, case: BadInput) -> None:
    assert code == 2, (code, stderr, stdout)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("smcheck: error: "), stderr
    assert "Traceback" not in stderr + stdout
    message = lines[0].lower()
    for part in case.expect:
        assert part.lower() in message, (part, lines[0])


@pytest.mark.parametrize("name", sorted(BAD_BUILDERS))
def test_bad_input_through_eval_exits_2_with_one_line(name: str, tmp_path: Path) -> None:
    case = BAD_BUILDERS[name](tmp_path)
    args = case.cli_args()
    options = dict(case.options)
    if args is None:  # max_bytes: the CLI flag
        max_bytes = options.pop("max_bytes")
        case = BadInput(case.logits, case.labels, options, case.expect)
        args = [*case.cli_args(), "--max-bytes", str(max_bytes)]  # type: ignore[misc]
    inputs = [case.logits] + ([case.labels] if case.labels else [])
    before = _digest(inputs)
    result = CliRunner().invoke(cli, ["eval", *args, "--format", "json"])
    _check_one_line_error(result.exit_code, result.stderr, result.stdout, case)
    assert _digest(inputs) == before


def test_real_process_bad_npy_pickle_no_traceback(tmp_path: Path) -> None:
    """A pickled object array through a real ``python -m smcheck`` process: never unpickled."""
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    before = path.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "smcheck", "eval", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "evil.npy" in proc.stderr
    assert path.read_bytes() == before


def test_output_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    logits = tmp_path / "logits.npy"
    np.save(logits, np.zeros((2, 3), dtype=np.float32))
    before = logits.read_bytes()
    result = CliRunner().invoke(cli, ["eval", str(logits), "--output", str(logits)])
    assert result.exit_code == 2
    assert logits.read_bytes() == before
    result = CliRunner().invoke(cli, ["eval", str(logits), "--per-row", str(logits)])
    assert result.exit_code == 2
    assert logits.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy"]  # no temp files left
