"""``trichromatic`` (López García-Arias et al., "The Trichromatic Strong Lottery Ticket
Hypothesis", NeurIPS MLNCP workshop 2024 / IJCNN 2026): three primary supermasks per weight.

Each frozen random weight ``w`` gets three independently learned masks, the "colours":

- **connectivity** (C, keep or prune): a score per weight (edge-popup's, drawn from the
  ``scores`` stream); the ``kept_count(n, density)`` weights of largest ``|score|`` are kept.
- **sign** (S, flip or not): a score per weight (stream ``sign-scores``); among the *kept*
  weights, the ``kept_count(n_kept, sign_density)`` of largest ``|sign score|`` are flipped.
  ``sign_density`` is thus the fraction of the kept weights whose sign is flipped (exact
  count). A fixed count hardly limits what can be learned: the frozen signs are random, so
  any wanted sign pattern differs from them in about half of the positions, which is the
  default ``sign_density = 0.5``.
- **magnitude** (M, integer scale): a score per weight (stream ``magnitude-scores``) with
  ``C = len(magnitude_coats)`` nested coats, as in multicoated supermasks: coat ``j`` is passed
  by the ``kept_count(n, magnitude_coats[j])`` kept weights of largest ``|magnitude score|``
  (coat densities are fractions of ALL the layer's weights, strictly decreasing, each below
  the layer density, so the coats nest inside the kept set). The multiplier is
  ``1 + coats passed``, in 1..C+1. No coats: the magnitude colour is off.

Effective weight = ``w * connectivity * (1 - 2 * flip) * (1 + coats passed)``. Every colour can
be switched off (``connectivity``, ``sign``, ``magnitude_coats=()``), but not all three. With
``connectivity=False`` every weight is kept: the layer density must then be 1.0 (anything
else is a contradiction and raises ConfigError).

Selections are exact top-``m`` selections with ties broken by the lowest position, so counts
are always exact; the sign and magnitude selections rank only the kept positions.

Stored, one part per enabled colour: ``connectivity`` (n bits), ``sign`` (n_kept bits) and
``magnitude`` (n_kept symbols 0..C: coats passed). Sign and magnitude are stored only for the
kept positions (in position order; all positions when connectivity is off): a pruned
weight's sign or magnitude is never used, and leaving it out is what makes trichromatic
tickets small. Restore writes ``1 + symbol`` into each score at the positions its part covers
(the sign and magnitude scores of pruned weights become 0, never ranked), so the method's own
selections re-select exactly what was stored (the stored counts are exact, so no tie can
straddle a threshold), and every restored score is nonzero where it matters, so fine-tuning
from a loaded file still gets straight-through gradients.

Gradients: each colour's 0/1 mask passes its gradient straight through to ``|score|`` (and so
to the score times its sign), the magnitude score once per coat, as multicoated supermasks do.

The WhiteDwarf "scalar supermask" (signed + multicoated) is
:meth:`TrichromaticConfig.scalar_supermask`: connectivity, sign and two magnitude coats, so
effective weights take the values ``0, ±w, ±2w, ±3w``.

``scale_by_density`` divides the frozen weights by the square root of E[multiplier**2]
(the kept fraction plus ``(2j+3) c_j`` for coat ``j``), not of the kept fraction alone, so a
layer's output variance stays where edge-popup's is when magnitude coats multiply weights by
up to C+1 (without batch norm, growing logits otherwise stall training).

Hardware: 1-bit frozen weights regenerated from the seed; a signed add per kept weight, a
shift-add when magnitude coats give integer multipliers (weight operand ``1 + ceil(log2(C+1))``
bits: sign plus level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..masks import kept_count, threshold_for_top, top_fraction_mask
from ..prng import register_stream
from .base import LayerCost, LayerItem, Method, MethodConfig, Part, register_method
from .edge_popup import initial_scores
from .freezing import own_config

STREAM_SIGN_SCORES = register_stream("sign-scores", 7)
STREAM_MAGNITUDE_SCORES = register_stream("magnitude-scores", 8)

#: multicoated supermasks' ResNet-50/ImageNet coats 0.30 / 0.079 / 0.032 (BRIEF section 4):
#: the inner coats as fractions of the first (the connectivity density)
SCALAR_SUPERMASK_COAT_RATIOS = (0.079 / 0.30, 0.032 / 0.30)

__all__ = [
    "SCALAR_SUPERMASK_COAT_RATIOS",
    "STREAM_MAGNITUDE_SCORES",
    "STREAM_SIGN_SCORES",
    "Trichromatic",
    "TrichromaticConfig",
    "top_count_mask",
]


@dataclass(frozen=True)
class TrichromaticConfig(MethodConfig):
    """connectivity: learn which weights are kept (top ``density`` of a score); off: keep all
      (the layer density must then be 1.0).
    sign: learn a flip mask; ``sign_density`` in (0, 1) is the fraction of the kept weights
      flipped.
    magnitude_coats: densities (fractions of all weights, strictly decreasing, each below the
      layer density) of the magnitude coats; a kept weight is multiplied by 1 + coats passed.
      Empty: the magnitude colour is off.
    """

    method = "trichromatic"
    connectivity: bool = True
    sign: bool = True
    sign_density: float = 0.5
    magnitude_coats: tuple[float, ...] = ()

    def check(self) -> None:
        if not (self.connectivity or self.sign or self.magnitude_coats):
            self.fail(
                "connectivity",
                "is off, and so are sign and magnitude_coats: enable at least one colour",
            )
        if not 0.0 < self.sign_density < 1.0:
            self.fail("sign_density", f"must be in (0, 1), got {self.sign_density}")
        coats = self.magnitude_coats
        if len(coats) > 255:
            self.fail("magnitude_coats", f"allows at most 255 coats, got {len(coats)}")
        for j, coat in enumerate(coats):
            if not 0.0 < coat < 1.0:
                self.fail("magnitude_coats", f"[{j}] must be in (0, 1), got {coat}")
            if j and not coat < coats[j - 1]:
                self.fail("magnitude_coats", f"must be strictly decreasing, got {list(coats)}")

    @property
    def coats(self) -> int:
        """C, the number of magnitude coats (0: magnitude off)."""
        return len(self.magnitude_coats)

    @classmethod
    def scalar_supermask(cls, density: float = 0.3) -> TrichromaticConfig:
        """WhiteDwarf's "scalar supermask": connectivity + sign + two magnitude coats, so a
        weight is 0, ±w, ±2w or ±3w. The coats keep multicoated supermasks' ResNet-50 ratios
        (0.30 / 0.079 / 0.032) scaled to ``density``: 0.079 and 0.032 at density 0.3.
        Train it with the same ``density``."""
        if not 0.0 < density <= 1.0:
            raise ConfigError(f"scalar_supermask: density must be in (0, 1], got {density}")
        coats = tuple(round(density * r, 6) for r in SCALAR_SUPERMASK_COAT_RATIOS)
        return cls(connectivity=True, sign=True, magnitude_coats=coats)


def top_count_mask(values: torch.Tensor, m: int) -> torch.Tensor:
    """Boolean mask of the ``m`` largest entries of 1-D ``values`` (ties: lowest index)."""
    n = values.numel()
    if m <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if m >= n:
        return torch.ones_like(values, dtype=torch.bool)
    t = threshold_for_top(values, m)
    mask = values >= t
    if int(torch.count_nonzero(mask)) != m:  # ties at the threshold: lowest indices first
        tied = values == t
        budget = m - int(torch.count_nonzero(values > t))
        mask = (values > t) | (tied & (torch.cumsum(tied, 0) <= budget))
    return mask


def _check_density(config: TrichromaticConfig, density: float) -> None:
    """ConfigError when the layer density contradicts the config."""
    if not config.connectivity and density != 1.0:
        raise ConfigError(
            f"method 'trichromatic': connectivity=False keeps every weight, so the density "
            f"must be 1.0, got {density}"
        )
    if config.magnitude_coats and not config.magnitude_coats[0] < density:
        raise ConfigError(
            f"method 'trichromatic': magnitude_coats {list(config.magnitude_coats)} must all "
            f"be below the density {density}"
        )


class _Selection:
    """One layer's three selections, flat in position order: ``kept`` (bool), ``flip``
    (bool, or None with sign off) and ``level`` (coats passed, int64, or None with
    magnitude off); ``flip`` and ``level`` are False / 0 at pruned positions.

    The sign and magnitude selections rank only the kept positions (gathered in position
    order, so ties still go to the lowest position); coat j ranks only the weights that
    passed coat j-1, which selects the same set as ranking every kept weight (the top m of a
    total order nest) at a fraction of the cost.
    """

    def __init__(self, layer: Any) -> None:
        config: TrichromaticConfig = own_config(layer)
        n = layer.weight.numel()
        device = layer.weight.device
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:  # locked + the top free positions (see methods.freezing)
            self.kept = freezing.select(layer, layer.scores)
            positions = torch.nonzero(self.kept).reshape(-1)
        elif config.connectivity:
            self.kept = top_fraction_mask(layer.scores.detach().reshape(-1), layer.density)
            positions = torch.nonzero(self.kept).reshape(-1)
        else:
            self.kept = torch.ones(n, dtype=torch.bool, device=device)
            positions = None  # every position
        n_kept = n if positions is None else positions.numel()
        self.n_kept = n_kept

        def kept_values(scores: torch.Tensor) -> torch.Tensor:
            values = scores.detach().reshape(-1).abs()
            return values if positions is None else values[positions]

        self.flip = None
        if config.sign:
            chosen = top_count_mask(
                kept_values(layer.sign_scores), kept_count(n_kept, config.sign_density)
            )
            self.flip = self._scatter(chosen, positions, n)
        self.level = None
        if config.coats:
            self.level = torch.zeros(n, dtype=torch.int64, device=device)
            values = kept_values(layer.magnitude_scores)
            where = torch.arange(n, device=device) if positions is None else positions
            for coat in config.magnitude_coats:
                m = min(kept_count(n, coat), n_kept)  # coat < density: never capped
                chosen = top_count_mask(values, m)
                values, where = values[chosen], where[chosen]
                self.level[where] += 1

    @staticmethod
    def _scatter(chosen: torch.Tensor, positions: torch.Tensor | None, n: int) -> torch.Tensor:
        if positions is None:
            return chosen
        flat = torch.zeros(n, dtype=torch.bool, device=chosen.device)
        flat[positions[chosen]] = True
        return flat

    def factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(``(1 - 2 flip) * (1 + level)`` everywhere, that times ``kept``): exact integers."""
        signed = torch.ones(self.kept.shape, dtype=dtype, device=self.kept.device)
        if self.flip is not None:
            signed.masked_fill_(self.flip, -1.0)
        if self.level is not None:
            signed.mul_(self.level.to(dtype) + 1.0)
        return signed, signed.masked_fill(~self.kept, 0.0)


