"""``edge-popup`` (Ramanujan et al., CVPR 2020): a learned score per frozen weight, top-k kept.

Each weight has a real score; the forward pass keeps the ``kept_count(n, density)`` weights of
largest ``|score|`` (per layer), or the top fraction over all layers converted together
(``scope="global"``). The gradient reaches the scores straight through the mask. Stored: one
binary part ``mask`` (n bits, exactly the kept count set). Hardware: 1-bit frozen weights
regenerated from the seed, a signed add per kept weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..kernels import mask_cpu
from ..masks import (
    GlobalThreshold,
    TopKSelector,
    kept_count,
    masked_weight,
    top_fraction_mask,
)
from .base import (
    LayerCost,
    LayerItem,
    Method,
    MethodConfig,
    Part,
    fan_in,
    register_method,
    zeros_like,
)

SCOPES = ("layer", "global")

__all__ = ["SCOPES", "EdgePopup", "EdgePopupConfig", "TopKScores", "initial_scores"]


@dataclass(frozen=True)
class EdgePopupConfig(MethodConfig):
    """scope: ``"layer"`` (each layer keeps its density) or ``"global"`` (one threshold over
    all layers converted together)."""

    method = "edge-popup"
    scope: str = "layer"

    def check(self) -> None:
        if self.scope not in SCOPES:
            self.fail("scope", f"must be one of {', '.join(SCOPES)}, got {self.scope!r}")


def initial_scores(layer: Any, stream: str = "scores") -> torch.Tensor:
    """edge-popup's kaiming_uniform(a=sqrt(5)) bound, 1/sqrt(fan_in), drawn from ``stream``."""
    shape = tuple(layer.weight.shape)
    return layer.uniform(shape, 1.0 / math.sqrt(fan_in(shape)), stream)


def _key(scores: torch.Tensor) -> tuple:
    """What identifies a score tensor's present values: the tensor itself, its storage, device
    and in-place version (a moved, copied or unpickled module never matches)."""
    return (scores, scores.data_ptr(), scores.device, scores._version)


def _same(key: tuple, scores: torch.Tensor) -> bool:
    held, *rest = key
    return held is scores and tuple(rest) == _key(scores)[1:]


class TopKScores(Method):
    """A real score per weight (``layer.scores``); the top ``kept_count(n, density)`` of
    ``|score|`` are selected per layer, or over every layer converted together when the
    config's ``scope`` is ``"global"``. Shared by the methods built on edge-popup's selection."""

    streams = ("scores",)

    def link(self, layers: list[Any], config: MethodConfig) -> None:
        if config.scope == "global" and layers:
            group = GlobalThreshold(layers[0].density, attribute="scores")
            for layer in layers:
                group.register(layer)
                layer.mask_group = group

    def setup(self, layer: Any) -> None:
        layer.scores = nn.Parameter(zeros_like(layer.weight))
        layer.mask_group = None

    def initialize(self, layer: Any) -> None:
        with torch.no_grad():
            layer.scores.copy_(initial_scores(layer))

    def _mask(self, layer: Any, in_forward: bool = False) -> torch.Tensor:
        group = layer.mask_group
        if group is None:
            return top_fraction_mask(layer.scores, layer.density)
        # global scope: the first layer of the group refreshes the threshold once per pass
        return group.layer_mask(layer, refresh=in_forward and group.is_first(layer))


