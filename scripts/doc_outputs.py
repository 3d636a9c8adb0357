"""Re-run every ```console block of README.md, docs/*.md and samples/README.md and paste its
real output, so the docs cannot drift from what smcheck prints.

    python scripts/doc_outputs.py            # rewrite the blocks whose output changed
    python scripts/doc_outputs.py --check    # exit 1 listing the blocks that differ

A block's ``$ ...`` lines (a line ending in ``\\`` continues the command) run in order in one
bash process, in a fresh temporary directory holding copies of ``samples/``, ``scripts/`` and
``tests/kernels/``,
with COLUMNS=100 NO_COLOR=1 and an ``smcheck`` on PATH that runs this checkout; stdout and
stderr are pasted together, trailing spaces dropped. Commands may use pipes, ``; echo exit=$?``,
``echo $?`` on a line of its own, and files in /tmp.

Markers, an HTML comment on the line before a fence:

* ``<!-- not-run -->`` before a console block: left as written (a ``pip install`` line, a
  transcript from a GitHub runner).
* ``<!-- doc-outputs: run -->`` before a ```python block: the script is run once, in the
  page's directory, before the console blocks after it (it makes the files they use).
* ``<!-- doc-outputs: file NAME -->`` before any block: its text is kept as the file NAME, and
  ``<!-- doc-outputs: with NAME -->`` before a console block writes it into that block's
  directory (a config file shown in the page that the example reads).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = "<!-- not-run -->"
RUN = "<!-- doc-outputs: run -->"
FILE = re.compile(r"<!-- doc-outputs: file (\S+) -->")
WITH = re.compile(r"<!-- doc-outputs: with (\S+) -->")
MARK = "@@smcheck-doc-outputs@@"
#: Seconds one block may run.
TIMEOUT = 300


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "samples/README.md"]


@dataclass
class Block:
    """One fenced block: its fence line (0-based), its language and its body lines."""

    start: int
    end: int  # the closing fence
    lang: str
    body: list[str]
    marker: str

    def commands(self) -> list[str]:
        """The ``$ `` commands, continuation lines joined with their newlines."""
        out: list[str] = []
        cont = False
        for line in self.body:
            if cont:
                out[-1] += "\n" + line
            elif line.startswith("$ "):
                out.append(line[2:])
            else:
                continue
            cont = line.endswith("\\")
        return out


def blocks(lines: list[str]) -> list[Block]:
    found = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m is None or not m.group(1):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
        marker = lines[i - 1].strip() if i > 0 else ""
        found.append(Block(i, end, m.group(1), lines[i + 1 : end], marker))
        i = end + 1
    return found


def environment(bindir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORCE_COLOR", "SMCHECK"))}
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.update(
        COLUMNS="100",
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
        PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def tools(bindir: Path) -> None:
    """``smcheck``, ``python`` and ``python3`` that run this checkout with this interpreter."""
    bindir.mkdir()
    for name, tail in (("smcheck", ' -m smcheck "$@"'), ("python", ' "$@"'), ("python3", ' "$@"')):
        p = bindir / name
        p.write_text(f'#!/bin/sh\nexec "{sys.executable}"{tail}\n')
        p.chmod(0o755)


def run_block(commands: list[str], cwd: Path, env: dict[str, str]) -> list[list[str]]:
    """Each command's output lines, run in order in one bash (``$?`` carries over)."""
    # pipefail: in `smcheck ... | tail; echo exit=$?` the status is smcheck's, not tail's
    script = ["exec 2>&1", "set -o pipefail"]
    for cmd in commands:
        script += [cmd, f"__rc=$?; printf '\\n{MARK}\\n'; (exit $__rc)"]
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
        check=False,
    )
    text = proc.stdout.decode("utf-8", "replace")
    parts = text.split(f"\n{MARK}\n")[: len(commands)]
    out = []
    for part in parts:
        lines = [line.rstrip() for line in part.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        out.append(lines)
    while len(out) < len(commands):
        out.append(["(no output: the block stopped before this command)"])
    return out


def redo_page(path: Path, base: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """The page with every console block's output redone, and the blocks that changed."""
    lines = path.read_text(encoding="utf-8").split("\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    tag = re.sub(r"\W", "_", str(shown))
    page = base / tag
    page.mkdir()
    # tests/kernels: the deliberately broken kernels the kernel pages run
    for what in ("samples", "scripts", "tests/kernels"):
        shutil.copytree(ROOT / what, page / what, ignore=shutil.ignore_patterns("__pycache__"))
    files: dict[str, str] = {}
    new = list(lines)
    changed: list[str] = []
    # replace from the end so earlier line numbers stay valid
    edits: list[tuple[int, int, list[str]]] = []
    for n, b in enumerate(blocks(lines)):
        f = FILE.fullmatch(b.marker)
        if f:
            files[f.group(1)] = "\n".join(b.body) + "\n"
        if b.lang == "python" and b.marker == RUN:
            done = subprocess.run([sys.executable, "-c", "\n".join(b.body)], cwd=page, env=env)
            if done.returncode:  # e.g. torch missing: the examples after it cannot be redone
                raise SystemExit(f"{shown}:{b.start + 1}: the setup script failed (see above)")
        if b.lang != "console" or b.marker == NOT_RUN or f:
            continue
        commands = b.commands()
        if not commands:
            continue
        cwd = base / f"{tag}-{n}"
        shutil.copytree(page, cwd, symlinks=True)
        w = WITH.fullmatch(b.marker)
        if w:
            (cwd / w.group(1)).write_text(files[w.group(1)], encoding="utf-8")
        body: list[str] = []
        for cmd, out in zip(commands, run_block(commands, cwd, env), strict=True):
            body += [f"$ {line}" if i == 0 else line for i, line in enumerate(cmd.split("\n"))]
            body += out
        shutil.rmtree(cwd, ignore_errors=True)
        if body != b.body:
            first = commands[0].split("\n")[0]
            changed.append(f"{shown}:{b.start + 1}: $ {first}")
            edits.append((b.start + 1, b.end, body))
    for start, end, body in reversed(edits):
        new[start:end] = body
    return "\n".join(new), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list differing blocks, exit 1")
    parser.add_argument("pages", nargs="*", type=Path, help="pages to redo (default: all)")
    args = parser.parse_args(argv)
    todo = [p.resolve() for p in args.pages] or pages()
    t0 = time.monotonic()
    changed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="smcheck-doc-outputs-") as tmp:
        base = Path(tmp)
        tools(base / "bin")
        env = environment(base / "bin")
        for path in todo:
            text, diff = redo_page(path, base, env)
            changed += diff
            if diff and not args.check:
                path.write_text(text, encoding="utf-8")
    took = time.monotonic() - t0
    if args.check and changed:
        print(f"{len(changed)} console block(s) differ from a real run:", file=sys.stderr)
        for c in changed:
            print(f"  {c}", file=sys.stderr)
        print("regenerate them with: python scripts/doc_outputs.py", file=sys.stderr)
        return 1
    verb = "differ" if args.check else "rewritten"
    print(f"doc_outputs: {len(changed)} block(s) {verb}, {took:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
