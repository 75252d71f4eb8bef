"""Benchmark the supermask codecs: bits per weight against H(k), and throughput.

Run: ``PYTHONPATH=src python benchmarks/bench_codecs.py [--bits N] [--densities ...]``.
Prints a markdown table. Random masks: every weight kept independently with probability k.

``--models resnet50 conv4`` instead codes the masks of zoo models (edge-popup, seed 0, as
created: the top-k of the initial scores of every layer) at each density with ``--compare``
codecs (default ``entropy`` and ``entropy-grouped``) and prints the total bytes of each, the
second's overhead against the first and against the entropy bound, and the decode time.
"""

from __future__ import annotations

import argparse
import math
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


def models_table(names: list[str], densities: list[float], compare: list[str], seed: int):
    """Total mask bytes of zoo models under two codecs (see the module docstring)."""
    import torch  # only this mode needs the models

    from hiddenite import SupermaskConfig, is_supermask, models

    torch.set_num_threads(1)
    first, second = compare
    print(
        f"Zoo models' masks (edge-popup, seed {seed}, at creation); bytes include each "
        f"stream's header; bound = sum over layers of ceil(H(k_layer) n / 8); decode = one "
        f"pass over every layer, perf_counter; numpy {np.__version__}, "
        f"{platform.machine()}.\n"
    )
    print(
        f"| model | k | masked weights | bound bytes | {first} bytes | {second} bytes | "
        f"{second} / {first} | {second} / bound | {first} decode ms | {second} decode ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for k in densities:
            model = models.create(name, SupermaskConfig(density=k, seed=seed))
            masks = [
                m.method.export(m)["mask"].reshape(-1) for m in model.modules() if is_supermask(m)
            ]
            del model
            n = sum(m.size for m in masks)
            bound = sum(math.ceil(entropy_bound_bits(float(m.mean())) * m.size / 8) for m in masks)
            sizes, times = {}, {}
            for codec in compare:
                streams = [encode(m, codec) for m in masks]
                start = time.perf_counter()
                for m, data in zip(masks, streams, strict=True):
                    if not np.array_equal(decode(data, m.size, codec), m):
                        raise SystemExit(f"round trip failed: {codec}, {name} at k={k}")
                times[codec] = time.perf_counter() - start
                sizes[codec] = sum(len(s) for s in streams)
            print(
                f"| {name} | {k:g} | {n:,} | {bound:,} | {sizes[first]:,} | {sizes[second]:,} | "
                f"{sizes[second] / sizes[first] - 1:+.3%} | {sizes[second] / bound - 1:+.3%} | "
                f"{times[first] * 1e3:,.0f} | {times[second] * 1e3:,.0f} |"
            )


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
    parser.add_argument("--models", nargs="+", default=None, help="zoo models' masks instead")
    parser.add_argument("--compare", nargs=2, default=["entropy", "entropy-grouped"])
    args = parser.parse_args(argv)
    if args.models:
        models_table(args.models, args.densities, args.compare, args.seed)
        return

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
