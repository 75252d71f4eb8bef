"""Mitchell's logarithmic approximate multiplier for float32, bit for bit.

For normal operands ``a = (-1)^sa 2^ea (1 + ma)`` and ``b = (-1)^sb 2^eb (1 + mb)``
(``0 <= ma, mb < 1``, multiples of 2^-23) Mitchell (IRE Trans. Electron. Comput., 1962)
replaces the mantissa product by a sum::

    ma + mb <  1:  a * b ~ (-1)^(sa ^ sb) 2^(ea + eb)     (1 + ma + mb)
    ma + mb >= 1:  a * b ~ (-1)^(sa ^ sb) 2^(ea + eb + 1) (ma + mb)

Both results are exact float32 values when their exponent is in the normal range (the
mantissa sum is a multiple of 2^-23 in [1, 2)), so **no rounding ever happens**. For positive
normals the result's bit pattern is ``bits(a) + bits(b) - bits(1.0)``: the mantissa fields add,
their carry increments the exponent field. The error is never positive (relative error
``(1 + ma + mb) / ((1 + ma)(1 + mb)) - 1 <= 0``); its worst case is -1/9 at ``ma = mb = 0.5``.

Special values (the datapath has no subnormal support, like most hardware log multipliers,
which decode the exponent field and assume the hidden 1):

=====================================  =========================================================
operands                               result
=====================================  =========================================================
either NaN                             the canonical quiet NaN ``0x7FC00000``
inf x 0 (0 includes subnormals)        ``0x7FC00000``
inf x (nonzero or inf)                 inf, sign ``sa ^ sb``
0 x finite                             zero, sign ``sa ^ sb``
subnormal operand                      **treated as zero of its sign** (denormals-are-zero):
                                       the formula needs the hidden leading 1, and normalising
                                       a subnormal needs a leading-zero counter and a shifter
                                       the datapath is meant to avoid
result exponent > 127 (overflow)       inf, sign ``sa ^ sb``
result exponent < -126 (underflow)     zero, sign ``sa ^ sb`` (flush-to-zero; no subnormal
                                       results, so no rounding rule is needed)
=====================================  =========================================================

Three implementations, which must agree bit for bit (the tests check it):

* :func:`mitchell_scalar`: the slow reference, written from the formula above with exact
  rationals (:mod:`fractions`) and :mod:`struct`; it never uses the bit-pattern trick;
* :func:`mitchell_mul`: elementwise on tensors (int32 bit fields in torch, any device,
  chunked so temporaries stay bounded);
* :func:`mitchell_matmul` (``a @ w.T`` with Mitchell products): a numba kernel on CPU (both
  cores, one output row per thread), a Triton kernel on CUDA (tested here only under
  ``TRITON_INTERPRET=1``), or a torch loop over the reduction index on any device.

Accumulation is float32 in a fixed order: ``out[m, n] = (((0 + p[0]) + p[1]) + ...) +
p[K-1]`` with ``p[k] = mitchell(a[m, k], w[n, k])``, then ``+ bias[n]`` once at the end. Every
add is one IEEE float32 add (round to nearest even), so results are deterministic and equal
across the kernels and across chunk sizes. :func:`logmul_linear` and :func:`logmul_conv2d`
(im2col in chunks, the reduction index running over ``(in_channel, kh, kw)`` in ``unfold``
order) are built on it, with two backward modes: ``"ste"`` (the exact gradient of the exact
product: ordinary float32 matmuls/convolutions) or ``"mitchell"`` (the backward matrix
products also use Mitchell products, in the same fixed order).
"""

from __future__ import annotations

import functools
import math
import struct
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

__all__ = [
    "BACKWARD_MODES",
    "CANONICAL_NAN_BITS",
    "MATMUL_BACKENDS",
    "logmul_conv2d",
    "logmul_linear",
    "mitchell_matmul",
    "mitchell_mul",
    "mitchell_scalar",
    "mitchell_scalar_bits",
]

