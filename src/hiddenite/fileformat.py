"""The compact model file (``.hnn``): seeds, coded method parts, per-channel parameters.

A hidden network's frozen weights are regenerated from its seed, so the file stores only
what cannot be regenerated: the :class:`~hiddenite.SupermaskConfig` (seed, init, density,
method, ...), for a zoo model its architecture (name and keyword arguments), and per
supermask layer the *parts* its method declares (:mod:`hiddenite.methods`): symbol parts
coded with a mask codec (:mod:`hiddenite.codecs`), real-valued parts as floats; then the
per-channel parameters (batch-norm statistics and affine terms, biases).
``docs/model-file.md`` describes the layout byte by byte.

The container is safetensors (no pickle): coded parts are ``U8`` tensors, floats ``F32`` or
``F16``. The header metadata holds one JSON document under ``"hiddenite"`` and its sha256
under ``"hiddenite_sha256"``. In format versions 3 and 4 that document is a small
envelope, ``{"format", "format_version", "zlib"}``, whose ``zlib`` field is the base64 of the
zlib-compressed metadata document (the layers, their parts and the config): a ResNet-20's
header shrinks from 19 kB to 7 kB. The metadata holds the sha256 of the data section.
Version 4 adds two declarations to the metadata: the activation quantizers (layer, bits,
signedness, scale, zero point, observed range) and the per-layer operators (e.g. Mitchell's
multiplier), restored by :func:`load`; a model with neither is written as version 3. Version 2
files (the same metadata, uncompressed) and version 1 files (one mask per hidden layer, dense
weights) still load.

Python surface::

    save(model, path, arch=None, config=None, codec=None, param_dtype="float32")
    load(path, device="cpu", model=None) -> eval-mode nn.Module, outputs bit-identical
    read_header(path) -> ModelFileInfo   (header only: what ``hiddenite inspect`` prints)
    ModelFormatError                     (the one exception for a bad or hostile file)

Loading never unpickles or evaluates anything from the file. The header is parsed and
checked here, with size limits, before any tensor data is read; every field is type- and
range-checked; a zoo architecture is first laid out on the ``meta`` device (no memory) and
capped at ``max_weights`` weights; every part must be exactly what the layer's method
declares, decode to exactly its symbol counts, and pass the method's own check. Every
failure is a :class:`ModelFormatError`.
"""

from __future__ import annotations

import base64
import hashlib
import inspect as _inspect
import json
import math
import os
import re
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import codecs, models
from ._version import __version__
from .atomic import atomic_write, write_chunks
from .convert import (
    SupermaskConfig,
    can_materialize,
    materialize_,
    supermask_,
    unwrap_model,
    version_1_method,
)
from .errors import ConfigError, UserError
from .layers import SupermaskLayer
from .methods import LayerItem, MethodConfig, get_method, method_config
from .ops import OperatorChoice, accepts_operator, operator_choices, set_operator_choices_
from .prng import DEFAULT_LANES, PRNG_VERSION
from .quant import (
    ActQuantConfig,
    ActQuantizer,
    attach_quantizer_,
    input_quantizers,
    quantizer_of,
)
from .resources import LOAD_BYTES_PER_WEIGHT, ResourceError, check_available
from .storage import (
    FLOAT_BYTES,
    PARAM_DTYPES,
    StoredPart,
    decode_float,
    encode_layer,
    entropy_of_counts,
)
from .texttable import text_table
from .validate import check_json_depth, open_regular

FORMAT = "hiddenite-model"
FORMAT_VERSION = 4  # the newest; a model without quantizers or operators is written as 3
READ_VERSIONS = (1, 2, 3, 4)
SUFFIX = ".hnn"
META_KEY = "hiddenite"
META_SHA_KEY = "hiddenite_sha256"
MAX_HEADER_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_WEIGHTS = 1 << 28
# Sequential xorshift steps to regenerate every layer: sum over layers of ceil(n / lanes).
# 2**17 steps is about 1 s per stream in numpy; 2**28 weights at the default 4,096 lanes need
# 2**16. A file with fewer lanes (n_lanes = 1: one step per weight) is refused.
MAX_PRNG_STEPS = 1 << 17

