"""Time and peak memory of :func:`smcheck.linear.reference_linear` at a language model's shape.

Usage::

    /usr/bin/time -v python benchmarks/bench_linear.py                  # 4096 x 1024 x 128256
    python benchmarks/bench_linear.py --rows 512 --vocab 32000 --dtype float32
    python benchmarks/bench_linear.py --rows 2048 --dim 256 --vocab 8192 --accum-table

The inputs are made a block at a time directly in the working dtype (hidden states standard
normal, weight standard normal / sqrt(D), bias standard normal / 10, labels uniform, seed 0),
so the script itself never holds a float64 (V, D) array. It prints the wall time, the blocks
that needed the exact split, the process's peak resident memory (VmHWM: inputs + outputs +
blocks) and what the (N, V) logits alone would have needed in float64. ``--accum-table``
prints instead a markdown table of the chunked kernel's errors
(:func:`smcheck.linear.linear_cross_entropy`) for each ``grad_accum`` at N/16 and N/1024 rows
per chunk.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smcheck.linear import (  # noqa: E402
    linear_cross_entropy,
    normwise_rel_err,
    reference_linear,
)
from smcheck.precisions import get_precision  # noqa: E402


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


#: Rows generated at a time: 1024 x D float32 (4 MiB at D = 1024). 8192-row blocks held 80 MiB
#: of float32 transients (VmHWM after the inputs: 371 MiB instead of 309 MiB at the issue's
#: shape), a peak that belongs to the script, not to the reference it measures.
_GEN_ROWS = 1024


def _normal(rng: np.random.Generator, shape: tuple[int, int], scale: float, dt) -> np.ndarray:
    out = np.empty(shape, dtype=dt)
    for r0 in range(0, shape[0], _GEN_ROWS):
        blk = rng.standard_normal((min(_GEN_ROWS, shape[0] - r0), shape[1]), dtype=np.float32)
        blk *= np.float32(scale)
        out[r0 : r0 + blk.shape[0]] = blk.astype(dt)
    return out


def _accum_table(h, w, b, y, args) -> None:  # type: ignore[no-untyped-def]
    ref = reference_linear(h, w, y, bias=b, dtype=args.dtype)
    print(f"N={args.rows} D={args.dim} V={args.vocab} {args.dtype}, chunk_vocab 4096")
    print("| grad_accum | row chunks | loss rel err | dh err | dW err | db err |")
    print("|---|---|---|---|---|---|")
    for accum in ("float32", "bfloat16", "float16"):
        for chunks in (16, 1024):
            got = linear_cross_entropy(
                h, w, y, bias=b, dtype=args.dtype, chunk_rows=max(1, args.rows // chunks),
                chunk_vocab=4096, grad_accum=accum,
            )  # fmt: skip
            loss = abs(got.loss_reduced - ref.loss_reduced) / abs(ref.loss_reduced)
            errs = [normwise_rel_err(got.grad_hidden, ref.grad_hidden),
                    normwise_rel_err(got.grad_weight, ref.grad_weight)]  # fmt: skip
            if got.grad_bias is not None and ref.grad_bias is not None:
                errs.append(normwise_rel_err(got.grad_bias, ref.grad_bias))
            cells = " | ".join(f"{e:.3g}" for e in errs)
            print(f"| {accum} | {got.chunks_rows} | {loss:.3g} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--bias", action="store_true", help="add a bias (V,)")
    ap.add_argument("--accum-table", action="store_true", help="errors per grad_accum")
    ap.add_argument("--softcap", type=float, default=None, help="loss variant: softcap c")
    ap.add_argument("--logit-scale", type=float, default=1.0, help="loss variant: scale s")
    ap.add_argument("--z-loss", type=float, default=0.0, help="loss variant: z-loss lambda")
    args = ap.parse_args()
    dt = get_precision(args.dtype).dtype
    rng = np.random.default_rng(0)
    h = _normal(rng, (args.rows, args.dim), 1.0, dt)
    w = _normal(rng, (args.vocab, args.dim), args.dim**-0.5, dt)
    b = _normal(rng, (1, args.vocab), 0.1, dt)[0] if args.bias else None
    y = rng.integers(0, args.vocab, args.rows)
    if args.accum_table:
        _accum_table(h, w, b, y, args)
        return
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    variant = {"softcap": args.softcap, "logit_scale": args.logit_scale, "z_loss": args.z_loss}
    ref = reference_linear(h, w, y, bias=b, dtype=args.dtype, **variant)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    print(f"shape N={args.rows} D={args.dim} V={args.vocab} {args.dtype} bias={args.bias}")
    if ref.variant is not None:
        print(f"variant             {ref.variant.describe()}")
    print(f"arithmetic          {ref.precision} after the logits")
    print(f"wall time           {wall:.1f} s (CPU {cpu:.1f} s)")
    print(f"exact-split blocks  {ref.split_blocks} of {ref.blocks}")
    print(f"mean loss           {ref.loss_reduced:.6f}")
    out_mb = (
        sum(
            a.nbytes
            for a in (ref.grad_weight, ref.grad_hidden, ref.grad_weight_lo)
            if a is not None
        )
        / 2**20
    )
    print(f"peak RSS            {_peak_rss_mb():.0f} MiB (inputs made: {before:.0f} MiB;"
          f" outputs {out_mb:.0f} MiB)")  # fmt: skip
    print(f"logits in float64   {args.rows * args.vocab * 8 / 2**20:.0f} MiB (never made)")


if __name__ == "__main__":
    main()
