"""Per-layer workloads: the convolution / matrix shapes and model-data sizes the cost model needs.

A :class:`LayerWorkload` is plain data (build it from a dict for tests and sweeps, or from a
``torch.nn.Module`` with :func:`workloads_from_module`). Linear layers are treated as 1x1
convolutions whose spatial positions are the non-batch, non-feature dimensions of the input.

What a layer stores and what its PEs do comes from its supermask method's declared
:class:`~hiddenite.methods.LayerCost`: weights regenerated on chip (``weight_source="prng"``,
only the coded symbol parts such as masks are loaded and decoded) or shipped from memory
(``"stored"``: a dense or binarized layer), the PE operation (``add``, ``shift-add``, ``xnor``,
``mac``) and its weight operand width. Coded sizes come from :mod:`hiddenite.storage`, the one
place that codes a layer's parts, so a live module, its model file and the summary agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import codecs, models
from ..codecs import entropy_bound_bits
from ..errors import UserError
from ..layers import SupermaskLayer
from ..masks import kept_count
from ..ops import DATAPATHS, operator_for
from ..quant import input_bits
from ..resources import activation_values, check_activations
from ..storage import encode_layer

__all__ = [
    "OPS",
    "WEIGHT_SOURCES",
    "LayerWorkload",
    "MaskBytesFn",
    "WorkloadError",
    "at_precision",
    "entropy_bits_per_weight",
    "mask_bytes_for",
    "method_fields",
    "workloads_from_module",
    "zoo_workloads",
]

KINDS = ("conv", "linear")
WEIGHT_SOURCES = ("prng", "stored")
OPS = ("add", "shift-add", "xnor", "mac", "bit-serial")
MASK_CODECS = (*codecs.CODECS, "none")

MaskBytesFn = Callable[[str, Any], tuple[str, int]]
"""``fn(layer_name, mask_bool_numpy) -> (codec_name, compressed_bytes)``."""

#: Binary entropy ``H(k)`` in bits per weight (re-exported from :mod:`hiddenite.codecs`).
entropy_bits_per_weight = entropy_bound_bits


class WorkloadError(UserError, ValueError):
    """A workload the user asked for cannot be built: an input shape that does not fit the
    model, a bad density or codec, a zoo name without a density, a source that does not exist.
    The message names the problem and the fix."""


def _pair(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (int(value), int(value))
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise WorkloadError(f"{name}: expected an int or an (h, w) pair, got {value!r}")


def _conv_out(size: int, pad: int, k: int, stride: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def mask_bytes_for(codec: str, weights: int, density: float) -> int:
    """Size (bytes) of a binary mask of ``weights`` bits at ``density`` when no real mask is at
    hand, as the codec declares (:func:`hiddenite.codecs.size_model`): ``symbol-bits``
    (``packed``) = ceil(n / 8) exactly (:func:`hiddenite.codecs.max_bytes`); ``entropy-bound``
    (``rle``, ``entropy``, ``entropy-grouped``) = ceil(H(k) n / 8)
    (:func:`hiddenite.codecs.entropy_bound_bits`; a real code is a little larger); ``none`` = 0."""
    if codec == "none":
        return 0
    if codec not in codecs.CODECS:
        raise WorkloadError(f"codec: unknown mask codec {codec!r}; use {', '.join(MASK_CODECS)}")
    if codecs.size_model(codec) == "symbol-bits":
        return codecs.max_bytes(codec, weights)
    if not 0.0 <= float(density) <= 1.0:
        raise WorkloadError(f"density (kept fraction) must be in [0, 1], got {density!r}")
    return math.ceil(entropy_bound_bits(density) * weights / 8)


def _part_facts(part: Any) -> tuple[int, int | None, str | None, int]:
    """(n, alphabet, codec, bytes) of a stored part: a :class:`hiddenite.storage.StoredPart`
    or a model file's :class:`hiddenite.fileformat.PartEntry`."""
    if hasattr(part, "part"):  # StoredPart
        return part.part.n, part.part.alphabet, part.codec, part.nbytes
    return part.n, part.alphabet, part.codec, part.bytes