_DTYPE_CODES = {"float32": "F32", "float16": "F16"}
_NP_DTYPES = {"U8": np.dtype("uint8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_ITEMSIZE = {code: dt.itemsize for code, dt in _NP_DTYPES.items()}
_MAX_DIMS = 8
_MAX_DIM = 1 << 40
_MAX_ENTRIES = 100_000
_MAX_NAME = 512
_MAX_PARTS = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_META_FIELDS = {
    "format",
    "format_version",
    "hiddenite_version",
    "arch",
    "supermask",
    "prng_version",
    "seed",
    "param_dtype",
    "layers",
    "params",
    "payload_sha256",
}
_META_FIELDS_V4 = _META_FIELDS | {"activations", "operators"}
_QUANT_FIELDS = {"layer", "config", "signed", "scale", "zero_point", "range"}
_OPERATOR_FIELDS = {"layer", "training", "inference"}
_F32_MAX = float(np.finfo(np.float32).max)
_LAYER_FIELDS_V1 = {
    "index",
    "name",
    "mode",
    "shape",
    "n",
    "kept",
    "density",
    "codec",
    "tensor",
    "bytes",
}
_LAYER_FIELDS = {"index", "name", "shape", "method", "density", "parts"}
_PART_FIELDS = {"name", "n", "alphabet", "codec", "tensor", "bytes", "counts"}
_PARAM_FIELDS = {"name", "tensor", "shape"}
_ENVELOPE_FIELDS = {"format", "format_version", "zlib"}
# Bounds on the zoo's keyword arguments (any other argument: small scalars only).
_KWARG_INT_BOUNDS = {
    "in_channels": (1, 4096),
    "image_size": (1, 16384),
    "num_classes": (1, 1_000_000),
}
_MAX_WIDTH_MULTIPLIER = 64.0
_MAX_HIDDEN_LAYERS = 64
_MAX_HIDDEN_UNITS = 1_000_000
_GENERIC_INT_BOUND = 1 << 16
UNEXPECTED = "unexpected error while reading the file"

__all__ = [
    "DEFAULT_MAX_WEIGHTS",
    "FORMAT",
    "FORMAT_VERSION",
    "PARAM_DTYPES",
    "SUFFIX",
    "LayerEntry",
    "ModelFileInfo",
    "ModelFormatError",
    "PartEntry",
    "load",
    "read_header",
    "save",
]


class ModelFormatError(UserError, ValueError):
    """A model file is missing, truncated, corrupt, inconsistent or hostile, or does not fit
    the module it is loaded into.

    The only exception :func:`load` and :func:`read_header` raise for a bad file; the message
    names the file and the problem.
    """


# --------------------------------------------------------------------------- value checks


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFormatError(f"{what} must be an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise ModelFormatError(f"{what} = {value} is out of range [{lo}, {hi}]")
    return value


def _str(value: Any, what: str, max_len: int = _MAX_NAME) -> str:
    if not isinstance(value, str):
        raise ModelFormatError(f"{what} must be a string, got {_show(value)}")
    if len(value) > max_len:
        raise ModelFormatError(f"{what} is longer than {max_len} characters")
    return value


def _num(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelFormatError(f"{what} must be a number, got {_show(value)}")
    if not math.isfinite(value):
        raise ModelFormatError(f"{what} must be finite, got {value}")
    return value


def _list(value: Any, what: str, max_len: int) -> list:
    if not isinstance(value, list):
        raise ModelFormatError(f"{what} must be a list, got {_show(value)}")
    if len(value) > max_len:
        raise ModelFormatError(f"{what} has {len(value)} entries, more than the limit {max_len}")
    return value


def _obj(value: Any, what: str, fields: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ModelFormatError(f"{what} must be a JSON object, got {_show(value)}")
    missing = sorted(fields - set(value))
    if missing:
        raise ModelFormatError(f"{what} lacks field(s) {', '.join(missing)}")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ModelFormatError(f"{what} has unknown field(s) {', '.join(map(_show, unknown))}")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    dims = _list(value, what, _MAX_DIMS)
    return tuple(_int(d, f"{what}[{i}]", 0, _MAX_DIM) for i, d in enumerate(dims))


def _json(text: str, what: str) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity, finite floats only."""

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                raise ModelFormatError(f"{what} has a duplicate key {_show(key)}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ModelFormatError(f"{what} holds {name}, which is not allowed")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ModelFormatError(f"{what} holds an out-of-range number {_show(text)}")
        return value

    check_json_depth(text, what, ModelFormatError)
    try:
        return json.loads(
            text, object_pairs_hook=pairs, parse_constant=constant, parse_float=number
        )
    except ModelFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{what} is not valid JSON ({_first(exc)})") from None


def _first(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- architecture


def _json_value(value: Any, what: str) -> Any:
    """``value`` as JSON (tuples become lists); only scalars and flat lists are allowed."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelFormatError(f"{what} must be finite, got {value}")
        return value
    if isinstance(value, list | tuple):
        out = []
        for i, item in enumerate(value):
            if isinstance(item, list | tuple | dict):
                raise ModelFormatError(f"{what}[{i}] must be a scalar, got {_show(item)}")
            out.append(_json_value(item, f"{what}[{i}]"))
        return out
    raise ModelFormatError(f"{what} must be a JSON scalar or list, got {_show(value)}")


def _check_kwarg(key: str, value: Any) -> None:
    what = f"architecture argument {key}"
    if key in _KWARG_INT_BOUNDS:
        _int(value, what, *_KWARG_INT_BOUNDS[key])
    elif key == "width":
        width = _num(value, what)
        if not 0 < width <= _MAX_WIDTH_MULTIPLIER:
            raise ModelFormatError(f"{what} = {width} is out of range (0, {_MAX_WIDTH_MULTIPLIER}]")
    elif key == "bn_affine":
        if not isinstance(value, bool):
            raise ModelFormatError(f"{what} must be true or false, got {_show(value)}")
    elif key == "hidden":
        units = _list(value, what, _MAX_HIDDEN_LAYERS)
        for i, u in enumerate(units):
            _int(u, f"{what}[{i}]", 1, _MAX_HIDDEN_UNITS)
    else:
        items = _list(value, what, 64) if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str):
                _str(item, what, 256)
            elif isinstance(item, float):
                _num(item, what)
            elif isinstance(item, int) and not isinstance(item, bool):
                _int(item, what, -_GENERIC_INT_BOUND, _GENERIC_INT_BOUND)
            elif item is not None and not isinstance(item, bool):
                raise ModelFormatError(f"{what} must hold JSON scalars, got {_show(item)}")


def _check_arch(name: Any, kwargs: Any) -> tuple[str, dict[str, Any]]:
    """Validate a (zoo name, keyword arguments) pair read from a file or given to save."""
    name = _str(name, "architecture name", 64)
    if name not in models.MODELS:
        raise ModelFormatError(
            f"unknown architecture {name!r}; this hiddenite knows {', '.join(models.MODELS)}"
        )
    if not isinstance(kwargs, dict):
        raise ModelFormatError(f"architecture kwargs must be a JSON object, got {_show(kwargs)}")
    allowed = set(_inspect.signature(models.MODELS[name].builder).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ModelFormatError(
            f"model {name!r} takes no argument(s) {', '.join(map(_show, unknown))}"
        )
    missing = sorted(allowed - set(kwargs))
    if missing:
        raise ModelFormatError(f"architecture kwargs lack {', '.join(missing)}")
    for key, value in kwargs.items():
        _check_kwarg(key, value)
    return name, kwargs


def _full_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of zoo model ``name``'s builder: its defaults, the zoo's, then ``kwargs``."""
    info = models.model_info(name)
    params = _inspect.signature(info.builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"model {name!r} takes no argument(s) {', '.join(unknown)}")
    full = {k: p.default for k, p in params.items() if p.default is not _inspect.Parameter.empty}
    full.update(info.defaults)
    full.update(kwargs)
    return {k: _json_value(v, f"architecture argument {k}") for k, v in sorted(full.items())}


# --------------------------------------------------------------------------- layers and parts


@dataclass(frozen=True)
class PartEntry:
    """One stored part of a layer, as the header lists it."""

    name: str
    n: int
    alphabet: int | None  # None: real values at the file's param_dtype
    codec: str | None  # the mask codec of a symbol part; None for a float part
    tensor: str
    bytes: int
    counts: tuple[int, ...] | None  # how often each symbol occurs (None for a float part)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "alphabet": self.alphabet,
            "codec": self.codec,
            "tensor": self.tensor,
            "bytes": self.bytes,
            "counts": None if self.counts is None else list(self.counts),
        }

    @property
    def entropy_bound_bits(self) -> float | None:
        """n times the empirical entropy of the symbols (None for a float part)."""
        if self.counts is None:
            return None
        return self.n * entropy_of_counts(self.counts)


@dataclass(frozen=True)
class LayerEntry:
    """One supermask layer of the file: geometry, method, density and stored parts."""

    index: int
    name: str
    shape: tuple[int, ...]
    config: MethodConfig
    density: float
    parts: tuple[PartEntry, ...]

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def symbol_bytes(self) -> int:
        return sum(p.bytes for p in self.parts if p.alphabet is not None)

    @property
    def float_bytes(self) -> int:
        return sum(p.bytes for p in self.parts if p.alphabet is None)

    @property
    def kept(self) -> int:
        """Weights the layer uses, from its method's declaration and the header's symbol
        counts (under a global scope each layer keeps its own share of the global count)."""
        counts = {p.name: p.counts for p in self.parts if p.counts is not None}
        return get_method(self.method).kept(self.shape, self.config, self.density, counts)

    @property
    def codec(self) -> str:
        """The codecs of the layer's symbol parts joined by ``+`` (``-`` when it has none)."""
        names = [p.codec for p in self.parts if p.codec is not None]
        return "+".join(dict.fromkeys(names)) or "-"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "shape": list(self.shape),
            "method": self.config.to_dict(),
            "density": self.density,
            "parts": [p.to_dict() for p in self.parts],
        }


def _check_part(part: Any, what: str, param_dtype: str) -> PartEntry:
    _obj(part, what, _PART_FIELDS)
    name = _str(part["name"], f"{what} name", 64)
    what = f"{what} ({name})"
    n = _int(part["n"], f"{what} n", 0, _MAX_DIM)
    alphabet = part["alphabet"]
    nbytes = _int(part["bytes"], f"{what} bytes", 0, _MAX_DIM * 8)
    tensor = _str(part["tensor"], f"{what} tensor", _MAX_NAME + 80)
    if alphabet is None:
        if part["codec"] is not None or part["counts"] is not None:
            raise ModelFormatError(f"{what}: a float part has no codec and no counts")
        if nbytes != n * FLOAT_BYTES[param_dtype]:
            raise ModelFormatError(f"{what}: {nbytes} bytes do not hold {n} {param_dtype} values")
        return PartEntry(name, n, None, None, tensor, nbytes, None)
    alphabet = _int(alphabet, f"{what} alphabet", 2, 256)
    codec = part["codec"]
    if codec not in codecs.CODECS or not codecs.supports(codec, alphabet):
        raise ModelFormatError(
            f"{what}: {_show(codec)} is not a mask codec for {alphabet} symbols; known: "
            f"{', '.join(c for c in codecs.CODECS if codecs.supports(c, alphabet))}"
        )
    if nbytes > codecs.max_bytes(codec, n, alphabet):
        raise ModelFormatError(f"{what}: {nbytes} bytes is too many for {n} symbols ({codec})")
    counts = tuple(
        _int(c, f"{what} counts[{i}]", 0, n)
        for i, c in enumerate(_list(part["counts"], f"{what} counts", alphabet))
    )
    if len(counts) != alphabet or sum(counts) != n:
        raise ModelFormatError(f"{what}: counts must be {alphabet} numbers summing to n = {n}")
    return PartEntry(name, n, alphabet, codec, tensor, nbytes, counts)


def _method_config(spec: dict, configs: dict[str, MethodConfig]) -> MethodConfig:
    """:func:`method_config` of ``spec``, shared by the specs of one JSON text in ``configs``
    (a config is frozen; equal texts are equal JSON values, so they build equal configs)."""
    key = json.dumps(spec, sort_keys=True)
    config = configs.get(key)
    if config is None:
        config = configs[key] = method_config(spec)
    return config


def _check_layer(
    layer: Any, i: int, param_dtype: str, configs: dict[str, MethodConfig]
) -> LayerEntry:
    what = f"layers[{i}]"
    _obj(layer, what, _LAYER_FIELDS)
    _int(layer["index"], f"{what} index", 0, 2**32 - 1)
    name = _str(layer["name"], f"{what} name")
    what = f"layer {name!r}"
    shape = _shape(layer["shape"], f"{what} shape")
    if not isinstance(layer["method"], dict):
        raise ModelFormatError(f"{what}: method must be a JSON object")
    try:
        config = _method_config(layer["method"], configs)
    except (ConfigError, TypeError) as exc:
        raise ModelFormatError(f"{what}: method config is invalid ({exc})") from None
    density = _num(layer["density"], f"{what} density")
    if not 0.0 < density <= 1.0:
        raise ModelFormatError(f"{what}: density {density} is not in (0, 1]")
    raw = _list(layer["parts"], f"{what} parts", _MAX_PARTS)
    parts = tuple(_check_part(p, f"{what} part {j}", param_dtype) for j, p in enumerate(raw))
    try:
        declared = get_method(config.method).parts(shape, config, density)
    except (ConfigError, ValueError) as exc:
        raise ModelFormatError(f"{what}: {exc}") from None
    have = [(p.name, p.n, p.alphabet) for p in parts]
    want = [(p.name, p.n, p.alphabet) for p in declared]
    if have != want:
        raise ModelFormatError(
            f"{what}: parts {have} are not what method {config.method!r} stores for shape "
            f"{list(shape)}: {want}"
        )
    for p in parts:
        if p.tensor != f"part.{name}.{p.name}":
            raise ModelFormatError(
                f"{what}: tensor of part {p.name!r} must be 'part.{name}.{p.name}'"
            )
    return LayerEntry(layer["index"], name, shape, config, float(density), parts)


def _check_layer_v1(layer: Any, i: int, param_dtype: str, config: SupermaskConfig) -> LayerEntry:
    """A version 1 layer (``mode`` hidden/dense, one mask or dense weight) as a v2 entry."""
    what = f"layers[{i}]"
    _obj(layer, what, _LAYER_FIELDS_V1)
    _int(layer["index"], f"{what} index", i, i)
    name = _str(layer["name"], f"{what} name")
    what = f"layer {name!r}"
    try:
        stored_method = version_1_method(layer["mode"])
    except ConfigError:
        raise ModelFormatError(
            f"{what} mode must be 'hidden' or 'dense', got {_show(layer['mode'])}"
        ) from None
    shape = _shape(layer["shape"], f"{what} shape")
    n = _int(layer["n"], f"{what} n", 0, _MAX_DIM)
    if n != math.prod(shape):
        raise ModelFormatError(f"{what}: n = {n} is not the product of its shape {list(shape)}")
    kept = _int(layer["kept"], f"{what} kept", 0, n)
    density = _num(layer["density"], f"{what} density")
    expected = kept / n if n else 0.0
    if abs(density - expected) > 1e-9:
        raise ModelFormatError(f"{what}: density {density} is not kept/n = {expected}")
    nbytes = _int(layer["bytes"], f"{what} bytes", 0, _MAX_DIM * 4)
    codec = layer["codec"]
    if not get_method(stored_method.method).trains_weights:  # a mask over frozen weights
        if codec not in codecs.CODECS:
            raise ModelFormatError(
                f"{what}: unknown mask codec {_show(codec)}; known: {', '.join(codecs.CODECS)}"
            )
        if layer["tensor"] != f"mask.{name}":
            raise ModelFormatError(f"{what}: tensor must be 'mask.{name}'")
        if nbytes > codecs.max_bytes(codec, n):
            raise ModelFormatError(
                f"{what}: {nbytes} mask bytes is too many for {n} bits ({codec})"
            )
        part = PartEntry("mask", n, 2, codec, layer["tensor"], nbytes, (n - kept, kept))
        return LayerEntry(i, name, shape, config.method, config.density, (part,))
    if codec != param_dtype:
        raise ModelFormatError(f"{what}: a dense layer's codec must be {param_dtype!r}")
    if layer["tensor"] != f"weight.{name}":
        raise ModelFormatError(f"{what}: tensor must be 'weight.{name}'")
    if kept != n:
        raise ModelFormatError(f"{what}: a dense layer keeps all its weights")
    if nbytes != n * FLOAT_BYTES[param_dtype]:
        raise ModelFormatError(f"{what}: {nbytes} bytes do not hold {n} {param_dtype} weights")
    part = PartEntry("weight", n, None, None, layer["tensor"], nbytes, None)
    return LayerEntry(i, name, shape, stored_method, 1.0, (part,))


# --------------------------------------------------------------------------- precision (v4)


@dataclass(frozen=True)
class QuantizerEntry:
    """An activation quantizer the file declares: on the input of layer ``layer`` (a
    ``Conv2d`` / ``Linear``), ``config.bits`` bits, frozen at ``scale`` (float32) with zero point
    0, signed or unsigned, after observing the range ``lo``..``hi``."""

    layer: str
    config: ActQuantConfig
    signed: bool
    scale: float
    zero_point: int
    lo: float
    hi: float

    @property
    def bits(self) -> int:
        return self.config.bits

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "config": self.config.to_dict(),
            "signed": self.signed,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "range": [self.lo, self.hi],
        }


@dataclass(frozen=True)
class OperatorEntry:
    """The operators (:mod:`hiddenite.ops`) layer ``layer`` multiplies with in each phase."""

    layer: str
    choice: OperatorChoice

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "training": self.choice.training,
            "inference": self.choice.inference,
        }


def _f32(value: Any, what: str) -> float:
    """A finite number exactly representable as float32."""
    value = float(_num(value, what))
    if abs(value) > _F32_MAX or float(np.float32(value)) != value:
        raise ModelFormatError(f"{what} = {value!r} is not a float32 value")
    return value


def _check_quantizer(raw: Any, i: int) -> QuantizerEntry:
    what = f"activations[{i}]"
    _obj(raw, what, _QUANT_FIELDS)
    layer = _str(raw["layer"], f"{what} layer")
    what = f"activation quantizer of layer {layer!r}"
    if not isinstance(raw["config"], dict):
        raise ModelFormatError(f"{what}: config must be a JSON object, got {_show(raw['config'])}")
    try:
        config = ActQuantConfig.from_dict(raw["config"])
    except (ConfigError, TypeError) as exc:
        raise ModelFormatError(f"{what}: config is invalid ({_first(exc)})") from None
    signed = raw["signed"]
    if not isinstance(signed, bool):
        raise ModelFormatError(f"{what}: signed must be true or false, got {_show(signed)}")
    if config.signed != "auto" and signed != (config.signed == "signed"):
        raise ModelFormatError(f"{what}: signed is {signed}, its config says {config.signed!r}")
    scale = _f32(raw["scale"], f"{what} scale")
    if not scale > 0:
        raise ModelFormatError(f"{what}: scale {scale} must be > 0")
    _int(raw["zero_point"], f"{what} zero_point", 0, 0)
    bounds = _list(raw["range"], f"{what} range", 2)
    if len(bounds) != 2:
        raise ModelFormatError(f"{what}: range must be [lo, hi]")
    lo, hi = (_f32(v, f"{what} range") for v in bounds)
    if lo > hi:
        raise ModelFormatError(f"{what}: range [{lo}, {hi}] is empty")
    return QuantizerEntry(layer, config, signed, scale, 0, lo, hi)


def _check_operator(raw: Any, i: int) -> OperatorEntry:
    what = f"operators[{i}]"
    _obj(raw, what, _OPERATOR_FIELDS)
    layer = _str(raw["layer"], f"{what} layer")
    what = f"operators of layer {layer!r}"
    names = [_str(raw[phase], f"{what} {phase}", 64) for phase in ("training", "inference")]
    try:
        choice = OperatorChoice(*names)
    except UserError as exc:
        raise ModelFormatError(f"{what}: {_first(exc)}") from None
    if choice == OperatorChoice():
        raise ModelFormatError(f"{what}: exact in both phases is the default; leave it out")
    return OperatorEntry(layer, choice)


def _parse_precision(
    meta: dict[str, Any],
) -> tuple[tuple[QuantizerEntry, ...], tuple[OperatorEntry, ...]]:
    """The activation quantizers and operators a version 4 file declares (none before)."""
    if meta["format_version"] < 4:
        return (), ()
    quants = tuple(
        _check_quantizer(q, i)
        for i, q in enumerate(_list(meta["activations"], "activations", _MAX_ENTRIES))
    )
    ops = tuple(
        _check_operator(o, i)
        for i, o in enumerate(_list(meta["operators"], "operators", _MAX_ENTRIES))
    )
    for kind, entries in (("activation quantizer", quants), ("operator", ops)):
        seen = set()
        for e in entries:
            if e.layer in seen:
                raise ModelFormatError(f"layer {e.layer!r} has two {kind} entries")
            seen.add(e.layer)
    return quants, ops


def _quantizer_entries(model: nn.Module) -> tuple[QuantizerEntry, ...]:
    """What ``model``'s frozen activation quantizers declare (ValueError if one is not)."""
    out = []
    for layer, q in input_quantizers(model):
        if not q.frozen:
            raise ValueError(
                f"activation quantizer of layer {layer!r} is still observing: run "
                "hiddenite.quant.calibrate(model, batches) before saving"
            )
        out.append(
            QuantizerEntry(
                layer,
                q.config,
                bool(q.signed),
                float(q.scale.float()),  # the header holds float32 values exactly
                0,
                float(q.lo.float()),
                float(q.hi.float()),
            )
        )
    return tuple(out)


def _fit_precision(layout: _Layout, info: ModelFileInfo, what: str) -> None:
    """The declared quantizers and operators sit on layers ``layout`` has (and a module that
    already has quantizers has them exactly where the file declares them)."""
    for kind, entries in (
        ("an activation quantizer", info.quantizers),
        ("operators", info.operators),
    ):
        for e in entries:
            if e.layer not in layout.sites:
                raise ModelFormatError(
                    f"the file declares {kind} on layer {e.layer!r}, which is not a Conv2d / "
                    f"Linear layer of {what}"
                )
    for e in info.operators:
        if not layout.sites[e.layer]:
            raise ModelFormatError(
                f"the file declares operators on layer {e.layer!r}, whose forward in {what} "
                "takes none"
            )
    declared = {e.layer for e in info.quantizers}
    if layout.quantized and info.format_version >= 4 and layout.quantized != declared:
        raise ModelFormatError(
            f"{what} has activation quantizers on {sorted(layout.quantized)[:3]}, the file "
            f"declares them on {sorted(declared)[:3]}"
        )


@torch.no_grad()
def _restore_precision(model: nn.Module, info: ModelFileInfo) -> None:
    """Attach (or refill) the declared quantizers and set the declared operators."""
    if info.format_version < 4:
        return
    modules = dict(model.named_modules())
    for e in info.quantizers:
        module = modules[e.layer]
        q = quantizer_of(module)
        if q is None:
            q = attach_quantizer_(module, e.config, e.layer)
        q.config = e.config
        q.set_frozen(signed=e.signed, scale=e.scale, lo=e.lo, hi=e.hi)
    choices = {n: OperatorChoice() for n, m in modules.items() if n and accepts_operator(m)}
    choices.update({e.layer: e.choice for e in info.operators})
    set_operator_choices_(model, choices)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    """What a converted module holds, read from the module alone (works on ``meta``)."""

    layers: tuple[tuple[str, SupermaskLayer], ...]
    params: dict[str, tuple[int, ...]]
    sites: dict[str, bool]  # every Conv2d / Linear: whether it takes an operator
    quantized: frozenset[str]  # the Conv2d / Linear layers that have an activation quantizer

    @property
    def weights(self) -> int:
        return sum(layer.weight.numel() for _, layer in self.layers)


def _supermask_layers(model: nn.Module) -> list[tuple[str, SupermaskLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SupermaskLayer)]


def _is_counter(key: str) -> bool:
    return key.rpartition(".")[2] == "num_batches_tracked"


def _per_channel(model: nn.Module, declared: bool = True) -> dict[str, torch.Tensor]:
    """The model's stored per-channel tensors: its state minus what the methods export as
    parts, the batch-norm counters and (``declared``: format version 4) the activation
    quantizers' buffers, which the header declares. Version 1-3 files stored those buffers
    as per-channel tensors."""
    skip = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, SupermaskLayer):
            skip.update(f"{name}.{key}" for key in module.method.owned_state(module))
        if declared and isinstance(module, ActQuantizer):
            skip.update(f"{name}.{key}" for key, _ in module.named_buffers())
    return {
        key: value
        for key, value in model.state_dict(keep_vars=True).items()
        if key not in skip and not _is_counter(key)
    }


def _layout(model: nn.Module, declared: bool = True) -> _Layout:
    layers = _supermask_layers(model)
    params = {k: tuple(v.shape) for k, v in _per_channel(model, declared).items()}
    convs = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d | nn.Linear)]
    sites = {n: accepts_operator(m) for n, m in convs}
    quantized = frozenset(n for n, m in convs if quantizer_of(m) is not None)
    return _Layout(tuple(layers), params, sites, quantized)


