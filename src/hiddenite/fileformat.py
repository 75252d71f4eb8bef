"""The compact model file (``.hnn``): seeds, compressed supermasks, per-channel parameters.

A hidden network's frozen weights are regenerated from its seed, so the file stores only
what cannot be regenerated: the architecture (a zoo name and its keyword arguments), the
:class:`~hiddenite.SupermaskConfig` (seed, init, density, ...), one compressed mask per
hidden layer (:mod:`hiddenite.codecs`), the per-channel parameters (batch-norm statistics
and affine terms, biases) and the weights of layers kept dense. ``docs/model-file.md``
describes the layout byte by byte.

The container is safetensors (no pickle): masks are ``U8`` tensors, parameters ``F32`` or
``F16``. The header metadata holds one JSON document under ``"hiddenite"`` and its sha256
under ``"hiddenite_sha256"``; the JSON holds the sha256 of the data section.

Python surface::

    save(model, path, arch=("conv4", {...}), config=None, codec=None, param_dtype="float32")
    save_trained(checkpoint_path, path, codec=None, param_dtype="float32")
    load(path, device="cpu") -> eval-mode nn.Module, outputs bit-identical to the saved model's
    read_header(path) -> ModelFileInfo   (header only: what ``hiddenite inspect`` prints)
    ModelFormatError                     (the one exception for a bad or hostile file)

Loading never unpickles or evaluates anything from the file. The header is parsed and
checked here, with size limits, before any tensor data is read; every field is type- and
range-checked; the architecture is first laid out on the ``meta`` device (no memory) and
capped at ``max_weights`` weights; masks must decode to exactly the layer's weight count
with exactly the stated number of kept weights. Every failure is a :class:`ModelFormatError`.
"""

from __future__ import annotations

import hashlib
import inspect as _inspect
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import codecs, models
from .atomic import atomic_write, write_chunks
from .convert import ConfigError, SupermaskConfig
from .layers import SupermaskLayer
from .masks import kept_count
from .prng import PRNG_VERSION
from .texttable import text_table

FORMAT = "hiddenite-model"
FORMAT_VERSION = 1
SUFFIX = ".hnn"
META_KEY = "hiddenite"
META_SHA_KEY = "hiddenite_sha256"
MAX_HEADER_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_WEIGHTS = 1 << 28
PARAM_DTYPES = ("float32", "float16")

