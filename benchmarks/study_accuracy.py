"""Accuracy study on Fashion-MNIST: dense twin vs hidden networks, same epochs and data.

For each model: the dense twin, then hidden networks at every density (kept fraction) and
frozen-weight init asked for. Every run uses the same training subset, validation split,
epochs and schedule; the test set is used once per run, for the reported figure.

Usage::

    python benchmarks/study_accuracy.py --models mlp conv4 --epochs 5 \
        --train-subset 0 --out runs/study

Prints a markdown table and writes ``<out>/study.json`` (one record per run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hiddenite import SupermaskConfig
from hiddenite.data import load_dataset, train_val_split
from hiddenite.train import TrainConfig, evaluate, train


def run_one(config: TrainConfig, datasets, test) -> dict:
    began = time.perf_counter()
    result = train(config, None, datasets=datasets, progress=False, log=None)
    test_metrics = evaluate(result.model, test, config.eval_batch_size)
    sm = config.supermask
    return {
        "model": config.model,
        "model_kwargs": config.model_kwargs,
        "method": sm.method_name,
        "init": sm.init,
        "density": 1.0 if sm.method_name == "dense" else sm.density,
        "scale_by_density": sm.scale_by_density,
        "lr": config.lr,
        "epochs": config.epochs,
        "val_accuracy": result.history[-1]["val_accuracy"],
        "test_accuracy": test_metrics["accuracy"],
        "seconds": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "conv4"])
    parser.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    parser.add_argument("--inits", nargs="+", default=["signed-constant", "kaiming-normal"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=0, help="0: all 54,000")
    parser.add_argument("--hidden-lr", type=float, default=0.2)
    parser.add_argument("--dense-lr", type=float, default=0.02)
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (conv)")
    parser.add_argument(
        "--scale-by-density",
        action="store_true",
        help="hidden runs divide frozen weights by sqrt(density) (edge-popup's scaled init)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/study")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full = load_dataset("fashion-mnist", "train", args.data_dir)
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    train_set, val_set = train_val_split(full, 0.1, 0)
    if args.train_subset:
        train_set = train_set.subset(torch.arange(min(args.train_subset, len(train_set))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for model in args.models:
        kwargs = {"width": args.width} if model.startswith("conv") and args.width != 1 else {}
        base = TrainConfig(
            model=model,
            model_kwargs=kwargs,
            epochs=args.epochs,
            warmup_epochs=0.2,
            train_subset=0,
            weight_decay=1e-4,
        )
        runs = [
            TrainConfig(
                **{
                    **base.__dict__,
                    "lr": args.dense_lr,
                    "weight_decay": 5e-4,
                    "supermask": SupermaskConfig(method="dense", init="kaiming-normal"),
                }
            )
        ]
        for init in args.inits:
            for density in args.densities:
                runs.append(
                    TrainConfig(
                        **{
                            **base.__dict__,
                            "lr": args.hidden_lr,
                            "supermask": SupermaskConfig(
                                density=density, init=init, scale_by_density=args.scale_by_density
                            ),
                        }
                    )
                )
        for config in runs:
            record = run_one(config, (train_set, val_set), test)
            records.append(record)
            print(json.dumps(record), flush=True)
            (out / "study.json").write_text(json.dumps(records, indent=2))

    print(
        f"\n{len(train_set)} training images, {len(val_set)} validation, {len(test)} test; "
        f"{args.epochs} epochs; command: python benchmarks/study_accuracy.py "
        f"--models {' '.join(args.models)} --epochs {args.epochs} "
        f"--train-subset {args.train_subset} --width {args.width} "
        f"--hidden-lr {args.hidden_lr} --dense-lr {args.dense_lr}"
        f"{' --scale-by-density' if args.scale_by_density else ''}\n"
    )
    print("| model | method | init | density | test accuracy | gap to dense (points) | time (s) |")
    print("|---|---|---|---|---|---|---|")
    dense = {r["model"]: r["test_accuracy"] for r in records if r["method"] == "dense"}
    for r in records:
        gap = 100 * (dense[r["model"]] - r["test_accuracy"])
        print(
            f"| {r['model']} | {r['method']} | {r['init']} | {r['density']:g} | "
            f"{100 * r['test_accuracy']:.2f} % | {gap:+.2f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
