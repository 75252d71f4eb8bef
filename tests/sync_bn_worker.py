"""One rank of the synchronised batch-norm tests (launched by tests/test_sync_batch_norm.py).

Run as ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/sync_bn_worker.py DIR``. For every case of :data:`CASES` each rank builds the same
global input, upstream gradient and batch norm from fixed seeds, takes its contiguous piece
of the batch (:func:`hiddenite.data.piece_bounds`, as training shards it), runs ``STEPS``
training forward/backward passes through a :class:`hiddenite.sync_batch_norm.SyncBatchNorm`
sharing the plain batch norm's tensors, all-reduces (sums) the parameter gradients, and saves
to ``DIR/<case>-rank<r>.safetensors`` its output pieces, input-gradient pieces, the summed
parameter gradients and the final running statistics, plus an eval-mode output; the test
compares them with one process running the plain batch norm on the whole batch. It also
counts the collectives (every ``torch.distributed`` collective function, wrapped while the
batch norm runs) of each training forward, backward and of the eval forward, in
``DIR/<case>-rank<r>.json``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from hiddenite.data import piece_bounds
from hiddenite.sync_batch_norm import SyncBatchNorm

STEPS = 2
# name: (global input shape, batch norm kind, affine, momentum, per-feature mean offset)
CASES = {
    "bn2d-affine": ((6, 3, 4, 5), "2d", True, 0.1, 0.0),
    "bn2d-offset": ((6, 3, 4, 5), "2d", True, 0.3, 1000.0),  # |mean| >> std: two passes
    "bn2d-plain-cumulative": ((5, 4, 3, 3), "2d", False, None, 0.0),  # pieces 3 and 2
    "bn1d-affine": ((7, 5), "1d", True, 0.1, 0.0),
    "bn1d-size-one-piece": ((3, 4), "1d", True, 0.1, 0.0),  # pieces 2 and 1
    "bn2d-empty-piece": ((1, 3, 4, 4), "2d", True, 0.1, 0.0),  # pieces 1 and 0
}


def case_tensors(name: str):
    """(inputs per step, upstream gradients per step, a fresh plain batch norm) of a case."""
    shape, kind, affine, momentum, offset = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    xs = [torch.randn(shape, generator=g) * 3 + offset for _ in range(STEPS)]
    grads = [torch.randn(shape, generator=g) for _ in range(STEPS)]
    bn = (nn_type(kind))(shape[1], affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(shape[1], generator=g) + 0.5)
            bn.bias.copy_(torch.randn(shape[1], generator=g))
    return xs, grads, bn


COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_single", "all_gather_into_tensor",
    "all_gather_object", "all_to_all", "all_to_all_single", "broadcast", "reduce",
    "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "barrier", "send", "recv",
)  # fmt: skip


@contextlib.contextmanager
def counting() -> Iterator[list[str]]:
    """The names of the ``torch.distributed`` collectives called inside the block, in order."""
    calls: list[str] = []
    originals = {n: getattr(dist, n) for n in COLLECTIVES if hasattr(dist, n)}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return counted

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def nn_type(kind: str):
    return {"1d": torch.nn.BatchNorm1d, "2d": torch.nn.BatchNorm2d}[kind]


def main(folder: Path) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    try:
        for name in CASES:
            xs, grads, bn = case_tensors(name)
            sync = SyncBatchNorm.sharing(bn)
            out: dict[str, torch.Tensor] = {}
            calls: dict[str, list[list[str]]] = {"forward": [], "backward": [], "eval": []}
            for step, (x, grad) in enumerate(zip(xs, grads, strict=True)):
                lo, hi = piece_bounds(len(x), rank, size)
                piece = x[lo:hi].clone().requires_grad_(True)
                with counting() as forward:
                    y = sync(piece)
                with counting() as backward:
                    (y * grad[lo:hi]).sum().backward()
                calls["forward"].append(forward)
                calls["backward"].append(backward)
                out[f"y{step}"] = y.detach()
                out[f"dx{step}"] = piece.grad
                for pname, p in sync.named_parameters():
                    summed = p.grad.clone()
                    dist.all_reduce(summed)
                    out[f"d{pname}{step}"] = summed
                    p.grad = None
            for bname, b in bn.named_buffers():
                out[bname] = b.clone()
            sync.eval()
            with counting() as evaluation:
                out["eval"] = sync(xs[0][lo:hi]).detach()
            calls["eval"].append(evaluation)
            save_file({k: v.contiguous() for k, v in out.items()}, folder / f"{name}-rank{rank}")
            (folder / f"{name}-rank{rank}.json").write_text(json.dumps(calls))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
