"""Arithmetic operators of layers: which multiplier a ``Linear`` / ``Conv2d`` computes with.

An *operator* is what a layer multiplies with, not how it learns: ``exact`` (ordinary float32
``F.linear`` / ``F.conv2d``) or ``mitchell`` / ``mitchell-bwd`` (Mitchell's logarithmic
approximate multiplier, :mod:`hiddenite.ops.logmul`; ``mitchell`` keeps exact straight-through
gradients, ``mitchell-bwd`` also uses Mitchell products in the backward matrix products). Each
operator is registered under its name and declares its hardware ``datapath`` (``exact`` or
``log``); the accelerator model costs a layer's multiplies from that declaration
(:class:`hiddenite.hw.spec.EnergyTable`, ``log_mult_pj``).

The operator is chosen per layer and per phase (``training`` for a module in training mode,
``inference`` for eval mode) with :func:`use_operator`, also usable as a context manager that
restores the previous choice. The choice is a plain Python attribute of the module: nothing is
added to ``state_dict``, and model files load unchanged.

Supermask layers (:mod:`hiddenite.layers`) inherit :class:`OperatorLayer` and call
``self.active_operator().linear(...)`` in their forward. A plain ``nn.Linear`` / ``nn.Conv2d``
(whose forward is torch's own) gets an instance-level ``forward`` that routes through the
operator while one is set, and loses it when the choice is cleared.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .logmul import logmul_conv2d, logmul_linear

__all__ = [
    "DATAPATHS",
    "OPERATORS",
    "PHASES",
    "Operator",
    "OperatorChoice",
    "OperatorLayer",
    "accepts_operator",
    "conv2d_forward",
    "get_operator",
    "operator_choice",
    "operator_choices",
    "operator_for",
    "set_operator_choices_",
    "use_operator",
]

DATAPATHS = ("exact", "log")
PHASES = ("training", "inference", "both")
_ATTR = "_hiddenite_operators"  # the OperatorChoice stored on a module (not in state_dict)


class Operator(abc.ABC):
    """How a layer multiplies: a name, the hardware datapath it stands for, and the two
    matrix products every ``Linear`` / ``Conv2d`` needs."""

    name: str
    datapath: str  # one of DATAPATHS: what the accelerator model charges per multiply
    description: str

    @abc.abstractmethod
    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """``F.linear`` semantics."""

    @abc.abstractmethod
    def conv2d(self, x, weight, bias, stride, padding, dilation, groups):
        """``F.conv2d`` semantics (numeric zero padding)."""


class ExactOperator(Operator):
    name = "exact"
    datapath = "exact"
    description = "exact float32 products (F.linear / F.conv2d)"

    def linear(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def conv2d(self, x, weight, bias, stride, padding, dilation, groups):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


@dataclass(frozen=True)
class MitchellOperator(Operator):
    name: str
    backward: str  # "ste" or "mitchell"
    description: str
    datapath: str = "log"

    def linear(self, x, weight, bias):
        return logmul_linear(x, weight, bias, backward=self.backward)

    def conv2d(self, x, weight, bias, stride, padding, dilation, groups):
        return logmul_conv2d(
            x, weight, bias, stride, padding, dilation, groups, backward=self.backward
        )


OPERATORS: Mapping[str, Operator] = MappingProxyType(
    {
        "exact": ExactOperator(),
        "mitchell": MitchellOperator(
            "mitchell", "ste", "Mitchell log products forward; exact straight-through gradients"
        ),
        "mitchell-bwd": MitchellOperator(
            "mitchell-bwd", "mitchell", "Mitchell log products forward and in the backward"
        ),
    }
)
"""Registered operators by name (read-only)."""


def get_operator(name: str | Operator) -> Operator:
    """The registered operator ``name`` (an :class:`Operator` is returned as is)."""
    if isinstance(name, Operator):
        return name
    try:
        return OPERATORS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown operator {name!r}; use one of {', '.join(OPERATORS)}") from None


@dataclass(frozen=True)
class OperatorChoice:
    """The operator a layer uses in each phase (names of registered operators)."""

    training: str = "exact"
    inference: str = "exact"

    def __post_init__(self) -> None:
        for phase in ("training", "inference"):
            get_operator(getattr(self, phase))  # a UserError names the registered ones

    def for_phase(self, training: bool) -> Operator:
        return get_operator(self.training if training else self.inference)

    def with_phase(self, phase: str, name: str) -> OperatorChoice:
        if phase == "both":
            return OperatorChoice(name, name)
        if phase == "training":
            return OperatorChoice(name, self.inference)
        return OperatorChoice(self.training, name)


_EXACT_CHOICE = OperatorChoice()  # immutable: exact in both phases, the default


class OperatorLayer:
    """Mixin of layers whose forward asks :meth:`active_operator` for its products."""

    def active_operator(self) -> Operator:
        """The operator for the layer's current phase (``exact`` unless one was set)."""
        return operator_for(self)


def operator_choice(module: Any) -> OperatorChoice:
    """The module's :class:`OperatorChoice` (exact in both phases unless one was set)."""
    return getattr(module, _ATTR, None) or _EXACT_CHOICE


def operator_for(module: Any) -> Operator:
    """The operator ``module`` computes with now (its ``training`` flag picks the phase)."""
    return operator_choice(module).for_phase(bool(getattr(module, "training", False)))


