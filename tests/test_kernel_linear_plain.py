"""A linear kernel through the plain probe suite (smcheck.kernel.linear_plain.as_plain).

The embedding must hand the linear kernel's matmul the logits bit for bit and bring the
logits' gradient back bit for bit, in float32 and bfloat16 and on both sides of C = N; a
linear kernel that forgets the max shift is caught by the plain probes, where
F.linear_cross_entropy passes them.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smcheck.kernel.linear_plain import as_plain  # noqa: E402
from smcheck.kernel.runner import kernel  # noqa: E402

F = torch.nn.functional


def _logits_kernel(seen: list[Any]) -> Any:
    """A 'linear kernel' that records the logits its matmul made and returns <coef, z>."""

    def fn(input: Any, linear_weight: Any, target: Any, *, reduction: str = "mean") -> Any:
        z = input @ linear_weight.T
        seen.append(z.detach().clone())
        coef = torch.arange(1, z.numel() + 1, dtype=torch.float32).reshape(z.shape) / 64
        return (z.float() * coef).sum()

    return fn


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("n", "c"), [(64, 10), (8, 100), (16, 16)])
def test_embedding_gives_the_logits_and_their_gradient_bit_for_bit(
    dtype: str, n: int, c: int
) -> None:
    rng = np.random.default_rng(n * c)
    z0 = torch.from_numpy(rng.standard_normal((n, c)) * 30).to(getattr(torch, dtype))
    z = z0.clone().requires_grad_(True)
    seen: list[Any] = []
    plain = as_plain(_logits_kernel(seen))
    plain(z, torch.zeros(n, dtype=torch.int64)).backward()
    assert torch.equal(seen[0], z0)  # 1 * z_ij plus zeros: exact in any accumulation
    want = torch.arange(1, n * c + 1, dtype=torch.float32).reshape(n, c) / 64
    assert z.grad is not None
    assert torch.equal(z.grad.float(), want.to(z.dtype).float())


def test_signature_lists_the_linear_kernels_options_without_the_bias() -> None:
    sig = inspect.signature(as_plain(F.linear_cross_entropy))
    names = list(sig.parameters)
    assert names[:2] == ["logits", "target"]
    assert "linear_bias" not in names
    assert {"reduction", "ignore_index", "label_smoothing", "weight"} <= set(names)


def unshifted(
    input: Any, linear_weight: Any, target: Any, *, linear_bias: Any = None,
    reduction: str = "mean", ignore_index: int = -100,
) -> Any:  # fmt: skip
    """The bug: log(sum(exp(z))) without the max shift - exp overflows past z ~ 88."""
    z = (input @ linear_weight.T).float()
    if linear_bias is not None:
        z = z + linear_bias.float()
    keep = target != ignore_index
    safe = torch.where(keep, target, 0)
    nll = torch.log(torch.exp(z).sum(1)) - z.gather(1, safe[:, None])[:, 0]
    nll = torch.where(keep, nll, 0.0)
    if reduction == "none":
        return nll.to(input.dtype)
    total = nll.sum()
    return (total / keep.sum() if reduction == "mean" else total).to(input.dtype)


PROBES = "random,offset,confident"


def test_unshifted_linear_kernel_is_caught_by_the_plain_probes() -> None:
    bad = kernel(as_plain(unshifted), framework="torch", probes=PROBES, vocab=(1000,),
                 dtypes=("float32",))  # fmt: skip
    # logits up to 32 sigma, margins up to 100, a common offset: exp overflows in each
    assert {p.name: p.status for p in bad.probes} == dict.fromkeys(PROBES.split(","), "fail")
    assert all("non-finite loss" in p.detail for p in bad.probes)
    good = kernel(as_plain(F.linear_cross_entropy), framework="torch", probes=PROBES,
                  vocab=(1000,), dtypes=("float32",))  # fmt: skip
    assert good.ok, [(p.name, p.detail) for p in good.probes if p.status != "pass"]


@pytest.mark.parametrize("fmt", ["junit", "markdown", "github", "table", "json"])
def test_linear_report_with_the_plain_suite_renders_in_every_format(fmt: str) -> None:
    import json
    import xml.etree.ElementTree as ET

    from smcheck.linear_kernel import kernel_linear
    from smcheck.render.linear import render_kernel

    r = kernel_linear(F.linear_cross_entropy, dtypes=("float32",),
                      probes=("odd_dim", "chunk_invariance", "random"),
                      plain={"vocab": (10,), "rows": 8})  # fmt: skip
    assert r.ok and r.plain is not None and len(r.plain.probes) == 1
    text = render_kernel(r, fmt, width=100)
    if fmt == "junit":  # one well-formed document: both suites, counts added up
        root = ET.fromstring(text)
        assert [s.get("name").split()[0] for s in root] == ["linear", "smcheck.kernel"]
        assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "0", "1")
        assert root[0].get("skipped") == "1"  # chunk_invariance: no chunk keyword
    elif fmt == "json":
        doc = json.loads(text)
        assert doc["ok"] and doc["plain"]["probes"][0]["name"] == "random"
    elif fmt == "github":  # annotations for failures only, then each suite's summary
        assert "pass: every linear probe passes" in text and "::notice" in text
        assert "smcheck kernel --linear" not in text  # no failure, no ::error line
    else:
        assert "odd_dim" in text and "random" in text


def _cli(*args: str) -> Any:
    from click.testing import CliRunner

    from smcheck.cli import cli

    return CliRunner().invoke(cli, ["kernel", "--linear", *args])


def test_regression_linear_report_went_to_stderr() -> None:
    """The report was emitted inside the redirect that sends the target's own prints to stderr:
    stdout was empty in every format."""
    import json

    r = _cli("torch.nn.functional:linear_cross_entropy", "--probes", "odd_dim", "--dtype",
             "float32", "-f", "json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["probes"][0]["name"] == "odd_dim"
    assert r.stderr == ""


def star(*args: Any, **kwargs: Any) -> Any:
    return F.linear_cross_entropy(*args, **kwargs)


class _NoSignature:
    """A callable whose signature cannot be read (inspect.signature raises)."""

    __signature__ = "not a signature"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return F.linear_cross_entropy(*args, **kwargs)


def test_regression_kwargs_and_unreadable_signatures_reach_the_plain_suite_right() -> None:
    """A (*args, **kwargs) kernel lost its **kwargs in as_plain (every option probe skipped as
    not accepted); a kernel without a readable signature was handed every option (softcap=...
    raised) while the linear suite assumed torch's keywords only."""
    assert list(inspect.signature(as_plain(star)).parameters) == ["logits", "target", "kwargs"]
    with pytest.raises((TypeError, ValueError)):
        inspect.signature(_NoSignature())
    plain = as_plain(_NoSignature(), unknown_signature=["label_smoothing", "reduction"])
    assert list(inspect.signature(plain).parameters)[2:] == ["label_smoothing", "reduction"]
    r = kernel(as_plain(star), framework="torch", probes="label_smoothing", vocab=(10,),
               dtypes=("float32",), rows=16)  # fmt: skip
    assert [p.status for p in r.probes] == ["pass"]


def test_regression_empty_probe_list_is_all_not_nothing() -> None:
    from smcheck.cli.kernel_cmd import _chosen

    assert _chosen(",") is None and _chosen(" , ") is None and _chosen("all") is None
    assert _chosen("odd_dim, random") == ["odd_dim", "random"]


@pytest.mark.parametrize(("args", "flag"), [(["--vocab", "10"], "--vocab"),
                                            (["--device", "cuda"], "--device")])  # fmt: skip
def test_regression_plain_options_without_a_plain_probe_are_refused(
    args: list[str], flag: str
) -> None:
    r = _cli("torch.nn.functional:linear_cross_entropy", "--probes", "odd_dim", *args)
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"smcheck: error: {flag} applies to the plain probes, and --probes names none"
    )


def test_regression_non_embeddable_probe_alone_is_refused_before_any_probe_runs() -> None:
    from smcheck.errors import UsageError
    from smcheck.linear_kernel import kernel_linear

    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return F.linear_cross_entropy(*args, **kwargs)

    with pytest.raises(UsageError, match="probe padding, nonfinite_rows does not apply"):
        kernel_linear(counting, probes=("odd_dim", "padding", "nonfinite_rows"), plain={})
    assert calls == []  # decided before the linear probes ran
