"""Config files: a stranger's discovered file is not trusted, output/engine settings from a
discovered file are announced, a scheduler only comes from --config, and every bad file is
exit 2 with one line naming it (issue 13)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli
from smcheck.config import untrusted

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _config_file(r: Result) -> object:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["config_file"]


def _one_line_error(r: Result, *parts: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "np.float64" not in r.stderr
    assert len(lines[0]) < 300, lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose config is found from a sub-directory, as in a real checkout."""
    root = tmp_path / "proj"
    (root / "sub").mkdir(parents=True)
    monkeypatch.chdir(root / "sub")
    return root


# --- trust ------------------------------------------------------------------------------------


@ROOT_ONLY
def test_another_users_discovered_config_is_ignored_with_one_warning(project: Path) -> None:
    config = project / "smcheck.toml"
    config.write_text('[eval]\noutput = "/etc/passwd"\n')
    os.chown(config, 12345, 12345)
    r = _run("config", "-f", "json")
    assert _config_file(r) is None
    assert r.stderr.splitlines() == [
        "smcheck: warning: ignoring config file ../smcheck.toml: it is owned by another user "
        "(uid 12345); name it with --config to use it"
    ]
    # named explicitly, it is the user's choice and is read
    r = _run("--config", str(config), "config", "-f", "json")
    assert Path(str(_config_file(r))).resolve() == config and r.stderr == ""


@ROOT_ONLY
def test_regression_own_config_in_another_users_directory_is_ignored(project: Path) -> None:
    """The file was ours but its directory another user's: they can rename another file over
    it, and it was still trusted."""
    config = project / "smcheck.toml"
    config.write_text('[eval]\noutput = "/etc/passwd"\n')
    os.chown(project, 12345, 12345)
    r = _run("config", "-f", "json")
    assert _config_file(r) is None
    assert r.stderr.splitlines() == [
        "smcheck: warning: ignoring config file ../smcheck.toml: its directory .. is owned by "
        "another user (uid 12345); name it with --config to use it"
    ]
    os.chown(project, 0, 0)  # root's directory: trusted as every system directory is
    r = _run("config", "-f", "json")
    assert Path(str(_config_file(r))).resolve() == config and r.stderr == ""


@pytest.mark.parametrize("mode", [0o777, 0o1777])  # like /tmp, sticky or not
def test_discovered_config_in_a_world_writable_directory_is_ignored(
    project: Path, mode: int
) -> None:
    (project / "pyproject.toml").write_text('[tool.smcheck]\ndtype = "float16"\n')
    project.chmod(mode)
    try:
        r = _run("config", "-f", "json")
    finally:
        project.chmod(0o755)
    assert _config_file(r) is None
    assert "is writable by every user" in r.stderr and len(r.stderr.splitlines()) == 1


@ROOT_ONLY
def test_foreign_pyproject_without_smcheck_table_is_passed_over_silently(project: Path) -> None:
    (project / "smcheck.toml").write_text('dtype = "float16"\n')
    inner = project / "sub" / "pyproject.toml"
    inner.write_text('[project]\nname = "x"\n')
    os.chown(inner, 12345, 12345)
    r = _run("config", "-f", "json")
    assert _config_file(r) == "../smcheck.toml" and r.stderr == ""


def test_untrusted_reasons(tmp_path: Path) -> None:
    f = tmp_path / "smcheck.toml"
    f.write_text("")
    assert untrusted(f) is None
    f.chmod(0o666)
    assert untrusted(f) == "it is writable by every user"


# --- announced and refused settings -----------------------------------------------------------


def test_output_from_a_discovered_file_is_announced(project: Path) -> None:
    np.save(project / "x.npy", np.array([[1.0, 2.0]], dtype=np.float32))
    (project / "smcheck.toml").write_text('[eval]\noutput = "report.txt"\nper-row = "rows.csv"\n')
    r = _run("eval", "../x.npy")
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == [
        "smcheck: note: output = 'report.txt' from ../smcheck.toml [eval]",
        "smcheck: note: per-row = 'rows.csv' from ../smcheck.toml [eval]",
    ]
    assert (project / "sub" / "report.txt").exists()


def test_regression_plot_from_a_discovered_file_is_announced(project: Path) -> None:
    """`sweep --plot` set by a discovered smcheck.toml drew a file with no note."""
    pytest.importorskip("matplotlib")
    (project / "smcheck.toml").write_text(
        '[sweep]\nplot = "curves.png"\nclasses = "2"\nscales = "1"\ncase = "random"\n'
        'dtype = "float32"\nmethods = "shifted"\n'
    )
    r = _run("sweep")
    assert r.exit_code in (0, 1), r.output
    assert "smcheck: note: plot = 'curves.png' from ../smcheck.toml [sweep]" in r.stderr
    assert (project / "sub" / "curves.png").exists()


