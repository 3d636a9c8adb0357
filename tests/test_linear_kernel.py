"""kernel_linear: the stock F.linear_cross_entropy passes, a bf16-accumulating kernel fails."""

from __future__ import annotations

import pytest

from smcheck.errors import UsageError
from smcheck.linear_kernel import LINEAR_PROBES, kernel_linear

torch = pytest.importorskip("torch")
F = torch.nn.functional

from .kernels.linear_kernels import (  # noqa: E402
    chunked,
    chunked_bf16_accum,
    chunked_drops_tail,
    chunked_nondeterministic,
)


def test_stock_linear_cross_entropy_passes_every_probe() -> None:
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this torch has no F.linear_cross_entropy")
    r = kernel_linear(F.linear_cross_entropy, target="F.linear_cross_entropy", dtypes=("bfloat16",))
    assert r.ok, [(p.name, p.dtype, p.detail) for p in r.probes if p.status != "pass"]
    assert {p.name for p in r.probes} == set(LINEAR_PROBES)
    r32 = kernel_linear(F.linear_cross_entropy, dtypes=("float32",), probes=("odd_dim",))
    assert r32.ok, r32.probes


def test_bf16_accumulating_chunked_kernel_is_flagged_on_many_rows() -> None:
    r = kernel_linear(chunked_bf16_accum, dtypes=("bfloat16",), probes=("many_rows",))
    (p,) = r.probes
    assert p.status == "fail", p
    assert "dW" in p.detail or "db" in p.detail
    assert p.grad_weight_err > 2 * p.stock_grad_weight_err


def test_float32_accumulating_chunked_kernel_passes() -> None:
    r = kernel_linear(chunked, dtypes=("bfloat16",), probes=("many_rows",))
    assert r.ok, r.probes


