"""Messages that reach a user: one line, the flag a CLI user types, no Python reprs, the truth.

Each test runs the command end to end (``CliRunner`` on real files in ``tmp_path``) and checks
the one line on stderr and the exit status.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck import load_input
from smcheck.cli import cli
from smcheck.errors import InputError


def run(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args), input=input)
    return r.exit_code, r.stdout, r.stderr


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("smcheck: error: "), stderr
    return lines[0]


# ---------------------------------------------------------------- a CSV column named label


@pytest.mark.parametrize("name", ["label", "labels", "target", "y", "class", "Label"])
def test_csv_label_named_column_is_never_a_logit_bug(tmp_path: Path, name: str) -> None:
    p = tmp_path / "x.csv"
    p.write_text(f"a,b,{name}\n1,2,0\n3,4,-100\n")
    code, out, err = run("eval", str(p))
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert f"column 3 is named '{name}'" in line
    assert f"did you mean --label-column {name}?" in line
    # as suggested, it runs: the column is the labels (-100 is an ignored row, not a logit)
    code, out, err = run("eval", str(p), "--label-column", name, "-f", "json")
    assert code == 0, err
    assert '"ignored_rows": 1' in out and '"classes": 2' in out


def test_csv_label_named_column_with_a_labels_file_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
    (tmp_path / "y.txt").write_text("0\n1\n")
    code, _, err = run("eval", str(tmp_path / "x.csv"), "--labels", str(tmp_path / "y.txt"))
    assert code == 2 and "named 'target' and would be read as a logit" in one_error_line(err)


def test_csv_label_named_column_on_stdin_and_in_the_api(tmp_path: Path) -> None:
    code, _, err = run("eval", "-", input=b"c0,c1,y\n0.5,1,1\n")
    assert code == 2 and "stdin line 1: column 3 is named 'y'" in one_error_line(err)
    p = tmp_path / "x.csv"
    p.write_text("c0,c1,class\n0.5,1,1\n")
    with pytest.raises(InputError, match="did you mean --label-column class"):
        load_input(p)
    assert load_input(p, label_column="class").labels.tolist() == [1]


def test_csv_other_header_names_and_labels_files_are_unchanged(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("c0,c1,yy\n0.5,1,1\n")  # 'yy' is not a label name: three logits
    assert load_input(p).logits.shape == (1, 3)
    # a labels file whose header is 'label' is a labels file, not a refused logits file
    (tmp_path / "y.csv").write_text("label\n1\n")
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    got = load_input(tmp_path / "x.npy", tmp_path / "y.csv")
    assert got.labels is not None and got.labels.tolist() == [1]
