"""The GitHub Action's script and the pre-commit hook, run for real on small fixtures.

``scripts/gh_action.sh`` is what ``action.yml`` runs; here it runs with GITHUB_STEP_SUMMARY
pointed at a temporary file, and its stdout is checked line by line as workflow commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smcheck.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gh_action.sh"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
ACTION = ROOT / "action.yml"

#: A GitHub workflow command: ::error|warning|notice [properties]::message (one line).
ANNOTATION = re.compile(r"^::(error|warning|notice)( [a-zA-Z]+=[^:,]*(,[a-zA-Z]+=[^:,]*)*)?::.+$")


def _eval_formats() -> set[str]:
    cmd = cli.commands.get("eval")
    if cmd is None:
        return set()
    fmt = next((p for p in cmd.params if p.name == "fmt"), None)
    return set(getattr(getattr(fmt, "type", None), "choices", ()))


needs_eval = pytest.mark.skipif(
    not {"markdown", "github"} <= _eval_formats(),
    reason="smcheck eval with --format markdown/github has not landed",
)


def _fixtures(directory: Path) -> None:
    """logits.npy (float32, row 3 has a logit of 12 > ln(65504) = 11.09) and labels.npy."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (40, 8)).astype(np.float32)
    z[3, 5] = 12.0
    np.save(directory / "logits.npy", z)
    np.save(directory / "labels.npy", rng.integers(0, 8, 40))


def _run(cwd: Path, command: str, summary: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env["SMCHECK_PYTHON"] = sys.executable
    env["SMCHECK_COMMAND"] = command
    if summary is not None:
        env["GITHUB_STEP_SUMMARY"] = str(summary)
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _annotations(stdout: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    bad = [line for line in lines if not ANNOTATION.match(line)]
    assert not bad, f"not workflow commands: {bad}"
    return lines


# --- the action script ---------------------------------------------------------------------------


@needs_eval
def test_passing_run_writes_summary_and_exits_0(tmp_path: Path) -> None:
    _fixtures(tmp_path)
    summary = tmp_path / "summary.md"
    summary.write_text("## earlier step\n")  # the summary is appended to, never replaced
    done = _run(tmp_path, "eval logits.npy --labels labels.npy --dtype float16", summary)
    assert done.returncode == 0, done.stderr
    text = summary.read_text()
    assert text.startswith("## earlier step\n## smcheck eval: PASS")
    assert re.search(r"^\| method \|.*\n\|[-:|]+\|$", text, re.M)  # a Markdown table
    assert re.search(r"^\| fused \|", text, re.M)
    notes = _annotations(done.stdout)
    # naive is not gated: its overflow is reported, but not as an error
    assert any(n.startswith("::warning") and "naive overflows" in n for n in notes)
    assert not any(n.startswith("::error") for n in notes)


@needs_eval
def test_findings_fail_the_step_with_error_annotations(tmp_path: Path) -> None:
    _fixtures(tmp_path)
    summary = tmp_path / "summary.md"
    command = "eval logits.npy --labels labels.npy --dtype float16 --gate naive,fused"
    done = _run(tmp_path, command, summary)
    assert done.returncode == 1, done.stderr
    assert summary.read_text().startswith("## smcheck eval: FAIL")
    errors = [n for n in _annotations(done.stdout) if n.startswith("::error")]
    assert any("naive overflows on 1 rows" in e for e in errors)


@needs_eval
def test_settings_come_from_the_repository_config(tmp_path: Path) -> None:
    _fixtures(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.smcheck.eval]\ndtype = "float16"\ngate = "naive"\n'
    )
    done = _run(tmp_path, "eval logits.npy --labels labels.npy", tmp_path / "s.md")
    assert done.returncode == 1
    assert "in **float16**" in (tmp_path / "s.md").read_text()


@needs_eval
def test_quoted_paths_are_split_like_a_shell(tmp_path: Path) -> None:
    sub = tmp_path / "my fixtures"
    sub.mkdir()
    _fixtures(sub)
    command = "eval 'my fixtures/logits.npy' --labels \"my fixtures/labels.npy\""
    done = _run(tmp_path, command, tmp_path / "s.md")
    assert done.returncode == 0, done.stderr


def test_bad_input_exits_2_with_the_message_in_summary_and_annotation(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    done = _run(tmp_path, "eval missing.npy --dtype float16", summary)
    assert done.returncode == 2
    (note,) = _annotations(done.stdout)
    assert note.startswith("::error title=smcheck (exit 2)::smcheck: error: ")
    text = summary.read_text()
    assert text.startswith("### smcheck: error (exit 2)\n\n`smcheck eval missing.npy")
    assert "smcheck: error: " in text


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "the 'command' input is empty"),
        ("  ", "the 'command' input is blank"),
        ("eval x.npy --format json", "leave '--format' out of the command"),
        ("eval x.npy -o out.md", "leave '-o' out of the command"),
        ("eval x.npy -oout.md", "leave '-oout.md' out of the command"),
        ("eval x.npy -fjson", "leave '-fjson' out of the command"),
        ("eval 'unbalanced", "cannot split the command"),
    ],
)
def test_unusable_commands_exit_2(tmp_path: Path, command: str, message: str) -> None:
    done = _run(tmp_path, command, tmp_path / "s.md")
    assert done.returncode == 2
    (note,) = _annotations(done.stdout)
    assert note.startswith("::error title=smcheck action::") and message in note
    assert message in (tmp_path / "s.md").read_text()


