"""The batch norms of a data-parallel step alone: synced (:mod:`hiddenite.sync_batch_norm`)
against local (``nn.BatchNorm1d/2d`` on each rank's piece), side by side in one run.

``torchrun --nproc_per_node --procs`` gloo processes (one thread each) hold the batch norms of
Conv-4 with batch norm (by default: 64 and 128 channels at 28x28 and 14x14, two each, and two
``BatchNorm1d(256)``) and each rank's piece of a global batch of ``--batch``; one step is a
training forward and backward through every batch norm (upstream gradient fixed). The two
variants alternate ``--rounds`` times, ``--steps`` timed steps each after 2 warm-up steps;
the figures are the medians over the rounds of: wall milliseconds per step (rank 0), CPU
milliseconds per step summed over the ranks, the part of it spent inside collectives, and
the number of ``torch.distributed`` collectives one rank calls per step (every collective
function wrapped while the timed steps run).
Without the convolutions around them, this shows what the synchronisation itself costs.

Usage: python benchmarks/bench_sync_bn.py [--procs P] [--batch B] [--steps S] [--rounds R]
                                          [--width W] [--json PATH]
(``--width`` scales the channel counts, as the models' ``width`` argument.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from hiddenite.data import piece_bounds
from hiddenite.sync_batch_norm import SyncBatchNorm

COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_single", "all_gather_into_tensor", "broadcast",
    "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "barrier",
)  # fmt: skip


def shapes(width: float) -> list[tuple[int, ...]]:
    """Per-example input shapes of Conv-4-bn's batch norms (channel-first, no batch)."""
    a, b, f = round(64 * width), round(128 * width), round(256 * width)
    return [(a, 28, 28), (a, 28, 28), (b, 14, 14), (b, 14, 14), (f,), (f,)]


def count_collectives(calls: list[str], cpu: list[float]) -> dict:
    """Wrap every collective of ``torch.distributed`` to append its name to ``calls`` and
    the CPU seconds spent inside it to ``cpu``; returns the originals, for :func:`restore`."""
    originals = {n: getattr(dist, n) for n in COLLECTIVES if hasattr(dist, n)}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            calls.append(name)
            began = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu.append(time.process_time() - began)

        return counted

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    return originals


def restore(originals: dict) -> None:
    for name, fn in originals.items():
        setattr(dist, name, fn)


def worker(args) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    lo, hi = piece_bounds(args.batch, rank, size)
    g = torch.Generator().manual_seed(0)
    layers, data = {"synced": [], "local": []}, []
    for shape in shapes(args.width):
        x = torch.randn((args.batch, *shape), generator=g) * 2 + 0.5
        dy = torch.randn((args.batch, *shape), generator=g)
        data.append((x[lo:hi].clone(), dy[lo:hi].clone()))
        kind = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        layers["local"].append(kind(shape[0]))
        layers["synced"].append(SyncBatchNorm.sharing(kind(shape[0])))

    def step(mode: str) -> None:
        for bn, (x, dy) in zip(layers[mode], data, strict=True):
            x = x.clone().requires_grad_(True)
            bn(x).backward(dy)

    results: dict[str, dict[str, list[float]]] = {
        m: {"wall_ms": [], "cpu_ms": [], "collective_cpu_ms": [], "collectives": []} for m in layers
    }
    for _ in range(args.rounds):
        for mode in layers:
            for _ in range(2):
                step(mode)
            calls: list[str] = []
            inside: list[float] = []
            dist.barrier()
            originals = count_collectives(calls, inside)
            try:
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    step(mode)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            finally:
                restore(originals)
            total = torch.tensor([cpu, sum(inside)], dtype=torch.float64)
            dist.all_reduce(total)
            results[mode]["wall_ms"].append(1000 * wall / args.steps)
            results[mode]["cpu_ms"].append(1000 * float(total[0]) / args.steps)
            results[mode]["collective_cpu_ms"].append(1000 * float(total[1]) / args.steps)
            results[mode]["collectives"].append(len(calls) / args.steps)
    if rank == 0:
        Path(args.out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    out = Path(args.json or "bench_sync_bn.json").resolve()
    script = [__file__, "--worker", "--out", str(out)]
    for flag in ("batch", "steps", "rounds", "width"):
        script += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += [f"--nproc_per_node={args.procs}", *script]
    load = os.getloadavg()[0]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bench_sync_bn worker failed:\n{proc.stderr[-3000:]}")
    results = json.loads(out.read_text())
    if not args.json:
        out.unlink()
    print(
        f"{args.procs} gloo processes x 1 thread, global batch {args.batch}, width "
        f"{args.width}; {args.rounds} rounds x {args.steps} steps; load average {load:.1f} "
        f"at start, {os.getloadavg()[0]:.1f} at the end; torch {torch.__version__}"
    )
    print(
        f"{'batch norms':12} {'wall ms/step':>13} {'CPU ms/step':>12} "
        f"{'in collectives':>15} {'collectives/step':>17}"
    )
    median = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    for mode, row in median.items():
        print(
            f"{mode:12} {row['wall_ms']:13.2f} {row['cpu_ms']:12.2f} "
            f"{row['collective_cpu_ms']:15.2f} {row['collectives']:17.0f}"
        )
    s, loc = median["synced"], median["local"]
    print(
        f"synced / local: {s['wall_ms'] / loc['wall_ms']:.2f}x wall, "
        f"{s['cpu_ms'] / loc['cpu_ms']:.2f}x CPU (medians over the rounds)"
    )


if __name__ == "__main__":
    main()
