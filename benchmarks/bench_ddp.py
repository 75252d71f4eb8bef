"""Data-parallel training throughput and image-folder decoding, side by side in one run.

1. Training images/s on Fashion-MNIST (hidden MLP and Conv-4, edge-popup, global batch 128)
   for: one process with one thread, one process with ``--cores`` threads, and
   ``torchrun --nproc_per_node 2`` (gloo, one thread per process). Each configuration runs
   ``--epochs`` epochs on ``--subset`` training examples (no validation); the figure is the
   LAST epoch's examples / seconds (the first one pays warm-up), measured by rank 0 and
   including the all-reduce. The ratio column is against one process with one thread.
   On a machine shared with other jobs the wall-clock figure mostly measures the share of
   the CPU the scheduler gives (two processes get two shares), so the script also reports
   images per CPU-second: all epochs' images over the CPU time of all ranks' whole
   ``train`` call (model build and first epoch included, after a small warm-up run that
   pays the one-off imports), which shows DDP's overhead.
2. Image-folder decoding: ``--folder-images`` JPEGs of 320 x 240 written to a temporary
   folder, read back through :func:`hiddenite.data.iterate_batches` (random resized crop to
   224 and flip) with 0 and ``--cores`` DataLoader worker processes.

3. ``--sync-bn`` (instead of 1 and 2): a batch-norm model (``--bn-model``, default
   ``conv4-bn``) trained by one process and by ``torchrun --nproc_per_node 2`` with the
   batch norms synchronised (the default, :mod:`hiddenite.sync_batch_norm`) and local
   (``sync_batch_norm=False``), one thread per process, same global batch 128: images/s
   and images/CPU-s as above, and the agreement with the one-process run: the largest
   absolute difference over the final state (scores, batch-norm parameters and running
   statistics) and the last epoch's training loss and accuracy.

Usage: python benchmarks/bench_ddp.py [--subset N] [--epochs E] [--cores C]
                                      [--folder-images N] [--json PATH]
       python benchmarks/bench_ddp.py --sync-bn [--bn-model NAME] [--subset N] [--epochs E]
(full size: --subset 54000 --epochs 3)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hiddenite import distributed
from hiddenite.convert import SupermaskConfig
from hiddenite.data import iterate_batches, load_dataset
from hiddenite.data_folder import FolderOptions, ImageFolder
from hiddenite.train import TrainConfig, train

MODELS = ("mlp", "conv4")


def worker(args) -> None:
    """One rank (or the only process): train, and let rank 0 write images/s to --out."""
    world = distributed.environment_world()
    config = TrainConfig(
        model=args.model,
        supermask=SupermaskConfig(density=0.5, seed=0),
        epochs=args.epochs,
        batch_size=128,
        val_fraction=0.0,
        train_subset=args.subset,
        sync_batch_norm=not args.local_bn,
    )

    def run():
        warm = dataclasses.replace(config, epochs=1, train_subset=256)
        first = train(warm, None, log=None, progress=False)  # imports (torch.optim: dynamo)
        if args.out and (world is None or world.is_main):  # 2 steps: before any chaos
            state = {k: v.contiguous() for k, v in first.model.state_dict().items()}
            save_file(state, Path(args.out).with_suffix(".warm.safetensors"))
        began = time.process_time()
        result = train(config, None, log=None, progress=False)
        return result, time.process_time() - began

    if world is not None and world.size > 1:
        with distributed.process_group(world, "cpu") as device:
            result, cpu = run()
            cpu = distributed.all_sum([cpu], device)[0]
    else:
        result, cpu = run()
    if world is None or world.is_main:
        seconds = result.history[-1]["seconds"]
        report = {"seconds": seconds, "images": args.subset, "cpu": cpu, "epochs": args.epochs}
        report["train_loss"] = result.history[-1]["train_loss"]
        report["train_accuracy"] = result.history[-1]["train_accuracy"]
        Path(args.out).write_text(json.dumps(report))
        state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, Path(args.out).with_suffix(".safetensors"))


def launch(
    model: str, procs: int, threads: int, args, folder: Path, local_bn: bool = False
) -> tuple[float, float]:
    out = folder / f"{model}-{procs}-{threads}{'-local' if local_bn else ''}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    script = [__file__, "--worker", "--model", model, "--out", str(out)]
    script += ["--subset", str(args.subset), "--epochs", str(args.epochs)]
    script += ["--local-bn"] if local_bn else []
    prefix = [sys.executable]
    if procs > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    proc = subprocess.run([*prefix, *script], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(script[2:])} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    per_cpu = result["images"] * result["epochs"] / result["cpu"]
    return result["images"] / result["seconds"], per_cpu


def max_difference(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference over every float tensor of two state dicts."""
    return max(
        float((state[k].double() - v.double()).abs().max())
        for k, v in reference.items()
        if v.is_floating_point()
    )


