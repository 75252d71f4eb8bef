"""Frozen weights at memory speed: the compiled lanes against a constant fill, side by side.

One run times, interleaved (each repeat runs every case once, so a change in the load of
the machine hits all alike), the median of ``--repeats``:

- filling a fresh float32 buffer of ``n`` values with a constant (``np.full``,
  ``torch.full``): the memory-bound limit the issue sets (aim: weights within 2x of it);
- the multi-lane Xorshift words (uint32), compiled kernel (numba) and numpy reference, with
  4,096 lanes and with 1 lane (the work split does not depend on the lane count);
- the frozen weights of every init (signed constant, Kaiming uniform, Kaiming normal),
  fused with the generator (numba) and by the reference path (``kernel="numpy"``).

It also measures, each in a fresh process, the first call of the compiled kernels (after
the import of hiddenite.init, shown apart, which already imports torch and numba): with an
empty numba cache (compilation) and with the cache just written (a load from disk).

Usage: python benchmarks/bench_weights.py [--n 25500000] [--repeats 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from hiddenite.init import frozen_weights
from hiddenite.prng import lanes_numba, lanes_numpy

FIRST_CALL = """
import time
t = time.perf_counter()
from hiddenite.init import frozen_weights
imported = time.perf_counter() - t
t = time.perf_counter()
for init in ("signed-constant", "kaiming-uniform", "kaiming-normal"):
    for shape in ((64, 64, 3, 3), (512, 512, 3, 3)):  # one chunk, and chunks on threads
        frozen_weights(shape, init=init, seed=0, layer_index=0, fan_in=576)
print(imported, time.perf_counter() - t)
"""


def cases(n: int) -> dict[str, Callable[[], object]]:
    fan_in = 4608  # a 512x512x3x3 convolution
    out: dict[str, Callable[[], object]] = {
        "np.full float32 (constant fill)": lambda: np.full(n, 0.5, dtype=np.float32),
        "torch.full float32 (constant fill)": lambda: torch.full((n,), 0.5),
        "words, numba, 4096 lanes": lambda: lanes_numba(1, 0, n),
        "words, numba, 1 lane": lambda: lanes_numba(1, 0, n, 1),
        "words, numpy reference, 4096 lanes": lambda: lanes_numpy(1, 0, n),
    }
    for init in ("signed-constant", "kaiming-uniform", "kaiming-normal"):
        for kernel in ("numba", "numpy"):
            label = "fused numba" if kernel == "numba" else "numpy reference"
            out[f"{init}, {label}"] = lambda i=init, k=kernel: frozen_weights(
                (n,), init=i, seed=1, layer_index=0, fan_in=fan_in, kernel=k
            )
    return out


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up: compilation, first-touch of the allocator
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            began = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - began)
    return {name: statistics.median(times) for name, times in samples.items()}


def first_calls() -> dict[str, float]:
    """Seconds of the first kernel calls in a fresh process: compile, then load from cache."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("empty numba cache (compile)", "numba cache written (load)"):
            result = subprocess.run(
                [sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True
            )
            if result.returncode:
                raise RuntimeError(result.stderr)
            imported, first = (float(v) for v in result.stdout.split())
            out["import hiddenite.init (torch and numba)"] = imported
            out[f"first kernel calls, {label}"] = first
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25_500_000, help="values (ResNet-50: 25.5 M)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-first-call", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    import numba

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, numpy {np.__version__}, numba {numba.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; n = {args.n:,}, "
        f"median of {args.repeats}\n"
    )
    times = interleaved(cases(args.n), args.repeats)
    fill = times["np.full float32 (constant fill)"]
    print("| what | ms | Mvalues/s | / np.full |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:,.1f} | {args.n / t / 1e6:,.0f} | {t / fill:.2f}x |")
    result = {"n": args.n, "repeats": args.repeats, "seconds": times}
    if not args.skip_first_call:
        first = first_calls()
        print("\nFresh processes (the last import figure is the second process's), seconds:\n")
        for label, seconds in first.items():
            print(f"- {label}: {seconds:.2f}")
        result["first_call_seconds"] = first
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
