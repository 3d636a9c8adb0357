"""``smcheck kernel`` after an outside review: the report never overwrites the kernel's source,
bad sizes and seeds exit 2 (not 3), one gate metric, ``judge`` (was ``gate``) and
:class:`KernelOptions`, a target's prints kept off stdout, an unavailable ``--device`` named.

Targets are small numpy modules written to ``tmp_path``: no framework import, fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import smcheck
from smcheck.cli import cli
from smcheck.errors import UsageError
from smcheck.kernel import KernelOptions, KernelReport, ProbeResult, kernel, target_files
from smcheck.kernel.measure import _ulps
from smcheck.precisions import get_precision

from .kernels import other_kernels as ok

#: A correct numpy kernel (max-shifted, float64 inside), as a module source.
NUMPY_CE = """\
import numpy as np
{before}
def ce(z, y):
    {during}
    d = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    return (np.log(np.exp(d).sum(axis=1)) - d[np.arange(len(y)), y]).astype(z.dtype)
"""
SMALL = ["--framework", "numpy", "--vocab", "10", "--rows", "6", "--probes", "random"]


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["--no-config", "kernel", *args])
    return res.exit_code, res.stdout, res.stderr


def _module(tmp_path: Path, name: str, before: str = "", during: str = "pass") -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(NUMPY_CE.format(before=before, during=during))
    return path


# --- 1. -o onto the kernel's own source ---------------------------------------------------------


def test_output_onto_module_targets_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``smcheck kernel MODULE:FUNC -o MODULE.py`` replaced the user's kernel with the report:
    only a ``file.py:`` target's path was protected."""
    src = _module(tmp_path, "kfix_refuse_mod")
    before = src.read_text()
    monkeypatch.chdir(tmp_path)  # module targets import from the working directory
    code, out, err = run("kfix_refuse_mod:ce", *SMALL, "-o", "kfix_refuse_mod.py")
    assert code == 2 and out == "", err
    assert "refusing to write" in err and err.count("\n") == 1
    assert src.read_text() == before


def test_target_files_are_the_functions_source_and_its_module() -> None:
    files = target_files(ok.numpy_good)
    assert Path(ok.__file__).resolve() in {Path(f).resolve() for f in files}
    assert target_files(len) == ()  # a builtin has no file to protect


# --- 2. exit 2, not 3 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vocab", "99999999999"], "--vocab 99999999999"),
        (["--rows", "1000000000000", "--vocab", "10"], "--rows 1000000000000 x --vocab 10"),
        (["--vocab", "99999999999999999999999999"], "more than this machine's"),
    ],
)
def test_bad_seed_and_impossible_sizes_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """``--seed -1`` was "internal error: ValueError" and ``--vocab 99999999999`` "out of
    memory" (exit 3): both are bad usage, refused before anything is allocated."""
    src = _module(tmp_path, "kfix_sizes")
    base = ["--framework", "numpy", "--probes", "random"]
    code, out, err = run(f"{src}:ce", *base, *args)
    assert code == 2 and out == "", err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_negative_seed_exits_2(tmp_path: Path) -> None:
    """``--seed -1`` was "internal error: ValueError" (numpy's generators take no negative seed):
    click's range check, as gradcheck's and sweep's."""
    src = _module(tmp_path, "kfix_seed")
    code, out, err = run(f"{src}:ce", *SMALL, "--seed", "-1")
    assert code == 2 and out == "" and "Invalid value for '--seed'" in err
    with pytest.raises(UsageError, match="seed must be non-negative"):
        kernel(ok.numpy_good, seed=-1, vocab=(10,))


def test_library_refuses_impossible_sizes_before_detecting_the_framework() -> None:
    with pytest.raises(UsageError, match="--vocab 99999999999 = "):
        kernel(ok.numpy_good, vocab=(99999999999,))


# --- 3. one renderer contract, one command tail (also in test_render_contract) ------------------


def test_kernel_report_through_the_shared_tail_keeps_the_json(tmp_path: Path) -> None:
    src = _module(tmp_path, "kfix_tail")
    dest = tmp_path / "r.json"
    code, out, _ = run(f"{src}:ce", *SMALL, "-f", "json", "-o", str(dest))
    assert code == 0 and out == ""
    doc = json.loads(dest.read_text())
    assert doc["schema"] == "smcheck.kernel/1" and doc["ok"] is True
    assert doc["judge"] == "either" and doc["gate"] == "either"  # the old key, one release


# --- 4. one gate metric -------------------------------------------------------------------------


