"""Accuracy and modelled energy of the command line's precision flags, end to end.

Trains the same hidden network (one seed) with each precision setting through
``hiddenite train`` (in process, :func:`hiddenite.cli.main`), evaluates it with
``hiddenite eval --json`` (exact and Mitchell inference where they differ), exports it to a
``.hnn`` file and costs that file with ``hiddenite simulate --json`` (energy per inference on
the Hiddenite and INT8 presets: the file's declared activation bits and operators are what the
model charges). Prints one Markdown table.

Settings: exact; ``--operator mitchell`` (both phases); ``--act-bits 8``; ``--act-bits 4``;
``--act-bits 4 --operator mitchell``.

Usage::

    python benchmarks/study_precision_cli.py --out /tmp/prec            # MLP, all data, 5 epochs
    python benchmarks/study_precision_cli.py --train-subset 5000 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from hiddenite.cli import main

SETTINGS = {
    "exact": [],
    "mitchell": ["--operator", "mitchell"],
    "act8": ["--act-bits", "8"],
    "act4": ["--act-bits", "4"],
    "act4+mitchell": ["--act-bits", "4", "--operator", "mitchell"],
}


def cli(argv: list[str]) -> str:
    """Run one command in process; its stdout (a non-zero exit code raises)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"hiddenite {' '.join(argv)} exited with {code}")
    return buf.getvalue()


def main_study() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/precision-cli", help="folder for runs and files")
    p.add_argument("--model", default="mlp")
    p.add_argument("--model-arg", action="append", default=[])
    p.add_argument("--train-subset", type=int, default=0, help="0: all training examples")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset")
    args = p.parse_args()
    out = Path(args.out)
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    model = ["--model", args.model, *(x for a in args.model_arg for x in ("--model-arg", a))]
    rows = []
    for name in args.settings.split(","):
        run = out / name
        began = time.perf_counter()
        cli(["train", *model, "--epochs", str(args.epochs), "--train-subset",
             str(args.train_subset), "--seed", str(args.seed), "--no-progress", "--out",
             str(run), *data, *SETTINGS[name]])  # fmt: skip
        seconds = time.perf_counter() - began
        evals = {}
        for op in ("exact", "mitchell"):
            doc = json.loads(cli(["eval", str(run), "--json", "--operator", op, *data]))
            evals[op] = doc["accuracy"]
        hnn = out / f"{name}.hnn"
        cli(["export", str(run), "-o", str(hnn)])
        sim = json.loads(
            cli(
                ["simulate", str(hnn), "--arch", "all", "--json", "--out", str(out / f"sim-{name}")]
            )
        )
        energy = {
            a: sim["reports"][a]["energy_per_inference_pj"] / 1e6 for a in ("hiddenite", "int8")
        }
        rows.append((name, seconds, evals, energy, sim["source"]))
    print(
        "| setting | train s | test acc, exact inference | test acc, Mitchell inference "
        "| act bits (file) | log layers (file) | hiddenite uJ/inf | INT8 uJ/inf |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, seconds, evals, energy, source in rows:
        bits = sorted(set(source["act_bits"].values())) or ["-"]
        print(f"| {name} | {seconds:.0f} | {evals['exact']:.4f} | {evals['mitchell']:.4f} "
              f"| {','.join(map(str, bits))} | {len(source['log_datapath_layers'])} "
              f"| {energy['hiddenite']:.3f} | {energy['int8']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main_study()
