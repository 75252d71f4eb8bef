"""One training step, hidden against its dense twin, side by side in one run (CPU).

For the MLP (784-300-100-10) and Conv-4, one SGD step (forward, backward, update; batch 128,
1x28x28) of:

- ``dense``: the dense twin (``--method dense``, trained float weights);
- ``hidden``: edge-popup at k = 0.3, as the package trains it (the top-k selection
  warm-started from the previous threshold, compiled passes: ``hiddenite.masks.TopKSelector``);
- ``hidden_full_select``: the same layers with the previous implementation swapped in: a full
  top-k selection every step (``top_fraction_mask``) and torch ops for the masked product and
  the score gradient.

The three are interleaved step by step so load changes hit them alike, after warm-up steps
(numba compiles on the first one). Each row gives the median wall time and the median CPU
time of the calling thread (``time.thread_time``; with one torch thread it is the whole
step's work, and it does not count time spent waiting for a core on a shared machine), and
the hidden / dense ratios of both, and of the fastest CPU time of each (the step least
disturbed by other processes). The two hidden variants train bit-identically (checked).

Usage: python benchmarks/bench_train_step.py [--repeats 50] [--conv-repeats 5]
       [--models mlp,conv4] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from hiddenite import SupermaskConfig, models
from hiddenite.masks import top_fraction_mask


class _TorchMaskedWeight(torch.autograd.Function):
    """The masked product and score gradient as torch ops (the implementation before)."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores)
        return weight * mask.view(torch.uint8)

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        grad_scores = grad * weight
        grad_scores.mul_(torch.sgn(scores))
        return None, grad_scores, None


class FullSelect:
    """Stands in for a layer's ``mask_selector``: a full top-k selection every step."""

    def masked_weight(self, weight, scores, density):
        return _TorchMaskedWeight.apply(weight, scores, top_fraction_mask(scores, density))


def build(name: str, mode: str):
    method = "dense" if mode == "dense" else "edge-popup"
    model = models.create(name, SupermaskConfig(density=0.3, method=method))
    if mode == "hidden_full_select":
        for module in model.modules():
            if hasattr(module, "mask_selector"):
                module.mask_selector = FullSelect()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.SGD(params, lr=0.01, momentum=0.9)


def bench_model(name: str, repeats: int, warmup: int = 2) -> dict:
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(1))
    modes = ("dense", "hidden", "hidden_full_select")
    built = {mode: build(name, mode) for mode in modes}

    def step(mode: str) -> None:
        model, opt = built[mode]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        for mode in modes:
            step(mode)
    wall = {mode: [] for mode in modes}
    cpu = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            began, began_cpu = time.perf_counter(), time.thread_time()
            step(mode)
            cpu[mode].append(time.thread_time() - began_cpu)
            wall[mode].append(time.perf_counter() - began)
    fast, full = (built[m][0] for m in ("hidden", "hidden_full_select"))
    identical = all(
        torch.equal(a, b) for a, b in zip(fast.parameters(), full.parameters(), strict=True)
    )
    row = {"model": name}
    for mode in modes:
        row[f"{mode}_ms"] = statistics.median(wall[mode]) * 1e3
        row[f"{mode}_cpu_ms"] = statistics.median(cpu[mode]) * 1e3
    row["hidden_over_dense"] = row["hidden_ms"] / row["dense_ms"]
    row["hidden_over_dense_cpu"] = row["hidden_cpu_ms"] / row["dense_cpu_ms"]
    row["hidden_over_dense_cpu_min"] = min(cpu["hidden"]) / min(cpu["dense"])
    row["full_select_over_dense_cpu"] = row["hidden_full_select_cpu_ms"] / row["dense_cpu_ms"]
    row["full_select_over_dense_cpu_min"] = min(cpu["hidden_full_select"]) / min(cpu["dense"])
    row["identical"] = identical
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="steps timed per mode (MLP)")
    parser.add_argument("--conv-repeats", type=int, default=5, help="steps per mode, Conv-4")
    parser.add_argument("--models", default="mlp,conv4")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
        f"{time.strftime('%Y-%m-%d')}"
    )
    rows = []
    for name in args.models.split(","):
        repeats = args.conv_repeats if name.startswith("conv") else args.repeats
        rows.append(bench_model(name, repeats))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
