"""Speed of the Mitchell multiplier emulation against exact float32, side by side in one run.

Times, on the same inputs and threads: an MLP layer (784 -> 300, ``F.linear`` vs
:func:`hiddenite.ops.logmul.logmul_linear`, forward, and forward + backward in both backward
modes), a conv layer (Conv-4 at width 0.5, its second convolution: 32 -> 32 channels, 3 x 3,
28 x 28; ``F.conv2d`` vs :func:`~hiddenite.ops.logmul.logmul_conv2d`) and elementwise products
(``a * b`` vs :func:`~hiddenite.ops.logmul.mitchell_mul`). Reports the median of ``--repeats``
rounds (exact and emulation alternate, so load from other processes hits both alike), the
median per-round slowdown (emulation time / exact time) and the emulation's product rate.

Usage::

    python benchmarks/bench_logmul.py              # defaults below, a few seconds
    python benchmarks/bench_logmul.py --batch 1024 --conv-batch 256 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import torch
import torch.nn.functional as F

from hiddenite.ops.logmul import logmul_conv2d, logmul_linear, mitchell_matmul, mitchell_mul


def timed_pair(exact_fn, emu_fn, repeats: int) -> tuple[float, float, float]:
    """Median times of the two functions, run alternately so that load from other processes
    hits both alike, and the median of the per-round ratios (emulation / exact)."""
    exact_fn(), emu_fn()  # warm-up (compiles the numba kernels on first use)
    t_exact, t_emu = [], []
    for _ in range(repeats):
        for fn, times in ((exact_fn, t_exact), (emu_fn, t_emu)):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    ratios = [b / a for a, b in zip(t_exact, t_emu, strict=True)]
    return statistics.median(t_exact), statistics.median(t_emu), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="MLP-layer batch")
    parser.add_argument("--conv-batch", type=int, default=32)
    parser.add_argument("--elements", type=int, default=1 << 22)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)  # the emulation kernels use the same number of threads
    gen = torch.Generator().manual_seed(0)

    rows = []

    def row(name, products, exact_fn, emu_fn):
        rows.append((name, products, *timed_pair(exact_fn, emu_fn, args.repeats)))

    # MLP layer: ReLU activations (about half zeros, as after a ReLU) x dense weights
    x = torch.relu(torch.randn(args.batch, 784, generator=gen))
    w = torch.randn(300, 784, generator=gen) * 0.05
    n_fwd = args.batch * 784 * 300
    row("linear 784->300 forward", n_fwd, lambda: F.linear(x, w), lambda: logmul_linear(x, w))
    x16 = x[:16].contiguous()
    row(
        "linear 784->300 forward, batch 16, torch backend (the path for non-CPU devices)",
        16 * 784 * 300,
        lambda: F.linear(x16, w),
        lambda: mitchell_matmul(x16, w, backend="torch"),
    )
    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)

    def exact_fb():
        F.linear(xg, wg).sum().backward()

    for mode in ("ste", "mitchell"):

        def emu_fb(mode=mode):
            logmul_linear(xg, wg, backward=mode).sum().backward()

        row(f"linear forward+backward ({mode})", 3 * n_fwd, exact_fb, emu_fb)

    # conv layer: conv4 width 0.5, second convolution
    xc = torch.relu(torch.randn(args.conv_batch, 32, 28, 28, generator=gen))
    wc = torch.randn(32, 32, 3, 3, generator=gen) * 0.05
    n_conv = args.conv_batch * 28 * 28 * 32 * 32 * 9
    row(
        "conv 32->32 3x3 28x28 forward",
        n_conv,
        lambda: F.conv2d(xc, wc, padding=1),
        lambda: logmul_conv2d(xc, wc, padding=1),
    )

    a = torch.randn(args.elements, generator=gen)
    b = torch.randn(args.elements, generator=gen)
    row("elementwise a*b", args.elements, lambda: a * b, lambda: mitchell_mul(a, b))

    print(
        f"threads {args.threads}, median of {args.repeats}; command: python "
        f"benchmarks/bench_logmul.py --batch {args.batch} --conv-batch {args.conv_batch} "
        f"--elements {args.elements} --repeats {args.repeats} --threads {args.threads}\n"
    )
    print(
        "| case | products | exact float32 (ms) | Mitchell emulation (ms) | slowdown "
        "| G products/s |"
    )
    print("|---|---|---|---|---|---|")
    for name, products, t_exact, t_emu, ratio in rows:
        print(
            f"| {name} | {products:,} | {1e3 * t_exact:.2f} | {1e3 * t_emu:.2f} | "
            f"{ratio:.1f}x | {products / t_emu / 1e9:.2f} |"
        )


if __name__ == "__main__":
    main()