_DTYPE_CODES = {"float32": "F32", "float16": "F16"}
_NP_DTYPES = {"U8": np.dtype("uint8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_ITEMSIZE = {code: dt.itemsize for code, dt in _NP_DTYPES.items()}
_MAX_DIMS = 8
_MAX_DIM = 1 << 40
_MAX_ENTRIES = 100_000
_MAX_NAME = 512
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
_LAYER_FIELDS = {
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
_PARAM_FIELDS = {"name", "tensor", "shape"}
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
    "ModelFileInfo",
    "ModelFormatError",
    "arch_of",
    "load",
    "read_header",
    "save",
    "save_trained",
]


class ModelFormatError(ValueError):
    """A model file is missing, truncated, corrupt, inconsistent or hostile.

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


def _max_mask_bytes(codec: str, n: int) -> int:
    """The most bytes a valid ``codec`` stream of ``n`` bits can take (see docs/mask-codecs.md)."""
    if codec == "packed":
        return (n + 7) // 8
    if codec == "rle":
        return 1 + (n * 32 + 7) // 8
    return 4 + (n * 24) // 8 + 64


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


def arch_of(config) -> tuple[str, dict[str, Any]]:
    """The (zoo name, full keyword arguments) of a :class:`~hiddenite.train.TrainConfig`.

    The same arguments :func:`hiddenite.train.build_model` passes: the data set's input
    channels, image size and class count, then the config's ``model_kwargs``.
    """
    from .data import dataset_info

    in_channels, image_size, num_classes = dataset_info(config.dataset)
    kwargs = {
        "in_channels": in_channels,
        "image_size": image_size,
        "num_classes": num_classes,
        **config.model_kwargs,
    }
    return config.model, _full_kwargs(config.model, kwargs)


@dataclass(frozen=True)
class _LayerPlan:
    name: str
    index: int
    shape: tuple[int, ...]
    mode: str

    @property
    def n(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class _Plan:
    """What a (name, kwargs, config) model holds, found on the meta device (no memory)."""

    layers: tuple[_LayerPlan, ...]
    params: dict[str, tuple[int, ...]]

    @property
    def weights(self) -> int:
        return sum(layer.n for layer in self.layers)


def _plan(name: str, kwargs: dict[str, Any], config: SupermaskConfig) -> _Plan:
    """Lay the architecture out on the meta device: layer order, shapes, modes, parameters.

    Mirrors :func:`hiddenite.supermask_`: candidates in ``named_modules`` order are numbered
    0.., the first/last kept dense on request. Raises ModelFormatError if the builder fails.
    """
    builder = models.MODELS[name].builder
    try:
        with torch.device("meta"):
            skeleton = builder(**kwargs)
    except Exception as exc:  # the builder's own checks (any type): the arguments are bad
        raise ModelFormatError(f"architecture {name!r} cannot be built ({_first(exc)})") from None
    found = [(n, m) for n, m in skeleton.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if not found:
        raise ModelFormatError(f"architecture {name!r} has no convolution or linear layer")
    last = len(found) - 1
    layers = []
    for index, (qual, module) in enumerate(found):
        keep = (index == 0 and config.keep_first_dense) or (
            index == last and config.keep_last_dense
        )
        mode = "dense" if keep or config.mode == "dense" else "hidden"
        layers.append(_LayerPlan(qual, index, tuple(module.weight.shape), mode))
    weight_keys = {f"{layer.name}.weight" for layer in layers}
    params = {
        key: tuple(value.shape)
        for key, value in skeleton.state_dict().items()
        if key not in weight_keys and not _is_counter(key)
    }
    return _Plan(tuple(layers), params)


def _is_counter(key: str) -> bool:
    return key.rpartition(".")[2] == "num_batches_tracked"


def _supermask_layers(model: nn.Module) -> list[tuple[str, SupermaskLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SupermaskLayer)]


def _per_channel(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's stored per-channel tensors (not scores, weights or batch counters)."""
    skip = set()
    for name, _ in _supermask_layers(model):
        skip.add(f"{name}.weight")
        skip.add(f"{name}.scores")
    return {
        key: value
        for key, value in model.state_dict(keep_vars=True).items()
        if key not in skip and not _is_counter(key)
    }


def _mismatch(model: nn.Module, plan: _Plan, config: SupermaskConfig) -> str | None:
    """Why ``model`` is not the model ``plan`` + ``config`` describes (None: it is)."""
    plain = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if plain:
        return f"layer {plain[0]!r} is a plain {type(model.get_submodule(plain[0])).__name__}"
    layers = _supermask_layers(model)
    names = [n for n, _ in layers]
    want = [layer.name for layer in plan.layers]
    if names != want:
        return f"its supermask layers {names[:4]}... are not the architecture's {want[:4]}..."
    groups = set()
    for (name, m), lp in zip(layers, plan.layers, strict=True):
        if tuple(m.weight.shape) != lp.shape:
            return f"layer {name!r} has shape {tuple(m.weight.shape)}, expected {lp.shape}"
        if m.mode != lp.mode:
            return f"layer {name!r} is in {m.mode} mode, the config makes it {lp.mode}"
        checks = (
            ("layer_index", m.layer_index, lp.index),
            ("seed", m.seed, config.seed),
            ("init", m.init, config.init),
            ("gain", m.gain, config.gain),
            ("n_lanes", m.n_lanes, config.n_lanes),
            ("scale_by_density", m.scale_by_density, config.scale_by_density),
            ("density", m.density, config.density),
        )
        for field, have, expected in checks:
            if have != expected:
                return f"layer {name!r} has {field} {have!r}, the config says {expected!r}"
        if m.hidden:
            group = m._mask_group
            if (group is not None) != (config.scope == "global"):
                return f"layer {name!r} does not use the config's {config.scope} mask scope"
            groups.add(id(group))
    if config.scope == "global" and len(groups) > 1:
        return "its hidden layers do not share one global threshold"
    params = {k: tuple(v.shape) for k, v in _per_channel(model).items()}
    if params != plan.params:
        extra = sorted(set(params) - set(plan.params))
        lacking = sorted(set(plan.params) - set(params))
        differ = sorted(k for k in set(params) & set(plan.params) if params[k] != plan.params[k])
        return (
            f"its per-channel tensors differ (unexpected {extra[:3]}, missing {lacking[:3]}, "
            f"other shape {differ[:3]})"
        )
    return None


def _check_kept(hidden: list[tuple[str, int, int]], config: SupermaskConfig) -> None:
    """Check the kept counts (name, n, kept) are what the config's top-k rule selects.

    Per-layer scope keeps exactly ``kept_count(n, density)`` weights in each layer; global
    scope keeps exactly ``kept_count(total, density)`` over all hidden layers together.
    """
    if not hidden:
        return
    if config.scope == "layer":
        for name, n, kept in hidden:
            want = kept_count(n, config.density)
            if kept != want:
                raise ModelFormatError(
                    f"layer {name!r} keeps {kept} of {n} weights, but density "
                    f"{config.density} keeps {want}"
                )
        return
    total = sum(n for _, n, _ in hidden)
    kept = sum(k for _, _, k in hidden)
    want = kept_count(total, config.density)
    if kept != want:
        raise ModelFormatError(
            f"the hidden layers keep {kept} of {total} weights, but global density "
            f"{config.density} keeps {want}"
        )


# --------------------------------------------------------------------------- writing


def _hiddenite_version() -> str:
    from . import __version__

    return __version__


def _container(
    meta: dict[str, Any], tensors: list[tuple[str, str, tuple[int, ...], bytes]]
) -> bytes:
    """The file bytes: safetensors container of ``tensors`` (key, dtype, shape, data) in order.

    Adds ``payload_sha256`` (sha256 of the data section) to ``meta``. Deterministic: sorted
    keys, compact JSON, the header padded with spaces to a multiple of 8 bytes.
    """
    payload = b"".join(data for *_, data in tensors)
    meta = {**meta, "payload_sha256": _sha256(payload)}
    meta_json = json.dumps(
        meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
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


def _write_all(fh, data: bytes) -> None:
    write_chunks(fh, data)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`hiddenite.atomic.atomic_write`."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)

    atomic_write(path, write)


def _infer_config(model: nn.Module) -> SupermaskConfig:
    """The SupermaskConfig a converted model was built with, read from its layers."""
    layers = [m for _, m in _supermask_layers(model)]
    if not layers:
        raise ValueError("the model has no supermask layers: convert it with supermask_ first")
    hidden = [m for m in layers if m.hidden]
    ref = hidden[0] if hidden else layers[0]
    return SupermaskConfig(
        density=ref.density,
        init=ref.init,
        seed=ref.seed,
        mode="hidden" if hidden else "dense",
        scope="global" if any(m._mask_group is not None for m in hidden) else "layer",
        scale_by_density=ref.scale_by_density,
        keep_first_dense=bool(hidden) and not layers[0].hidden,
        keep_last_dense=bool(hidden) and not layers[-1].hidden,
        gain=ref.gain,
        n_lanes=ref.n_lanes,
    )


def _float_bytes(tensor: torch.Tensor, param_dtype: str, what: str) -> bytes:
    if not tensor.is_floating_point():
        raise ValueError(f"{what} has dtype {tensor.dtype}; the model file stores float tensors")
    dtype = torch.float32 if param_dtype == "float32" else torch.float16
    array = tensor.detach().to(device="cpu", dtype=dtype).contiguous().numpy()
    return array.astype(_NP_DTYPES[_DTYPE_CODES[param_dtype]], copy=False).tobytes()


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
    """Write ``model`` (a hidden network from the zoo) to ``path`` atomically; return its header.

    arch: ``(zoo name, keyword arguments)`` the model was built with by
      :func:`hiddenite.models.create`; None reads ``model.hiddenite_arch``, which ``create``
      sets. Missing arguments take the zoo defaults, and the file stores them all.
    config: its :class:`~hiddenite.SupermaskConfig` (None: read from the model's layers).
    codec: ``"packed"``, ``"rle"`` or ``"entropy"`` for every mask; None: the smallest per layer.
    param_dtype: ``"float32"`` (outputs after :func:`load` are bit-identical) or ``"float16"``
      (per-channel parameters and dense weights rounded to half precision: smaller, not exact).

    The model must be exactly ``models.create(name, config, **kwargs)`` with learned scores and
    per-channel state: anything else raises ValueError, so every file written can be loaded.
    """
    if arch is None:
        arch = getattr(model, "hiddenite_arch", None)
    if arch is None:
        raise TypeError(
            "save needs arch=(zoo name, keyword arguments), e.g. arch=('conv4', {'width': 0.5}), "
            "for a model not built by hiddenite.models.create"
        )
    if not (isinstance(arch, tuple | list) and len(arch) == 2 and isinstance(arch[1], dict)):
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
    name = arch[0]
    try:
        kwargs = _full_kwargs(name, dict(arch[1]))
        _check_arch(name, kwargs)
        plan = _plan(name, kwargs, config)
    except ModelFormatError as exc:
        raise ValueError(f"arch {name!r}: {exc}") from None
    problem = _mismatch(model, plan, config)
    if problem:
        raise ValueError(f"the model is not {name} {kwargs} under this config: {problem}")

    code = _DTYPE_CODES[param_dtype]
    floats: list[tuple[str, str, tuple[int, ...], bytes]] = []
    masks: list[tuple[str, str, tuple[int, ...], bytes]] = []
    params_meta = []
    for key, value in _per_channel(model).items():
        tensor_key = f"param.{key}"
        shape = tuple(value.shape)
        floats.append((tensor_key, code, shape, _float_bytes(value, param_dtype, key)))
        params_meta.append({"name": key, "tensor": tensor_key, "shape": list(shape)})
    layers_meta = []
    hidden_counts = []
    for (qual, layer), lp in zip(_supermask_layers(model), plan.layers, strict=True):
        entry: dict[str, Any] = {
            "index": lp.index,
            "name": qual,
            "mode": lp.mode,
            "shape": list(lp.shape),
            "n": lp.n,
        }
        if layer.hidden:
            bits = layer.mask().detach().to("cpu", torch.bool).reshape(-1).numpy()
            kept = int(np.count_nonzero(bits))
            if codec is None:
                chosen, data = codecs.encode_best(bits)
            else:
                chosen, data = codec, codecs.encode(bits, codec)
            tensor_key = f"mask.{qual}"
            masks.append((tensor_key, "U8", (len(data),), data))
            hidden_counts.append((qual, lp.n, kept))
            entry.update(kept=kept, codec=chosen)
        else:
            tensor_key = f"weight.{qual}"
            data = _float_bytes(layer.weight, param_dtype, f"{qual}.weight")
            floats.append((tensor_key, code, lp.shape, data))
            entry.update(kept=lp.n, codec=param_dtype)
        entry.update(
            density=entry["kept"] / lp.n if lp.n else 0.0, tensor=tensor_key, bytes=len(data)
        )
        layers_meta.append(entry)
    try:
        _check_kept(hidden_counts, config)
    except ModelFormatError as exc:
        raise ValueError(f"the model's masks cannot be rebuilt from a file: {exc}") from None
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hiddenite_version": _hiddenite_version(),
        "arch": {"name": name, "kwargs": kwargs},
        "supermask": config.to_dict(),
        "prng_version": PRNG_VERSION,
        "seed": config.seed,
        "param_dtype": param_dtype,
        "layers": layers_meta,
        "params": params_meta,
    }
    blob = _container(meta, floats + masks)
    path = Path(path)
    _atomic_write(path, blob)
    return _parse(blob[: 8 + int.from_bytes(blob[:8], "little")], len(blob), str(path))


def save_trained(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    codec: str | None = None,
    param_dtype: str = "float32",
) -> ModelFileInfo:
    """Export a training checkpoint (file or run folder) to a model file; return its header.

    The architecture and SupermaskConfig come from the checkpoint's TrainConfig.
    """
    from .train import load_trained

    model, config = load_trained(checkpoint)
    return save(
        model,
        path,
        arch=arch_of(config),
        config=config.supermask,
        codec=codec,
        param_dtype=param_dtype,
    )


# --------------------------------------------------------------------------- reading


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
    tensors: dict[str, TensorEntry]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.meta["layers"]

    def rows(self) -> list[dict[str, Any]]:
        """Per weight layer: size in the file against the entropy bound and other formats."""
        rows = []
        for layer in self.layers:
            n, kept, nbytes = layer["n"], layer["kept"], layer["bytes"]
            hidden = layer["mode"] == "hidden"
            bound = codecs.entropy_bound_bits(kept / n) if hidden and n else None
            bpw = 8.0 * nbytes / n if n else 0.0
            rows.append(
                {
                    "name": layer["name"],
                    "mode": layer["mode"],
                    "shape": list(layer["shape"]),
                    "weights": n,
                    "kept": kept,
                    "density": layer["density"],
                    "codec": layer["codec"],
                    "bytes": nbytes,
                    "bits_per_weight": bpw,
                    "entropy_bound_bits": bound,
                    "ratio_to_bound": (bpw / bound) if bound else None,
                    "float32_bytes": 4 * n,
                    "int8_bytes": n,
                    "binarized_bytes": (n + 7) // 8,
                }
            )
        return rows

    def totals(self) -> dict[str, Any]:
        """Whole-file totals; float32/int8/binarized add the per-channel values at float32."""
        rows = self.rows()
        weights = sum(r["weights"] for r in rows)
        hidden = [r for r in rows if r["mode"] == "hidden"]
        hidden_n = sum(r["weights"] for r in hidden)
        kept = sum(r["kept"] for r in hidden)
        values = sum(math.prod(p["shape"]) for p in self.meta["params"])
        param_bytes = sum(
            self.tensors[p["tensor"]].end - self.tensors[p["tensor"]].begin
            for p in self.meta["params"]
        )
        bound_bytes = sum(r["weights"] * r["entropy_bound_bits"] / 8 for r in hidden)
        f32 = 4 * weights + 4 * values
        int8 = weights + 4 * values
        binarized = sum(r["binarized_bytes"] for r in rows) + 4 * values
        return {
            "layers": len(rows),
            "hidden_layers": len(hidden),
            "weights": weights,
            "hidden_weights": hidden_n,
            "kept": kept,
            "density": kept / hidden_n if hidden_n else None,
            "mask_bytes": sum(r["bytes"] for r in hidden),
            "entropy_bound_bytes": bound_bytes,
            "dense_weight_bytes": sum(r["bytes"] for r in rows if r["mode"] == "dense"),
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
            "supermask": self.meta["supermask"],
            "param_dtype": self.meta["param_dtype"],
            "layers": self.rows(),
            "totals": self.totals(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """The per-layer table as text, then totals and the comparison with other formats."""
        head = (
            "layer", "mode", "shape", "weights", "density", "codec", "bytes",
            "bit/w", "H(k)", "xH(k)", "float32 kB", "int8 kB", "binary kB",
        )  # fmt: skip
        lines = []
        for r in self.rows():
            bound = r["entropy_bound_bits"]
            lines.append(
                (
                    r["name"],
                    r["mode"],
                    "x".join(map(str, r["shape"])),
                    f"{r['weights']:,}",
                    f"{r['density']:.4f}",
                    r["codec"],
                    f"{r['bytes']:,}",
                    f"{r['bits_per_weight']:.4f}",
                    "-" if bound is None else f"{bound:.4f}",
                    "-" if not r["ratio_to_bound"] else f"{r['ratio_to_bound']:.3f}",
                    f"{r['float32_bytes'] / 1e3:,.2f}",
                    f"{r['int8_bytes'] / 1e3:,.2f}",
                    f"{r['binarized_bytes'] / 1e3:,.2f}",
                )
            )
        t = self.totals()
        bound_bits = (
            8 * t["entropy_bound_bytes"] / t["hidden_weights"] if t["hidden_weights"] else 0
        )
        mask_bits = 8 * t["mask_bytes"] / t["hidden_weights"] if t["hidden_weights"] else 0
        lines.append(
            (
                "total",
                "",
                "",
                f"{t['weights']:,}",
                "-" if t["density"] is None else f"{t['density']:.4f}",
                "",
                f"{t['mask_bytes'] + t['dense_weight_bytes']:,}",
                f"{mask_bits:.4f}" if t["hidden_weights"] else "-",
                f"{bound_bits:.4f}" if t["hidden_weights"] else "-",
                f"{mask_bits / bound_bits:.3f}" if bound_bits else "-",
                f"{4 * t['weights'] / 1e3:,.2f}",
                f"{t['weights'] / 1e3:,.2f}",
                f"{(t['binarized_bytes'] - 4 * t['param_values']) / 1e3:,.2f}",
            )
        )
        m = self.meta
        sm = self.config
        out = [
            f"{self.path}: {FORMAT} v{m['format_version']} (hiddenite {m['hiddenite_version']}), "
            f"{m['arch']['name']} {json.dumps(m['arch']['kwargs'], sort_keys=True)}",
            f"seed {sm.seed}, init {sm.init}, density {sm.density} ({sm.scope}), "
            f"PRNG v{m['prng_version']}, per-channel parameters {m['param_dtype']}",
            "",
            *text_table(head, lines[:-1], lines[-1], left=(0, 1, 2, 5)),
            "",
            f"file {t['file_bytes']:,} bytes = header {t['header_bytes']:,} + masks "
            f"{t['mask_bytes']:,} + dense weights {t['dense_weight_bytes']:,} + per-channel "
            f"{t['param_bytes']:,} ({t['param_values']:,} values)",
            f"masks: {mask_bits:.4f} bit/weight against the entropy bound {bound_bits:.4f}"
            if t["hidden_weights"]
            else "masks: none (no hidden layer)",
            f"same network as float32 {t['float32_bytes'] / 1e3:,.1f} kB "
            f"({t['ratio_float32']:.1f}x this file), INT8 {t['int8_bytes'] / 1e3:,.1f} kB "
            f"({t['ratio_int8']:.1f}x), binarized {t['binarized_bytes'] / 1e3:,.1f} kB "
            f"({t['ratio_binarized']:.2f}x); this file {t['file_bytes'] / 1e3:,.1f} kB",
        ]
        return "\n".join(out)

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


def _parse_meta(metadata: dict[str, str]) -> tuple[dict[str, Any], SupermaskConfig]:
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
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"format version {version} is not supported (this hiddenite reads version "
            f"{FORMAT_VERSION}{'; upgrade hiddenite' if version > FORMAT_VERSION else ''})"
        )
    if _sha256(text.encode("utf-8")) != metadata[META_SHA_KEY]:
        raise ModelFormatError(
            "metadata checksum mismatch (hiddenite_sha256): the header is corrupted or was edited"
        )
    _obj(meta, "hiddenite metadata", _META_FIELDS)
    _str(meta["hiddenite_version"], "hiddenite_version", 64)
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
    if meta["param_dtype"] not in PARAM_DTYPES:
        raise ModelFormatError(
            f"param_dtype {_show(meta['param_dtype'])} is not one of {', '.join(PARAM_DTYPES)}"
        )
    sha = _str(meta["payload_sha256"], "payload_sha256", 64)
    if not _HEX64.fullmatch(sha):
        raise ModelFormatError("payload_sha256 is not 64 lowercase hex digits")
    layers = _list(meta["layers"], "layers", _MAX_ENTRIES)
    if not layers:
        raise ModelFormatError("the file lists no layers")
    names = set()
    for i, layer in enumerate(layers):
        _check_layer(layer, i, meta["param_dtype"])
        if layer["name"] in names:
            raise ModelFormatError(f"layer name {layer['name']!r} appears twice")
        names.add(layer["name"])
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
    return meta, config


def _check_layer(layer: Any, i: int, param_dtype: str) -> None:
    what = f"layers[{i}]"
    _obj(layer, what, _LAYER_FIELDS)
    _int(layer["index"], f"{what} index", i, i)
    name = _str(layer["name"], f"{what} name")
    what = f"layer {name!r}"
    mode = layer["mode"]
    if mode not in ("hidden", "dense"):
        raise ModelFormatError(f"{what} mode must be 'hidden' or 'dense', got {_show(mode)}")
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
    if mode == "hidden":
        if codec not in codecs.CODECS:
            raise ModelFormatError(
                f"{what}: unknown mask codec {_show(codec)}; known: {', '.join(codecs.CODECS)}"
            )
        if layer["tensor"] != f"mask.{name}":
            raise ModelFormatError(f"{what}: tensor must be 'mask.{name}'")
        if nbytes > _max_mask_bytes(codec, n):
            raise ModelFormatError(
                f"{what}: {nbytes} mask bytes is too many for {n} bits ({codec})"
            )
    else:
        if codec != param_dtype:
            raise ModelFormatError(f"{what}: a dense layer's codec must be {param_dtype!r}")
        if layer["tensor"] != f"weight.{name}":
            raise ModelFormatError(f"{what}: tensor must be 'weight.{name}'")
        if kept != n:
            raise ModelFormatError(f"{what}: a dense layer keeps all its weights")
        if nbytes != n * _ITEMSIZE[_DTYPE_CODES[param_dtype]]:
            raise ModelFormatError(f"{what}: {nbytes} bytes do not hold {n} {param_dtype} weights")


def _expected_tensors(meta: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    """(key, dtype, shape) in data-section order: params, dense weights, then masks."""
    code = _DTYPE_CODES[meta["param_dtype"]]
    out = [(p["tensor"], code, tuple(p["shape"])) for p in meta["params"]]
    out += [(x["tensor"], code, tuple(x["shape"])) for x in meta["layers"] if x["mode"] == "dense"]
    out += [(x["tensor"], "U8", (x["bytes"],)) for x in meta["layers"] if x["mode"] == "hidden"]
    return out


def _parse(head: bytes, file_bytes: int, path: str) -> ModelFileInfo:
    entries, metadata = _parse_container(head, file_bytes)
    meta, config = _parse_meta(metadata)
    expected = _expected_tensors(meta)
    keys = {key for key, _, _ in expected}
    if len(keys) != len(expected):
        raise ModelFormatError("two layers or parameters share a tensor name")
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
        tensors=entries,
    )


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
    try:
        return open(path, "rb")  # closed by the caller's with-block
    except FileNotFoundError:
        raise ModelFormatError(
            f"{path}: no such model file (write one with `hiddenite export CHECKPOINT -o FILE`)"
        ) from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None


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
    checksum and the masks are checked by :func:`load`. Raises ModelFormatError.
    """
    with _open(path) as fh:
        return _guard(path, lambda: _parse(*_read_head(fh, str(path)), str(path)))


def _load(fh, path: str, max_weights: int, check_masks: bool) -> tuple[nn.Module, ModelFileInfo]:
    head, file_bytes = _read_head(fh, path)
    info = _parse(head, file_bytes, path)
    meta, config = info.meta, info.config
    name, kwargs = meta["arch"]["name"], meta["arch"]["kwargs"]
    plan = _plan(name, kwargs, config)
    if plan.weights > max_weights:
        raise ModelFormatError(
            f"architecture {name!r} has {plan.weights:,} weights, more than max_weights "
            f"({max_weights:,}); pass a larger max_weights to load it"
        )
    if len(plan.layers) != len(meta["layers"]):
        raise ModelFormatError(
            f"the file lists {len(meta['layers'])} layers, architecture {name!r} has "
            f"{len(plan.layers)}"
        )
    for layer, lp in zip(meta["layers"], plan.layers, strict=True):
        if (layer["name"], tuple(layer["shape"]), layer["mode"]) != (lp.name, lp.shape, lp.mode):
            raise ModelFormatError(
                f"layer {layer['index']} is {layer['name']!r} {layer['shape']} ({layer['mode']}), "
                f"architecture {name!r} has {lp.name!r} {list(lp.shape)} ({lp.mode})"
            )
    params = {p["name"]: tuple(p["shape"]) for p in meta["params"]}
    if params != plan.params:
        extra = sorted(set(params) - set(plan.params))
        lacking = sorted(set(plan.params) - set(params))
        differ = sorted(k for k in set(params) & set(plan.params) if params[k] != plan.params[k])
        raise ModelFormatError(
            f"per-channel tensors do not fit architecture {name!r} (unexpected {extra[:3]}, "
            f"missing {lacking[:3]}, other shape {differ[:3]})"
        )
    hidden = [x for x in meta["layers"] if x["mode"] == "hidden"]
    _check_kept([(x["name"], x["n"], x["kept"]) for x in hidden], config)

    blob = head + fh.read(file_bytes - len(head))
    if len(blob) != file_bytes:
        raise ModelFormatError("file is truncated (shrank while being read)")
    data = memoryview(blob)[len(head) :]
    if _sha256(data) != meta["payload_sha256"]:
        raise ModelFormatError(
            "payload checksum mismatch (payload_sha256): the tensor data is corrupted"
        )
    masks = {}
    for layer in hidden:
        e = info.tensors[layer["tensor"]]
        what = f"layer {layer['name']!r}"
        try:
            bits = codecs.decode(data[e.begin : e.end], layer["n"], layer["codec"])
        except codecs.CodecError as exc:
            raise ModelFormatError(f"{what}: mask does not decode ({exc})") from None
        ones = int(np.count_nonzero(bits))
        if ones != layer["kept"]:
            raise ModelFormatError(
                f"{what}: mask keeps {ones} weights, the header says {layer['kept']}"
            )
        masks[layer["name"]] = bits

    def tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        e = info.tensors[key]
        array = np.frombuffer(data[e.begin : e.end], dtype=_NP_DTYPES[e.dtype]).reshape(shape)
        return torch.from_numpy(array.astype(np.float32))

    try:
        model = models.create(name, config, init_scores=False, **kwargs)
    except Exception as exc:  # the meta-device plan built, so this is memory or a torch error
        raise ModelFormatError(f"architecture {name!r} cannot be built ({_first(exc)})") from None
    problem = _mismatch(model, plan, config)
    if problem:
        raise ModelFormatError(f"internal: the rebuilt model does not fit the file ({problem})")
    with torch.no_grad():
        state = _per_channel(model)
        for p in meta["params"]:
            state[p["name"]].copy_(tensor(p["tensor"], tuple(p["shape"])))
        for (qual, layer), entry in zip(_supermask_layers(model), meta["layers"], strict=True):
            if layer.hidden:
                bits = torch.from_numpy(masks[qual]).reshape(layer.scores.shape)
                layer.scores.copy_(bits.to(layer.scores.dtype))
            else:
                layer.weight.copy_(tensor(entry["tensor"], tuple(entry["shape"])))
        for qual, layer in _supermask_layers(model) if check_masks else ():
            if layer.hidden and not torch.equal(
                layer.mask().to(torch.bool).reshape(-1), torch.from_numpy(masks[qual])
            ):
                raise ModelFormatError(f"internal: layer {qual!r} does not reselect its mask")
    return model.eval(), info


def load(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    max_weights: int = DEFAULT_MAX_WEIGHTS,
    check_masks: bool = True,
) -> nn.Module:
    """Rebuild the hidden network stored at ``path``; an eval-mode module on ``device``.

    Frozen weights are regenerated from the seed; each hidden layer's ``scores`` are set to its
    stored mask as 0/1 values, which the layer's own top-k selection re-selects exactly (the
    original scores are not in the file: resume training from the checkpoint instead). With
    float32 parameters the outputs equal the saved model's bit for bit.

    ``max_weights`` caps the architecture's weight count (memory is about 9 bytes per weight
    while building). ``check_masks`` runs every hidden layer's selection once to confirm it
    re-selects the stored mask (about one forward pass of top-k work; False skips it).
    Raises ModelFormatError for any bad, truncated or hostile file.
    """
    if isinstance(max_weights, bool) or not isinstance(max_weights, int) or max_weights < 1:
        raise ValueError(f"max_weights must be a positive integer, got {max_weights!r}")
    with _open(path) as fh:
        model, _ = _guard(path, lambda: _load(fh, str(path), max_weights, check_masks))
    return model.to(device)
