"""Accuracy per byte on Fashion-MNIST: every supermask method on one architecture and budget.

For each run: train on the same training images, validation split, epochs and schedule;
export the trained network to a ``.hnn`` file; report its test accuracy (the test set is used
once per run) against the file's size in bytes. The dense float32 twin and the binarized
network are runs of the same architecture too, so every point is a file this toolkit writes
and loads back. The folded ResNet is necessarily another architecture (noted in the table).

Usage::

    python benchmarks/study_methods.py --model conv4 --width 0.5 --epochs 4 \
        --train-subset 12000 --out runs/methods

Writes ``<out>/methods.json`` (one record per run, appended as runs finish; ``--resume``
skips runs already there), ``<out>/methods.png`` (accuracy against file bytes) and prints a
markdown table. ``--only NAME ...`` runs a subset of the labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from hiddenite import SupermaskConfig, load
from hiddenite.data import load_dataset, train_val_split
from hiddenite.export import arch_of
from hiddenite.fileformat import save
from hiddenite.methods import method_config
from hiddenite.train import TrainConfig, evaluate, train

HIDDEN_LR = 0.3
DENSE_LR = 0.02


def runs(density_grid: list[float]) -> list[tuple[str, dict]]:
    """(label, TrainConfig overrides) of every run; ``supermask`` holds SupermaskConfig fields."""
    out: list[tuple[str, dict]] = [
        ("dense float32", {"lr": DENSE_LR, "weight_decay": 5e-4, "supermask": {
            "method": "dense", "init": "kaiming-normal"}}),
        ("binarized", {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.0, "supermask": {
            "method": "binarized", "init": "kaiming-normal"}}),
    ]  # fmt: skip
    for k in density_grid:
        out.append((f"edge-popup k={k:g}", {"supermask": {"density": k}}))
    # p = 0.7 at k = 0.3 keeps every free position: a randomly pruned network, nothing learned
    for p in (0.3, 0.5, 0.6, 0.65, 0.7):
        frozen = method_config("frozen", pruned=p)
        out.append((f"frozen p={p:g} k=0.3", {"supermask": {"density": 0.3, "method": frozen}}))
    out.append(("edge-popup k=0.2", {"supermask": {"density": 0.2}}))
    out.append(("edge-popup k=0.05 lr=0.1", {"lr": 0.1, "supermask": {"density": 0.05}}))
    out += [
        ("multicoat k=0.3", {"supermask": {"density": 0.3, "method": "multicoat"}}),
        ("signed k=0.3", {"supermask": {"density": 0.3, "method": "signed"}}),
        ("trichromatic k=0.3", {"supermask": {"density": 0.3, "method": "trichromatic"}}),
    ]
    # freezing composed with trichromatic (the connectivity colour frozen and stored for the
    # free positions only; the sign colour learned on every kept weight), against plain
    # trichromatic at densities that store about as many bits
    for p in (0.5, 0.6, 0.65):
        composed = method_config("frozen", pruned=p, inner="trichromatic")
        out.append(
            (
                f"frozen+trichromatic p={p:g} k=0.3",
                {"supermask": {"density": 0.3, "method": composed}},
            )
        )
    for k in (0.1, 0.15):
        out.append(
            (f"trichromatic k={k:g}", {"supermask": {"density": k, "method": "trichromatic"}})
        )
    for bits in (1, 2, 4):
        analog = method_config("analog", bits=bits)
        out.append(
            (
                f"analog {bits}-bit k=0.3",
                {"lr": 0.1, "supermask": {"density": 0.3, "method": analog}},
            )
        )
    return out


def scalar_supermask_run() -> tuple[str, dict]:
    from hiddenite.methods.trichromatic import TrichromaticConfig

    config = TrichromaticConfig.scalar_supermask(0.3)
    return ("scalar supermask k=0.3", {"supermask": {"density": 0.3, "method": config}})


def run_one(label: str, config: TrainConfig, datasets, test, out: Path) -> dict:
    began = time.perf_counter()
    result = train(config, None, datasets=datasets, progress=False, log=None)
    seconds = time.perf_counter() - began
    path = out / (label.replace(" ", "_").replace("=", "") + ".hnn")
    info = save(result.model, path, arch=arch_of(config), config=config.supermask)
    model = load(path)
    metrics = evaluate(model, test, config.eval_batch_size)
    t = info.totals()
    return {
        "label": label,
        "model": config.model,
        "model_kwargs": config.model_kwargs,
        "method": config.supermask.method.to_dict(),
        "density": config.supermask.density,
        "lr": config.lr,
        "epochs": config.epochs,
        "file": str(path),
        "file_bytes": t["file_bytes"],
        "coded_part_bytes": t["mask_bytes"],
        "float_part_bytes": t["float_part_bytes"],
        "param_bytes": t["param_bytes"],
        "header_bytes": t["header_bytes"],
        "binarized_reference_bytes": t["binarized_bytes"],
        "val_accuracy": result.history[-1]["val_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "train_seconds": seconds,
    }


def plot(records: list[dict], path: Path, floor: float = 75.0) -> None:
    """Accuracy against file size, one colour per method; runs below ``floor`` % are drawn on
    the bottom edge (triangles) with their accuracy in the label, so the rest stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    names = sorted({r["method"]["name"] for r in records})
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    top = max(100 * r["test_accuracy"] for r in records)
    for r in records:
        kb, acc = r["file_bytes"] / 1e3, 100 * r["test_accuracy"]
        below = acc < floor
        y = floor + 0.15 if below else acc
        ax.scatter(kb, y, s=36, color=colours[r["method"]["name"]], marker="v" if below else "o")
        short = r["label"].replace(r["method"]["name"], "").strip() or r["label"]
        if r["model"] != records[0]["model"]:
            short = r["label"]
        text = f"{short} ({acc:.1f} %)" if below else short
        ax.annotate(text, (kb, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for name in names:
        ax.scatter([], [], color=colours[name], label=name)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xscale("log")
    ax.set_ylim(floor, top + 1.0)
    ax.set_xlabel("model file (.hnn) size, kB (log scale)")
    ax.set_ylabel("Fashion-MNIST test accuracy, %")
    ax.grid(True, which="both", alpha=0.3)
    first = records[0]
    ax.set_title(
        f"{first['model']} {first['model_kwargs']}, {first['epochs']} epochs: accuracy per byte",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="conv4")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-subset", type=int, default=12000, help="0: all 54,000")
    parser.add_argument("--densities", nargs="+", type=float, default=[0.05, 0.1, 0.3, 0.5])
    parser.add_argument("--folded", default="resnet20-folded", help="folded zoo model ('': none)")
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    parser.add_argument("--resume", action="store_true", help="skip labels already recorded")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/methods")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full = load_dataset("fashion-mnist", "train", args.data_dir)
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    train_set, val_set = train_val_split(full, 0.1, 0)
    if args.train_subset:
        train_set = train_set.subset(torch.arange(min(args.train_subset, len(train_set))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "methods.json"
    records = json.loads(record_path.read_text()) if args.resume and record_path.exists() else []
    done = {r["label"] for r in records}
    kwargs = {"width": args.width} if args.width != 1 else {}
    base = TrainConfig(
        model=args.model, model_kwargs=kwargs, epochs=args.epochs, warmup_epochs=0.2,
        lr=HIDDEN_LR, weight_decay=1e-4,
    )  # fmt: skip
    plan = [*runs(args.densities), scalar_supermask_run()]
    if args.folded:
        plan.append(
            (
                f"{args.folded} edge-popup k=0.3",
                {
                    "model": args.folded,
                    "model_kwargs": {},
                    "lr": 0.1,
                    "supermask": {"density": 0.3},
                },
            )
        )
    for label, overrides in plan:
        if label in done or (args.only is not None and label not in args.only):
            continue
        fields = {**dataclasses.asdict(base), **overrides}
        fields["supermask"] = SupermaskConfig(**overrides.get("supermask", {}))
        config = TrainConfig(**fields)
        record = run_one(label, config, (train_set, val_set), test, out)
        records.append(record)
        print(json.dumps(record), flush=True)
        record_path.write_text(json.dumps(records, indent=2))
    if not records:
        return
    plot(records, out / "methods.png")
    by_label = {r["label"]: r for r in records}
    binarized = by_label.get("binarized")
    print(
        f"\n{len(train_set)} training images, {len(val_set)} validation, {len(test)} test; "
        f"{args.epochs} epochs; command: python benchmarks/study_methods.py --model {args.model} "
        f"--width {args.width} --epochs {args.epochs} --train-subset {args.train_subset}\n"
    )
    print("| run | file bytes | x binarized file | test accuracy | points vs binarized |")
    print("|---|---|---|---|---|")
    for r in sorted(records, key=lambda r: r["file_bytes"]):
        ratio = r["file_bytes"] / binarized["file_bytes"] if binarized else math.nan
        gap = 100 * (r["test_accuracy"] - binarized["test_accuracy"]) if binarized else math.nan
        print(
            f"| {r['label']} | {r['file_bytes']:,} | {ratio:.3f} | "
            f"{100 * r['test_accuracy']:.2f} % | {gap:+.2f} |"
        )


if __name__ == "__main__":
    main()
