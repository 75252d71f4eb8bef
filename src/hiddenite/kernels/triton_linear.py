"""The hidden ``Linear`` forward without its weights in memory: a Triton kernel.

A hidden layer's weights are a function of (model seed, layer index): word ``i`` of the
multi-lane Xorshift of :mod:`hiddenite.prng` (PRNG v1) gives weight ``i`` through
:mod:`hiddenite.init`. :func:`hidden_linear` computes ``x @ (W * f).T + bias`` where the
kernel regenerates every weight of ``W`` from its lane inside the kernel, bit for bit the
weight :func:`~hiddenite.init.frozen_weights` gives, and applies the method's factor ``f``
(:meth:`~hiddenite.methods.Method.weight_factor`: 0/1 mask, and -1 for an inverted weight)
from packed bits: one bit per weight for the mask, one more for the sign when the method
inverts. So the kernel reads the lane seeds (4 bytes per lane), the mask bits (n/8 bytes)
and the input, never the n weights (2n bytes in fp16).

Packing (:func:`pack_linear`) is done once per trained layer; the packed form holds no
weight. Bit ``i % 32`` (least significant first) of int32 word ``i // 32`` is the bit of
flat weight ``i`` (row-major ``out x in``).

Supported inits: ``signed-constant`` and ``kaiming-uniform`` (the kernel evaluates the same
float64 operations and one rounding to float32 as :mod:`hiddenite.init`). ``kaiming-normal``
and methods whose effective weight is not ``W * f`` take the reference path only.

Triton is optional: this module imports without it, :func:`hidden_linear` with
``backend="auto"`` takes the reference path (regenerate with
:func:`~hiddenite.init.frozen_weights`, then ``F.linear``) unless triton is installed and the
input is on a CUDA device. ``TRITON_INTERPRET=1`` (set before the first launch in the process)
runs the kernel on the CPU with Triton's interpreter: exact, but far too slow to measure
speed. The output is the float32 sum of the same products as ``F.linear`` in another order
(per lane block, added with atomics), so it agrees to float rounding, not bit for bit.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..init import frozen_weights, init_scale
from ..layers import SupermaskLayer, SupermaskLinear
from ..prng import STREAM_WEIGHTS, lane_seeds

__all__ = [
    "BACKENDS",
    "KERNEL_INITS",
    "PackedLinear",
    "check_backend",
    "hidden_linear",
    "jump_tables",
    "kernel_weights",
    "pack_bits",
    "pack_linear",
    "packed_from_factor",
    "reference_weights",
    "resolve_backend",
    "triton_available",
    "unpack_bits",
]

BACKENDS = ("auto", "triton", "reference")
#: init name -> the kernel's INIT code
KERNEL_INITS = {"signed-constant": 0, "kaiming-uniform": 1}
_RAW_WORDS = 2  # the kernel's INIT code that writes the words themselves
_MAX_LANE_BLOCK = 128
_STEPS_PER_PROGRAM = 64
_MAX_BATCH_BLOCK = 16
_MAX_BATCH_PROGRAMS = 65535  # CUDA's limit on the grid's third dimension


def triton_available() -> bool:
    """True when the optional ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _impl():
    """The kernels' module; it imports the optional ``triton`` package."""
    return importlib.import_module("hiddenite.kernels._triton_impl")


def _xorshift_step(x: np.ndarray) -> np.ndarray:
    x = x ^ (x << np.uint32(13))
    x = x ^ (x >> np.uint32(17))
    return x ^ (x << np.uint32(5))


