"""Loss variants (logit scale, softcap, z-loss, Megatron smoothing) against mpmath at 60 digits.

The oracle below is written from the formulas of docs/variants.md alone: z' = s z,
z'' = c tanh(z' / c), loss = sum_k t_k (-log softmax(z'')_k) + lambda lse(z'')**2, and the
gradient with respect to the original z through sech(u)**2 (mpmath's own sech, not the
reference's 4 e^{-2|u|} / (1 + e^{-2|u|})**2).
"""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest

from smcheck import cross_entropy, reference
from smcheck.errors import UsageError
from smcheck.precisions import PRECISIONS
from smcheck.prepare import prepare_input

from .conftest import TRUTH_DPS, mp_abs_err, mp_rel_err


def _const(v: float, dtype: str) -> float:
    """The constant as the front door holds it: in the carrier (float32 for float32 and
    narrower, float64 for float64)."""
    return float(np.float64(v)) if dtype == "float64" else float(np.float32(v))


def mp_variant_truth(
    row: np.ndarray,
    label: int,
    *,
    scale: float = 1.0,
    cap: float | None = None,
    lam: float = 0.0,
    eps: float = 0.0,
    convention: str = "torch",
    weight: np.ndarray | None = None,
    used: np.ndarray | None = None,
) -> tuple[mpmath.mpf, list[mpmath.mpf], mpmath.mpf]:
    """(loss, gradient w.r.t. the original logits, z-loss term) of one row, 60 digits.

    ``used``: the coefficients as the front door rounded them to the working dtype; they must
    be the exact t_k to within that rounding (checked), and the truth is then computed with
    them - the same rounded inputs as the reference."""
    with mpmath.workdps(TRUTH_DPS):
        z0 = [mpmath.mpf(float(v)) for v in np.asarray(row, dtype=np.float64)]
        c_n = len(z0)
        s = mpmath.mpf(scale)
        u = [s * v for v in z0]
        if cap is not None:
            cm = mpmath.mpf(cap)
            z = [cm * mpmath.tanh(v / cm) for v in u]
            dz = [s * mpmath.sech(v / cm) ** 2 for v in u]
        else:
            z = u
            dz = [s] * c_n
        w = [mpmath.mpf(1)] * c_n if weight is None else [mpmath.mpf(float(v)) for v in weight]
        if convention == "torch":
            t = [mpmath.mpf(eps) / c_n] * c_n
            t[label] += 1 - mpmath.mpf(eps)
        else:
            t = [mpmath.mpf(eps) / (c_n - 1)] * c_n
            t[label] = 1 - mpmath.mpf(eps)
        t = [tk * wk for tk, wk in zip(t, w, strict=True)]
        if used is not None:
            for tk, uk in zip(t, used, strict=True):
                assert abs(tk - mpmath.mpf(float(uk))) <= abs(tk) * 2.0**-7, (tk, uk)
            t = [mpmath.mpf(float(uk)) for uk in used]
        # -log p_k = log1p(sum_{j != k} exp(z_j - z_k)): no 1 + 1e-80 rounding to 1
        nll = [
            mpmath.log1p(mpmath.fsum(mpmath.exp(zj - zk) for j, zj in enumerate(z) if j != k))
            for k, zk in enumerate(z)
        ]
        lse = z[label] + nll[label]
        p = [mpmath.exp(v - lse) for v in z]
        total_t = mpmath.fsum(t)
        zl = mpmath.mpf(lam) * lse**2
        loss = mpmath.fsum(tk * nk for tk, nk in zip(t, nll, strict=True) if tk != 0) + zl
        grad = [
            (p[j] * total_t - t[j] + 2 * mpmath.mpf(lam) * lse * p[j]) * dz[j] for j in range(c_n)
        ]
    return loss, grad, zl