CANONICAL_NAN_BITS = 0x7FC00000
BACKWARD_MODES = ("ste", "mitchell")
_SIGN = 0x80000000
_ABS = 0x7FFFFFFF
_MAN = 0x007FFFFF
_CHUNK_ELEMS = 1 << 22  # elementwise temporaries (4 M elements = 16 MB per int32 tensor)
_CHUNK_BYTES = 64 << 20  # im2col columns per chunk


# ---------------------------------------------------------------------------------------------
# the slow scalar reference (exact rationals, no bit-pattern arithmetic)
# ---------------------------------------------------------------------------------------------
def _bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _from_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


def _decode(bits: int) -> tuple[int, str, int, Fraction]:
    """(sign, class, exponent, fraction m) of a float32 bit pattern; class is ``zero`` (zeros
    and subnormals: denormals-are-zero), ``normal``, ``inf`` or ``nan``."""
    sign = bits >> 31
    field = (bits >> 23) & 0xFF
    man = bits & _MAN
    if field == 0:
        return sign, "zero", 0, Fraction(0)
    if field == 0xFF:
        return sign, ("nan" if man else "inf"), 0, Fraction(0)
    return sign, "normal", field - 127, Fraction(man, 1 << 23)


def _encode_exact(sign: int, value: Fraction) -> int:
    """Bit pattern of ``(-1)^sign * value`` for a positive rational the formula produced:
    flush to zero below 2^-126, inf at or above 2^128; otherwise it must be exactly a float32
    (the formula never needs rounding) -- checked here."""
    if value < Fraction(1, 1 << 126):
        return sign << 31
    if value >= Fraction(1 << 128):
        return (sign << 31) | 0x7F800000
    e = math.floor(math.log2(value.numerator) - math.log2(value.denominator))
    # fix the float estimate of the exponent exactly
    while Fraction(2) ** e > value:
        e -= 1
    while Fraction(2) ** (e + 1) <= value:
        e += 1
    m = value / Fraction(2) ** e - 1  # in [0, 1)
    scaled = m * (1 << 23)
    if scaled.denominator != 1:
        raise AssertionError(f"Mitchell result {value} is not a float32")  # never: exact sum
    return (sign << 31) | ((e + 127) << 23) | int(scaled)


def mitchell_scalar_bits(a_bits: int, b_bits: int) -> int:
    """Bit pattern of Mitchell's product of two float32 bit patterns (the slow reference)."""
    sa, ca, ea, ma = _decode(a_bits)
    sb, cb, eb, mb = _decode(b_bits)
    sign = sa ^ sb
    if "nan" in (ca, cb):
        return CANONICAL_NAN_BITS
    if "inf" in (ca, cb):
        if "zero" in (ca, cb):
            return CANONICAL_NAN_BITS
        return (sign << 31) | 0x7F800000
    if "zero" in (ca, cb):
        return sign << 31
    two = Fraction(2)
    # ma + mb < 1: 2^(ea+eb) (1 + ma + mb);  ma + mb >= 1: 2^(ea+eb+1) (ma + mb)
    value = two ** (ea + eb) * (1 + ma + mb) if ma + mb < 1 else two ** (ea + eb + 1) * (ma + mb)
    return _encode_exact(sign, value)


def mitchell_scalar(a: float, b: float) -> float:
    """Mitchell's product of two float32 values (the slow reference; a Python float holding a
    float32 value)."""
    return _from_bits(mitchell_scalar_bits(_bits(a), _bits(b)))