def method_fields(cost: Any, parts: Iterable[Any]) -> dict[str, Any]:
    """Workload fields of one supermask layer from its method's :class:`LayerCost` and its
    coded parts (``StoredPart`` or ``PartEntry``).

    A regenerated layer (``prng``) loads its coded symbol parts as ``mask_bytes`` (masks, signs,
    levels; the decoder expands them into ``decoded_bits``) and its float parts (scales) as
    ``weight_bytes``. A ``stored`` layer's parts *are* its weights: every part byte is
    ``weight_bytes``, ``mask_bytes`` is 0 (coded symbol parts are still decoded on chip).
    """
    facts = [_part_facts(p) for p in parts]
    symbol = [f for f in facts if f[1] is not None]
    symbol_bytes = sum(f[3] for f in symbol)
    float_bytes = sum(f[3] for f in facts if f[1] is None)
    decoded = sum(f[0] * codecs.symbol_bits(f[1]) for f in symbol)
    names = "+".join(dict.fromkeys(str(f[2]) for f in symbol)) or "none"
    stored = cost.weight_source == "stored"
    return {
        "weight_source": cost.weight_source,
        "weight_bits": int(cost.weight_bits),
        "op": cost.op,
        "mask_codec": names,
        "mask_bytes": 0 if stored else symbol_bytes,
        "weight_bytes": symbol_bytes + float_bytes if stored else float_bytes,
        "decoded_bits": decoded,
        "prng_streams": len(cost.prng_streams),
    }


