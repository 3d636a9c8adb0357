"""The C allocator's habit of returning large freed blocks, and why eval turns it off.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and unmaps it on ``free``. A chunk of logits makes numpy temporaries of several MiB each - a
few dozen per chunk - so every one of them was a fresh mapping whose pages the kernel
zero-fills on first touch: measured at about a quarter of ``smcheck eval``'s time on a
4096 x 32000 float32 file. Raising the mmap and trim thresholds keeps freed blocks in the heap,
where the next chunk's temporaries reuse them. The peak resident set is the same (the same
arrays are alive at once); freed memory is only handed back at exit.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: above any chunk's temporaries


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 1 GiB for reuse; True if it agreed.

    A no-op returning False where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        # glibc names itself here; musl and others have no such string (mallopt differs there)
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):
        return False
    try:
        # dlopen(NULL): the running program's own symbols, glibc's among them. Not
        # ctypes.util.find_library, which runs ldconfig and, failing that, whatever gcc or cc
        # is first on PATH - smcheck runs as root in CI containers and starts no programs
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
    )