def sync_bn_rows(args, folder: Path) -> list[dict]:
    """Section 3: one process (one thread, the reference; then ``--cores`` threads, whose
    different float32 summation order shows the noise floor), then 2 processes with
    synchronised and with local batch norm. Agreement after the warm-up run's 2 steps and
    after the whole run."""
    model = args.bn_model
    print(
        f"{'model':9} {'setup':>26} {'images/s':>9} {'ratio':>6} {'images/CPU-s':>13} "
        f"{'max|d| 2 steps':>15} {'max|d| end':>11} {'loss':>8} {'accuracy':>8}"
    )
    rows, base = [], None
    reference: dict[str, dict[str, torch.Tensor]] = {}
    for procs, threads, local, label in (
        (1, 1, False, "1 process x 1 thread"),
        (1, args.cores, False, f"1 process x {args.cores} threads"),
        (2, 1, False, "2 processes, synced BN"),
        (2, 1, True, "2 processes, local BN"),
    ):
        rate, per_cpu = launch(model, procs, threads, args, folder, local_bn=local)
        name = f"{model}-{procs}-{threads}{'-local' if local else ''}"
        report = json.loads((folder / f"{name}.json").read_text())
        states = {
            "warm": load_file(folder / f"{name}.warm.safetensors"),
            "end": load_file(folder / f"{name}.safetensors"),
        }
        reference = reference or states
        warm, end = (max_difference(states[k], reference[k]) for k in ("warm", "end"))
        base = base or rate
        rows.append({"model": model, "setup": label, "images_per_s": rate, "ratio": rate / base,
                     "images_per_cpu_s": per_cpu, "max_abs_difference_2_steps": warm,
                     "max_abs_difference_end": end, "train_loss": report["train_loss"],
                     "train_accuracy": report["train_accuracy"]})  # fmt: skip
        print(
            f"{model:9} {label:>26} {rate:9.0f} {rate / base:6.2f} {per_cpu:13.0f} "
            f"{warm:15.2e} {end:11.2e} {report['train_loss']:8.5f} "
            f"{report['train_accuracy']:8.4f}"
        )
    return rows


def folder_throughput(n: int, workers: int, root: Path) -> float:
    data = ImageFolder.open(root, FolderOptions(size=224, mode="RGB", workers=workers))
    began = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    seen = 0
    for _, y in iterate_batches(data, 32, shuffle=True, generator=g, augment=True):
        seen += len(y)
    assert seen == n
    return n / (time.perf_counter() - began)


def write_folder(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"class{i % 4}"
        cls.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(cls / f"{i:05d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--folder-images", type=int, default=256)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="only section 3: synchronised against local batch norm at 2 processes",
    )
    p.add_argument("--bn-model", default="conv4-bn", help="the batch-norm model of --sync-bn")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local-bn", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="mlp", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    load_dataset("fashion-mnist", "train")  # fail early if the data are missing
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}; {args.subset} examples x {args.epochs} epochs, global batch 128; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.sync_bn:
            rows = sync_bn_rows(args, folder)
            print(f"load average {os.getloadavg()[0]:.1f} at the end")
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))
            return
        setups = [(1, 1), (1, args.cores), (2, 1)]
        print(
            f"{'model':6} {'processes x threads':>20} {'images/s':>10} {'ratio':>7} "
            f"{'images/CPU-s':>13} {'ratio':>7}"
        )
        for model in MODELS:
            base = base_cpu = None
            for procs, threads in setups:
                rate, per_cpu = launch(model, procs, threads, args, folder)
                base, base_cpu = base or rate, base_cpu or per_cpu
                rows.append({"model": model, "processes": procs, "threads": threads,
                             "images_per_s": rate, "ratio": rate / base,
                             "images_per_cpu_s": per_cpu})  # fmt: skip
                print(
                    f"{model:6} {f'{procs} x {threads}':>20} {rate:10.0f} {rate / base:7.2f} "
                    f"{per_cpu:13.0f} {per_cpu / base_cpu:7.2f}"
                )
        root = folder / "images"
        write_folder(root, args.folder_images)
        print(f"\nimage folder: {args.folder_images} JPEGs 320x240 -> 224x224 random resized crop")
        base = None
        for workers in (0, args.cores):
            rate = folder_throughput(args.folder_images, workers, root)
            base = base or rate
            rows.append({"folder_workers": workers, "images_per_s": rate, "ratio": rate / base})
            print(f"  workers {workers}: {rate:8.0f} images/s  ({rate / base:.2f}x)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
