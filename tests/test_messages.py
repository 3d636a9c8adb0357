"""Messages that reach a user: one line, the flag a CLI user types, no Python reprs, the truth.

Each test runs the command end to end (``CliRunner`` on real files in ``tmp_path``) and checks
the one line on stderr and the exit status.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smcheck import load_input
from smcheck.cli import cli
from smcheck.errors import InputError
from smcheck.loading import load_values


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


# ---------------------------------------------------------------- wording of loading messages


def test_stdin_terminal_message_is_whole_bug() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "rb", closefd=False) as tty, pytest.raises(InputError) as info:
            load_input("-", stdin=tty)
    finally:
        os.close(master)
        os.close(slave)
    message = str(info.value)
    assert message.startswith("stdin ('-') is a terminal")
    # the example is a whole command line, not one cut off at the pipe
    assert "(e.g. cat x.csv | smcheck eval -) or name a file" in message
    assert not message.rstrip().endswith("|")


def test_npz_without_logits_names_the_flag_not_the_python_name_bug(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    code, _, err = run("eval", str(tmp_path / "two.npz"))
    line = one_error_line(err)
    assert code == 2 and line.endswith("it holds: 'a', 'b' (name one with --logits-key)")
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    code, _, err = run("eval", str(tmp_path / "x.npy"), "--logits-key", "a")
    assert code == 2 and "--logits-key 'a' given but this is a .npy array" in one_error_line(err)
    code, _, err = run("eval", str(tmp_path / "x.npy"), "--label-column", "2")
    line = one_error_line(err)
    assert code == 2 and "--label-column applies to text input only" in line
    assert "label_column" not in line


def _zip_like_torch_save(path: Path) -> None:
    """The layout torch.save (zip serialization) writes: <name>/data.pkl and raw storages."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ckpt/data.pkl", pickle.dumps({"logits": "a tensor"}, protocol=2))
        z.writestr("ckpt/data/0", b"\0" * 48)
        z.writestr("ckpt/version", b"3\n")


def test_torch_checkpoint_is_named_not_called_an_npz_bug(tmp_path: Path) -> None:
    p = tmp_path / "ckpt.pt"
    _zip_like_torch_save(p)
    code, _, err = run("eval", str(p))
    line = one_error_line(err)
    assert code == 2
    assert "a PyTorch checkpoint (torch.save), not an .npz; save the tensor with numpy.save" in line
    assert "data.pkl" not in line


def test_real_torch_save_is_named(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    p = tmp_path / "t.pt"
    torch.save(torch.zeros(2, 3), p)
    code, _, err = run("eval", str(p))
    assert code == 2 and "a PyTorch checkpoint" in one_error_line(err)


def test_pickle_is_refused_with_what_to_do(tmp_path: Path) -> None:
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps([[1.0, 2.0]], protocol=4))
    code, _, err = run("eval", str(p))
    line = one_error_line(err)
    assert code == 2 and "a Python pickle" in line and "never loads" in line
    code, _, err = run("eval", "-", input=pickle.dumps([[1.0, 2.0]], protocol=2))
    assert code == 2 and "stdin: a Python pickle" in one_error_line(err)


def test_messages_show_numbers_and_shapes_not_python_reprs_bug(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3), np.float32))
    np.save(tmp_path / "half.npy", np.array([0.0, 0.5, 1.0, 2.0]))
    code, _, err = run("eval", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "half.npy"))
    line = one_error_line(err)
    assert code == 2 and "row 1: label 0.5 is not a whole number" in line
    assert "np.float64" not in line
    np.save(tmp_path / "sq.npy", np.zeros((2, 2), np.int64))
    code, _, err = run("eval", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "sq.npy"))
    line = one_error_line(err)
    assert code == 2 and "labels of shape 2 x 2 do not fit logits of shape 4 x 3" in line
    assert "(2, 2)" not in line and "(4, 3)" not in line
    np.save(tmp_path / "e.npy", np.zeros((0,), np.float32))
    code, _, err = run("eval", str(tmp_path / "e.npy"))
    assert code == 2 and "shape 0 has 0 classes" in one_error_line(err)
    assert "(0,)" not in err


def test_library_messages_show_shapes_as_sizes_not_tuples_bug() -> None:
    """The API's own checks (labels, soft targets, class weights, testing's loss/grad) wrote
    ``(3,)`` and ``(2, 3)``; and a class weight of the right shape but negative was reported as
    a wrong shape."""
    from smcheck import cross_entropy
    from smcheck.testing import assert_matches_reference

    x = np.zeros((2, 3), np.float32)
    with pytest.raises(InputError) as exc:
        cross_entropy(x, np.zeros(3, np.int64))
    assert "labels have shape 3, expected 2 (one per row)" in str(exc.value)
    with pytest.raises(InputError) as exc:
        cross_entropy(x, np.array([0, 1]), weight=np.array([1.0, -2.0, 1.0]))
    assert str(exc.value) == "weight[1] is -2.0: class weights must be finite and >= 0"
    with pytest.raises(InputError) as exc:
        cross_entropy(x, np.array([0, 1]), weight=np.ones(4))
    assert "got shape 4" in str(exc.value)
    y = np.array([0, 1])
    with pytest.raises(InputError) as exc:
        assert_matches_reference(np.zeros((2, 2)), x, y, dtype="float32")
    assert "loss has shape 2 x 2, expected 2: one value per row" in str(exc.value)
    with pytest.raises(InputError) as exc:
        assert_matches_reference(np.zeros(2), x, y, dtype="float32", grad=np.zeros((2, 2)))
    assert "grad has shape 2 x 2, expected 2 x 3 like the logits" in str(exc.value)


def test_integer_logits_note_agrees_with_the_dtype_shown_bug(tmp_path: Path) -> None:
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.int16).reshape(2, 3))
    code, out, err = run("eval", str(tmp_path / "i.npy"), "-f", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["input"]["dtype"] == "float32"
    (note,) = d["input"]["notes"]
    assert "int16 logits read as floating point (exactly)" in note
    assert "checked in float32 unless --dtype" in note and "converted to float64" not in note


# ---------------------------------------------------------------- help texts


def _help(*command: str) -> str:
    r = CliRunner().invoke(cli, [*command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    return " ".join(r.output.split())


def test_consistency_step_help_does_not_advise_what_the_docs_say_fails_bug() -> None:
    text = _help("gradcheck")
    assert "Try 1e-3" not in text
    assert "such as 1e-3 in float16 leaves every probe inconclusive" in text


def test_sweep_baseline_help_describes_sweeps_rules_bug() -> None:
    text = _help("sweep")
    assert "a break point where the baseline had none" in text
    assert "more overflow/non-finite rows" not in text  # eval's rules
    assert "Not used: sweep compares break points" in text  # --regression-factor
    assert "a gated method newly failing" in _help("eval")


def test_eval_help_names_every_input_format_and_says_processes_bug() -> None:
    text = _help("eval")
    assert "Where chunks run: threads here" not in text
    assert "forked processes on Linux" in text
    assert "a zarr array store" in text and ".npz (array 'logits' or --logits-key)" in text
    assert "Labels, one per row: .npy, .npz, zarr store, or text" in text


def test_value_files_of_compare_may_name_a_column_y(tmp_path: Path) -> None:
    p = tmp_path / "loss.csv"
    p.write_text("y\n0.5\n0.25\n")  # their loss, one per line, under a header 'y'
    assert load_values(p, key=None, default_key="loss").values.reshape(-1).tolist() == [0.5, 0.25]
