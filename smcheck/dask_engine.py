"""Run the chunk kernel on a Dask cluster (optional extra ``smcheck-xent[dask]``).

The same :func:`smcheck.engine.chunk_stats` runs on row blocks of a ``.npy`` file or a zarr
store; each task opens its own read-only memory map of the file (pickling an ``np.memmap``
would ship the whole array), or the store from its path (a pickled
:class:`~smcheck.loading.ZarrLogits` holds the path only) and reads only its rows. The partial
statistics are merged in row order with :func:`smcheck.stats.merge` - associative and exact,
so the result equals the local engine's for the same chunk size.
``scheduler`` is the address of an existing cluster (``tcp://host:8786``); without one a
``distributed.LocalCluster`` with ``workers`` processes is started and closed afterwards.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import ModuleType
from typing import Any

import numpy as np

from .config import clip
from .engine import EngineConfig, chunk_stats
from .errors import InputError, UsageError
from .loading import ZarrLogits
from .rows import PerRowBlock
from .stats import ChunkStats, merge

__all__ = ["run_dask"]


def _need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"--engine dask needs {module}: pip install 'smcheck-xent[dask]'") from exc


def _block(
    source: str | ZarrLogits,
    start: int,
    stop: int,
    labels: np.ndarray | None,
    cfg: EngineConfig,
) -> tuple[ChunkStats, PerRowBlock | None]:
    """One task: open the file's own memmap (or the zarr store) on this worker and compute
    one block's statistics; only the block's rows are read."""
    if isinstance(source, ZarrLogits):  # unpickled from its path: the store opens here
        x = source[start:stop]
    else:
        arr = np.load(source, mmap_mode="r", allow_pickle=False)
        x = np.asarray(arr.reshape(-1, arr.shape[-1])[start:stop])
    return chunk_stats(x, labels, start, cfg)


#: Seconds to wait for --scheduler before giving up (exit 2).
SCHEDULER_TIMEOUT_S = 5


@contextmanager
def _client(
    scheduler: str | None, workers: int, timeout: float = SCHEDULER_TIMEOUT_S
) -> Iterator[Any]:
    distributed = _need("distributed")
    if scheduler:
        try:  # an unreachable scheduler is bad input, said within the timeout
            client = distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"--scheduler {clip(scheduler, 80)}: cannot connect within {timeout:g} s "
                f"({type(exc).__name__})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - anything else is the peer's fault
            # a peer that answers but is not Dask (an HTTP server): distributed reads its
            # bytes as a frame length and fails with MemoryError or a protocol error, which
            # would otherwise become exit 3 "out of memory"
            raise InputError(
                f"--scheduler {clip(scheduler, 80)} is not a Dask scheduler ({type(exc).__name__})"
            ) from None
        with client:
            yield client
        return
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            # ":0": any free port. None means the default 8787, and a second cluster on this
            # machine (another run, a notebook) then fails to start - "Port 8787 is already in use"
            dashboard_address=":0",
            processes=True,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def run_dask(
    path: str | os.PathLike[str] | ZarrLogits,
    labels: np.ndarray | None,
    cfg: EngineConfig,
    *,
    rows: int,
    chunk_rows: int,
    scheduler: str | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    per_row: Callable[[PerRowBlock], None] | None = None,
) -> ChunkStats:
    """:func:`smcheck.engine.run` over a ``.npy`` file or a zarr store on a Dask cluster; same
    result.

    ``rows`` is the number of rows of the (flattened) logits in ``path``; labels, already
    validated, are sliced per block and shipped with the task.
    """
    _need("dask")
    source = path if isinstance(path, ZarrLogits) else os.fspath(path)
    step = max(1, int(chunk_rows))
    cfg = replace(cfg, per_row=per_row is not None)
    starts = list(range(0, rows, step)) or [0]
    with _client(scheduler, workers) as client:
        futures = [
            client.submit(
                _block,
                source,
                s,
                min(s + step, rows),
                None if labels is None else np.asarray(labels[s : s + step]),
                cfg,
                pure=False,
            )
            for s in starts
        ]
        total: ChunkStats | None = None
        for s, fut in zip(starts, futures, strict=True):  # merge in row order, as they finish
            stats, block = fut.result()
            fut.release()
            total = stats if total is None else merge(total, stats)
            if per_row is not None and block is not None:
                per_row(block)
            if progress is not None:
                progress(min(s + step, rows), rows)
    assert total is not None
    return total
