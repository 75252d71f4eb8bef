"""Data-parallel training on ``torch.distributed`` (``torchrun``), without broadcasting weights.

A hidden network's frozen weights are regenerated from the seed, so every rank builds its own
copy: they are non-persistent buffers (the layer contract of :mod:`hiddenite.layers`), and
:func:`wrap` tells ``DistributedDataParallel`` to ignore them, so they are neither broadcast
when the wrapper is built nor on each forward. :func:`check_frozen_identical` all-gathers a
digest of them and fails loudly if a rank differs. Only tensors that require a gradient
(scores, biases, affine batch-norm parameters, or the weights of a method that trains them)
are all-reduced; persistent buffers (batch-norm running statistics) follow rank 0 (with
synchronised batch norm every rank computes the same ones anyway).

Batch norm (see :func:`sync_batch_norms`): by default (``TrainConfig.sync_batch_norm``) the
model's batch norms are swapped for :class:`~hiddenite.sync_batch_norm.SyncBatchNorm` for the
training loop, so a training batch is normalised with the GLOBAL batch's statistics and N
processes train as one (also on gloo/CPU, where ``torch.nn.SyncBatchNorm`` refuses to run);
methods that take batch statistics themselves (ProgressiveNN's any-precision passes) take
them over all ranks too. With it off (``--local-batch-norm``), each rank normalises with
its own piece's statistics: faster, but not the one-process optimisation. The CUDA/NCCL path
runs the same collectives but is untested (no GPU here).

Sharding (see :func:`shard_bounds`): every rank draws the same epoch permutation from the data
seed; the global batch ``i`` of that order is cut into ``world.size`` contiguous pieces and
rank ``r`` trains on piece ``r``. ``batch_size`` in :class:`~hiddenite.train.TrainConfig` is
the GLOBAL batch (per-rank batch x world size), so one config means the same optimisation on
any number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .data import piece_bounds
from .errors import UserError
from .layers import SupermaskLayer
from .sync_batch_norm import SyncBatchNorm

__all__ = [
    "SyncedBatchNorms",
    "World",
    "all_gather_ints",
    "all_sum",
    "check_frozen_identical",
    "current_world",
    "environment_world",
    "frozen_buffer_names",
    "frozen_digest",
    "process_group",
    "shard_bounds",
    "sync_batch_norms",
    "wrap",
]


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job."""

    rank: int
    size: int
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not (self.size >= 1 and 0 <= self.rank < self.size and self.local_rank >= 0):
            raise ValueError(f"inconsistent World(rank={self.rank}, size={self.size})")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files and prints."""
        return self.rank == 0


def environment_world(environ: Mapping[str, str] | None = None) -> World | None:
    """The :class:`World` that ``torchrun`` describes in the environment, or None.

    None when ``WORLD_SIZE`` is unset (a plain run). ``torchrun`` sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = env.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise UserError(
                f"environment variable {name}={text!r} is not an integer: launch with torchrun"
            ) from None
    try:
        return World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    except ValueError:
        raise UserError(
            f"RANK={values['RANK']} does not lie in 0..WORLD_SIZE-1 (WORLD_SIZE="
            f"{values['WORLD_SIZE']}): launch with torchrun"
        ) from None


