"""``smcheck kernel TARGET`` end to end with CliRunner: exit codes 0/1/2, formats, -o, colour."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from smcheck.cli import cli

torch = pytest.importorskip("torch")

KERNELS = Path(__file__).parent / "kernels"
GOOD = f"{KERNELS / 'torch_kernels.py'}:good"
TAIL = f"{KERNELS / 'torch_kernels.py'}:tail_dropped"
SMALL = ["--dtype", "float32", "--vocab", "1000", "--rows", "8"]


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["--no-config", "kernel", *args])
    return res.exit_code, res.stdout, res.stderr


def flat(text: str) -> str:
    """The table's text with its line wrapping undone."""
    return " ".join(text.split())


def test_good_kernel_exits_0_with_a_table() -> None:
    code, out, err = run(GOOD, *SMALL, "--probes", "random,tail", "--color", "never")
    assert code == 0, err
    assert "random" in out and "tail" in out and "2 passed, 0 failed" in flat(out)
    assert "\x1b[" not in out


def test_broken_kernel_exits_1_naming_the_probe() -> None:
    code, out, _ = run(TAIL, *SMALL, "--probes", "tail")
    assert code == 1
    assert "FAIL tail[float32-1000]: the vocabulary tail" in flat(out)


def test_exit_zero() -> None:
    code, _, _ = run(TAIL, *SMALL, "--probes", "tail", "--exit-zero")
    assert code == 0


def test_json_output_file(tmp_path: Path) -> None:
    dest = tmp_path / "report.json"
    code, out, _ = run(TAIL, *SMALL, "--probes", "tail,random", "-f", "json", "-o", str(dest))
    assert code == 1 and out == ""
    doc = json.loads(dest.read_text())
    assert doc["schema"] == "smcheck.kernel/1" and doc["ok"] is False
    assert doc["target"] == TAIL and doc["framework"] == "torch"
    assert [p["name"] for p in doc["probes"]] == ["random", "tail"]
    assert all(p["passed"] is False for p in doc["probes"])


@pytest.mark.parametrize("fmt", ["markdown", "github", "junit"])
def test_formats(fmt: str) -> None:
    code, out, _ = run(TAIL, *SMALL, "--probes", "tail", "-f", fmt)
    assert code == 1
    marker = {"markdown": "| tail |", "github": "::error title=", "junit": "<failure"}[fmt]
    assert marker in out


def test_color_always() -> None:
    code, out, _ = run(GOOD, *SMALL, "--probes", "random", "--color", "always")
    assert code == 0 and "\x1b[" in out


def test_module_target_and_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mykernels.py").write_text(
        "import torch\n"
        "def ce(logits, labels):\n"
        "    return torch.nn.functional.cross_entropy(logits.float(), labels).to(logits.dtype)\n"
    )
    monkeypatch.chdir(tmp_path)  # module targets import from the working directory
    code, out, err = run("mykernels:ce", "--quick", "--vocab", "10", "--probes",
                         "random,reduction_sum", "--color", "never")  # fmt: skip
    assert code == 0, err
    assert "SKIP reduction_sum[float32-10]: the kernel does not accept reduction=" in flat(out)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected module:function"),
        ("missing_file.py:fn", "no such file missing_file.py"),
        ("smcheck_no_such_module:fn", "import failed: ModuleNotFoundError"),
        (f"{KERNELS / 'torch_kernels.py'}:nope", "has no attribute 'nope'"),
        (f"{KERNELS / 'torch_kernels.py'}:BLOCK", "BLOCK is not callable"),
    ],
)
def test_bad_target_exits_2_with_one_line(target: str, message: str) -> None:
    code, out, err = run(target)
    assert code == 2 and out == ""
    assert err.startswith("smcheck: error: kernel target") and message in err
    assert err.count("\n") == 1


def test_import_error_of_the_target_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('no GPU here')\n")
    code, _, err = run(f"{bad}:ce")
    assert code == 2 and "import failed: RuntimeError: no GPU here" in err


def test_usage_errors_exit_2() -> None:
    code, _, err = run(GOOD, "--vocab", "10,x")
    assert code == 2 and "--vocab: expected comma-separated integers" in err
    code, _, err = run(GOOD, "--probes", "random,bogus")
    assert code == 2 and "unknown probe 'bogus'" in err
    code, _, err = run(GOOD, "--framework", "numpy", "--device", "cuda")
    assert code == 2 and "numpy kernels run on the CPU" in err
    if not torch.cuda.is_available():
        code, _, err = run(GOOD, "--framework", "torch", "--device", "cuda")
        assert code == 2 and err.startswith("smcheck: error: --device cuda: ")


def test_refuses_to_write_the_report_onto_the_target(tmp_path: Path) -> None:
    src = tmp_path / "k.py"
    src.write_text("def ce(z, y):\n    return z.sum()\n")
    before = src.read_text()
    code, _, err = run(f"{src}:ce", "-o", str(src))
    assert code == 2 and "refusing to write" in err
    assert src.read_text() == before and os.path.exists(src)
