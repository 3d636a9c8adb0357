"""The Dask engine gives the local engine's statistics (a LocalCluster of 2 workers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smcheck.engine import EngineConfig, run
from smcheck.errors import UsageError
from smcheck.precisions import get_precision

from .test_engine import _same

pytest.importorskip("distributed")


def test_dask_engine_equals_local_engine(tmp_path: Path) -> None:
    from smcheck.dask_engine import run_dask

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((60, 24)) * 8).astype(np.float32)
    x[7, 3] = np.inf
    y = rng.integers(0, 24, 60)
    y[9] = -100
    path = tmp_path / "logits.npy"
    np.save(path, x)
    before = path.read_bytes()
    cfg = EngineConfig(
        get_precision("float16"), get_precision("float32"), ("naive", "shifted", "fused", "log1p")
    )
    local = run(x, y, cfg, chunk_rows=11)
    seen: list[int] = []
    got = run_dask(
        path,
        y,
        cfg,
        rows=60,
        chunk_rows=11,
        workers=2,
        per_row=lambda b: seen.append(int(b.row[0])),
    )
    assert got.input == local.input
    for m in cfg.methods:
        assert _same(got.methods[m], local.methods[m]), m
    for k, v in local.worst.cols.items():
        assert np.array_equal(got.worst.cols[k], v, equal_nan=True), k
    assert seen == list(range(0, 60, 11))  # per-row blocks arrive in row order
    assert path.read_bytes() == before


def test_dask_engine_bad_scheduler_is_a_usage_error(tmp_path: Path) -> None:
    from smcheck.dask_engine import _need

    with pytest.raises(UsageError, match=r"smcheck-xent\[dask\]"):
        _need("no_such_dask_module")