def test_a_usage_error_annotation_carries_clicks_error_line(tmp_path: Path) -> None:
    done = _run(tmp_path, "gradcheck --case bogus", tmp_path / "s.md")
    assert done.returncode == 2
    (note,) = _annotations(done.stdout)
    assert note.startswith("::error title=smcheck (exit 2)::Error: Invalid value for '--case'")


def test_the_command_is_never_evaluated_by_a_shell(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval $(touch pwned).npy `touch pwned2` *.npy", tmp_path / "s.md")
    assert done.returncode == 2
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_without_a_summary_file_the_markdown_goes_to_stdout(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval missing.npy", None)
    assert done.returncode == 2
    assert "### smcheck: error (exit 2)" in done.stdout


def test_action_passes_inputs_through_the_environment_only() -> None:
    # ${{ inputs.* }} pasted into a run: script is a script-injection hole; env: is not
    text = ACTION.read_text()
    uses = [line.strip() for line in text.splitlines() if "${{ inputs." in line]
    assert uses, "action.yml reads no inputs"
    allowed = re.compile(r"^(if|python-version|working-directory|SMCHECK_[A-Z_]+): ")
    assert all(allowed.match(u) for u in uses), uses
    assert 'run: bash "$GITHUB_ACTION_PATH/scripts/gh_action.sh"' in text
    for name in ("command:", "version:", "python-version:", "working-directory:"):
        assert f"\n  {name}" in text


# --- the pre-commit hook -------------------------------------------------------------------------


def _hooks() -> list[dict[str, object]]:
    """The hooks file: with PyYAML when installed, else its own small subset of YAML
    (``- key: value`` items, ``key: value`` and ``key: >-`` folded blocks)."""
    text = HOOKS.read_text()
    try:
        import yaml
    except ImportError:
        hooks: list[dict[str, object]] = []
        folded: list[str] | None = None
        for line in text.splitlines():
            if folded is not None and line.startswith("    "):
                folded.append(line.strip())
                continue
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith("- "):
                hooks.append({})
            key, _, value = line[2:].partition(": ")
            value = value.strip()
            if value == ">-":
                folded = []
                hooks[-1][key] = folded
            else:
                folded = None
                hooks[-1][key] = {"true": True, "false": False}.get(value, value)
        for hook in hooks:
            hook.update({k: " ".join(v) for k, v in hook.items() if isinstance(v, list)})
        return hooks
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, list)
    return loaded


def test_hook_file_declares_a_python_hook() -> None:
    (hook,) = _hooks()
    assert hook["id"] == "smcheck-eval"
    assert hook["language"] == "python"  # pre-commit installs this repository: smcheck on PATH
    pattern = re.compile(str(hook["files"]))
    assert pattern.search("tests/fixtures/tiny.logits.npz")
    assert pattern.search("tests/fixtures/big_logits.npy")
    assert not pattern.search("tests/fixtures/big_labels.npy")
    assert not pattern.search("logits_dir/weights.npy")


@needs_eval
def test_hook_entry_checks_each_fixture_with_its_labels(tmp_path: Path) -> None:
    (hook,) = _hooks()
    rng = np.random.default_rng(1)
    ok = rng.normal(0, 1, (10, 4)).astype(np.float32)
    np.savez(tmp_path / "ok.logits.npz", logits=ok, labels=rng.integers(0, 4, 10))
    bad = rng.normal(0, 1, (10, 4)).astype(np.float32)
    bad[2, 1] = 12.0  # overflows float16 in the naive method
    np.save(tmp_path / "bad_logits.npy", bad)
    np.save(tmp_path / "bad_labels.npy", rng.integers(0, 4, 10))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    entry = shlex.split(str(hook["entry"]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*entry, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    done = run("--dtype=float16", "ok.logits.npz", "bad_logits.npy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok.logits.npz" in done.stdout and "bad_labels.npy" in done.stdout  # labels found
    done = run("--dtype=float16", "--gate=naive", "ok.logits.npz", "bad_logits.npy")
    assert done.returncode == 1
    (tmp_path / "smcheck.toml").write_text('[eval]\ndtype = "float16"\ngate = "naive"\n')
    assert run("bad_logits.npy").returncode == 1  # settings from the repository's config
    assert run("ok.logits.npz").returncode == 0
