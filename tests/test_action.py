"""The GitHub Action's script and the pre-commit hook, run for real on small fixtures.

``scripts/gh_action.sh`` is what ``action.yml`` runs; here it runs with GITHUB_STEP_SUMMARY
pointed at a temporary file, and its stdout is checked line by line as workflow commands.

Two runs go end to end through smcheck itself (a pass and a failure). The script's own logic -
splitting the command, the two formats, the exit status, the error line it picks - is tested
with a stand-in interpreter (``_fake_python``) that records the arguments smcheck would get
and answers with a given status and text: no smcheck start-up per case.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gh_action.sh"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
ACTION = ROOT / "action.yml"

#: A GitHub workflow command: ::error|warning|notice [properties]::message (one line).
ANNOTATION = re.compile(r"^::(error|warning|notice)( [a-zA-Z]+=[^:,]*(,[a-zA-Z]+=[^:,]*)*)?::.+$")


def _fixtures(directory: Path) -> None:
    """logits.npy (float32, row 3 has a logit of 12 > ln(65504) = 11.09) and labels.npy."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (40, 8)).astype(np.float32)
    z[3, 5] = 12.0
    np.save(directory / "logits.npy", z)
    np.save(directory / "labels.npy", rng.integers(0, 8, 40))


def _run(
    cwd: Path, command: str, summary: Path | None, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "FAKE_"))}
    env["SMCHECK_PYTHON"] = python
    env["SMCHECK_COMMAND"] = command
    if summary is not None:
        env["GITHUB_STEP_SUMMARY"] = str(summary)
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


FAKE = """#!{python}
# Stand-in for the interpreter gh_action.sh runs: '-m smcheck ARGS' is recorded in calls.jsonl
# and answered from answer.json ({{format: [status, stdout, stderr]}}); anything else (the
# script's shlex split) runs in the real interpreter.
import json, os, sys
args = sys.argv[1:]
if "-m" in args and args[args.index("-m") + 1 :][:1] == ["smcheck"]:
    rest = args[args.index("-m") + 2 :]
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "calls.jsonl"), "a") as f:
        f.write(json.dumps({{"pre": args[: args.index("-m")], "args": rest}}) + "\\n")
    with open(os.path.join(here, "answer.json")) as f:
        answer = json.load(f)
    status, out, err = answer[rest[rest.index("--format") + 1]]
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(status)
os.execv({python!r}, [{python!r}, *args])
"""


def _fake_python(directory: Path, answers: dict[str, tuple[int, str, str]]) -> str:
    """A stand-in interpreter in ``directory``: returns its path; calls land in calls.jsonl."""
    path = directory / "fake_python"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    (directory / "answer.json").write_text(json.dumps(answers))
    return str(path)


def _calls(directory: Path) -> list[dict[str, list[str]]]:
    log = directory / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _annotations(stdout: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    bad = [line for line in lines if not ANNOTATION.match(line)]
    assert not bad, f"not workflow commands: {bad}"
    return lines


# --- the action script ---------------------------------------------------------------------------


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


def test_findings_fail_the_step_with_settings_from_the_repository_config(tmp_path: Path) -> None:
    _fixtures(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.smcheck.eval]\ndtype = "float16"\ngate = "naive,fused"\n'
    )
    summary = tmp_path / "summary.md"
    done = _run(tmp_path, "eval logits.npy --labels labels.npy", summary)
    assert done.returncode == 1, done.stderr
    text = summary.read_text()
    assert text.startswith("## smcheck eval: FAIL")
    assert "in **float16**" in text
    errors = [n for n in _annotations(done.stdout) if n.startswith("::error")]
    assert any("naive overflows on 1 row" in e for e in errors)


def test_quoted_paths_are_split_like_a_shell(tmp_path: Path) -> None:
    py = _fake_python(tmp_path, {"markdown": [0, "# report\n", ""], "github": [0, "", ""]})
    command = "eval 'my fixtures/logits.npy' --labels \"my fixtures/labels.npy\" --dtype=f16"
    done = _run(tmp_path, command, tmp_path / "s.md", python=py)
    assert done.returncode == 0, done.stderr
    args = ["eval", "my fixtures/logits.npy", "--labels", "my fixtures/labels.npy", "--dtype=f16"]
    assert [c["args"] for c in _calls(tmp_path)] == [
        [*args, "--format", "markdown"],
        [*args, "--format", "github"],
    ]


def test_markdown_goes_to_the_summary_and_github_lines_to_stdout(tmp_path: Path) -> None:
    notes = "::warning title=smcheck::naive overflows\n"
    py = _fake_python(
        tmp_path, {"markdown": [0, "## smcheck eval: PASS\n", "a note\n"], "github": [0, notes, ""]}
    )
    summary = tmp_path / "s.md"
    done = _run(tmp_path, "eval x.npy", summary, python=py)
    assert done.returncode == 0
    assert summary.read_text() == "## smcheck eval: PASS\n"
    assert done.stdout == notes
    assert "a note" in done.stderr  # smcheck's stderr passes through to the log


@pytest.mark.parametrize(("markdown_rc", "github_rc"), [(0, 1), (1, 0), (1, 1)])
def test_the_step_exits_with_the_worse_status_of_the_two_runs(
    tmp_path: Path, markdown_rc: int, github_rc: int
) -> None:
    py = _fake_python(
        tmp_path, {"markdown": [markdown_rc, "r\n", ""], "github": [github_rc, "", ""]}
    )
    done = _run(tmp_path, "eval x.npy", tmp_path / "s.md", python=py)
    assert done.returncode == max(markdown_rc, github_rc)


