"""``smcheck eval --hidden --weight [--bias] --labels`` end to end, and its renderers."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli
from smcheck.linear_eval import LinearCheck, LinearEvalReport
from smcheck.render.linear import RENDERERS, render


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no smcheck.toml can change the defaults
    for var in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["eval", *args])


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """bfloat16 values stored as float32 (exact); V = 301 is no multiple of the chunk."""
    rng = np.random.default_rng(0)
    n, d, v = 96, 9, 301

    def bf(x: np.ndarray) -> np.ndarray:
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)

    arrays = {
        "h": bf(rng.standard_normal((n, d))),
        "w": bf(rng.standard_normal((v, d)) / 3),
        "b": bf(rng.standard_normal(v) / 10),
        "y": np.where(np.arange(n) == 5, -100, rng.integers(0, v, n)),
    }
    out = {}
    for k, a in arrays.items():
        np.save(tmp_path / f"{k}.npy", a)
        out[k] = str(tmp_path / f"{k}.npy")
    return out


def test_linear_mode_flags_bf16_accumulation_over_many_chunks(files: dict[str, str]) -> None:
    r = run("--hidden", files["h"], "--weight", files["w"], "--bias", files["b"], "--labels",
            files["y"], "--dtype", "bfloat16", "--chunk-rows", "1", "--chunk-vocab", "128",
            "--format", "json")  # fmt: skip
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert doc["schema"] == "smcheck.eval/1" and doc["ok"] is False
    lin = doc["linear"]
    assert (lin["rows"], lin["dim"], lin["vocab"], lin["counted_rows"]) == (96, 9, 301, 95)
    f32, bf16 = lin["checks"]
    assert (f32["grad_accum"], f32["ok"], f32["chunks_rows"], f32["chunks_vocab"]) == (
        "float32", True, 96, 3,
    )  # fmt: skip
    assert bf16["grad_accum"] == "bfloat16" and bf16["ok"] is False
    assert bf16["grad_bias_err"] > lin["thresholds"]["max_grad_err"]
    assert bf16["grad_weight_err"] > f32["grad_weight_err"]


def test_linear_mode_float32_accumulation_passes(files: dict[str, str]) -> None:
    r = run("--hidden", files["h"], "--weight", files["w"], "--labels", files["y"], "--dtype",
            "bfloat16", "--grad-accum", "float32")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "float32" in r.output and "pass" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x.npy", "--hidden", "h"], "give LOGITS, or --hidden with --weight (not both)"),
        (["--hidden", "h"], "--hidden needs --weight and --labels"),
        ([], "missing argument LOGITS"),
        (["--weight", "w"], "give LOGITS, or --hidden"),
    ],
)
def test_linear_mode_usage_errors(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 2
    assert message in r.output


def test_linear_mode_bad_label_names_the_file(files: dict[str, str], tmp_path: Path) -> None:
    y = np.load(files["y"])
    y[7] = 301
    np.save(tmp_path / "bad.npy", y)
    r = run("--hidden", files["h"], "--weight", files["w"], "--labels", str(tmp_path / "bad.npy"))
    assert r.exit_code == 2
    assert "bad.npy: row 7: label 301 is outside [0, 301)" in r.output
    assert "Traceback" not in r.output


def _report(ok: bool) -> LinearEvalReport:
    check = LinearCheck("bfloat16", 1, 128, 96, 3, 0.5, 1e-3, 2e-3, 9e-3 if not ok else 1e-3,
                        None, ok)  # fmt: skip
    return LinearEvalReport(
        "h\x1b[31m.npy", "w.npy", None, "y.npy", 96, 9, 301, 95, "bfloat16", "mean", 0.0, 5.7,
        0, 12, 4.0, 2.0**-7, (check,),
    )  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
def test_linear_renderers_escape_file_names_and_show_the_verdict(fmt: str) -> None:
    for ok in (True, False):
        text = render(_report(ok), fmt)
        assert "\x1b" not in text
        if fmt == "json":
            assert json.loads(text)["linear"]["checks"][0]["ok"] is ok
        elif fmt != "github" or not ok:
            assert "bfloat16" in text


def test_compare_linear_dump_of_torch_passes_and_a_bf16_dw_fails(
    files: dict[str, str], tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    h = torch.tensor(np.load(files["h"]), requires_grad=True)
    w = torch.tensor(np.load(files["w"]), requires_grad=True)
    b = torch.tensor(np.load(files["b"]), requires_grad=True)
    y = torch.tensor(np.load(files["y"]))
    loss = torch.nn.functional.cross_entropy(h @ w.T + b, y, reduction="mean")
    loss.backward()
    dump = {"loss": loss.detach().numpy().reshape(1), "dh": h.grad.numpy(),
            "dw": w.grad.numpy(), "db": b.grad.numpy()}  # fmt: skip
    for k, a in dump.items():
        np.save(tmp_path / f"{k}.npy", a)
    np.save(tmp_path / "dw_bf16.npy", dump["dw"].astype(ml_dtypes.bfloat16).astype(np.float32))
    args = ["compare", "--hidden", files["h"], "--linear-weight", files["w"], "--linear-bias",
            files["b"], "--labels", files["y"], "--loss", str(tmp_path / "loss.npy"),
            "--reduction", "mean", "--grad-hidden", str(tmp_path / "dh.npy"), "--grad-bias",
            str(tmp_path / "db.npy"), "--dtype", "float32", "-f", "json"]  # fmt: skip
    ok = CliRunner().invoke(cli, [*args, "--grad-weight", str(tmp_path / "dw.npy")])
    assert ok.exit_code == 0, ok.output
    (check,) = json.loads(ok.output)["linear"]["checks"]
    assert check["grad_weight_err"] < 1e-6 and check["loss_max_ulps"] < 4
    bad = CliRunner().invoke(cli, [*args, "--grad-weight", str(tmp_path / "dw_bf16.npy")])
    assert bad.exit_code == 1, bad.output
    (check,) = json.loads(bad.output)["linear"]["checks"]
    assert check["grad_weight_err"] > 1e-4 and not check["ok"]
