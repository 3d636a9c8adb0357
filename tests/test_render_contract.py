"""One renderer contract for every format of every command, tables that fit the terminal, and
commands that stay thin (issue 14: renderers and the command tail; issue 18: table width).

Renderers run on hand-built reports (the other test modules' builders) with a pinned width and
no colour; JSON is compared as parsed objects, tables by substring and by line width.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.cli.tail import MIN_WIDTH, table_width
from smcheck.evaluate import WorstRow
from smcheck.render import compare as r_compare
from smcheck.render import eval as r_eval
from smcheck.render import gradcheck as r_gradcheck
from smcheck.render import kernel as r_kernel
from smcheck.render import sweep as r_sweep
from smcheck.render.common import plural

from .test_cli_gradcheck import _report as gradcheck_report
from .test_compare import _hand_report as compare_report
from .test_kernel_hardening import _hand_report as kernel_report
from .test_render_eval import _method
from .test_render_eval import make_report as eval_report
from .test_sweep import _hand_report as sweep_report

CLI = Path(__file__).resolve().parent.parent / "smcheck" / "cli"
METHODS = ("naive", "shifted", "fused", "log1p", "online")


def _wide_eval_report() -> Any:
    """Every method, big counts and row numbers, non-finite cells: the widest eval table."""
    methods = tuple(
        _method(n, gated=n == "fused", nan_loss_rows=12345, loss_max_ulp_err=1.37e3)
        for n in METHODS
    )
    cells = tuple((n, None, None, True) if i % 2 else (n, 1.0, 1.2e-4, False)
                  for i, n in enumerate(METHODS))  # fmt: skip
    worst = (WorstRow(1234567, 32000, 22.9, 30.25, 7.3e-14, 30.25, cells),)
    return eval_report(methods=methods, worst=worst)


#: command -> (render module, a report built by hand or by the library on a tiny input)
CASES: dict[str, tuple[ModuleType, Callable[[], Any]]] = {
    "eval": (r_eval, _wide_eval_report),
    "gradcheck": (r_gradcheck, lambda: gradcheck_report(methods=list(METHODS), gate=["fused"])),
    "sweep": (r_sweep, lambda: sweep_report(gate=("naive",))),
    "compare": (r_compare, compare_report),
    "kernel": (r_kernel, kernel_report),
}


def _format_choices(command: str) -> list[str]:
    cmd = cli.commands[command]
    (fmt,) = [p for p in cmd.params if p.name == "fmt"]
    assert isinstance(fmt.type, click.Choice)
    return list(fmt.type.choices)


@pytest.mark.parametrize("command", sorted(CASES))
def test_every_format_of_the_command_has_a_renderer(command: str) -> None:
    module, _ = CASES[command]
    assert list(module.RENDERERS) == _format_choices(command)


@pytest.mark.parametrize("command", sorted(CASES))
def test_one_signature_for_every_renderer(command: str) -> None:
    module, _ = CASES[command]
    for fmt, fn in module.RENDERERS.items():
        params = inspect.signature(fn).parameters
        kinds = [(p.name, p.kind, p.default) for p in list(params.values())[1:]]
        assert kinds == [
            ("color", inspect.Parameter.KEYWORD_ONLY, False),
            ("width", inspect.Parameter.KEYWORD_ONLY, None),
        ], (command, fmt)
    sig = inspect.signature(module.render)
    assert list(sig.parameters)[1:] == ["fmt", "color", "width"]


@pytest.mark.parametrize("command", sorted(CASES))
def test_render_dispatches_and_json_is_the_document(command: str) -> None:
    module, build = CASES[command]
    report = build()
    for fmt, fn in module.RENDERERS.items():
        text = module.render(report, fmt, color=False, width=100)
        assert text == fn(report, color=False, width=100) and text.endswith("\n")
        assert "\x1b[" not in text, fmt
    assert json.loads(module.render(report, "json")) == json.loads(
        json.dumps(module.to_dict(report))
    )
    assert "\x1b[" in module.render(report, "table", color=True)


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("command", sorted(CASES))
def test_table_fits_the_width_without_cutting_a_cell(command: str, width: int) -> None:
    """Narrower than its full layout a table drops optional columns and abbreviates headers: a
    cell cut to ``7.26e-…`` (or a gated ``fused *`` cut to ``fuse…``) would mislead."""
    module, build = CASES[command]
    text = module.render(build(), "table", width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text, text


def test_compact_eval_table_keeps_every_method_and_the_gate_mark() -> None:
    text = r_eval.render(_wide_eval_report(), "table", width=80)
    assert "fused *" in text and "1.37e+03" in text and "1234567" in text
    assert "median" not in text  # an optional column, left out
    full = r_eval.render(_wide_eval_report(), "table", width=100)
    assert "loss ulp" in full and "median" in full and "non-finite" in full


def test_plural() -> None:
    assert [plural(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]
    assert plural(1, "class") == "1 class" and plural(5, "class") == "5 classes"


def test_eval_table_says_1_row_and_1_class() -> None:
    rep = eval_report()
    import dataclasses

    inp = dataclasses.replace(rep.input, rows=1, classes=1, rows_over_ln_max=1)
    text = r_eval.render(dataclasses.replace(rep, input=inp), "table")
    assert "1 row x 1 class" in text and "1 row above it" in text


# --------------------------------------------------------------------------- the width


class _Tty:
    def isatty(self) -> bool:
        return True


def test_table_width_policy() -> None:
    assert table_width(None, env={"COLUMNS": "80"}) == 80
    assert table_width("-", env={"COLUMNS": "132"}) == 132
    assert table_width(None, env={"COLUMNS": "20"}) == MIN_WIDTH
    assert table_width("report.txt", env={"COLUMNS": "80"}) is None  # a file: the default
    assert table_width(None, env={"COLUMNS": "wide"}) is None  # not a terminal, bad COLUMNS
    assert table_width(None, env={}) is None
    width = table_width(None, stream=_Tty(), env={})  # the terminal's, if it has a size
    assert width is None or width >= MIN_WIDTH


@pytest.mark.parametrize("columns", ["80", "100"])
def test_cli_tables_fit_columns(tmp_path: Path, columns: str) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((30, 7)) * 8).astype(np.float32)
    x[0, 1] = 40.0  # naive overflows in float16
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", rng.integers(0, 7, 30))
    runs = {
        "eval": ["eval", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--dtype", "float16", "--methods", "all"],
        "gradcheck": ["gradcheck", "--rows", "6", "--methods", "all", "--dtype", "float16"],
        "sweep": ["sweep", "--dtype", "float16", "--classes", "10", "--scales", "1:1e4:9",
                  "--jobs", "1"],
    }  # fmt: skip
    for name, args in runs.items():
        result = CliRunner().invoke(cli, args, env={"COLUMNS": columns})
        assert result.exit_code in (0, 1), (name, result.output)
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= int(columns), (name, result.stdout)
        assert "…" not in result.stdout, (name, result.stdout)


# --------------------------------------------------------------------------- thin commands


@pytest.mark.parametrize(
    "module", ["eval_cmd", "gradcheck_cmd", "sweep_cmd", "compare_cmd", "kernel_cmd"]
)
def test_command_stays_thin(module: str) -> None:
    """parse -> one analysis call -> render and end through the shared tail: no format table,
    no output, baseline or exit code handling of its own."""
    source = (CLI / f"{module}.py").read_text()
    tree = ast.parse(source)
    (command,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == module]
    body = command.body[1:]  # after the docstring (its --help)
    assert len(body) <= 12, f"{module}: {len(body)} statements"
    last = body[-1]
    assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
    assert isinstance(last.value.func, ast.Name) and last.value.func.id == "finish"
    called = {
        n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
        for n in ast.walk(command)
        if isinstance(n, ast.Call)
    }
    assert not called & {"echo", "emit", "finish_baseline", "exit", "exit_code", "wants_color"}
    assert "RENDERERS:" not in source and "RENDERERS =" not in source  # tables live in render/


@pytest.mark.parametrize(
    "args",
    [
        ["gradcheck", "--rows", "4"],
        ["sweep", "--dtype", "float16", "--classes", "10", "--scales", "1,100", "--jobs", "1"],
    ],
)
def test_one_colour_policy_for_a_report_file(tmp_path: Path, args: list[str]) -> None:
    """Every command decides colour in the shared tail: a report file gets ANSI codes only with
    ``--color always`` (or FORCE_COLOR), never because stdout happens to be a terminal."""
    out = tmp_path / "report.txt"
    env = {"NO_COLOR": "", "FORCE_COLOR": ""}
    CliRunner().invoke(cli, [*args, "-o", str(out), "--color", "always"], env=env)
    assert "\x1b[" in out.read_text()
    CliRunner().invoke(cli, [*args, "-o", str(out)], env=env)
    assert "\x1b[" not in out.read_text()
    CliRunner().invoke(cli, [*args, "-o", str(out)], env={"FORCE_COLOR": "1", "NO_COLOR": ""})
    assert "\x1b[" in out.read_text()
