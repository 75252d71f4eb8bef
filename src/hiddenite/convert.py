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

from torch import nn
from torch.nn.utils import skip_init

from .init import INITS, RELU_GAIN
from .layers import MODES, SupermaskConv2d, SupermaskLayer, SupermaskLinear
from .masks import GlobalThreshold
from .prng import DEFAULT_LANES, PRNG_VERSION

CONFIG_VERSION = 1
SCOPES = ("layer", "global")

FilterFn = Callable[[nn.Module, str], bool]

__all__ = ["CONFIG_VERSION", "SCOPES", "ConfigError", "SupermaskConfig", "supermask_", "to_dense"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class SupermaskConfig:
    """How to turn layers into supermask layers (versioned; round-trips through JSON).

    density: fraction of weights KEPT, in (0, 1].
    init: frozen-weight distribution, one of ``INITS``.
    seed: model seed, 0 <= seed < 2**64; every frozen weight derives from it.
    mode: ``"hidden"`` (learned masks over frozen weights) or ``"dense"`` (the twin).
    scope: ``"layer"`` (each layer keeps ``density``) or ``"global"`` (one threshold).
    scale_by_density: divide the frozen weights by sqrt(density) (edge-popup's "scaled"
      init; on by default: without it each layer's signal shrinks by density, which stalls
      deep networks without batch norm, see BENCHMARKS.md).
    keep_first_dense / keep_last_dense: leave the first / last converted layer as a
      dense-mode twin (trained weights), as the edge-popup recipe often does.
    gain: initialisation gain (sqrt(2) for ReLU).
    n_lanes: Xorshift lanes per layer (PRNG version 1 default: 4096).
    """

    density: float = 0.5
    init: str = "signed-constant"
    seed: int = 0
    mode: str = "hidden"
    scope: str = "layer"
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
        if self.mode not in MODES:
            fail("mode", f"unknown {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.scope not in SCOPES:
            fail("scope", f"unknown {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if not (self.gain > 0 and math.isfinite(self.gain)):
            fail("gain", f"must be a positive finite number, got {self.gain}")
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupermaskConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"SupermaskConfig: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"SupermaskConfig: unknown field(s) {', '.join(unknown)}")
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


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _twin(
    module: nn.Module, config: SupermaskConfig, index: int, mode: str, init_scores: bool = True
) -> nn.Module:
    common = dict(
        density=config.density,
        init=config.init,
        seed=config.seed,
        layer_index=index,
        mode=mode,
        scale_by_density=config.scale_by_density,
        gain=config.gain,
        n_lanes=config.n_lanes,
        init_scores=init_scores,
        device=module.weight.device,
    )
    if isinstance(module, nn.Conv2d):
        return SupermaskConv2d(*_shape_args(module), **common)
    return SupermaskLinear(*_shape_args(module), **common)


def _shape_args(module: nn.Module) -> tuple:
    """The positional constructor arguments that rebuild ``module``'s layer geometry."""
    has_bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        return (
            module.in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, module.groups, has_bias, module.padding_mode,
        )  # fmt: skip
    return (module.in_features, module.out_features, has_bias)


def supermask_(
    model: nn.Module,
    config: SupermaskConfig,
    filter_fn: FilterFn | None = None,
    *,
    init_scores: bool = True,
) -> nn.Module:
    """Swap matching ``nn.Conv2d``/``nn.Linear`` layers of ``model`` for supermask twins.

    ``filter_fn(module, qualified_name)`` selects layers (default: all). Works in place and
    returns ``model``. Layers already converted are left alone; a later call numbers its
    layers after the existing ones. A layer reachable under several names is converted once
    and stays shared. ``init_scores=False`` leaves the scores at zero instead of drawing
    them from the seed (for a caller that loads them right after).
    """
    if not isinstance(config, SupermaskConfig):
        raise TypeError(f"config must be a SupermaskConfig, got {type(config).__name__}")
    found = _candidates(model, filter_fn)
    if not found:
        raise ValueError("supermask_: no nn.Conv2d or nn.Linear layer matched")
    # a second call continues the numbering, so no two layers share a weight stream
    existing = [m.layer_index for m in model.modules() if isinstance(m, SupermaskLayer)]
    first_index = max(existing) + 1 if existing else 0
    group = GlobalThreshold(config.density) if config.scope == "global" else None
    last = len(found) - 1
    for position, (names, module) in enumerate(found):
        keep_dense = (position == 0 and config.keep_first_dense) or (
            position == last and config.keep_last_dense
        )
        mode = "dense" if keep_dense or config.mode == "dense" else "hidden"
        twin = _twin(module, config, first_index + position, mode, init_scores)
        if group is not None and twin.hidden:
            group.register(twin)
            twin.set_mask_group(group)
        for name in names:  # a module shared under several names stays shared
            _replace(model, name, twin)
    return model


def to_dense(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A model whose supermask layers are plain layers holding ``weight * mask``."""
    out = model if inplace else copy.deepcopy(model)
    plain_of: dict[int, nn.Module] = {}
    for name, module in list(out.named_modules(remove_duplicate=False)):
        if not isinstance(module, SupermaskLayer):
            continue
        if id(module) not in plain_of:
            plain_of[id(module)] = _plain(module)
        _replace(out, name, plain_of[id(module)])
    return out


def _plain(module: SupermaskLayer) -> nn.Module:
    weight = module.effective_weight().detach().clone()
    kind = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    plain = skip_init(kind, *_shape_args(module), device=weight.device)
    plain.weight = nn.Parameter(weight)
    if module.bias is not None:
        plain.bias = nn.Parameter(module.bias.detach().clone())
    plain.train(module.training)
    return plain
