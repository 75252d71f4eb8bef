"""Triton kernel of :func:`hiddenite.ops.logmul.mitchell_matmul` for GPUs.

Each program computes a ``BLOCK_M x BLOCK_N`` tile of ``out += a @ wt`` with Mitchell
products, walking the reduction index one step at a time so every output element is
accumulated in index order with float32 adds (the same bits as the numba kernel and the torch
path). Imported only when the Triton backend is asked for; tested on CPU with
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["mm_acc_triton"]


@triton.jit
def _product_bits(ia, ib):
    fa = (ia >> 23) & 0xFF
    fb = (ib >> 23) & 0xFF
    ma = ia & 0x7FFFFF
    mb = ib & 0x7FFFFF
    mant = ma + mb
    field = fa + fb - 127 + (mant >> 23)
    clamped = tl.minimum(tl.maximum(field, 0), 0xFF)
    mag = (clamped << 23) + (mant & 0x7FFFFF)
    mag = tl.where(field >= 0xFF, 0x7F800000, mag)
    mag = tl.where(field <= 0, 0, mag)
    mag = tl.where((fa == 0) | (fb == 0), 0, mag)
    mag = tl.where((fa == 0xFF) | (fb == 0xFF), 0x7F800000, mag)
    res = ((ia ^ ib) & -2147483648) | mag
    nan = (
        ((fa == 0xFF) & (ma != 0))
        | ((fb == 0xFF) & (mb != 0))
        | ((fa == 0xFF) & (fb == 0))
        | ((fb == 0xFF) & (fa == 0))
    )
    return tl.where(nan, 0x7FC00000, res)


@triton.jit
def _mm_acc_kernel(a_ptr, wt_ptr, out_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    tile = rows[:, None] * N + cols[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    acc = tl.load(out_ptr + tile, mask=tile_ok, other=0.0)
    for k in range(0, K):
        ia = tl.load(a_ptr + rows * K + k, mask=row_ok, other=0)
        ib = tl.load(wt_ptr + k * N + cols, mask=col_ok, other=0)
        bits = _product_bits(ia[:, None], ib[None, :])
        acc += bits.to(tl.float32, bitcast=True)
    tl.store(out_ptr + tile, acc, mask=tile_ok)


def mm_acc_triton(a: torch.Tensor, wt: torch.Tensor, out: torch.Tensor) -> None:
    """``out += a @ wt`` with Mitchell products: ``a`` (M, K), ``wt`` (K, N), ``out`` (M, N),
    all float32 and contiguous on a device Triton runs on."""
    m, k = a.shape
    n = wt.shape[1]
    block_m, block_n = 32, 32
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _mm_acc_kernel[grid](
        a.contiguous().view(torch.int32),
        wt.contiguous().view(torch.int32),
        out,
        m,
        n,
        k,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
    )
