"""Memory-mapped arrays: keep a scan's resident set at a few blocks, not the file's size."""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["release_pages"]


def release_pages(block: np.ndarray) -> bool:
    """Drop a memory-mapped block's pages from this process (they stay in the page cache).

    A read-only ``np.memmap`` keeps every page it has touched mapped, so the resident set of a
    scan would grow to the file's size; ``madvise(MADV_DONTNEED)`` after each block keeps it at
    a few blocks. Returns whether pages were released (False: not a memmap, or no madvise).
    """
    mm = getattr(block, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    if block.size == 0 or not block.flags.c_contiguous:
        return False
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    start = block.ctypes.data - base
    stop = start + block.nbytes
    page = mmap.PAGESIZE
    lo = start - start % page  # madvise wants a page-aligned start
    try:
        mm.madvise(mmap.MADV_DONTNEED, lo, stop - lo)
    except (OSError, ValueError):  # e.g. a mapping the kernel will not advise: keep going
        return False
    return True
