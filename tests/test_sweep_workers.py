"""sweep says `workers` as every other command does; `jobs` is its old name, for one release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.errors import UsageError
from smcheck.sweep import SweepConfig, sweep

TINY = SweepConfig(dtypes=("float16",), classes=(10,), cases=("margin",), scales=(1.0, 20.0))
ARGS = ["sweep", "--dtype", "float16", "--classes", "10", "--case", "margin", "--scales", "1,20"]


def test_jobs_is_the_deprecated_name_of_workers() -> None:
    with pytest.warns(DeprecationWarning, match=r"sweep\(jobs=\.\.\.\) is deprecated.*workers="):
        old = sweep(TINY, jobs=1)
    assert old == sweep(TINY, workers=1)
    with pytest.raises(UsageError, match="give only workers="):
        sweep(TINY, workers=2, jobs=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'job'"):
        sweep(TINY, job=2)


def test_cli_flag_and_config_key_jobs_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    new = runner.invoke(cli, ["--no-config", *ARGS, "--workers", "1", "-f", "json"])
    old = runner.invoke(cli, ["--no-config", *ARGS, "--jobs", "1", "-f", "json"])
    assert new.exit_code == old.exit_code == 0
    assert json.loads(new.stdout) == json.loads(old.stdout)
    (tmp_path / "smcheck.toml").write_text("[sweep]\njobs = 1\n")
    shown = runner.invoke(cli, ["config", "sweep"])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.stdout.splitlines() if line.split()[:1] == ["workers"]]
    assert len(lines) == 1 and "file:smcheck.toml" in lines[0]  # listed once, from the file
