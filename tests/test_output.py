"""Tests of smcheck.output: atomic replacement, refusal to overwrite an input, cleanup."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from smcheck.errors import InputError
from smcheck.output import atomic_path, check_not_input, write_atomic


def _leftovers(directory: Path) -> list[str]:
    """Temporary files left next to the destination (they start with '.')."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_creates_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    write_atomic(out, "first\n")
    assert out.read_text() == "first\n"
    write_atomic(out, b"second")
    assert out.read_bytes() == b"second"
    assert _leftovers(tmp_path) == []


def test_text_is_utf8_without_newline_translation(tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    write_atomic(out, "é\nx\r\n")
    assert out.read_bytes() == "é\nx\r\n".encode()


def test_new_file_gets_umask_mode_and_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "r.txt"
    write_atomic(out, "a")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0o600
    out.chmod(0o640)
    write_atomic(out, "b")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    data = tmp_path / "logits.csv"
    data.write_text("1,2\n")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    hard = tmp_path / "hard.csv"
    os.link(data, hard)
    spellings: list[str | Path] = [
        data,
        str(data),
        tmp_path / "sub" / ".." / "logits.csv",
        Path(os.path.relpath(data)),
        link,
        hard,
    ]
    for spelling in spellings:
        with pytest.raises(InputError, match="refusing to write .*: it is the input file"):
            write_atomic(spelling, "oops", inputs=["-", data])
    assert data.read_text() == "1,2\n"
    assert _leftovers(tmp_path) == []


def test_refuses_when_the_input_is_given_through_a_symlink(tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    data.write_bytes(b"x")
    link = tmp_path / "alias.npy"
    link.symlink_to(data)
    with pytest.raises(InputError):
        write_atomic(data, "oops", inputs=[link])
    assert data.read_bytes() == b"x"


def test_other_paths_are_fine(tmp_path: Path) -> None:
    data = tmp_path / "logits.csv"
    data.write_text("1,2\n")
    check_not_input(tmp_path / "out.csv", [data, "-"])
    write_atomic(tmp_path / "logits.csv.json", "{}", inputs=[data])
    assert data.read_text() == "1,2\n"


def test_failure_leaves_destination_and_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(out) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_keyboard_interrupt_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with pytest.raises(KeyboardInterrupt), atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_bad_str_payload_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with pytest.raises(UnicodeEncodeError):
        write_atomic(out, "\ud800")  # a lone surrogate cannot be encoded
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_works_with_np_savez(tmp_path: Path) -> None:
    out = tmp_path / "errors.npz"
    with atomic_path(out) as tmp:
        assert tmp.suffix == ".npz"  # np.savez would otherwise append .npz to the name
        np.savez(tmp, rel=np.arange(3.0))
    with np.load(out) as z:
        assert z["rel"].tolist() == [0.0, 1.0, 2.0]
    assert _leftovers(tmp_path) == []


def test_destination_problems_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        write_atomic(tmp_path, "x")
    with pytest.raises(InputError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "r.txt", "x")
