"""Activation quantization: b-bit per-tensor quantizers, calibration and straight-through QAT.

An :class:`ActQuantizer` fake-quantizes a tensor to ``bits`` bits with one scale per tensor:

- unsigned (the input of a layer that follows a ReLU): levels ``scale * q``,
  ``q = 0 .. 2**bits - 1``, ``scale = hi / (2**bits - 1)``;
- signed (anything that can be negative): levels ``scale * q``,
  ``q = -(2**(bits-1) - 1) .. 2**(bits-1) - 1`` (symmetric, no ``-2**(bits-1)`` code, so zero is
  exact and the range is symmetric), ``scale = max(|lo|, |hi|) / (2**(bits-1) - 1)``.

``q = clamp(round(x / scale))`` (round half to even, as ``torch.round``); the output is
``q * scale``, so a value already on the grid comes back bit for bit.

Life cycle: a new quantizer *observes* (passes its input through unchanged and records the
range: min/max, or the mean over batches of a percentile of each batch); :meth:`freeze` fixes
the scale (and signedness: unsigned when the observed minimum is >= 0, unless the config says)
and the quantizer then quantizes. In training mode its gradient is the clipped straight-through
estimator: ``d out / d x = 1`` inside the representable range, 0 outside.

:func:`add_act_quantizers_` puts one quantizer on the *input* of every ``nn.Conv2d`` /
``nn.Linear`` of any model (a child module named ``act_quant`` plus a forward pre-hook), the
first layer excepted by default (its input is the image, already 8 bits); nothing in the model
classes changes. :func:`calibrate` runs batches through the observing model and freezes every
quantizer. :func:`input_bits` tells the accelerator model the activation width of a layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import ConfigError

#: the child module name of a layer's input quantizer (its buffers join the ``state_dict``
#: under ``<layer>.act_quant.``)
QUANTIZER_NAME = "act_quant"

__all__ = [
    "QUANTIZER_NAME",
    "ActQuantConfig",
    "ActQuantizer",
    "add_act_quantizers_",
    "attach_quantizer_",
    "calibrate",
    "fake_quantize",
    "input_bits",
    "input_quantizers",
    "quantizer_of",
    "quantizers",
]

CALIBRATIONS = ("minmax", "percentile")
SIGNEDNESS = ("auto", "signed", "unsigned")


@dataclass(frozen=True)
class ActQuantConfig:
    """How activations are quantized (versioned; JSON round trip).

    bits: activation width, 2..16 (8: the Hiddenite chip's).
    signed: ``"auto"`` (unsigned when every calibration value was >= 0), ``"signed"`` or
      ``"unsigned"``.
    calibration: ``"minmax"`` (the observed extremes) or ``"percentile"`` (the mean over
      batches of each batch's ``percentile`` of the values, and of the negated values).
    percentile: in (50, 100], used by ``"percentile"``.
    first_layer: also quantize the first conv/linear layer's input (the image).
    """

    VERSION: ClassVar[int] = 1
    bits: int = 8
    signed: str = "auto"
    calibration: str = "minmax"
    percentile: float = 99.99
    first_layer: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        def fail(field: str, problem: str) -> None:
            raise ConfigError(f"ActQuantConfig.{field}: {problem}")

        for name, kind in (("bits", int), ("version", int)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, kind):
                fail(name, f"must be an integer, got {v!r}")
        if not 2 <= self.bits <= 16:
            fail("bits", f"must be in 2..16, got {self.bits}")
        if self.signed not in SIGNEDNESS:
            fail("signed", f"must be one of {', '.join(SIGNEDNESS)}, got {self.signed!r}")
        if self.calibration not in CALIBRATIONS:
            fail(
                "calibration",
                f"must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}",
            )
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not 50.0 < p <= 100.0:
            fail("percentile", f"must be a number in (50, 100], got {p!r}")
        object.__setattr__(self, "percentile", float(p))
        if not isinstance(self.first_layer, bool):
            fail("first_layer", f"must be true or false, got {self.first_layer!r}")
        if self.version != self.VERSION:
            fail("version", f"{self.version} is not supported (this build: {self.VERSION})")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActQuantConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"ActQuantConfig: expected a JSON object, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"ActQuantConfig has no field(s) {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ActQuantConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"ActQuantConfig: not valid JSON ({exc})") from None


class _FakeQuant(torch.autograd.Function):
    """Forward: ``clamp(round(x / scale), qmin, qmax) * scale``. Backward: clipped STE."""

    @staticmethod
    def forward(ctx, x, scale, qmin: int, qmax: int):
        q = torch.clamp(torch.round(x / scale), qmin, qmax)
        ctx.save_for_backward(x, scale)
        ctx.bounds = (qmin, qmax)
        return q * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        inside = (x >= qmin * scale) & (x <= qmax * scale)
        return grad * inside.to(grad.dtype), None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(x / scale), qmin, qmax) * scale`` with the clipped straight-through
    gradient (1 inside ``[qmin * scale, qmax * scale]``, 0 outside)."""
    return _FakeQuant.apply(x, scale, int(qmin), int(qmax))


class ActQuantizer(nn.Module):
    """A per-tensor b-bit activation quantizer (observe, then :meth:`freeze`, then quantize).

    Buffers (saved with the model): ``scale`` (0 until frozen), ``signed`` (1.0 or 0.0),
    ``lo`` / ``hi`` (the observed range) and ``batches`` (batches observed).
    """

    def __init__(self, config: ActQuantConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ActQuantConfig()
        if not isinstance(self.config, ActQuantConfig):
            raise TypeError(f"config must be an ActQuantConfig, got {type(config).__name__}")
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("signed", torch.zeros(()))
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("batches", torch.zeros(()))

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def frozen(self) -> bool:
        return bool(self.scale > 0)

    @property
    def bounds(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the integer codes."""
        b = self.config.bits
        if bool(self.signed):
            return -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1
        return 0, 2**b - 1

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Record the range of ``x`` (float64 accumulation)."""
        v = x.detach().to(torch.float64).reshape(-1)
        if v.numel() == 0:
            return
        if self.config.calibration == "minmax":
            lo, hi = v.min(), v.max()
            first = self.batches == 0
            self.lo.copy_(torch.where(first, lo, torch.minimum(self.lo.double(), lo)))
            self.hi.copy_(torch.where(first, hi, torch.maximum(self.hi.double(), hi)))
        else:
            q = self.config.percentile / 100.0
            hi = torch.quantile(v[: 2**24], q)
            lo = -torch.quantile(-v[: 2**24], q)
            n = self.batches.double()
            self.lo.copy_((self.lo.double() * n + lo) / (n + 1))
            self.hi.copy_((self.hi.double() * n + hi) / (n + 1))
        self.batches += 1

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the scale from the observed range; ``ValueError`` if nothing was observed."""
        if self.batches == 0:
            raise ValueError("ActQuantizer.freeze: no batch was observed; run calibrate first")
        mode = self.config.signed
        signed = mode == "signed" or (mode == "auto" and float(self.lo) < 0)
        self.signed.fill_(1.0 if signed else 0.0)
        b = self.config.bits
        if signed:
            top = max(abs(float(self.lo)), abs(float(self.hi)))
            scale = top / (2 ** (b - 1) - 1)
        else:
            scale = max(float(self.hi), 0.0) / (2**b - 1)
        # an all-zero activation still gets a usable grid
        self.scale.fill_(scale if scale > 0 else 1.0 / (2**b - 1))

    @torch.no_grad()
    def set_frozen(self, *, signed: bool, scale: float, lo: float, hi: float) -> None:
        """Fix the quantizer to a known state (what a model file declares): ``scale`` > 0 and
        the signedness and observed range ``lo``..``hi`` it was frozen with. The batch counter
        is left at 0 (it only matters while observing)."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"ActQuantizer.set_frozen: scale must be finite and > 0, got {scale}")
        self.signed.fill_(1.0 if signed else 0.0)
        self.scale.fill_(scale)
        self.lo.fill_(lo)
        self.hi.fill_(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            self.observe(x)
            return x
        qmin, qmax = self.bounds
        return fake_quantize(x, self.scale.to(x.dtype), qmin, qmax)

    def extra_repr(self) -> str:
        state = "frozen" if self.frozen else "observing"
        kind = "signed" if bool(self.signed) else "unsigned"
        return f"bits={self.config.bits}, {kind if self.frozen else 'auto'}, {state}"


def _quantize_input(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return (module._modules[QUANTIZER_NAME](inputs[0]), *inputs[1:])


def add_act_quantizers_(
    model: nn.Module, config: ActQuantConfig | None = None, filter_fn=None
) -> nn.Module:
    """Put an :class:`ActQuantizer` on the input of every ``nn.Conv2d`` / ``nn.Linear`` (and
    their supermask twins) of ``model``, in place; returns ``model``.

    Layers are taken in ``named_modules`` order; the first is skipped unless
    ``config.first_layer``; ``filter_fn(module, name)`` narrows the choice further. Each chosen
    layer gets a child ``act_quant`` (its buffers join the ``state_dict``) and a forward
    pre-hook. A layer that already has one is refused (``ValueError``).
    """
    config = config if config is not None else ActQuantConfig()
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and name
    ]
    if not layers:
        raise ValueError("add_act_quantizers_: the model has no nn.Conv2d or nn.Linear layer")
    if not config.first_layer:
        layers = layers[1:]
    for name, m in layers:
        if filter_fn is not None and not filter_fn(m, name):
            continue
        attach_quantizer_(m, config, name)
    return model


def attach_quantizer_(module: nn.Module, config: ActQuantConfig, name: str = "") -> ActQuantizer:
    """Put one :class:`ActQuantizer` on the input of ``module`` (an ``nn.Conv2d`` /
    ``nn.Linear``), in place, and return it (observing; freeze or fill it next).

    What :func:`add_act_quantizers_` does per layer, and what :func:`hiddenite.load` does for
    each quantizer a model file declares. ``ValueError`` if it has one already.
    """
    if not isinstance(module, nn.Conv2d | nn.Linear):
        raise ValueError(
            f"layer {name!r} is a {type(module).__name__}; activation quantizers sit on the "
            "input of nn.Conv2d / nn.Linear layers"
        )
    if quantizer_of(module) is not None:
        raise ValueError(f"layer {name!r} already has an activation quantizer")
    quantizer = ActQuantizer(config)
    module.add_module(QUANTIZER_NAME, quantizer)
    module.register_forward_pre_hook(_quantize_input)
    return quantizer


def quantizers(model: nn.Module) -> list[tuple[str, ActQuantizer]]:
    """Every activation quantizer of ``model`` with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ActQuantizer)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> int:
    """Run ``batches`` (tensors, or ``(inputs, targets)`` pairs) through ``model`` in eval
    mode while its quantizers observe, then freeze them all; returns the batches used.

    Quantizers already frozen are reset and observe again. The model's mode is restored.
    """
    qs = [q for _, q in quantizers(model)]
    if not qs:
        raise ValueError("calibrate: the model has no activation quantizers")
    for q in qs:
        for buf in (q.scale, q.signed, q.lo, q.hi, q.batches):
            buf.zero_()
    was_training = model.training
    model.eval()
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            x = batch[0] if isinstance(batch, list | tuple) else batch
            device = next((b.device for b in model.buffers()), torch.device("cpu"))
            model(x.to(device))
            used += 1
    finally:
        model.train(was_training)
    if used == 0:
        raise ValueError("calibrate: no batch was given")
    for q in qs:
        q.freeze()
    return used


def quantizer_of(module: nn.Module) -> ActQuantizer | None:
    """The quantizer on ``module``'s input (attached by :func:`attach_quantizer_`), or None."""
    q = module._modules.get(QUANTIZER_NAME)
    return q if isinstance(q, ActQuantizer) else None


def input_quantizers(model: nn.Module) -> list[tuple[str, ActQuantizer]]:
    """``(layer name, quantizer)`` for every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` whose
    input is quantized; ``ValueError`` for a quantizer placed anywhere else (it would not be
    where a model file or the accelerator model looks for it)."""
    modules = dict(model.named_modules())
    out = []
    for name, q in quantizers(model):
        layer, _, attr = name.rpartition(".")
        if attr != QUANTIZER_NAME or not isinstance(modules.get(layer), nn.Conv2d | nn.Linear):
            raise ValueError(
                f"activation quantizer {name!r} is not the input quantizer of a Conv2d / Linear "
                "layer; attach quantizers with hiddenite.quant.add_act_quantizers_"
            )
        out.append((layer, q))
    return out


def input_bits(module: nn.Module) -> int | None:
    """The activation width quantizing ``module``'s input, or None when it has no quantizer."""
    q = quantizer_of(module)
    return None if q is None else q.config.bits
