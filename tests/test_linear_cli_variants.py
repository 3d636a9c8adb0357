"""``smcheck eval --hidden`` and ``smcheck compare --hidden`` with label smoothing, reduction
and the loss variants, end to end on real files (and the options each mode refuses).

Inputs are "confident": every label is its row's largest logit, so each option moves the
reference loss in a known direction - smoothing, a cap, a scale below 1, z-loss and Megatron's
convention (eps / V less on the label) all raise it; a scale above 1 lowers it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli
from smcheck.linear_eval import LinearCheck, LinearEvalReport
from smcheck.render.linear import RENDERERS, render
from smcheck.variants import Variant


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no smcheck.toml can change the defaults
    for var in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """bfloat16-exact float32 values; N = 40, D = 8, V = 67; labels = argmax; one ignored."""
    rng = np.random.default_rng(1)
    n, d, v = 40, 8, 67

    def bf(x: np.ndarray) -> np.ndarray:
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)

    h, w, b = (
        bf(rng.standard_normal((n, d))),
        bf(rng.standard_normal((v, d))),
        bf(rng.standard_normal(v) / 10),
    )
    y = np.argmax(h.astype(np.float64) @ w.T.astype(np.float64) + b, axis=1)
    y[3] = -100
    out = {}
    for k, a in {"h": h, "w": w, "b": b, "y": y}.items():
        np.save(tmp_path / f"{k}.npy", a)
        out[k] = str(tmp_path / f"{k}.npy")
    return out


def _eval(files: dict[str, str], *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "eval", "--hidden", files["h"], "--weight", files["w"], "--bias", files["b"], "--labels",
        files["y"], "--dtype", "float32", "--grad-accum", "float32", "--chunk-vocab", "16",
        "-f", "json", *extra,
    ])  # fmt: skip


def _linear(r: Result) -> dict[str, Any]:
    assert r.exit_code == 0, r.output
    lin: dict[str, Any] = json.loads(r.output)["linear"]
    return lin


def test_label_smoothing_raises_the_loss_of_confident_rows(files: dict[str, str]) -> None:
    plain = _linear(_eval(files))
    smooth = _linear(_eval(files, "--label-smoothing", "0.1"))
    assert "variant" not in plain and "variant" not in smooth  # torch smoothing: no variant
    assert plain["label_smoothing"] == 0.0 and smooth["label_smoothing"] == 0.1
    assert smooth["reference"]["loss"] > plain["reference"]["loss"] + 0.05
    assert smooth["checks"][0]["ok"]


def test_label_smoothing_is_named_in_the_table(files: dict[str, str]) -> None:
    r = _eval(files, "--label-smoothing", "0.25", "-f", "table")
    assert r.exit_code == 0, r.output
    assert "label smoothing 0.25" in r.output


@pytest.mark.parametrize(("reduction", "factor"), [("sum", 39), ("none", 39)])
def test_reduction_sum_and_none_are_the_sum_of_the_counted_rows(
    files: dict[str, str], reduction: str, factor: int
) -> None:
    mean = _linear(_eval(files))
    total = _linear(_eval(files, "--reduction", reduction))
    assert total["reduction"] == reduction
    assert total["reference"]["loss"] == pytest.approx(factor * mean["reference"]["loss"], 1e-12)
    assert total["checks"][0]["ok"]


@pytest.mark.parametrize(
    ("args", "key", "value", "sign"),
    [
        (["--z-loss", "0.01"], "z_loss", 0.01, 1),
        (["--softcap", "2"], "softcap", 2.0, 1),
        (["--logit-scale", "0.5"], "logit_scale", 0.5, 1),
        (["--logit-scale", "2"], "logit_scale", 2.0, -1),
        (["--label-smoothing", "0.1", "--smoothing-convention", "megatron"],
         "smoothing_convention", "megatron", 1),
    ],
)  # fmt: skip
def test_each_variant_moves_the_loss_its_way_and_is_named(
    files: dict[str, str], args: list[str], key: str, value: Any, sign: int
) -> None:
    base = ["--label-smoothing", "0.1"] if key == "smoothing_convention" else []
    plain = _linear(_eval(files, *base))
    lin = _linear(_eval(files, *args))  # the emulated float32 kernel passes with the variant
    held = float(np.float32(value)) if isinstance(value, float) else value  # float32 carrier
    assert lin["variant"] == {key: held}
    assert sign * (lin["reference"]["loss"] - plain["reference"]["loss"]) > 1e-3
    assert all(c["ok"] for c in lin["checks"])
    table = _eval(files, *args, "-f", "table")
    assert f"loss variant {key}=" in " ".join(table.output.split())


def test_variant_constants_are_reported_as_the_float32_kernel_holds_them(
    files: dict[str, str],
) -> None:
    lin = _linear(_eval(files, "--logit-scale", "0.1"))
    assert lin["variant"] == {"logit_scale": float(np.float32(0.1))}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--softcap", "-1"], "softcap must be a finite number > 0, got -1.0"),
        (["--softcap", "0"], "softcap must be a finite number > 0, got 0.0"),
        (["--logit-scale", "0"], "logit_scale must be a finite nonzero number, got 0.0"),
        (["--z-loss", "-1"], "-1.0 is not in the range x>=0"),
        (["--label-smoothing", "1.5"], "1.5 is not in the range 0<=x<=1"),
        (["--reduction", "max"], "'max' is not one of 'mean', 'sum', 'none'"),
        (["--smoothing-convention", "x"], "'x' is not one of 'torch', 'megatron'"),
        (["--methods", "naive"], "--methods does not apply to the linear mode (--hidden)"),
        (["--per-row", "r.csv"], "--per-row does not apply to the linear mode (--hidden)"),
        (["--accum", "float32"], "--accum does not apply to the linear mode (--hidden)"),
        (["--workers", "2"], "--workers does not apply to the linear mode (--hidden)"),
    ],
)
def test_invalid_or_inapplicable_option_is_one_line_exit_2(
    files: dict[str, str], args: list[str], message: str
) -> None:
    r = _eval(files, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output and not Path("r.csv").exists()


@pytest.mark.parametrize(
    "args", [["--label-smoothing", "0.1"], ["--reduction", "sum"], ["--grad-accum", "bfloat16"]]
)
def test_linear_only_options_are_refused_by_plain_eval(tmp_path: Path, args: list[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "l.npy", np.array([0, 1]))
    r = CliRunner().invoke(cli, ["eval", "x.npy", "--labels", "l.npy", *args])
    assert r.exit_code == 2
    assert f"{args[0]} applies only to the linear mode (--hidden, --weight)" in r.output


# -- compare --hidden ---------------------------------------------------------------------


def _dump(files: dict[str, str], tmp_path: Path, **variant: Any) -> dict[str, str]:
    """A torch float32 kernel's mean loss and gradients, written as the CLI reads them."""
    torch = pytest.importorskip("torch")
    from smcheck.kernel.frameworks import torch_variant_stock

    h = torch.tensor(np.load(files["h"]), requires_grad=True)
    w = torch.tensor(np.load(files["w"]), requires_grad=True)
    b = torch.tensor(np.load(files["b"]), requires_grad=True)
    y = torch.tensor(np.load(files["y"]))
    rows = torch_variant_stock(h @ w.T + b, y, reduction="none", **variant)
    loss = rows[y != -100].mean()
    loss.backward()
    out = {}
    arrays = {"loss": loss.detach().numpy().reshape(1), "dh": h.grad, "dw": w.grad,
              "db": b.grad}  # fmt: skip
    for k, a in arrays.items():
        np.save(tmp_path / f"{k}.npy", np.asarray(a))
        out[k] = str(tmp_path / f"{k}.npy")
    return out