def test_bad_input_exits_2_with_the_message_in_summary_and_annotation(tmp_path: Path) -> None:
    err = "smcheck: error: missing.npy: no such file\n"
    py = _fake_python(tmp_path, {"markdown": [2, "", err], "github": [2, "", err]})
    summary = tmp_path / "summary.md"
    done = _run(tmp_path, "eval missing.npy --dtype float16", summary, python=py)
    assert done.returncode == 2
    (note,) = _annotations(done.stdout)
    assert note == "::error title=smcheck (exit 2)::smcheck: error: missing.npy: no such file"
    text = summary.read_text()
    assert text.startswith("### smcheck: error (exit 2)\n\n`smcheck eval missing.npy")
    assert "smcheck: error: " in text
    assert len(_calls(tmp_path)) == 1  # no second run after an error


def test_bad_input_end_to_end(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval missing.npy --dtype float16", tmp_path / "s.md")
    assert done.returncode == 2
    (note,) = _annotations(done.stdout)
    assert note.startswith("::error title=smcheck (exit 2)::smcheck: error: ")
    assert "missing.npy" in note


def test_an_error_message_cannot_end_the_workflow_command(tmp_path: Path) -> None:
    # %, CR and LF in smcheck's message would end the annotation: GitHub's escapes are applied
    err = "smcheck: error: 100% bad\r::stop-commands::x\n"
    py = _fake_python(tmp_path, {"markdown": [2, "", err], "github": [2, "", err]})
    done = _run(tmp_path, "eval x.npy", tmp_path / "s.md", python=py)
    (note,) = _annotations(done.stdout)
    assert note == "::error title=smcheck (exit 2)::smcheck: error: 100%25 bad%0D::stop-commands::x"


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
    err = (
        "Usage: smcheck gradcheck [OPTIONS] [LOGITS]\nTry 'smcheck gradcheck -h' for help.\n\n"
        "Error: Invalid value for '--case': 'bogus' is not one of 'random', 'all'.\n"
    )
    py = _fake_python(tmp_path, {"markdown": [2, "", err], "github": [2, "", err]})
    done = _run(tmp_path, "gradcheck --case bogus", tmp_path / "s.md", python=py)
    assert done.returncode == 2
    (note,) = _annotations(done.stdout)
    assert note.startswith("::error title=smcheck (exit 2)::Error: Invalid value for '--case'")


def test_the_command_is_never_evaluated_by_a_shell(tmp_path: Path) -> None:
    py = _fake_python(tmp_path, {"markdown": [2, "", "smcheck: error: x\n"]})
    done = _run(tmp_path, "eval $(touch pwned).npy `touch pwned2` *.npy", tmp_path / "s.md", py)
    assert done.returncode == 2
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    (call,) = _calls(tmp_path)
    assert call["args"][:5] == ["eval", "$(touch", "pwned).npy", "`touch", "pwned2`"]
    assert call["args"][5] == "*.npy"  # no globbing either


def test_without_a_summary_file_the_markdown_goes_to_stdout(tmp_path: Path) -> None:
    py = _fake_python(tmp_path, {"markdown": [2, "", "smcheck: error: x\n"]})
    done = _run(tmp_path, "eval missing.npy", None, python=py)
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


def _hook_runner(
    directory: Path, path_first: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    (hook,) = _hooks()
    env = dict(os.environ)
    env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    entry = shlex.split(str(hook["entry"]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*entry, *args], cwd=directory, env=env, capture_output=True, text=True, timeout=300
        )

    return run


def test_hook_entry_finds_each_fixtures_labels_and_exits_with_the_worst_status(
    tmp_path: Path,
) -> None:
    # a stand-in `smcheck` on PATH records its arguments and exits with the status named in
    # the fixture's name: the hook's own logic without a smcheck start-up per file
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "smcheck"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, re, sys\n"
        "with open(os.path.join(os.path.dirname(__file__), 'calls.jsonl'), 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "m = re.search(r'rc(\\d)', sys.argv[2])\n"
        "sys.exit(int(m.group(1)) if m else 0)\n"
    )
    fake.chmod(0o755)
    sub = tmp_path / "fx"
    sub.mkdir()
    for name in ("a_logits.npy", "a_labels.npy", "b_rc1_logits.npy", "c.logits_rc2.npz"):
        (sub / name).write_bytes(b"")
    run = _hook_runner(tmp_path, bin_dir)
    done = run("--dtype=float16", "fx/a_logits.npy", "fx/b_rc1_logits.npy")
    assert done.returncode == 1
    calls = [json.loads(x) for x in (bin_dir / "calls.jsonl").read_text().splitlines()]
    assert calls == [
        ["eval", "fx/a_logits.npy", "--labels", "fx/a_labels.npy", "--dtype=float16"],
        ["eval", "fx/b_rc1_logits.npy", "--dtype=float16"],  # no labels file: label-free
    ]
    assert run("fx/c.logits_rc2.npz", "fx/b_rc1_logits.npy").returncode == 2  # the worst


def test_hook_entry_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bad = rng.normal(0, 1, (10, 4)).astype(np.float32)
    bad[2, 1] = 12.0  # overflows float16 in the naive method
    np.save(tmp_path / "bad_logits.npy", bad)
    np.save(tmp_path / "bad_labels.npy", rng.integers(0, 4, 10))
    (tmp_path / "smcheck.toml").write_text('[eval]\ndtype = "float16"\ngate = "naive"\n')
    run = _hook_runner(tmp_path, Path(sys.executable).parent)
    done = run("bad_logits.npy")  # settings from the repository's config
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bad_labels.npy" in done.stdout  # its labels were found