def _skeleton(name: str, kwargs: dict[str, Any], config: SupermaskConfig) -> nn.Module:
    """Zoo model ``name`` converted by ``config`` on the meta device (no memory, no PRNG)."""
    try:
        with torch.device("meta"):
            return models.create(name, config, init_state=False, **kwargs)
    except (ConfigError, ValueError) as exc:  # the method's own checks: the config is bad
        raise ModelFormatError(
            f"architecture {name!r} cannot be converted ({_first(exc)})"
        ) from None
    except Exception as exc:  # the builder's own checks (any type): the arguments are bad
        raise ModelFormatError(f"architecture {name!r} cannot be built ({_first(exc)})") from None


def _setting_mismatch(layer: SupermaskLayer, config: SupermaskConfig) -> str | None:
    for field, have, want in (
        ("seed", layer.seed, config.seed),
        ("init", layer.init, config.init),
        ("gain", layer.gain, config.gain),
        ("n_lanes", layer.n_lanes, config.n_lanes),
        ("scale_by_density", layer.scale_by_density, config.scale_by_density),
    ):
        if have != want:
            return f"has {field} {have!r}, the file's config says {want!r}"
    return None


def _fit(layout: _Layout, entries: tuple[LayerEntry, ...], config: SupermaskConfig) -> None:
    """Raise ModelFormatError naming the first layer of ``layout`` that the file does not fit."""
    if len(layout.layers) != len(entries):
        raise ModelFormatError(
            f"the file lists {len(entries)} supermask layers, the module has {len(layout.layers)}"
        )
    for (name, layer), entry in zip(layout.layers, entries, strict=True):
        what = f"layer {entry.index} {entry.name!r}"
        shape = tuple(layer.weight.shape)
        if name != entry.name:
            raise ModelFormatError(f"{what}: the module has {name!r} in its place")
        if shape != entry.shape:
            raise ModelFormatError(
                f"{what} has shape {list(entry.shape)} in the file, {list(shape)} in the module"
            )
        if layer.method_config != entry.config:
            raise ModelFormatError(
                f"{what} uses method {entry.config.describe()} in the file, "
                f"{layer.method_config.describe()} in the module"
            )
        if layer.layer_index != entry.index or layer.density != entry.density:
            raise ModelFormatError(
                f"{what} has layer index {entry.index} and density {entry.density} in the file, "
                f"{layer.layer_index} and {layer.density} in the module"
            )
        problem = _setting_mismatch(layer, config)
        if problem:
            raise ModelFormatError(f"{what} {problem}")


