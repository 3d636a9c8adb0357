"""Each command's option table in docs/<command>.md agrees with its click definition.

Every visible option is in the table, with the default click uses; every option in the table
exists. The table is the one under the page's ``option`` header: two columns (``option |
meaning``, the default written ``default X`` in the meaning) or three (``option | default |
meaning``).
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from smcheck.cli import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"
COMMANDS = ("eval", "gradcheck", "sweep", "compare", "kernel")


def _command(name: str) -> click.Command:
    cmd = cli.get_command(click.Context(cli), name)
    assert cmd is not None, name
    return cmd


def _options(name: str) -> dict[str, click.Option]:
    """Visible options by long name (``--top``), ``--help`` left out."""
    out: dict[str, click.Option] = {}
    for p in _command(name).params:
        if isinstance(p, click.Option) and not p.hidden:
            long = [o for o in p.opts if o.startswith("--")][0]
            out[long] = p
    return out


def _table(name: str) -> list[tuple[list[str], str]]:
    """(option names, default text) of each row of the page's option table."""
    lines = (DOCS / f"{name}.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\| *option *\|", line))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        names = re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cells[0])
        if not names:
            continue  # LOGITS, a positional argument
        if "default" in header:
            default = cells[header.index("default")]
        else:
            found = re.findall(r"[Dd]efault:? (`[^`]*`|[^;,)\s]+(?: GiB)?)", cells[-1])
            found += re.findall(r"(`[^`]*`) \(default\)", cells[-1])  # `table` (default)
            default = " / ".join(found)
        rows.append((names, default))
    return rows


def _shown(value: object) -> set[str]:
    """How a default may be written in the docs."""
    if isinstance(value, bool):
        return {str(value).lower()}
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    forms = {text, f"`{text}`"}
    if isinstance(value, int) and value >= 2**30 and value % 2**30 == 0:
        forms.add(f"{value // 2**30} GiB")
    return forms


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_documented_with_its_default(name: str) -> None:
    rows = _table(name)
    documented = {n: default for names, default in rows for n in names}
    options = _options(name)
    missing = sorted(set(options) - set(documented))
    assert not missing, f"docs/{name}.md lacks {missing}"
    for flag, opt in options.items():
        default = opt.default
        if opt.is_flag or default is None or not isinstance(default, str | int | float):
            continue  # a flag, no default, or one computed from the input (the docs say how)
        written = documented[flag]
        assert any(form in written for form in _shown(default)), (
            f"docs/{name}.md: {flag} default {default!r}, the docs say {written!r}"
        )


@pytest.mark.parametrize("name", COMMANDS)
def test_no_documented_option_is_missing_from_the_command(name: str) -> None:
    documented = {n for names, _ in _table(name) for n in names}
    assert not documented - set(_options(name)), f"docs/{name}.md documents {documented}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_never_shows_python_none(name: str) -> None:
    """Regression: an unbounded FiniteFloatRange was described by click as ``[x<=None]``
    in eval's --softcap help; no help text may show a Python ``None``."""
    from click.testing import CliRunner

    out = CliRunner().invoke(cli, [name, "--help"], terminal_width=100).output
    assert "None" not in out, out
