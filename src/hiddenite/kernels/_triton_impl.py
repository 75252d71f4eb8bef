"""The Triton kernels of :mod:`hiddenite.kernels.triton_linear` and
:mod:`~hiddenite.kernels.triton_conv` (imports triton).

Imported only through ``triton_linear._impl()`` when a kernel is launched, so that the
package works without triton. Whether a kernel is compiled for the GPU or run by Triton's
interpreter is decided by ``TRITON_INTERPRET`` when this module is first imported.

Weight ``i`` of a layer of ``n`` weights (row-major, ``out x in``) is word ``i`` of the
multi-lane Xorshift of :mod:`hiddenite.prng`: output number ``i // L`` (its *step*) of lane
``i % L``. A program owns a block of ``BL`` consecutive lanes and ``R`` consecutive steps: it
loads the lanes' seeds, jumps them ahead to its first step with the GF(2) matrices
``M^(2^j)`` of the xorshift32 step (a 32 x 32 bit matrix each, from ``jump``), then steps
them one Xorshift step at a time. Each step yields ``BL`` consecutive weights of the flat
tensor; ``BL <= in_features``, so they touch at most two output rows, whose partial dot
products are added to the output with atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["hidden_conv2d_kernel", "hidden_linear_kernel", "hidden_weights_kernel"]


@triton.jit
def _jump(state, jump_ptr, s0, NBITS: tl.constexpr):
    """``M^s0 state`` for the lanes' states, from the tables ``M^(2^j)``, j < NBITS."""
    for j in tl.static_range(NBITS):
        acc = tl.zeros_like(state)
        for b in tl.static_range(32):
            col = tl.load(jump_ptr + (j * 32 + b)).to(tl.uint32, bitcast=True)
            acc ^= col * ((state >> b) & 1)
        take = ((s0 >> j) & 1) != 0
        state = tl.where(take, acc, state)
    return state


@triton.jit
def _step(state):
    """One xorshift32 (13, 17, 5) step of every lane."""
    state ^= state << 13
    state ^= state >> 17
    state ^= state << 5
    return state


@triton.jit
def _value(word, scale, INIT: tl.constexpr):
    """float32 weight of a word: INIT 0 signed constant (+scale if bit 31 is set), 1 uniform
    ``((word + 0.5) / 2**32 * 2 - 1) * scale`` in float64, rounded once to float32; 2 the
    word's own bits."""
    if INIT == 0:
        c = scale.to(tl.float32)
        w = tl.where((word >> 31) != 0, c, -c)
    elif INIT == 2:  # the word itself, its bits as a float32 (to check the lanes)
        w = word.to(tl.float32, bitcast=True)
    else:
        u = (word.to(tl.float64) + 0.5) * 2.3283064365386963e-10
        w = ((u * 2.0 - 1.0) * scale).to(tl.float32)
    return w


@triton.jit
def _factor(w, i, valid, mask_ptr, invert_ptr, HAS_MASK: tl.constexpr, HAS_INVERT: tl.constexpr):
    """``w`` times the factor of weight ``i``: bit ``i % 32`` of word ``i // 32`` of the mask
    (0: times zero) and of the invert plane (1: negated), with the signed zeros of torch's
    ``weight * factor``."""
    pos = (i & 31).to(tl.uint32)
    if HAS_MASK:
        bits = tl.load(mask_ptr + (i >> 5), mask=valid, other=0).to(tl.uint32, bitcast=True)
        w = w * ((bits >> pos) & 1).to(tl.float32)  # a product, as torch: -0.0 stays -0.0
    if HAS_INVERT:
        inv = tl.load(invert_ptr + (i >> 5), mask=valid, other=0).to(tl.uint32, bitcast=True)
        w = tl.where(((inv >> pos) & 1) != 0, -w, w)
    return w


@triton.jit
def hidden_linear_kernel(
    x_ptr,
    out_ptr,
    seeds_ptr,
    jump_ptr,
    scale_ptr,
    mask_ptr,
    invert_ptr,
    n,
    n_lanes,
    in_features,
    out_features,
    batch,
    steps,
    INIT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_INVERT: tl.constexpr,
    NBITS: tl.constexpr,
    R: tl.constexpr,
    BL: tl.constexpr,
    BB: tl.constexpr,
):
    """``out[b, o] += sum_c W[o, c] * x[b, c]`` over this program's lanes and steps."""
    pid_l = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2)
    lane = pid_l * BL + tl.arange(0, BL)
    lane_ok = lane < n_lanes
    state = tl.load(seeds_ptr + lane, mask=lane_ok, other=1).to(tl.uint32, bitcast=True)
    s0 = pid_s * R
    state = _jump(state, jump_ptr, s0, NBITS)
    scale = tl.load(scale_ptr)
    rows = pid_b * BB + tl.arange(0, BB)
    row_ok = rows < batch
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * in_features
    for t in range(R):
        state = _step(state)
        step = (s0 + t).to(tl.int64)
        first = step * n_lanes + pid_l * BL  # flat index of the block's first weight
        i = first + lane - pid_l * BL
        valid = lane_ok & (i < n)
        o = i // in_features
        c = i - o * in_features
        w = _factor(
            _value(state, scale, INIT), i, valid, mask_ptr, invert_ptr, HAS_MASK, HAS_INVERT
        )
        w = tl.where(valid, w, 0.0)
        xv = tl.load(x_rows + c[None, :], mask=row_ok[:, None] & valid[None, :], other=0.0)
        prod = xv.to(tl.float32) * w[None, :]
        o_first = first // in_features
        near = (o == o_first)[None, :]
        p0 = tl.sum(tl.where(near, prod, 0.0), axis=1)
        p1 = tl.sum(tl.where(near, 0.0, prod), axis=1)
        out_rows = out_ptr + rows.to(tl.int64) * out_features
        # vector-shaped comparisons (a scalar one broadcast into a mask trips the interpreter)
        zero = rows * 0
        live = row_ok & ((first + zero) < n)
        tl.atomic_add(out_rows + o_first, p0, mask=live)
        tl.atomic_add(out_rows + o_first + 1, p1, mask=live & ((o_first + 1 + zero) < out_features))