def test_kernel_loss_error_is_the_gate_metric_plus_its_nonfinite_step() -> None:
    """Closed forms in float32: 3 ulps of 1 (2**-23 each) above L* = 1; 0.5 ulp of max(|L*|, 1)
    for 2**-24 below L* = 1e-20 (absolute there); the reference's infinity returned exactly is
    exact; NaN, or inf where L* is finite, is infinitely wrong."""
    t = get_precision("float32")
    value = np.array([1 + 3 * 2.0**-23, 2.0**-24, math.inf, math.nan, math.inf, 5.0])
    exact = np.array([1.0, 1e-20, math.inf, 2.0, 2.0, -math.inf])
    err = _ulps(value, exact, t)
    np.testing.assert_allclose(err[:2], [3.0, 0.5], rtol=1e-12)
    assert list(err[2:]) == [0.0, math.inf, math.inf, math.inf]


def test_measure_has_no_gate_metric_of_its_own() -> None:
    source = (Path(smcheck.__file__).parent / "kernel" / "measure.py").read_text()
    assert "loss_gate_err(" in source and ".ulp(" not in source


# --- 5. KernelOptions and judge -----------------------------------------------------------------


def _off(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """10 float32 ulps above log(1000) (ulp 2**-21 at 6.9): inside the reference limit (14), 10
    ulps worse than the stock kernel."""
    return np.full(len(y), math.log(1000) + 10 * 2.0**-21)


def test_kernel_options_object_equals_the_keywords() -> None:
    opts = KernelOptions(framework="numpy", vocab=(1000,), probes="uniform", judge="stock")
    a = kernel(_off, opts)
    b = kernel(_off, framework="numpy", vocab=(1000,), probes="uniform", judge="stock")
    assert a.judge == b.judge == "stock"
    assert [p.status for p in a.probes] == [p.status for p in b.probes] == ["fail"]
    assert smcheck.KernelOptions is KernelOptions and "KernelOptions" in smcheck.__all__


def test_gate_keyword_is_a_deprecated_name_of_judge() -> None:
    with pytest.warns(DeprecationWarning, match=r"kernel\(gate=...\) is deprecated.*judge="):
        r = kernel(_off, framework="numpy", vocab=(1000,), probes="uniform", gate="stock")
    assert r.judge == "stock" and r.probes[0].status == "fail"
    with pytest.raises(UsageError, match="give only judge="):
        kernel(_off, framework="numpy", vocab=(1000,), gate="stock", judge="either")


def test_cli_judge_and_the_hidden_deprecated_gate(tmp_path: Path) -> None:
    src = tmp_path / "kfix_judge.py"
    src.write_text(
        "import math\nimport numpy as np\n"
        "def ce(z, y):\n    return np.full(len(y), math.log(1000) + 10 * 2.0**-21)\n"
    )
    args = [f"{src}:ce", "--framework", "numpy", "--vocab", "1000", "--probes", "uniform"]
    code, out, err = run(*args, "--judge", "stock", "-f", "json")
    assert code == 1 and err == "" and json.loads(out)["judge"] == "stock"
    code, out, err = run(*args, "--gate", "reference", "-f", "json")
    assert code == 0 and json.loads(out)["judge"] == "reference"
    assert "--gate is deprecated" in err and "--judge reference" in err and err.count("\n") == 1
    code, _, err = run(*args, "--gate", "stock", "--judge", "reference")
    assert code == 2 and "give only --judge" in err
    help_text = CliRunner().invoke(cli, ["kernel", "--help"]).stdout
    assert "--judge" in help_text and "--gate" not in help_text


# --- 6. the target's stdout; an unavailable device ----------------------------------------------


def test_target_printing_does_not_corrupt_json(tmp_path: Path) -> None:
    """A kernel that prints while imported and while called wrote into ``-f json``'s stdout."""
    src = _module(tmp_path, "kfix_chatty", before="print('loading kernels')",
                  during="print('called')")  # fmt: skip
    code, out, err = run(f"{src}:ce", *SMALL, "-f", "json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True
    assert "loading kernels" in err and "called" in err


def test_unavailable_device_is_named_not_an_undetectable_framework() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from .kernels import torch_kernels as tk

    with pytest.raises(UsageError, match="--device cuda: the device is unavailable"):
        kernel(tk.good, device="cuda", vocab=(10,))


def _hand_report() -> KernelReport:
    """A report built by hand for the renderer contract (no kernel run)."""
    probes = (
        ProbeResult("random", "float32", 1000, 64, "pass", "loss 0.9 ulps", 0.9, 1e-7, 0.8,
                    1e-7, 14.0, 1.7e-6, "float32"),
        ProbeResult("tail", "float32", 1000, 64, "fail", "the vocabulary tail dropped",
                    5e7, 0.99, 1.4, 1e-7, 14.0, 1.7e-6, "float32"),
        ProbeResult("reduction_sum", "float32", 1000, 64, "skip",
                    "the kernel does not accept reduction=", None, None, None, None, math.nan,
                    math.nan),
    )  # fmt: skip
    return KernelReport("mod:fn", "torch", "cpu", "torch.nn.functional.cross_entropy", "either",
                        0, ("float32",), (1000,), probes, 1.5)  # fmt: skip
