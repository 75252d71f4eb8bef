"""``hiddenite run``: the main job on the bundled default data set (Fashion-MNIST).

1. train a hidden Conv-4 (frozen signed-constant weights, learned masks) and its dense twin
   on the same data with the same budget;
2. evaluate both on the test set;
3. rebuild the hidden network from its checkpoint (scores only; weights regenerated from
   the seed) and check the rebuilt model predicts exactly the same classes;
4. print the size summary and a short report (also written to ``report.json``);
5. export the hidden network to the compact model file ``model.hnn`` (seeds, compressed
   masks, per-channel parameters), reload it with :func:`hiddenite.load`, check its test
   predictions and accuracy are identical, and report its size next to float32 and binarized.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from .atomic import atomic_write_text
from .convert import SupermaskConfig
from .data import load_dataset, train_val_split
from .errors import UserError
from .export import export_checkpoint
from .fileformat import load
from .hw import compare
from .hw.model import _json_safe
from .hw.outputs import MODELLED_NOTE, mask_source_note, summary_totals
from .summary import summary
from .train import TrainConfig, evaluate, load_trained, predict, resolve_device, train
from .validate import check_output_folder

DEFAULT_EPOCHS = 3
DEFAULT_TRAIN_SUBSET = 15000
QUICK_EPOCHS = 1
QUICK_TRAIN_SUBSET = 512
QUICK_TEST_SUBSET = 1000

__all__ = ["hidden_and_dense_configs", "run_main_job"]


def hidden_and_dense_configs(epochs: int, train_subset: int) -> tuple[TrainConfig, TrainConfig]:
    """The two training configs of the main job (the hidden network and its dense twin)."""
    hidden = TrainConfig(
        model="conv4",
        model_kwargs={"width": 0.5},
        # scaled signed constant: without the 1/sqrt(k) scale the activations of a 6-layer
        # net without batch norm shrink by k**3 and training stalls (see BENCHMARKS.md)
        supermask=SupermaskConfig(
            density=0.5, init="signed-constant", seed=0, scale_by_density=True
        ),
        epochs=epochs,
        optimizer="sgd",
        lr=0.3,
        weight_decay=1e-4,
        warmup_epochs=0.2,
        train_subset=train_subset,
    )
    dense = dataclasses.replace(
        hidden,
        supermask=SupermaskConfig(method="dense", init="kaiming-normal", seed=0),
        lr=0.02,
        weight_decay=5e-4,
    )
    return hidden, dense


def _accelerator_estimate(model_path: Path) -> dict:
    """Step 6: the model file on the three accelerator presets; prints a short comparison and
    returns the ``report.json`` entry."""

    reports = compare(model_path)
    print(mask_source_note(reports["hiddenite"].options["source"]))
    names = list(reports)
    rows = [
        ("off-chip model bytes", "offchip_model_bytes", 1.0, "{:,.0f}"),
        ("off-chip bytes (total)", "offchip_bytes", 1.0, "{:,.0f}"),
        ("energy per inference (uJ)", "energy_per_inference_pj", 1e-6, "{:,.3f}"),
        ("TOPS/W (DRAM included)", "tops_per_watt", 1.0, "{:,.2f}"),
        ("latency (ms)", "latency_s", 1e3, "{:,.4f}"),
    ]
    print(f"{'':<26}" + "".join(f"{n:>14}" for n in names))
    for label, key, scale, fmt in rows:
        cells = "".join(f"{fmt.format(reports[n].totals[key] * scale):>14}" for n in names)
        print(f"{label:<26}{cells}")
    print(f"(batch 1, default presets; figures are {MODELLED_NOTE})")
    return _json_safe(
        {
            "note": f"figures are {MODELLED_NOTE}",
            "source": reports["hiddenite"].options["source"],
            "archs": {n: summary_totals(r) for n, r in reports.items()},
        }
    )


def run_main_job(args) -> int:
    """Run the main job with the CLI's ``run`` arguments; prints the report."""
    out = check_output_folder(args.out, "output folder (--out)")
    quick = bool(getattr(args, "quick", False))
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    if args.train_subset is not None and args.train_subset < 0:
        raise UserError(f"--train-subset must be >= 0 (0: all), got {args.train_subset}")
    epochs = args.epochs or (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    subset = args.train_subset
    if subset is None:
        subset = QUICK_TRAIN_SUBSET if quick else DEFAULT_TRAIN_SUBSET
    device = resolve_device(args.device)
    hidden_cfg, dense_cfg = hidden_and_dense_configs(epochs, subset)
    began = time.perf_counter()

    full = load_dataset(hidden_cfg.dataset, "train", args.data_dir)
    test = load_dataset(hidden_cfg.dataset, "test", args.data_dir)
    train_set, val_set = train_val_split(full, hidden_cfg.val_fraction, hidden_cfg.seed_for_data)
    if quick:
        test = test.subset(torch.arange(min(QUICK_TEST_SUBSET, len(test))))
        val_set = val_set.subset(torch.arange(min(QUICK_TEST_SUBSET, len(val_set))))
    if subset:
        train_set = train_set.subset(torch.arange(min(subset, len(train_set))))
    print(f"Fashion-MNIST: {len(train_set)} training, {len(val_set)} validation, "
          f"{len(test)} test images; {epochs} epoch(s) per model")  # fmt: skip

    results = {}
    for label, cfg in (("hidden", hidden_cfg), ("dense", dense_cfg)):
        sm = cfg.supermask
        print(
            f"\n== {label}: {cfg.model} {cfg.model_kwargs}, method={sm.method.describe()}, "
            f"init={sm.init}, density={sm.density}"
        )
        t0 = time.perf_counter()
        result = train(cfg, out / label, datasets=(train_set, val_set), device=device)
        results[label] = {
            "model": result.model,
            "seconds": time.perf_counter() - t0,
            "test": evaluate(result.model, test, cfg.eval_batch_size, device),
        }

    print("\n== rebuilding the hidden network from its seed and checkpoint")
    rebuilt, _ = load_trained(out / "hidden" / "checkpoint.safetensors", device)
    original = predict(results["hidden"]["model"], test, device=device)
    again = predict(rebuilt, test, device=device)
    identical = bool(torch.equal(original, again))
    rebuilt_test = evaluate(rebuilt, test, hidden_cfg.eval_batch_size, device)
    print(f"rebuilt predictions identical on {len(test)} test images: {identical}")

    print("\n== size of the hidden network")
    sizes = summary(rebuilt, print_fn=print)

    print("\n== exporting the hidden network to a model file and loading it back")
    model_path = out / "model.hnn"
    file_info = export_checkpoint(out / "hidden" / "checkpoint.safetensors", model_path)
    from_file = load(model_path, device)
    file_predictions = predict(from_file, test, device=device)
    file_test = evaluate(from_file, test, hidden_cfg.eval_batch_size, device)
    ft = file_info.totals()
    file_identical = bool(torch.equal(original, file_predictions)) and (
        file_test["accuracy"] == results["hidden"]["test"]["accuracy"]
    )
    codecs_used = {}
    for entry in file_info.entries:
        for part in entry.parts:
            if part.codec is not None:
                codecs_used[part.codec] = codecs_used.get(part.codec, 0) + 1
    print(
        f"{model_path}: {ft['file_bytes']:,} bytes ({ft['file_bits_per_weight']:.3f} bit/weight; "
        f"masks {ft['mask_bytes']:,} + header {ft['header_bytes']:,}; codecs "
        + ", ".join(f"{c} x{k}" for c, k in sorted(codecs_used.items()))
        + f"); test accuracy from the file {file_test['accuracy']:.4f}, identical: "
        f"{file_identical}"
    )

    print("\n== accelerator estimate for the model file (modelled, not measured)")
    accelerator = _accelerator_estimate(model_path)

    h, d = results["hidden"], results["dense"]
    report = {
        "data": {"train": len(train_set), "val": len(val_set), "test": len(test)},
        "epochs": epochs,
        "hidden": {"config": hidden_cfg.to_dict(), "test_accuracy": h["test"]["accuracy"],
                   "seconds": h["seconds"]},
        "dense": {"config": dense_cfg.to_dict(), "test_accuracy": d["test"]["accuracy"],
                  "seconds": d["seconds"]},
        "rebuilt": {"predictions_identical": identical,
                    "test_accuracy": rebuilt_test["accuracy"]},
        "sizes": sizes.totals,
        "model_file": {"path": str(model_path), "bytes": ft["file_bytes"],
                       "header_bytes": ft["header_bytes"], "mask_bytes": ft["mask_bytes"],
                       "bits_per_weight": ft["file_bits_per_weight"], "codecs": codecs_used,
                       "float32_bytes": ft["float32_bytes"],
                       "binarized_bytes": ft["binarized_bytes"],
                       "ratio_float32": ft["ratio_float32"],
                       "ratio_binarized": ft["ratio_binarized"],
                       "test_accuracy": file_test["accuracy"],
                       "identical": file_identical},
        "accelerator": accelerator,
        "seconds": time.perf_counter() - began,
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    atomic_write_text(out / "report.json", text)

    t = sizes.totals
    print("\n== report")
    print(
        f"hidden {hidden_cfg.model} (k={hidden_cfg.supermask.density}) test accuracy "
        f"{h['test']['accuracy']:.4f}   dense twin {d['test']['accuracy']:.4f}   "
        f"gap {100 * (d['test']['accuracy'] - h['test']['accuracy']):+.2f} points"
    )
    print(
        f"rebuilt from seed: predictions identical = {identical}, "
        f"test accuracy {rebuilt_test['accuracy']:.4f}"
    )
    print(
        f"model data: stored {t['stored_bytes'] / 1e3:.1f} kB, binarized "
        f"{t['binarized_bytes'] / 1e3:.1f} kB, float32 {t['float32_bytes'] / 1e3:.1f} kB"
    )
    print(
        f"model file {model_path}: {ft['file_bytes'] / 1e3:.1f} kB against float32 "
        f"{ft['float32_bytes'] / 1e3:.1f} kB ({ft['ratio_float32']:.1f}x smaller) and binarized "
        f"{ft['binarized_bytes'] / 1e3:.1f} kB ({ft['ratio_binarized']:.2f}x); reloaded test "
        f"accuracy {file_test['accuracy']:.4f}, identical = {file_identical}"
    )
    hw = accelerator["archs"]
    print(
        "accelerator (modelled): off-chip model bytes hiddenite "
        f"{hw['hiddenite']['offchip_model_bytes']:,} vs BNN {hw['bnn']['offchip_model_bytes']:,} "
        f"vs INT8 {hw['int8']['offchip_model_bytes']:,}; TOPS/W "
        + " / ".join(f"{hw[a]['tops_per_watt']:.2f}" for a in ("hiddenite", "bnn", "int8"))
    )
    print(f"total time {report['seconds']:.0f} s; report in {out / 'report.json'}")
    return 0 if identical and file_identical else 1
