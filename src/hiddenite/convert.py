"""Turning any ``nn.Module`` into a hidden network, and back.

``supermask_(model, SupermaskConfig(...), filter_fn=None)`` swaps, in place, every
``nn.Conv2d`` and ``nn.Linear`` that ``filter_fn`` accepts for its supermask twin, in the
spirit of torchao's ``quantize_``. Layers are numbered in ``named_modules()`` order among the
candidates; that number (with the model seed) is where each layer's frozen weights come
from, so the same architecture and config always rebuild the same weights.

``to_dense(model)`` returns a copy in which every supermask layer is a plain
``nn.Conv2d``/``nn.Linear`` holding ``weight * mask``: same outputs, no hiddenite needed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

from .errors import ConfigError
from .init import INITS, RELU_GAIN
from .layers import SupermaskConv2d, SupermaskLayer, SupermaskLinear
from .methods import DenseConfig, EdgePopupConfig, MethodConfig, get_method, method_config
from .ops import operator_choices, set_operator_choices_
from .prng import DEFAULT_LANES, PRNG_VERSION
from .quant import attach_quantizer_, quantizer_of

CONFIG_VERSION = 2
# Largest initialisation gain: relative to the variance-keeping ReLU gain sqrt(2), each layer
# without normalisation multiplies the activations by gain / sqrt(2); the deepest zoo network
# without batch norm (conv8: 11 layers) then grows them by at most (16 / sqrt(2))**11, about
# 2**38.5, far inside float32's 2**128: every zoo model's outputs stay finite. (gain = 1e38
# made them infinite.)
MAX_GAIN = 16.0

FilterFn = Callable[[nn.Module, str], bool]

__all__ = [
    "CONFIG_VERSION",
    "ConfigError",
    "LayerPlan",
    "SupermaskConfig",
    "can_materialize",
    "materialize_",
    "plan_layers",
    "supermask_",
    "to_dense",
    "unwrap_model",
]


@dataclass(frozen=True)
class SupermaskConfig:
    """How to turn layers into supermask layers (versioned; round-trips through JSON).

    density: fraction of weights KEPT, in (0, 1], for every method.
    init: frozen-weight distribution, one of ``INITS``.
    seed: model seed, 0 <= seed < 2**64; every frozen weight derives from it.
    method: the supermask method: a name (``"edge-popup"``, ``"dense"``, ...; its default
      arguments) or a typed config from :mod:`hiddenite.methods`, e.g.
      ``method_config("edge-popup", scope="global")``. Stored as that config.
    scale_by_density: divide the frozen weights by sqrt(density) (edge-popup's "scaled"
      init; on by default: without it each layer's signal shrinks by density, which stalls
      deep networks without batch norm, see BENCHMARKS.md).
    keep_first_dense / keep_last_dense: leave the first / last converted layer as a
      ``dense`` twin (trained weights), as the edge-popup recipe often does.
    gain: initialisation gain (sqrt(2) for ReLU), in (0, MAX_GAIN = 16].
    n_lanes: Xorshift lanes per layer (PRNG version 1 default: 4096).

    Version 1 dicts (``mode`` hidden/dense and ``scope``) are read as edge-popup / dense.
    """

    density: float = 0.5
    init: str = "signed-constant"
    seed: int = 0
    method: MethodConfig | str = "edge-popup"
    scale_by_density: bool = True
    keep_first_dense: bool = False
    keep_last_dense: bool = False
    gain: float = RELU_GAIN
    n_lanes: int = DEFAULT_LANES
    prng_version: int = PRNG_VERSION
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        def fail(field: str, problem: str) -> None:
            raise ConfigError(f"SupermaskConfig.{field}: {problem}")

        for name in ("scale_by_density", "keep_first_dense", "keep_last_dense"):
            if not isinstance(getattr(self, name), bool):
                fail(name, f"must be true or false, got {getattr(self, name)!r}")
        for name in ("seed", "n_lanes", "prng_version", "version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                fail(name, f"must be an integer, got {value!r}")
        for name in ("density", "gain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(name, f"must be a number, got {value!r}")
        if not (0.0 < self.density <= 1.0) or math.isnan(self.density):
            fail("density", f"the kept fraction must be in (0, 1], got {self.density}")
        if self.init not in INITS:
            fail("init", f"unknown {self.init!r}; choose one of {', '.join(INITS)}")
        if not 0 <= self.seed < 2**64:
            fail("seed", f"must be in [0, 2**64), got {self.seed}")
        if not isinstance(self.method, MethodConfig | str):
            fail("method", f"must be a method name or config, got {self.method!r}")
        try:
            object.__setattr__(self, "method", method_config(self.method))
        except ConfigError as exc:
            fail("method", str(exc))
        if not (0 < self.gain <= MAX_GAIN):
            fail("gain", f"must be in (0, {MAX_GAIN}], got {self.gain}")
        if self.n_lanes < 1:
            fail("n_lanes", f"must be >= 1, got {self.n_lanes}")
        if self.prng_version != PRNG_VERSION:
            fail(
                "prng_version",
                f"{self.prng_version} is not supported (this build: "
                f"{PRNG_VERSION}); upgrade hiddenite",
            )
        if self.version != CONFIG_VERSION:
            fail("version", f"{self.version} is not supported (this build: {CONFIG_VERSION})")

    @property
    def method_name(self) -> str:
        return self.method.method

    def replace(self, **changes: Any) -> SupermaskConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field (the method as its own config dict)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["method"] = self.method.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupermaskConfig:
        """Build from :meth:`to_dict` output (version 1 or 2); unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"SupermaskConfig: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        if data.get("version") == 1 and not isinstance(data["version"], bool):
            data = _from_version_1(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"SupermaskConfig: unknown field(s) {', '.join(unknown)}")
        if isinstance(data.get("method"), dict):
            data["method"] = method_config(data["method"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SupermaskConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SupermaskConfig: not valid JSON ({exc})") from None
        return cls.from_dict(data)


# The methods that version 1 (before the method seam) named by ``mode``: the one place that
# vocabulary is read, by SupermaskConfig here and by the version 1 model-file reader.
VERSION_1_MODES: dict[str, Callable[[str], MethodConfig]] = {
    "hidden": lambda scope: EdgePopupConfig(scope=scope),
    "dense": lambda scope: DenseConfig(),
}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (``model`` itself if
    it is not wrapped): what the model file, the summary and the hardware model read."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def version_1_method(mode: Any, scope: str = "layer") -> MethodConfig:
    """The method a version 1 ``mode`` meant (``scope`` applies to ``hidden``: edge-popup)."""
    factory = VERSION_1_MODES.get(mode) if isinstance(mode, str) else None
    if factory is None:
        raise ConfigError(
            f"version 1 mode must be one of {', '.join(VERSION_1_MODES)}, got {mode!r}"
        )
    return factory(scope)


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 dict (``mode`` hidden/dense, ``scope``) as version 2 fields."""
    data["method"] = version_1_method(data.pop("mode", "hidden"), data.pop("scope", "layer"))
    data["version"] = CONFIG_VERSION
    return data


@dataclass(frozen=True)
class LayerPlan:
    """One layer that a conversion turns into a supermask layer (found without tensors)."""

    names: tuple[str, ...]  # every qualified name the module is reachable by
    index: int
    shape: tuple[int, ...]
    config: MethodConfig
    density: float

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def n(self) -> int:
        return math.prod(self.shape)


def _candidates(model: nn.Module, filter_fn: FilterFn | None) -> list[tuple[list[str], nn.Module]]:
    """Convertible layers in ``named_modules`` order, each with every name it is reachable by."""
    found: dict[int, tuple[list[str], nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, SupermaskLayer) or type(module) not in (nn.Conv2d, nn.Linear):
            continue
        if id(module) in found:
            found[id(module)][0].append(name)
            continue
        if filter_fn is None or filter_fn(module, name):
            if name == "":
                raise ValueError(
                    "supermask_ converts layers inside a model; for a bare layer use "
                    "SupermaskConv2d / SupermaskLinear directly, or wrap it in nn.Sequential"
                )
            found[id(module)] = ([name], module)
    return list(found.values())


def plan_layers(
    model: nn.Module, config: SupermaskConfig, filter_fn: FilterFn | None = None
) -> list[LayerPlan]:
    """Which layers of ``model`` :func:`supermask_` converts, their indices, methods, densities.

    The one planning rule behind conversion, the model file and the hardware model: plain
    ``nn.Conv2d``/``nn.Linear`` layers that ``filter_fn`` accepts, in ``named_modules`` order,
    numbered after any supermask layers already in the model; the first / last kept dense on
    request; the method's :meth:`~hiddenite.methods.Method.layer_configs` gives each of the
    others its config and density. Works on the ``meta`` device (no memory).
    """
    return _plan(model, config, _candidates(model, filter_fn))


def _plan(
    model: nn.Module, config: SupermaskConfig, found: list[tuple[list[str], nn.Module]]
) -> list[LayerPlan]:
    if not found:
        raise ValueError("supermask_: no nn.Conv2d or nn.Linear layer matched")
    # a second call continues the numbering, so no two layers share a weight stream
    existing = [m.layer_index for m in model.modules() if isinstance(m, SupermaskLayer)]
    first_index = max(existing) + 1 if existing else 0
    last = len(found) - 1
    dense = [
        (position == 0 and config.keep_first_dense) or (position == last and config.keep_last_dense)
        for position in range(len(found))
    ]
    converted = [i for i in range(len(found)) if not dense[i]]
    shapes = [tuple(found[i][1].weight.shape) for i in converted]
    method = get_method(config.method_name)
    chosen = dict(
        zip(converted, method.layer_configs(shapes, config.method, config.density), strict=True)
    )
    plans = []
    for position, (names, module) in enumerate(found):
        layer_config, density = chosen.get(position, (DenseConfig(), 1.0))
        plans.append(
            LayerPlan(
                tuple(names),
                first_index + position,
                tuple(module.weight.shape),
                layer_config,
                float(density),
            )
        )
    return plans


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _twin(
    module: nn.Module, config: SupermaskConfig, plan: LayerPlan, init_state: bool = True
) -> nn.Module:
    common = dict(
        density=plan.density,
        init=config.init,
        seed=config.seed,
        layer_index=plan.index,
        method=plan.config,
        scale_by_density=config.scale_by_density,
        gain=config.gain,
        n_lanes=config.n_lanes,
        init_state=init_state,
        device=module.weight.device,
    )
    if isinstance(module, nn.Conv2d):
        return SupermaskConv2d(*_shape_args(module), **common)
    return SupermaskLinear(*_shape_args(module), **common)


def _shape_args(module: nn.Module, has_bias: bool | None = None) -> tuple:
    """The positional constructor arguments that rebuild ``module``'s layer geometry."""
    has_bias = module.bias is not None if has_bias is None else has_bias
    if isinstance(module, nn.Conv2d):
        return (
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            has_bias,
            module.padding_mode,
        )
    return (module.in_features, module.out_features, has_bias)


def supermask_(
    model: nn.Module,
    config: SupermaskConfig,
    filter_fn: FilterFn | None = None,
    *,
    init_state: bool = True,
) -> nn.Module:
    """Swap matching ``nn.Conv2d``/``nn.Linear`` layers of ``model`` for supermask twins.

    ``filter_fn(module, qualified_name)`` selects layers (default: all). Works in place and
    returns ``model``. Layers already converted are left alone; a later call numbers its
    layers after the existing ones. A layer reachable under several names is converted once
    and stays shared. ``init_state=False`` leaves the learned state at zero instead of
    drawing it from the seed (for a caller that loads it right after).
    """
    if not isinstance(config, SupermaskConfig):
        raise TypeError(f"config must be a SupermaskConfig, got {type(config).__name__}")
    found = _candidates(model, filter_fn)  # filter_fn runs once per candidate
    plans = _plan(model, config, found)
    modules = {names[0]: module for names, module in found}
    linked = []
    for plan in plans:
        twin = _twin(modules[plan.name], config, plan, init_state)
        twin.conversion = config
        if twin.method.name == config.method_name:
            linked.append(twin)
        for name in plan.names:  # a module shared under several names stays shared
            _replace(model, name, twin)
    get_method(config.method_name).link(linked, config.method)
    return model


def _holds_tensors(module: nn.Module) -> bool:
    """Whether ``module`` itself (not its children) registers a parameter or buffer (read
    from its registries: ``parameters(recurse=False)`` walks the module tree each call)."""
    return any(t is not None for t in module._parameters.values()) or any(
        t is not None for t in module._buffers.values()
    )


def can_materialize(model: nn.Module) -> bool:
    """Whether :func:`materialize_` rebuilds every tensor of ``model``: each module holding
    tensors is a supermask layer or a ``torch.nn`` layer that has ``reset_parameters``."""
    return all(
        isinstance(module, SupermaskLayer)
        or not _holds_tensors(module)
        or (type(module).__module__.startswith("torch.nn.") and hasattr(module, "reset_parameters"))
        for module in model.modules()
    )


def _empty_(module: nn.Module, device: torch.device, skip: str = "") -> None:
    """``module.to_empty(device=device, recurse=False)`` less the tensor named ``skip``: its own
    parameters and buffers get unfilled memory of the same shape, strides and dtype (one
    ``torch.empty_strided`` each: ``to_empty``'s ``empty_like`` of a ``meta`` tensor runs
    torch's Python reference implementation, about 20 us a tensor)."""
    for key, param in module._parameters.items():
        if param is not None and key != skip:
            fresh = torch.empty_strided(
                param.shape, param.stride(), dtype=param.dtype, device=device
            )
            module._parameters[key] = nn.Parameter(fresh, param.requires_grad)
    for key, buf in module._buffers.items():
        if buf is not None and key != skip:
            module._buffers[key] = torch.empty_strided(
                buf.shape, buf.stride(), dtype=buf.dtype, device=device
            )


def materialize_(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Give a model converted on the ``meta`` device memory on ``device``, in place: the state
    that building and converting it there with ``init_state=False`` leaves, without torch's
    random init of the layers conversion replaces (and without any random draw): the
    supermask layers regenerate their weights and set up their learned state at zero
    (:meth:`SupermaskLayer.materialize_`), the layers converted together are linked again,
    every other module resets itself (batch norm: ones, zeros and fresh running statistics).
    Biases of supermask layers are left for the caller to load. Requires
    :func:`can_materialize` (ValueError otherwise)."""
    if not can_materialize(model):
        raise ValueError("materialize_: a module holds tensors it cannot reset")
    device = torch.device(device)
    linked: dict[int, tuple[SupermaskConfig, list[SupermaskLayer]]] = {}
    for module in model.modules():
        if isinstance(module, SupermaskLayer):
            _empty_(module, device, skip="weight")  # the weight is regenerated right here
            module.materialize_(device)
            config = module.conversion
            if config is not None and module.method.name == config.method_name:
                linked.setdefault(id(config), (config, []))[1].append(module)
        elif _holds_tensors(module):
            _empty_(module, device)
            module.reset_parameters()
    for config, layers in linked.values():
        get_method(config.method_name).link(layers, config.method)
    return model


def to_dense(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A model whose supermask layers are plain layers holding ``weight * mask``; each keeps
    the layer's input quantizer (:mod:`hiddenite.quant`) and multiply operator
    (:mod:`hiddenite.ops`), so the copy computes what the model computes."""
    out = model if inplace else copy.deepcopy(model)
    choices = operator_choices(out)
    plain_of: dict[int, nn.Module] = {}
    replaced = []
    for name, module in list(out.named_modules(remove_duplicate=False)):
        if not isinstance(module, SupermaskLayer):
            continue
        if id(module) not in plain_of:
            plain_of[id(module)] = _plain(module)
        _replace(out, name, plain_of[id(module)])
        replaced.append(name)
    set_operator_choices_(out, {name: choices[name] for name in replaced if name in choices})
    return out


def _plain(module: SupermaskLayer) -> nn.Module:
    weight = module.effective_weight().detach().clone()
    bias = module.effective_bias()
    kind = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    plain = skip_init(kind, *_shape_args(module, bias is not None), device=weight.device)
    plain.weight = nn.Parameter(weight)
    if bias is not None:
        plain.bias = nn.Parameter(bias.detach().clone())
    quantizer = quantizer_of(module)
    if quantizer is not None:
        attach_quantizer_(plain, quantizer.config).load_state_dict(quantizer.state_dict())
    plain.train(module.training)
    return plain
