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
