"""scripts/doc_outputs.py: console blocks are re-run, stale ones listed by --check."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "doc_outputs.py"


@pytest.fixture(scope="module")
def doc_outputs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("doc_outputs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_outputs"] = module
    spec.loader.exec_module(module)
    return module


PAGE = """# a page

```console
$ printf 'one\\ntwo   \\n'; false
stale output
$ echo $?
$ ls samples | grep -c npy
```

<!-- not-run -->
```console
$ pip install something-that-is-not-run
Successfully installed
```

<!-- doc-outputs: file cfg.txt -->
```text
from the page
```

<!-- doc-outputs: with cfg.txt -->
```console
$ cat cfg.txt; printf 'x\\n' | false | cat; echo piped=$?
```
"""


def test_stale_blocks_are_listed_then_regenerated(doc_outputs, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    assert doc_outputs.main(["--check", str(page)]) == 1
    err = capsys.readouterr().err
    assert "2 console block(s) differ" in err and "page.md:3: $ printf" in err
    assert page.read_text() == PAGE  # --check writes nothing
    assert doc_outputs.main([str(page)]) == 0
    text = page.read_text()
    # each command's real output, trailing spaces dropped; $? carries over between lines
    npy = len(list((SCRIPT.parent.parent / "samples").glob("*.npy")))
    assert "$ printf 'one\\ntwo   \\n'; false\none\ntwo\n$ echo $?\n1\n" in text
    assert f"$ ls samples | grep -c npy\n{npy}\n```" in text  # a copy of the samples
    assert "stale output" not in text
    assert "$ pip install something-that-is-not-run\nSuccessfully installed\n" in text
    # the file block is written for the block that asks for it; a pipe's status is its first
    # failing command's (pipefail), as `smcheck ... | tail; echo exit=$?` needs
    assert (
        "$ cat cfg.txt; printf 'x\\n' | false | cat; echo piped=$?\nfrom the page\npiped=1\n"
        in text
    )
    assert doc_outputs.main(["--check", str(page)]) == 0
