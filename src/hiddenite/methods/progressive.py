"""``progressive``: ProgressiveNN (Suzuki et al., IJNC 2021): one stored N-bit network that runs
at any precision n = 1..N, most significant digit first.

Representation (N = ``bits``, 1..8, L = 2**N - 1). Each weight is ``s * q / L`` with

    q = sum_{i=0}^{N-1} d_i 2^i,   d_i in {-1, +1},

so ``q`` is an odd integer in [-L, L] and the 2**N levels ``s * q / L`` are the uniform
*odd-level* quantizer of [-s, s] (step ``2s / L``; zero is not a level). ``s`` is the largest
|w| of the output channel (``scale="channel"``) or of the layer (``"layer"``), so nothing is
clipped and the extreme weight is exactly ``+-s``. Quantizing: level index
``k = round((w / s * L + L) / 2)`` in 0..L (round half to even), ``q = 2k - L``, and the digits
are k's binary digits mapped 0 -> -1, 1 -> +1.

At precision n the n most significant digits are accumulated and the others dropped:

    q_n = sum_{i=N-n}^{N-1} d_i 2^i = 2^(N-n) * (2 * (k >> (N-n)) - (2^n - 1)),

the centre of the block of 2^(N-n) consecutive N-bit levels that the weight's level falls in,
i.e. the nearest level of the n-bit odd grid of spacing ``2^(N-n+1) s / L``. The weight is
``s * q_n / L`` with the same stored ``s`` (no rescaling; the per-precision statistics below
absorb the magnitude). n = N is the N-bit quantizer itself.

Per-precision batch-norm statistics. Each layer keeps, per precision n, the per-output-channel
mean ``mu_n`` and variance ``var_n`` of its raw output at that precision (with
:func:`recalibrate_bn`, on training data), and optionally a per-precision affine
``gamma_n, beta_n`` (``affine=True``; :func:`retrain_bn` trains only those). At precision n
the layer's output ``y`` becomes

    y' = (gamma_n * (y - mu_n) / sd_n + beta_n) * sd_N + mu_N,    sd = sqrt(var + eps):

a batch norm with the n-bit statistics followed by the inverse of the N-bit one. A batch norm
that follows the layer (with the N-bit running statistics it was trained with) therefore
computes exactly a batch norm with per-precision statistics, and a network without batch norm
(Conv-n) gets its layers' outputs restandardised to the N-bit statistics. The factor folds into
the weight and the shift into the bias (:meth:`Progressive.bias`), so a layer stays one
convolution. Uncalibrated statistics (all rows equal) change nothing.

Training from scratch (``trains_weights``): latent float weights, the forward pass at the
layer's current precision, gradient straight through the quantizer (quantization-aware
training at N bits). :func:`to_progressive` converts an already trained network instead.

Any-precision training (``train_bits``, after Yu et al., AAAI 2021): every step runs once per
listed precision, N first (:meth:`Progressive.training_passes`), and in a pass at n < N the
layer's output is batch-normalised with the batch's statistics and the n-bit gamma/beta,
then mapped to the N-bit statistics of the same batch (:meth:`Progressive.output`), the
formula above with batch for running statistics; the running per-precision statistics
follow the batches, so one trained model holds a batch norm per precision. In data-parallel
training these batch statistics are the global batch's over all ranks, like the model's
batch norms (:meth:`Progressive.sync_batch_statistics`), unless ``--local-batch-norm``.

Stored parts (n weights, C output channels): the N digit planes ``digit{N-1}`` (most
significant) .. ``digit0``, n bits each (1 = +1); ``scales``, C floats (1 for ``"layer"``);
``bn_mean`` / ``bn_var``, N x C floats (row n-1: precision n); with ``affine`` also
``bn_gamma`` / ``bn_beta``. Hardware: the digits are stored, a bit-serial PE accumulates one
{-1,+1} digit per cycle (``op="bit-serial"``, ``weight_bits=N``), and
:func:`hiddenite.hw.workload.at_precision` runs the layers at n digits.

Precision is chosen per call and per layer with the context manager :func:`precision`
(the layer attribute ``pnn_bits``; no global state).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..sync_batch_norm import global_moments, spans_ranks
from .base import LayerCost, LayerItem, Method, MethodConfig, Part, register_method

__all__ = [
    "MAX_BITS",
    "Progressive",
    "ProgressiveConfig",
    "digit_planes",
    "level_index",
    "precision",
    "progressive_layers",
    "recalibrate_bn",
    "retrain_bn",
    "truncated_weight",
    "weight_from_digits",
]

MAX_BITS = 8
SCALES = ("channel", "layer")


@dataclass(frozen=True)
class ProgressiveConfig(MethodConfig):
    """bits: N, the stored digits per weight (1..8). scale: ``"channel"`` (one scale per output
    channel) or ``"layer"``. eps: the batch-norm epsilon of the per-precision statistics.
    affine: also keep a per-precision gamma and beta (learned in training, or by
    :func:`retrain_bn` alone).

    train_bits: the precisions every training step runs at (any-precision training, Yu et al.,
    AAAI 2021), e.g. ``(1, 2, 4, 8)``; it must include N. Empty (the default): each step runs
    once, at the layer's current precision (quantization-aware training at N bits).
    momentum: how fast the per-precision running statistics follow the batches during
    any-precision training (as ``nn.BatchNorm2d``'s momentum)."""

    method = "progressive"
    bits: int = 8
    scale: str = "channel"
    eps: float = 1e-5
    affine: bool = False
    train_bits: tuple[int, ...] = ()
    momentum: float = 0.1

    def check(self) -> None:
        if not 1 <= self.bits <= MAX_BITS:
            self.fail("bits", f"must be in 1..{MAX_BITS}, got {self.bits}")
        if self.train_bits:
            bad = [b for b in self.train_bits if not 1 <= b <= self.bits]
            if bad:
                self.fail("train_bits", f"must lie in 1..{self.bits} (bits), got {bad[0]}")
            if len(set(self.train_bits)) != len(self.train_bits):
                self.fail("train_bits", f"lists a precision twice: {list(self.train_bits)}")
            if self.bits not in self.train_bits:
                self.fail(
                    "train_bits",
                    f"must include bits={self.bits}, the precision every other one is "
                    f"mapped back to, e.g. train_bits=[1,2,4,{self.bits}]",
                )
        if not (0 < self.momentum <= 1):
            self.fail("momentum", f"must be in (0, 1], got {self.momentum}")
        if self.scale not in SCALES:
            self.fail("scale", f"must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            self.fail("eps", f"must be a positive finite number, got {self.eps}")


# ------------------------------------------------------------------ the quantizer (pure tensors)


def _scale_of(w: torch.Tensor, scale: str) -> torch.Tensor:
    """``max|w|`` per output channel (shape ``(C, 1, ...)``) or of the layer (0-d)."""
    if scale == "layer":
        return w.detach().abs().max()
    return w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)


def level_index(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """The N-bit level index ``k = round((w / s * L + L) / 2)`` in 0..L (int64); 0 where s = 0
    gives k = round(L / 2)."""
    big = 2**bits - 1
    safe = torch.where(s > 0, s, torch.ones_like(s))
    t = (w.detach() / safe) * big
    return torch.clamp(torch.round((t + big) / 2), 0, big).to(torch.int64)


def _levels(k: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """``q_n`` (float32) of N-bit level indices ``k`` at precision n (odd multiples of
    2^(N-n))."""
    shift = bits - n
    return ((2 * (k >> shift) - (2**n - 1)) << shift).to(torch.float32)


def truncated_weight(w: torch.Tensor, s: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """``s * q_n / L``: ``w`` quantized to N bits with scale ``s`` and read at n digits."""
    big = 2**bits - 1
    return s.to(torch.float32) * (_levels(level_index(w, s, bits), n, bits) / big)


def digit_planes(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    """Bool ``(N, *w.shape)``: plane j is digit N-1-j (MSB first), True for +1."""
    k = level_index(w, s, bits)
    return torch.stack([((k >> (bits - 1 - j)) & 1).bool() for j in range(bits)])


def weight_from_digits(planes: torch.Tensor, s: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """``s * (sum over the n most significant planes of d * 2^i) / L`` (MSB-first planes)."""
    q = torch.zeros(planes.shape[1:], dtype=torch.int64)
    for j in range(n):
        q += (2 * planes[j].to(torch.int64) - 1) << (bits - 1 - j)
    return s.to(torch.float32) * (q.to(torch.float32) / (2**bits - 1))


# ------------------------------------------------------------------ the method


def _output_view(t: Any) -> Any:
    """A per-channel vector (or a number) shaped to broadcast against a 4-D output."""
    return t.reshape(1, -1, 1, 1) if isinstance(t, torch.Tensor) else t


def _passes(layers: list[Any], order: list[int]) -> Iterator[float]:
    before = [(layer.pnn_bits, layer.pnn_step) for layer in layers]
    try:
        for layer in layers:
            layer.pnn_step = {}  # this step's N-bit batch statistics, per layer
        for n in order:
            for layer in layers:
                layer.pnn_bits = min(n, layer.method_config.bits)
            yield 1.0 / len(order)
    finally:
        with torch.no_grad():  # a precision not trained runs uncorrected (its rows = N's)
            for layer in layers:
                top = layer.method_config.bits
                for n in set(range(1, top)) - set(order):
                    layer.pnn_mean[n - 1].copy_(layer.pnn_mean[top - 1])
                    layer.pnn_var[n - 1].copy_(layer.pnn_var[top - 1])
        for layer, (bits, step) in zip(layers, before, strict=True):
            layer.pnn_bits, layer.pnn_step = bits, step


def _rows(layer: Any) -> tuple[int, int]:
    return layer.method_config.bits, layer.weight.shape[0]


def _channel_view(t: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-output-channel vector shaped to broadcast against a weight of ``dim`` dims."""
    return t.reshape((-1,) + (1,) * (dim - 1))


def _correction(layer: Any, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel ``(gain, shift)`` of precision n, or None when it is the identity."""
    cfg = layer.method_config
    big = cfg.bits
    mean, var = layer.pnn_mean, layer.pnn_var
    affine = cfg.affine
    same = torch.equal(mean[n - 1], mean[big - 1]) and torch.equal(var[n - 1], var[big - 1])
    if same and not affine:
        return None
    sd_n = torch.sqrt(var[n - 1] + cfg.eps)
    sd_ref = torch.sqrt(var[big - 1] + cfg.eps)
    gamma = layer.pnn_gamma[n - 1] if affine else 1.0
    beta = layer.pnn_beta[n - 1] if affine else 0.0
    gain = gamma * sd_ref / sd_n
    shift = (beta - gamma * mean[n - 1] / sd_n) * sd_ref + mean[big - 1]
    return gain, shift


class Progressive(Method):
    name = "progressive"
    config_type = ProgressiveConfig
    trains_weights = True
    # latent weights that all start at one magnitude (the signed constant) give the 1-bit
    # digit nothing to tell apart; Adam at 1e-3 trains the digits without the NaNs SGD at
    # 0.1 reaches (docs/precision.md)
    default_init = "kaiming-normal"
    default_optimizer = ("adam", 0.001)

    def layer_configs(self, shapes, config, density):
        return [(config, 1.0) for _ in shapes]  # every weight is kept (and stored as digits)

    def scale_density(self, config, density) -> float | None:
        return None

    def setup(self, layer: Any) -> None:
        bits, c = _rows(layer)
        device = layer.weight.device
        layer.register_buffer("pnn_mean", torch.zeros(bits, c, device=device))
        layer.register_buffer("pnn_var", torch.ones(bits, c, device=device))
        if layer.method_config.affine:
            layer.pnn_gamma = nn.Parameter(torch.ones(bits, c, device=device))
            layer.pnn_beta = nn.Parameter(torch.zeros(bits, c, device=device))
        layer.pnn_bits = bits  # the precision the forward pass runs at
        layer.pnn_raw = False  # True: no per-precision correction (while recalibrating)
        layer.pnn_step = None  # a dict during any-precision training steps (training_passes)
        layer.pnn_sync = False  # True: batch statistics over all ranks (sync_batch_statistics)

    def _bits(self, layer: Any) -> int:
        return int(layer.pnn_bits)

    def _fix(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The folded per-precision correction, or None: recalibrating, or in an
        any-precision training pass (there :meth:`output` normalises with the batch)."""
        if layer.pnn_raw or (layer.training and layer.pnn_step is not None):
            return None
        return _correction(layer, self._bits(layer))

    def raw_weight(self, layer: Any) -> torch.Tensor:
        """The weight at the layer's precision, before the per-precision correction, with the
        straight-through gradient to the latent weight."""
        cfg = layer.method_config
        w = layer.weight
        q = truncated_weight(w, _scale_of(w, cfg.scale), self._bits(layer), cfg.bits).to(w)
        return q + (w - w.detach())  # exactly q forward, identity gradient

    def weight(self, layer: Any) -> torch.Tensor:
        w = self.raw_weight(layer)
        fix = self._fix(layer)
        return w if fix is None else _channel_view(fix[0], w.dim()).to(w) * w

    def bias(self, layer: Any) -> torch.Tensor | None:
        fix = self._fix(layer)
        if fix is None:
            return layer.bias
        gain, shift = fix
        return shift if layer.bias is None else gain * layer.bias + shift

    def output(self, layer: Any, y: torch.Tensor) -> torch.Tensor:
        """In an any-precision training pass at precision n: a batch norm with the batch's
        own statistics and the n-bit gamma/beta, mapped back to the N-bit statistics of the
        same batch (the N-bit pass runs first; the running N-bit statistics stand in when it
        did not), while the running n-bit statistics follow the batch with ``momentum``.
        The same formula as the folded eval-mode correction, with batch for running
        statistics. Elsewhere ``y`` unchanged (eval mode folds the correction into
        :meth:`weight` and :meth:`bias`)."""
        step = layer.pnn_step
        if step is None or not layer.training:
            return y
        cfg = layer.method_config
        n, big = self._bits(layer), cfg.bits
        flat = _channels(y)
        if layer.pnn_sync and spans_ranks():  # the global batch's, over all ranks
            mean, var, count = global_moments(flat, [0])
            mean, var = mean.to(y), var.to(y)
        else:
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            count = flat.shape[0]
        with torch.no_grad():  # running statistics, unbiased variance (as torch's batch norm)
            unbiased = var.detach().to(layer.pnn_var) * (count / max(count - 1, 1))
            layer.pnn_mean[n - 1].lerp_(mean.detach().to(layer.pnn_mean), cfg.momentum)
            layer.pnn_var[n - 1].lerp_(unbiased, cfg.momentum)
        sd = torch.sqrt(var + cfg.eps)
        if n == big:
            step["ref"] = (mean.detach(), sd.detach())
            if not cfg.affine:
                return y  # (y - mean) / sd * sd + mean: the N-bit pass is unchanged
            ref_mean, ref_sd = mean, sd
        elif "ref" in step:
            ref_mean, ref_sd = step["ref"]
        else:
            ref_mean = layer.pnn_mean[big - 1].detach().clone().to(y)
            ref_sd = torch.sqrt(layer.pnn_var[big - 1].detach().clone().to(y) + cfg.eps)
        gamma = layer.pnn_gamma[n - 1] if cfg.affine else 1.0
        beta = layer.pnn_beta[n - 1] if cfg.affine else 0.0
        view = _output_view if y.dim() == 4 else (lambda t: t)
        z = (view(gamma * ref_sd / sd)) * (y - view(mean))
        return z + view(beta * ref_sd + ref_mean)

    def sync_batch_statistics(self, layer: Any, on: bool) -> bool:
        """The any-precision passes' batch statistics (:meth:`output`) over all ranks (on)
        or this process's batch; True when the layer trains with ``train_bits`` (else it
        takes no batch statistics)."""
        layer.pnn_sync = on
        return bool(layer.method_config.train_bits)

    def training_passes(self, layers: list[Any]) -> Iterator[float] | None:
        """Any-precision training: with ``train_bits``, one pass per precision, highest
        first (the N-bit pass gives the other passes their reference statistics), each
        loss weighted 1 / (number of precisions)."""
        chosen = {layer.method_config.train_bits for layer in layers}
        if chosen == {()}:
            return None
        if len(chosen) > 1:
            raise ConfigError(
                "progressive layers trained together must share train_bits, got "
                + " and ".join(str(list(b)) for b in sorted(chosen))
            )
        (train_bits,) = chosen
        return _passes(layers, sorted(train_bits, reverse=True))

    def support(self, layer: Any) -> torch.Tensor:
        return torch.ones_like(layer.weight, dtype=torch.bool)

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        names = ("weight", "pnn_mean", "pnn_var")
        return names + (("pnn_gamma", "pnn_beta") if layer.method_config.affine else ())

    def parts(self, shape, config, density) -> list[Part]:
        n, c = math.prod(shape), shape[0]
        parts = [Part(f"digit{i}", n, 2) for i in reversed(range(config.bits))]
        parts += [
            Part("scales", c if config.scale == "channel" else 1, None),
            Part("bn_mean", config.bits * c, None),
            Part("bn_var", config.bits * c, None),
        ]
        if config.affine:
            parts += [
                Part("bn_gamma", config.bits * c, None),
                Part("bn_beta", config.bits * c, None),
            ]
        return parts

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        cfg = layer.method_config
        w = layer.weight.detach().to("cpu", torch.float32)
        s = _scale_of(w, cfg.scale)
        planes = digit_planes(w, s, cfg.bits)
        arrays = {
            f"digit{cfg.bits - 1 - j}": planes[j].reshape(-1).numpy().copy()
            for j in range(cfg.bits)
        }
        arrays["scales"] = s.reshape(-1).numpy().astype(np.float32).copy()
        names = [("bn_mean", "pnn_mean"), ("bn_var", "pnn_var")]
        if cfg.affine:
            names += [("bn_gamma", "pnn_gamma"), ("bn_beta", "pnn_beta")]
        for part, attr in names:
            value = getattr(layer, attr).detach().to("cpu", torch.float32)
            arrays[part] = value.reshape(-1).numpy().copy()
        return arrays

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        cfg = layer.method_config
        shape = tuple(layer.weight.shape)
        planes = torch.stack(
            [
                torch.from_numpy(np.asarray(arrays[f"digit{i}"], dtype=np.bool_).copy())
                for i in reversed(range(cfg.bits))
            ]
        ).reshape((cfg.bits, *shape))
        scales = torch.from_numpy(np.asarray(arrays["scales"], dtype=np.float32).copy())
        s = scales.reshape(()) if cfg.scale == "layer" else _channel_view(scales, len(shape))
        w = weight_from_digits(planes, s, cfg.bits, cfg.bits)  # exactly +-s at the extremes
        bits, c = cfg.bits, shape[0]
        with torch.no_grad():
            layer.weight.copy_(w.to(layer.weight))
            names = [("bn_mean", "pnn_mean"), ("bn_var", "pnn_var")]
            if cfg.affine:
                names += [("bn_gamma", "pnn_gamma"), ("bn_beta", "pnn_beta")]
            for part, attr in names:
                value = torch.from_numpy(np.asarray(arrays[part], dtype=np.float32).copy())
                getattr(layer, attr).copy_(value.reshape(bits, c))

    def check_layer(self, item: LayerItem) -> None:
        cfg = item.config
        expected = {p.name: p.n for p in self.parts(item.shape, cfg, item.density)}
        for name, n in expected.items():
            size = np.asarray(item.arrays[name]).size
            if size != n:
                raise ValueError(f"layer {item.name!r} stores {size} {name}, expected {n}")
        for name in expected:
            if name.startswith("digit"):
                continue
            values = np.asarray(item.arrays[name], dtype=np.float32)
            bad = ~np.isfinite(values)
            if name in ("scales", "bn_var"):
                bad |= values < 0
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"layer {item.name!r}: {name}[{i}] is {values[i]!r}, but it must be finite"
                    + (" and non-negative" if name in ("scales", "bn_var") else "")
                )

    def cost(self, shape, config, density) -> LayerCost:
        return LayerCost("stored", config.bits, "bit-serial", ())

    def describe(self, layer: Any) -> str:
        cfg = layer.method_config
        return (
            f"method=progressive (N={cfg.bits} digits, running at {layer.pnn_bits}, "
            f"scale per {cfg.scale})"
        )


register_method(Progressive())


# ------------------------------------------------------------------ working with a model


def progressive_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every progressive layer of ``model``, in ``named_modules`` order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "method", None), Progressive)
    ]


def _check_bits(bits: Any, top: int, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= top:
        raise ConfigError(f"{what}: precision must be an integer in 1..{top}, got {bits!r}")
    return bits


def _layers_or_fail(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = progressive_layers(model)
    if not found:
        raise ConfigError(
            "the model has no progressive layers: convert it first "
            "(hiddenite.methods.progressive.to_progressive or --method progressive)"
        )
    return found


@contextlib.contextmanager
def precision(
    model: nn.Module, bits: int | None = None, layers: Mapping[str, int] | None = None
) -> Iterator[nn.Module]:
    """Run ``model`` at ``bits`` digits (every progressive layer) and/or per layer
    (``layers={name: bits}``) inside the block; the previous precisions come back after it.

    A precision above a layer's stored N, or a name that is not a progressive layer, is a
    ConfigError.
    """
    found = dict(_layers_or_fail(model))
    chosen: dict[str, int] = {}
    if bits is not None:
        for name, layer in found.items():
            chosen[name] = _check_bits(bits, layer.method_config.bits, f"layer {name!r}")
    for name, b in (layers or {}).items():
        if name not in found:
            raise ConfigError(
                f"precision: {name!r} is not a progressive layer; choose among "
                f"{', '.join(list(found)[:6])}"
            )
        chosen[name] = _check_bits(b, found[name].method_config.bits, f"layer {name!r}")
    before = {name: layer.pnn_bits for name, layer in found.items()}
    try:
        for name, b in chosen.items():
            found[name].pnn_bits = b
        yield model
    finally:
        for name, b in before.items():
            found[name].pnn_bits = b


def _channels(y: torch.Tensor) -> torch.Tensor:
    """``y`` as (samples, channels): channels on dim 1 of a 4-D output, else the last dim."""
    if y.dim() == 4:
        return y.transpose(0, 1).reshape(y.shape[1], -1).T
    return y.reshape(-1, y.shape[-1])


def _batches(loader: Iterable[Any], max_batches: int | None) -> Iterator[torch.Tensor]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch[0] if isinstance(batch, list | tuple) else batch


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable[Any],
    bits: int | Iterable[int] | None = None,
    *,
    max_batches: int | None = None,
) -> nn.Module:
    """Measure every progressive layer's per-precision output statistics on ``loader``
    (tensors or ``(inputs, targets)`` batches; training data), in place.

    The N-bit statistics are measured first (eval mode, the network as trained). Then for each
    precision n in ``bits`` (default: every n < N) all layers run at n and, as a batch norm in
    training mode does, each layer's output is normalised with the batch's own statistics
    (mapped to the N-bit ones, with the stored gamma/beta) while its raw mean and variance are
    accumulated over all batches (exact float64 population statistics). Other modules (a real
    batch norm, dropout) stay in eval mode.
    """
    found = _layers_or_fail(model)
    top = max(layer.method_config.bits for _, layer in found)
    if bits is None:
        wanted = list(range(1, top + 1))
    else:
        wanted = [bits] if isinstance(bits, int) else list(bits)
        wanted = sorted({_check_bits(b, top, "recalibrate_bn") for b in wanted})
    was_training = model.training
    model.eval()
    try:
        # the N-bit rows first: the reference every other precision is mapped back to
        _measure(model, found, loader, max_batches, n=None)
        for _, layer in found:  # a precision not recalibrated below runs uncorrected
            top_row = layer.method_config.bits - 1
            layer.pnn_mean.copy_(layer.pnn_mean[top_row].expand_as(layer.pnn_mean).clone())
            layer.pnn_var.copy_(layer.pnn_var[top_row].expand_as(layer.pnn_var).clone())
        for n in wanted:
            if n < top:
                _measure(model, found, loader, max_batches, n=n)
    finally:
        model.train(was_training)
    return model


def _measure(model, found, loader, max_batches, n: int | None) -> None:
    sums: dict[str, list] = {}
    handles = []

    def hook_for(name: str, layer: nn.Module):
        def hook(mod, inputs, output):
            y = _channels(output).to(torch.float64)
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += y.shape[0]
            acc[1] = acc[1] + y.sum(0)
            acc[2] = acc[2] + (y * y).sum(0)
            if n is None:
                return None
            cfg = mod.method_config
            mu, var = y.mean(0), y.var(0, unbiased=False)
            big = cfg.bits
            sd_ref = torch.sqrt(mod.pnn_var[big - 1].double() + cfg.eps)
            gamma = mod.pnn_gamma[n - 1].double() if cfg.affine else 1.0
            beta = mod.pnn_beta[n - 1].double() if cfg.affine else 0.0
            z = (gamma * (y - mu) / torch.sqrt(var + cfg.eps) + beta) * sd_ref
            z = (z + mod.pnn_mean[big - 1].double()).to(output.dtype)
            if output.dim() == 4:
                b, c, h, w = output.shape
                return z.reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
            return z.reshape(output.shape)

        return hook

    levels = {}
    for name, layer in found:
        levels[name] = (layer.pnn_bits, layer.pnn_raw)
        layer.pnn_bits = layer.method_config.bits if n is None else min(n, layer.method_config.bits)
        layer.pnn_raw = True
        handles.append(layer.register_forward_hook(hook_for(name, layer)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    used = 0
    try:
        for x in _batches(loader, max_batches):
            model(x.to(device))
            used += 1
    finally:
        for h in handles:
            h.remove()
        for name, layer in found:
            layer.pnn_bits, layer.pnn_raw = levels[name]
    if used == 0:
        raise ConfigError("recalibrate_bn: the loader gave no batch")
    for name, layer in found:
        if name not in sums:
            continue  # a layer this model never runs
        count, s1, s2 = sums[name]
        mean = s1 / count
        var = torch.clamp(s2 / count - mean * mean, min=0.0)
        row = layer.method_config.bits - 1 if n is None else n - 1
        layer.pnn_mean[row].copy_(mean.to(layer.pnn_mean))
        layer.pnn_var[row].copy_(var.to(layer.pnn_var))


def retrain_bn(
    model: nn.Module,
    loader: Iterable[Any],
    bits: int,
    *,
    epochs: int = 1,
    lr: float = 1e-2,
    max_batches: int | None = None,
) -> nn.Module:
    """Train only the precision-``bits`` gamma and beta of every progressive layer (cross
    entropy on ``(inputs, targets)`` batches; Adam); everything else, real batch-norm
    statistics included, stays as it is (the model runs in eval mode). Needs ``affine=True``.
    """
    found = _layers_or_fail(model)
    if not all(layer.method_config.affine for _, layer in found):
        raise ConfigError(
            "retraining batch norm needs per-precision gamma/beta: convert with "
            "ProgressiveConfig(affine=True), or train with --method-arg affine=true"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"retrain_bn: epochs must be an integer >= 1, got {epochs!r}")
    params = [p for _, layer in found for p in (layer.pnn_gamma, layer.pnn_beta)]
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with precision(model, bits):
            for _ in range(epochs):
                for i, (x, y) in enumerate(loader):
                    if max_batches is not None and i >= max_batches:
                        break
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
                    loss.backward()
                    for p in params:  # only this precision's row learns
                        keep = torch.zeros_like(p.grad)
                        keep[bits - 1] = 1
                        p.grad.mul_(keep)
                    opt.step()
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return model
