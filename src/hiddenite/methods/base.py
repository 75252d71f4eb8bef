"""The method seam: what a supermask method learns, stores and costs.

A *method* answers three questions for one layer of frozen seed-regenerated weights:

- what is learned, and how the forward pass turns it into the effective weight (with its
  straight-through gradient): :meth:`Method.setup`, :meth:`Method.initialize`,
  :meth:`Method.weight`;
- what is stored: a list of :class:`Part` (name, number of symbols, alphabet), known from the
  layer's shape and config alone, so that the model file, the summary and the hardware model
  can reason about it without tensors; :meth:`Method.export` gives the symbols and
  :meth:`Method.restore` rebuilds the learned state from them;
- what the hardware does with it: :meth:`Method.cost` (:class:`LayerCost`).

Each method is one module with its own :class:`MethodConfig` subclass (a frozen, validated,
versioned dataclass with a JSON round trip) and one :func:`register_method` call. Nothing
outside ``hiddenite.methods`` knows a method by name.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError
from ..masks import kept_count as _kept_count

__all__ = [
    "METHODS",
    "LayerCost",
    "LayerItem",
    "Method",
    "MethodConfig",
    "Part",
    "get_method",
    "method_config",
    "register_method",
    "zeros_like",
]


@dataclass(frozen=True)
class Part:
    """One stored part of a layer: ``n`` symbols over ``alphabet`` values.

    ``alphabet`` is 2 for a bit, 3 for keep/hide/invert, C+1 for C coats, ...; ``None`` means
    real values (stored as floats at the file's parameter dtype, e.g. a dense layer's weights).
    """

    name: str
    n: int
    alphabet: int | None

    @property
    def is_symbols(self) -> bool:
        return self.alphabet is not None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "alphabet": self.alphabet}


@dataclass(frozen=True)
class LayerCost:
    """What the accelerator model needs to know about one layer's method.

    weight_source: ``"prng"`` (frozen weights regenerated on chip from the seed) or
      ``"stored"`` (weights shipped from memory, e.g. a dense or binarized layer).
    weight_bits: bits of the weight operand each PE multiplies or adds (1: a sign, add/sub
      only; more: a multiplier level or a stored weight).
    op: what a PE does per kept weight: ``"add"`` (signed add of the activation),
      ``"shift-add"`` (small integer multiple), ``"xnor"`` (binarized), ``"mac"`` (full multiply),
      ``"bit-serial"`` (``weight_bits`` {-1,+1} digits accumulated one per cycle, MSB first).
    prng_streams: named PRNG streams the chip steps to build the layer.
    """

    weight_source: str
    weight_bits: int
    op: str
    prng_streams: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.weight_source not in ("prng", "stored"):
            raise ValueError(f"weight_source must be prng or stored, got {self.weight_source!r}")
        if self.op not in ("add", "shift-add", "xnor", "mac", "bit-serial"):
            raise ValueError(f"op must be add, shift-add, xnor, mac or bit-serial, got {self.op!r}")
        if self.weight_bits < 1:
            raise ValueError(f"weight_bits must be >= 1, got {self.weight_bits}")


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` from JSON as the dataclass field type ``hint`` (lists become tuples)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, what)
            except ConfigError:
                continue
        raise ConfigError(f"{what}: {value!r} is not a valid value")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{what}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(v, item, f"{what}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{what}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{what}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{what}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{what}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{what}: unsupported field type {hint!r}")  # a method's own bug


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config: frozen, validated on construction, versioned.

    Subclasses set the class variables ``method`` (the registered name) and ``VERSION``, add
    their fields (each with a default, so ``--method NAME`` alone trains sensibly) and check
    them in :meth:`check`, raising :class:`ConfigError` through :meth:`fail`.
    """

    method: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(value, _field_type(type(self), f.name), self._what(f.name))
            object.__setattr__(self, f.name, coerced)
        self.check()

    def _what(self, field: str) -> str:
        return f"method {self.method!r}: {field}"

    def fail(self, field: str, problem: str) -> typing.NoReturn:
        raise ConfigError(f"{self._what(field)} {problem}")

    def check(self) -> None:
        """Validate the fields (override; the types are already checked)."""

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "version": ..., **fields}``, JSON-ready."""
        data: dict[str, Any] = {"name": self.method, "version": self.VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """Build from :meth:`to_dict` output; unknown fields or another version are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"method config must be a JSON object, got {data!r}")
        data = dict(data)
        name = data.pop("name", cls.method)
        if name != cls.method:
            raise ConfigError(f"method config names {name!r}, expected {cls.method!r}")
        version = data.pop("version", cls.VERSION)
        if version != cls.VERSION or isinstance(version, bool):
            raise ConfigError(
                f"method {cls.method!r}: config version {version!r} is not supported "
                f"(this build: {cls.VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"method {cls.method!r} has no argument(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(known)) or 'none'}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> MethodConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.method}({fields})"


@dataclass(frozen=True)
class LayerItem:
    """One layer as the file reader sees it: geometry, method config, density, decoded parts."""

    name: str
    shape: tuple[int, ...]
    config: MethodConfig
    density: float
    arrays: dict[str, np.ndarray]


