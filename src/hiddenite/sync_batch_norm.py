"""Batch norm over the GLOBAL batch of a data-parallel job, on any backend (gloo on the CPU,
NCCL on CUDA): what makes N processes train a batch-norm network as one process would.

Each rank holds a piece of the global batch. In training mode :class:`SyncBatchNorm`
normalises with the global batch's statistics, in two passes for the same rounding as one
process (not ``E[x^2] - E[x]^2``, which cancels catastrophically when ``|mean| >> std``):

1. all-reduce the per-channel sums and the value count -> the global mean;
2. all-reduce the per-channel sums of squared deviations from it -> the biased variance.

The all-reduces are differentiable (:class:`_AllReduceSum`: the backward all-reduces the
gradients of the sums, as ``torch.distributed.nn.functional.all_reduce`` does, which torch
2.13 deprecates with a warning on every call), so the gradient of every rank's input flows
through the global statistics exactly as in one process over the whole batch; with the
loss scaling of :func:`hiddenite.train.train` (DDP averages the ranks' gradients) the
all-reduced parameter gradients are the one-process ones. Running statistics follow
``nn.BatchNorm2d``'s rule over the global batch: ``momentum`` (None: cumulative average over
``num_batches_tracked``), the unbiased variance with the global count, and the counter.

Eval mode, and a group of one rank (or no process group at all), run the plain batch norm
(``torch.nn.functional.batch_norm``), bit for bit; a batch norm without running statistics
in eval mode normalises each rank's own batch, as ``torch.nn.SyncBatchNorm`` does. A rank may
hold an empty piece (it contributes nothing); a global batch of one value per channel is
refused like the plain batch norm refuses it (ValueError), on every rank alike.

Unlike ``torch.nn.SyncBatchNorm`` (CUDA only: "expected input tensor to be on GPU"), this
is plain tensor arithmetic plus two collectives, so it runs on any device a process group
serves. Only the CPU/gloo path is tested here; the CUDA/NCCL path uses the same code and
collectives but has not been run (no GPU was available when it was written).

:func:`hiddenite.distributed.sync_batch_norms` swaps a model's batch norms for these (sharing
their parameters and buffers, so the state dict is unchanged) and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "global_moments", "spans_ranks"]


def spans_ranks(group: dist.ProcessGroup | None = None) -> bool:
    """True when a process group is initialised and ``group`` (None: the default one) holds
    more than one rank: the statistics of a training batch must then be all-reduced."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of ``group``; the gradient of each rank's input is the sum over the
    ranks of the output's gradients (every rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def global_moments(
    x: torch.Tensor, dims: list[int], group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(mean, biased variance, count)`` of ``x`` over ``dims`` and over every rank of
    ``group`` (None: the default group), in two differentiable all-reduces (see the module
    docstring). ``x`` is the rank's piece, possibly empty; ``count`` is the global number of
    values per channel. Every rank of ``group`` must call it (a collective). Computed in
    ``x``'s dtype promoted to at least float32."""
    _, mean, squares, count = _two_pass(x, dims, group)
    return mean, squares / count, count


def _two_pass(
    x: torch.Tensor, dims: list[int], group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(x - mean, mean, sum of squared deviations, count)`` over the ranks of ``group``."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    local = x.numel() // max(1, _channels(x, dims))
    packed = torch.cat([x.sum(dims), x.new_full((1,), float(local))])
    packed = _AllReduceSum.apply(packed, group)
    total, count = packed[:-1], packed[-1]
    mean = total / count
    dev = x - mean.reshape(_broadcast_shape(x, dims))
    squares = _AllReduceSum.apply((dev * dev).sum(dims), group)
    return dev, mean, squares, int(count.detach().item())


def _channels(x: torch.Tensor, dims: list[int]) -> int:
    kept = [s for d, s in enumerate(x.shape) if d not in dims]
    out = 1
    for s in kept:
        out *= s
    return out


def _broadcast_shape(x: torch.Tensor, dims: list[int]) -> list[int]:
    return [1 if d in dims else s for d, s in enumerate(x.shape)]


class SyncBatchNorm(_BatchNorm):
    """A batch norm (any of ``nn.BatchNorm1d/2d/3d``'s input shapes: ``(N, C)``,
    ``(N, C, L)``, ``(N, C, H, W)``, ...) whose training statistics are those of the global
    batch over the ranks of ``process_group`` (None: the default group). Same arguments,
    parameters, buffers and state dict as ``nn.BatchNorm2d``; see the module docstring."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @classmethod
    def sharing(
        cls, bn: _BatchNorm, process_group: dist.ProcessGroup | None = None
    ) -> SyncBatchNorm:
        """A SyncBatchNorm holding ``bn``'s own parameter and buffer tensors (not copies: an
        update through either module is seen by both) and its mode; hooks on ``bn`` are not
        carried (the zoo's batch norms have none in training)."""
        sync = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            process_group,
            device="meta",
        )
        for name in ("weight", "bias"):
            setattr(sync, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            sync._buffers[name] = bn._buffers.get(name)
        sync.training = bn.training
        return sync

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or not spans_ranks(self.process_group):
            return super().forward(input)  # the plain batch norm
        factor = 0.0 if self.momentum is None else self.momentum
        track = self.track_running_stats and self.running_mean is not None
        if track and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        dev, mean, squares, count = _two_pass(input, dims, self.process_group)
        if count <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got "
                f"{count} over all ranks (input size on this rank {list(input.shape)})"
            )
        shape = _broadcast_shape(input, dims)
        scale = torch.rsqrt(squares / count + self.eps)  # per channel: one pass over dev
        if self.weight is None:
            y = dev * scale.reshape(shape)
        else:
            scale = scale * self.weight.to(scale)
            y = torch.addcmul(self.bias.to(scale).reshape(shape), dev, scale.reshape(shape))
        if track:
            with torch.no_grad():  # as torch's kernel: f * batch + (1 - f) * running
                unbiased = squares.detach() / (count - 1)
                for running, batch in ((self.running_mean, mean), (self.running_var, unbiased)):
                    running.copy_(factor * batch.detach().to(running) + (1 - factor) * running)
        return y.to(input.dtype)