def current_world() -> World | None:
    """The World of the initialised default process group, or None (none, or one rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    if size == 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return World(dist.get_rank(), size, local)


@contextlib.contextmanager
def process_group(world: World, device: str) -> Iterator[torch.device]:
    """Join the job described by ``world`` (env:// rendezvous) and yield this rank's device.

    ``device`` ``"cpu"`` uses gloo; ``"cuda"`` or ``"auto"`` with CUDA present uses NCCL on
    ``cuda:LOCAL_RANK``. The group is destroyed on exit.
    """
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UserError(f"--device {device!r}: no CUDA device is available; use --device cpu")
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} CUDA "
                "device(s): lower --nproc_per_node"
            )
        target = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(target)
        backend = "nccl"
    elif device in ("cpu", "auto"):
        target, backend = torch.device("cpu"), "gloo"
    else:
        raise UserError(f"--device {device!r}: use cpu, cuda or auto with torchrun")
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    try:
        yield target
    finally:
        dist.destroy_process_group()


def frozen_buffer_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the non-persistent buffers: the seed-regenerated state."""
    names = []
    for prefix, module in model.named_modules():
        for name in sorted(module._non_persistent_buffers_set):
            if getattr(module, name, None) is not None:
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def frozen_digest(model: nn.Module) -> int:
    """A 63-bit digest (SHA-256) of every frozen buffer's name, shape, dtype and bytes."""
    h = hashlib.sha256()
    buffers = dict(model.named_buffers())
    for name in frozen_buffer_names(model):
        tensor = buffers[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return int.from_bytes(h.digest()[:8], "little") >> 1


def all_gather_ints(value: int, device: torch.device) -> list[int]:
    """``value`` of every rank, in rank order."""
    mine = torch.tensor([value], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def check_frozen_identical(model: nn.Module, device: torch.device) -> int:
    """All-gather :func:`frozen_digest`; RuntimeError if two ranks regenerated different
    frozen weights (mixed versions or a nondeterministic generator). Returns the digest."""
    digests = all_gather_ints(frozen_digest(model), device)
    if len(set(digests)) != 1:
        raise RuntimeError(
            "ranks regenerated different frozen weights from the same seed (digests "
            f"{[f'{d:016x}' for d in digests]}): every rank must run the same hiddenite/torch"
        )
    return digests[0]


def wrap(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``model`` in DistributedDataParallel, ignoring its frozen (non-persistent) buffers."""
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, frozen_buffer_names(model)
    )
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard_bounds(count: int, world: World) -> tuple[int, int]:
    """``[start, stop)`` of rank ``world.rank``'s contiguous piece of ``count`` items
    (pieces differ in size by at most one; the first ``count % size`` are one larger)."""
    return piece_bounds(count, world.rank, world.size)


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum ``values`` (float64) over all ranks."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


@dataclass
class SyncedBatchNorms:
    """What :func:`sync_batch_norms` changed; :meth:`restore` puts the model back."""

    model: nn.Module
    swapped: list[tuple[nn.Module, str, nn.Module]]  # (parent, child name, original)
    method_layers: list[SupermaskLayer]

    @property
    def count(self) -> int:
        """Batch norms swapped plus method layers whose batch statistics were synchronised."""
        return len(self.swapped) + len(self.method_layers)

    def restore(self) -> None:
        """The original modules back in place (holding the trained tensors, which they
        shared), in the mode the model is in; method layers back to local statistics."""
        for parent, name, original in self.swapped:
            original.train(parent._modules[name].training)
            parent._modules[name] = original
        for layer in self.method_layers:
            layer.method.sync_batch_statistics(layer, False)
        self.swapped, self.method_layers = [], []


def sync_batch_norms(model: nn.Module) -> SyncedBatchNorms:
    """Swap every batch norm of ``model`` (``nn.BatchNorm1d/2d/3d``, affine or not) for a
    :class:`~hiddenite.sync_batch_norm.SyncBatchNorm` over the default process group that
    holds the SAME parameter and buffer tensors (so the state dict, the optimizer's
    parameters and checkpoints are unchanged), and make the methods that take batch
    statistics in training take them over all ranks
    (:meth:`~hiddenite.methods.Method.sync_batch_statistics`). Undo with ``restore()`` on the
    result, before anything inspects module types (file, summary, hardware model)."""
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ValueError("sync_batch_norms: the model is itself a batch norm; wrap it")
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                child, SyncBatchNorm | nn.SyncBatchNorm
            ):
                parent._modules[name] = SyncBatchNorm.sharing(child)
                swapped.append((parent, name, child))
    layers = []
    for module in model.modules():
        if isinstance(module, SupermaskLayer) and module.method.sync_batch_statistics(module, True):
            layers.append(module)
    return SyncedBatchNorms(model, swapped, layers)
