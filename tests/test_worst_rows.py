"""The worst-rows list: what it is ranked by, and that it holds the methods table's worst row.

The list is ranked by a score in the gate's unit (loss error in ulps of max(|loss|, 1)); the
methods table's ``loss rel max`` is a relative error. A loss of 2.5e-6 computed as 0 is 100 %
off but 3.2e-4 bfloat16 ulps of 1: the score ranks it last, and before the fix ``--top 1`` left
out the row whose relative error the methods table shows.
"""

from __future__ import annotations

from pathlib import Path

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

from smcheck import evaluate
from smcheck.cli import cli
from smcheck.render.eval import to_dict

from .conftest import TRUTH_DPS, mp_truth

# row 0: confident, L* = log(1 + e^-14 + e^-13.5 + e^-15) = 2.5e-6; in bfloat16 naive's p_y
# rounds to 1 and its loss to 0 (relative error 1), a 3.2e-4-ulp error in the gate's unit.
# Every value is exact in bfloat16, so the rounded input is the input.
X = np.array(
    [
        [14.0, 0.0, 0.5, -1.0],
        [3.0, 9.0, -2.0, 0.0],
        [0.3125, 0.25, 0.125, 20.0],
        [1.5, 0.25, -3.0, 7.0],
    ],
    dtype=np.float32,
)
Y = np.array([0, 0, 0, 3])


def test_worst_rows_list_the_row_of_the_largest_relative_error_bug() -> None:
    r = evaluate(X, Y, dtype="bfloat16", methods=("naive", "fused"), top=1)
    naive = r.methods["naive"]
    rows = [w.row for w in r.worst]
    first, extra = r.worst[0], r.worst[-1]
    # the two rankings differ: the score's first row is not naive's worst relative error
    assert naive.loss_max_rel_err_row == 0 and first.row != 0
    assert rows == [first.row, 0]
    assert extra.max_rel_err_of == ("naive",) and "naive" not in first.max_rel_err_of
    # the listed number is the methods table's, and it is what mpmath says it is
    (_, _, rel, bad), _ = extra.methods
    assert not bad and rel == naive.loss_max_rel_err
    truth, _ = mp_truth(X[0], 0)
    with mpmath.workdps(TRUTH_DPS):
        assert extra.methods[0][1] == 0.0  # naive's loss: log(1) in bfloat16
        assert rel == 1.0 and abs(extra.ref_loss - float(truth)) <= 1e-15 * float(truth)
    # the ranking is by score, shown: the first row scores above the extra one
    assert first.score is not None and extra.score is not None and first.score > extra.score
    assert extra.score < 1e-3  # 2.5e-6 in ulps of 1 (2**-7 in bfloat16) is 3.2e-4


def test_worst_rows_do_not_depend_on_chunking() -> None:
    whole = evaluate(X, Y, dtype="bfloat16", methods=("naive", "fused"), top=1)
    for chunk in (1, 3):
        got = evaluate(X, Y, dtype="bfloat16", methods=("naive", "fused"), top=1, chunk_rows=chunk)
        assert got.worst == whole.worst


def test_label_free_worst_rows_hold_each_methods_largest_relative_error() -> None:
    r = evaluate(X, None, dtype="bfloat16", methods=("naive", "fused", "shifted"), top=1)
    for m in r.methods:
        if m.loss_max_rel_err is None:
            continue
        holders = [w for w in r.worst if m.name in w.max_rel_err_of]
        assert len(holders) == 1 and holders[0].row == m.loss_max_rel_err_row
        rel = {name: rel for name, _, rel, _ in holders[0].methods}[m.name]
        assert rel == m.loss_max_rel_err
    for chunk in (1, 2):
        again = evaluate(
            X, None, dtype="bfloat16", methods=("naive", "fused", "shifted"), top=1,
            chunk_rows=chunk,
        )  # fmt: skip
        assert again.worst == r.worst


def test_table_says_what_the_worst_rows_are_ranked_by(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    args = ["eval", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    args += ["--dtype", "bfloat16", "--methods", "naive,fused", "--top", "1"]
    out = CliRunner().invoke(cli, [*args, "--color", "never"], env={"COLUMNS": "100"}).output
    words = " ".join(out.split())  # the title wraps
    assert "Worst rows (by score: over methods, the largest loss error in ulps of" in words
    assert "score" in out.split("Worst rows")[1].split("─")[0]
    assert "1 ^" in out  # naive's relative error 1 on row 0, marked as its largest
    d = to_dict(evaluate(X, Y, dtype="bfloat16", methods=("naive", "fused"), top=1))
    assert [w["row"] for w in d["worst_rows"]] == [2, 0]
    assert d["worst_rows"][1]["max_rel_err_of"] == ["naive"]
    assert d["worst_rows"][1]["score"] < d["worst_rows"][0]["score"]


@pytest.mark.parametrize("seed", range(2))
def test_every_methods_largest_relative_error_is_listed_whatever_the_chunks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((24, 7)) * rng.choice([1.0, 8.0, 30.0], (24, 1))).astype(np.float32)
    y = rng.integers(0, 7, 24)
    y[rng.integers(0, 24)] = -100
    dtype = ("float16", "bfloat16")[seed]
    methods = ("naive", "shifted", "fused", "log1p")
    for labels in (y, None):
        whole = evaluate(x, labels, dtype=dtype, methods=methods, top=2)
        for chunk in (5,):
            got = evaluate(x, labels, dtype=dtype, methods=methods, top=2, chunk_rows=chunk)
            assert got.worst == whole.worst
        for m in whole.methods:
            if m.loss_max_rel_err is None:
                continue
            (holder,) = [w for w in whole.worst if m.name in w.max_rel_err_of]
            assert holder.row == m.loss_max_rel_err_row
            assert {n: r for n, _, r, _ in holder.methods}[m.name] == m.loss_max_rel_err


def test_a_bad_gradient_row_still_shows_it_holds_the_largest_relative_error() -> None:
    # lm sample in float16: naive's largest relative error (0.0362) is on row 108, where its
    # chained backward overflows: the cell says "bad grad" and still carries the ^ mark
    samples = Path(__file__).resolve().parent.parent / "samples"
    args = ["eval", str(samples / "lm_logits_f16.npy"), "--labels", str(samples / "lm_labels.npy")]
    out = CliRunner().invoke(cli, [*args, "--top", "2"], env={"COLUMNS": "100"}).output
    row = next(line for line in out.splitlines() if line.lstrip().startswith("108 "))
    assert row.count("bad grad ^") == 2  # naive and shifted
    md = CliRunner().invoke(cli, [*args, "--top", "2", "-f", "markdown"]).output
    assert "| 108 | 291 |" in md and md.count("bad grad ^") == 2
