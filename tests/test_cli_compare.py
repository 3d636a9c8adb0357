"""``smcheck compare`` end to end: CliRunner on real files in tmp_path, no monkeypatching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

from smcheck.cli import cli

from .conftest import TRUTH_DPS, mp_truth

N, C = 12, 5


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    """logits/labels and a correct float32 kernel's loss and gradient (mpmath, rounded)."""
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((N, C)) * 3).astype(np.float32)
    y = rng.integers(0, C, N)
    truths = [mp_truth(z[i], int(y[i])) for i in range(N)]
    loss = np.array([float(t[0]) for t in truths]).astype(np.float32)
    grad = np.array([[float(v) for v in t[1]] for t in truths]).astype(np.float32)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    np.save(tmp_path / "loss.npy", loss)
    np.save(tmp_path / "grad.npy", grad)
    with mpmath.workdps(TRUTH_DPS):
        mean = float(mpmath.fsum(t[0] for t in truths) / N)
    np.save(tmp_path / "mean.npy", np.float32(mean))
    return tmp_path


def _run(d: Path, *args: str, loss: str = "loss.npy") -> object:
    base = [
        "compare",
        str(d / "logits.npy"),
        "--labels",
        str(d / "labels.npy"),
        "--loss",
        str(d / loss),
    ]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


