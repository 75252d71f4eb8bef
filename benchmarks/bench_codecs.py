"""Benchmark the supermask codecs: bits per weight against H(k), and throughput.

Run: ``PYTHONPATH=src python benchmarks/bench_codecs.py [--bits N] [--densities ...]``.
Prints a markdown table. Random masks: every weight kept independently with probability k.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from hiddenite.codecs import CODECS, decode, encode, entropy_bound_bits


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=1_000_000, help="mask length n (bits)")
    parser.add_argument(
        "--densities",
        type=float,
        nargs="+",
        default=[0.05, 0.1, 0.3, 0.5],
        help="densities k (fraction kept)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    n = args.bits
    print(
        f"Random masks of n = {n:,} bits; sizes include headers; throughput = n / best of "
        f"{args.repeats} (Mbit/s); numpy {np.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}.\n"
    )
    print(
        "| k | H(k) bit/w | codec | bit/w | ratio to H(k) | rle width | "
        "encode Mbit/s | decode Mbit/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k in args.densities:
        bits = rng.random(n) < k
        bound = entropy_bound_bits(k)
        for codec in CODECS:
            data = encode(bits, codec)
            if not np.array_equal(decode(data, n, codec), bits):
                raise SystemExit(f"round trip failed: {codec} at k={k}")
            t_enc = best_time(lambda c=codec, b=bits: encode(b, c), args.repeats)
            t_dec = best_time(lambda c=codec, d=data: decode(d, n, c), args.repeats)
            bpw = len(data) * 8 / n if n else 0.0
            ratio = f"{bpw / bound:.4f}" if bound > 0 else "-"
            width = str(data[0]) if codec == "rle" else ""
            print(
                f"| {k:g} | {bound:.4f} | {codec} | {bpw:.4f} | {ratio} | {width} | "
                f"{n / t_enc / 1e6:,.0f} | {n / t_dec / 1e6:,.0f} |"
            )


if __name__ == "__main__":
    main()