def _compare(files: dict[str, str], dump: dict[str, str], *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "compare", "--hidden", files["h"], "--linear-weight", files["w"], "--linear-bias",
        files["b"], "--labels", files["y"], "--loss", dump["loss"], "--reduction", "mean",
        "--grad-hidden", dump["dh"], "--grad-weight", dump["dw"], "--grad-bias", dump["db"],
        "--dtype", "float32", "-f", "json", *extra,
    ])  # fmt: skip


def test_compare_linear_label_smoothing_is_checked(files: dict[str, str], tmp_path: Path) -> None:
    dump = _dump(files, tmp_path, label_smoothing=0.2)
    ok = _compare(files, dump, "--label-smoothing", "0.2")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["linear"]["label_smoothing"] == 0.2
    assert _compare(files, dump).exit_code == 1  # their smoothing, checked as the plain loss


@pytest.mark.parametrize(
    ("variant", "args", "wrong"),
    [
        ({"softcap": 2.0}, ["--softcap", "2"], ["--softcap", "3"]),
        ({"z_loss": 1e-2}, ["--z-loss", "0.01"], []),
        ({"logit_scale": 0.5, "softcap": 2.0}, ["--logit-scale", "0.5", "--softcap", "2"],
         ["--softcap", "2"]),
        ({"label_smoothing": 0.2, "smoothing_convention": "megatron"},
         ["--label-smoothing", "0.2", "--smoothing-convention", "megatron"],
         ["--label-smoothing", "0.2"]),
    ],
)  # fmt: skip
def test_compare_linear_passes_the_right_variant_and_fails_a_wrong_one(
    files: dict[str, str], tmp_path: Path, variant: dict[str, Any], args: list[str],
    wrong: list[str],
) -> None:  # fmt: skip
    dump = _dump(files, tmp_path, **variant)
    ok = _compare(files, dump, *args)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["linear"].get("variant")
    assert _compare(files, dump, *wrong).exit_code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weight", "w.npy"], "--weight does not apply to the linear mode (--hidden)"),
        (["--top", "3"], "--top does not apply to the linear mode (--hidden)"),
        (["--softcap", "-2"], "softcap must be a finite number > 0, got -2.0"),
    ],
)
def test_compare_linear_refuses_what_it_cannot_check(
    files: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    np.save(tmp_path / "loss.npy", np.zeros(1))
    np.save(tmp_path / "w.npy", np.ones(67))
    r = _compare(files, {"loss": "loss.npy", "dh": files["h"], "dw": files["w"],
                         "db": files["b"]}, *args)  # fmt: skip
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_plain_compare_refuses_the_linear_gradients(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "l.npy", np.array([0, 1]))
    r = CliRunner().invoke(cli, ["compare", "x.npy", "--labels", "l.npy", "--loss", "l.npy",
                                 "--grad-weight", "x.npy"])  # fmt: skip
    assert r.exit_code == 2
    assert "--grad-weight applies only to the linear mode (--hidden, --linear-weight)" in r.output


# -- the renderers name the variant -------------------------------------------------------


def _report(variant: Variant | None, ok: bool = False) -> LinearEvalReport:
    check = LinearCheck("float32", 4, 16, 10, 5, 0.5, 1e-7, 2e-7, 9e-3, None, ok)
    return LinearEvalReport(
        "h.npy", "w.npy", None, "y.npy", 40, 8, 67, 39, "float32", "mean", 0.1, 1.7, 0, 12, 4.0,
        1e-6, (check,), variant,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["table", "markdown", "github"])
def test_renderers_name_the_variant(fmt: str) -> None:
    text = " ".join(render(_report(Variant(softcap=30.0, z_loss=1e-4)), fmt).split())
    assert "softcap=30, z_loss=0.0001" in text
    assert "softcap" not in render(_report(None), fmt)


def test_json_has_a_variant_key_only_when_one_is_active() -> None:
    doc = json.loads(render(_report(Variant(logit_scale=0.5)), "json"))
    assert doc["linear"]["variant"] == {"logit_scale": 0.5}
    assert "variant" not in json.loads(render(_report(None), "json"))["linear"]
    assert set(RENDERERS) == {"table", "json", "markdown", "github", "junit"}
