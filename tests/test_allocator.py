"""The allocator hint smcheck eval gives glibc (smcheck.allocator)."""

from __future__ import annotations

import platform
import sys

import numpy as np

from smcheck.allocator import keep_freed_memory


def test_keep_freed_memory_is_accepted_by_glibc_and_harmless() -> None:
    got = keep_freed_memory()
    assert isinstance(got, bool)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert got  # mallopt accepted both thresholds
    # large temporaries are still allocated, freed and reused correctly afterwards
    for _ in range(3):
        a = np.ones(1 << 22)
        assert float(a.sum()) == float(1 << 22)
        del a
    assert keep_freed_memory() == got  # idempotent


def test_regression_the_allocator_hint_starts_no_program() -> None:
    """ctypes.util.find_library("c") ran /sbin/ldconfig, and gcc/cc from PATH when that failed,
    at every eval start (as root in CI containers): the hint now dlopens nothing by name."""
    import subprocess

    code = (
        "import sys\n"
        "spawned = []\n"
        "sys.addaudithook(lambda e, a: e in ('subprocess.Popen', 'os.posix_spawn', 'os.exec')"
        " and spawned.append(e))\n"
        "from smcheck.allocator import keep_freed_memory\n"
        "print(keep_freed_memory(), spawned)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ok, spawned = out.stdout.split(" ", 1)
    assert spawned.strip() == "[]", out.stdout
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert ok == "True"