def _check(
    name: str,
    z: np.ndarray,
    y: int,
    *,
    scale: float = 1.0,
    cap: float | None = None,
    lam: float = 0.0,
    eps: float = 0.0,
    convention: str = "torch",
    weight: np.ndarray | None = None,
) -> None:
    bound = PRECISIONS[name].eps * 2.0**-20
    prep = prepare_input(
        z[None, :], np.array([y]), dtype=name, label_smoothing=eps, weight=weight,
        smoothing_convention=convention,
    )  # fmt: skip
    x = prep.x.astype(np.float64)[0]
    used = None if prep.coeff is None else prep.coeff.astype(np.float64)[0]
    assert np.isfinite(x).all()
    ref = reference(
        z[None, :], np.array([y]), dtype=name, z_loss=lam, softcap=cap, logit_scale=scale,
        label_smoothing=eps, smoothing_convention=convention, weight=weight,
    )  # fmt: skip
    loss_t, grad_t, zl_t = mp_variant_truth(
        x, y, scale=_const(scale, name), cap=None if cap is None else _const(cap, name),
        lam=_const(lam, name), eps=eps, convention=convention,
        weight=weight, used=used,
    )  # fmt: skip
    what = (name, z[:3], y, scale, cap, lam, eps, convention)
    lo = 0.0 if ref.loss_lo is None else ref.loss_lo[0]
    rel = mp_rel_err(ref.loss[0], lo, loss_t)
    assert rel <= bound, (*what, rel, bound)
    if lam:
        assert ref.z_loss is not None
        assert mp_rel_err(ref.z_loss[0], 0.0, zl_t) <= 2.0**-50, what
    else:
        assert ref.z_loss is None
    glo = np.zeros_like(ref.grad[0]) if ref.grad_lo is None else ref.grad_lo[0]
    worst = max(mp_abs_err(g, gl, t) for g, gl, t in zip(ref.grad[0], glo, grad_t, strict=True))
    assert worst <= bound, (*what, worst, bound)


DTYPES = ["float64", "float32", "bfloat16", "float16"]


def _rows() -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(16)
    z = rng.standard_normal(6) * 4.0
    conf = np.array([40.0, 0.0, -3.0, 1.5])
    return [(z, 2), (z, int(np.argmax(z))), (conf, 0), (conf, 1)]


COMBOS = list(
    itertools.product(
        [1.0, 0.08838834764831845],  # 1/sqrt(128): not a float32 value
        [None, 30.0, 50.0],
        [0.0, 1e-4],
        [(0.0, "torch"), (0.1, "torch"), (0.1, "megatron")],
    )
)


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize(("scale", "cap", "lam", "smooth"), COMBOS)
def test_reference_variant_matches_mpmath(
    name: str, scale: float, cap: float | None, lam: float, smooth: tuple[float, str]
) -> None:
    eps, convention = smooth
    for z, y in _rows():
        _check(name, z, y, scale=scale, cap=cap, lam=lam, eps=eps, convention=convention)