def _fit_params(layout: _Layout, params: dict[str, tuple[int, ...]], what: str) -> None:
    if params != layout.params:
        extra = sorted(set(params) - set(layout.params))
        lacking = sorted(set(layout.params) - set(params))
        differ = sorted(
            k for k in set(params) & set(layout.params) if params[k] != layout.params[k]
        )
        raise ModelFormatError(
            f"per-channel tensors do not fit {what} (unexpected {extra[:3]}, missing "
            f"{lacking[:3]}, other shape {differ[:3]})"
        )


# --------------------------------------------------------------------------- writing


def _hiddenite_version() -> str:
    return __version__


def _write_all(fh, data: bytes) -> None:
    write_chunks(fh, data)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`hiddenite.atomic.atomic_write`."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)

    atomic_write(path, write)


def _infer_config(model: nn.Module) -> SupermaskConfig:
    """The SupermaskConfig the model's layers were converted with (the same for all)."""
    layers = [m for _, m in _supermask_layers(model)]
    if not layers:
        raise ValueError("the model has no supermask layers: convert it with supermask_ first")
    configs = {layer.conversion for layer in layers if layer.conversion is not None}
    if len(configs) != 1 or any(layer.conversion is None for layer in layers):
        raise ValueError(
            "the model's supermask layers were not all converted by one supermask_ call: "
            "pass config=SupermaskConfig(...) to save"
        )
    return configs.pop()


def _float_bytes(tensor: torch.Tensor, param_dtype: str, what: str) -> bytes:
    if not tensor.is_floating_point():
        raise ValueError(f"{what} has dtype {tensor.dtype}; the model file stores float tensors")
    dtype = torch.float32 if param_dtype == "float32" else torch.float16
    array = tensor.detach().to(device="cpu", dtype=dtype).contiguous().numpy()
    return array.astype(_NP_DTYPES[_DTYPE_CODES[param_dtype]], copy=False).tobytes()


def _layer_entry(name: str, layer: SupermaskLayer, stored: list[StoredPart]) -> LayerEntry:
    parts = tuple(
        PartEntry(
            s.part.name,
            s.part.n,
            s.part.alphabet,
            s.codec,
            f"part.{name}.{s.part.name}",
            s.nbytes,
            s.counts,
        )
        for s in stored
    )
    shape = tuple(layer.weight.shape)
    return LayerEntry(layer.layer_index, name, shape, layer.method_config, layer.density, parts)