@dataclass(frozen=True)
class LayerWorkload:
    """One conv or linear layer as the accelerator sees it (sizes in elements unless noted).

    ``stride``, ``padding`` and ``dilation`` are ints or ``(h, w)`` pairs. ``density`` is the
    kept fraction of weights (1.0 = dense). ``batch`` is the number of inputs processed together.

    What the layer's method declares (:class:`~hiddenite.methods.LayerCost`):
    ``weight_source`` ``"prng"`` (frozen weights regenerated on chip from the seed) or
    ``"stored"`` (weights shipped from memory: a dense or binarized layer); ``weight_bits``, the
    weight operand width of the PE; ``op``, what a PE does per kept weight (``add``,
    ``shift-add``, ``xnor``, ``mac``).

    Model data as stored (bytes): ``mask_bytes``, the coded symbol parts of a regenerated layer
    (masks, signs, levels) under ``mask_codec``, decoded on chip into ``decoded_bits``;
    ``weight_bytes``, stored weights (all parts of a ``stored`` layer, the float parts such as
    scales of a regenerated one); ``param_bytes``, the per-channel parameters (batch-norm
    statistics, biases). Defaults (-1): a regenerated layer has a packed 1-bit mask
    (ceil(weights / 8) bytes, ``decoded_bits`` = weights) and no weight bytes; a stored layer has
    no mask and ceil(weights x weight_bits / 8) weight bytes.

    ``prng_streams``: how many PRNG streams the chip steps per weight use to build the layer
    (the frozen weights, a frozen-position stream, a fixed topology, ...).

    ``call``: 1 for the first execution of a layer, k for its k-th (a folded / shared layer that
    runs several times, named ``name#k``): its weights and masks are stored once, so only the
    first call counts them as stored model data (every call still loads them).

    ``datapath``: the multiplier the layer's inference operator declares
    (:mod:`hiddenite.ops`): ``exact``, or ``log`` (Mitchell), whose multiplies the model
    charges at ``EnergyTable.log_mult_pj``.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    groups: int = 1
    in_h: int = 1
    in_w: int = 1
    out_h: int = 1
    out_w: int = 1
    batch: int = 1
    density: float = 1.0
    mask_codec: str = "packed"
    mask_bytes: int = -1  # -1: packed 1-bit mask ceil(weights / 8) (prng), 0 (stored)
    param_bytes: int = 0
    dilation: int | tuple[int, int] = 1
    weight_source: str = "prng"
    weight_bits: int = 1
    op: str = "add"
    weight_bytes: int = -1  # -1: 0 (prng), ceil(weights * weight_bits / 8) (stored)
    decoded_bits: int = -1  # -1: weights when a mask is loaded (prng), else 0
    call: int = 1
    prng_streams: int = -1  # -1: 1 (prng: the frozen weights), 0 (stored)
    datapath: str = "exact"  # the layer operator's multiplier: "exact" or "log" (Mitchell)
    act_bits: int = 0  # input activation width from the model's quantizer; 0: the spec's

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise WorkloadError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        for f in (
            "in_channels",
            "out_channels",
            "kernel_h",
            "kernel_w",
            "groups",
            "in_h",
            "in_w",
            "out_h",
            "out_w",
            "batch",
            "weight_bits",
            "call",
        ):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WorkloadError(f"{self.name}: {f} must be a positive integer, got {v!r}")
        for f in ("stride", "dilation"):
            if min(_pair(f, getattr(self, f))) < 1:
                raise WorkloadError(f"{self.name}: {f} must be >= 1, got {getattr(self, f)!r}")
        if min(_pair("padding", self.padding)) < 0:
            raise WorkloadError(f"{self.name}: padding must be >= 0, got {self.padding!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise WorkloadError(
                f"{self.name}: in_channels ({self.in_channels}) and out_channels "
                f"({self.out_channels}) must be divisible by groups ({self.groups})"
            )
        density = self.density
        if (
            isinstance(density, bool)
            or not isinstance(density, int | float)
            or not 0.0 <= float(density) <= 1.0
        ):
            raise WorkloadError(
                f"{self.name}: density (kept fraction) must be in [0, 1], got {density!r}"
            )
        object.__setattr__(self, "density", float(density))
        if self.weight_source not in WEIGHT_SOURCES:
            raise WorkloadError(
                f"{self.name}: weight_source must be one of {', '.join(WEIGHT_SOURCES)}, "
                f"got {self.weight_source!r}"
            )
        if self.op not in OPS:
            raise WorkloadError(f"{self.name}: op must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.datapath not in DATAPATHS:
            raise WorkloadError(
                f"{self.name}: datapath must be one of {', '.join(DATAPATHS)}, "
                f"got {self.datapath!r}"
            )
        if self.weight_bits > 64:
            raise WorkloadError(f"{self.name}: weight_bits must be <= 64, got {self.weight_bits}")
        prng = self.weight_source == "prng"
        if self.mask_bytes == -1:
            mask = codecs.max_bytes("packed", self.weights) if prng else 0
            object.__setattr__(self, "mask_bytes", mask)
        if self.weight_bytes == -1:
            nbytes = 0 if prng else math.ceil(self.weights * self.weight_bits / 8)
            object.__setattr__(self, "weight_bytes", nbytes)
        if self.decoded_bits == -1:
            decoded = self.weights if prng and self.mask_bytes > 0 else 0
            object.__setattr__(self, "decoded_bits", decoded)
        if self.prng_streams == -1:
            object.__setattr__(self, "prng_streams", 1 if prng else 0)
        if isinstance(self.act_bits, bool) or self.act_bits not in range(0, 33):
            raise WorkloadError(f"{self.name}: act_bits must be in 0..32, got {self.act_bits!r}")
        for f in ("mask_bytes", "weight_bytes", "param_bytes", "decoded_bits", "prng_streams"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WorkloadError(f"{self.name}: {f} must be an integer >= 0, got {v!r}")

    # -- derived -------------------------------------------------------------------------------
    @property
    def stride_hw(self) -> tuple[int, int]:
        """Stride ``(h, w)``."""
        return _pair("stride", self.stride)

    @property
    def padding_hw(self) -> tuple[int, int]:
        """Padding ``(h, w)`` (elements per side)."""
        return _pair("padding", self.padding)

    @property
    def dilation_hw(self) -> tuple[int, int]:
        """Dilation ``(h, w)``."""
        return _pair("dilation", self.dilation)

    @property
    def in_channels_per_group(self) -> int:
        """Input channels each output channel sees."""
        return self.in_channels // self.groups

    @property
    def out_channels_per_group(self) -> int:
        """Output channels per group."""
        return self.out_channels // self.groups

    @property
    def weights(self) -> int:
        """Number of weights of the layer."""
        return self.out_channels * self.in_channels_per_group * self.kernel_h * self.kernel_w

    @property
    def kept_weights(self) -> int:
        """Weights kept: :func:`hiddenite.masks.kept_count` (floor(density x weights + 0.5))."""
        return kept_count(self.weights, self.density)

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates of the layer shape (whole batch)."""
        return self.batch * self.out_h * self.out_w * self.weights

    @property
    def kept_macs(self) -> int:
        """Multiply-accumulates whose weight is kept (whole batch)."""
        return self.batch * self.out_h * self.out_w * self.kept_weights

    @property
    def ifmap_elems(self) -> int:
        """Input activations (elements, whole batch)."""
        return self.batch * self.in_channels * self.in_h * self.in_w

    @property
    def ofmap_elems(self) -> int:
        """Output activations (elements, whole batch)."""
        return self.batch * self.out_channels * self.out_h * self.out_w

    @property
    def stored_bytes(self) -> int:
        """Model data this layer adds to the stored model: masks and weights on its first call
        only, plus its own per-channel parameters."""
        first = self.mask_bytes + self.weight_bytes if self.call == 1 else 0
        return first + self.param_bytes

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerWorkload:
        """Build from a plain mapping. Accepts ``kernel`` (int or pair) for ``kernel_h/w``,
        ``in_hw``/``out_hw`` pairs, and derives ``in_h/in_w`` or ``out_h/out_w`` from the other
        with the usual convolution formula; ``name`` defaults to ``kind``."""
        d = dict(data)
        valid = {f.name for f in dataclasses.fields(cls)} | {"kernel", "in_hw", "out_hw"}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise WorkloadError(f"unknown workload field(s) {unknown}; valid: {sorted(valid)}")
        if "kernel" in d:
            d["kernel_h"], d["kernel_w"] = _pair("kernel", d.pop("kernel"))
        if "in_hw" in d:
            d["in_h"], d["in_w"] = _pair("in_hw", d.pop("in_hw"))
        if "out_hw" in d:
            d["out_h"], d["out_w"] = _pair("out_hw", d.pop("out_hw"))
        d.setdefault("kind", "conv")
        d.setdefault("name", d["kind"])
        kh, kw = d.get("kernel_h", 1), d.get("kernel_w", 1)
        sh, sw = _pair("stride", d.get("stride", 1))
        ph, pw = _pair("padding", d.get("padding", 0))
        dh, dw = _pair("dilation", d.get("dilation", 1))
        if "out_h" not in d and "in_h" in d:
            d["out_h"] = _conv_out(d["in_h"], ph, kh, sh, dh)
        if "out_w" not in d and "in_w" in d:
            d["out_w"] = _conv_out(d["in_w"], pw, kw, sw, dw)
        if "in_h" not in d and "out_h" in d:
            d["in_h"] = max(1, (d["out_h"] - 1) * sh + dh * (kh - 1) + 1 - 2 * ph)
        if "in_w" not in d and "out_w" in d:
            d["in_w"] = max(1, (d["out_w"] - 1) * sw + dw * (kw - 1) + 1 - 2 * pw)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (all fields)."""
        return dataclasses.asdict(self)

    def with_density(self, density: float, codec: str | None = None) -> LayerWorkload:
        """Copy of a regenerated layer at another density, its mask an edge-popup style 1-bit
        mask whose ``mask_bytes`` follow :func:`mask_bytes_for` for ``codec`` (default: this
        layer's codec; packed exact, rle/entropy the entropy bound). A ``stored`` layer keeps
        every weight whatever the density: it is returned unchanged."""
        if self.weight_source == "stored":
            return self
        codec = self.mask_codec if codec is None else codec
        nbytes = mask_bytes_for(codec, self.weights, density)
        return dataclasses.replace(
            self,
            density=density,
            mask_codec=codec,
            mask_bytes=nbytes,
            decoded_bits=0 if codec == "none" else self.weights,
        )


def at_precision(workloads: Iterable[LayerWorkload], bits: int) -> list[LayerWorkload]:
    """The workloads run at ``bits`` digits: every ``bit-serial`` layer (weights stored as
    ``weight_bits`` digit planes, accumulated most significant first) uses its first
    ``min(bits, weight_bits)`` planes, so its PE work and the weight bytes it loads shrink in
    proportion; other layers are unchanged."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise WorkloadError(f"precision must be an integer >= 1 (digits), got {bits!r}")
    out = []
    for w in workloads:
        if w.op == "bit-serial" and bits < w.weight_bits:
            nbytes = math.ceil(w.weight_bytes * bits / w.weight_bits)
            w = dataclasses.replace(w, weight_bits=bits, weight_bytes=nbytes)
        out.append(w)
    return out


def _bn_param_count(module: Any) -> int:
    """Per-channel numbers a BatchNorm carries at inference: running mean/var (+ weight, bias)."""
    n = int(module.num_features)
    count = 0
    if getattr(module, "running_mean", None) is not None:
        count += 2 * n
    if getattr(module, "affine", False):
        count += 2 * n
    return count


def workloads_from_module(
    module: Any,
    input_shape: tuple[int, ...],
    *,
    mask_bytes_fn: MaskBytesFn | None = None,
    codec: str | None = None,
    param_bytes_per_value: int = 4,
    param_bytes_of: Mapping[str, int] | None = None,
    stored_parts: Mapping[str, Sequence[Any]] | None = None,
) -> list[LayerWorkload]:
    """Trace ``module`` once with a zero input of ``input_shape`` (batch first) and return one
    workload per ``nn.Conv2d`` / ``nn.Linear`` call, in execution order. A layer called again
    (a shared / folded layer) gives one workload per call, named ``name#2``, ``name#3``, ...
    with ``call`` 2, 3, ...: its masks and weights count as stored model data once.

    A supermask layer (:mod:`hiddenite.layers`) is described by its method: the declared
    :class:`~hiddenite.methods.LayerCost` (weight source, weight bits, PE op) and its parts as
    coded bytes, from ``stored_parts[name]`` (e.g. a model file's
    :attr:`~hiddenite.fileformat.LayerEntry.parts`) or else coded here exactly as a model file
    codes them (:func:`hiddenite.storage.encode_layer` with ``codec``; None: the smallest codec
    per part); its density is the fraction of its weights in use (``layer.support()``).

    Any other layer counts as a hidden layer with a 1-bit mask: density from its ``mask()`` (a
    0/1 tensor shaped like the weight; a ``mask`` tensor attribute also works), else 1.0;
    ``mask_bytes`` the packed size ceil(n / 8) unless ``mask_bytes_fn(name, mask_bool_numpy) ->
    (codec, nbytes)`` is given (called only for layers with a mask). When ``param_bytes_of``
    holds its ``weight`` (a plain layer of a converted model, whose weights a model file stores
    as a float tensor), it is a ``stored`` layer with a full MAC per weight instead.

    Each workload's ``datapath`` is that of the layer's inference operator
    (:func:`hiddenite.ops.operator_for` while the model is traced in eval mode).

    ``param_bytes`` = ``param_bytes_per_value`` x (bias values + the per-channel values of
    BatchNorm layers run after the layer and before the next conv/linear). ``param_bytes_of``:
    stored byte counts of the model's per-channel tensors, keyed by ``state_dict`` name (as a
    model file stores them). When given, it replaces that count: each tensor is charged to the
    conv/linear layer that owns it (a bias; to its first call) or, for any other module
    (BatchNorm, ...), to the last conv/linear call executed before that module's first call
    (the first layer if none ran before it, the last layer if the module never ran). Every byte
    is charged to exactly one workload, so their ``param_bytes`` sum to the mapping's total.

    Raises :class:`WorkloadError` when ``input_shape`` does not fit the model.
    """
    conv_types = (nn.Conv2d, nn.Linear)
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    names = {id(m): n or type(m).__name__ for n, m in module.named_modules()}
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}

    def conv_hook(mod: Any, inputs: tuple[Any, ...], output: Any) -> None:
        name = names.get(id(mod), type(mod).__name__)
        seen[name] = seen.get(name, 0) + 1
        call = seen[name]
        records.append(
            {
                "mod": mod,
                "name": name if call == 1 else f"{name}#{call}",
                "base": name,
                "call": call,
                "in": tuple(inputs[0].shape),
                "out": tuple(output.shape),
                "extra": 0,
                "datapath": operator_for(mod).datapath,
            }
        )

    def bn_hook(mod: Any, inputs: tuple[Any, ...], output: Any) -> None:
        if records:
            records[-1]["extra"] += _bn_param_count(mod)

    # module name -> number of conv/linear records made before its first call
    first_call: dict[str, int] = {}

    def any_pre_hook(mod: Any, inputs: tuple[Any, ...]) -> None:
        first_call.setdefault(names.get(id(mod), ""), len(records))

    handles = []
    try:
        if param_bytes_of is not None:
            for m in module.modules():
                handles.append(m.register_forward_pre_hook(any_pre_hook))
        for m in module.modules():
            if isinstance(m, conv_types):
                handles.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, bn_types):
                handles.append(m.register_forward_hook(bn_hook))
        params = list(module.parameters())
        ref = params[0] if params else torch.zeros(())
        _check_trace_memory(module, tuple(input_shape), ref.device)
        x = torch.zeros(tuple(input_shape), dtype=ref.dtype, device=ref.device)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                try:
                    module(x)
                except RuntimeError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
                    raise WorkloadError(
                        f"input_shape {tuple(input_shape)} does not fit the model ({first})"
                    ) from None
        finally:
            module.train(was_training)
    finally:
        for h in handles:
            h.remove()

    first_record: dict[int, int] = {}
    for i, rec in enumerate(records):
        first_record.setdefault(id(rec["mod"]), i)
    charged: list[int] | None = None
    stored_weight: dict[int, int] = {}  # id(plain layer) -> bytes of its stored weight tensor
    if param_bytes_of is not None:
        charged = [0] * len(records)
        modules = dict(module.named_modules())
        for key, nbytes in param_bytes_of.items():
            owner, _, leaf = key.rpartition(".")
            mod = modules.get(owner)
            if (
                leaf == "weight"
                and isinstance(mod, conv_types)
                and not isinstance(mod, SupermaskLayer)
                and id(mod) in first_record
            ):
                stored_weight[id(mod)] = int(nbytes)
                continue
            if mod is not None and id(mod) in first_record:
                i = first_record[id(mod)]
            elif owner in first_call:
                i = max(0, first_call[owner] - 1)
            else:
                i = len(records) - 1
            if charged:
                charged[i] += int(nbytes)

    method_cache: dict[int, dict[str, Any]] = {}

    def layer_fields(rec: dict[str, Any]) -> dict[str, Any]:
        mod = rec["mod"]
        if id(mod) in method_cache:
            return method_cache[id(mod)]
        if isinstance(mod, SupermaskLayer):
            fields = _supermask_fields(mod, rec["base"], codec, param_bytes_per_value, stored_parts)
        elif id(mod) in stored_weight:
            nbytes = stored_weight[id(mod)]
            n = mod.weight.numel()
            fields = {
                "density": 1.0,
                "weight_source": "stored",
                "weight_bits": max(1, 8 * nbytes // n) if n else 32,
                "op": "mac",
                "mask_codec": "none",
                "mask_bytes": 0,
                "weight_bytes": nbytes,
                "decoded_bits": 0,
            }
        else:
            fields = {"density": 1.0, "mask_codec": "packed", "mask_bytes": -1}
            mask = _module_mask(mod)
            if mask is not None:
                mask_np = mask.detach().to("cpu").numpy().astype(bool)
                fields["density"] = float(mask_np.mean()) if mask_np.size else 1.0
                if mask_bytes_fn is not None:
                    chosen, nbytes = mask_bytes_fn(rec["base"], mask_np)
                    fields["mask_codec"], fields["mask_bytes"] = str(chosen), int(nbytes)
        method_cache[id(mod)] = fields
        return fields

    out: list[LayerWorkload] = []
    for idx, rec in enumerate(records):
        mod = rec["mod"]
        bias = getattr(mod, "bias", None)
        n_params = (bias.numel() if bias is not None and rec["call"] == 1 else 0) + rec["extra"]
        common = {
            "name": rec["name"],
            "call": rec["call"],
            "datapath": rec["datapath"],
            "param_bytes": (
                charged[idx] if charged is not None else param_bytes_per_value * n_params
            ),
            "act_bits": input_bits(mod) or 0,
            **layer_fields(rec),
        }
        if isinstance(mod, nn.Conv2d):
            _, c, ih, iw = rec["in"][-4:] if len(rec["in"]) == 4 else (1, *rec["in"][-3:])
            oc, oh, ow = rec["out"][-3:]
            batch = rec["in"][0] if len(rec["in"]) == 4 else 1
            kh, kw = mod.kernel_size
            stride = tuple(mod.stride)
            dilation = tuple(mod.dilation)
            if isinstance(mod.padding, str):
                pad = tuple(
                    max(0, ((o - 1) * s + d * (k - 1) + 1 - i) // 2)
                    for o, s, d, k, i in zip(
                        (oh, ow), stride, dilation, (kh, kw), (ih, iw), strict=True
                    )
                )
            else:
                pad = tuple(mod.padding)
            out.append(
                LayerWorkload(
                    kind="conv",
                    in_channels=int(c),
                    out_channels=int(oc),
                    kernel_h=int(kh),
                    kernel_w=int(kw),
                    stride=_squash(stride),
                    padding=_squash(pad),
                    dilation=_squash(dilation),
                    groups=int(mod.groups),
                    in_h=int(ih),
                    in_w=int(iw),
                    out_h=int(oh),
                    out_w=int(ow),
                    batch=int(batch),
                    **common,
                )
            )
        else:
            shape = rec["in"]
            batch = int(shape[0]) if len(shape) >= 2 else 1
            positions = math.prod(shape[1:-1]) if len(shape) > 2 else 1
            out.append(
                LayerWorkload(
                    kind="linear",
                    in_channels=int(mod.in_features),
                    out_channels=int(mod.out_features),
                    in_h=1,
                    in_w=int(positions),
                    out_h=1,
                    out_w=int(positions),
                    batch=batch,
                    **common,
                )
            )
    return out


def _supermask_fields(
    layer: Any,
    name: str,
    codec: str | None,
    param_bytes_per_value: int,
    stored_parts: Mapping[str, Sequence[Any]] | None,
) -> dict[str, Any]:
    """Workload fields of a supermask layer: its method's cost, its coded parts, its density."""
    shape = tuple(layer.weight.shape)
    cost = layer.method.cost(shape, layer.method_config, layer.density)
    if stored_parts is not None and name in stored_parts:
        parts = stored_parts[name]
    else:
        dtype = "float16" if param_bytes_per_value == 2 else "float32"
        parts = encode_layer(layer, codec, dtype)
    with torch.no_grad():
        support = layer.support()
    n = support.numel()
    density = float(support.count_nonzero()) / n if n else 1.0
    return {"density": density, **method_fields(cost, parts)}


def _squash(pair: tuple[int, ...]) -> int | tuple[int, int]:
    return int(pair[0]) if pair[0] == pair[1] else (int(pair[0]), int(pair[1]))


def _module_mask(mod: Any) -> Any | None:
    """The layer's 0/1 mask tensor: ``mod.mask()`` if callable, a ``mask`` tensor attribute, or
    ``None``."""
    m = getattr(mod, "mask", None)
    if m is None:
        return None
    if callable(m) and not isinstance(m, torch.Tensor):
        with torch.no_grad():
            m = m()
    if not isinstance(m, torch.Tensor):
        return None
    if m.numel() != mod.weight.numel():
        raise WorkloadError(
            f"{type(mod).__name__}.mask() has {m.numel()} elements but the weight has "
            f"{mod.weight.numel()}; mask() must be shaped like the weight"
        )
    return m != 0


def workloads_from_dicts(items: Iterable[Mapping[str, Any] | LayerWorkload]) -> list[LayerWorkload]:
    """Normalise a list of dicts / workloads into workloads."""
    return [w if isinstance(w, LayerWorkload) else LayerWorkload.from_dict(w) for w in items]


def resnet_workloads(
    depth: int = 18,
    *,
    input_hw: int = 224,
    num_classes: int = 1000,
    batch: int = 1,
    density: float = 1.0,
    codec: str = "packed",
    cifar_stem: bool = False,
    width: int = 64,
    bn_values_per_channel: int = 2,
    bytes_per_value: int = 4,
) -> list[LayerWorkload]:
    """Conv/linear workloads of a torchvision-style ResNet (18, 34 BasicBlock; 50, 101, 152
    Bottleneck with the stride on the 3x3), in execution order (a block's convs, then its
    downsample, then the next block).

    ``cifar_stem``: 3x3 stride-1 first conv and no max-pool (the CIFAR variant). Each conv is
    followed by a BatchNorm carrying ``bn_values_per_channel`` values per channel (2 = non-affine
    running mean/var, as in edge-popup) of ``bytes_per_value`` bytes; the classifier has a bias.
    Mask bytes follow :func:`mask_bytes_for` for ``codec`` at ``density``.
    """
    blocks = {
        18: ("basic", [2, 2, 2, 2]),
        34: ("basic", [3, 4, 6, 3]),
        50: ("bottleneck", [3, 4, 6, 3]),
        101: ("bottleneck", [3, 4, 23, 3]),
        152: ("bottleneck", [3, 8, 36, 3]),
    }
    if depth not in blocks:
        raise WorkloadError(f"depth: unknown ResNet depth {depth}; use one of {sorted(blocks)}")
    kind, counts = blocks[depth]
    expansion = 4 if kind == "bottleneck" else 1
    layers: list[LayerWorkload] = []

    def conv(name: str, cin: int, cout: int, k: int, s: int, hw: int) -> int:
        pad = k // 2
        out = _conv_out(hw, pad, k, s, 1)
        weights = cout * cin * k * k
        layers.append(
            LayerWorkload(
                name=name,
                kind="conv",
                in_channels=cin,
                out_channels=cout,
                kernel_h=k,
                kernel_w=k,
                stride=s,
                padding=pad,
                in_h=hw,
                in_w=hw,
                out_h=out,
                out_w=out,
                batch=batch,
                density=density,
                mask_codec=codec,
                mask_bytes=mask_bytes_for(codec, weights, density),
                param_bytes=bn_values_per_channel * cout * bytes_per_value,
            )
        )
        return out

    if cifar_stem:
        hw = conv("conv1", 3, width, 3, 1, input_hw)
    else:
        hw = conv("conv1", 3, width, 7, 2, input_hw)
        hw = _conv_out(hw, 1, 3, 2, 1)  # 3x3/2 max-pool
    cin = width
    for stage, n in enumerate(counts):
        planes = width * 2**stage
        for b in range(n):
            s = 2 if (b == 0 and stage > 0) else 1
            p = f"layer{stage + 1}.{b}"
            block_in, block_hw = cin, hw
            if kind == "basic":
                hw = conv(f"{p}.conv1", cin, planes, 3, s, hw)
                hw = conv(f"{p}.conv2", planes, planes, 3, 1, hw)
            else:
                h1 = conv(f"{p}.conv1", cin, planes, 1, 1, hw)
                h2 = conv(f"{p}.conv2", planes, planes, 3, s, h1)
                hw = conv(f"{p}.conv3", planes, planes * expansion, 1, 1, h2)
            cin = planes * expansion
            if s != 1 or block_in != cin:
                conv(f"{p}.downsample.0", block_in, cin, 1, s, block_hw)
    weights = num_classes * cin
    layers.append(
        LayerWorkload(
            name="fc",
            kind="linear",
            in_channels=cin,
            out_channels=num_classes,
            batch=batch,
            density=density,
            mask_codec=codec,
            mask_bytes=mask_bytes_for(codec, weights, density),
            param_bytes=num_classes * bytes_per_value,
        )
    )
    return layers


def _check_trace_memory(module: Any, shape: tuple[int, ...], device: Any) -> None:
    """Refuse, before the trace allocates anything, an input whose activations would not fit
    (estimated on the ``meta`` device: the module itself there, else the plain zoo model it
    was built as; for a module of unknown layout, only the input itself is bounded)."""
    skeleton = module if device == torch.device("meta") else None
    arch = getattr(module, "hiddenite_arch", None)
    if skeleton is None and arch is not None and arch[0] in models.MODELS:
        info = models.model_info(arch[0])
        with torch.device("meta"):
            skeleton = info.builder(**{**info.defaults, **arch[1]})
    values = math.prod(shape) if skeleton is None else activation_values(skeleton, shape)
    check_activations(values, f"a forward pass of input shape {list(shape)}")


def zoo_workloads(
    name: str,
    density: float,
    *,
    codec: str = "entropy",
    input_shape: tuple[int, ...] | None = None,
    batch: int = 1,
    **kwargs: Any,
) -> list[LayerWorkload]:
    """Workloads of an untrained zoo network (``hiddenite.models``) with every conv/linear layer
    hidden at ``density``: a quick estimate without a trained mask.

    The plain network is built and traced on the ``meta`` device (no weights, no memory); mask
    bytes follow :func:`mask_bytes_for` for ``codec`` (``packed`` exact, ``entropy`` / ``rle`` the
    entropy bound); parameter bytes are 4 B per bias / BatchNorm value. ``input_shape`` is
    ``(C, H, W)`` or batch-first; default: the model's own input size.
    """
    info = models.model_info(name)
    models.check_arguments(name, **kwargs)
    if input_shape is None:
        shape: tuple[int, ...] = (batch, *models.default_input_shape(name, **kwargs))
    else:
        shape = tuple(int(v) for v in input_shape)
        if len(shape) == 3:
            shape = (batch, *shape)
    if not 0.0 < float(density) <= 1.0:
        raise WorkloadError(f"density: the kept fraction must be in (0, 1], got {density!r}")
    mask_bytes_for(codec, 8, 0.5)  # validates the codec name
    args = {**info.defaults, **kwargs}
    with torch.device("meta"):
        module = info.builder(**args)
    layers = workloads_from_module(module, shape)
    return [w.with_density(float(density), codec) for w in layers]