@pytest.mark.parametrize("name", ["float64", "float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cap", [30.0, 50.0])
def test_reference_softcap_saturated_logits_up_to_1e4(name: str, cap: float) -> None:
    # tanh(1e4 / 30) rounds to 1 in every format: 1 - tanh**2 would cancel to 0, while the
    # true factor is 4 e^{-667} - the gradient's absolute bound still holds, and the loss's
    # relative one needs c tanh(u) to 113 bits
    z = np.array([1e4, -1e4, 9000.0, 55.0, 0.0, -60.0])
    for y in range(len(z)):
        _check(name, z, y, cap=cap)
        _check(name, z, y, cap=cap, lam=1e-4, scale=0.5)


def test_reference_z_loss_at_log_sum_exp_88_in_float32() -> None:
    # lse(z) ~ 88.7: exp(z) alone would overflow float32 (ln max = 88.72); the square ~7870
    z = np.array([88.0, 87.5, 80.0, -5.0, 88.5], dtype=np.float32)
    for y in range(len(z)):
        _check("float32", z, y, lam=1e-4)
        _check("float32", z, y, lam=1.0, eps=0.1, convention="megatron")


def test_reference_variant_with_weights_and_negative_scale() -> None:
    z = np.array([3.0, -1.0, 0.5, 2.0])
    w = np.array([0.5, 2.0, 1.0, 0.25])
    for name, y in itertools.product(["float64", "float32"], range(4)):
        _check(name, z, y, scale=-0.75, cap=2.0, lam=1e-3, eps=0.2, convention="megatron",
               weight=w)  # fmt: skip


@pytest.mark.parametrize("name", ["float64", "float32", "bfloat16", "float16", "float8_e4m3fn"])
@pytest.mark.parametrize("method", ["naive", "shifted", "fused", "log1p", "online"])
def test_methods_variant_close_to_reference(name: str, method: str) -> None:
    # each method computes the variant in T: a few ulps of max(|L*|, 1) on ordinary rows
    rng = np.random.default_rng(3)
    z = rng.standard_normal((16, 9)) * 3
    y = rng.integers(0, 9, 16)
    kw = {"z_loss": 1e-3, "softcap": 15.0, "logit_scale": 0.5, "label_smoothing": 0.1,
              "smoothing_convention": "megatron"}  # fmt: skip
    r = cross_entropy(z, y, method=method, dtype=name, **kw)
    ref = reference(z, y, dtype=name, **kw)
    eps = PRECISIONS[name].eps
    assert r.z_loss is not None and ref.z_loss is not None
    # only the chained methods break here (a p_k underflows to 0 in float8_e4m3fn, where
    # -c_k log 0 is NaN), and they say so
    ok = np.isfinite(r.loss.astype(np.float64)) & np.isfinite(r.grad.astype(np.float64)).all(1)
    assert (r.overflow | r.underflow)[~ok].all()
    assert ok.all() or (method in ("naive", "shifted") and name == "float8_e4m3fn")
    err = np.abs(r.loss[ok].astype(np.float64) - ref.loss[ok]) / np.maximum(np.abs(ref.loss[ok]), 1)
    assert err.max() <= 16 * eps, (name, method, err.max() / eps)
    gerr = np.abs(r.grad[ok].astype(np.float64) - ref.grad[ok]).max()
    assert gerr <= 16 * eps, (name, method, gerr / eps)


def test_plain_options_give_the_plain_loss_bits() -> None:
    # defaults must not route through the variant path: bit-identical results
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 7)).astype(np.float32)
    y = rng.integers(0, 7, 5)
    for m in ["naive", "fused", "log1p", "online"]:
        a = cross_entropy(z, y, method=m)
        b = cross_entropy(z, y, method=m, z_loss=0.0, logit_scale=1.0, softcap=None,
                          smoothing_convention="torch")  # fmt: skip
        assert a.loss.tobytes() == b.loss.tobytes() and a.grad.tobytes() == b.grad.tobytes()
        assert b.z_loss is None
    assert prepare_input(z, y).variant is None


def test_megatron_without_smoothing_is_the_plain_loss() -> None:
    z = np.array([[1.0, 2.0, 0.5]])
    a = reference(z, np.array([1]), smoothing_convention="megatron")
    b = reference(z, np.array([1]))
    assert a.loss.tolist() == b.loss.tolist()