@torch.no_grad()
def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    arch: tuple[str, dict[str, Any]] | None = None,
    config: SupermaskConfig | None = None,
    codec: str | None = None,
    param_dtype: str = "float32",
) -> ModelFileInfo:
    """Write a converted ``model`` to ``path`` atomically; return its header.

    model: any module converted with :func:`hiddenite.supermask_` (a DDP or DataParallel
      wrapper is unwrapped).
    arch: ``(zoo name, keyword arguments)`` when the model is a zoo model; None reads
      ``model.hiddenite_arch`` (set by :func:`hiddenite.models.create`), else the file holds a
      user-built module and :func:`load` needs ``model=`` to rebuild it.
    config: its :class:`~hiddenite.SupermaskConfig` (None: the one its layers were converted
      with).
    codec: a mask codec for every symbol part (one that cannot code a part's alphabet falls
      back to the smallest that can); None: the smallest per part.
    param_dtype: ``"float32"`` (outputs after :func:`load` are bit-identical) or ``"float16"``
      (per-channel parameters and float parts rounded to half precision: smaller, not exact).

    A zoo model must be exactly ``models.create(name, config, **kwargs)`` with learned state:
    anything else raises ValueError, so every file written can be loaded.
    """
    model = unwrap_model(model)
    if arch is None:
        arch = getattr(model, "hiddenite_arch", None)
    if arch is not None and not (
        isinstance(arch, tuple | list) and len(arch) == 2 and isinstance(arch[1], dict)
    ):
        raise TypeError(f"arch must be a (name, kwargs dict) pair, got {_show(arch)}")
    if param_dtype not in PARAM_DTYPES:
        raise ValueError(
            f"param_dtype must be one of {', '.join(PARAM_DTYPES)}, got {param_dtype!r}"
        )
    if codec is not None and codec not in codecs.CODECS:
        raise ValueError(f"unknown mask codec {codec!r}; valid codecs: {', '.join(codecs.CODECS)}")
    if config is None:
        config = _infer_config(model)
    if not isinstance(config, SupermaskConfig):
        raise TypeError(f"config must be a SupermaskConfig, got {type(config).__name__}")
    layers = _supermask_layers(model)
    if not layers:
        raise ValueError("the model has no supermask layers: convert it with supermask_ first")
    stored = [encode_layer(layer, codec, param_dtype) for _, layer in layers]
    entries = tuple(
        _layer_entry(name, layer, parts)
        for (name, layer), parts in zip(layers, stored, strict=True)
    )
    _check_lanes(config, entries)
    layout = _layout(model)
    quant_entries = _quantizer_entries(model)
    operator_entries = tuple(OperatorEntry(n, c) for n, c in operator_choices(model).items())
    version = 4 if quant_entries or operator_entries else 3
    arch_meta = None
    try:
        if arch is not None:
            name = arch[0]
            kwargs = _full_kwargs(name, dict(arch[1]))
            _check_arch(name, kwargs)
            skeleton = _layout(_skeleton(name, kwargs, config))
            _fit(skeleton, entries, config)
            _fit_params(skeleton, layout.params, f"architecture {name!r}")
            for e in (*quant_entries, *operator_entries):
                if e.layer not in skeleton.sites:
                    raise ModelFormatError(
                        f"layer {e.layer!r} is not a Conv2d / Linear of architecture {name!r}"
                    )
            arch_meta = {"name": name, "kwargs": kwargs}
        _fit(layout, entries, config)
        groups: dict[str, list[LayerItem]] = {}
        for entry, (_, layer) in zip(entries, layers, strict=True):
            arrays = layer.method.export(layer)
            groups.setdefault(entry.method, []).append(
                LayerItem(entry.name, entry.shape, entry.config, entry.density, arrays)
            )
        for method_name, items in groups.items():
            get_method(method_name).check(items)
    except ModelFormatError as exc:
        raise ValueError(f"the model cannot be saved so that it loads again: {exc}") from None

    code = _DTYPE_CODES[param_dtype]
    floats: list[tuple[str, str, tuple[int, ...], bytes]] = []
    coded: list[tuple[str, str, tuple[int, ...], bytes]] = []
    params_meta = []
    for key, value in _per_channel(model).items():
        tensor_key = f"param.{key}"
        shape = tuple(value.shape)
        floats.append((tensor_key, code, shape, _float_bytes(value, param_dtype, key)))
        params_meta.append({"name": key, "tensor": tensor_key, "shape": list(shape)})
    part_floats = []
    for entry, parts in zip(entries, stored, strict=True):
        for pe, s in zip(entry.parts, parts, strict=True):
            if pe.alphabet is None:
                part_floats.append((pe.tensor, code, (pe.n,), s.data))
            else:
                coded.append((pe.tensor, "U8", (pe.bytes,), s.data))
    meta = {
        "format": FORMAT,
        "format_version": version,
        "hiddenite_version": _hiddenite_version(),
        "arch": arch_meta,
        "supermask": config.to_dict(),
        "prng_version": PRNG_VERSION,
        "seed": config.seed,
        "param_dtype": param_dtype,
        "layers": [e.to_dict() for e in entries],
        "params": params_meta,
    }
    if version >= 4:
        meta["activations"] = [e.to_dict() for e in quant_entries]
        meta["operators"] = [e.to_dict() for e in operator_entries]
    blob = _container(meta, floats + part_floats + coded)
    path = Path(path)
    _atomic_write(path, blob)
    return _parse(blob[: 8 + int.from_bytes(blob[:8], "little")], len(blob), str(path))


def _envelope(meta_json: str, version: int) -> str:
    """The version 3 / 4 ``hiddenite`` document: ``meta_json`` zlib-compressed, base64,
    wrapped.

    Deterministic: zlib level 9 of the same text gives the same bytes.
    """
    packed = base64.b64encode(zlib.compress(meta_json.encode("ascii"), 9)).decode("ascii")
    envelope = {"format": FORMAT, "format_version": version, "zlib": packed}
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"))


def _open_envelope(envelope: dict[str, Any]) -> str:
    """The metadata text inside a version 3 envelope (decompression bounded)."""
    _obj(envelope, "hiddenite metadata envelope", _ENVELOPE_FIELDS)
    packed = _str(envelope["zlib"], "metadata zlib field", MAX_HEADER_BYTES)
    try:
        raw = base64.b64decode(packed.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ModelFormatError("metadata zlib field is not base64") from None
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, MAX_HEADER_BYTES)
    except zlib.error as exc:
        raise ModelFormatError(f"metadata zlib field does not decompress ({exc})") from None
    if inflater.unconsumed_tail:
        raise ModelFormatError(
            f"metadata decompresses to more than the {MAX_HEADER_BYTES}-byte header limit"
        )
    if not inflater.eof or inflater.unused_data:
        raise ModelFormatError("metadata zlib stream is truncated or followed by extra bytes")
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise ModelFormatError("compressed metadata is not ASCII JSON") from None


def _container(
    meta: dict[str, Any], tensors: list[tuple[str, str, tuple[int, ...], bytes]]
) -> bytes:
    """The file bytes: safetensors container of ``tensors`` (key, dtype, shape, data) in order.

    Adds ``payload_sha256`` (sha256 of the data section) to ``meta``. Deterministic: sorted
    keys, compact JSON, the header padded with spaces to a multiple of 8 bytes.
    """
    payload = b"".join(data for *_, data in tensors)
    meta = {**meta, "payload_sha256": _sha256(payload)}
    meta_json = _envelope(
        json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False),
        meta["format_version"],
    )
    header: dict[str, Any] = {
        "__metadata__": {META_KEY: meta_json, META_SHA_KEY: _sha256(meta_json.encode("utf-8"))}
    }
    offset = 0
    for key, dtype, shape, data in tensors:
        header[key] = {
            "data_offsets": [offset, offset + len(data)],
            "dtype": dtype,
            "shape": list(shape),
        }
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    raw = text.encode("ascii")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + payload


# --------------------------------------------------------------------------- reading


