"""Binarized channel attention and computing in memory, on Fashion-MNIST (seed 004).

Trains ResNet-14 and SE-ResNet-14 (binarized SE gate in every basic block, ``se_position``
mid) on the same images, epochs and schedule, dense and hidden (edge-popup), and the fully
binarized SE-ResNet-14 (``binarized`` weights + sign activations); reports for each run the
test accuracy, the validation accuracy after every epoch (and the first epoch reaching
``--target``), and for the SE runs the fraction of channels switched off per SE block over the
test images (:func:`hiddenite.models.attention.channel_off_fraction`). Then it runs the
trained networks through the SRAM CIM macro model (:mod:`hiddenite.hw.cim`) at several gating
granularities (default: 288-row arrays, so that gating units of 9 rows are exactly one
input channel of a 3x3 convolution, the alignment of control units and sparse regions the seed
asks for; weights 8 bits dense, 2 bits hidden (sign + mask), 1 bit binarized) and reports
the fraction of gating units off and the energy saved against the same macro without gating
(modelled, not measured).

Small budget by default (stated in BENCHMARKS.md)::

    python benchmarks/study_se_cim.py --train-subset 10000 --epochs 4 --width 0.5 \
        --out runs/se_cim

Full size: ``--train-subset 0 --epochs 30 --width 1.0 --test-samples 10000 --cim-samples 10000``.
Writes ``<out>/se_cim.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hiddenite import SupermaskConfig
from hiddenite.data import iterate_batches, load_dataset, train_val_split
from hiddenite.hw.cim import analyze_cim, get_cim_preset, parse_granularity
from hiddenite.models.attention import channel_off_fraction
from hiddenite.train import TrainConfig, evaluate, train

RUNS = {
    # label: (model, SupermaskConfig fields, TrainConfig overrides, model kwargs)
    "resnet14 dense": ("resnet14", {"method": "dense", "init": "kaiming-normal"}, {}, {}),
    "se-resnet14 dense": ("se-resnet14", {"method": "dense", "init": "kaiming-normal"}, {}, {}),
    "se-resnet14 dense post": (
        "se-resnet14",
        {"method": "dense", "init": "kaiming-normal"},
        {},
        {"se_position": "post"},
    ),
    "resnet14 hidden k=0.5": ("resnet14", {"density": 0.5}, {"lr": 0.2}, {}),
    "se-resnet14 hidden k=0.5": ("se-resnet14", {"density": 0.5}, {"lr": 0.2}, {}),
    "se-resnet14 binarized": (
        "se-resnet14",
        {"method": "binarized", "init": "kaiming-normal"},
        {"optimizer": "adam", "lr": 0.005, "weight_decay": 0.0},
        {"binary": True},
    ),
}


def first_epoch(history: list[dict], target: float) -> int | None:
    for row in history:
        if row["val_accuracy"] >= target:
            return int(row["epoch"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--target", type=float, default=0.80, help="val accuracy for epochs-to-reach")
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--cim-samples", type=int, default=300)
    ap.add_argument(
        "--rows", type=int, default=288, help="array rows (288 = 32 channels x 3x3 kernel)"
    )
    ap.add_argument("--granularity", nargs="+", default=["9x256", "36x256", "288x256", "9x16"])
    ap.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/se_cim")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    test = test.subset(range(min(args.test_samples, len(test))))
    cim_set = test.subset(range(min(args.cim_samples, len(test))))
    records = []
    for label, (name, sm, over, kw) in RUNS.items():
        if args.only and label not in args.only:
            continue
        config = TrainConfig(
            model=name,
            model_kwargs={"width": args.width, **kw},
            supermask=SupermaskConfig(seed=args.seed, **sm),
            epochs=args.epochs,
            train_subset=args.train_subset,
            lr=over.get("lr", 0.05),
            optimizer=over.get("optimizer", "sgd"),
            weight_decay=over.get("weight_decay", 5e-4),
            data_seed=args.seed,
        )
        subset = full if not args.train_subset else full.subset(range(args.train_subset))
        datasets = train_val_split(subset, config.val_fraction, args.seed)
        began = time.perf_counter()
        result = train(config, None, datasets=datasets, progress=False, log=print)
        seconds = time.perf_counter() - began
        model = result.model.eval()
        acc = evaluate(model, test, 500)["accuracy"]
        rec = {
            "label": label,
            "model": name,
            "config": config.to_dict(),
            "test_accuracy": acc,
            "val_accuracy": [r["val_accuracy"] for r in result.history],
            "first_epoch_at_target": first_epoch(result.history, args.target),
            "train_seconds": seconds,
        }
        if name.startswith("se-"):
            batches = iterate_batches(test, 500, shuffle=False, generator=None, augment=False)
            rec["channels_off"] = channel_off_fraction(model, batches)
        weight_bits = 2 if "hidden" in label else (1 if "binarized" in label else 8)
        base = get_cim_preset("sram-28nm").replace(
            weight_bits=weight_bits, rows=args.rows, unit_rows=args.rows
        )
        specs = [parse_granularity(g, base) for g in args.granularity]
        specs.append(parse_granularity(args.granularity[0], base.replace(readout="sense-amp")))
        batches = iterate_batches(cim_set, 100, shuffle=False, generator=None, augment=False)
        reports = analyze_cim(model, batches, specs)
        rec["cim"] = [
            {
                "granularity": r.spec.granularity,
                "readout": r.spec.readout,
                "weight_bits": r.spec.weight_bits,
                **r.totals,
            }
            for r in reports
        ]
        records.append(rec)
        (out / "se_cim.json").write_text(json.dumps(records, indent=2))
        print(f"{label}: test {acc:.4f}, {seconds:.0f} s", flush=True)
    report(records, args)


def report(records: list[dict], args) -> None:
    print(f"\n| run | test acc. | val acc. per epoch | first epoch >= {args.target:.0%} | s |")
    print("|---|---|---|---|---|")
    for r in records:
        vals = " / ".join(f"{100 * v:.1f}" for v in r["val_accuracy"])
        first = r["first_epoch_at_target"] or "-"
        print(
            f"| {r['label']} | {100 * r['test_accuracy']:.2f} % | {vals} | {first} | "
            f"{r['train_seconds']:.0f} |"
        )
    print("\n| run | channels off per SE block (test set) | mean |")
    print("|---|---|---|")
    for r in records:
        if "channels_off" in r:
            fr = list(r["channels_off"].values())
            cells = " / ".join(f"{100 * v:.0f}" for v in fr)
            print(f"| {r['label']} | {cells} % | {100 * sum(fr) / len(fr):.1f} % |")
    print(
        "\n| run | weight bits | unit | readout | units off: weights / zero inputs | "
        "energy/input no gating (nJ) | gated (nJ) | saved |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        for c in r["cim"]:
            print(
                f"| {r['label']} | {c['weight_bits']} | {c['granularity']} | {c['readout']} | "
                f"{100 * c['off_weight']:.1f} % / {100 * c['off_input']:.1f} % | "
                f"{c['energy_per_input_baseline_pj'] / 1e3:.1f} | "
                f"{c['energy_per_input_gated_pj'] / 1e3:.1f} | {100 * c['saved']:.1f} % |"
            )


if __name__ == "__main__":
    main()
