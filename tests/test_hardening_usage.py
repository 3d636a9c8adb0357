"""Bad option values are usage errors (exit 2, one line naming the option), never internal
errors (exit 3) found after the work started (issue 13)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from smcheck.cli import cli
from smcheck.errors import InputError


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--no-config", *args])


def _usage_error(r: Result, *parts: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output and "internal error" not in r.output
    error_lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("Error: ", "smcheck: "))]
    assert len(error_lines) == 1, r.stderr
    for part in parts:
        assert part in error_lines[0], (part, error_lines[0])


@pytest.fixture
def logits(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
    return path


@pytest.mark.parametrize("command", [["gradcheck"], ["sweep"]])
def test_regression_negative_seed_is_a_usage_error(command: list[str]) -> None:
    _usage_error(_run(*command, "--seed", "-1"), "--seed", "-1 is not in the range")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--chunk-mb", "inf"),
        ("--chunk-mb", "nan"),
        ("--max-loss-ulp", "inf"),
        ("--max-grad-err", "nan"),
        ("--regression-factor", "inf"),
    ],
)
def test_non_finite_numbers_are_usage_errors(logits: Path, option: str, value: str) -> None:
    _usage_error(_run("eval", str(logits), option, value), option)


@pytest.mark.parametrize("option", ["--max-loss-ulp", "--max-grad-err"])
def test_compare_thresholds_must_be_finite(logits: Path, option: str) -> None:
    _usage_error(_run("compare", str(logits), option, "inf"), option, "not a finite number")


@pytest.mark.parametrize("address", ["garbage://x", "tcp://", "tcp://a\x1bb:1", "x" * 400])
def test_bad_scheduler_address_is_refused_before_any_work(logits: Path, address: str) -> None:
    r = _run("eval", str(logits), "--engine", "dask", "--scheduler", address)
    _usage_error(r, "--scheduler", "is not a scheduler address")
    assert "\x1b" not in r.stderr and len(r.stderr) < 1000


def test_unreachable_scheduler_is_said_within_ten_seconds() -> None:
    pytest.importorskip("distributed")
    from smcheck.dask_engine import SCHEDULER_TIMEOUT_S, _client

    assert SCHEDULER_TIMEOUT_S <= 10
    start = time.monotonic()
    # the default is at most 10 s; 1 s here keeps the suite fast, the path is the same
    with pytest.raises(InputError, match=r"--scheduler tcp://127\.0\.0\.1:9: cannot connect"):
        with _client("tcp://127.0.0.1:9", 1, timeout=1):
            pass
    assert time.monotonic() - start < 5


def test_regression_http_server_as_scheduler_is_not_out_of_memory(logits: Path) -> None:
    """An address that answers but is not Dask: distributed read "HTTP/1.1 400" as a huge
    frame length and raised MemoryError, reported as exit 3 "out of memory"."""
    pytest.importorskip("distributed")
    import socket
    import threading

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(10)
    port = server.getsockname()[1]
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 64)
                except OSError:
                    pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        r = _run("eval", str(logits), "--engine", "dask", "--scheduler", f"tcp://127.0.0.1:{port}")
    finally:
        stop.set()
        server.close()
        thread.join(5)
    _usage_error(r, f"tcp://127.0.0.1:{port}", "is not a Dask scheduler")


def test_regression_sweep_max_bits_inf_is_a_usage_error() -> None:
    """--max-bits inf was accepted and the JSON report then failed as exit 3."""
    _usage_error(_run("sweep", "--max-bits", "inf"), "--max-bits", "not a finite number")


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["gradcheck", "--rows"], "--rows 1e+400"),
        (["gradcheck", "--classes"], "--classes 1e+400"),
        (["kernel", "torch.nn.functional:cross_entropy", "--vocab"], "--vocab 1e+400"),
    ],
)
def test_regression_400_digit_sizes_are_usage_errors_not_overflow(
    command: list[str], flag: str
) -> None:
    """A 400-digit --rows/--vocab passed click's integer check and then raised OverflowError
    (exit 3) when the size check formatted rows * classes as a float."""
    _usage_error(_run(*command, "9" * 400), flag, "more than this machine's")
