"""``smcheck kernel --linear``: the label smoothing, reduction and loss-variant probes.

As the plain kernel probes do, a probe passes its option as a keyword and is skipped for a
kernel whose signature does not name it: ``F.linear_cross_entropy`` runs ``label_smoothing``
and ``reduction_sum`` and skips the variants. Each deliberately wrong kernel of
``tests/kernels/linear_variant_kernels.py`` fails the probe of its bug.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from smcheck.cli import cli
from smcheck.linear_kernel import LINEAR_PROBES, kernel_linear

torch = pytest.importorskip("torch")
F = torch.nn.functional

from .kernels import linear_variant_kernels as kernels  # noqa: E402

VARIANT_PROBES = ("softcap", "scale_then_cap", "z_loss", "z_loss_off", "smoothing_megatron")
KERNELS = Path(__file__).parent / "kernels" / "linear_variant_kernels.py"


def test_stock_linear_cross_entropy_runs_smoothing_and_sum_and_skips_the_variants() -> None:
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this torch has no F.linear_cross_entropy")
    probes = ("label_smoothing", "reduction_sum", "softcap", "smoothing_torch")
    r = kernel_linear(F.linear_cross_entropy, dtypes=("float32",), probes=probes)
    status = {p.name: (p.status, p.detail) for p in r.probes}
    assert status["label_smoothing"][0] == "pass" and status["reduction_sum"][0] == "pass"
    assert status["softcap"] == ("skip", "no softcap keyword")
    assert status["smoothing_torch"] == ("skip", "no smoothing_convention keyword")
    assert r.ok


def test_kernel_returning_the_mean_for_reduction_sum_fails() -> None:
    r = kernel_linear(kernels.sum_as_mean, dtypes=("float32",), probes=("reduction_sum",))
    (p,) = r.probes
    assert p.status == "fail" and "loss" in p.detail
    assert p.grad_weight_err > 0.5  # gradients of the mean: 1/N of the sum's


def test_kernel_with_the_other_smoothing_convention_fails_in_float32() -> None:
    r = kernel_linear(kernels.other_convention, dtypes=("float32",),
                      probes=("smoothing_torch", "label_smoothing"))  # fmt: skip
    assert [p.status for p in r.probes] == ["fail", "fail"], r.probes
    right = kernel_linear(kernels.variant, dtypes=("float32",),
                          probes=("smoothing_torch", "label_smoothing"))  # fmt: skip
    assert right.ok, right.probes


def test_right_variant_kernel_passes_every_option_probe() -> None:
    # the option probes (the plain ones run the same code as F.linear_cross_entropy's tests)
    probes = list(LINEAR_PROBES)[list(LINEAR_PROBES).index("label_smoothing") :]
    assert set(VARIANT_PROBES) < set(probes)
    r = kernel_linear(kernels.variant, dtypes=("bfloat16", "float32"), probes=probes)
    assert r.ok, [(p.name, p.dtype, p.detail) for p in r.probes if p.status != "pass"]
    assert not [p for p in r.probes if p.status == "skip" and p.name in VARIANT_PROBES]


@pytest.mark.parametrize(
    ("bug", "probe"),
    [
        ("cap_before_scale", "scale_then_cap"),
        ("z_tanh", "softcap"),
        ("zloss_shifted", "z_loss"),
        ("zloss_always", "z_loss_off"),
        ("other_convention", "smoothing_megatron"),
    ],
)
def test_each_wrong_variant_kernel_fails_its_probe(bug: str, probe: str) -> None:
    r = kernel_linear(getattr(kernels, bug), dtypes=("float32",), probes=(probe,))
    (p,) = r.probes
    assert p.status == "fail", p
    assert p.loss_ulps > 10 and "above the gate" in p.detail


def test_kernel_cli_linear_flags_z_tanh_and_names_its_probe() -> None:
    r = CliRunner().invoke(cli, ["kernel", "--linear", f"{KERNELS}:z_tanh", "--probes",
                                 "softcap,reduction_sum", "--dtype", "float32",
                                 "-f", "json"])  # fmt: skip
    assert r.exit_code == 1, r.output
    probes = {p["name"]: p["status"] for p in json.loads(r.output)["probes"]}
    assert probes == {"softcap": "fail", "reduction_sum": "pass"}


def test_kernel_cli_linear_sum_as_mean_exits_1() -> None:
    r = CliRunner().invoke(cli, ["kernel", "--linear", f"{KERNELS}:sum_as_mean", "--probes",
                                 "reduction_sum,label_smoothing", "--dtype", "float32", "-f",
                                 "json"])  # fmt: skip
    assert r.exit_code == 1, r.output
    probes = {p["name"]: p["status"] for p in json.loads(r.output)["probes"]}
    assert probes == {"reduction_sum": "fail", "label_smoothing": "pass"}


def test_kernel_linear_refuses_another_framework_before_importing(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "k.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(*a, **k): pass\n")
    r = CliRunner().invoke(cli, ["kernel", "--linear", f"{tmp_path / 'k.py'}:f", "--framework",
                                 "jax"])  # fmt: skip
    assert r.exit_code == 2
    assert r.output.strip() == (
        "smcheck: error: --framework does not apply to --linear: a linear kernel is torch's"
    )
    assert not marker.exists()


def test_kernel_linear_runs_the_plain_probes_with_the_plain_options() -> None:
    """--vocab, --rows, --seed, --judge... reach the plain probes a linear kernel also runs
    (through the exact embedding of smcheck.kernel.linear_plain); padding is not embeddable."""
    r = CliRunner().invoke(cli, [
        "kernel", "--linear", "torch.nn.functional:linear_cross_entropy", "--probes",
        "odd_dim,random,padding", "--vocab", "37", "--rows", "16", "--dtype", "float32",
        "--judge", "reference", "-f", "json",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [p["name"] for p in doc["probes"]] == ["odd_dim"]
    plain = doc["plain"]
    assert plain["vocab"] == [37] and plain["judge"] == "reference" and "schema" not in plain
    got = {(p["name"], p["vocab"], p["rows"]): p["status"] for p in plain["probes"]}
    assert got[("random", 37, 16)] == "pass"
    assert got[("padding", 37, 16)] == "skip"