@triton.jit
def hidden_weights_kernel(
    out_ptr,
    seeds_ptr,
    jump_ptr,
    scale_ptr,
    mask_ptr,
    invert_ptr,
    n,
    n_lanes,
    steps,
    INIT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_INVERT: tl.constexpr,
    NBITS: tl.constexpr,
    R: tl.constexpr,
    BL: tl.constexpr,
):
    """Write the (masked) float32 weights ``out[i]``: the same generation as the linear kernel,
    for materialize-then-matmul and for checking the regenerated words."""
    pid_l = tl.program_id(0)
    pid_s = tl.program_id(1)
    lane = pid_l * BL + tl.arange(0, BL)
    lane_ok = lane < n_lanes
    state = tl.load(seeds_ptr + lane, mask=lane_ok, other=1).to(tl.uint32, bitcast=True)
    s0 = pid_s * R
    state = _jump(state, jump_ptr, s0, NBITS)
    scale = tl.load(scale_ptr)
    for t in range(R):
        state = _step(state)
        step = (s0 + t).to(tl.int64)
        i = step * n_lanes + lane
        valid = lane_ok & (i < n)
        w = _factor(
            _value(state, scale, INIT), i, valid, mask_ptr, invert_ptr, HAS_MASK, HAS_INVERT
        )
        tl.store(out_ptr + i, w, mask=valid)


@triton.jit
def hidden_conv2d_kernel(
    x_ptr,
    out_ptr,
    seeds_ptr,
    jump_ptr,
    scale_ptr,
    mask_ptr,
    invert_ptr,
    n,
    n_lanes,
    in_features,
    out_features,
    row0,
    rows_end,
    steps,
    channels,
    height,
    width,
    out_height,
    out_width,
    stride_h,
    stride_w,
    pad_top,
    pad_left,
    dilation_h,
    dilation_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    INIT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_INVERT: tl.constexpr,
    NBITS: tl.constexpr,
    R: tl.constexpr,
    BL: tl.constexpr,
    BB: tl.constexpr,
):
    """Implicit GEMM: ``out[b, o, y, x] += sum_c W[o, c] * patch(b, y, x)[c]`` over this
    program's lanes and steps, the patch values gathered from the NCHW input (zero outside
    it) instead of read from an im2col buffer. Row ``r`` of the GEMM is output pixel ``r``
    (batch-major, then output rows, then columns); column ``c`` is (channel, kernel row,
    kernel column), the weight's flat order. Rows ``row0 <= r < rows_end``."""
    pid_l = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2)
    lane = pid_l * BL + tl.arange(0, BL)
    lane_ok = lane < n_lanes
    state = tl.load(seeds_ptr + lane, mask=lane_ok, other=1).to(tl.uint32, bitcast=True)
    s0 = pid_s * R
    state = _jump(state, jump_ptr, s0, NBITS)
    scale = tl.load(scale_ptr)
    rows = row0 + pid_b * BB + tl.arange(0, BB)
    row_ok = rows < rows_end
    pixels = out_height * out_width
    image = rows // pixels
    pix = rows - image * pixels
    oy = pix // out_width
    ox = pix - oy * out_width
    top = oy * stride_h - pad_top
    left = ox * stride_w - pad_left
    x_image = x_ptr + image.to(tl.int64) * (channels * height * width)
    out_pix = out_ptr + image.to(tl.int64) * (out_features * pixels) + pix
    for t in range(R):
        state = _step(state)
        step = (s0 + t).to(tl.int64)
        first = step * n_lanes + pid_l * BL  # flat index of the block's first weight
        i = first + lane - pid_l * BL
        valid = lane_ok & (i < n)
        o = i // in_features
        c = i - o * in_features
        ci = c // (KH * KW)
        kk = c - ci * (KH * KW)
        ky = kk // KW
        kx = kk - ky * KW
        w = _factor(
            _value(state, scale, INIT), i, valid, mask_ptr, invert_ptr, HAS_MASK, HAS_INVERT
        )
        w = tl.where(valid, w, 0.0)
        iy = top[:, None] + (ky * dilation_h)[None, :]
        ix = left[:, None] + (kx * dilation_w)[None, :]
        inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
        take = row_ok[:, None] & valid[None, :] & inside
        offset = (ci * height)[None, :].to(tl.int64) * width + iy * width + ix
        xv = tl.load(x_image[:, None] + offset, mask=take, other=0.0)
        prod = xv.to(tl.float32) * w[None, :]
        o_first = first // in_features
        near = (o == o_first)[None, :]
        p0 = tl.sum(tl.where(near, prod, 0.0), axis=1)
        p1 = tl.sum(tl.where(near, 0.0, prod), axis=1)
        zero = rows * 0  # vector-shaped comparisons, as in hidden_linear_kernel
        live = row_ok & ((first + zero) < n)
        tl.atomic_add(out_pix + o_first * pixels, p0, mask=live)
        tl.atomic_add(
            out_pix + (o_first + 1) * pixels,
            p1,
            mask=live & ((o_first + 1 + zero) < out_features),
        )
