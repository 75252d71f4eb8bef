"""The weight-free hidden convolution against cuDNN, side by side in one run (GPU).

For each convolution (default: ResNet-50-like shapes) and batch (default 1 and 16), with fp16
inputs, the median of ``--repeats`` CUDA-event timings of:

- ``kernel``: :func:`hiddenite.kernels.triton_conv.hidden_conv2d` on the packed layer: the
  implicit-GEMM Triton kernel that regenerates the weights from the lane seeds, reads one
  mask bit per weight and gathers the input patches itself;
- ``kernel_im2col``: the same with ``im2col=True`` (``F.unfold``, or the channels-last view
  for a 1x1, then the Linear kernel);
- ``cudnn_fp16``: ``F.conv2d`` on the masked weights materialized once in fp16, the
  dense-memory baseline;
- ``materialize_conv``: the Triton generator writes the masked weights (fp32), then
  ``F.conv2d`` in fp16 (a weight-free file without a fused kernel).

Each row gives microseconds, the ratio ``cudnn_fp16 / kernel`` (above 1: the kernel is
faster), the megabytes of weights (or seeds and bits) each path reads and the im2col buffer
``kernel_im2col`` writes. Before timing, the kernel's output on a float32 input is checked
against ``F.conv2d`` on the float32 weights (TF32 off). Triton's interpreter cannot measure
speed: this script needs a CUDA device and exits with a one-line message without one.

Usage: python benchmarks/bench_triton_conv.py [--convs 64x256x1@56,512x512x3@7,512x2048x1@7]
       [--batches 1,16] [--repeats 50] [--block-steps 64] [--lanes 4096] [--json PATH]
A conv is ``OUTxINxK@HW`` (square kernel K, input HW x HW, padding K // 2), optionally
``/S`` for stride S (e.g. ``128x128x3@56/2``).

``--memory MODEL`` (no GPU needed) instead counts, for a zoo model converted at
``--density``, the bytes of the model's tensors before and after
:func:`hiddenite.kernels.triton_model.weight_free_`: what a device holds for the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from bench_triton_linear import cuda_median_us, markdown  # the script's folder is on sys.path
from hiddenite import SupermaskConfig, models
from hiddenite.kernels.triton_conv import gemm_rows, hidden_conv2d, pack_conv2d
from hiddenite.kernels.triton_linear import kernel_weights, triton_available
from hiddenite.kernels.triton_model import weight_free_
from hiddenite.layers import SupermaskConv2d, is_supermask

DEFAULT_CONVS = "64x256x1@56,512x512x3@7,512x2048x1@7,64x64x3@56,128x128x3@56/2"


def parse_convs(text: str) -> list[tuple[int, int, int, int, int]]:
    """(out, in, kernel, hw, stride) for each ``OUTxINxK@HW[/S]`` item."""
    convs = []
    for item in text.split(","):
        shape, _, rest = item.partition("@")
        size, _, stride = rest.partition("/")
        out, fan_in, kernel = (int(v) for v in shape.split("x"))
        convs.append((out, fan_in, kernel, int(size), int(stride or 1)))
    return convs


def bench_conv(out, fan_in, kernel, size, stride, batches, args) -> list[dict]:
    padding = kernel // 2
    layer = SupermaskConv2d(
        fan_in,
        out,
        kernel,
        stride,
        padding,
        density=args.density,
        init=args.init,
        seed=0,
        layer_index=1,
        n_lanes=args.lanes,
        device="cuda",
    )
    packed = pack_conv2d(layer)
    weight32 = layer.effective_weight().detach()
    weight16 = weight32.half()
    del layer  # the kernel and the materialize path use the packed layer only
    steps = args.block_steps
    rows = []
    for batch in batches:
        gen = torch.Generator("cuda").manual_seed(batch)
        x16 = torch.randn(batch, fan_in, size, size, device="cuda", generator=gen).half()
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        want = F.conv2d(x16.float(), weight32, None, stride, padding)
        torch.backends.cudnn.allow_tf32 = tf32
        for im2col in (False, True):
            got = hidden_conv2d(
                packed,
                x16.float(),
                stride,
                padding,
                backend="triton",
                block_steps=steps,
                im2col=im2col,
            )
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)

        def kernel_path(x16=x16):
            return hidden_conv2d(packed, x16, stride, padding, backend="triton", block_steps=steps)

        def im2col_path(x16=x16):
            return hidden_conv2d(
                packed, x16, stride, padding, backend="triton", block_steps=steps, im2col=True
            )

        def cudnn(x16=x16):
            return F.conv2d(x16, weight16, None, stride, padding)

        def materialize(x16=x16):
            weights = kernel_weights(packed, block_steps=steps).half()
            return F.conv2d(x16, weights, None, stride, padding)

        times = {
            name: cuda_median_us(fn, args.repeats)
            for name, fn in (
                ("kernel", kernel_path),
                ("kernel_im2col", im2col_path),
                ("cudnn_fp16", cudnn),
                ("materialize", materialize),
            )
        }
        im2col = gemm_rows(x16, (kernel, kernel), (stride, stride), (padding, padding), (1, 1))
        rows.append(
            {
                "conv": f"{out}x{fan_in}x{kernel}@{size}/{stride}",
                "batch": batch,
                "kernel_us": times["kernel"],
                "kernel_im2col_us": times["kernel_im2col"],
                "cudnn_fp16_us": times["cudnn_fp16"],
                "materialize_conv_us": times["materialize"],
                "cudnn_over_kernel": times["cudnn_fp16"] / times["kernel"],
                "kernel_weight_MB": packed.nbytes() / 1e6,
                "cudnn_weight_MB": 2 * packed.n / 1e6,
                "im2col_MB": im2col.numel() * im2col.element_size() / 1e6,
            }
        )
    return rows


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory(name: str, density: float) -> None:
    """The bytes a device holds for zoo model ``name`` before and after the swap."""
    model = models.create(name, SupermaskConfig(density=density, seed=1)).eval()
    hidden = {n: m for n, m in model.named_modules() if is_supermask(m)}
    before = tensor_bytes([*model.parameters(), *model.buffers()])
    swapped = weight_free_(model)
    after = tensor_bytes([*model.parameters(), *model.buffers()])
    weights = tensor_bytes(hidden[n].weight for n in swapped)
    packed = tensor_bytes(t for n in swapped for t in model.get_submodule(n).buffers())
    print(
        f"{name} at density {density}: {len(swapped)} of {len(hidden)} hidden layers swapped; "
        f"their float32 weights {weights / 1e6:.2f} MB -> seeds, bits and bias "
        f"{packed / 1e6:.2f} MB ({weights / packed:.1f}x less); all the model's tensors "
        f"{before / 1e6:.2f} MB -> {after / 1e6:.2f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convs", default=DEFAULT_CONVS, help="OUTxINxK@HW[/S],...")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--block-steps", type=int, default=None, help="lane steps per program")
    parser.add_argument("--lanes", type=int, default=4096)
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--init", default="signed-constant")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--memory", default=None, help="count a zoo model's bytes (CPU)")
    args = parser.parse_args()
    if args.memory:
        memory(args.memory, args.density)
        return
    convs = parse_convs(args.convs)
    batches = [int(b) for b in args.batches.split(",")]
    if not torch.cuda.is_available():
        sys.exit(
            "bench_triton_conv: no CUDA device. This benchmark times GPU kernels; Triton's "
            "interpreter (TRITON_INTERPRET=1) runs them on the CPU but cannot measure speed. "
            "Run it on a machine with an NVIDIA GPU."
        )
    if not triton_available():
        sys.exit("bench_triton_conv: triton is not installed (pip install triton)")
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
        f"{time.strftime('%Y-%m-%d')}, density {args.density}, {args.init}, "
        f"{args.lanes} lanes"
    )
    rows = []
    for out, fan_in, kernel, size, stride in convs:
        rows += bench_conv(out, fan_in, kernel, size, stride, batches, args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
