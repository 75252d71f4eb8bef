"""Batch norm over the GLOBAL batch of a data-parallel job, on any backend (gloo on the CPU,
NCCL on CUDA): what makes N processes train a batch-norm network as one process would.

Each rank holds a piece of the global batch. In training mode :class:`SyncBatchNorm`
normalises with the global batch's statistics through one autograd function
(:class:`_SyncBatchNormFunction`) that costs ONE collective forward and ONE backward:

- forward: each rank takes its piece's per-channel count, mean and sum of squared
  deviations from that mean (two passes, not ``E[x^2] - E[x]^2``, which cancels
  catastrophically when ``|mean| >> std``), all-gathers them, and combines them in float64
  with Chan et al.'s parallel formula, ``M2 = sum_r (M2_r + n_r (mean_r - mean)^2)``. float64
  because the combination is O(ranks x channels) numbers (free next to the pass over the
  data) and then adds no rounding of its own to float32 statistics, whatever their
  conditioning, nor to float64 ones; each rank's mean is corrected for the rounding of its
  float32 centre (the corrected two-pass algorithm), since the merge weighs the differences
  between the ranks' means. The input is centred on its LOCAL mean and shifted by the small
  float64-exact difference to the global one, so the deviations keep more digits than
  ``x - mean`` with a float32 mean (values near 1000 with a spread of 3 lose 6e-5 there);
  the output is the per-channel affine map of the deviations, computed in place in the one
  tensor the forward allocates (on the CPU a fresh large tensor costs page faults that
  outweigh an elementwise pass).
- backward: the standard batch-norm input gradient needs the GLOBAL per-channel sums of
  ``dy`` and ``dy * (x - mean)``: one all-reduce of both packed in one buffer, then the
  closed form ``dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * invstd * weight`` locally.
  The weight and bias gradients are the rank's own sums (DDP all-reduces them); with the loss
  scaling of :func:`hiddenite.train.train` (DDP averages the ranks' gradients) they and the
  input gradients are the one-process ones. The backward is once differentiable.

Running statistics follow ``nn.BatchNorm2d``'s rule over the global batch: ``momentum``
(None: cumulative average over ``num_batches_tracked``), the unbiased variance with the global
count, and the counter.

Eval mode, and a group of one rank (or no process group at all), run the plain batch norm
(``torch.nn.functional.batch_norm``), bit for bit; a batch norm without running statistics
in eval mode normalises each rank's own batch, as ``torch.nn.SyncBatchNorm`` does. A rank may
hold an empty piece (it contributes nothing); a global batch of one value per channel is
refused like the plain batch norm refuses it (ValueError), on every rank alike.

Unlike ``torch.nn.SyncBatchNorm`` (CUDA only: "expected input tensor to be on GPU"; torch's
``batch_norm_stats``/``batch_norm_elemt``/``batch_norm_backward_elemt`` have no CPU kernel in
torch 2.13), this is plain tensor arithmetic and two collectives, so it runs on any device a
process group serves. Only the CPU/gloo path is
tested here; the CUDA/NCCL path uses the same code and collectives but has not been run (no
GPU was available when it was written).

:func:`global_moments` (ProgressiveNN's any-precision passes) keeps its own differentiable
two-all-reduce form: it returns the moments themselves, through which autograd must flow.

:func:`hiddenite.distributed.sync_batch_norms` swaps a model's batch norms for these (sharing
their parameters and buffers, so the state dict is unchanged) and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "global_moments", "spans_ranks", "sync_batch_norm"]


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


def _local_moments(
    x: torch.Tensor, dims: list[int]
) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(count, mean, M2, centre, scratch)`` per channel of this rank's piece: ``centre``
    is its mean in ``x``'s dtype, and ``mean`` and ``M2`` (the sum of squared deviations from
    the mean) are float64, corrected for ``centre``'s rounding (the corrected two-pass
    algorithm: ``mean = centre + S1 / n``, ``M2 = S2 - S1^2 / n`` with ``S1``, ``S2`` the sums of
    the deviations from ``centre`` and of their squares), so that the means of different
    ranks differ by what their data do and not by float32 rounding of values far from zero.
    ``scratch`` is a new tensor shaped like ``x`` (it holds the squared deviations) for the
    caller to reuse: one allocation in all. An empty piece gives count 0, mean 0 and M2 0."""
    count = x.numel() // max(1, _channels(x, dims))
    centre = x.sum(dims) / max(count, 1)
    scratch = x - centre.reshape(_broadcast_shape(x, dims))
    wide = torch.promote_types(x.dtype, torch.float64)
    s1 = scratch.sum(dims).to(wide)
    s2 = scratch.square_().sum(dims).to(wide)
    shift = s1 / max(count, 1)
    return count, centre.to(wide) + shift, s2 - s1 * shift, centre, scratch


