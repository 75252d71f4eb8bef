"""One rank of the data-parallel tests (launched by tests/test_train_distributed.py).

Run as ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py
DIR``: DIR holds ``config.json`` (a TrainConfig); each rank trains the same tiny data set
(regenerated here from fixed seeds) and leaves its results in DIR for the test to compare:

- ``full/``: an uninterrupted run (only rank 0 may write there);
- ``resumed/``: the same run stopped after epoch 1 and resumed with ``resume=True``;
- ``own<rank>/``: a one-epoch run whose out_dir differs per rank (rank 1's must not exist);
- ``rank<rank>.safetensors``: the final model state and frozen weights this rank holds;
- ``cli<rank>.txt``: exit code and stdout of ``hiddenite train`` run with the arguments of
  ``cli_args.json`` (if present) under this same launch;
- ``rank<rank>.json``: the all-gathered frozen-weight digests, histories and the
  no-broadcast probe (frozen weights perturbed on rank 1 stay perturbed under DDP);
- for each ``<name>.json`` of :data:`EXTRA` present in DIR (a TrainConfig: a batch-norm
  network, a ProgressiveNN any-precision run), ``<name>-sync<rank>/`` (run folder, rank 0
  only), ``<name>-<rank>.safetensors`` (final state) and ``<name>-<rank>.json`` (history,
  module types of the returned model) of the run with synchronised batch statistics, and
  the same with ``-local`` for ``sync_batch_norm=False``; rank 0 also saves the synced
  model as ``<name>.hnn`` and its eval-mode logits on the validation data as
  ``<name>-logits.safetensors``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from hiddenite import cli, distributed, save
from hiddenite.data import Dataset, iterate_batches
from hiddenite.export import arch_of
from hiddenite.train import TrainConfig, build_model, train

EXTRA = ("bn", "pnn")


def quadrant_data(n: int, seed: int, split: str = "train") -> Dataset:
    """8x8 one-channel images; the class (0..3) is the brightest 4x4 quadrant."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=g)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 150
    return Dataset("fashion-mnist", images, labels, 4, (0.3,), (0.35,), split=split)


def data() -> tuple[Dataset, Dataset]:
    return quadrant_data(201, seed=0), quadrant_data(63, seed=1, split="val")


def main(folder: Path) -> None:
    world = distributed.environment_world()
    assert world is not None and world.size == 2, world
    config = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
    quiet = {"datasets": data(), "log": None, "progress": False}
    if (folder / "cli_args.json").is_file():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli.main(json.loads((folder / "cli_args.json").read_text()))
        (folder / f"cli{world.rank}.txt").write_text(f"{code}\n{printed.getvalue()}")
    # A second process group in this process gets its own store: re-using torchrun's after
    # the CLI's group would let gloo read the first group's stale connection keys.
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=world.rank, world_size=2
    )
    device = torch.device("cpu")
    try:
        full = train(config, folder / "full", **quiet)
        train(dataclasses.replace(config, epochs=1), folder / "resumed", **quiet)
        resumed = train(config, folder / "resumed", resume=True, **quiet)
        train(dataclasses.replace(config, epochs=1), folder / f"own{world.rank}", **quiet)
        digests = distributed.all_gather_ints(distributed.frozen_digest(full.model), device)

        probe = build_model(config)
        if world.rank == 1:
            with torch.no_grad():
                next(iter(dict(probe.named_buffers()).values())).add_(1.0)
        mine = distributed.frozen_digest(probe)
        ddp = distributed.wrap(probe, device)
        ddp(torch.zeros(2, 1, 8, 8))
        kept = distributed.frozen_digest(probe) == mine
        ignored = sorted(ddp.parameters_to_ignore)
        # released before the group is destroyed: a DDP wrapper freed after it (when main
        # returns) could leave this rank hanging in its destructor at exit
        del ddp

        state = dict(full.model.state_dict())
        state.update({f"frozen.{k}": v for k, v in full.model.named_buffers()})
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            folder / f"rank{world.rank}.safetensors",
        )
        report = {
            "digests": digests,
            "history": full.history,
            "resumed_history": resumed.history,
            "probe_kept_own_frozen": kept,
            "ignored": ignored,
            "frozen_names": distributed.frozen_buffer_names(probe),
        }
        (folder / f"rank{world.rank}.json").write_text(json.dumps(report))
        for name in EXTRA:
            if (folder / f"{name}.json").is_file():
                extra_runs(folder, name, world.rank, quiet)
    finally:
        dist.destroy_process_group()


def val_images() -> torch.Tensor:
    """The validation images of :func:`data` as one normalised float batch."""
    val = data()[1]
    batches = iterate_batches(val, len(val), shuffle=False, generator=None, augment=False)
    return next(iter(batches))[0]


def extra_runs(folder: Path, name: str, rank: int, quiet: dict) -> None:
    """The synced and the local-batch-norm run of ``<name>.json`` (see the docstring)."""
    config = TrainConfig.from_dict(json.loads((folder / f"{name}.json").read_text()))
    for tag, sync in (("", True), ("-local", False)):
        cfg = dataclasses.replace(config, sync_batch_norm=sync)
        out = folder / f"{name}-sync{rank}" if sync else None
        result = train(cfg, out, **quiet)
        save_file(
            {k: v.contiguous() for k, v in result.model.state_dict().items()},
            folder / f"{name}{tag}-{rank}.safetensors",
        )
        types = sorted({type(m).__name__ for m in result.model.modules()})
        report = {"history": result.history, "module_types": types}
        (folder / f"{name}{tag}-{rank}.json").write_text(json.dumps(report))
        if sync and rank == 0:
            save(result.model, folder / f"{name}.hnn", arch=arch_of(cfg), config=cfg.supermask)
            with torch.no_grad():
                logits = result.model(val_images())
            save_file({"logits": logits}, folder / f"{name}-logits.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
