"""Memory a model needs, estimated from shapes alone, and the limits hiddenite refuses above.

Models are laid out on torch's ``meta`` device (shapes, no storage), so a request for
``hidden=[100000000]`` or ``width=1000`` costs nothing to estimate and is refused, with the
number, before anything is allocated. ``docs/hostile-inputs.md`` explains the limits.

- :data:`MAX_MODEL_WEIGHTS`: at most 2**28 weights (conv/linear) per model, the same cap as
  :data:`hiddenite.fileformat.DEFAULT_MAX_WEIGHTS`; training needs about
  :data:`TRAIN_BYTES_PER_WEIGHT` bytes per weight (frozen weight, scores, gradient, optimizer
  state), so the cap is 4 GiB of model state.
- :data:`MAX_ACTIVATION_BYTES`: one forward pass may hold at most 16 GiB of float32
  activations, and never more than the memory the machine has available.
- :func:`step_memory`: the peak memory of one training (or evaluation) step, from the model's
  shapes and the batch size; ``train`` and ``eval`` refuse what cannot fit before they read
  data or allocate the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError

__all__ = [
    "BACKWARD_FACTOR",
    "EVAL_LIVE_OUTPUTS",
    "MAX_ACTIVATION_BYTES",
    "MAX_MODEL_WEIGHTS",
    "TRAIN_BYTES_PER_WEIGHT",
    "ResourceError",
    "StepMemory",
    "activation_values",
    "available_memory",
    "check_activations",
    "check_available",
    "check_step_memory",
    "check_weights",
    "format_bytes",
    "step_memory",
    "weight_count",
]

MAX_MODEL_WEIGHTS = 1 << 28
TRAIN_BYTES_PER_WEIGHT = 16
MAX_ACTIVATION_BYTES = 16 * 1024**3
# Peak memory per weight while a model file is loaded (frozen weights, learned state, the
# PRNG's words and their conversions): 20.6 to 26.8 B measured by
# benchmarks/hostile_amplification.py; 32 leaves a margin.
LOAD_BYTES_PER_WEIGHT = 32
# Activation values a training step holds per value of the forward pass's module outputs:
# the tensors autograd keeps for backward (measured by tests/test_resources.py with autograd's
# saved-tensor hooks: 0.50 to 0.64 per hooked value on mlp, conv4 and resnet18, so at most 1)
# and, while backward runs, the gradients flowing back through them (at most 1 more).
BACKWARD_FACTOR = 2
# Module outputs an evaluation step (no autograd) holds at once, at most: a layer's input and
# output, and a residual block's identity and branch; counted at the size of the largest.
EVAL_LIVE_OUTPUTS = 4


class ResourceError(UserError):
    """A request needs more memory than hiddenite allows; the message gives the estimate."""


def format_bytes(n: float) -> str:
    """``n`` bytes for people: 1.5 GB, 320 MB, 12 kB (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


def available_memory() -> int | None:
    """Bytes of physical memory available now (None where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def weight_count(module: nn.Module) -> int:
    """Weights of every ``nn.Conv2d`` / ``nn.Linear`` of ``module`` (works on ``meta``)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def check_weights(weights: int, what: str) -> None:
    """Raise ResourceError if a model of ``weights`` weights exceeds :data:`MAX_MODEL_WEIGHTS`."""
    if weights > MAX_MODEL_WEIGHTS:
        need = format_bytes(TRAIN_BYTES_PER_WEIGHT * weights)
        raise ResourceError(
            f"{what} has {weights:,} weights (about {need} to train), more than the limit "
            f"of {MAX_MODEL_WEIGHTS:,} weights; use smaller model arguments"
        )


def activation_values(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Values of the input and of every leaf module's output for one forward pass of
    ``input_shape`` (batch first), computed on the ``meta`` device: ``module`` must live there.
    When the input does not fit the module, the values up to the failing layer (a lower
    bound; whoever runs it for real reports the misfit)."""
    return _activation_profile(module, input_shape)[0]


def _activation_profile(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(all values, the largest single tensor's values) of :func:`activation_values`."""
    total = largest = _numel(input_shape)

    def hook(_mod, _inputs, output) -> None:
        nonlocal total, largest
        if isinstance(output, torch.Tensor):
            total += output.numel()
            largest = max(largest, output.numel())

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.empty(tuple(input_shape), device="meta"))
    except (RuntimeError, ValueError, TypeError, IndexError):
        pass  # the input does not fit: what ran so far is the estimate
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total, largest


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def check_activations(values: int, what: str, bytes_per_value: int = 4) -> None:
    """Raise ResourceError if ``values`` activations exceed the limit or the free memory."""
    need = values * bytes_per_value
    limit = MAX_ACTIVATION_BYTES
    free = available_memory()
    where = f"the limit of {format_bytes(limit)}"
    if free is not None and free < limit:
        limit, where = free, f"the {format_bytes(free)} of memory available"
    if need > limit:
        raise ResourceError(
            f"{what} needs about {format_bytes(need)} of activations ({values:,} values), "
            f"more than {where}; use a smaller input"
        )


def check_available(need: int, what: str) -> None:
    """Raise ResourceError if ``need`` bytes exceed the memory available now (when known)."""
    free = available_memory()
    if free is not None and need > free:
        raise ResourceError(
            f"{what} needs about {format_bytes(need)} of memory, more than the "
            f"{format_bytes(free)} available"
        )


@dataclass(frozen=True)
class StepMemory:
    """Values (float32, 4 bytes each) one step holds at its peak; see :func:`step_memory`."""

    parameters: int
    gradients: int
    optimizer: int
    buffers: int
    masks: int
    activations: int

    @property
    def values(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.optimizer
            + self.buffers
            + self.masks
            + self.activations
        )

    @property
    def bytes(self) -> int:
        return 4 * self.values


def step_memory(
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    training: bool,
    optimizer_values: int = 1,
    forward: nn.Module | None = None,
) -> StepMemory:
    """Peak memory of one step of ``module`` (laid out on the ``meta`` device) on a batch of
    ``input_shape`` (batch first), from shapes alone.

    The model of memory, in float32 values (4 bytes each; bf16 autocast is counted as float32,
    an upper bound):

    - parameters: every parameter (learned scores, trained weights, biases, norms);
    - gradients (training): one per parameter that requires a gradient;
    - optimizer state (training): ``optimizer_values`` per learned value (SGD with momentum 1,
      without 0; Adam 2);
    - buffers: every buffer, the frozen weights regenerated from the seed and the norms'
      running statistics among them;
    - masks: each ``nn.Conv2d``/``nn.Linear`` forms a mask and a masked weight, both the size of
      its weight. Training counts both in every layer (2 per weight; autograd was measured to
      keep at most 1); evaluation holds them for one layer at a time (2 per weight of the
      largest layer);
    - activations: the input and every leaf module's output for one forward pass
      (:func:`activation_values`); training holds :data:`BACKWARD_FACTOR` times that (kept for
      backward, and the gradients flowing back). Evaluation frees each output once the next
      layer has used it: :data:`EVAL_LIVE_OUTPUTS` times the largest single output (never more
      than all of them).

    ``forward`` (default ``module``) is the module whose forward pass is traced for the
    activations: the plain twin of a supermask model (same shapes), whose forward runs on
    ``meta`` where the masks' data-dependent selection cannot.

    Not counted: the data set itself, the allocator's fragmentation and the framework's own
    memory; the estimate is a floor for what cannot fit, not a promise of what can.
    """
    params = list(module.parameters())
    learned = sum(p.numel() for p in params if p.requires_grad)
    weights = [m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    total, largest = _activation_profile(module if forward is None else forward, input_shape)
    return StepMemory(
        parameters=sum(p.numel() for p in params),
        gradients=learned if training else 0,
        optimizer=optimizer_values * learned if training else 0,
        buffers=sum(b.numel() for b in module.buffers()),
        masks=2 * (sum(weights) if training else max(weights, default=0)),
        activations=(
            BACKWARD_FACTOR * total if training else min(total, EVAL_LIVE_OUTPUTS * largest)
        ),
    )


def check_step_memory(estimate: StepMemory, what: str, free: int | None) -> None:
    """Raise ResourceError (one line, with the estimate) if ``estimate`` exceeds ``free`` bytes
    (``None``: the memory available is not known, nothing is refused)."""
    if free is not None and estimate.bytes > free:
        raise ResourceError(
            f"{what} needs about {format_bytes(estimate.bytes)} of memory "
            f"({format_bytes(4 * estimate.activations)} of it activations), more than the "
            f"{format_bytes(free)} available; use a smaller batch size or model"
        )