def test_kernel_exception_is_a_finding_not_a_traceback() -> None:
    def broken(h, w, y, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error: out of memory\nsecond line")

    r = kernel_linear(broken, dtypes=("float32",), probes=("odd_dim",))
    assert r.probes[0].status == "fail"
    assert r.probes[0].detail == "raised RuntimeError: CUDA error: out of memory"


def test_kernel_modifying_its_input_fails() -> None:
    def scribbler(h, w, y, **kw):  # type: ignore[no-untyped-def]
        loss = F.linear_cross_entropy(h, w, y, **kw)
        w.data[0, 0] += 1  # through .data: autograd's version counter does not notice
        return loss

    r = kernel_linear(scribbler, dtypes=("float32",), probes=("odd_dim",))
    assert "modified its inputs" in r.probes[0].detail


def test_unknown_probe_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown probe 'nope'; expected a linear probe"):
        kernel_linear(F.linear_cross_entropy, probes=("nope",))


def test_kernel_cli_linear_flags_the_bf16_kernel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from smcheck.cli import cli

    path = Path(__file__).parent / "kernels" / "linear_kernels.py"
    r = CliRunner().invoke(cli, ["kernel", "--linear", f"{path}:chunked_bf16_accum", "--probes",
                                 "many_rows", "--dtype", "bfloat16", "-f", "json"])  # fmt: skip
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert doc["schema"] == "smcheck.kernel/1" and doc["linear"] is True
    (p,) = doc["probes"]
    assert p["status"] == "fail"
    assert {"grad_hidden_err", "grad_weight_err", "grad_bias_err"} <= set(p)
    bad = CliRunner().invoke(cli, ["kernel", "--linear", f"{path}:chunked", "--probes", "nope"])
    assert bad.exit_code == 2 and "unknown probe 'nope'" in bad.output


@pytest.mark.parametrize("fmt", ["json", "table", "markdown", "github", "junit"])
def test_linear_kernel_renderers_escape_the_detail(fmt: str) -> None:
    from smcheck.linear_kernel import LinearKernelReport, LinearProbeResult
    from smcheck.render.linear import render_kernel

    p = LinearProbeResult("many_rows", "bfloat16", "fail", 0.4, 2e-3, 1.3e-2, None, 0.4, 2e-3,
                          2e-3, None, "raised Error: \x1b[31mred")  # fmt: skip
    text = render_kernel(LinearKernelReport("k.py:f", (p,)), fmt)
    assert "\x1b" not in text
    assert "many_rows" in text


def test_nondeterministic_kernel_is_caught_by_the_determinism_probe() -> None:
    r = kernel_linear(chunked_nondeterministic, dtypes=("float32",), probes=("determinism",))
    (p,) = r.probes
    assert p.status == "fail", p
    assert p.detail.startswith("two identical calls differ in: ") and "dW" in p.detail, p.detail
    # each call alone is accurate: only the bits between calls give it away
    assert p.grad_weight_err <= 1e-6, p


def test_deterministic_kernels_pass_the_determinism_probe() -> None:
    r = kernel_linear(chunked, dtypes=("bfloat16", "float32"), probes=("determinism",))
    assert r.ok, r.probes
    if hasattr(F, "linear_cross_entropy"):
        s = kernel_linear(F.linear_cross_entropy, dtypes=("float32",), probes=("determinism",))
        assert s.ok, s.probes


def test_chunk_dependent_kernel_is_caught_by_chunk_invariance() -> None:
    r = kernel_linear(chunked_drops_tail, dtypes=("float32",), probes=("chunk_invariance",))
    (p,) = r.probes
    assert p.status == "fail", p
    assert p.detail.endswith("at chunk=61"), p.detail
    # the default chunking alone is correct: the plain probes do not see the bug
    ok = kernel_linear(chunked_drops_tail, dtypes=("float32",), probes=("odd_vocab",))
    assert ok.ok, ok.probes


def test_chunk_invariance_passes_a_correct_chunked_kernel_and_skips_without_a_keyword() -> None:
    r = kernel_linear(chunked, dtypes=("bfloat16", "float32"), probes=("chunk_invariance",))
    assert r.ok and all(p.status == "pass" for p in r.probes), r.probes

    def plain(h, w, y, **kw):  # type: ignore[no-untyped-def]
        return chunked(h, w, y, **kw)  # **kw only: no chunk keyword in the signature

    s = kernel_linear(plain, dtypes=("float32",), probes=("chunk_invariance",))
    (p,) = s.probes
    assert p.status == "skip" and s.ok and "no chunk keyword" in p.detail, p


def test_bf16_and_fp32_runs_are_both_reported_and_within_their_limits() -> None:
    # the same probe in bfloat16 and float32 on the same case, each against its own rounded
    # inputs' reference: float32's dW error is orders of magnitude below bfloat16's
    r = kernel_linear(chunked, dtypes=("bfloat16", "float32"), probes=("odd_vocab",))
    bf, f32 = r.probes
    assert (bf.dtype, f32.dtype) == ("bfloat16", "float32") and r.ok, r.probes
    assert f32.grad_weight_err < 1e-5 < bf.grad_weight_err < 2**-7, (bf, f32)


def test_bf16_fp32_probe_runs_the_same_values_in_both_dtypes() -> None:
    import ml_dtypes
    import numpy as np

    from smcheck.linear_kernel import LINEAR_PROBES

    case = LINEAR_PROBES["bf16_fp32"][1]()
    for x in (case.h, case.w, case.b):
        assert np.array_equal(x.astype(ml_dtypes.bfloat16).astype(np.float64), x)
    r = kernel_linear(chunked, probes=("bf16_fp32",))
    bf, f32 = r.probes
    assert (bf.dtype, f32.dtype) == ("bfloat16", "float32") and r.ok, r.probes
    assert f32.grad_weight_err < 1e-5 < bf.grad_weight_err, (bf, f32)
    bad = kernel_linear(chunked_bf16_accum, dtypes=("bfloat16",), probes=("bf16_fp32",))
    assert bad.probes[0].grad_weight_err > bf.grad_weight_err, bad.probes