class _TrichromaticWeight(torch.autograd.Function):
    """``weight * kept * (1 - 2 flip) * (1 + level)``, straight-through to each score.

    The gradient of each colour's 0/1 masks reaches ``|score|`` unchanged (times the sign
    of the score, through ``abs``): connectivity ``g * w * s * m``, sign ``-2 g * w * c * m``
    (a flip multiplies by ``1 - 2 flip``), magnitude ``C * g * w * c * s`` (once per coat).
    """

    @staticmethod
    def forward(ctx, weight, scores, sign_scores, magnitude_scores, signed, factor, coats):
        ctx.coats = coats
        ctx.save_for_backward(weight, scores, sign_scores, magnitude_scores, signed, factor)
        return weight * factor

    @staticmethod
    def backward(ctx, grad):
        weight, scores, sign_scores, magnitude_scores, signed, factor = ctx.saved_tensors
        upstream = grad * weight
        grads = [None, None, None, None, None, None, None]
        if scores is not None and ctx.needs_input_grad[1]:
            grads[1] = upstream * signed * torch.sgn(scores)  # signed = s * m
        if sign_scores is not None and ctx.needs_input_grad[2]:
            grads[2] = upstream * factor.abs() * torch.sgn(sign_scores)  # |factor| = c * m
            grads[2].mul_(-2.0)
        if magnitude_scores is not None and ctx.needs_input_grad[3]:
            grads[3] = upstream * torch.sign(factor) * torch.sgn(magnitude_scores)  # c * s
            grads[3].mul_(float(ctx.coats))
        return tuple(grads)


