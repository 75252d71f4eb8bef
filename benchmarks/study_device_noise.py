"""Programming noise on an analog device: the analog method against edge-popup (seed 001).

Loads model files written by ``benchmarks/study_methods.py`` (an ``analog`` one and an
``edge-popup`` one of the same architecture), programs them on a simulated analog device with
a relative Gaussian error on every stored value, and reports the Fashion-MNIST test accuracy
against the noise level (mean and spread over several noise seeds). The analog network's
missing connections are not wired, so they stay exactly zero; the edge-popup network's pruned
weights are cells programmed to zero, so they pick up noise like the kept ones
(:mod:`hiddenite.device_noise`).

Usage::

    python benchmarks/study_device_noise.py --analog runs/methods/analog_2-bit_k0.3.hnn \
        --edge-popup runs/methods/edge-popup_k0.3.hnn --seeds 3

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from hiddenite import load
from hiddenite.data import load_dataset
from hiddenite.device_noise import edge_popup_with_device_noise, with_noise
from hiddenite.train import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analog", required=True, help="an analog .hnn file")
    parser.add_argument("--edge-popup", required=True, help="an edge-popup .hnn file")
    parser.add_argument("--noise", nargs="+", type=float, default=[0, 0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    analog, popup = load(args.analog), load(args.edge_popup)
    print(f"analog file {args.analog}; edge-popup file {args.edge_popup}; {len(test)} test images")
    print("\n| relative noise | analog accuracy | edge-popup accuracy (noisy zeros) |")
    print("|---|---|---|")
    for sigma in args.noise:
        cells = []
        for build in (
            lambda seed, s=sigma: with_noise(analog, s, seed),
            lambda seed, s=sigma: edge_popup_with_device_noise(popup, s, seed),
        ):
            accs = [
                100 * evaluate(build(seed).eval(), test)["accuracy"] for seed in range(args.seeds)
            ]
            spread = statistics.pstdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.2f} % ± {spread:.2f}")
        print(f"| {sigma:g} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
