"""Golden JSON: every command's JSON output on the samples and on generated inputs, byte for byte.

These pin behaviour across refactors: a restructuring of the library must leave every number,
key and message of the JSON documents unchanged. Regenerate deliberately (when an output is
*meant* to change) with ``SMCHECK_REGOLD=1 python -m pytest tests/test_golden.py`` and review
the diff of ``tests/golden/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
GOLDEN = Path(__file__).resolve().parent / "golden"


def _inputs(tmp: Path) -> None:
    """Copy the samples and write the generated inputs into ``tmp`` (paths in JSON are relative)."""
    for name in (
        "healthy_f32.npy",
        "healthy_labels.npy",
        "healthy.npz",
        "classifier.csv",
        "lm_logits_f16.npy",
        "lm_labels.npy",
        "overconfident_f32.npy",
        "overconfident_labels.npy",
    ):
        shutil.copy(SAMPLES / name, tmp / name)
    # the classifier's logits without its label column (a column named 'label' is refused)
    lines = (SAMPLES / "classifier.csv").read_text().splitlines()
    (tmp / "classifier_logits.csv").write_text(
        "".join(line.rsplit(",", 1)[0] + "\n" for line in lines)
    )
    rng = np.random.default_rng(20261203)
    x = (rng.standard_normal((40, 37)) * 9).astype(np.float32)
    x[3, 5] = 300.0  # a confident row: naive's exp overflows in float16
    x[7] = 0.0  # all-equal row
    x[11, :] += 1e4  # large common offset
    y = rng.integers(0, 37, 40)
    y[2] = -100
    np.save(tmp / "gen_x.npy", x)
    np.save(tmp / "gen_y.npy", y)
    # a kernel's dumped outputs for compare: the float32 max-shifted loss/grad, one row broken
    z = x.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    safe = np.where(y < 0, 0, y)
    loss = (np.log(s[:, 0]) + m[:, 0] - z[np.arange(40), safe]).astype(np.float32)
    loss[y < 0] = 0
    grad = e / s
    grad[np.arange(40), safe] -= 1
    grad[y < 0] = 0
    grad = grad.astype(np.float32)
    loss[5] = np.float32(loss[5] * 1.01)
    np.save(tmp / "their_loss.npy", loss)
    np.save(tmp / "their_grad.npy", grad)
    wt = np.linspace(0.5, 2.0, 37)
    np.save(tmp / "weight.npy", wt)
    # a fused linear cross-entropy: bfloat16 values stored as float32 (exact), V = 61 prime
    import ml_dtypes

    lr = np.random.default_rng(20261204)

    def bf16(a: np.ndarray) -> np.ndarray:
        return a.astype(ml_dtypes.bfloat16).astype(np.float32)

    np.save(tmp / "lin_h.npy", bf16(lr.standard_normal((32, 12))))
    np.save(tmp / "lin_w.npy", bf16(lr.standard_normal((61, 12)) / 2))
    np.save(tmp / "lin_b.npy", bf16(lr.standard_normal(61) / 10))
    lin_y = lr.integers(0, 61, 32)
    lin_y[4] = -100
    np.save(tmp / "lin_y.npy", lin_y)


CASES: dict[str, list[str]] = {
    "eval_healthy": ["eval", "healthy_f32.npy", "--labels", "healthy_labels.npy"],
    "eval_healthy_f16": [
        "eval",
        "healthy_f32.npy",
        "--labels",
        "healthy_labels.npy",
        "--dtype",
        "float16",
        "--methods",
        "all",
    ],
    "eval_npz_bf16": ["eval", "healthy.npz", "--dtype", "bfloat16"],
    "eval_csv": ["eval", "classifier.csv", "--label-column", "label"],
    "eval_csv_nolabels_f8": ["eval", "classifier_logits.csv", "--dtype", "float8_e4m3fn"],
    "eval_lm_f16": ["eval", "lm_logits_f16.npy", "--labels", "lm_labels.npy"],
    "eval_lm_accum16": [
        "eval",
        "lm_logits_f16.npy",
        "--labels",
        "lm_labels.npy",
        "--accum",
        "float16",
        "--gate",
        "all",
    ],
    "eval_overconfident_f16": [
        "eval",
        "overconfident_f32.npy",
        "--labels",
        "overconfident_labels.npy",
        "--dtype",
        "float16",
        "--cast",
        "saturate",
    ],
    "eval_gen_f64": ["eval", "gen_x.npy", "--labels", "gen_y.npy", "--dtype", "float64"],
    "eval_gen_f16": [
        "eval",
        "gen_x.npy",
        "--labels",
        "gen_y.npy",
        "--dtype",
        "float16",
        "--top",
        "3",
    ],
    "eval_gen_labelfree": ["eval", "gen_x.npy", "--dtype", "bfloat16"],
    "gradcheck_default": ["gradcheck", "--rows", "12", "--classes", "7"],
    "gradcheck_f16_all": [
        "gradcheck",
        "--dtype",
        "float16",
        "--methods",
        "all",
        "--rows",
        "10",
        "--classes",
        "9",
        "--seed",
        "3",
    ],
    "gradcheck_file": ["gradcheck", "gen_x.npy", "--labels", "gen_y.npy", "--rows", "8"],
    "sweep_small": [
        "sweep",
        "--dtype",
        "float16,float32",
        "--classes",
        "10",
        "--scales",
        "1:1e4:9",
        "--rows",
        "4",
    ],
    "sweep_bf16_cases": [
        "sweep",
        "--dtype",
        "bfloat16",
        "--classes",
        "5",
        "--scales",
        "0.5,50,5000",
        "--case",
        "confident,margin",
        "--methods",
        "default",
    ],
    "compare_none": [
        "compare",
        "gen_x.npy",
        "--labels",
        "gen_y.npy",
        "--loss",
        "their_loss.npy",
        "--grad",
        "their_grad.npy",
    ],
    "compare_f16": [
        "compare",
        "gen_x.npy",
        "--labels",
        "gen_y.npy",
        "--loss",
        "their_loss.npy",
        "--dtype",
        "float16",
    ],
    "compare_weighted": [
        "compare",
        "gen_x.npy",
        "--labels",
        "gen_y.npy",
        "--loss",
        "their_loss.npy",
        "--weight",
        "weight.npy",
        "--label-smoothing",
        "0.1",
    ],
    "eval_linear": [
        "eval", "--hidden", "lin_h.npy", "--weight", "lin_w.npy", "--bias", "lin_b.npy",
        "--labels", "lin_y.npy", "--dtype", "bfloat16", "--chunk-rows", "4", "--chunk-vocab", "16",
    ],
    "eval_linear_variant": [
        "eval", "--hidden", "lin_h.npy", "--weight", "lin_w.npy", "--bias", "lin_b.npy",
        "--labels", "lin_y.npy", "--dtype", "bfloat16", "--chunk-rows", "4", "--chunk-vocab", "16",
        "--logit-scale", "0.5", "--softcap", "5", "--z-loss", "1e-3", "--label-smoothing", "0.1",
        "--smoothing-convention", "megatron", "--reduction", "sum",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("golden")
    _inputs(tmp)
    return tmp


@pytest.mark.parametrize("name", sorted(CASES))
def test_json_output_is_unchanged(
    name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(
        cli, ["--no-config", *CASES[name], "--format", "json"], catch_exceptions=False
    )
    assert result.exit_code in (0, 1), result.output
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("SMCHECK_REGOLD"):
        golden.write_text(result.stdout)
    assert result.stdout == golden.read_text(), f"{name}: JSON differs from {golden}"
