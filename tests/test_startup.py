"""Start-up stays cheap (issue 18: ``smcheck --help`` took ~0.9 s importing every analysis and
every command): ``import smcheck`` and ``smcheck --help`` import no analysis, a command imports
only its own module, and the public API is unchanged."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from smcheck.cli import COMMANDS, _Commands, cli

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> list[str]:
    """The smcheck/numpy modules a fresh interpreter holds after running ``code``."""
    probe = (
        f"{code}\nimport sys, json\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('smcheck', 'numpy', 'rich', 'ml_dtypes'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_smcheck_imports_no_analysis_and_no_numpy():
    mods = _modules_after("import smcheck")
    assert "numpy" not in mods
    assert not [m for m in mods if m.startswith(("smcheck.evaluate", "smcheck.engine"))]


def test_help_imports_no_command_module():
    code = (
        "from smcheck.cli import cli\n"
        "try:\n    cli.main(['--help'], prog_name='smcheck')\nexcept SystemExit:\n    pass"
    )
    mods = _modules_after(code)
    assert not [m for m in mods if m.endswith("_cmd")], mods
    assert "numpy" not in mods and "rich" not in mods


def test_a_command_imports_only_its_own_module():
    code = (
        "from smcheck.cli import cli\n"
        "try:\n    cli.main(['sweep', '--help'], prog_name='smcheck')\nexcept SystemExit:\n"
        "    pass"
    )
    cmds = [m for m in _modules_after(code) if m.endswith("_cmd")]
    assert cmds == ["smcheck.cli.sweep_cmd"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_table_matches_each_commands_docstring(name):
    # the listing comes from the table without importing the command: it must say what the
    # command's own docstring would (click's first paragraph, shortened to the space left)
    cmd = cli.commands[name]
    first = " ".join(inspect.cleandoc(cmd.help or "").split("\n\n")[0].split())
    assert COMMANDS[name][1] == first
    assert dict.__getitem__(cli.commands, name) is cmd


def test_help_lists_every_command_with_its_short_help():
    out = CliRunner().invoke(cli, ["--help"], terminal_width=100).output
    listed = out.split("Commands:")[1].split()
    for name in COMMANDS:
        assert name in listed
    assert "Audit the softmax cross-entropy of LOGITS" in out


def test_a_missing_command_module_fails_loudly():
    table = {"ghost": ("ghost_cmd", "A command whose module is missing.")}
    with pytest.raises(ModuleNotFoundError, match="ghost_cmd"):
        _ = _Commands(table, {})["ghost"]
    nothing = {"ghost": ("options", "A module that registers no such command.")}
    with pytest.raises(RuntimeError, match="did not register the command 'ghost'"):
        _Commands(nothing, {}).get("ghost")


def test_public_names_resolve_and_stay_functions_over_submodules():
    import smcheck.compare
    import smcheck.evaluate
    import smcheck.reference  # noqa: F401 - binds the submodules, as the CLI's imports do

    for name in smcheck.__all__:
        assert getattr(smcheck, name) is not None, name
    for name in ("evaluate", "compare", "gradcheck", "sweep", "kernel", "reference"):
        assert inspect.isfunction(getattr(smcheck, name)), name
    from smcheck import evaluate

    assert evaluate.__module__ == "smcheck.evaluate"
    assert set(smcheck.__all__) <= set(dir(smcheck))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = smcheck.nonexistent  # type: ignore[attr-defined]