def test_softcap_kernel_form_is_zero_where_tanh_saturates() -> None:
    # the kernel's 1 - th*th is exactly 0 at 1e4/30 in float32; the true gradient there is
    # ~1e-290: the absolute error is far below eps
    r = cross_entropy(np.array([[1e4, 0.0]], np.float32), np.array([0]), softcap=30.0)
    ref = reference(np.array([[1e4, 0.0]], np.float32), np.array([0]), softcap=30.0)
    assert r.grad[0, 0] == 0 and 0 < abs(ref.grad[0, 0]) < 1e-280


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"softcap": 0.0}, "softcap must be a finite number > 0"),
        ({"softcap": float("inf")}, "softcap must be a finite number > 0"),
        ({"logit_scale": 0.0}, "logit_scale must be a finite nonzero number"),
        ({"logit_scale": float("nan")}, "logit_scale must be a finite nonzero number"),
        ({"z_loss": -1e-4}, "z_loss must be a finite number >= 0"),
        ({"z_loss": float("inf")}, "z_loss must be a finite number >= 0"),
        ({"smoothing_convention": "tf"}, "unknown smoothing_convention 'tf'"),
        ({"softcap": 1e39, "dtype": "float32"}, "not representable in float32"),
    ],
)
def test_variant_options_refused_at_the_front_door(kw: dict, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        cross_entropy(np.zeros((1, 3)), np.array([0]), **kw)


def test_megatron_with_one_class_refused() -> None:
    with pytest.raises(UsageError, match="at least 2 classes"):
        reference(np.zeros((2, 1)), np.array([0, 0]), label_smoothing=0.1,
                  smoothing_convention="megatron")  # fmt: skip


@pytest.mark.parametrize("method", ["torch", "jax"])
def test_framework_methods_compute_the_variant(method: str) -> None:
    pytest.importorskip(method)
    rng = np.random.default_rng(5)
    z = rng.standard_normal((6, 5)) * 20
    y = rng.integers(0, 5, 6)
    kw = {"z_loss": 1e-3, "softcap": 30.0, "logit_scale": 0.75, "label_smoothing": 0.1,
          "smoothing_convention": "megatron"}  # fmt: skip
    r = cross_entropy(z, y, method=method, dtype="float32", **kw)
    ref = reference(z, y, dtype="float32", **kw)
    eps = PRECISIONS["float32"].eps
    assert r.z_loss is not None
    assert np.abs(r.loss - ref.loss).max() <= 64 * eps * np.abs(ref.loss).max()
    assert np.abs(r.grad - ref.grad).max() <= 64 * eps


def test_wrong_formulas_are_far_from_the_reference() -> None:
    # the mistakes the issue names, computed in float64 by hand: each is off by far more than
    # any method's rounding error, so an analysis comparing against the reference sees it
    z = np.array([[40.0, -20.0, 3.0, 25.0]])
    y = np.array([3])
    ref = reference(z, y, softcap=30.0, logit_scale=2.0, z_loss=1e-3, label_smoothing=0.1,
                    smoothing_convention="megatron")  # fmt: skip

    def loss_of(zz: np.ndarray, coeff: np.ndarray, zl: float) -> float:
        lse = float(np.log(np.exp(zz - zz.max()).sum()) + zz.max())
        return float((coeff * (lse - zz)).sum() + 1e-3 * zl * lse**2)

    megatron = np.array([0.1 / 3, 0.1 / 3, 0.1 / 3, 0.9])
    torch_c = np.array([0.025, 0.025, 0.025, 0.925])
    s = 2.0 * z[0]
    right = loss_of(30 * np.tanh(s / 30), megatron, 1)
    assert abs(right - ref.loss[0]) < 1e-12 * right
    wrong = {
        "z tanh(z / c)": loss_of(s * np.tanh(s / 30), megatron, 1),
        "cap before scale": loss_of(2.0 * 30 * np.tanh(z[0] / 30), megatron, 1),
        "torch convention": loss_of(30 * np.tanh(s / 30), torch_c, 1),
        "no z-loss": loss_of(30 * np.tanh(s / 30), megatron, 0),
    }
    for name, w in wrong.items():
        assert abs(w - ref.loss[0]) > 1e-4 * abs(ref.loss[0]), name


def _their_kernel(z: np.ndarray, y: np.ndarray, mistake: str | None) -> tuple[np.ndarray, ...]:
    """A float32 kernel of scale 2, cap 30, z-loss 1e-3, Megatron smoothing 0.1 - right, or with
    one of the mistakes the issue names. Written from the formulas, in float32."""
    f = np.float32
    z = z.astype(f)
    c_n = z.shape[1]
    s, cap, lam, eps = f(2.0), f(30.0), f(1e-3), f(0.1)
    capped = mistake != "z-loss from the unshifted sum"  # a cap keeps exp(zz) <= e**30
    if not capped:
        zz = s * z
    elif mistake == "cap before scale":
        zz = s * (cap * np.tanh(z / cap))
    elif mistake == "z tanh(z / c)":
        zz = (s * z) * np.tanh(s * z / cap)
    else:
        zz = cap * np.tanh(s * z / cap)
    m = zz.max(axis=1, keepdims=True)
    e = np.exp(zz - m)
    ssum = e.sum(axis=1, keepdims=True)
    lse = (m + np.log(ssum))[:, 0]
    if mistake == "z-loss from the unshifted sum":
        with np.errstate(over="ignore"):
            lse_z = np.log(np.exp(zz).sum(axis=1))
    else:
        lse_z = lse
    onehot = np.eye(c_n, dtype=f)[y]
    if mistake == "torch convention":
        t = (1 - eps) * onehot + eps / c_n
    else:
        t = (1 - eps) * onehot + eps / (c_n - 1) * (1 - onehot)
    nll = lse[:, None] - zz
    loss = (t * nll).sum(axis=1) + lam * lse_z * lse_z
    p = e / ssum
    with np.errstate(invalid="ignore"):  # inf * 0 of the unshifted mistake: its NaN is the bug
        g = p * t.sum(axis=1, keepdims=True) - t + 2 * lam * lse_z[:, None] * p
    if not capped:
        g = g * s
    elif mistake != "cap before scale":
        g = g * (1 - np.tanh(s * z / cap) ** 2) * s
    return loss.astype(f), g.astype(f)


MISTAKES = [
    "z tanh(z / c)",
    "cap before scale",
    "torch convention",
    "z-loss from the unshifted sum",
]


@pytest.mark.parametrize("mistake", [None, *MISTAKES])
def test_compare_catches_each_wrong_formula(mistake: str | None) -> None:
    from smcheck import compare

    rng = np.random.default_rng(9)
    z = (rng.standard_normal((32, 11)) * 8).astype(np.float32)
    z[:4, 0] = 60.0  # exp(2 * 60) overflows float32: the unshifted z-loss sum is inf
    y = rng.integers(0, 11, 32)
    loss, grad = _their_kernel(z, y, mistake)
    cap = None if mistake == "z-loss from the unshifted sum" else 30.0
    with np.errstate(over="ignore", invalid="ignore"):
        rep = compare(z, y, loss, grad, logit_scale=2.0, softcap=cap, z_loss=1e-3,
                      label_smoothing=0.1, smoothing_convention="megatron")  # fmt: skip
    assert rep.variant is not None and rep.variant.softcap == cap
    if mistake is None:
        assert rep.ok, rep.verdict
    else:
        assert not rep.ok and rep.verdict in ("broken", "lossy"), (mistake, rep.verdict)


def test_compare_and_eval_cli_name_the_variant(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from smcheck.cli import cli

    rng = np.random.default_rng(2)
    z = (rng.standard_normal((16, 7)) * 5).astype(np.float32)
    y = rng.integers(0, 7, 16)
    loss, grad = _their_kernel(z, y, None)
    for name, a in (("z", z), ("y", y), ("loss", loss), ("grad", grad)):
        np.save(tmp_path / f"{name}.npy", a)
    runner = CliRunner()
    flags = ["--logit-scale", "2", "--softcap", "30", "--z-loss", "1e-3"]
    f = {k: str(tmp_path / f"{k}.npy") for k in ("z", "y", "loss", "grad")}
    args = ["compare", f["z"], "--labels", f["y"], "--loss", f["loss"], "--grad", f["grad"]]
    args += ["--label-smoothing", "0.1", "--smoothing-convention", "megatron", *flags]
    r = runner.invoke(cli, [*args, "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["input"]["variant"] == {
        "logit_scale": 2.0, "softcap": 30.0, "z_loss": float(np.float32(1e-3)),
        "smoothing_convention": "megatron",
    }  # fmt: skip
    r = runner.invoke(cli, ["eval", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"),
                            *flags])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "loss variant    logit_scale=2, softcap=30, z_loss=0.001" in r.stdout
    r = runner.invoke(cli, ["eval", str(tmp_path / "z.npy"), "--softcap", "-3"])
    assert r.exit_code == 2
    assert r.stderr.strip().endswith("softcap must be a finite number > 0, got -3.0")


@pytest.mark.parametrize("name", ["z_tanh", "cap_before_scale", "z_loss_unshifted",
                                  "z_loss_always", "wrong_convention"])  # fmt: skip
def test_kernel_probes_catch_each_wrong_variant_kernel(name: str) -> None:
    pytest.importorskip("torch")
    from smcheck.kernel import PROBES, kernel
    from tests.kernels import variant_kernels as vk

    for probe in vk.BROKEN[name]:
        r = kernel(getattr(vk, name), dtypes="float32", vocab=(1000,), rows=16, probes=probe)
        (result,) = r.probes
        assert result.status == "fail", (name, probe, result.detail)
        assert result.detail.startswith(PROBES[probe].catches)


def test_kernel_variant_probes_pass_a_correct_kernel() -> None:
    pytest.importorskip("torch")
    from smcheck.kernel import kernel
    from tests.kernels import variant_kernels as vk

    probes = "softcap,scale_then_cap,z_loss,z_loss_off,smoothing_torch,smoothing_megatron"
    r = kernel(vk.good, dtypes="float32,bfloat16", vocab=(10, 1000), rows=16, probes=probes)
    assert r.ok, [f"{p.test_id}: {p.detail}" for p in r.failed]
    assert len(r.probes) == 6 * 2 * 2 and not r.skipped


def test_sweep_softcap_below_ln_max_removes_naive_overflow_in_float16() -> None:
    # c tanh(z / c) < 3 < ln(65504) = 11.09: exp never overflows float16, whatever the scale,
    # and p_y >= e**-6 / 10 keeps naive's -1/p_y below 65504 (a cap of 5 would not: p_y
    # ~ e**-10 / 10 is subnormal there)
    from smcheck import SweepConfig, sweep
    from smcheck.render.sweep import to_dict

    kw = {"dtypes": ("float16",), "classes": (10,), "scales": (1.0, 10.0, 100.0, 1000.0),
          "cases": ("random",), "methods": ("naive",)}  # fmt: skip
    plain = sweep(SweepConfig(**kw))
    capped = sweep(SweepConfig(**kw, softcap=3.0))
    ovf = [b for b in plain.breaks if b.kind == "overflow" and b.scale is not None]
    assert ovf and ovf[0].scale < 12
    assert not [b for b in capped.breaks if b.kind == "overflow" and b.scale is not None]
    assert to_dict(capped)["config"]["variant"] == {"softcap": 3.0}
    assert "variant" not in to_dict(plain)["config"]


def test_variant_config_keys_come_from_the_flags(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from smcheck.cli import cli

    np.save(tmp_path / "z.npy", np.array([[1e4, 0.0, 2.0], [1.0, 2.0, 3.0]], np.float32))
    np.save(tmp_path / "y.npy", np.array([1, 2]))
    cfg = tmp_path / "smcheck.toml"
    cfg.write_text('softcap = 30\n[eval]\nz-loss = 1e-4\nsmoothing_convention = "megatron"\n')
    r = CliRunner().invoke(cli, ["--config", str(cfg), "eval", str(tmp_path / "z.npy"),
                                 "--labels", str(tmp_path / "y.npy"), "-f", "json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input"]["variant"] == {
        "softcap": 30.0, "z_loss": float(np.float32(1e-4)), "smoothing_convention": "megatron"
    }  # fmt: skip


def test_variant_reference_runs_in_float64_where_that_meets_the_bound_bug() -> None:
    """The variant reference ran in binary128 for every working dtype (eval 256 x 32000 with
    --z-loss: 17.5 s against 1.5 s plain). float64 now carries it where its error bound
    (18 * 2**-53 * c per logit difference) meets eps * 2**-20: caps up to 56.9 in float32."""
    from smcheck.reference import variant_arithmetic
    from smcheck.variants import Variant

    f64, quad = "float64 with exact shifts (TwoSum)", "binary128 (numpy-quaddtype)"
    assert variant_arithmetic(PRECISIONS["float32"], Variant(z_loss=1e-4)) == f64
    assert variant_arithmetic(PRECISIONS["float32"], Variant(logit_scale=0.125)) == f64
    assert variant_arithmetic(PRECISIONS["float32"], Variant(softcap=56.0)) == f64
    assert variant_arithmetic(PRECISIONS["float32"], Variant(softcap=57.0)) == quad
    assert variant_arithmetic(PRECISIONS["bfloat16"], Variant(softcap=1e6)) == f64
    assert variant_arithmetic(PRECISIONS["float64"], Variant(z_loss=1e-4)) == quad


@pytest.mark.parametrize("cap", [56.0, 57.0, 1000.0])
def test_reference_at_the_float64_cap_limit_and_past_it_matches_mpmath(cap: float) -> None:
    # the largest float32 cap float64 carries (56) and the first past it (binary128): saturated
    # and confident rows, where each capped logit's rounding (~c * 2**-53) is the loss's error
    rng = np.random.default_rng(56)
    rows = [(np.array([1e4, -1e4, 9000.0, 55.0, 0.0, -60.0]), y) for y in range(6)]
    for _ in range(6):
        z = rng.standard_normal(7) * 200.0
        z[0] = np.abs(z).max() + 300.0  # a confident row: the loss is sum exp(d_j)
        rows += [(z, 0), (z, 4)]
    for z, y in rows:
        _check("float32", z, y, cap=cap)
        _check("float32", z, y, cap=cap, lam=1e-4, scale=0.5, eps=0.1)


@pytest.mark.parametrize(("scale", "lam", "z"), [
    (1e4, 0.0, [1.5e-4, -2.25e-4, 3.1e-4, 0.0, -1.2e-4, 2.0e-4]),
    (1.0, 1.0, [1000.5, 999.25, 1001.0, 998.0]),
])  # fmt: skip
def test_reference_gradient_bound_is_in_units_of_its_largest_entry(
    scale: float, lam: float, z: list[float]
) -> None:
    """Review finding: with logit_scale 1e4 (or z-loss 1 at lse ~ 1001) a gradient entry reaches
    |s| (1 + 2 lambda |lse|) ~ 1e4, whose float64 ulp alone exceeds eps * 2**-20 absolute; the
    documented bound is in units of that largest possible entry, and holds there."""
    name = "float32"
    x = np.array(z)
    prep = prepare_input(x[None, :], np.array([2]), dtype=name)
    ref = reference(x[None, :], np.array([2]), dtype=name, logit_scale=scale, z_loss=lam)
    xr = prep.x.astype(np.float64)[0]
    loss_t, grad_t, _ = mp_variant_truth(
        xr, 2, scale=_const(scale, name), cap=None, lam=_const(lam, name), eps=0.0,
        convention="torch",
    )  # fmt: skip
    u = scale * xr
    lse = float(np.log(np.sum(np.exp(u - u.max())))) + float(u.max())
    unit = max(1.0, abs(scale) * (1 + 2 * lam * abs(lse)))
    bound = PRECISIONS[name].eps * 2.0**-20
    assert mp_rel_err(ref.loss[0], 0.0, loss_t) <= bound
    worst = max(mp_abs_err(g, 0.0, t) for g, t in zip(ref.grad[0], grad_t, strict=True))
    assert worst <= bound * unit, (worst / bound, unit)