def _combine(
    count: int, mean: torch.Tensor, m2: torch.Tensor, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's ``(count, mean, M2)`` of :func:`_local_moments`, gathered in ONE
    all-gather and merged by :func:`_merge`."""
    mine = torch.cat([mean.new_full((1,), float(count)), mean, m2])
    pieces = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, mine, group=group)
    return _merge(torch.stack(pieces))


def _merge(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan et al.'s parallel formula over the rows ``(count, C means, C M2s)`` of ``table``
    (one per rank, float64): ``(total count (0-dim), mean, M2)``, with
    ``M2 = sum_r (M2_r + n_r (mean_r - mean)^2)``; rows of count 0 contribute nothing."""
    channels = (table.shape[1] - 1) // 2
    counts, means, m2s = table[:, :1], table[:, 1 : 1 + channels], table[:, 1 + channels :]
    total = counts.sum()
    mean = (counts * means).sum(0) / total.clamp(min=1)
    return total, mean, (m2s + counts * (means - mean).square()).sum(0)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over the ranks of ``group``: one all-gather forward, one
    all-reduce backward (see the module docstring). Returns ``(y, mean, M2, count)``: the
    global batch's float64 per-channel mean and sum of squared deviations (not
    differentiable) and its number of values per channel (an int).

    The global mean is held as the rank's float32 ``centre`` plus a small ``shift``, so the
    deviations ``(x - centre) - shift`` keep the digits ``x - mean`` would lose to the
    rounding of a float32 mean far from zero. Each pass allocates one tensor shaped like
    ``x`` (the output, used as scratch first), as torch's own batch norm does: on the CPU a
    fresh large tensor costs page faults that outweigh an elementwise pass. The input itself
    is saved for the backward, which recomputes ``x - centre``."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, group: dist.ProcessGroup | None):
        dims = [0, *range(2, x.dim())]
        shape = _broadcast_shape(x, dims)
        count, local_mean, local_m2, centre, y = _local_moments(x, dims)
        total, mean, m2 = _combine(count, local_mean, local_m2, group)
        total = int(total.item())
        if total <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got "
                f"{total} over all ranks (input size on this rank {list(x.shape)})"
            )
        shift = (mean - centre.to(mean)).to(x.dtype)  # global mean - centre, small
        invstd = torch.rsqrt(m2 / total + eps).to(x.dtype)
        scale = invstd if weight is None else invstd * weight.to(x.dtype)
        offset = -shift * scale if bias is None else bias.to(x.dtype) - shift * scale
        # y = ((x - centre) - shift) * scale + bias, in the scratch tensor
        torch.sub(x, centre.reshape(shape), out=y).mul_(scale.reshape(shape))
        y.add_(offset.reshape(shape))
        ctx.save_for_backward(x, centre, shift, invstd, weight)
        ctx.group, ctx.count, ctx.dims = group, total, dims
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, m2)
        return y, mean, m2, total

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *_):
        x, centre, shift, invstd, weight = ctx.saved_tensors
        dims, count = ctx.dims, ctx.count
        shape = _broadcast_shape(x, dims)
        sum_dy = dy.sum(dims)
        work = x - centre.reshape(shape)  # x - centre; becomes the input gradient
        # sum of dy * xhat / invstd = sum of dy * ((x - centre) - shift)
        sum_dy_dev = work.mul_(dy).sum(dims) - shift * sum_dy
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:  # same on every rank: the collective stays matched
            packed = torch.cat([sum_dy, sum_dy_dev])
            dist.all_reduce(packed, group=ctx.group)
            every_dy, every_dy_dev = packed.chunk(2)
            gain = invstd if weight is None else invstd * weight.to(invstd)
            k = every_dy_dev * invstd.square() / count  # mean(dy * xhat) * invstd
            # dx = (dy - mean(dy) - ((x - centre) - shift) * k) * gain
            torch.sub(x, centre.reshape(shape), out=work).mul_((-k * gain).reshape(shape))
            work.addcmul_(dy, gain.reshape(shape))
            dx = work.add_(((shift * k - every_dy / count) * gain).reshape(shape))
        if ctx.needs_input_grad[1]:
            dweight = (sum_dy_dev * invstd).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            dbias = sum_dy.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None


def sync_batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Training-mode batch norm of ``x`` (``(N, C, ...)``) with the statistics of the
    global batch over every rank of ``group`` (None: the default group; one rank works too):
    ``(y, mean, M2, count)`` as :class:`_SyncBatchNormFunction`, computed in ``x``'s dtype
    promoted to at least float32 and ``y`` returned in ``x``'s dtype. Every rank of ``group``
    must call it, and its backward (a collective each)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    y, mean, m2, count = _SyncBatchNormFunction.apply(wide, weight, bias, eps, group)
    return y.to(x.dtype), mean, m2, count


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
        y, mean, m2, count = sync_batch_norm(
            input, self.weight, self.bias, self.eps, self.process_group
        )
        if track:
            with torch.no_grad():  # as torch's kernel: f * batch + (1 - f) * running
                unbiased = m2 / (count - 1)
                for running, batch in ((self.running_mean, mean), (self.running_var, unbiased)):
                    running.copy_(factor * batch.to(running) + (1 - factor) * running)
        return y
