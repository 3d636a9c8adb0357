"""Re-run every console example in README.md and paste its real output (run from the repo root).

Each block is a ```console fence whose first line is ``$ smcheck ...``; an optional
``$ echo $?`` line gets the real exit status. The compare example needs the dump that
docs/compare.md's script makes: it is built in a temporary directory first.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: str, cwd: Path) -> tuple[str, int]:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    argv = shlex.split(cmd)
    argv[0:1] = [sys.executable, "-m", "smcheck"]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return "\n".join(line.rstrip() for line in proc.stdout.rstrip().splitlines()), proc.returncode


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "samples").symlink_to(ROOT / "samples")
        doc = (ROOT / "docs" / "compare.md").read_text()
        script = re.search(r"```python\n(import numpy as np\n.*?)```", doc, re.S)
        assert script, "docs/compare.md: the dump script is missing"
        subprocess.run([sys.executable, "-c", script.group(1)], cwd=work, check=True)
        fence = re.compile(r"```console\n\$ (smcheck [^\n]*)\n(.*?)```", re.S)

        def redo(m: re.Match[str]) -> str:
            cmd, body = m.group(1), m.group(2)
            out, code = run(cmd, work)
            tail = f"$ echo $?\n{code}\n" if "$ echo $?" in body else ""
            return f"```console\n$ {cmd}\n{out}\n{tail}```"

        text = fence.sub(redo, text)
    readme.write_text(text)


if __name__ == "__main__":
    main()
