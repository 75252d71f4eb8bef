"""Kaiming-normal weights against a constant fill, on one thread and on all, side by side.

Times, interleaved (each repeat runs every case once), the median (and the minimum) of
``--repeats`` after ``--warmup`` untimed rounds:

- ``np.full`` of a fresh float32 buffer of ``n`` values (the memory-bound limit; the aim is
  the normal weights within 2x of it);
- the fused Kaiming-normal kernel (``hiddenite.kernels.xorshift_cpu``, 4,096 lanes) with
  one thread and with ``torch.get_num_threads()`` threads;
- the same kernel (one thread) and ``ndarray.fill`` writing into one reused buffer: no
  page faults, so the arithmetic of the kernel alone against the writing of the values;
- with ``--before REV``, the same kernel from git revision ``REV`` of this repository (its
  ``xorshift_cpu.py`` loaded as a separate module), on one thread and on all.

Every kernel's values are checked bit for bit against the first one's before timing.

Usage: python benchmarks/bench_normal.py [--n 25500000] [--repeats 7] [--warmup 3]
       [--before ee562af]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from hiddenite import init
from hiddenite.kernels import xorshift_cpu
from hiddenite.prng import layer_seeds

KERNEL = "src/hiddenite/kernels/xorshift_cpu.py"


def kernel_at(rev: str, folder: str) -> ModuleType:
    """The kernel module as it was at git revision ``rev``, imported from ``folder``."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:{KERNEL}"], capture_output=True, text=True
    )
    if source.returncode:
        raise SystemExit(f"cannot read {KERNEL} at {rev}: {source.stderr.strip()}")
    path = Path(folder) / "xorshift_cpu_before.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("xorshift_cpu_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25_500_000, help="values (ResNet-50: 25.5 M)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="rounds of every case run first and not timed (fresh 100 MB buffers from the "
        "operating system settle after a few rounds)",
    )
    parser.add_argument("--before", default=None, help="also time the kernel at this revision")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    seeds = layer_seeds(1, 0, args.n, 4096, 0)
    acklam = (*(np.array(v) for v in (init._A, init._B, init._C, init._D)), init._P_LOW)
    scale = init.init_scale("kaiming-normal", 4608, init.RELU_GAIN)

    def normal(module: ModuleType, t: int) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            torch.set_num_threads(t)
            return module.lane_values(seeds, args.n, module.NORMAL, scale, acklam)

        return run

    with tempfile.TemporaryDirectory() as folder:
        kernels = {"fused numba": xorshift_cpu}
        if args.before:
            kernels[f"fused numba at {args.before}"] = kernel_at(args.before, folder)
        cases: dict[str, Callable[[], object]] = {
            "np.full float32 (constant fill)": lambda: np.full(args.n, 0.5, dtype=np.float32)
        }
        for label, module in kernels.items():
            cases[f"kaiming-normal, {label}, 1 thread"] = normal(module, 1)
            if threads > 1:
                cases[f"kaiming-normal, {label}, {threads} threads"] = normal(module, threads)
        reused = np.empty(args.n, dtype=np.float32)
        tail_words = xorshift_cpu._tail_words(init._P_LOW)

        def normal_reused() -> np.ndarray:
            torch.set_num_threads(1)
            xorshift_cpu._run(
                xorshift_cpu._fill_normal,
                seeds,
                args.n,
                reused,
                xorshift_cpu._TASK_WORDS[xorshift_cpu.NORMAL],
                scale,
                *acklam[:4],
                tail_words,
            )
            return reused

        cases["kaiming-normal, fused numba, 1 thread, reused buffer"] = normal_reused
        cases["ndarray.fill float32, reused buffer"] = lambda: reused.fill(0.5)
        first = None
        for name, fn in cases.items():  # warm-up (compilation), and the bits compared
            values = fn()
            if name.startswith("kaiming-normal"):
                first = values if first is None else first
                if not np.array_equal(values.view(np.uint32), first.view(np.uint32)):
                    raise SystemExit(f"{name} differs from the first kernel's values")
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.warmup + args.repeats):
            for name, fn in cases.items():
                began = time.perf_counter()
                fn()
                if round_ >= args.warmup:
                    samples[name].append(time.perf_counter() - began)
        torch.set_num_threads(threads)
    times = {name: statistics.median(s) for name, s in samples.items()}
    best = {name: min(s) for name, s in samples.items()}
    fill = times["np.full float32 (constant fill)"]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; n = {args.n:,}, median (and min) of {args.repeats} "
        f"after {args.warmup} untimed rounds; "
        f"python {sys.version.split()[0]}\n"
    )
    print("| what | ms | ns/value | / np.full | min ms |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        print(
            f"| {name} | {t * 1e3:,.1f} | {t / args.n * 1e9:.2f} | {t / fill:.2f}x "
            f"| {best[name] * 1e3:,.1f} |"
        )


if __name__ == "__main__":
    main()