# ---------------------------------------------------------------------------------------------
# elementwise on tensors (int32 bit fields)
# ---------------------------------------------------------------------------------------------
def _check_float32(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.float32:
            raise UserError(
                f"the Mitchell multiplier is defined for float32, got a {t.dtype} tensor; "
                "convert the model and inputs with .float()"
            )


def _as_i32(value: int) -> int:
    """A uint32 constant as the int32 with the same bits."""
    return value - (1 << 32) if value >= (1 << 31) else value


def _mul_bits(ia: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of Mitchell's products of int32 bit patterns (broadcasting)."""
    sign = (ia ^ ib) & _as_i32(_SIGN)
    fa = (ia >> 23) & 0xFF  # arithmetic shift, then mask: the exponent field
    fb = (ib >> 23) & 0xFF
    mant = (ia & _MAN) + (ib & _MAN)  # < 2^24
    field = fa + fb - 127 + (mant >> 23)  # biased exponent of the result
    mag = (field << 23) + (mant & _MAN)
    mag = torch.where(field >= 0xFF, 0x7F800000, mag)  # overflow -> inf
    mag = torch.where(field <= 0, 0, mag)  # underflow -> zero
    a_zero, b_zero = fa == 0, fb == 0  # zeros and subnormals (denormals-are-zero)
    a_inf, b_inf = fa == 0xFF, fb == 0xFF
    mag = torch.where(a_zero | b_zero, 0, mag)
    mag = torch.where(a_inf | b_inf, 0x7F800000, mag)
    out = sign | mag
    nan = ((a_inf & ((ia & _MAN) != 0)) | (b_inf & ((ib & _MAN) != 0))) | (
        (a_inf & b_zero) | (b_inf & a_zero)
    )
    return torch.where(nan, CANONICAL_NAN_BITS, out)


def mitchell_mul(a: torch.Tensor, b: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Elementwise Mitchell product of two float32 tensors (broadcasting), on their device.

    ``backend``: ``"numba"`` (CPU, a parallel loop), ``"torch"`` (int32 bit fields in torch,
    any device, in chunks of the broadcast result so the temporaries stay bounded) or
    ``"auto"`` (numba on CPU, torch elsewhere). Both give identical bits. No autograd.
    """
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    _check_float32(a, b)
    shape = torch.broadcast_shapes(a.shape, b.shape)
    a, b = torch.broadcast_to(a, shape).reshape(-1), torch.broadcast_to(b, shape).reshape(-1)
    out = torch.empty(a.numel(), dtype=torch.int32, device=a.device)
    if backend == "numba" and a.device.type != "cpu":
        raise ValueError("the numba backend runs on CPU tensors; use backend='torch'")
    if a.device.type == "cpu" and backend != "torch":
        a_bits = a.detach().contiguous().numpy().view(np.int32)
        b_bits = b.detach().contiguous().numpy().view(np.int32)
        _numba_kernels()["mul"](a_bits, b_bits, out.numpy())
        return out.view(torch.float32).reshape(shape)
    for start in range(0, a.numel(), _CHUNK_ELEMS):
        stop = start + _CHUNK_ELEMS
        ia = a[start:stop].contiguous().view(torch.int32)
        ib = b[start:stop].contiguous().view(torch.int32)
        out[start:stop] = _mul_bits(ia, ib)
    return out.view(torch.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------
# matrix products: numba kernel (CPU), torch loop (other devices)
# ---------------------------------------------------------------------------------------------
@functools.cache
def _numba_kernels() -> dict[str, object]:
    """The CPU kernels, compiled on first use (memoised; numba also caches them on disk)."""
    import numba

    @numba.njit(inline="always")
    def product_bits(ia, ib):  # pragma: no cover - compiled; int64 holding uint32 patterns
        fa = (ia >> 23) & 0xFF
        fb = (ib >> 23) & 0xFF
        ma = ia & 0x7FFFFF
        mb = ib & 0x7FFFFF
        mant = ma + mb
        field = fa + fb - 127 + (mant >> 23)
        mag = (field << 23) + (mant & 0x7FFFFF)
        if field >= 0xFF:
            mag = 0x7F800000
        if field <= 0:
            mag = 0
        if fa == 0 or fb == 0:
            mag = 0
        if fa == 0xFF or fb == 0xFF:
            mag = 0x7F800000
        res = ((ia ^ ib) & 0x80000000) | mag
        if (
            (fa == 0xFF and ma != 0)
            or (fb == 0xFF and mb != 0)
            or (fa == 0xFF and fb == 0)
            or (fb == 0xFF and fa == 0)
        ):
            res = 0x7FC00000
        if res >= 0x80000000:
            res -= 0x100000000
        return np.int32(res)

    @numba.njit(parallel=True, cache=True, nogil=True)
    def mitchell_mm_acc(a_bits, wt_bits, w_special, out):  # pragma: no cover - compiled
        m_rows, k_len = a_bits.shape
        n_cols = wt_bits.shape[1]
        for m in numba.prange(m_rows):
            acc = out[m]
            tmp = np.empty(n_cols, np.int32)
            tmpf = tmp.view(np.float32)
            for k in range(k_len):
                ia = np.int64(a_bits[m, k]) & 0xFFFFFFFF
                # a zero (or subnormal) operand times finite w adds +-0: a no-op on an
                # accumulator that starts at +0.0 (it can never become -0.0), so skip the row
                if (ia >> 23) & 0xFF == 0 and not w_special[k]:
                    continue
                for n in range(n_cols):
                    tmp[n] = product_bits(ia, np.int64(wt_bits[k, n]) & 0xFFFFFFFF)
                for n in range(n_cols):
                    acc[n] += tmpf[n]

    @numba.njit(parallel=True, cache=True, nogil=True)
    def mitchell_mul_flat(a_bits, b_bits, out):  # pragma: no cover - compiled
        for i in numba.prange(out.shape[0]):
            ia = np.int64(a_bits[i]) & 0xFFFFFFFF
            out[i] = product_bits(ia, np.int64(b_bits[i]) & 0xFFFFFFFF)

    return {"mm": mitchell_mm_acc, "mul": mitchell_mul_flat}


def _w_special(wt_bits: np.ndarray) -> np.ndarray:
    """Per reduction index: does that row of ``w.T`` hold an inf or NaN?"""
    return (((wt_bits >> 23) & 0xFF) == 0xFF).any(axis=1)


def _mm_acc_cpu(a: torch.Tensor, wt: torch.Tensor, out: torch.Tensor) -> None:
    a_bits = a.detach().contiguous().numpy().view(np.int32)
    wt_bits = wt.detach().contiguous().numpy().view(np.int32)
    _numba_kernels()["mm"](a_bits, wt_bits, _w_special(wt_bits), out.numpy())


def _mm_acc_torch(a: torch.Tensor, wt: torch.Tensor, out: torch.Tensor) -> None:
    """The products of a block of ``k`` at once, then one float32 add per ``k`` in order."""
    ia = a.contiguous().view(torch.int32)
    iw = wt.contiguous().view(torch.int32)
    k_len = a.shape[1]
    block = max(1, min(k_len, _CHUNK_ELEMS // max(1, out.numel())))
    for start in range(0, k_len, block):
        stop = min(k_len, start + block)
        prods = _mul_bits(ia[:, start:stop, None], iw[None, start:stop, :]).view(torch.float32)
        for j in range(stop - start):
            out += prods[:, j, :]


MATMUL_BACKENDS = ("auto", "numba", "triton", "torch")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in MATMUL_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(MATMUL_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            return "numba"
        return "triton" if device.type == "cuda" and _has_triton() else "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError("the numba backend runs on CPU tensors; use backend='torch'")
    return backend


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _mm_acc(a: torch.Tensor, wt: torch.Tensor, out: torch.Tensor, backend: str) -> None:
    """``out += a @ wt`` with Mitchell products, continuing ``out``'s accumulation in order
    (``out`` contiguous)."""
    if backend == "numba":
        _mm_acc_cpu(a, wt, out)
    elif backend == "triton":
        from ._logmul_triton import mm_acc_triton  # triton is imported only when asked for

        mm_acc_triton(a.contiguous(), wt, out)
    else:
        _mm_acc_torch(a, wt, out)


def mitchell_matmul(
    a: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``a @ w.T (+ bias)`` with Mitchell products, float32 accumulation in index order.

    ``a``: ``(M, K)``, ``w``: ``(N, K)``, result ``(M, N)``; no autograd (see
    :func:`logmul_linear`). ``backend``: ``"numba"`` (CPU tensors), ``"triton"`` (a GPU, or
    CPU tensors under ``TRITON_INTERPRET=1``), ``"torch"`` (any device: a loop over ``k`` of
    elementwise products), or ``"auto"`` (numba on CPU, Triton on CUDA when installed, torch
    elsewhere). All give identical bits.
    """
    _check_float32(a, w)
    if a.dim() != 2 or w.dim() != 2 or a.shape[1] != w.shape[1]:
        raise ValueError(f"mitchell_matmul needs (M, K) and (N, K), got {a.shape} and {w.shape}")
    backend = _resolve_backend(backend, a.device)
    a, w = a.detach(), w.detach()
    out = torch.zeros(a.shape[0], w.shape[0], dtype=torch.float32, device=a.device)
    if out.numel() and a.shape[1]:
        _mm_acc(a, w.t().contiguous(), out, backend)
    if bias is not None:
        _check_float32(bias)
        out = out + bias.detach()
    return out


def _mm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return mitchell_matmul(a, w)


# ---------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------
class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, backward):
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        ctx.backward_mode = backward
        return mitchell_matmul(x2, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.backward_mode == "ste":
            if ctx.needs_input_grad[0]:
                gx = grad @ weight
            if ctx.needs_input_grad[1]:
                gw = grad.t() @ x2
        else:
            if ctx.needs_input_grad[0]:
                gx = _mm(grad, weight.t())
            if ctx.needs_input_grad[1]:
                gw = _mm(grad.t(), x2.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb, None


def _check_backward(backward: str) -> None:
    if backward not in BACKWARD_MODES:
        raise UserError(
            f"unknown backward mode {backward!r}; use one of {', '.join(BACKWARD_MODES)}"
        )


def logmul_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backward: str = "ste",
) -> torch.Tensor:
    """``F.linear`` with Mitchell products (see the module docstring for the order of
    accumulation). ``backward``: ``"ste"`` (exact gradients of the exact product) or
    ``"mitchell"`` (the two backward matrix products also use Mitchell products)."""
    _check_backward(backward)
    _check_float32(x, weight)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    out = _LinearFn.apply(x2, weight, bias, backward)
    return out.reshape(*lead, weight.shape[0])


# ---------------------------------------------------------------------------------------------
# conv2d (im2col in chunks)
# ---------------------------------------------------------------------------------------------
def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_forward_cols(x, weight, stride, padding, dilation, groups) -> torch.Tensor:
    """Mitchell conv2d without bias: per group and per batch chunk, ``unfold`` then
    :func:`mitchell_matmul`."""
    b, c, h, w_in = x.shape
    oc, cg, kh, kw = weight.shape
    oh = _conv_out(h, kh, stride[0], padding[0], dilation[0])
    ow = _conv_out(w_in, kw, stride[1], padding[1], dilation[1])
    out = torch.empty(b, oc, oh, ow, dtype=torch.float32, device=x.device)
    kg = cg * kh * kw
    ocg = oc // groups
    per_image = max(1, c * kh * kw * oh * ow * 4)
    chunk = max(1, _CHUNK_BYTES // per_image)
    for start in range(0, b, chunk):
        xs = x[start : start + chunk]
        cols = F.unfold(xs, (kh, kw), dilation=dilation, padding=padding, stride=stride)
        n = xs.shape[0]
        for g in range(groups):
            cg_cols = cols[:, g * kg : (g + 1) * kg, :]  # (n, kg, L)
            rows = cg_cols.transpose(1, 2).reshape(-1, kg)  # (n * L, kg)
            wg = weight[g * ocg : (g + 1) * ocg].reshape(ocg, kg)
            res = mitchell_matmul(rows, wg)  # (n * L, ocg)
            out[start : start + n, g * ocg : (g + 1) * ocg] = (
                res.reshape(n, oh * ow, ocg).transpose(1, 2).reshape(n, ocg, oh, ow)
            )
    return out


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, backward):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, backward, bias is not None)
        out = _conv_forward_cols(x.detach(), weight.detach(), stride, padding, dilation, groups)
        if bias is not None:
            out = out + bias.detach().reshape(1, -1, 1, 1)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, backward, has_bias = ctx.conf
        grad = grad.contiguous()
        gx = gw = gb = None
        if backward == "ste":
            if ctx.needs_input_grad[0]:
                gx = torch.nn.grad.conv2d_input(
                    x.shape, weight, grad, stride, padding, dilation, groups
                )
            if ctx.needs_input_grad[1]:
                gw = torch.nn.grad.conv2d_weight(
                    x, weight.shape, grad, stride, padding, dilation, groups
                )
        else:
            gx, gw = _conv_backward_mitchell(
                x, weight, grad, stride, padding, dilation, groups, ctx.needs_input_grad[:2]
            )
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None, None


def _conv_backward_mitchell(x, weight, grad, stride, padding, dilation, groups, needs):
    """Gradients of a conv whose backward matrix products use Mitchell products: the input
    gradient as columns (``grad_rows @ w``, Mitchell) folded back with ``F.fold`` (exact adds),
    the weight gradient as ``grad_rows.T @ cols`` accumulated over the batch in order (chunks
    continue one accumulator, so the order does not depend on the chunk size)."""
    b, c, h, w_in = x.shape
    oc, cg, kh, kw = weight.shape
    kg, ocg = cg * kh * kw, oc // groups
    oh, ow = grad.shape[2], grad.shape[3]
    gx = torch.empty_like(x) if needs[0] else None
    gw = torch.zeros(oc, kg, dtype=torch.float32, device=x.device) if needs[1] else None
    per_image = max(1, c * kh * kw * oh * ow * 4)
    chunk = max(1, _CHUNK_BYTES // per_image)
    for start in range(0, b, chunk):
        xs = x[start : start + chunk].detach()
        n = xs.shape[0]
        cols = F.unfold(xs, (kh, kw), dilation=dilation, padding=padding, stride=stride)
        gcols = torch.empty_like(cols) if needs[0] else None
        for g in range(groups):
            g_rows = (
                grad[start : start + n, g * ocg : (g + 1) * ocg]
                .reshape(n, ocg, oh * ow)
                .transpose(1, 2)
                .reshape(-1, ocg)
            )  # (n * L, ocg)
            wg = weight[g * ocg : (g + 1) * ocg].detach().reshape(ocg, kg)
            if needs[0]:
                res = mitchell_matmul(g_rows, wg.t())  # (n * L, kg)
                gcols[:, g * kg : (g + 1) * kg] = res.reshape(n, oh * ow, kg).transpose(1, 2)
            if needs[1]:
                rows = cols[:, g * kg : (g + 1) * kg, :].transpose(1, 2).reshape(-1, kg)
                acc = gw[g * ocg : (g + 1) * ocg]
                _accumulate(g_rows.t(), rows.t(), acc)
        if needs[0]:
            gx[start : start + n] = F.fold(
                gcols, (h, w_in), (kh, kw), dilation=dilation, padding=padding, stride=stride
            )
    if gw is not None:
        gw = gw.reshape(weight.shape)
    return gx, gw


def _accumulate(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    """``out += a @ w.T`` with Mitchell products, continuing ``out``'s accumulation in order."""
    result = out.contiguous()
    _mm_acc(a, w.t().contiguous(), result, _resolve_backend("auto", a.device))
    out.copy_(result)


def logmul_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    backward: str = "ste",
) -> torch.Tensor:
    """``F.conv2d`` with Mitchell products (zero padding: numbers, ``"valid"`` or ``"same"``;
    the reduction runs
    over ``(in_channel, kh, kw)`` in ``unfold`` order, see the module docstring).
    ``backward``: ``"ste"`` or ``"mitchell"`` as in :func:`logmul_linear`."""
    _check_backward(backward)
    _check_float32(x, weight)
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise UserError(f"padding must be 'valid', 'same' or numbers, got {padding!r}")
        if padding == "same":  # as torch: the odd element of the total padding goes last
            pads: list[int] = []
            for d, k in zip(reversed(_pair(dilation)), reversed(weight.shape[2:]), strict=True):
                pads += [d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2]
            x = F.pad(x, pads)
        padding = 0
    out = _Conv2dFn.apply(
        x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), int(groups), backward
    )
    return out.squeeze(0) if squeeze else out