class Trichromatic(Method):
    name = "trichromatic"
    config_type = TrichromaticConfig
    streams = ("scores", "sign-scores", "magnitude-scores")
    #: under ``frozen`` the connectivity colour is restricted (locked kept, pruned never kept)
    #: and stored for the free positions only; sign and magnitude still cover every kept
    #: weight, locked ones included (their sign and level are used, so they are learned)
    freezable = True

    def freezing_problem(self, config: MethodConfig) -> str | None:
        if not config.connectivity:
            return "connectivity=False: no connectivity colour to freeze"
        return None

    def layer_configs(self, shapes, config, density):
        _check_density(config, density)
        return [(config, density) for _ in shapes]

    def scale_density(self, config: MethodConfig, density: float) -> float | None:
        # E[multiplier**2] over all weights: the kept fraction, plus (2j+3) c_j for coat j
        # (a weight passing j+1 coats is multiplied by j+2, and (j+2)**2 - (j+1)**2 = 2j+3);
        # dividing by its root keeps a layer's output variance where edge-popup's is
        return min(
            1.0, density + sum((2 * j + 3) * c for j, c in enumerate(config.magnitude_coats))
        )

    def setup(self, layer: Any) -> None:
        config: TrichromaticConfig = own_config(layer)
        _check_density(config, layer.density)
        if config.connectivity:
            layer.scores = nn.Parameter(torch.zeros_like(layer.weight))
        if config.sign:
            layer.sign_scores = nn.Parameter(torch.zeros_like(layer.weight))
        if config.coats:
            layer.magnitude_scores = nn.Parameter(torch.zeros_like(layer.weight))

    def initialize(self, layer: Any) -> None:
        config: TrichromaticConfig = own_config(layer)
        with torch.no_grad():
            if config.connectivity:
                layer.scores.copy_(initial_scores(layer))
                freezing = layer.__dict__.get("freezing")
                if freezing is not None:  # a zero score gets no gradient: frozen stays frozen
                    layer.scores.view(-1).masked_fill_(freezing.frozen(layer), 0.0)
            if config.sign:
                layer.sign_scores.copy_(initial_scores(layer, "sign-scores"))
            if config.coats:
                layer.magnitude_scores.copy_(initial_scores(layer, "magnitude-scores"))

    def weight(self, layer: Any) -> torch.Tensor:
        config: TrichromaticConfig = own_config(layer)
        with torch.no_grad():
            signed, factor = _Selection(layer).factors(layer.weight.dtype)
        shape = layer.weight.shape
        return _TrichromaticWeight.apply(
            layer.weight,
            layer.scores if config.connectivity else None,
            layer.sign_scores if config.sign else None,
            layer.magnitude_scores if config.coats else None,
            signed.reshape(shape),
            factor.reshape(shape),
            config.coats,
        )

    def support(self, layer: Any) -> torch.Tensor:
        config: TrichromaticConfig = own_config(layer)
        freezing = layer.__dict__.get("freezing")
        if freezing is not None:
            return freezing.select(layer, layer.scores).reshape(layer.weight.shape)
        if not config.connectivity:
            return torch.ones_like(layer.weight, dtype=torch.bool)
        return top_fraction_mask(layer.scores, layer.density)

    def owned_state(self, layer: Any) -> tuple[str, ...]:
        config: TrichromaticConfig = own_config(layer)
        names = []
        if config.connectivity:
            names.append("scores")
        if config.sign:
            names.append("sign_scores")
        if config.coats:
            names.append("magnitude_scores")
        return tuple(names)

    # -- storage -------------------------------------------------------------------------------
    def parts(self, shape, config, density) -> list[Part]:
        n = math.prod(shape)
        n_kept = kept_count(n, density) if config.connectivity else n
        parts = []
        if config.connectivity:
            parts.append(Part("connectivity", n, 2))
        if config.sign:
            parts.append(Part("sign", n_kept, 2))
        if config.coats:
            parts.append(Part("magnitude", n_kept, config.coats + 1))
        return parts

    def frozen_parts(self, shape, config, density, counts) -> list[Part]:
        _check_density(config, density)
        parts = self.parts(shape, config, density)
        return [Part(p.name, counts.free, 2) if p.name == "connectivity" else p for p in parts]

    def export(self, layer: Any) -> dict[str, np.ndarray]:
        config: TrichromaticConfig = own_config(layer)
        freezing = layer.__dict__.get("freezing")
        with torch.no_grad():
            sel = _Selection(layer)
            kept = sel.kept.to("cpu")
            arrays: dict[str, np.ndarray] = {}
            if freezing is not None:  # connectivity of the free positions only
                arrays["connectivity"] = freezing.gather(layer, sel.kept).to("cpu").numpy()
            elif config.connectivity:
                arrays["connectivity"] = kept.numpy().copy()
            if config.sign:
                arrays["sign"] = sel.flip.to("cpu")[kept].numpy().copy()
            if config.coats:
                level = sel.level.to("cpu")[kept].numpy()
                arrays["magnitude"] = level.astype(np.bool_ if config.coats == 1 else np.uint8)
        return arrays

    def restore(self, layer: Any, arrays: dict[str, np.ndarray]) -> None:
        config: TrichromaticConfig = own_config(layer)
        n = layer.weight.numel()
        freezing = layer.__dict__.get("freezing")
        bits = None
        if config.connectivity:
            bits = torch.from_numpy(np.asarray(arrays["connectivity"], dtype=np.bool_))
        if freezing is not None:  # stored bits are the free positions'; locked are kept
            _, locked = freezing.pattern(layer)
            bits = bits.reshape(-1).to(locked.device)
            kept = freezing.scatter(layer, bits.to(torch.uint8)).bool() | locked
        elif config.connectivity:
            kept = bits
        else:
            kept = torch.ones(n, dtype=torch.bool)
        kept = kept.reshape(-1).to(layer.weight.device)

        def write(scores: torch.Tensor, symbols: np.ndarray) -> None:
            # 1 + symbol at the kept positions, 0 elsewhere: the selections re-select them
            values = torch.zeros(n, dtype=scores.dtype, device=scores.device)
            stored = torch.from_numpy(np.asarray(symbols).astype(np.int64))
            values[kept] = (stored + 1).to(scores)
            scores.copy_(values.reshape(scores.shape))

        with torch.no_grad():
            if freezing is not None:  # 1 + bit at the free positions, 0 at the frozen ones
                free_scores = bits.to(layer.scores) + 1.0
                layer.scores.copy_(freezing.scatter(layer, free_scores).reshape(layer.scores.shape))
            elif config.connectivity:
                layer.scores.copy_((kept.to(layer.scores) + 1.0).reshape(layer.scores.shape))
            if config.sign:
                write(layer.sign_scores, arrays["sign"])
            if config.coats:
                write(layer.magnitude_scores, arrays["magnitude"])

    def check_layer(self, item: LayerItem) -> None:
        self._check(item, None)

    def frozen_check_layer(self, item: LayerItem, counts: Any) -> None:
        self._check(item, counts)

    def _check(self, item: LayerItem, counts: Any) -> None:
        config: TrichromaticConfig = item.config
        n = math.prod(item.shape)
        where = f"layer {item.name!r} (trichromatic)"
        if counts is not None:  # frozen: connectivity bits for the free positions only
            bits = np.asarray(item.arrays["connectivity"])
            chosen = int(np.count_nonzero(bits))
            if bits.size != counts.free or chosen != counts.free_kept:
                raise ValueError(
                    f"{where} keeps {chosen} of {bits.size} stored free positions, but its "
                    f"freezing leaves {counts.free} free with {counts.free_kept} kept"
                )
            kept = counts.kept
        elif config.connectivity:
            kept = int(np.count_nonzero(item.arrays["connectivity"]))
            want = kept_count(n, item.density)
            if kept != want:
                raise ValueError(
                    f"{where} keeps {kept} of {n} weights, but density {item.density} keeps {want}"
                )
        else:
            if item.density != 1.0:
                raise ValueError(
                    f"{where} has connectivity off, so its density must be 1.0, got {item.density}"
                )
            kept = n
        if config.sign:
            signs = np.asarray(item.arrays["sign"])
            if signs.size != kept:
                raise ValueError(f"{where} stores {signs.size} signs for {kept} kept weights")
            flipped = int(np.count_nonzero(signs))
            want = kept_count(kept, config.sign_density)
            if flipped != want:
                raise ValueError(
                    f"{where} flips {flipped} of {kept} kept weights, but sign_density "
                    f"{config.sign_density} flips {want}"
                )
        if config.coats:
            level = np.asarray(item.arrays["magnitude"]).astype(np.int64)
            if level.size != kept:
                raise ValueError(f"{where} stores {level.size} levels for {kept} kept weights")
            if level.size and not 0 <= int(level.min()) <= int(level.max()) <= config.coats:
                raise ValueError(f"{where} has magnitude levels outside 0..{config.coats}")
            for j, coat in enumerate(config.magnitude_coats, start=1):
                passed = int(np.count_nonzero(level >= j))
                want = min(kept_count(n, coat), kept)
                if passed != want:
                    raise ValueError(
                        f"{where}: {passed} weights pass magnitude coat {j}, but its density "
                        f"{coat} gives {want}"
                    )

    # -- hardware ------------------------------------------------------------------------------
    def cost(self, shape, config, density) -> LayerCost:
        if config.coats:
            bits = 1 + math.ceil(math.log2(config.coats + 1))
            return LayerCost("prng", bits, "shift-add", ("weights",))
        return LayerCost("prng", 1, "add", ("weights",))

    def describe(self, layer: Any) -> str:
        config: TrichromaticConfig = own_config(layer)
        colours = [
            name
            for name, on in (
                ("C", config.connectivity),
                ("S", config.sign),
                ("M", bool(config.coats)),
            )
            if on
        ]
        extra = []
        if config.sign:
            extra.append(f"sign_density={config.sign_density:g}")
        if config.coats:
            extra.append("coats=" + "/".join(f"{c:g}" for c in config.magnitude_coats))
        details = ", ".join(extra)
        return f"method=trichromatic[{''.join(colours)}], density={layer.density:g}" + (
            f" ({details})" if details else ""
        )


register_method(Trichromatic())