class EdgePopup(TopKScores):
    name = "edge-popup"
    config_type = EdgePopupConfig

    def setup(self, layer: Any) -> None:
        super().setup(layer)
        layer.mask_selector = TopKSelector()  # warm-starts each step's layer-scope selection

    def _held(self, layer: Any) -> torch.Tensor | None:
        """The mask :meth:`restore` wrote, while it is still what the selection would give:
        the scores of the layer (and of its global group) are the very tensors, at the very
        versions, that restore left; None (and the mask is dropped) once any changed, as when
        an optimizer steps or the module moves to another device."""
        held = getattr(layer, "restored_mask", None)
        if held is None:
            return None
        group = layer.mask_group
        for other in (layer,) if group is None else group.layers:
            kept = getattr(other, "restored_mask", None)
            scores = other.scores
            if kept is None or not _same(kept[1], scores):
                layer.restored_mask = None
                return None
        return held[0]

    def _mask(self, layer: Any, in_forward: bool = False) -> torch.Tensor:
        held = self._held(layer)
        return held if held is not None else super()._mask(layer, in_forward)

    def weight(self, layer: Any) -> torch.Tensor:
        held = self._held(layer)
        if held is not None:  # a restored layer not trained since: no selection to run
            return masked_weight(layer.weight, layer.scores, held)
        if layer.mask_group is None:
            return layer.mask_selector.masked_weight(layer.weight, layer.scores, layer.density)
        return masked_weight(layer.weight, layer.scores, self._mask(layer, True))

    def support(self, layer: Any) -> torch.Tensor:
        return self._mask(layer)

    def weight_factor(self, layer: Any) -> torch.Tensor:
        return self._mask(layer).to(torch.int8)

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        return ("scores",)

    def parts(self, shape, config, density) -> list[Part]:
        return [Part("mask", math.prod(shape), 2)]

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        return {"mask": self._mask(layer).detach().to("cpu").reshape(-1).numpy()}

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        mask = np.asarray(arrays["mask"], dtype=np.bool_)
        bits = torch.from_numpy(mask).reshape(layer.scores.shape)
        held = layer.scores.detach()
        if held.device.type == "cpu" and held.dtype == torch.float32 and held.is_contiguous():
            # one compiled pass (about twice torch's bool-to-float copy_); it writes through
            # numpy, so the in-place version does not move: the key below is taken after it
            mask_cpu.fill_zero_one(held.reshape(-1).numpy(), mask.reshape(-1))
        else:
            with torch.no_grad():  # the top-k selection re-selects exactly the ones
                layer.scores.copy_(bits)  # converts in the one pass
        if layer.mask_group is not None:
            layer.mask_group.invalidate()
        # the forward pass, the support and the export use the mask itself until the scores
        # change (training resumes from the 0/1 scores, which select exactly this mask)
        scores = layer.scores
        layer.restored_mask = (
            bits.to(scores.device),
            _key(scores),
        )

    def restored_matches(self, layer: Any, arrays: dict[str, np.ndarray]) -> bool:
        """One pass, no selection: the layer holds the stored mask and its scores are exactly
        that mask as 0/1 (``check_layer`` confirmed it keeps ``kept_count(n, density)``), so
        the top-k selection of its scores, by layer or over a global group whose masks all
        passed, gives back exactly the stored mask."""
        held = self._held(layer)
        scores = layer.scores.detach()
        if held is None or scores.device.type != "cpu" or scores.dtype != torch.float32:
            return super().restored_matches(layer, arrays)
        want = np.asarray(arrays["mask"], dtype=np.bool_).reshape(-1)
        mask = held.reshape(-1).numpy()
        same = mask.shape == want.shape and mask.ctypes.data == want.ctypes.data  # one buffer
        return (same or bool(np.array_equal(mask, want))) and mask_cpu.is_zero_one_of(
            scores.contiguous().reshape(-1).numpy(), mask
        )

    def check(self, items: list[LayerItem]) -> None:
        if not items:
            return
        if items[0].config.scope == "layer":
            super().check(items)
            return
        total = sum(math.prod(item.shape) for item in items)
        kept = sum(int(np.count_nonzero(item.arrays["mask"])) for item in items)
        want = kept_count(total, items[0].density)
        if kept != want:
            raise ValueError(
                f"the edge-popup layers keep {kept} of {total} weights, but global density "
                f"{items[0].density} keeps {want}"
            )

    def kept(self, shape, config, density, counts) -> int:
        if config.scope == "global":  # the group decides: the layer's stored ones
            return counts["mask"][1]
        return kept_count(math.prod(shape), density)

    def check_layer(self, item: LayerItem) -> None:
        n = math.prod(item.shape)
        kept = int(np.count_nonzero(item.arrays["mask"]))
        want = kept_count(n, item.density)
        if kept != want:
            raise ValueError(
                f"layer {item.name!r} keeps {kept} of {n} weights, but density "
                f"{item.density} keeps {want}"
            )

    def cost(self, shape, config, density) -> LayerCost:
        return LayerCost("prng", 1, "add", ("weights",))

    def describe(self, layer: Any) -> str:
        scope = "global" if layer.mask_group is not None else "layer"
        return f"method=edge-popup, density={layer.density:g} ({scope})"


register_method(EdgePopup())