def test_pass_exit_0_and_json_schema(dump: Path) -> None:
    res = _run(dump, "--grad", str(dump / "grad.npy"), "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "smcheck.compare/1"
    assert doc["ok"] is True and isinstance(doc["ok"], bool)
    for key in ("max_ulp_err", "median_ulp_err", "max_rel_err"):
        assert isinstance(doc["loss"][key], float), key
    assert isinstance(doc["loss"]["nonfinite_rows"], int)
    for key in ("max_abs_err", "max_rel_err"):
        assert isinstance(doc["grad"][key], float), key
    assert isinstance(doc["grad"]["nonfinite_rows"], int)
    assert doc["loss"]["max_ulp_err"] <= 0.5 + 1e-5  # correctly rounded to float32
    assert doc["input"]["rows"] == N and doc["input"]["classes"] == C
    assert doc["input"]["dtype"] == "float32" and doc["input"]["reduction"] == "none"
    assert doc["verdict"] == "ok" and res.stderr == ""


def test_grad_is_null_without_grad(dump: Path) -> None:
    res = _run(dump, "-f", "json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["grad"] is None


def test_injected_nan_row_fails_with_exit_1(dump: Path) -> None:
    loss = np.load(dump / "loss.npy")
    loss[4] = np.nan
    np.save(dump / "bad.npy", loss)
    res = _run(dump, "-f", "json", loss="bad.npy")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["loss"]["nonfinite_rows"] == 1 and doc["loss"]["nonfinite_row_ids"] == [4]
    assert doc["ok"] is False and doc["verdict"] == "broken"
    assert _run(dump, "--exit-zero", loss="bad.npy").exit_code == 0
    assert _run(dump, "--fail-on", "none", loss="bad.npy").exit_code == 0
    # eval's overflow/underflow (one fail-on in a config file for every command) mean nonfinite
    res = _run(dump, "--fail-on", "overflow", "-f", "json", loss="bad.npy")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["thresholds"]["fail_on"] == ["nonfinite"]
    assert _run(dump, "--fail-on", "ignored", loss="bad.npy").exit_code == 0


def test_dropped_onehot_gradient_fails(dump: Path) -> None:
    g = np.load(dump / "grad.npy")
    y = np.load(dump / "labels.npy")
    g[np.arange(N), y] += 1  # softmax, without the -onehot term
    np.save(dump / "softmax.npy", g)
    res = _run(dump, "--grad", str(dump / "softmax.npy"), "-f", "json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert abs(doc["grad"]["max_abs_err"] - 1) < 1e-6
    assert doc["worst_rows"][0]["grad_worst_class"] == doc["worst_rows"][0]["label"]


def test_thresholds_from_the_command_line(dump: Path) -> None:
    loss = np.load(dump / "loss.npy")
    for _ in range(3):
        loss = np.nextafter(loss, np.float32(np.inf))
    np.save(dump / "off3.npy", loss)
    assert _run(dump, loss="off3.npy").exit_code == 0  # default budget 4 + log2(5)
    res = _run(dump, "--max-loss-ulp", "1", "-f", "json", loss="off3.npy")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["thresholds"]["max_loss_ulp"] == 1.0 and doc["verdict"] == "lossy"
    res = _run(dump, "--grad", str(dump / "grad.npy"), "--max-grad-err", "0")
    assert res.exit_code == 1  # a float32 gradient is not exact


def test_reduction_mean_with_zero_d_npy(dump: Path) -> None:
    res = _run(dump, "--reduction", "mean", "-f", "json", loss="mean.npy")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["input"]["reduction"] == "mean"
    assert doc["loss"]["value"] == float(np.load(dump / "mean.npy"))
    assert doc["loss"]["max_ulp_err"] <= 0.5 + 1e-5
    # the per-row file is not one number
    res = _run(dump, "--reduction", "mean", loss="loss.npy")
    assert res.exit_code == 2
    assert "expected one number" in res.stderr


def test_bad_input_exit_2_one_line(dump: Path) -> None:
    np.save(dump / "short.npy", np.zeros(N - 1, dtype=np.float32))
    res = _run(dump, loss="short.npy")
    assert res.exit_code == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "short.npy: shape 11, expected 12" in lines[0]
    res = _run(dump, loss="missing.npy")
    assert res.exit_code == 2 and "missing.npy: no such file" in res.stderr
    res = _run(dump, "--fail-on", "nan")
    assert res.exit_code == 2 and "--fail-on: unknown value 'nan'" in res.stderr
    res = _run(dump, "--dtype", "float7")
    assert res.exit_code == 2 and "unknown dtype" in res.stderr
    res = CliRunner().invoke(
        cli, ["compare", str(dump / "logits.npy"), "--loss", str(dump / "loss.npy")]
    )
    assert res.exit_code == 2 and "needs labels" in res.stderr
    res = CliRunner().invoke(cli, ["compare", str(dump / "logits.npy")])
    assert res.exit_code == 2 and "--loss" in res.stderr


def test_text_and_npz_dumps(dump: Path) -> None:
    z = np.load(dump / "logits.npy")
    y = np.load(dump / "labels.npy")
    loss = np.load(dump / "loss.npy")
    grad = np.load(dump / "grad.npy")
    np.savez(dump / "all.npz", logits=z, labels=y, loss=loss, grad=grad)
    all_npz = str(dump / "all.npz")
    res = CliRunner().invoke(
        cli, ["compare", all_npz, "--loss", all_npz, "--grad", all_npz, "-f", "json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["input"]["loss"].endswith("all.npz['loss']")
    (dump / "loss.txt").write_text("".join(f"{float(v)!r}\n" for v in loss))
    header = ",".join(f"c{j}" for j in range(C)) + ",label\n"
    rows = "".join(",".join(repr(float(v)) for v in z[i]) + f",{y[i]}\n" for i in range(N))
    (dump / "data.csv").write_text(header + rows)
    res = CliRunner().invoke(
        cli,
        [
            "compare",
            str(dump / "data.csv"),
            "--label-column",
            "label",
            "--loss",
            str(dump / "loss.txt"),
            "--dtype",
            "float32",
            "-f",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["loss"]["max_ulp_err"] <= 0.5 + 1e-5
    np.savez(dump / "named.npz", mine=loss)
    assert _run(dump, "--loss-key", "mine", loss="named.npz").exit_code == 0


def test_float16_working_dtype_changes_the_units(dump: Path) -> None:
    # their float32 loss judged in float16 ulps: far below one float16 ulp
    res = _run(dump, "--dtype", "float16", "-f", "json")
    doc = json.loads(res.stdout)
    assert doc["input"]["dtype"] == "float16"
    assert any("stored as float32" in note for note in doc["notes"])


def test_table_markdown_github_and_output_file(dump: Path) -> None:
    res = _run(dump, "--grad", str(dump / "grad.npy"))
    assert res.exit_code == 0
    assert "verdict: ok" in res.stdout and "\x1b[" not in res.stdout
    assert "Loss error histogram" in res.stdout
    res = _run(dump, "-f", "markdown")
    assert res.stdout.startswith("## smcheck compare: pass (ok)")
    res = _run(dump, "-f", "github")
    assert res.stdout.startswith("::notice title=smcheck compare::ok: ")
    res = _run(dump, "-f", "junit")
    assert res.stdout.startswith('<?xml version="1.0"') and 'failures="0"' in res.stdout
    out = dump / "report.json"
    res = _run(dump, "-f", "json", "-o", str(out))
    assert res.exit_code == 0 and res.stdout == ""
    assert json.loads(out.read_text())["ok"] is True
    res = _run(dump, "-o", str(dump / "loss.npy"))  # never onto an input
    assert res.exit_code == 2 and "refusing to write" in res.stderr
    assert np.load(dump / "loss.npy").shape == (N,)


def test_color(dump: Path) -> None:
    res = _run(dump, "--color", "always")
    assert "\x1b[" in res.stdout
    res = CliRunner(env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).invoke(
        cli,
        [
            "compare",
            str(dump / "logits.npy"),
            "--labels",
            str(dump / "labels.npy"),
            "--loss",
            str(dump / "loss.npy"),
        ],
    )
    assert "\x1b[" not in res.stdout


def test_help_lists_every_option() -> None:
    res = CliRunner().invoke(cli, ["compare", "--help"])
    assert res.exit_code == 0
    for opt in (
        "--labels", "--label-column", "--logits-key", "--labels-key", "--loss", "--loss-key",
        "--grad", "--grad-key", "--reduction", "--ignore-index", "--dtype", "--accum", "--cast",
        "--max-loss-ulp", "--max-grad-err", "--fail-on", "--exit-zero", "--top", "--format",
        "--output", "--color", "--weight", "--label-smoothing", "--convention",
    ):  # fmt: skip
        assert opt in res.stdout, opt
    doc = (Path(__file__).resolve().parents[1] / "docs" / "compare.md").read_text()
    for opt in ("--labels", "--loss", "--grad", "--reduction", "--fail-on", "--top"):
        assert f"`{opt}" in doc, opt


def test_shared_config_file_serves_compare(dump: Path) -> None:
    # one [tool.smcheck]-style table for every command: eval's fail-on values and formats
    # must not break compare
    cfg = dump / "smcheck.toml"
    cfg.write_text(
        'fail-on = "overflow,underflow,nonfinite"\nformat = "json"\n\n[compare]\ntop = 2\n'
    )
    loss = np.load(dump / "loss.npy")
    loss[[1, 2, 3]] = np.inf
    np.save(dump / "bad.npy", loss)
    args = ["--config", str(cfg), "compare", str(dump / "logits.npy"), "--labels"]
    args += [str(dump / "labels.npy"), "--loss", str(dump / "bad.npy")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["thresholds"]["fail_on"] == ["nonfinite"]
    assert [w["row"] for w in doc["worst_rows"]] == [1, 2]
    assert doc["loss"]["inf_rows"] == 3


# --- --baseline / --write-baseline ---------------------------------------------------------


def _nan_rows(dump: Path, name: str, rows: list[int]) -> None:
    loss = np.load(dump / "loss.npy")
    loss[rows] = np.nan
    np.save(dump / name, loss)


def test_baseline_passes_on_itself_and_names_one_more_nan_row(dump: Path) -> None:
    base = str(dump / "base.json")
    _nan_rows(dump, "one.npy", [4])
    _nan_rows(dump, "two.npy", [4, 7])
    first = _run(dump, "-f", "json", "--write-baseline", base, loss="one.npy")
    assert first.exit_code == 1, first.output  # the NaN row fails the run: its own status
    doc = json.loads(Path(base).read_text())
    assert doc["command"] == "compare" and doc["input"]["shape"] == [N, C]
    assert doc["report"]["loss"]["nonfinite_row_ids"] == [4]

    same = _run(dump, "-f", "json", "--baseline", base, loss="one.npy")
    assert same.exit_code == 0, same.output  # the accepted NaN row does not fail
    assert same.stderr.startswith("smcheck: no regression against base.json")
    assert same.stdout == first.stdout

    worse = _run(dump, "-f", "json", "--baseline", base, loss="two.npy")
    assert worse.exit_code == 1, worse.output
    assert worse.stderr.splitlines() == [
        "smcheck: 1 regression against base.json:",
        "  loss: nonfinite_rows 1 -> 2 (row 7)",
    ]  # same logits and labels: no note


def test_baseline_gradient_error_and_gate(dump: Path) -> None:
    base = str(dump / "base.json")
    grad = np.load(dump / "grad.npy")
    args = ["-f", "json", "--grad"]
    assert _run(dump, *args, str(dump / "grad.npy"), "--write-baseline", base).exit_code == 0
    grad[3, 1] += 0.5  # far beyond twice the baseline's error and eps(float32)
    np.save(dump / "off.npy", grad)
    worse = _run(dump, *args, str(dump / "off.npy"), "--baseline", base)
    assert worse.exit_code == 1, worse.output
    lines = worse.stderr.splitlines()
    assert any(line.startswith("  grad: max_abs_err ") for line in lines), lines
    assert "  grad-error: passed its gate in the baseline, fails now" in lines
    # a larger factor does not excuse a gate that now fails
    lax = _run(dump, *args, str(dump / "off.npy"), "--baseline", base, "--regression-factor", "1e9")
    assert lax.exit_code == 1 and "max_abs_err" not in lax.stderr
    # other logits are a note, not a failure
    np.save(dump / "logits.npy", np.load(dump / "logits.npy") * 1.0001)
    moved = _run(dump, *args, str(dump / "grad.npy"), "--baseline", base, "--exit-zero")
    assert "  note: input content differs from the baseline's (sha256)" in moved.stderr


# --- loss options: --weight, --label-smoothing, --convention ------------------------------


def _torch_dump(d: Path, seed: int, weight: bool, eps: float) -> None:
    """PyTorch's own cross_entropy in float64 (the reference the options must reproduce)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    n, c = 40, 6
    z = rng.standard_normal((n, c)) * 4
    y = rng.integers(0, c, n)
    y[::7] = -100
    w = rng.uniform(0.25, 4.0, c)
    np.save(d / "z.npy", z)
    np.save(d / "y.npy", y)
    (d / "w.txt").write_text("".join(f"{v!r}\n" for v in w.tolist()))
    kw = {"weight": torch.tensor(w) if weight else None, "label_smoothing": eps}
    for red in ("none", "mean", "sum"):
        zt = torch.tensor(z, requires_grad=True)
        loss = torch.nn.functional.cross_entropy(zt, torch.tensor(y), reduction=red, **kw)
        (loss.sum() if red == "none" else loss).backward()
        np.save(d / f"loss_{red}.npy", loss.detach().numpy())
        np.save(d / f"grad_{red}.npy", zt.grad.numpy())


def _run_opts(d: Path, red: str, *args: str) -> object:
    argv = ["compare", str(d / "z.npy"), "--labels", str(d / "y.npy"), "--loss"]
    argv += [str(d / f"loss_{red}.npy"), "--grad", str(d / f"grad_{red}.npy"), "--reduction", red]
    return CliRunner().invoke(cli, [*argv, "--dtype", "float64", "-f", "json", *args])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("weight", "eps"), [(True, 0.0), (False, 0.1), (True, 0.25)])
@pytest.mark.parametrize("red", ["none", "mean", "sum"])
def test_torch_float64_with_weight_and_label_smoothing(
    tmp_path: Path, seed: int, weight: bool, eps: float, red: str
) -> None:
    _torch_dump(tmp_path, seed, weight, eps)
    opts = ["--label-smoothing", str(eps)] + (
        ["--weight", str(tmp_path / "w.txt")] if weight else []
    )
    res = _run_opts(tmp_path, red, *opts)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "ok" and doc["loss"]["measured"] == (34 if red == "none" else 1)
    assert doc["input"]["weight"] == (str(tmp_path / "w.txt") if weight else None)
    assert doc["input"]["label_smoothing"] == eps and doc["input"]["convention"] == "torch"
    # PyTorch's float64 mean/sum is within an ulp of the exact value; per row it rounds
    # nll_y, then w_y nll_y (and with label smoothing (1 - eps) w_y nll_y + eps / C sum_k w_k
    # nll_k): up to 1.8 ulps of max(|L|, 1) seen. Confident rows' small losses carry an absolute
    # error of ~ulp(logsumexp), many ulps at L, so the per-row bound is on the gated error.
    if red == "none":
        assert doc["loss"]["max_gate_ulp_err"] <= 2.0, doc["loss"]
    else:
        assert doc["loss"]["max_ulp_err"] <= 1.0, doc["loss"]
    assert doc["grad"]["max_abs_err"] <= 8 * 2.0**-52  # gradient entries in [-4, 4]
    # the same dump judged as the plain loss: the weights/smoothing show as an error
    res = _run_opts(tmp_path, red)
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["input"]["weight"] is None
    assert doc["loss"]["max_gate_ulp_err"] > 1e6
    assert "over the limit" in doc["summary"]


def test_weighted_mean_divides_by_the_label_weights(tmp_path: Path) -> None:
    _torch_dump(tmp_path, 3, True, 0.0)
    y = np.load(tmp_path / "y.npy")
    w = np.array([float(v) for v in (tmp_path / "w.txt").read_text().split()])
    res = _run_opts(tmp_path, "mean", "--weight", str(tmp_path / "w.txt"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    z = np.load(tmp_path / "z.npy")
    with mpmath.workdps(TRUTH_DPS):  # sum_i w_yi nll_i / sum_i w_yi over the counted rows
        kept = [i for i in range(len(y)) if y[i] != -100]
        num = mpmath.fsum(mpmath.mpf(w[y[i]]) * mp_truth(z[i], int(y[i]))[0] for i in kept)
        den = mpmath.fsum(mpmath.mpf(w[y[i]]) for i in kept)
        want = num / den
    assert doc["loss"]["reference"] == pytest.approx(float(want), rel=2.0**-52)
    assert doc["grad"]["scale"] == pytest.approx(float(den), rel=2.0**-52)
    assert doc["loss"]["max_ulp_err"] <= 1.0
    # dividing by the row count instead (34 rows) is far off
    np.save(tmp_path / "loss_mean.npy", np.float64(float(num) / len(kept)))
    assert _run_opts(tmp_path, "mean", "--weight", str(tmp_path / "w.txt")).exit_code == 1


def _all_ignored(d: Path, value: float) -> object:
    np.save(d / "z.npy", np.zeros((3, 4)))
    np.save(d / "y.npy", np.array([-100, -100, -100]))
    np.save(d / "m.npy", np.float64(value))
    return d


@pytest.mark.parametrize(
    ("convention", "value", "code"),
    [("torch", math.nan, 0), ("torch", 0.0, 1), ("jax", 0.0, 0), ("jax", math.nan, 1)],
)
def test_all_ignored_mean_follows_the_convention(
    tmp_path: Path, convention: str, value: float, code: int
) -> None:
    _all_ignored(tmp_path, value)
    argv = ["compare", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy")]
    argv += ["--loss", str(tmp_path / "m.npy"), "--reduction", "mean", "-f", "json"]
    res = CliRunner().invoke(cli, [*argv, "--convention", convention])
    assert res.exit_code == code, res.output
    doc = json.loads(res.stdout)
    assert doc["input"]["convention"] == convention and doc["ok"] is (code == 0)
    assert doc["verdict"] == ("ok" if code == 0 else "broken")
    assert doc["loss"]["reference"] == (None if convention == "torch" else 0.0)
    loss_check = next(c for c in doc["checks"] if c["name"] == "loss-error")
    assert f"--convention {convention}" in loss_check["message"]
    # the default is PyTorch's
    default = CliRunner().invoke(cli, argv)
    assert default.exit_code == (0 if math.isnan(value) else 1)


def test_bad_weight_file_exit_2_one_line(dump: Path) -> None:
    cases = {
        "short.npy": (np.ones(C - 1), f"short.npy: {C - 1} class weight(s) (shape {C - 1})"),
        "neg.txt": ([1, 1, -2, 1, 1], "neg.txt: the weight of class 2 is -2.0"),
        "nan.npy": (np.array([1, np.nan, 1, 1, 1]), "nan.npy: the weight of class 1 is nan"),
    }
    for name, (values, message) in cases.items():
        if name.endswith(".txt"):
            (dump / name).write_text("".join(f"{v}\n" for v in values))
        else:
            np.save(dump / name, values)
        res = _run(dump, "--weight", str(dump / name))
        assert res.exit_code == 2, (name, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, lines)
        assert res.stdout == ""
    res = _run(dump, "--weight", str(dump / "nowhere.npy"))
    assert res.exit_code == 2 and "nowhere.npy: no such file" in res.stderr
    res = _run(dump, "--label-smoothing", "1.5")
    assert res.exit_code == 2 and "--label-smoothing" in res.stderr
    res = _run(dump, "--convention", "numpy")
    assert res.exit_code == 2 and "--convention" in res.stderr
