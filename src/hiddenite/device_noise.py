"""Programming noise of an analog device: the seed-001 argument for the ``analog`` method.

An analog or photonic device stores each weight as a programmed cell whose value is off by a
relative error. :func:`with_noise` turns that on for every ``analog`` layer (its missing
connections stay exactly zero: they are not wired); :func:`edge_popup_with_device_noise` puts
an edge-popup network on the same device, where every pruned weight is a cell programmed to
zero and picks up noise like a kept one. Both are reproducible from a seed.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .convert import to_dense
from .layers import SupermaskLayer
from .methods.analog import Analog, AnalogConfig, _noise
from .methods.edge_popup import EdgePopup

__all__ = ["edge_popup_with_device_noise", "with_noise"]


def _supermask_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SupermaskLayer)]


def with_noise(
    model: nn.Module, relative_std: float, seed: int = 0, *, inplace: bool = False
) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with programming noise ``relative_std`` and
    ``noise_seed = seed`` on every analog layer; the noise acts in eval mode only."""
    noisy = {"noise": float(relative_std), "noise_seed": seed}
    layers = [layer for _, layer in _supermask_layers(model)]
    if not any(layer.method.name == Analog.name for layer in layers):
        raise ValueError("with_noise: the model has no analog layer")
    AnalogConfig(**noisy)  # validates
    out = model if inplace else copy.deepcopy(model)
    for _, layer in _supermask_layers(out):
        if layer.method.name == Analog.name:
            layer.method_config = layer.method_config.replace(**noisy)
        conversion = layer.conversion  # so that the model file records the same config
        if conversion is not None and isinstance(conversion.method, AnalogConfig):
            layer.conversion = conversion.replace(method=conversion.method.replace(**noisy))
    return out


def edge_popup_with_device_noise(model: nn.Module, relative_std: float, seed: int = 0) -> nn.Module:
    """A plain copy (:func:`hiddenite.to_dense`) of an edge-popup model programmed on an analog
    device: every weight of each edge-popup layer, pruned zeros included, gets
    ``relative_std * s * z`` added, ``s`` the layer's mean ``|w|`` over its kept weights and
    ``z`` standard normal from :func:`noise_generator` (seed, layer index). A pruned weight is
    a programmed cell at zero, not a missing wire, so it picks up the same absolute noise as
    a kept one (the analog method's missing connections stay exactly zero)."""
    if not (math.isfinite(relative_std) and relative_std >= 0.0):
        raise ValueError(f"relative_std must be a finite number >= 0, got {relative_std}")
    targets = [(n, m) for n, m in _supermask_layers(model) if m.method.name == EdgePopup.name]
    if not targets:
        raise ValueError("edge_popup_with_device_noise: the model has no edge-popup layer")
    plain = to_dense(model)
    for name, layer in targets:
        module = plain.get_submodule(name)
        with torch.no_grad():
            w = module.weight
            kept = layer.support().to(w.device)
            s = w[kept].abs().mean() if bool(kept.any()) else w.new_zeros(())
            z = _noise(tuple(w.shape), seed, layer.layer_index, w.device)
            w.add_(relative_std * s * z)
    return plain
