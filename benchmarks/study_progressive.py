"""ProgressiveNN on Fashion-MNIST: one N-bit network run at 1..N bits, against separately
trained networks at 1, 2, 4 and 8 bits (the Any-Precision anchor), with modelled energy.

1. Train ``--model`` (default conv4, width 0.5) with the ``progressive`` method at N = 8 bits
   (quantization-aware training of the weights at 8 bits, straight-through), ``--epochs`` on
   ``--train-subset`` training images.
2. Evaluate it on the test set at every precision n = 1..8 (the n most significant digits of
   the single stored model): with the statistics as trained (no correction), and with
   per-precision batch-norm statistics recalibrated on ``--calibration`` training images;
   also recalibrated with 8-bit activation quantizers (calibrated on the same images).
3. Train the same network separately with the ``progressive`` method at N = b for b in
   ``--anchors`` (QAT at b bits, same data and budget) and evaluate each at its own b.
4. Model the energy of one inference at each precision on the Hiddenite preset (bit-serial
   PEs accumulating n digits, :func:`hiddenite.hw.workload.at_precision`).
5. With ``--any-precision 1,2,4,8``: train one more network with the ``progressive`` method
   and ``train_bits`` (every step at each listed precision, per-precision batch norm with
   its own gamma/beta: Any-Precision DNNs, Yu et al., AAAI 2021) and read it at 1..8 bits,
   as trained and recalibrated. ``--retrain-bn E`` adds the N-bit network converted with
   per-precision gamma/beta, recalibrated, then only its batch norm retrained E epochs per
   precision on the calibration images (:func:`hiddenite.progressive.tune`).

``--batch-norm`` trains ``<model>-bn`` (Conv-n with a batch norm after every conv and hidden
linear layer); ``--init`` picks the initial latent weights (kaiming-normal: a spread of magnitudes;
signed-constant puts every initial weight at +-s, the extreme levels). ``--no-float`` skips
the float32 twin; ``--anchors`` lists the separately trained precisions (N reuses the N-bit
network: the same training run).

Usage (the budget of BENCHMARKS.md)::

    OMP_NUM_THREADS=1 python benchmarks/study_progressive.py --train-subset 10000 --epochs 2 \
        --out runs/progressive

Full size: ``--train-subset 0 --epochs 20 --test-subset 0``. The validation split (10 %)
is cut to 1,000 images (it only reports progress; the test set gives every figure).
Prints a markdown table and writes ``<out>/study_progressive.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from hiddenite import SupermaskConfig
from hiddenite.atomic import atomic_write_text
from hiddenite.data import iterate_batches, load_dataset, train_val_split
from hiddenite.hw import estimate
from hiddenite.hw.workload import at_precision, workloads_from_module
from hiddenite.methods.progressive import ProgressiveConfig, precision, recalibrate_bn
from hiddenite.progressive import to_progressive, tune
from hiddenite.quant import ActQuantConfig, add_act_quantizers_, calibrate
from hiddenite.train import TrainConfig, evaluate, train


def _model_kwargs(args) -> dict:
    return {"width": args.width}


def _model(args) -> str:
    return f"{args.model}-bn" if args.batch_norm else args.model


def train_at(
    bits: int, args, datasets, method: ProgressiveConfig | None = None
) -> tuple[torch.nn.Module, float]:
    method = method or ProgressiveConfig(bits=bits)
    config = TrainConfig(
        model=_model(args),
        model_kwargs=_model_kwargs(args),
        supermask=SupermaskConfig(method=method, density=1.0, seed=args.seed, init=args.init),
        epochs=args.epochs,
        batch_size=128,
        optimizer="adam",
        lr=args.lr,
        weight_decay=0.0,
        train_subset=args.train_subset,
        data_seed=args.seed,
    )
    began = time.perf_counter()
    result = train(config, None, datasets=datasets, progress=False, log=None)
    return result.model.eval(), time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="conv4")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--bits", type=int, default=8, help="N of the progressive network")
    p.add_argument("--anchors", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-subset", type=int, default=10000, help="0: all 54,000")
    p.add_argument("--test-subset", type=int, default=5000, help="0: all 10,000")
    p.add_argument("--calibration", type=int, default=2000, help="training images for BN stats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default="signed-constant", help="initial latent weights")
    p.add_argument("--batch-norm", action="store_true", help="Conv-n with batch norm")
    p.add_argument(
        "--any-precision",
        default="",
        help="train_bits of an any-precision network, e.g. 1,2,4,8 (empty: none)",
    )
    p.add_argument("--retrain-bn", type=int, default=0, help="epochs of batch-norm retraining")
    p.add_argument("--float", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default="runs/progressive")
    args = p.parse_args()

    full = load_dataset("fashion-mnist", "train")
    train_set, val_set = train_val_split(full, 0.1, args.seed)
    if args.train_subset:  # train() applies train_subset only to data it loads itself
        train_set = train_set.subset(torch.arange(args.train_subset))
    datasets = (train_set, val_set.subset(torch.arange(1000)))  # validation: a progress figure
    test = load_dataset("fashion-mnist", "test")
    if args.test_subset:
        test = test.subset(torch.arange(args.test_subset))
    calib = [
        x
        for x, _ in iterate_batches(
            datasets[0].subset(torch.arange(args.calibration)),
            500,
            shuffle=False,
            generator=None,
            augment=False,
        )
    ]
    n_top = args.bits
    model, seconds = train_at(n_top, args, datasets)
    recal = recalibrate_bn(copy.deepcopy(model), calib)
    acts = add_act_quantizers_(copy.deepcopy(recal), ActQuantConfig(bits=8))
    calibrate(acts, calib)
    shape = (1, 1, 28, 28)
    workloads = workloads_from_module(model, shape)
    nets = {"stored": model, "recalibrated": recal, "recal_a8": acts}
    calib_set = datasets[0].subset(torch.arange(args.calibration))
    all_bits = list(range(1, n_top + 1))
    if args.retrain_bn:
        affine = to_progressive(model, ProgressiveConfig(bits=n_top, affine=True))
        nets["bn_retrained"] = tune(affine, calib_set, all_bits, retrain_epochs=args.retrain_bn)
    any_seconds = None
    if args.any_precision:
        train_bits = tuple(int(b) for b in args.any_precision.split(","))
        method = ProgressiveConfig(bits=n_top, affine=True, train_bits=train_bits)
        anyp, any_seconds = train_at(n_top, args, datasets, method)
        nets["any_stored"] = anyp
        nets["any_recalibrated"] = tune(anyp, calib_set, all_bits)
    rows = []
    for n in range(1, n_top + 1):
        row = {"bits": n, "relative_compute": n / n_top}
        for key, net in nets.items():
            with precision(net, n):
                row[key] = evaluate(net, test, 1000)["accuracy"]
        rep = estimate(at_precision(workloads, n), "hiddenite")
        row["energy_uj"] = rep.totals["energy_pj"] / 1e6
        row["energy_compute_nj"] = sum(r.energy_compute_pj for r in rep.rows) / 1e3
        rows.append(row)
    anchors = {}
    for b in args.anchors:
        if b == n_top:  # the same configuration as the N-bit network: the same run
            anchors[b] = {"accuracy": rows[-1]["stored"], "seconds": seconds}
            continue
        net, secs = train_at(b, args, datasets)
        anchors[b] = {"accuracy": evaluate(net, test, 1000)["accuracy"], "seconds": secs}
    float_acc = None
    if args.float:
        float_cfg = TrainConfig(
            model=_model(args),
            model_kwargs=_model_kwargs(args),
            supermask=SupermaskConfig(method="dense", density=1.0, seed=args.seed, init=args.init),
            epochs=args.epochs,
            optimizer="adam",
            lr=args.lr,
            weight_decay=0.0,
            train_subset=args.train_subset,
            data_seed=args.seed,
        )
        dense = train(float_cfg, None, datasets=datasets, progress=False, log=None).model
        float_acc = evaluate(dense, test, 1000)["accuracy"]

    twin = "-" if float_acc is None else f"{100 * float_acc:.2f} %"
    print(
        f"{args.model} width {args.width}{' + batch norm' if args.batch_norm else ''}, "
        f"init {args.init}, {args.epochs} epochs on "
        f"{args.train_subset or len(datasets[0])} images, test {len(test)}; "
        f"progressive N={n_top} trained in {seconds:.0f} s"
        + ("" if any_seconds is None else f", any-precision in {any_seconds:.0f} s")
        + f"; float32 twin {twin}"
    )
    columns = [
        ("stored", "stored stats"),
        ("recalibrated", "recalibrated"),
        ("recal_a8", "recal. + A8"),
        ("bn_retrained", f"BN retrained ({args.retrain_bn} ep)"),
        ("any_stored", f"any-prec. {{{args.any_precision}}}"),
        ("any_recalibrated", "any-prec. recal."),
    ]
    columns = [(k, title) for k, title in columns if k in nets]
    head = " | ".join(title for _, title in columns)
    print(f"| bits | compute | {head} | trained at b | energy/inf |")
    print("|---:|---:|" + "---:|" * len(columns) + "---:|---:|")
    for r in rows:
        anchor = anchors.get(r["bits"])
        a = f"{100 * anchor['accuracy']:.2f} %" if anchor else ""
        cells = " | ".join(f"{100 * r[k]:.2f} %" for k, _ in columns)
        print(
            f"| {r['bits']} | {r['relative_compute']:.3f} | {cells} | {a} | "
            f"{r['energy_uj']:.2f} uJ |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "args": vars(args),
        "rows": rows,
        "anchors": anchors,
        "float_accuracy": float_acc,
        "seconds": {"n_bit": seconds, "any_precision": any_seconds},
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_text(out / "study_progressive.json", json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