class Method(abc.ABC):
    """A supermask method (one instance per registered name; stateless).

    The layer keeps geometry, seed, layer index, init, density and its method config; the
    method registers and owns every learned tensor of the layer. Override what differs from
    the defaults below.
    """

    name: ClassVar[str]
    config_type: ClassVar[type[MethodConfig]]
    #: the layer's weights are a trained Parameter (dense, binarized), not a seed-regenerated
    #: buffer; a trained layer's bias starts uniform from the "bias" stream, else at zero
    trains_weights: ClassVar[bool] = False
    #: PRNG streams the method draws from (besides the frozen weights' "weights")
    streams: ClassVar[tuple[str, ...]] = ()
    #: (optimizer, peak learning rate) that train this method when the user names neither;
    #: None: the command line's defaults (SGD at 0.1)
    default_optimizer: ClassVar[tuple[str, float] | None] = None
    #: frozen-weight distribution (one of :data:`hiddenite.init.INITS`) the command line uses
    #: for this method when the user gives no ``--init``; None: the package default
    default_init: ClassVar[str | None] = None
    #: the method learns a binary connectivity (keep / prune) mask by a top-k of a score per
    #: weight, which ``frozen`` may restrict to the positions its seed leaves free: the method
    #: then honours ``layer.freezing`` and implements :meth:`frozen_parts` and
    #: :meth:`frozen_check_layer` (see :mod:`hiddenite.methods.freezing`)
    freezable: ClassVar[bool] = False

    # -- planning ------------------------------------------------------------------------------
    def layer_configs(
        self, shapes: list[tuple[int, ...]], config: MethodConfig, density: float
    ) -> list[tuple[MethodConfig, float]]:
        """Per-layer (config, density) for layers converted together (default: all the same)."""
        return [(config, density) for _ in shapes]

    def scale_density(self, config: MethodConfig, density: float) -> float | None:
        """The kept fraction the frozen weights are scaled by with ``scale_by_density``
        (divided by its square root); None: never scaled."""
        return density

    def link(self, layers: list[Any], config: MethodConfig) -> None:
        """Called once with every layer converted together under ``config`` (e.g. to share
        one global threshold)."""
        return  # optional: nothing by default

    # -- the layer -----------------------------------------------------------------------------
    def setup(self, layer: Any) -> None:
        """Register the learned tensors on ``layer`` (zero-filled)."""
        return  # optional: nothing by default

    def initialize(self, layer: Any) -> None:
        """Draw the learned tensors' initial values from the PRNG."""
        return  # optional: nothing by default

    @abc.abstractmethod
    def weight(self, layer: Any) -> torch.Tensor:
        """The effective weight of the forward pass, with its straight-through gradient."""

    def bias(self, layer: Any) -> torch.Tensor | None:
        """The effective bias of the forward pass (default: the layer's own, or None)."""
        return layer.bias

    def output(self, layer: Any, y: torch.Tensor) -> torch.Tensor:
        """The layer's output from its product ``y`` (default: ``y`` unchanged). A method
        whose training normalises the output with the batch's own statistics (ProgressiveNN's
        per-precision batch norm) overrides it; in eval mode it must stay foldable into
        :meth:`weight` and :meth:`bias`, which the file, kernels and hardware model read."""
        return y

    def sync_batch_statistics(self, layer: Any, on: bool) -> bool:
        """Data-parallel training (:func:`hiddenite.distributed.sync_batch_norms`): from now
        on take the batch statistics :meth:`output` computes in training over every rank of
        the default process group (``on``, e.g. with
        :func:`hiddenite.sync_batch_norm.global_moments`) or over this process's batch
        (off, the default). Returns whether this layer takes batch statistics at all
        (default: no statistics, False)."""
        return False

    def training_passes(self, layers: list[Any]) -> Iterator[float] | None:
        """The passes of one training step over a model holding ``layers`` (this method's):
        an iterator that puts the layers in each pass's state, yields the weight of that
        pass's loss (the weights sum to 1), and restores the layers when it ends or is closed.
        None (the default): one ordinary pass."""
        return None

    def support(self, layer: Any) -> torch.Tensor:
        """Boolean tensor (weight-shaped): positions whose effective weight is used."""
        with torch.no_grad():
            return self.weight(layer) != 0

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        """Names of the layer's ``state_dict`` entries this method exports as parts."""
        return ()

    def weight_factor(self, layer: Any) -> torch.Tensor | None:
        """int8 factor ``f`` (weight-shaped, values -1, 0, +1) with effective weight exactly
        ``layer.weight * f``, for a method that only masks (and perhaps inverts) the frozen
        weights; None (the default) when the effective weight is not of that form. Kernels
        that regenerate the weights from the seed apply ``f`` from packed bits."""
        return None

    # -- storage -------------------------------------------------------------------------------
    @abc.abstractmethod
    def parts(self, shape: tuple[int, ...], config: MethodConfig, density: float) -> list[Part]:
        """What a layer of ``shape`` stores under ``config`` and ``density``, without tensors."""

    @abc.abstractmethod
    def export(self, layer: Any) -> dict[str, np.ndarray]:
        """Every part as a 1-D array: uint8 symbols (bool for a binary part) or float32."""

    @abc.abstractmethod
    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        """Set the learned state so that :meth:`weight` gives what was exported."""

    def restored_matches(self, layer: Any, arrays: dict[str, np.ndarray]) -> bool:
        """True when ``layer``, just restored from ``arrays``, gives back exactly those parts
        (the load's check of :meth:`restore`). The default exports every part once more and
        compares; a method may prove the same in fewer passes."""
        again = self.export(layer)
        return sorted(again) == sorted(arrays) and all(
            np.array_equal(np.asarray(again[key]), np.asarray(want)) for key, want in arrays.items()
        )

    def check(self, items: list[LayerItem]) -> None:
        """Raise ValueError if decoded parts cannot come from this method (counts, values).

        Called once with every layer of the method in a file; the default checks each layer
        with :meth:`check_layer`.
        """
        for item in items:
            self.check_layer(item)

    def check_layer(self, item: LayerItem) -> None:
        """Per-layer check of decoded parts (override)."""
        return  # optional: nothing by default

    def kept(
        self,
        shape: tuple[int, ...],
        config: MethodConfig,
        density: float,
        counts: dict[str, tuple[int, ...]],
    ) -> int:
        """Weights a stored layer uses, from its parts' symbol ``counts`` (as the file header
        records them); the default, exact for a per-layer density, is ``kept_count(n, density)``.
        A method whose layers share one global count overrides it."""
        return _kept_count(math.prod(shape), density)

    # -- freezing (methods that declare ``freezable``) ------------------------------------------
    def freezing_problem(self, config: MethodConfig) -> str | None:
        """Why ``frozen`` cannot restrict this method under ``config`` (None: it can)."""
        if not self.freezable:
            return "learns no binary connectivity mask that freezing can restrict"
        return None

    def frozen_parts(
        self, shape: tuple[int, ...], config: MethodConfig, density: float, counts: Any
    ) -> list[Part]:
        """:meth:`parts` of a layer whose connectivity is restricted by the freezing ``counts``
        (:class:`~hiddenite.methods.freezing.FrozenCounts`): connectivity over the free
        positions only. Only a ``freezable`` method is ever asked."""
        raise TypeError(f"method {self.name!r} is not freezable")

    def frozen_check_layer(self, item: LayerItem, counts: Any) -> None:
        """:meth:`check_layer` of decoded parts restricted by the freezing ``counts``."""
        raise TypeError(f"method {self.name!r} is not freezable")

    # -- hardware ------------------------------------------------------------------------------
    @abc.abstractmethod
    def cost(self, shape: tuple[int, ...], config: MethodConfig, density: float) -> LayerCost:
        """What the accelerator does with a layer of ``shape`` (weight source, op, streams)."""

    def describe(self, layer: Any) -> str:
        return f"method={layer.method_config.describe()}, density={layer.density:g}"


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Register ``method`` under ``method.name``; a second, different one is refused."""
    name = method.name
    if name in METHODS and type(METHODS[name]) is not type(method):
        raise ValueError(f"a supermask method named {name!r} is already registered")
    if method.config_type.method != name:
        raise ValueError(f"{type(method).__name__}: config_type.method must be {name!r}")
    METHODS[name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown supermask method {name!r}; choose one of {', '.join(METHODS)}"
        ) from None


def method_config(spec: str | MethodConfig | dict[str, Any], **args: Any) -> MethodConfig:
    """A method config from a name (with ``args``), a config, or its :meth:`to_dict`."""
    if isinstance(spec, MethodConfig):
        return spec.replace(**args) if args else spec
    if isinstance(spec, dict):
        if args:
            raise TypeError("method_config: give args or a dict, not both")
        return get_method(spec.get("name")).config_type.from_dict(spec)
    if isinstance(spec, str):
        cls = get_method(spec).config_type
        return cls.from_dict({"name": spec, **args})
    raise ConfigError(f"method must be a name or a MethodConfig, got {spec!r}")


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def zeros_like(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.zeros_like(tensor)`` for a method's learned state. A contiguous float tensor on
    the CPU gets numpy's memory (calloc: zero pages from the operating system, transparent
    huge pages for large arrays), which the first write fills several times faster on Linux
    than torch's own allocation (BENCHMARKS.md, "Loading a ResNet-50, round 2")."""
    kind = _NUMPY_FLOATS.get(tensor.dtype)
    if tensor.device.type == "meta" and tensor.is_contiguous():  # torch.zeros_like runs
        # torch's Python reference on meta (and imports sympy the first time): 5x slower
        return torch.zeros(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    if tensor.device.type != "cpu" or kind is None or not tensor.is_contiguous():
        return torch.zeros_like(tensor)
    return torch.from_numpy(np.zeros(tuple(tensor.shape), dtype=kind))


def fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])
