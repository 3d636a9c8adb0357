"""Config files: discovery, precedence (built-in < file < command line), errors naming the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.config import OptionSpec, find_config, load_settings, read_table, resolve
from smcheck.errors import UsageError

SPECS = {
    "eval": {
        "dtype": OptionSpec("dtype", "dtype"),
        "methods": OptionSpec("methods", "methods", default="naive,fused"),
        "format": OptionSpec("format", "fmt", default="table"),
        "max-loss-ulp": OptionSpec("max-loss-ulp", "max_loss_ulp"),
    },
    "sweep": {
        "dtype": OptionSpec("dtype", "dtype"),
        "tag": OptionSpec("tag", "tag", multiple=True),
    },
}


# --- the pure layer: resolve, find, read -------------------------------------------------------


def test_top_level_keys_apply_to_every_command_having_the_option() -> None:
    s = resolve({"dtype": "float16", "max_loss_ulp": 8}, Path("smcheck.toml"), SPECS)
    assert s.default_map == {
        "eval": {"dtype": "float16", "max_loss_ulp": 8},
        "sweep": {"dtype": "float16"},
    }
    assert s.origin["sweep"] == {"dtype": "top level"}


def test_command_tables_override_top_level_in_any_order() -> None:
    # the command table wins even when it comes first in the file
    table = {"eval": {"DTYPE": "bfloat16", "format": "json"}, "dtype": "float16"}
    s = resolve(table, Path("proj/pyproject.toml"), SPECS)
    assert s.default_map["eval"] == {"dtype": "bfloat16", "fmt": "json"}
    assert s.default_map["sweep"] == {"dtype": "float16"}
    assert s.origin["eval"] == {"dtype": "[tool.smcheck.eval]", "fmt": "[tool.smcheck.eval]"}
    assert s.origin["sweep"] == {"dtype": "[tool.smcheck]"}


def test_lists_join_with_commas_unless_the_option_takes_many() -> None:
    s = resolve({"methods": ["fused", "log1p"], "tag": ["a", "b"]}, Path("smcheck.toml"), SPECS)
    assert s.default_map == {"eval": {"methods": "fused,log1p"}, "sweep": {"tag": ["a", "b"]}}
    s = resolve({"tag": "a"}, Path("smcheck.toml"), SPECS)  # one value of a repeatable option
    assert s.default_map == {"sweep": {"tag": ["a"]}}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"dtpe": "f16"}, "x/smcheck.toml: unknown key 'dtpe' in top level; did you mean 'dtype'?"),
        (
            {"eval": {"tag": "a"}},
            "x/smcheck.toml: unknown eval option 'tag' in [eval]; expected one of: dtype, format,",
        ),
        ({"evaluate": {"dtype": "f16"}}, "unknown command table 'evaluate' in top level"),
        ({"eval": {"dtype": {"x": 1}}}, "dtype in [eval] must be a value, not a table"),
    ],
)
def test_unknown_keys_name_key_and_file(table: dict, message: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve(table, Path("x/smcheck.toml"), SPECS)
    assert message in str(info.value)


def test_discovery_walks_up_to_the_nearest_file(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_config(deep) is None or not str(find_config(deep)[0]).startswith(str(tmp_path))
    (tmp_path / "pyproject.toml").write_text('[tool.smcheck]\ndtype = "float16"\n')
    assert find_config(deep) == (tmp_path / "pyproject.toml", {"dtype": "float16"})
    # a pyproject.toml without [tool.smcheck] on the way is passed over
    (tmp_path / "a" / "pyproject.toml").write_text('[project]\nname = "sub"\n')
    assert find_config(deep) == (tmp_path / "pyproject.toml", {"dtype": "float16"})
    # the nearest file wins, and smcheck.toml beats pyproject.toml in the same directory
    (tmp_path / "a" / "b" / "pyproject.toml").write_text('[tool.smcheck]\ndtype = "bf16"\n')
    (tmp_path / "a" / "b" / "smcheck.toml").write_text('dtype = "float32"\n')
    assert find_config(deep) == (tmp_path / "a" / "b" / "smcheck.toml", {"dtype": "float32"})
    s = load_settings(SPECS, cwd=deep)
    assert s.path == tmp_path / "a" / "b" / "smcheck.toml"
    assert s.default_map["sweep"] == {"dtype": "float32"}


def test_bad_files_are_usage_errors_naming_them(tmp_path: Path) -> None:
    broken = tmp_path / "smcheck.toml"
    broken.write_text("dtype = \n")
    with pytest.raises(UsageError, match=r"smcheck.toml: invalid TOML: .*line 1"):
        read_table(broken)
    bare = tmp_path / "pyproject.toml"
    bare.write_text('[project]\nname = "x"\n')
    assert read_table(bare, required=False) is None
    with pytest.raises(UsageError, match=r"pyproject.toml has no \[tool.smcheck\] table"):
        load_settings(SPECS, config=bare)
    with pytest.raises(UsageError, match="missing.toml does not exist"):
        load_settings(SPECS, config=tmp_path / "missing.toml")


# --- through the CLI ----------------------------------------------------------------------------


@click.command("probe")
@click.option("--dtype", default=None)
@click.option("--methods", default="naive,fused")
@click.option("--max-loss-ulp", type=click.FloatRange(min=0), default=None)
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--tag", multiple=True)
@click.option("--exit-zero", is_flag=True)
def probe(**kwargs: object) -> None:
    """Echo the options as received (a stand-in command with the usual option shapes)."""
    click.echo(json.dumps(kwargs))


@pytest.fixture
def with_probe() -> Iterator[None]:
    cli.add_command(probe)
    try:
        yield
    finally:
        del cli.commands["probe"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as the current directory (no config above tmp_path)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _probe(*args: str) -> dict:
    result = CliRunner().invoke(cli, [*args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_file_sets_defaults_and_the_command_line_wins(with_probe: None, project: Path) -> None:
    assert _probe("probe")["dtype"] is None
    (project / "pyproject.toml").write_text(
        '[tool.smcheck]\ndtype = "float16"\nmethods = ["fused", "log1p"]\nexit_zero = true\n'
        '[tool.smcheck.probe]\nmax-loss-ulp = 8\ntag = ["a", "b"]\nformat = "json"\n'
    )
    got = _probe("probe")
    assert got == {
        "dtype": "float16",
        "methods": "fused,log1p",
        "max_loss_ulp": 8.0,
        "fmt": "json",
        "tag": ["a", "b"],
        "exit_zero": True,
    }
    got = _probe("probe", "--dtype", "bf16", "-f", "table", "--tag", "c", "--max-loss-ulp", "2")
    assert got["dtype"] == "bf16" and got["fmt"] == "table"
    assert got["tag"] == ["c"] and got["max_loss_ulp"] == 2.0
    assert got["methods"] == "fused,log1p"  # not on the command line: still the file's


def test_config_option_and_no_config(with_probe: None, project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.smcheck]\ndtype = "float16"\n')
    (project / "ci.toml").write_text('[probe]\ndtype = "float8_e4m3fn"\n')
    assert _probe("--config", "ci.toml", "probe")["dtype"] == "float8_e4m3fn"
    assert _probe("--no-config", "probe")["dtype"] is None
    result = CliRunner().invoke(cli, ["--no-config", "--config", "ci.toml", "probe"])
    assert result.exit_code == 2 and "exclude each other" in result.stderr


def test_walks_up_from_a_subdirectory(
    with_probe: None, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "smcheck.toml").write_text('dtype = "bfloat16"\n')
    (project / "tests" / "fixtures").mkdir(parents=True)
    monkeypatch.chdir(project / "tests" / "fixtures")
    assert _probe("probe")["dtype"] == "bfloat16"
    result = CliRunner().invoke(cli, ["config", "probe"])
    assert result.stdout.startswith("config file: ../../smcheck.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tool.smcheck]\nmax_los_ulp = 1\n", "unknown key 'max_los_ulp' in [tool.smcheck]"),
        ("[tool.smcheck.probe]\nlabels = 'y.npy'\n", "unknown probe option 'labels'"),
        (
            "[tool.smcheck.probe]\nmax-loss-ulp = -1\n",
            "max-loss-ulp = -1 in [tool.smcheck.probe]: -1.0 is not in the range x>=0",
        ),
        ("[tool.smcheck]\nformat = 'html'\n", "format = 'html' in [tool.smcheck]: 'html' is not"),
    ],
)
def test_bad_settings_exit_2_naming_key_and_file(
    with_probe: None, project: Path, text: str, message: str
) -> None:
    (project / "pyproject.toml").write_text(text)
    result = CliRunner().invoke(cli, ["probe"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("smcheck: error: pyproject.toml: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_config_command_shows_values_and_sources(with_probe: None, project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.smcheck]\ndtype = "float16"\n[tool.smcheck.probe]\nmax-loss-ulp = 8\n'
    )
    result = CliRunner().invoke(cli, ["config", "probe", "--format", "json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["config_file"] == "pyproject.toml"
    assert got["commands"] == {
        "probe": {
            "dtype": {"value": "float16", "source": "file:pyproject.toml [tool.smcheck]"},
            "methods": {"value": "naive,fused", "source": "default"},
            "max-loss-ulp": {"value": 8, "source": "file:pyproject.toml [tool.smcheck.probe]"},
            "format": {"value": "table", "source": "default"},
            "tag": {"value": None, "source": "default"},
            "exit-zero": {"value": False, "source": "default"},
        }
    }
    text = CliRunner().invoke(cli, ["config", "probe"]).stdout
    lines = text.splitlines()
    assert lines[0] == "config file: pyproject.toml"
    assert "[probe]" in lines
    row = next(line for line in lines if line.split()[:1] == ["dtype"])
    assert row.split() == ["dtype", "float16", "file:pyproject.toml", "[tool.smcheck]"]
    row = next(line for line in lines if line.split()[:1] == ["max-loss-ulp"])
    assert row.split()[1:] == ["8", "file:pyproject.toml", "[tool.smcheck.probe]"]
    row = next(line for line in lines if line.split()[:1] == ["exit-zero"])
    assert row.split()[1:] == ["false", "default"]


def test_config_command_without_file_and_unknown_command(with_probe: None, project: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "probe"])
    assert result.exit_code == 0
    assert result.stdout.startswith("config file: none found")
    result = CliRunner().invoke(cli, ["config", "nosuch"])
    assert result.exit_code == 2
    assert "unknown command 'nosuch'" in result.stderr


def test_eval_takes_dtype_from_the_file_unless_given(project: Path) -> None:
    rng = np.random.default_rng(0)
    np.save("logits.npy", rng.normal(0, 2, (20, 5)).astype(np.float32))
    np.save("labels.npy", rng.integers(0, 5, 20))
    (project / "pyproject.toml").write_text(
        '[tool.smcheck]\ndtype = "float16"\n[tool.smcheck.eval]\nformat = "json"\n'
    )
    args = ["eval", "logits.npy", "--labels", "labels.npy"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input"]["dtype"] == "float16"
    result = CliRunner().invoke(cli, [*args, "--dtype", "float32"])
    assert json.loads(result.stdout)["input"]["dtype"] == "float32"
    (project / "pyproject.toml").write_text("[tool.smcheck.eval]\nmax-loss-ulps = 2\n")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "pyproject.toml: unknown eval option 'max-loss-ulps'" in result.stderr
    assert "did you mean 'max-loss-ulp'?" in result.stderr


def test_a_number_for_a_flag_is_a_one_line_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "smcheck.toml").write_text("exit-zero = 1\n")
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "smcheck.toml"), "config"])
    assert result.exit_code == 2
    assert "exit-zero = 1" in result.stderr and "Traceback" not in result.output


def test_a_top_level_key_meant_for_another_command_is_dropped_where_it_does_not_fit(
    tmp_path: Path,
) -> None:
    # 'margin' is one of sweep's cases, not gradcheck's: eval and gradcheck still run
    cfg = tmp_path / "smcheck.toml"
    cfg.write_text('case = "margin"\n')
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "sweep", "gradcheck"])
    assert result.exit_code == 0, result.output
    sections = {
        part.split("]", 1)[0]: part for part in result.stdout.split("\n[")[1:]
    }  # "[sweep]\n  option ..." -> {"sweep": ...}
    assert "margin" in sections["sweep"] and "margin" not in sections["gradcheck"]
    cfg.write_text('case = "margin"\n[gradcheck]\ncase = "margin"\n')
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config"])
    assert result.exit_code == 2  # in gradcheck's own table the value is an error
    assert "case = 'margin' in [gradcheck]" in result.stderr
