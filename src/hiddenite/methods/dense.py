"""``dense``: the dense twin. The weights are ordinary trained parameters (initialised from the
same seed), nothing is masked, and the file stores every weight as a float.

Used for baselines and for layers kept dense (``keep_first_dense`` / ``keep_last_dense``).
Hardware: weights shipped from memory at the stored float width, a full multiply-accumulate
per weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import LayerCost, Method, MethodConfig, Part, register_method

__all__ = ["Dense", "DenseConfig"]


@dataclass(frozen=True)
class DenseConfig(MethodConfig):
    method = "dense"


class Dense(Method):
    name = "dense"
    config_type = DenseConfig
    trains_weights = True

    def layer_configs(self, shapes, config, density):
        return [(config, 1.0) for _ in shapes]  # a dense layer keeps every weight

    def scale_density(self, config, density) -> float | None:
        return None  # a dense layer keeps all its weights: nothing to compensate

    def weight(self, layer: Any) -> torch.Tensor:
        return layer.weight

    def support(self, layer: Any) -> torch.Tensor:
        return torch.ones_like(layer.weight, dtype=torch.bool)

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        return ("weight",)

    def parts(self, shape, config, density) -> list[Part]:
        return [Part("weight", math.prod(shape), None)]

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        w = layer.weight.detach().to("cpu", torch.float32).reshape(-1)
        return {"weight": w.numpy().copy()}

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        values = torch.from_numpy(np.asarray(arrays["weight"], dtype=np.float32))
        with torch.no_grad():
            layer.weight.copy_(values.reshape(layer.weight.shape))

    def cost(self, shape, config, density) -> LayerCost:
        return LayerCost("stored", 32, "mac", ())

    def describe(self, layer: Any) -> str:
        return "method=dense"


register_method(Dense())