def _parse_meta(
    metadata: dict[str, str],
) -> tuple[dict[str, Any], SupermaskConfig, tuple[LayerEntry, ...]]:
    """Check the hiddenite metadata document: format, version, checksum, every field."""
    text = metadata[META_KEY]
    meta = _json(text, "hiddenite metadata")
    if not isinstance(meta, dict):
        raise ModelFormatError("hiddenite metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ModelFormatError(
            f"not a hiddenite model file (format {_show(meta.get('format'))}, expected {FORMAT!r})"
        )
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelFormatError(f"format_version must be an integer, got {_show(version)}")
    if version not in READ_VERSIONS:
        raise ModelFormatError(
            f"format version {version} is not supported (this hiddenite reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}"
            f"{'; upgrade hiddenite' if version > FORMAT_VERSION else ''})"
        )
    if _sha256(text.encode("utf-8")) != metadata[META_SHA_KEY]:
        raise ModelFormatError(
            "metadata checksum mismatch (hiddenite_sha256): the header is corrupted or was edited"
        )
    if version >= 3:
        meta = _json(_open_envelope(meta), "hiddenite metadata")
        if not isinstance(meta, dict):
            raise ModelFormatError("hiddenite metadata is not a JSON object")
        if meta.get("format") != FORMAT or meta.get("format_version") != version:
            raise ModelFormatError(
                f"compressed metadata names format {_show(meta.get('format'))} version "
                f"{_show(meta.get('format_version'))}, its envelope {FORMAT!r} version {version}"
            )
    _obj(meta, "hiddenite metadata", _META_FIELDS_V4 if version >= 4 else _META_FIELDS)
    _str(meta["hiddenite_version"], "hiddenite_version", 64)
    if meta["arch"] is not None or version == 1:
        arch = _obj(meta["arch"], "arch", {"name", "kwargs"})
        _check_arch(arch["name"], arch["kwargs"])
    if not isinstance(meta["supermask"], dict):
        raise ModelFormatError(f"supermask must be a JSON object, got {_show(meta['supermask'])}")
    try:
        config = SupermaskConfig.from_dict(meta["supermask"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"supermask config is invalid ({exc})") from None
    prng = _int(meta["prng_version"], "prng_version", 0, 1 << 31)
    if prng != PRNG_VERSION or config.prng_version != prng:
        raise ModelFormatError(
            f"PRNG version {prng} is not supported (this hiddenite regenerates version "
            f"{PRNG_VERSION})"
        )
    if _int(meta["seed"], "seed", 0, 2**64 - 1) != config.seed:
        raise ModelFormatError(f"seed {meta['seed']} differs from the supermask config's")
    param_dtype = meta["param_dtype"]
    if param_dtype not in PARAM_DTYPES:
        raise ModelFormatError(
            f"param_dtype {_show(param_dtype)} is not one of {', '.join(PARAM_DTYPES)}"
        )
    sha = _str(meta["payload_sha256"], "payload_sha256", 64)
    if not _HEX64.fullmatch(sha):
        raise ModelFormatError("payload_sha256 is not 64 lowercase hex digits")
    raw_layers = _list(meta["layers"], "layers", _MAX_ENTRIES)
    if not raw_layers:
        raise ModelFormatError("the file lists no layers")
    if version == 1:
        layers = tuple(_check_layer_v1(x, i, param_dtype, config) for i, x in enumerate(raw_layers))
    else:
        configs: dict[str, MethodConfig] = {}  # layers sharing one method config build it once
        layers = tuple(_check_layer(x, i, param_dtype, configs) for i, x in enumerate(raw_layers))
    _check_lanes(config, layers)
    names = set()
    for layer in layers:
        if layer.name in names:
            raise ModelFormatError(f"layer name {layer.name!r} appears twice")
        names.add(layer.name)
    params = _list(meta["params"], "params", _MAX_ENTRIES)
    seen = set()
    for i, param in enumerate(params):
        what = f"params[{i}]"
        _obj(param, what, _PARAM_FIELDS)
        name = _str(param["name"], f"{what} name")
        if param["tensor"] != f"param.{name}":
            raise ModelFormatError(f"{what} tensor must be 'param.{name}'")
        _shape(param["shape"], f"{what} shape")
        if name in seen:
            raise ModelFormatError(f"per-channel tensor {name!r} appears twice")
        seen.add(name)
    return meta, config, layers


def _check_lanes(config: SupermaskConfig, layers: tuple[LayerEntry, ...]) -> None:
    """Bound the sequential work of regenerating the weights (see ``MAX_PRNG_STEPS``)."""
    steps = sum(-(-e.n // min(config.n_lanes, e.n)) for e in layers if e.n)
    if steps > MAX_PRNG_STEPS:
        raise ModelFormatError(
            f"n_lanes = {config.n_lanes} makes regenerating the weights take {steps:,} "
            f"sequential PRNG steps, more than the limit of {MAX_PRNG_STEPS:,}; use more lanes "
            f"(default {DEFAULT_LANES})"
        )


def _expected_tensors(
    meta: dict[str, Any], layers: tuple[LayerEntry, ...]
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(key, dtype, shape) in data-section order.

    Version 2: the params, then every float part (layer order), then every coded part.
    Version 1: the params, then dense weights, then masks (the same rule: floats first).
    """
    code = _DTYPE_CODES[meta["param_dtype"]]
    out = [(p["tensor"], code, tuple(p["shape"])) for p in meta["params"]]
    floats, coded = [], []
    for layer in layers:
        for part in layer.parts:
            if part.alphabet is None:
                shape = layer.shape if meta["format_version"] == 1 else (part.n,)
                floats.append((part.tensor, code, shape))
            else:
                coded.append((part.tensor, "U8", (part.bytes,)))
    return out + floats + coded


def _parse(head: bytes, file_bytes: int, path: str) -> ModelFileInfo:
    entries, metadata = _parse_container(head, file_bytes)
    meta, config, layers = _parse_meta(metadata)
    quants, operators = _parse_precision(meta)
    expected = _expected_tensors(meta, layers)
    keys = {key for key, _, _ in expected}
    if len(keys) != len(expected):
        raise ModelFormatError("two layers, parts or parameters share a tensor name")
    if keys != set(entries):
        extra = sorted(set(entries) - keys)
        lacking = sorted(keys - set(entries))
        raise ModelFormatError(
            f"the container's tensors do not match the metadata "
            f"(unexpected {extra[:3]}, missing {lacking[:3]})"
        )
    position = 0
    for key, dtype, shape in expected:
        e = entries[key]
        if e.dtype != dtype or e.shape != shape:
            raise ModelFormatError(
                f"tensor {key!r} is {e.dtype} {list(e.shape)}, the metadata says {dtype} "
                f"{list(shape)}"
            )
        if e.begin != position:
            raise ModelFormatError(f"tensor {key!r} is not at its place in the data section")
        position = e.end
    return ModelFileInfo(
        path=path,
        file_bytes=file_bytes,
        header_bytes=len(head),
        meta=meta,
        config=config,
        entries=layers,
        tensors=entries,
        quantizers=quants,
        operators=operators,
    )


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the container: safetensors dtype code, shape, byte range in the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class ModelFileInfo:
    """A model file's validated header (no tensor data read); sizes are in bytes."""

    path: str
    file_bytes: int
    header_bytes: int
    meta: dict[str, Any]
    config: SupermaskConfig
    entries: tuple[LayerEntry, ...]
    tensors: dict[str, TensorEntry]
    quantizers: tuple[QuantizerEntry, ...] = ()  # version 4: the declared activation quantizers
    operators: tuple[OperatorEntry, ...] = ()  # version 4: the declared non-exact operators

    @property
    def format_version(self) -> int:
        return self.meta["format_version"]

    @property
    def arch(self) -> tuple[str, dict[str, Any]] | None:
        """(zoo name, keyword arguments), or None for a module the user built."""
        arch = self.meta["arch"]
        return None if arch is None else (arch["name"], arch["kwargs"])

    @property
    def layers(self) -> list[dict[str, Any]]:
        """Per layer as in a version 2 header (a version 1 file is shown converted)."""
        return [e.to_dict() for e in self.entries]

    def param_bytes(self) -> dict[str, int]:
        """Stored bytes of each per-channel tensor, keyed by ``state_dict`` name."""
        return {
            p["name"]: self.tensors[p["tensor"]].end - self.tensors[p["tensor"]].begin
            for p in self.meta["params"]
        }

    def rows(self) -> list[dict[str, Any]]:
        """Per layer: its parts in the file, against the entropy bound and other formats."""
        rows = []
        for e in self.entries:
            n = e.n
            bounds = [p.entropy_bound_bits for p in e.parts if p.alphabet is not None]
            bound = sum(bounds) / n if bounds and n else None
            bpw = 8.0 * e.bytes / n if n else 0.0
            sym_bpw = 8.0 * e.symbol_bytes / n if n else 0.0
            parts = []
            for p in e.parts:
                item = p.to_dict()
                item["bits_per_symbol"] = 8.0 * p.bytes / p.n if p.n else 0.0
                item["entropy_bound_bits"] = (
                    None if p.counts is None else p.entropy_bound_bits / p.n if p.n else 0.0
                )
                parts.append(item)
            rows.append(
                {
                    "name": e.name,
                    "method": e.method,
                    "shape": list(e.shape),
                    "weights": n,
                    "density": e.kept / n if n else 0.0,  # the layer's own kept fraction
                    "kept": e.kept,
                    "target_density": e.density,  # as configured (global under global scope)
                    "codec": e.codec,
                    "bytes": e.bytes,
                    "symbol_bytes": e.symbol_bytes,
                    "float_bytes": e.float_bytes,
                    "bits_per_weight": bpw,
                    "entropy_bound_bits": bound,
                    "ratio_to_bound": (sym_bpw / bound) if bound else None,
                    "float32_bytes": 4 * n,
                    "int8_bytes": n,
                    "binarized_bytes": (n + 7) // 8,
                    "parts": parts,
                }
            )
        return rows

    def totals(self) -> dict[str, Any]:
        """Whole-file totals; float32/int8/binarized add the per-channel values at float32.

        ``mask_bytes`` are the coded symbol parts of every layer (masks, signs, levels, ...),
        ``float_part_bytes`` the real-valued parts (a dense layer's weights, scales).
        """
        rows = self.rows()
        weights = sum(r["weights"] for r in rows)
        values = sum(math.prod(p["shape"]) for p in self.meta["params"])
        param_bytes = sum(self.param_bytes().values())
        bound_bytes = sum(
            p.entropy_bound_bits / 8 for e in self.entries for p in e.parts if p.alphabet
        )
        regenerated = sum(e.n for e in self.entries if not get_method(e.method).trains_weights)
        f32 = 4 * weights + 4 * values
        int8 = weights + 4 * values
        binarized = sum(r["binarized_bytes"] for r in rows) + 4 * values
        return {
            "layers": len(rows),
            "weights": weights,
            "regenerated_weights": regenerated,
            "methods": sorted({e.method for e in self.entries}),
            "mask_bytes": sum(r["symbol_bytes"] for r in rows),
            "entropy_bound_bytes": bound_bytes,
            "float_part_bytes": sum(r["float_bytes"] for r in rows),
            "param_values": values,
            "param_bytes": param_bytes,
            "header_bytes": self.header_bytes,
            "file_bytes": self.file_bytes,
            "file_bits_per_weight": 8.0 * self.file_bytes / weights if weights else None,
            "float32_bytes": f32,
            "int8_bytes": int8,
            "binarized_bytes": binarized,
            "ratio_float32": f32 / self.file_bytes,
            "ratio_int8": int8 / self.file_bytes,
            "ratio_binarized": binarized / self.file_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": FORMAT,
            "format_version": self.meta["format_version"],
            "hiddenite_version": self.meta["hiddenite_version"],
            "arch": self.meta["arch"],
            "supermask": self.config.to_dict(),
            "param_dtype": self.meta["param_dtype"],
            "layers": self.rows(),
            "activations": [e.to_dict() for e in self.quantizers],
            "operators": [e.to_dict() for e in self.operators],
            "totals": self.totals(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """The per-layer table as text, then totals and the comparison with other formats."""
        head = (
            "layer",
            "method",
            "shape",
            "weights",
            "density",
            "parts",
            "codec",
            "bytes",
            "bit/w",
            "H",
            "xH",
            "float32 kB",
            "binary kB",
        )
        lines = []
        for r in self.rows():
            bound = r["entropy_bound_bits"]
            parts = "+".join(
                p["name"] if p["alphabet"] is None else f"{p['name']}/{p['alphabet']}"
                for p in r["parts"]
            )
            lines.append(
                (
                    r["name"],
                    r["method"],
                    "x".join(map(str, r["shape"])),
                    f"{r['weights']:,}",
                    f"{r['density']:.4f}",
                    parts,
                    r["codec"],
                    f"{r['bytes']:,}",
                    f"{r['bits_per_weight']:.4f}",
                    "-" if bound is None else f"{bound:.4f}",
                    "-" if not r["ratio_to_bound"] else f"{r['ratio_to_bound']:.3f}",
                    f"{r['float32_bytes'] / 1e3:,.2f}",
                    f"{r['binarized_bytes'] / 1e3:,.2f}",
                )
            )
        t = self.totals()
        weights = t["weights"]
        lines.append(
            (
                "total",
                "",
                "",
                f"{weights:,}",
                "",
                "",
                "",
                f"{t['mask_bytes'] + t['float_part_bytes']:,}",
                f"{8 * (t['mask_bytes'] + t['float_part_bytes']) / weights:.4f}"
                if weights
                else "-",
                f"{8 * t['entropy_bound_bytes'] / weights:.4f}" if weights else "-",
                "",
                f"{4 * weights / 1e3:,.2f}",
                f"{(t['binarized_bytes'] - 4 * t['param_values']) / 1e3:,.2f}",
            )
        )
        m = self.meta
        sm = self.config
        arch = self.arch
        built = (
            f"{arch[0]} {json.dumps(arch[1], sort_keys=True)}" if arch else "a user-built module"
        )
        out = [
            f"{self.path}: {FORMAT} v{m['format_version']} (hiddenite {m['hiddenite_version']}), "
            f"{built}",
            f"seed {sm.seed}, init {sm.init}, density {sm.density}, method "
            f"{sm.method.describe()}, PRNG v{m['prng_version']}, per-channel parameters "
            f"{m['param_dtype']}",
            "",
            *text_table(head, lines[:-1], lines[-1], left=(0, 1, 2, 5, 6)),
            "",
            f"file {t['file_bytes']:,} bytes = header {t['header_bytes']:,} + coded parts "
            f"{t['mask_bytes']:,} + float parts {t['float_part_bytes']:,} + per-channel "
            f"{t['param_bytes']:,} ({t['param_values']:,} values)",
            f"coded parts: {t['mask_bytes']:,} bytes against their empirical entropy "
            f"{t['entropy_bound_bytes']:,.0f} bytes",
            f"same network as float32 {t['float32_bytes'] / 1e3:,.1f} kB "
            f"({t['ratio_float32']:.1f}x this file), INT8 {t['int8_bytes'] / 1e3:,.1f} kB "
            f"({t['ratio_int8']:.1f}x), binarized {t['binarized_bytes'] / 1e3:,.1f} kB "
            f"({t['ratio_binarized']:.2f}x); this file {t['file_bytes'] / 1e3:,.1f} kB",
        ]
        return "\n".join(out + self._precision_lines())

    def _precision_lines(self) -> list[str]:
        """One line per declared activation quantizer and per layer's operators."""
        out = [""] if self.quantizers or self.operators else []
        for q in self.quantizers:
            kind = "signed" if q.signed else "unsigned"
            out.append(
                f"activations into {q.layer}: {q.bits}-bit {kind}, scale {q.scale:.6g}, "
                f"zero point {q.zero_point} (observed {q.lo:.4g}..{q.hi:.4g})"
            )
        for o in self.operators:
            out.append(
                f"operator of {o.layer}: {o.choice.training} in training, "
                f"{o.choice.inference} in inference"
            )
        return out

    def __str__(self) -> str:
        return self.table()


def _parse_container(head: bytes, file_bytes: int) -> tuple[dict[str, TensorEntry], dict]:
    """Check the safetensors framing of ``head`` (the 8 length bytes and the header JSON).

    Returns the tensor entries and the ``__metadata__`` strings.
    """
    size = int.from_bytes(head[:8], "little")
    data_bytes = file_bytes - 8 - size
    try:
        text = head[8 : 8 + size].decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError("container header is not UTF-8 text") from None
    if not text.startswith("{"):
        raise ModelFormatError("container header does not start with '{' (not safetensors)")
    header = _json(text, "container header")
    if not isinstance(header, dict):
        raise ModelFormatError("container header is not a JSON object")
    if len(header) > _MAX_ENTRIES:
        raise ModelFormatError(f"container header lists more than {_MAX_ENTRIES} tensors")
    metadata = header.pop("__metadata__", None)
    metadata = _obj(metadata, "container __metadata__", {META_KEY, META_SHA_KEY})
    for key, value in metadata.items():
        _str(value, f"__metadata__[{key!r}]", MAX_HEADER_BYTES)
    entries: dict[str, TensorEntry] = {}
    for key, entry in header.items():
        what = f"tensor {_show(key)}"
        _str(key, "tensor name", _MAX_NAME + 16)
        entry = _obj(entry, what, {"dtype", "shape", "data_offsets"})
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
            raise ModelFormatError(
                f"{what} has dtype {_show(dtype)}; a model file holds U8, F16, F32"
            )
        shape = _shape(entry["shape"], f"{what} shape")
        offsets = _list(entry["data_offsets"], f"{what} data_offsets", 2)
        if len(offsets) != 2:
            raise ModelFormatError(f"{what} data_offsets must be [begin, end]")
        begin = _int(offsets[0], f"{what} begin offset", 0, max(data_bytes, 0))
        end = _int(offsets[1], f"{what} end offset", begin, max(data_bytes, 0))
        if end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
            raise ModelFormatError(
                f"{what}: {end - begin} data bytes do not hold shape {list(shape)} of {dtype}"
            )
        entries[key] = TensorEntry(dtype, shape, begin, end)
    position = 0
    for key, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != position:
            problem = "overlaps another" if e.begin < position else "leaves a gap before it"
            raise ModelFormatError(f"tensor {_show(key)} {problem} (inconsistent data offsets)")
        position = e.end
    if position != data_bytes:
        raise ModelFormatError(
            f"the tensors cover {position} data bytes but the file holds {data_bytes}"
        )
    return entries, metadata


def _read_head(fh, path: str) -> tuple[bytes, int]:
    """The 8 length bytes and the header of an open file, and the file's size (bounded reads)."""
    file_bytes = os.fstat(fh.fileno()).st_size
    if file_bytes < 8:
        raise ModelFormatError(
            f"file is truncated: {file_bytes} bytes, less than the 8-byte header length"
        )
    first = fh.read(8)
    size = int.from_bytes(first, "little")
    if size > MAX_HEADER_BYTES:
        raise ModelFormatError(
            f"header length {size} bytes exceeds the {MAX_HEADER_BYTES}-byte limit (oversized "
            f"or not a model file)"
        )
    if size > file_bytes - 8:
        raise ModelFormatError(
            f"header length {size} bytes is more than the {file_bytes - 8} bytes that follow "
            f"(truncated or not a model file)"
        )
    if size < 2:
        raise ModelFormatError(f"header length {size} bytes is too small for a header")
    rest = fh.read(size)
    if len(rest) != size:
        raise ModelFormatError("file is truncated (shrank while being read)")
    return first + rest, file_bytes


def _open(path: str | os.PathLike):
    """Open a model file for reading (closed by the caller's with-block): a regular file
    only, never blocking on a FIFO or device."""
    if not os.path.exists(path):
        raise ModelFormatError(
            f"{path}: no such model file (write one with `hiddenite export CHECKPOINT -o FILE`)"
        )
    return open_regular(path, "model file", ModelFormatError)


def _guard(path: str | os.PathLike, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; prefix a ModelFormatError with the path and turn OS errors into one."""
    try:
        return fn()
    except ModelFormatError as exc:
        raise ModelFormatError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ModelFormatError(f"{path}: read error ({exc.strerror or exc})") from None
    except (
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
        ArithmeticError,
        RecursionError,
        MemoryError,
    ) as exc:  # a check this reader lacks: still one exception type, never a traceback
        raise ModelFormatError(
            f"{path}: {UNEXPECTED} ({type(exc).__name__}: {_first(exc)})"
        ) from None


def read_header(path: str | os.PathLike) -> ModelFileInfo:
    """Read and check only the header of the model file at ``path`` (no tensor data, no model).

    Checks the container framing, the metadata checksum and every metadata field; the payload
    checksum and the parts are checked by :func:`load`. Raises ModelFormatError.
    """
    with _open(path) as fh:
        return _guard(path, lambda: _parse(*_read_head(fh, str(path)), str(path)))


def _decode_entry(
    info: ModelFileInfo, entry: LayerEntry, data: memoryview
) -> dict[str, np.ndarray]:
    """One layer's parts decoded, symbols checked against the header's counts."""
    param_dtype = info.meta["param_dtype"]
    arrays = {}
    for part in entry.parts:
        e = info.tensors[part.tensor]
        raw = data[e.begin : e.end]
        what = f"layer {entry.name!r} part {part.name!r}"
        if part.alphabet is None:
            arrays[part.name] = decode_float(raw, part.n, param_dtype)
            continue
        try:
            symbols = codecs.decode(raw, part.n, part.codec, alphabet=part.alphabet)
        except codecs.CodecError as exc:
            raise ModelFormatError(f"{what} does not decode ({exc})") from None
        if part.alphabet == 2:  # a bool mask: one count, no int64 copy
            kept = int(np.count_nonzero(symbols))
            counts = (symbols.size - kept, kept)
        else:
            counts = tuple(
                int(c) for c in np.bincount(symbols.astype(np.int64), minlength=part.alphabet)
            )
        if counts != part.counts:
            raise ModelFormatError(
                f"{what} holds symbol counts {list(counts)}, the header says {list(part.counts)}"
            )
        arrays[part.name] = symbols
    return arrays


def _check_decoded(info: ModelFileInfo, decoded: list[dict[str, np.ndarray]]) -> None:
    """Each method's own check of its layers' decoded parts."""
    groups: dict[str, list[LayerItem]] = {}
    for entry, arrays in zip(info.entries, decoded, strict=True):
        item = LayerItem(entry.name, entry.shape, entry.config, entry.density, arrays)
        groups.setdefault(entry.method, []).append(item)
    for name, items in groups.items():
        try:
            get_method(name).check(items)
        except ValueError as exc:
            raise ModelFormatError(f"method {name!r}: {exc}") from None


def _target(
    info: ModelFileInfo, model: nn.Module | None, max_weights: int
) -> tuple[nn.Module | None, _Layout, nn.Module | None]:
    """The module to restore into (None: build the zoo model), its layout, checked, and the
    zoo model's ``meta`` skeleton (None for a given module)."""
    config = info.config
    skeleton = None
    if model is None:
        if info.arch is None:
            raise ModelFormatError(
                "the file holds a module built outside the zoo: build it again and pass it, "
                "as load(path, model=module)"
            )
        name, kwargs = info.arch
        skeleton = _skeleton(name, kwargs, config)
        layout = _layout(skeleton, info.format_version >= 4)
        what = f"architecture {name!r}"
    else:
        if not _supermask_layers(model):
            names = {e.name for e in info.entries}
            try:
                supermask_(model, config, lambda _, qual: qual in names, init_state=False)
            except (ConfigError, ValueError) as exc:
                raise ModelFormatError(f"the module cannot be converted ({_first(exc)})") from None
        layout = _layout(model, info.format_version >= 4)
        what = "the module"
    if layout.weights > max_weights:
        raise ModelFormatError(
            f"{what} has {layout.weights:,} weights, more than max_weights ({max_weights:,}); "
            "pass a larger max_weights to load it"
        )
    try:
        check_available(LOAD_BYTES_PER_WEIGHT * layout.weights, f"loading {what}")
    except ResourceError as exc:
        raise ModelFormatError(str(exc)) from None
    _fit(layout, info.entries, config)
    _fit_params(layout, {p["name"]: tuple(p["shape"]) for p in info.meta["params"]}, what)
    _fit_precision(layout, info, what)
    return model, layout, skeleton


def _check_payload(info: ModelFileInfo, data: memoryview) -> None:
    if _sha256(data) != info.meta["payload_sha256"]:
        raise ModelFormatError(
            "payload checksum mismatch (payload_sha256): the tensor data is corrupted"
        )


def _decode_all(info: ModelFileInfo, data: memoryview) -> list[dict[str, np.ndarray]]:
    """Every layer's decoded parts, in order, the layers spread over ``torch.get_num_threads()``
    threads (the codecs' compiled kernels release the GIL; this thread only waits, as Python
    work beside them would hold the GIL they need between kernels). The first bad layer in
    file order raises, as decoding them one by one would."""
    threads = min(torch.get_num_threads(), len(info.entries))
    if threads <= 1:
        decoded = [_decode_entry(info, entry, data) for entry in info.entries]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            pending = [pool.submit(_decode_entry, info, entry, data) for entry in info.entries]
            try:
                decoded = [future.result() for future in pending]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    _check_decoded(info, decoded)
    return decoded


def _load(
    fh, path: str, max_weights: int, check_parts: bool, model: nn.Module | None
) -> tuple[nn.Module, ModelFileInfo]:
    head, file_bytes = _read_head(fh, path)
    info = _parse(head, file_bytes, path)
    model, _, skeleton = _target(info, model, max_weights)
    blob = head + fh.read(file_bytes - len(head))
    if len(blob) != file_bytes:
        raise ModelFormatError("file is truncated (shrank while being read)")
    data = memoryview(blob)[len(head) :]
    _check_payload(info, data)
    decoded = _decode_all(info, data)
    if model is None:
        name, kwargs = info.arch
        try:  # the checked skeleton given memory, else built again (as create would)
            if can_materialize(skeleton):
                model = materialize_(skeleton, torch.get_default_device())
            else:
                model = models.create(name, info.config, init_state=False, **kwargs)
        except Exception as exc:  # the meta-device layout built, so this is memory or torch
            raise ModelFormatError(
                f"architecture {name!r} cannot be built ({_first(exc)})"
            ) from None
        if model is not skeleton:  # built again: check it as _target checked the skeleton
            _fit(_layout(model), info.entries, info.config)

    def tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        e = info.tensors[key]
        array = np.frombuffer(data[e.begin : e.end], dtype=_NP_DTYPES[e.dtype]).reshape(shape)
        return torch.from_numpy(array.astype(np.float32))

    layers = _supermask_layers(model)
    with torch.no_grad():
        state = _per_channel(model, info.format_version >= 4)
        for p in info.meta["params"]:
            value = tensor(p["tensor"], tuple(p["shape"]))
            state[p["name"]].copy_(value.to(state[p["name"]].device))
        for (_, layer), arrays in zip(layers, decoded, strict=True):
            layer.method.restore(layer, arrays)
        for (qual, layer), arrays in zip(layers, decoded, strict=True) if check_parts else ():
            if not layer.method.restored_matches(layer, arrays):
                raise ModelFormatError(f"internal: layer {qual!r} does not rebuild its parts")
    _restore_precision(model, info)
    return model.eval(), info


def load(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    model: nn.Module | None = None,
    max_weights: int = DEFAULT_MAX_WEIGHTS,
    check_masks: bool = True,
) -> nn.Module:
    """Rebuild the hidden network stored at ``path``; an eval-mode module on ``device``.

    Frozen weights are regenerated from the seed; each layer's method restores its learned
    state from the stored parts (an edge-popup layer's scores become its 0/1 mask, which its
    own top-k selection re-selects exactly, and the layer uses the mask itself until its
    scores change; the original scores are not in the file: resume training from the
    checkpoint instead). Declared activation quantizers (version 4) are attached frozen at
    their stored scales and declared operators set per layer. With float32 parameters the
    outputs equal the saved model's bit for bit.

    ``model``: restore into this module instead of building the zoo architecture the file
    names (needed for a module built outside the zoo): a module converted with
    :func:`hiddenite.supermask_` as when it was saved, or the same module unconverted (it is
    converted here with the file's config, exactly the layers the file lists). The first layer
    whose name, shape, method or density differs raises ModelFormatError.
    ``max_weights`` caps the weight count (memory is about 9 bytes per weight while
    building). ``check_masks`` confirms that every restored layer gives exactly its stored
    parts (``Method.restored_matches``: one pass over an edge-popup layer, no selection; False
    skips it). Raises ModelFormatError for any bad, truncated or hostile file.
    """
    if isinstance(max_weights, bool) or not isinstance(max_weights, int) or max_weights < 1:
        raise ValueError(f"max_weights must be a positive integer, got {max_weights!r}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    with _open(path) as fh:
        model, _ = _guard(path, lambda: _load(fh, str(path), max_weights, check_masks, model))
    return model.to(device)
