"""smcheck.kernel: the probe suite run on correct kernels (every probe passes), on one broken
kernel per bug class (caught by the probe meant for it, the message naming it), on kernels
that take no options (skips) or raise (findings), and the measurement against closed forms."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import mpmath
import numpy as np
import pytest

from smcheck.errors import UsageError
from smcheck.kernel import (
    PROBES,
    QUICK_VOCAB,
    KernelReport,
    ProbeResult,
    WorstRow,
    assert_kernel,
    detect_framework,
    kernel,
    load_target,
)
from smcheck.render.kernel import (
    render_github,
    render_json,
    render_junit,
    render_markdown,
    render_table,
)

torch = pytest.importorskip("torch")

from tests.kernels import other_kernels as ok  # noqa: E402
from tests.kernels import torch_kernels as tk  # noqa: E402

#: The option probes: skipped for a kernel that takes no options.
OPTION_PROBES = {
    "ignore_index",
    "all_ignored",
    "reduction_none",
    "reduction_sum",
    "reduction_mean",
    "label_smoothing",
}
#: The loss variants' probes (smcheck.variants): skipped for a kernel that takes no variant
#: options (tests/test_variants.py runs them on tests/kernels/variant_kernels.py).
VARIANT_PROBES = {
    "softcap",
    "scale_then_cap",
    "z_loss",
    "z_loss_off",
    "smoothing_torch",
    "smoothing_megatron",
}


def _failures(r: KernelReport) -> list[str]:
    return [f"{p.test_id}: {p.detail}" for p in r.failed]


# --- correct kernels pass every probe -----------------------------------------------------------


def test_good_torch_kernel_passes_every_probe() -> None:
    r = kernel(tk.good, quick=True)
    assert r.framework == "torch"
    assert r.ok, _failures(r)
    assert len(r.probes) == len(PROBES) * len(QUICK_VOCAB) * 2  # float32 and bfloat16
    assert {p.name for p in r.skipped} == VARIANT_PROBES
    assert {p.dtype for p in r.probes} == {"float32", "bfloat16"}


def test_stock_torch_kernel_passes_at_an_odd_vocabulary() -> None:
    r = kernel(torch.nn.functional.cross_entropy, vocab=(65537,), rows=6)
    assert r.ok, _failures(r)
    # the stock kernel is compared with itself: the same numbers side by side
    random = next(p for p in r.probes if p.name == "random" and p.dtype == "float32")
    assert random.loss_max_ulp_err == random.stock_loss_max_ulp_err
    assert random.loss_max_ulp_err is not None and random.loss_max_ulp_err < 4


def test_good_numpy_kernel_passes_every_probe() -> None:
    r = kernel(ok.numpy_good, quick=True)
    assert r.framework == "numpy" and r.dtypes == ("float32",)
    assert r.ok, _failures(r)


def test_good_jax_kernel_passes() -> None:
    pytest.importorskip("jax")
    # jax compiles each op per shape and option set (seconds per probe here): one probe
    r = kernel(ok.jax_good, framework="jax", vocab=(37,), rows=8, dtypes="bfloat16",
               probes="ignore_index")  # fmt: skip
    assert r.framework == "jax" and r.dtypes == ("bfloat16",)
    assert r.ok, _failures(r)
    assert r.stock == "jax.nn.log_softmax"


# --- each broken kernel is caught by its probe, the message naming the bug ----------------------


@pytest.mark.parametrize(("name", "probe"), sorted(tk.BROKEN.items()))
def test_broken_kernel_caught_by_its_probe(name: str, probe: str) -> None:
    fn = getattr(tk, name)
    r = kernel(fn, dtypes="float32", vocab=(1000,), rows=16, probes=probe)
    (result,) = r.probes
    assert result.status == "fail", result.detail
    assert result.detail.startswith(PROBES[probe].catches)
    assert not r.ok
    # the good kernel, same rows: passes (the probe fails the bug, not the rows)
    (control,) = kernel(tk.good, dtypes="float32", vocab=(1000,), rows=16, probes=probe).probes
    assert control.status == "pass", control.detail


def test_regression_loss_in_bf16_is_thousands_of_float32_ulps() -> None:
    (p,) = kernel(tk.loss_in_bf16, dtypes="float32", vocab=(1000,), probes="random").probes
    # bfloat16 keeps 8 bits: a loss near 8 is off by up to 2**-6, 2**15 float32 ulps
    assert p.loss_max_ulp_err is not None and 1e3 < p.loss_max_ulp_err < 1e6
    assert p.stock_loss_max_ulp_err is not None and p.stock_loss_max_ulp_err < 4
    assert p.worst and p.worst[0].error == p.loss_max_ulp_err


def test_regression_no_max_shift_gives_nonfinite_loss_at_offset() -> None:
    (p,) = kernel(tk.no_max_shift, dtypes="float32", vocab=(1000,), probes="offset").probes
    assert "non-finite loss" in p.detail


def test_regression_grad_in_place_fails_every_probe_that_calls_it() -> None:
    r = kernel(tk.grad_in_place, dtypes="float32", vocab=(10,), probes="random,determinism")
    assert all("modified the caller's logits" in p.detail for p in r.probes)


def test_regression_none_grad_wrong_passes_mean_and_sum() -> None:
    # its backward is right where the upstream gradient is uniform: only 'none' exposes it
    r = kernel(tk.none_grad_wrong, dtypes="float32", vocab=(1000,),
               probes="reduction_none,reduction_mean,reduction_sum")  # fmt: skip
    assert [p.status for p in r.probes] == ["fail", "pass", "pass"]
    assert r.probes[0].grad_max_err is not None and r.probes[0].grad_max_err > 0.1


def test_regression_padding_counted_at_a_block_multiple_passes() -> None:
    # V = 1024 is a multiple of the block (128): no pad lane, nothing to count
    (p,) = kernel(tk.padding_counted, dtypes="float32", vocab=(1024,), probes="tail").probes
    assert p.status == "pass", p.detail
    (p,) = kernel(tk.padding_counted, dtypes="float32", vocab=(1025,), probes="tail").probes
    assert p.status == "fail"


# --- options the kernel does not accept, exceptions, kernels without a gradient -----------------


def test_kernel_without_options_skips_the_option_probes() -> None:
    r = kernel(tk.plain, dtypes="float32", vocab=(10,))
    assert r.ok, _failures(r)
    assert {p.name for p in r.skipped} == OPTION_PROBES | VARIANT_PROBES
    assert all("does not accept" in p.detail for p in r.skipped)
    assert all(p.passed is None for p in r.skipped)


def test_kernel_exception_is_a_finding_with_its_text_escaped() -> None:
    r = kernel(tk.raises_on_bf16, vocab=(10,), probes="random")
    by_dtype = {p.dtype: p for p in r.probes}
    assert by_dtype["float32"].status == "pass"
    bad = by_dtype["bfloat16"]
    assert bad.status == "fail"
    assert "raised NotImplementedError: bfloat16 is not supported\\x1b[31m" in bad.detail
    assert "\x1b" not in bad.detail  # a control character never reaches the terminal


def test_numpy_kernel_without_gradient_checks_the_loss_only() -> None:
    r = kernel(ok.numpy_loss_only, vocab=(10,), probes="random,offset")
    assert r.ok, _failures(r)
    assert all(p.grad_max_err is None for p in r.probes)


def test_regression_detached_loss_is_a_finding_not_a_pass() -> None:
    def detached(z: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(z.detach(), y, ignore_index=ignore_index)

    r = kernel(detached, dtypes="float32", vocab=(10,), probes="random,all_ignored")
    random, all_ignored = r.probes
    assert random.status == "fail" and "no gradient reached the logits" in random.detail
    # every row ignored: a constant (NaN) loss needs no gradient
    assert all_ignored.status == "pass", all_ignored.detail


def test_regression_reduction_keyword_ignored_is_caught() -> None:
    def always_rows(z: np.ndarray, y: np.ndarray, reduction: str = "mean") -> np.ndarray:
        d = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return np.log(np.exp(d).sum(axis=1)) - d[np.arange(len(y)), y]

    r = kernel(always_rows, vocab=(10,), probes="random,reduction_mean")
    assert [p.status for p in r.probes] == ["pass", "fail"]
    assert "reduction='mean' gave a loss of shape 64" in r.probes[1].detail


def test_kernel_returning_a_bad_shape_fails() -> None:
    def two_d(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.zeros((len(y), 2))

    (p,) = kernel(two_d, framework="numpy", vocab=(10,), probes="random").probes
    assert p.status == "fail"
    assert "loss has shape 64 x 2, expected a scalar or 64 values" in p.detail


# --- the measurement, against closed forms ------------------------------------------------------


def _log_v(v: int) -> float:
    mpmath.mp.prec = 80  # log(V) to 80 bits, then rounded once to float64
    return float(mpmath.log(v))


@pytest.mark.parametrize("ulps", [0, 3, 8])
def test_uniform_probe_measures_ulps_against_log_v(ulps: int) -> None:
    v = 1000  # log(1000) = 6.9: float32's ulp there is 2**-21
    step = ulps * 2.0**-21

    def closed_form(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.full(len(y), _log_v(v) + step)

    (p,) = kernel(closed_form, framework="numpy", vocab=(v,), probes="uniform").probes
    assert p.loss_max_ulp_err == pytest.approx(ulps, abs=1e-6)
    assert p.status == "pass"  # 8 < the limit, 4 + 10 = 14


def test_judges_reference_stock_either_both() -> None:
    v = 1000
    off = 10 * 2.0**-21  # 10 ulps: inside the reference limit (14), 10 more than the stock

    def slightly_off(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.full(len(y), _log_v(v) + off)

    status = {
        judge: kernel(slightly_off, framework="numpy", vocab=(v,), probes="uniform", judge=judge)
        .probes[0]
        .status
        for judge in ("reference", "stock", "either", "both")
    }
    assert status == {"reference": "pass", "stock": "fail", "either": "pass", "both": "fail"}


def test_max_loss_ulp_overrides_the_default_limit() -> None:
    def off(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.full(len(y), _log_v(1000) + 3 * 2.0**-21)

    (p,) = kernel(off, framework="numpy", vocab=(1000,), probes="uniform", judge="reference",
                  max_loss_ulp=2).probes  # fmt: skip
    assert p.status == "fail" and p.max_loss_ulp == 2


def test_all_ignored_accepts_nan_or_zero_but_not_other_values() -> None:
    def mean_of(value: float) -> object:
        def fn(z: np.ndarray, y: np.ndarray, ignore_index: int = -100) -> np.ndarray:
            return np.float64(value)

        return fn

    for value, status in ((math.nan, "pass"), (0.0, "pass"), (1.0, "fail")):
        (p,) = kernel(mean_of(value), framework="numpy", vocab=(10,), probes="all_ignored").probes
        assert p.status == status, (value, p.detail)


def test_rows_per_probe_shrink_with_the_vocabulary() -> None:
    r = kernel(ok.numpy_loss_only, vocab=(10, 151936), probes="uniform")
    assert [p.rows for p in r.probes] == [64, 6]


# --- usage --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probes": "random,nope"}, "unknown probe 'nope'"),
        ({"judge": "strict"}, "unknown judge"),
        ({"seed": -1}, "seed must be non-negative"),
        ({"vocab": (1,)}, "at least 2"),
        ({"framework": "tensorflow"}, "unknown framework"),
        ({"dtypes": "float99"}, "float99"),
    ],
)
def test_usage_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        kernel(ok.numpy_good, **kwargs)  # type: ignore[arg-type]


def test_undetectable_framework_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot tell the kernel's framework"):
        kernel(lambda z, y: "loss")


def test_torch_threads_restored_after_the_run() -> None:
    before = torch.get_num_threads()
    kernel(tk.good, dtypes="float32", vocab=(10,), probes="random")
    assert torch.get_num_threads() == before


def test_detect_framework() -> None:
    assert detect_framework(tk.good) == "torch"
    assert detect_framework(ok.numpy_good) == "numpy"
    assert detect_framework(torch.nn.functional.cross_entropy) == "torch"


def test_load_target_file_and_module(tmp_path: pytest.TempPathFactory) -> None:
    assert load_target("tests.kernels.torch_kernels:good") is tk.good
    assert load_target("torch.nn.functional:cross_entropy") is torch.nn.functional.cross_entropy
    with pytest.raises(UsageError, match="expected module:function"):
        load_target("justaname")
    with pytest.raises(UsageError, match="has no attribute 'missing'"):
        load_target("tests.kernels.torch_kernels:missing")
    with pytest.raises(UsageError, match="BLOCK is not callable"):
        load_target("tests.kernels.torch_kernels:BLOCK")


# --- assert_kernel ------------------------------------------------------------------------------


def test_assert_kernel_lists_failing_probes_with_worst_rows() -> None:
    with pytest.raises(AssertionError) as info:
        assert_kernel(tk.tail_dropped, dtypes="float32", vocab=(1000,), probes="tail,uniform")
    text = str(info.value)
    assert text.startswith("smcheck: 2 of 2 kernel probes failed")
    assert "tail[float32-1000]: the vocabulary tail" in text
    assert "row  label" in text and "error (ulps)" in text


def test_assert_kernel_returns_the_report_when_every_probe_passes() -> None:
    r = assert_kernel(tk.good, dtypes="float32", vocab=(10,), probes="random")
    assert r.ok


def test_assert_kernel_is_reexported_from_smcheck_testing() -> None:
    from smcheck import testing

    assert testing.assert_kernel is assert_kernel


# --- renderers, on a hand-built report ----------------------------------------------------------


def _report() -> KernelReport:
    nan = math.nan
    probes = (
        ProbeResult("random", "float32", 1000, 64, "pass", "loss 0.9 ulps", 0.9, 1e-7, 0.8,
                    1e-7, 14.0, 1.7e-6, "float32"),
        ProbeResult("tail", "float32", 1000, 64, "fail", "tail | dropped \x1b[31m <x> & 100%",
                    5e7, 0.99, 1.4, 1e-7, 14.0, 1.7e-6, "float32",
                    (WorstRow(49, 999, -5.46, 1.07, 5e7),)),
        ProbeResult("reduction_sum", "float32", 1000, 64, "skip",
                    "the kernel does not accept reduction=", None, None, None, None, nan, nan),
    )  # fmt: skip
    return KernelReport("mod:fn", "torch", "cpu", "torch.nn.functional.cross_entropy", "either",
                        0, ("float32",), (1000,), probes, 1.5)  # fmt: skip


def test_render_json_schema() -> None:
    doc = json.loads(render_json(_report()))
    assert doc["schema"] == "smcheck.kernel/1"
    assert doc["ok"] is False
    assert doc["counts"] == {"probes": 3, "passed": 1, "failed": 1, "skipped": 1}
    tail = doc["probes"][1]
    assert tail["name"] == "tail" and tail["passed"] is False
    assert tail["loss_max_ulp_err"] == 5e7 and tail["stock_loss_max_ulp_err"] == 1.4
    assert tail["worst"][0] == {"row": 49, "label": 999, "value": -5.46, "reference": 1.07,
                                "error": 5e7}  # fmt: skip
    assert doc["probes"][2]["passed"] is None
    assert doc["probes"][2]["max_loss_ulp"] == "nan"


def test_render_table_shows_kernel_and_stock_side_by_side() -> None:
    text = render_table(_report(), color=False, width=120)
    assert "FAIL tail[float32-1000]" in text and "SKIP reduction_sum[float32-1000]" in text
    assert "5.0e+07" in text and "1.4" in text
    assert "1 passed, 1 failed, 1 skipped - FAILED" in text
    assert "\x1b" not in text
    assert "\x1b[" in render_table(_report(), color=True)


def test_render_markdown_escapes_pipes() -> None:
    text = render_markdown(_report())
    assert "tail \\| dropped" in text
    assert text.index("**FAIL**") < text.index("| random |")  # failures first


def test_render_github_annotations() -> None:
    lines = render_github(_report()).splitlines()
    assert lines[0].startswith("::error title=smcheck kernel mod%3Afn::tail[float32-1000]: ")
    assert "100%25" in lines[0]
    assert lines[-1].startswith("::notice")


def test_render_junit_counts_and_escapes() -> None:
    root = ET.fromstring(render_junit(_report()))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='tail[float32-1000]']/failure")
    assert failure is not None and "<x> & 100%" in (failure.get("message") or "")
    assert suite.find("testcase[@name='reduction_sum[float32-1000]']/skipped") is not None


def test_every_probe_is_documented_and_has_a_broken_kernel_or_a_closed_form() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "kernel.md").read_text()
    for name in PROBES:
        assert f"`{name}`" in doc, name
    # probes without a broken kernel of their own are pinned by the tests above
    pinned_elsewhere = {"confident", "wrong", "uniform", "first_last", "padding", "all_ignored",
                        "reduction_sum", "reduction_mean", "label_smoothing"}  # fmt: skip
    # the variants' probes: their broken kernels are in tests/kernels/variant_kernels.py
    from tests.kernels import variant_kernels as vk

    variant = {p for probes in vk.BROKEN.values() for p in probes}
    assert variant == VARIANT_PROBES
    assert set(PROBES) == set(tk.BROKEN.values()) | pinned_elsewhere | variant