def _plain_kind(module: nn.Module) -> str | None:
    """``linear`` / ``conv2d`` for a layer whose forward is torch's own, else None."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return "linear"
    if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
        return "conv2d"
    return None


class _PlainForward:
    """Instance-level forward of a plain ``nn.Linear`` / ``nn.Conv2d`` with an operator."""

    def __init__(self, module: nn.Module, kind: str) -> None:
        self.module = module
        self.kind = kind

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.kind == "linear":
            return operator_for(m).linear(x, m.weight, m.bias)
        return conv2d_forward(m, x, m.weight, m.bias)


def conv2d_forward(module: nn.Conv2d, x: torch.Tensor, weight, bias) -> torch.Tensor:
    """``nn.Conv2d._conv_forward`` through the module's operator (non-zero padding modes pad
    first, as torch does)."""
    op = operator_for(module)
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        return op.conv2d(x, weight, bias, module.stride, 0, module.dilation, module.groups)
    return op.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def accepts_operator(module: nn.Module) -> bool:
    """True when an operator can be set on ``module``: a ``Linear`` / ``Conv2d`` that is an
    :class:`OperatorLayer` or uses torch's own forward (works on the ``meta`` device)."""
    if not isinstance(module, nn.Linear | nn.Conv2d):
        return False
    return isinstance(module, OperatorLayer) or _plain_kind(module) is not None


def operator_choices(model: nn.Module) -> dict[str, OperatorChoice]:
    """Every ``Linear`` / ``Conv2d`` of ``model`` whose choice is not exact in both phases,
    by qualified name (``named_modules`` order): what a model file declares."""
    return {
        name: operator_choice(m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and operator_choice(m) != OperatorChoice()
    }


def set_operator_choices_(model: nn.Module, choices: Mapping[str, OperatorChoice]) -> None:
    """Give each named layer of ``model`` its :class:`OperatorChoice` (the inverse of
    :func:`operator_choices`; layers not named keep theirs). ``UserError`` for a name that is
    not a ``Linear`` / ``Conv2d`` of the model that accepts an operator."""
    modules = dict(model.named_modules())
    for name, choice in choices.items():
        module = modules.get(name)
        if module is None or not accepts_operator(module):
            raise UserError(
                f"layer {name!r} is not a Linear / Conv2d layer of the model that takes an operator"
            )
        if not isinstance(choice, OperatorChoice):
            raise TypeError(f"choice of {name!r} must be an OperatorChoice, got {choice!r}")
        _set_choice(module, choice)


def _set_choice(module: nn.Module, choice: OperatorChoice | None) -> None:
    kind = None if isinstance(module, OperatorLayer) else _plain_kind(module)
    if choice is None or choice == OperatorChoice():
        if _ATTR in module.__dict__:
            del module.__dict__[_ATTR]
        if kind is not None and isinstance(module.__dict__.get("forward"), _PlainForward):
            del module.__dict__["forward"]
        return
    module.__dict__[_ATTR] = choice
    if kind is not None and not isinstance(module.__dict__.get("forward"), _PlainForward):
        module.__dict__["forward"] = _PlainForward(module, kind)


def _selected(
    model: nn.Module, layers: Iterable[str] | Callable[[str, nn.Module], bool] | None
) -> list[tuple[str, nn.Module]]:
    chosen = []
    names = None
    if layers is not None and not callable(layers):
        names = set(layers)
        known = {n for n, _ in model.named_modules()}
        missing = sorted(names - known)
        if missing:
            raise UserError(
                f"no layer named {', '.join(map(repr, missing))} in the model; "
                "give names as model.named_modules() spells them"
            )
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        if names is not None and name not in names:
            continue
        if callable(layers) and not layers(name, module):
            continue
        if not isinstance(module, OperatorLayer) and _plain_kind(module) is None:
            raise UserError(
                f"layer {name!r} ({type(module).__name__}) has its own forward, so no operator "
                "can be set on it; derive it from hiddenite.ops.OperatorLayer and call "
                "self.active_operator() in its forward, or leave it out with layers="
            )
        chosen.append((name, module))
    if names is not None:
        not_layers = sorted(names - {n for n, _ in chosen})
        if not_layers:
            raise UserError(
                f"{', '.join(map(repr, not_layers))} is not a Linear or Conv2d layer; "
                "name Linear / Conv2d layers only"
            )
    return chosen


class use_operator:
    """Set operator ``name`` on the ``Linear`` / ``Conv2d`` layers of ``model`` for ``phase``
    (``"training"``, ``"inference"`` or ``"both"``).

    ``layers``: None (every such layer), an iterable of layer names, or a predicate
    ``(name, module) -> bool``. Takes effect at once; used as a context manager
    (``with use_operator(model, "mitchell", phase="inference"): ...``) it restores every
    layer's previous choice on exit (:meth:`restore` does the same by hand). Returns the
    names of the layers it set in :attr:`layers`.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        *,
        phase: str = "both",
        layers: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
    ) -> None:
        if phase not in PHASES:
            raise UserError(f"unknown phase {phase!r}; use one of {', '.join(PHASES)}")
        op = get_operator(name)
        selected = _selected(model, layers)
        self._previous = [(m, getattr(m, _ATTR, None)) for _, m in selected]
        self.layers = [n for n, _ in selected]
        for _, module in selected:
            _set_choice(module, operator_choice(module).with_phase(phase, op.name))

    def restore(self) -> None:
        """Put back the choices the layers had before this call."""
        for module, previous in reversed(self._previous):
            _set_choice(module, previous)

    def __enter__(self) -> use_operator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