def _apply(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """GF(2) matrix (32 column words) times 32-bit vectors: XOR of the columns of set bits."""
    bits = (vectors[:, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return np.bitwise_xor.reduce(np.where(bits != 0, matrix[None, :], np.uint32(0)), axis=1)


def jump_tables(nbits: int) -> np.ndarray:
    """``(nbits, 32)`` uint32: row ``j`` holds the columns of ``M^(2^j)``, ``M`` one xorshift32
    (13, 17, 5) step as a 32 x 32 matrix over GF(2) (column ``b`` = the image of bit ``b``)."""
    if nbits < 1:
        raise ValueError(f"nbits must be >= 1, got {nbits}")
    tables = np.empty((nbits, 32), dtype=np.uint32)
    tables[0] = _xorshift_step(np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32)))
    for j in range(1, nbits):
        tables[j] = _apply(tables[j - 1], tables[j - 1])
    return tables


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """int32 words of the flattened boolean ``flags``: bit ``i % 32`` of word ``i // 32``."""
    flat = flags.detach().reshape(-1).to("cpu", torch.bool).numpy()
    padded = np.zeros(-(-flat.size // 32) * 32, dtype=np.uint64)
    padded[: flat.size] = flat
    weights = np.left_shift(np.uint64(1), np.arange(32, dtype=np.uint64))
    words = (padded.reshape(-1, 32) * weights).sum(axis=1).astype(np.uint32)
    return torch.from_numpy(words.view(np.int32).copy())


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` bits of :func:`pack_bits` words, as a boolean tensor."""
    array = words.detach().to("cpu").numpy().view(np.uint32)
    bits = (array[:, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return torch.from_numpy(bits.reshape(-1)[:n].astype(np.bool_))


@dataclass(frozen=True)
class PackedLinear:
    """A hidden ``Linear`` as the kernel reads it: seeds and bits, no weight.

    ``spec`` holds the :func:`~hiddenite.init.frozen_weights` arguments; ``seeds`` the int32
    lane seeds; ``mask`` / ``invert`` the packed factor bits (None: all kept / none inverted).
    """

    spec: dict
    lanes: int
    steps: int
    scale: float
    seeds: torch.Tensor
    mask: torch.Tensor | None
    invert: torch.Tensor | None
    bias: torch.Tensor | None

    @property
    def out_features(self) -> int:
        return self.spec["shape"][0]

    @property
    def in_features(self) -> int:
        """Columns of the flattened weight (a convolution's ``in x kh x kw``)."""
        return math.prod(self.spec["shape"][1:])

    @property
    def n(self) -> int:
        return self.out_features * self.in_features

    def to(self, device: torch.device | str) -> PackedLinear:
        """The same packed layer with its tensors on ``device``."""

        def move(t):
            return None if t is None else t.to(device)

        return PackedLinear(
            self.spec,
            self.lanes,
            self.steps,
            self.scale,
            move(self.seeds),
            move(self.mask),
            move(self.invert),
            move(self.bias),
        )

    def nbytes(self) -> int:
        """Bytes the kernel reads besides the input: seeds, bits, bias."""
        tensors = (self.seeds, self.mask, self.invert, self.bias)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def pack_linear(layer: SupermaskLayer, device: torch.device | str | None = None) -> PackedLinear:
    """Pack a hidden ``Linear`` once: its lane seeds and its factor as bits (no weights).

    Any supermask layer whose weight flattens row-major to ``out x fan_in`` packs the same
    way: a convolution's weight is its GEMM matrix
    (:func:`hiddenite.kernels.triton_conv.pack_conv2d` packs it, checking its groups)."""
    if not isinstance(layer, SupermaskLayer):
        raise UserError(
            f"pack_linear takes a SupermaskLinear (or another supermask layer), got "
            f"{type(layer).__name__}; convert the model with hiddenite.supermask_ first"
        )
    if layer.trains_weights:
        raise UserError(
            f"layer {layer!r} trains its weights, so they are stored, not regenerated; "
            "use F.linear on its weight"
        )
    factor = layer.method.weight_factor(layer)
    if factor is None:
        raise UserError(
            f"the {layer.method.name} method's effective weight is not the frozen weight times "
            "a 0/1 mask and a sign, so it has no weight-free kernel; use backend='reference'"
        )
    return packed_from_factor(layer, factor, device)


def packed_from_factor(
    layer: SupermaskLayer, factor: torch.Tensor, device: torch.device | str | None = None
) -> PackedLinear:
    """The :class:`PackedLinear` of a frozen-weight ``layer`` whose method gave ``factor``
    (:meth:`~hiddenite.methods.Method.weight_factor`, not None), for a caller that already
    asked the method (:func:`pack_linear` checks the layer first)."""
    spec = layer.frozen_spec()
    device = layer.weight.device if device is None else torch.device(device)
    n = math.prod(spec["shape"])
    lanes = max(1, min(spec["n_lanes"], n))
    seeds = lane_seeds(spec["seed"], spec["layer_index"], lanes, STREAM_WEIGHTS)
    factor = factor.detach().reshape(-1)
    kept = factor != 0
    negative = factor < 0
    bias = layer.effective_bias()
    return PackedLinear(
        spec=spec,
        lanes=lanes,
        steps=-(-n // lanes),
        scale=init_scale(
            spec["init"], spec["fan_in"], spec["gain"], spec["density"], spec["scale_by_density"]
        ),
        seeds=torch.from_numpy(seeds.view(np.int32).copy()).to(device),
        mask=None if bool(kept.all()) else pack_bits(kept).to(device),
        invert=pack_bits(negative).to(device) if bool(negative.any()) else None,
        bias=None if bias is None else bias.detach().to(device),
    )


def _factor(packed: PackedLinear, device) -> torch.Tensor:
    """The float32 factor (-1, 0, +1) of every weight, unpacked from the bits."""
    factor = torch.ones(packed.n, dtype=torch.float32)
    if packed.mask is not None:
        factor[~unpack_bits(packed.mask, packed.n)] = 0.0
    if packed.invert is not None:
        factor[unpack_bits(packed.invert, packed.n)] *= -1.0
    return factor.reshape(packed.spec["shape"]).to(device)


def reference_weights(packed: PackedLinear, device=None) -> torch.Tensor:
    """The masked float32 weights by the reference path: regenerated, then times the factor."""
    device = packed.seeds.device if device is None else device
    weights = frozen_weights(**packed.spec, device=device)
    return weights * _factor(packed, weights.device)


def _launch_shape(packed: PackedLinear, block_steps: int | None) -> tuple[int, int, int, int]:
    """(lane block, steps per program, program count along the steps, jump bits)."""
    widest = min(packed.in_features, packed.lanes, _MAX_LANE_BLOCK)
    lane_block = 1 << (widest.bit_length() - 1)  # a power of two <= in_features
    if block_steps is None:
        block_steps = _STEPS_PER_PROGRAM
    if isinstance(block_steps, bool) or not isinstance(block_steps, int) or block_steps < 1:
        raise UserError(f"block_steps must be a positive integer, got {block_steps!r}")
    per_program = min(block_steps, packed.steps)
    programs = -(-packed.steps // per_program)
    nbits = ((programs - 1) * per_program).bit_length()  # 0: every program starts at step 0
    return lane_block, per_program, programs, nbits


def _check_kernel(packed: PackedLinear, tensor: torch.Tensor, words: bool = False) -> None:
    if not triton_available():
        raise UserError("the triton backend needs the triton package; use backend='reference'")
    if packed.spec["init"] not in KERNEL_INITS and not words:
        raise UserError(
            f"the triton kernel regenerates {', '.join(KERNEL_INITS)} weights, not "
            f"{packed.spec['init']!r}; use backend='reference'"
        )
    if tensor.device.type != "cuda" and not _interpreting():
        raise UserError(
            "the triton kernel runs on a CUDA device (or on the CPU with TRITON_INTERPRET=1 "
            f"set before the first launch); the input is on {tensor.device}: move the input "
            "and the packed layer to CUDA, or use backend='reference'"
        )
    if packed.seeds.device != tensor.device:
        raise UserError(
            f"the packed layer is on {packed.seeds.device} and the input on {tensor.device}; "
            "move the packed layer with .to(device)"
        )


def _kernel_args(packed: PackedLinear, device, words: bool):
    scale = torch.tensor([packed.scale], dtype=torch.float64, device=device)
    dummy = packed.seeds  # never read when the plane is absent
    mask = dummy if packed.mask is None or words else packed.mask
    invert = dummy if packed.invert is None or words else packed.invert
    init = _RAW_WORDS if words else KERNEL_INITS[packed.spec["init"]]
    flags = {
        "INIT": init,
        "HAS_MASK": packed.mask is not None and not words,
        "HAS_INVERT": packed.invert is not None and not words,
    }
    return scale, mask, invert, flags


def kernel_weights(
    packed: PackedLinear, *, words: bool = False, block_steps: int | None = None
) -> torch.Tensor:
    """The masked float32 weights written by the Triton generator (materialize-then-matmul);
    ``words=True``: the raw Xorshift words instead (uint32 bits in an int64 tensor).
    ``block_steps``: lane steps per program (default 64)."""
    device = packed.seeds.device
    _check_kernel(packed, packed.seeds, words)
    out = torch.empty(packed.n, dtype=torch.float32, device=device)
    lane_block, per_program, programs, nbits = _launch_shape(packed, block_steps)
    scale, mask, invert, flags = _kernel_args(packed, device, words)
    grid = (-(-packed.lanes // lane_block), programs)
    _impl().hidden_weights_kernel[grid](
        out,
        packed.seeds,
        _jump_tensor(nbits, device),
        scale,
        mask,
        invert,
        packed.n,
        packed.lanes,
        packed.steps,
        NBITS=nbits,
        R=per_program,
        BL=lane_block,
        **flags,
    )
    if words:
        return out.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return out.reshape(packed.spec["shape"])


def _jump_tensor(nbits: int, device) -> torch.Tensor:
    tables = jump_tables(max(1, nbits))  # one table even when no program jumps
    return torch.from_numpy(tables.reshape(-1).view(np.int32).copy()).to(device)


def _kernel_linear(
    x2d: torch.Tensor, packed: PackedLinear, block_steps: int | None
) -> torch.Tensor:
    device = x2d.device
    batch = x2d.shape[0]
    out = torch.zeros((batch, packed.out_features), dtype=torch.float32, device=device)
    if batch == 0:
        return out
    lane_block, per_program, programs, nbits = _launch_shape(packed, block_steps)
    batch_block = 1 << (min(batch, _MAX_BATCH_BLOCK) - 1).bit_length()
    scale, mask, invert, flags = _kernel_args(packed, device, False)
    jumps = _jump_tensor(nbits, device)
    chunk = _MAX_BATCH_PROGRAMS * batch_block  # rows per launch (a conv's im2col has many)
    for first in range(0, batch, chunk):
        rows = min(chunk, batch - first)
        grid = (-(-packed.lanes // lane_block), programs, -(-rows // batch_block))
        _impl().hidden_linear_kernel[grid](
            x2d[first : first + rows],
            out[first : first + rows],
            packed.seeds,
            jumps,
            scale,
            mask,
            invert,
            packed.n,
            packed.lanes,
            packed.in_features,
            packed.out_features,
            rows,
            packed.steps,
            NBITS=nbits,
            R=per_program,
            BL=lane_block,
            BB=batch_block,
            **flags,
        )
    return out


def check_backend(backend: str) -> None:
    """``UserError`` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_backend(backend: str, packed: PackedLinear, x: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"``: ``"auto"`` takes the kernel for a CUDA input when
    triton is installed and the kernel regenerates the layer's init."""
    if backend != "auto":
        return backend
    use_kernel = (
        triton_available() and x.device.type == "cuda" and packed.spec["init"] in KERNEL_INITS
    )
    return "triton" if use_kernel else "reference"


def hidden_linear(
    x: torch.Tensor,
    layer: SupermaskLinear | PackedLinear,
    *,
    backend: str = "auto",
    block_steps: int | None = None,
) -> torch.Tensor:
    """``F.linear(x, layer.effective_weight(), layer.bias)`` without materializing the weights.

    ``layer`` is a hidden ``SupermaskLinear`` (packed on each call: pack once with
    :func:`pack_linear` for repeated use) or a :class:`PackedLinear`. ``backend``:
    ``"triton"`` (the kernel; CUDA input, or any input with ``TRITON_INTERPRET=1``),
    ``"reference"`` (regenerate the weights, then ``F.linear``), ``"auto"`` (the kernel for a
    CUDA input when triton is installed, else the reference). ``block_steps``: lane steps per
    kernel program (default 64; fewer give more programs). No gradient flows: this is the
    inference path.
    """
    check_backend(backend)
    packed = layer if isinstance(layer, PackedLinear) else pack_linear(layer, x.device)
    if x.shape[-1] != packed.in_features:
        raise UserError(
            f"the input has {x.shape[-1]} features, the layer takes {packed.in_features}"
        )
    backend = resolve_backend(backend, packed, x)
    with torch.no_grad():
        if backend == "reference":
            weights = reference_weights(packed, x.device).to(x.dtype)
            weights = weights.reshape(packed.out_features, packed.in_features)  # a conv's GEMM
            bias = None if packed.bias is None else packed.bias.to(x.dtype)
            return F.linear(x, weights, bias)
        _check_kernel(packed, x)
        x2d = x.reshape(-1, packed.in_features).contiguous()
        out = _kernel_linear(x2d, packed, block_steps).to(x.dtype)
        if packed.bias is not None:
            out += packed.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], packed.out_features)
