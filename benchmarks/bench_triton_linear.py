"""The weight-free Triton hidden-Linear kernel against cuBLAS, side by side in one run (GPU).

For each layer (out x in) and batch (default 1 and 16), with fp16 inputs, the median of
``--repeats`` CUDA-event timings of:

- ``kernel``: :func:`hiddenite.kernels.triton_linear.hidden_linear` on the packed layer (the
  weights are regenerated inside the kernel from the lane seeds; it reads the seeds, one mask
  bit per weight and the input);
- ``cublas_fp16``: ``F.linear`` on the masked weights materialized once in fp16 (cuBLAS GEMV
  at batch 1, GEMM at batch 16), the dense-memory baseline;
- ``materialize_matmul``: the Triton generator writes the masked weights (fp32), then
  ``F.linear`` in fp16 (what a weight-free file costs without a fused kernel).

Each row gives microseconds, the ratio ``cublas_fp16 / kernel`` (above 1: the kernel is
faster) and the bytes each path reads from memory. The kernel's output is first checked
against ``F.linear`` on the float32 weights. Triton's interpreter (``TRITON_INTERPRET=1``)
cannot measure speed: this script needs a CUDA device and exits with a message without one.

Usage: python benchmarks/bench_triton_linear.py [--layers 4096x4096,11008x4096]
       [--batches 1,16] [--repeats 50] [--block-steps 64] [--lanes 4096] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from hiddenite.kernels.triton_linear import (
    hidden_linear,
    kernel_weights,
    pack_linear,
    triton_available,
)
from hiddenite.layers import SupermaskLinear


def cuda_median_us(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times)


def parse_layers(text: str) -> list[tuple[int, int]]:
    layers = []
    for item in text.split(","):
        out, _, fan_in = item.partition("x")
        layers.append((int(out), int(fan_in)))
    return layers


def bench_layer(out: int, fan_in: int, batches, args) -> list[dict]:
    layer = SupermaskLinear(
        fan_in,
        out,
        density=args.density,
        init=args.init,
        seed=0,
        layer_index=1,
        n_lanes=args.lanes,
        device="cuda",
    )
    packed = pack_linear(layer)
    weight32 = layer.effective_weight().detach()
    weight16 = weight32.half()
    del layer  # the kernel and the materialize path use the packed layer only
    rows = []
    for batch in batches:
        gen = torch.Generator("cuda").manual_seed(batch)
        x16 = torch.randn(batch, fan_in, device="cuda", generator=gen).half()
        got = hidden_linear(x16.float(), packed, backend="triton", block_steps=args.block_steps)
        want = F.linear(x16.float(), weight32)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)

        def kernel(x16=x16):
            return hidden_linear(x16, packed, backend="triton", block_steps=args.block_steps)

        def cublas(x16=x16):
            return F.linear(x16, weight16)

        def materialize(x16=x16):
            return F.linear(x16, kernel_weights(packed, block_steps=args.block_steps).half())

        times = {
            name: cuda_median_us(fn, args.repeats)
            for name, fn in (
                ("kernel", kernel),
                ("cublas_fp16", cublas),
                ("materialize", materialize),
            )
        }
        n = out * fan_in
        rows.append(
            {
                "layer": f"{out}x{fan_in}",
                "batch": batch,
                "kernel_us": times["kernel"],
                "cublas_fp16_us": times["cublas_fp16"],
                "materialize_matmul_us": times["materialize"],
                "cublas_over_kernel": times["cublas_fp16"] / times["kernel"],
                "kernel_reads_MB": (packed.nbytes() + x16.numel() * 2) / 1e6,
                "cublas_reads_MB": (2 * n + x16.numel() * 2) / 1e6,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:,.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="4096x4096,11008x4096", help="OUTxIN,...")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--block-steps", type=int, default=None, help="lane steps per program")
    parser.add_argument("--lanes", type=int, default=4096)
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--init", default="signed-constant")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "bench_triton_linear: no CUDA device. This benchmark times GPU kernels; Triton's "
            "interpreter (TRITON_INTERPRET=1) runs them on the CPU but cannot measure speed. "
            "Run it on a machine with an NVIDIA GPU."
        )
    if not triton_available():
        sys.exit("bench_triton_linear: triton is not installed (pip install triton)")
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
        f"{time.strftime('%Y-%m-%d')}, density {args.density}, {args.init}, "
        f"{args.lanes} lanes"
    )
    rows = []
    for out, fan_in in parse_layers(args.layers):
        rows += bench_layer(out, fan_in, batches, args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