def test_every_option_that_writes_a_path_is_announced() -> None:
    """Each FILE option of every command is either an input (read) or announced (written): a
    new FILE option must be classified here, so a config file cannot redirect it silently."""
    import click

    from smcheck.cli import announced, cli, writes_path

    inputs = {"labels", "loss_file", "grad_file", "weight", "baseline", "hidden", "bias"}
    inputs |= {"linear_weight", "linear_bias", "grad_hidden", "grad_weight", "grad_bias"}
    writers = {"output", "per_row", "write_baseline", "plot"}
    ctx = click.Context(cli)
    seen = set()
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        names = announced(command.params)
        for p in command.params:
            if p.metavar != "FILE":
                continue
            assert p.name in inputs | writers, f"{name} --{p.name}: input or output?"
            assert writes_path(p) == (p.name in writers), (name, p.name)
            assert (p.name in names) == (p.name in writers), (name, p.name)
            seen.add(p.name)
    assert writers <= seen


@pytest.mark.parametrize(
    ("setting", "shown"),
    [('output = ["a", "b"]', 'output = ["a", "b"]'), ("labels = 5", "labels = 5")],
)
def test_regression_path_keys_must_be_strings(project: Path, setting: str, shown: str) -> None:
    """output = ["a", "b"] wrote a file named "a,b"; labels = 5 read the file "5"."""
    np.save(project / "x.npy", np.array([[1.0, 2.0]], dtype=np.float32))
    (project / "smcheck.toml").write_text(f"[eval]\n{setting}\n")
    before = sorted(p.name for p in project.rglob("*"))
    r = _run("eval", "../x.npy")
    _one_line_error(r, "../smcheck.toml", shown, "[eval]: expected a file name (a string)")
    assert sorted(p.name for p in project.rglob("*")) == before


def test_scheduler_from_a_discovered_file_is_refused(project: Path) -> None:
    np.save(project / "x.npy", np.array([[1.0, 2.0]], dtype=np.float32))
    config = project / "smcheck.toml"
    config.write_text('engine = "local"\nscheduler = "tcp://attacker.example:8786"\n')
    r = _run("eval", "../x.npy")
    _one_line_error(r, "../smcheck.toml", "scheduler", "only when --config names that file")
    # other commands do not have the option: the file does not stop them
    # named with --config, the scheduler is the user's choice (unused with the local engine)
    r = _run("--config", str(config), "eval", "../x.npy")
    assert r.exit_code == 0, r.output


# --- bad files: exit 2, one line naming the file ---------------------------------------------


BAD_TOML = {
    "not utf-8": (b'dtype = "\xff\xfe"\n', "invalid TOML: not UTF-8"),
    "deeply nested": (b"top = " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested too deeply"),
    "5000-digit integer": (b"top = " + b"9" * 5000 + b"\n", "too many digits"),
    "chunk-mb inf": (b"chunk-mb = inf\n", "chunk-mb = inf in top level: expected a finite"),
    "chunk-mb nan": (b"chunk-mb = nan\n", "chunk-mb = nan in top level: expected a finite"),
    "ignore-index 1e400": (b"ignore-index = 1e400\n", "ignore-index = inf in top level"),
    "top 3.5": (b"top = 3.5\n", "top = 3.5 in top level: expected an integer"),
    "top true": (b"top = true\n", "top = true in top level: expected an integer"),
    "ignore-index 1.5": (b"[eval]\nignore-index = 1.5\n", "expected an integer"),
    "300-digit top": (
        b"top = -" + b"9" * 300 + b"\n",
        "top = an integer of 300 digits in top level: out of range",
    ),
    "exit-zero text": (b'exit-zero = "yes"\n', "exit-zero = 'yes' in top level: expected true"),
    "unknown dtype": (b'dtype = "float17"\n', "dtype = 'float17' in top level: unknown dtype"),
    "unknown method": (b'methods = ["fused", "bogus"]\n', "unknown method 'bogus'"),
    "long text": (b'format = "' + b"x" * 100000 + b'"\n', "format = 'xxxx"),
}


@pytest.mark.parametrize("name", sorted(BAD_TOML))
@pytest.mark.parametrize("file_name", ["smcheck.toml", "pyproject.toml"])
def test_bad_discovered_config_is_one_line_naming_the_file(
    project: Path, name: str, file_name: str
) -> None:
    body, expected = BAD_TOML[name]
    if file_name == "pyproject.toml":
        body = b"[tool.smcheck]\n" + body.replace(b"[eval]", b"[tool.smcheck.eval]")
        expected = expected.replace("in top level", "in [tool.smcheck]")
    (project / file_name).write_bytes(body)
    before = (project / file_name).read_bytes()
    line = _one_line_error(_run("config"), f"../{file_name}", expected)
    assert line.startswith("smcheck: error: ")
    assert (project / file_name).read_bytes() == before


def test_huge_config_and_dev_zero_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:  # 300 MB, sparse: costs no disk
        fh.truncate(300 * 2**20)
    _one_line_error(_run("--config", str(big), "config"), "big.toml", "larger than 4 MiB")
    _one_line_error(_run("--config", "/dev/zero", "config"), "/dev/zero", "larger than 4 MiB")
