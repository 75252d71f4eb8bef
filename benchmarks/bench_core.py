"""Core speed, side by side in one run (ratios, not absolute times: machines are noisy).

1. Mask selection: hiddenite's threshold selection (``top_fraction_mask``) against a
   full-sort reference and against ``torch.kthvalue`` on every distinct layer size of
   ResNet-18 and ResNet-50 (ImageNet), k = 0.3.
2. Multi-lane Xorshift: 25.5 M words (a ResNet-50's weights) from ``lanes_numpy`` and
   ``lanes_torch`` against ``torch.randint``, numpy's default generator (uint32) and filling
   the same buffer with a constant (the memory-bound limit).
3. One training step (forward, backward, SGD step; batch 128, 1x28x28) of the hidden
   network against its dense twin, for the MLP and Conv-4.

Usage: python benchmarks/bench_core.py [--repeats N] [--threads T] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hiddenite import SupermaskConfig, models
from hiddenite.masks import kept_count, top_fraction_mask
from hiddenite.prng import lanes_numpy, lanes_torch

RESNET_WEIGHTS = 25_500_000


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def layer_sizes(name: str) -> list[int]:
    model = models.create(name)
    sizes = sorted(
        {
            m.weight.numel()
            for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        }
    )
    return sizes


def full_sort_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    flat = scores.reshape(-1).abs()
    m = kept_count(flat.numel(), density)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.sort(flat, descending=True).indices[:m]] = True
    return mask.reshape(scores.shape)


def kthvalue_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    flat = scores.reshape(-1).abs()
    m = kept_count(flat.numel(), density)
    return (flat >= torch.kthvalue(flat, flat.numel() - m + 1).values).reshape(scores.shape)


def bench_masks(repeats: int) -> list[dict]:
    rows = []
    generator = torch.Generator().manual_seed(0)
    for model in ("resnet18-imagenet", "resnet50"):
        for n in layer_sizes(model):
            scores = torch.randn(n, generator=generator)
            ours = timed(lambda s=scores: top_fraction_mask(s, 0.3), repeats)
            sort = timed(lambda s=scores: full_sort_mask(s, 0.3), max(1, repeats // 2))
            kth = timed(lambda s=scores: kthvalue_mask(s, 0.3), repeats)
            assert torch.equal(top_fraction_mask(scores, 0.3), full_sort_mask(scores, 0.3))
            rows.append(
                {
                    "model": model,
                    "weights": n,
                    "hiddenite_ms": ours * 1e3,
                    "full_sort_ms": sort * 1e3,
                    "kthvalue_ms": kth * 1e3,
                    "speedup_vs_sort": sort / ours,
                    "speedup_vs_kthvalue": kth / ours,
                }
            )
    return rows


def bench_prng(repeats: int) -> list[dict]:
    n = RESNET_WEIGHTS
    buffer = torch.empty(n, dtype=torch.int64)
    rng = np.random.default_rng(0)
    cases = {
        "constant fill (memory bound)": lambda: buffer.fill_(7),
        "hiddenite lanes_numpy (uint32)": lambda: lanes_numpy(1, 0, n),
        "hiddenite lanes_torch, torch kernel (int64)": lambda: lanes_torch(1, 0, n, kernel="torch"),
        "hiddenite lanes_torch, auto = numba kernel on CPU (int64)": lambda: lanes_torch(1, 0, n),
        "torch.randint (int64)": lambda: torch.randint(0, 2**32, (n,), dtype=torch.int64),
        "numpy default_rng integers (uint32)": lambda: rng.integers(0, 2**32, n, dtype=np.uint32),
    }
    times = {name: timed(fn, repeats) for name, fn in cases.items()}
    fill = times["constant fill (memory bound)"]
    return [
        {"generator": name, "seconds": t, "mvalues_per_s": n / t / 1e6, "time_vs_fill": t / fill}
        for name, t in times.items()
    ]


def bench_steps(repeats: int) -> list[dict]:
    rows = []
    for name in ("mlp", "conv4"):
        x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(1))
        steps = {}
        for mode in ("dense", "hidden"):
            model = models.create(
                name,
                SupermaskConfig(density=0.3, method="dense" if mode == "dense" else "edge-popup"),
            )
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

            def step(model=model, opt=opt, x=x, y=y):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            steps[mode] = step
        # interleave the two so load changes hit both alike
        samples = {"dense": [], "hidden": []}
        for mode in ("dense", "hidden"):
            steps[mode]()
        for _ in range(repeats):
            for mode in ("dense", "hidden"):
                began = time.perf_counter()
                steps[mode]()
                samples[mode].append(time.perf_counter() - began)
        dense, hidden = (statistics.median(samples[m]) for m in ("dense", "hidden"))
        rows.append(
            {
                "model": name,
                "dense_ms": dense * 1e3,
                "hidden_ms": hidden * 1e3,
                "hidden_over_dense": hidden / dense,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = [
        lambda v: (
            f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
        )
    ] * len(keys)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f(row[k]) for f, k in zip(fmt, keys, strict=True)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--only", choices=("masks", "prng", "steps"), default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {cpu}, "
        f"{args.threads} thread(s), {time.strftime('%Y-%m-%d')}"
    )
    results = {}
    for name, fn in (("masks", bench_masks), ("prng", bench_prng), ("steps", bench_steps)):
        if args.only in (None, name):
            results[name] = fn(args.repeats)
            print(f"\n### {name}\n\n{markdown(results[name])}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
