"""Outputs never destroy anything: devices, FIFOs and symlinks are written through, inputs and
other outputs are never written over, a failed write keeps the previous file (issue 13)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli
from smcheck.errors import InputError
from smcheck.output import PerRowWriter, check_not_input, open_output, write_atomic

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (as smcheck runs in CI)")


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--no-config", *args] if args[0] != "--config" else args)


def _one_line_error(r: Result, *parts: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def logits(tmp_path: Path) -> Path:
    x = np.array([[0.0, 12.0, 1.0], [1.0, 2.0, 3.0], [3.0, 3.0, 0.5]], dtype=np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


# --- devices, FIFOs, sockets, symlinks: written through, never replaced ------------------------


@ROOT_ONLY
def test_regression_output_to_dev_null_keeps_dev_null_a_device(logits: Path) -> None:
    before = os.stat("/dev/null")
    r = _run("eval", str(logits), "-o", "/dev/null", "--per-row", "/dev/null")
    assert r.exit_code == 0, r.output
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev, after.st_mode) == (
        before.st_ino,
        before.st_rdev,
        before.st_mode,
    )


def test_output_to_a_fifo_with_a_reader_is_written_directly(logits: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    # the read end is open before smcheck runs (non-blocking, so opening does not wait for a
    # writer): no race with a reader thread that has not reached its open() yet. The report
    # (a few KiB) fits the pipe's buffer, so smcheck's write never waits for the reading.
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        r = _run("eval", str(logits), "-o", str(fifo), "--format", "json")
        chunks = []
        while True:
            try:
                chunk = os.read(rd, 1 << 16)
            except BlockingIOError:  # a writer still has it open: smcheck did not close it
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rd)
    got = b"".join(chunks)
    assert r.exit_code == 0, r.output
    assert got.startswith(b"{") and b'"schema": "smcheck.eval/1"' in got
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _temp_files(tmp_path) == []


def test_output_to_a_fifo_nobody_reads_is_an_error_not_a_hang(logits: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    r = _run("eval", str(logits), "-o", str(fifo))
    _one_line_error(r, "rows.fifo", "no process is reading it")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_output_through_a_symlink_writes_its_target_and_keeps_the_link(
    logits: Path, tmp_path: Path
) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "report.json"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(real_dir / "rows.csv")
    r = _run("eval", str(logits), "-f", "json", "-o", str(link), "--per-row", str(dangling))
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("{")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the old file's mode
    assert dangling.is_symlink() and (real_dir / "rows.csv").read_text().startswith("row,")
    assert _temp_files(tmp_path) == [] and _temp_files(real_dir) == []


def test_output_to_a_unix_socket_is_sent_to_its_listener(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(b"".join(iter(lambda: conn.recv(4096), b"")))

    t = threading.Thread(target=serve)
    t.start()
    write_atomic(path, "report\n")
    t.join(30)
    server.close()
    assert got == [b"report\n"]
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_block_devices_and_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        write_atomic(tmp_path, "x")
    devices = [f"/dev/{n}" for n in sorted(os.listdir("/dev"))]
    blocks = [d for d in devices if os.path.exists(d) and stat.S_ISBLK(os.stat(d).st_mode)]
    if blocks:
        before = os.stat(blocks[0])
        with pytest.raises(InputError, match="block device"):
            write_atomic(blocks[0], "x")
        assert os.stat(blocks[0]).st_ino == before.st_ino


# --- never onto an input, never one output onto another -----------------------------------------


def test_regression_output_and_per_row_on_one_file_is_refused(logits: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("previous\n")
    r = _run("eval", str(logits), "-o", str(out), "--per-row", str(out))
    _one_line_error(r, "--output and --per-row are the same file")
    assert out.read_text() == "previous\n"
    link = tmp_path / "r-link.csv"
    link.symlink_to(out)
    r = _run("eval", str(logits), "-o", str(out), "--per-row", str(link))
    _one_line_error(r, "the same file")
    assert out.read_text() == "previous\n"


def test_outputs_never_land_on_the_config_file(logits: Path, tmp_path: Path) -> None:
    config = tmp_path / "smcheck.toml"
    config.write_text("top = 3\n")
    for option in ("-o", "--per-row", "--write-baseline"):
        name = str(config) if option != "--per-row" else str(tmp_path / "cfg.csv")
        if option == "--per-row":
            os.link(config, name)  # a hard link: another name, the same file
        r = _run("--config", str(config), "eval", str(logits), option, name)
        _one_line_error(r, "refusing to write", "smcheck.toml")
        assert config.read_text() == "top = 3\n"
        if option == "--per-row":
            os.unlink(name)
    assert _temp_files(tmp_path) == []


def test_outputs_never_land_on_the_baseline(logits: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    assert _run("eval", str(logits), "--write-baseline", str(base)).exit_code == 0
    before = base.read_bytes()
    for option in ("-o", "--per-row"):
        target = base if option == "-o" else tmp_path / "base-rows.csv"
        if option == "--per-row":
            os.link(base, target)
        r = _run("eval", str(logits), "--baseline", str(base), option, str(target))
        _one_line_error(r, "refusing to write", "base")
        assert base.read_bytes() == before
    # the ratchet stays allowed: read the baseline, then replace it
    r = _run("eval", str(logits), "--baseline", str(base), "--write-baseline", str(base))
    assert r.exit_code == 0, r.output


def test_compare_never_writes_over_its_loss_grad_or_weight_file(tmp_path: Path) -> None:
    x = np.array([[0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    y = np.array([1, 0])
    files = {}
    for name, arr in (("x", x), ("y", y), ("loss", np.zeros(2, np.float32)), ("w", np.ones(2))):
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], arr)
    before = {k: p.read_bytes() for k, p in files.items()}
    base = ["compare", str(files["x"]), "--labels", str(files["y"]), "--loss", str(files["loss"])]
    for victim in ("loss", "w"):
        r = _run(*base, "--weight", str(files["w"]), "-o", str(files[victim]))
        _one_line_error(r, "refusing to write", f"{victim}.npy")
    assert {k: p.read_bytes() for k, p in files.items()} == before


def test_nothing_is_written_inside_an_input_directory(tmp_path: Path) -> None:
    store = tmp_path / "logits.zarr"
    (store / "c" / "0").mkdir(parents=True)
    chunk = store / "c" / "0" / "0"
    chunk.write_bytes(b"chunk")
    (store / "zarr.json").write_text("{}")
    for victim in (chunk, store / "zarr.json", store / "new.csv", store / "c" / "new"):
        with pytest.raises(InputError, match="inside the input .*logits.zarr"):
            check_not_input(victim, [str(store)])
    alias = tmp_path / "alias"
    alias.symlink_to(store)
    with pytest.raises(InputError, match="refusing to write"):
        check_not_input(alias / "c" / "0" / "0", [str(store)])
    assert chunk.read_bytes() == b"chunk"


# --- a failed write keeps the previous file --------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real full disk, as the per-row table of a big run meets it."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_regression_per_row_on_a_full_disk_keeps_the_old_file(
    tiny_disk: Path, tmp_path: Path
) -> None:
    x = np.random.default_rng(1).normal(size=(3000, 8)).astype(np.float32)
    src = tmp_path / "big.npy"
    np.save(src, x)
    rows = tiny_disk / "rows.csv"
    rows.write_text("previous per-row table\n")
    report = tiny_disk / "report.txt"
    report.write_text("previous report\n")
    r = _run("eval", str(src), "--per-row", str(rows), "-o", str(report))
    _one_line_error(r, "no space left on device writing", "rows.csv")
    assert rows.read_text() == "previous per-row table\n"
    assert report.read_text() == "previous report\n"
    assert _temp_files(tiny_disk) == []


@pytest.mark.parametrize("kind", ["csv", "npz"])
def test_per_row_writer_failure_at_commit_keeps_the_old_file(tmp_path: Path, kind: str) -> None:
    # the old bug: an error while closing (the buffered tail hits ENOSPC) still renamed the
    # truncated file into place; now nothing is committed unless every byte was written
    out = tmp_path / f"rows.{kind}"
    out.write_bytes(b"old")

    class FullDisk(Exception):
        pass

    with pytest.raises(FullDisk), PerRowWriter(str(out)):
        raise FullDisk
    assert out.read_bytes() == b"old" and _temp_files(tmp_path) == []


def test_enospc_from_the_writer_is_one_input_error_and_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(InputError) as info, open_output(out) as fh:
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == f"no space left on device writing {out}"
    assert out.read_text() == "old" and _temp_files(tmp_path) == []


def test_stdout_full_or_closed_is_not_a_silent_success(logits: Path, tmp_path: Path) -> None:
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "smcheck", "--no-config", "eval", str(logits)]
    with open("/dev/full", "wb") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, env=env, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "smcheck: error: no space left on device writing the report to standard output"
    ]
    closed = subprocess.run(
        ["bash", "-c", '"$@" >&-', "_", *cmd], stderr=subprocess.PIPE, env=env, text=True
    )
    assert closed.returncode == 2, closed.stderr
    assert "standard output is closed" in closed.stderr and len(closed.stderr.splitlines()) == 1


@pytest.mark.parametrize("spelling", ["/dev/fd/{fd}", "/proc/self/fd/{fd}", "/proc/{pid}/fd/{fd}"])
def test_regression_output_through_an_appended_descriptor_keeps_the_log(
    logits: Path, tmp_path: Path, spelling: str
) -> None:
    """``-o /dev/stdout >> log.txt``: /proc/self/fd/1 resolved to log.txt, which was replaced by
    a new file - everything the log held before was gone, exit 0."""
    log = tmp_path / "log.txt"
    log.write_text("PREV\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        path = spelling.format(fd=fd, pid=os.getpid())
        r = _run("eval", str(logits), "-f", "json", "-o", path)
        assert r.exit_code == 0, r.output
    finally:
        os.close(fd)
    text = log.read_text()
    assert text.startswith("PREV\n{") and '"schema": "smcheck.eval/1"' in text
    assert _temp_files(tmp_path) == []


def test_output_onto_the_file_stdout_goes_to_is_written_through_stdout(tmp_path: Path) -> None:
    """``-o log.txt >> log.txt``: the file is fd 1's, so it is appended to, not replaced."""
    import sys

    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 3), np.float32))
    log = tmp_path / "log.txt"
    log.write_text("PREV\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "smcheck", "--no-config", "eval", str(x), "-f", "json"]
    with open(log, "ab") as out:
        done = subprocess.run([*cmd, "-o", str(log)], stdout=out, stderr=subprocess.PIPE, env=env)
    assert done.returncode == 0, done.stderr
    assert log.read_text().startswith("PREV\n{")


def test_per_row_through_a_descriptor_streams_csv(logits: Path, tmp_path: Path) -> None:
    log = tmp_path / "rows.log"
    log.write_text("PREV\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        r = _run("eval", str(logits), "--per-row", f"/dev/fd/{fd}", "-o", "/dev/null")
        assert r.exit_code == 0, r.output
    finally:
        os.close(fd)
    lines = log.read_text().splitlines()
    assert lines[0] == "PREV" and lines[1].startswith("row,") and len(lines) == 5


def test_regression_output_to_proc_says_what_it_is(logits: Path) -> None:
    """-o /proc/version said "no such file or directory" (of the temporary file)."""
    _one_line_error(
        _run("eval", str(logits), "-o", "/proc/version"),
        "refusing to write /proc/version: it is a kernel interface file in /proc",
    )


@pytest.mark.parametrize(
    ("args", "stdout", "said"),
    [
        (["--help"], "full", "no space left on device writing to standard output"),
        (["--version"], "full", "no space left on device writing to standard output"),
        (["eval", "--help"], "full", "no space left on device writing to standard output"),
        (["eval", "--help"], "closed", "standard output is closed"),
    ],
)
def test_regression_help_and_version_on_a_full_or_closed_stdout(
    args: list[str], stdout: str, said: str
) -> None:
    """--help/--version on /dev/full gave a traceback; with stdout closed, exit 0 and nothing."""
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "smcheck", *args]
    if stdout == "full":
        with open("/dev/full", "wb") as full:
            done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, env=env, text=True)
    else:
        done = subprocess.run(
            ["bash", "-c", '"$@" >&-', "_", *cmd], stderr=subprocess.PIPE, env=env, text=True
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"smcheck: error: {said}"]


def test_non_utf8_output_path_is_written_and_named_escaped(logits: Path, tmp_path: Path) -> None:
    name = os.fsdecode(bytes(tmp_path) + b"/r\xff.json")
    r = _run("eval", str(logits), "-f", "json", "-o", name)
    assert r.exit_code == 0, r.output
    assert Path(name).read_text().startswith("{")
    r = _run("eval", str(logits), "-o", name, "--per-row", name)
    line = _one_line_error(r, "the same file", "\\udcff")
    line.encode("ascii")  # printable on any terminal


@ROOT_ONLY
def test_a_strangers_symlink_in_a_sticky_directory_is_not_followed(tmp_path: Path) -> None:
    # as in /tmp: anyone may create entries, the sticky bit protects only their own
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    link = shared / "report.txt"
    link.symlink_to(victim)
    os.lchown(link, 12345, 12345)
    with pytest.raises(InputError, match="symlink of another user"):
        write_atomic(link, "report")
    assert victim.read_text() == "precious\n" and link.is_symlink()
    os.lchown(link, 0, 0)  # our own link there is followed as usual
    write_atomic(link, "report")
    assert victim.read_text() == "report"
