"""Fashion-MNIST accuracy with Mitchell's logarithmic multiplier (hiddenite.ops).

(a) networks trained with exact float32 products, evaluated exactly and with Mitchell
products at inference (``use_operator(model, "mitchell", phase="inference")``);
(b) the MLP trained with Mitchell products in the forward pass (``mitchell``: exact
straight-through gradients) and in forward and backward (``mitchell-bwd``), evaluated both ways;
(c) the Conv-4 at width 0.5 trained exactly, evaluated with Mitchell products on a test subset.

Every run of a model uses the same training subset, epochs, schedule and seed; one training
loop (SGD, momentum 0.9, cosine with warm-up, as :mod:`hiddenite.train`) for all of them, so
only the operator differs. Methods: ``dense`` (trained weights) and ``edge-popup`` (a hidden
network: frozen signed-constant weights, learned mask at density 0.5).

Usage (the budget of BENCHMARKS.md, a few minutes on 2 shared cores)::

    python benchmarks/study_logmul.py
    # full size: all 54,000 training images, 10 epochs, the whole test set for both models
    python benchmarks/study_logmul.py --train-subset 0 --epochs 10 --conv-epochs 10 \
        --conv-test-subset 0

Prints a markdown table and writes ``<out>/study_logmul.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hiddenite import SupermaskConfig
from hiddenite.data import iterate_batches, load_dataset, num_batches, train_val_split
from hiddenite.ops import use_operator
from hiddenite.train import TrainConfig, build_model, evaluate, learning_rate

LR = {"dense": 0.02, "edge-popup": 0.2}


def supermask(method: str) -> SupermaskConfig:
    if method == "dense":
        return SupermaskConfig(method="dense", init="kaiming-normal")
    return SupermaskConfig(density=0.5, init="signed-constant")


def fit(config: TrainConfig, operator: str, train_set) -> tuple[torch.nn.Module, float]:
    """Train ``config``'s model with ``operator`` in the training phase; return it and the
    seconds taken."""
    model = build_model(config)
    use_operator(model, operator, phase="training")
    # as hiddenite.train with its defaults (score_decay): every parameter decayed
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps = num_batches(train_set, config.batch_size)
    began = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        generator = torch.Generator().manual_seed(1_000_003 + epoch)
        batches = iterate_batches(
            train_set, config.batch_size, shuffle=True, generator=generator, augment=False
        )
        for i, (x, y) in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps + i, steps)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model, time.perf_counter() - began


def evaluate_both(model, test) -> dict[str, float]:
    """Test accuracy with exact and with Mitchell products at inference (and seconds)."""
    out = {}
    for op in ("exact", "mitchell"):
        began = time.perf_counter()
        with use_operator(model, op, phase="inference"):
            out[f"acc_{op}"] = evaluate(model, test, 500)["accuracy"]
        out[f"eval_s_{op}"] = time.perf_counter() - began
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-subset", type=int, default=10000, help="0: all 54,000")
    parser.add_argument("--epochs", type=int, default=2, help="MLP epochs")
    parser.add_argument("--conv-epochs", type=int, default=1)
    parser.add_argument("--conv-test-subset", type=int, default=2000, help="0: all 10,000")
    parser.add_argument("--methods", nargs="+", default=["dense", "edge-popup"])
    parser.add_argument("--mlp-operators", nargs="*", default=["exact", "mitchell", "mitchell-bwd"])
    parser.add_argument(
        "--skip-conv", action="store_true", help="(give no --mlp-operators to skip the MLP)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/study_logmul")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full = load_dataset("fashion-mnist", "train", args.data_dir)
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    train_set, _ = train_val_split(full, 0.1, 0)
    if args.train_subset:
        train_set = train_set.subset(torch.arange(min(args.train_subset, len(train_set))))
    conv_test = test
    if args.conv_test_subset:
        conv_test = test.subset(torch.arange(min(args.conv_test_subset, len(test))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    plan = [("mlp", {}, op, args.epochs, test) for op in args.mlp_operators]
    if not args.skip_conv:
        plan.append(("conv4", {"width": 0.5}, "exact", args.conv_epochs, conv_test))
    records = []
    for model_name, kwargs, operator, epochs, test_set in plan:
        for method in args.methods:
            config = TrainConfig(
                model=model_name,
                model_kwargs=kwargs,
                epochs=epochs,
                lr=LR[method],
                warmup_epochs=0.2 if epochs > 1 else 0.0,
                weight_decay=5e-4 if method == "dense" else 1e-4,
                supermask=supermask(method),
            )
            model, train_s = fit(config, operator, train_set)
            record = {
                "model": model_name,
                "model_kwargs": kwargs,
                "method": method,
                "trained_with": operator,
                "epochs": epochs,
                "train_images": len(train_set),
                "test_images": len(test_set),
                "train_s": train_s,
                **evaluate_both(model, test_set),
            }
            records.append(record)
            print(json.dumps(record), flush=True)
            (out / "study_logmul.json").write_text(json.dumps(records, indent=2))

    print(
        f"\ncommand: python benchmarks/study_logmul.py --train-subset {args.train_subset} "
        f"--epochs {args.epochs} --conv-epochs {args.conv_epochs} "
        f"--conv-test-subset {args.conv_test_subset} --methods {' '.join(args.methods)} "
        f"--mlp-operators {' '.join(args.mlp_operators)}{' --skip-conv' if args.skip_conv else ''} "
        f"--threads {args.threads}\n"
    )
    print(
        "| model | method | trained with | epochs x images | test images | exact inference | "
        "Mitchell inference | change (points) | train (s) | eval exact / Mitchell (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        name = r["model"] + (" w0.5" if r["model_kwargs"] else "")
        print(
            f"| {name} | {r['method']} | {r['trained_with']} | {r['epochs']} x "
            f"{r['train_images']:,} | {r['test_images']:,} | {100 * r['acc_exact']:.2f} % | "
            f"{100 * r['acc_mitchell']:.2f} % | "
            f"{100 * (r['acc_mitchell'] - r['acc_exact']):+.2f} | {r['train_s']:.0f} | "
            f"{r['eval_s_exact']:.1f} / {r['eval_s_mitchell']:.1f} |"
        )


if __name__ == "__main__":
    main()
