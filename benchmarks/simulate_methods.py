"""Off-chip model bytes and modelled energy of every method's model file on the three presets.

Runs :func:`hiddenite.hw.compare` on each ``.hnn`` file in a folder (e.g. the files
``benchmarks/study_methods.py`` writes): the Hiddenite preset charges each layer what its
method declares (regenerated weights and coded parts, or stored weights), the BNN and INT8
presets model the same network as their own baselines. All figures are modelled, not measured.

Usage::

    python benchmarks/simulate_methods.py runs/methods

Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hiddenite.fileformat import read_header
from hiddenite.hw import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder of .hnn files")
    args = parser.parse_args()
    files = sorted(Path(args.folder).glob("*.hnn"))
    if not files:
        raise SystemExit(f"no .hnn files in {args.folder}")
    print(
        "| file | methods | file bytes | Hiddenite off-chip model B | BNN | INT8 | "
        "Hiddenite / BNN | Hiddenite energy uJ | BNN uJ | INT8 uJ |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in files:
        totals = read_header(path).totals()
        reports = compare(path)
        model = {a: r.totals["offchip_model_bytes"] for a, r in reports.items()}
        energy = {a: r.totals["energy_pj"] / 1e6 for a, r in reports.items()}
        print(
            f"| {path.stem} | {', '.join(totals['methods'])} | {totals['file_bytes']:,} | "
            f"{model['hiddenite']:,} | {model['bnn']:,} | {model['int8']:,} | "
            f"{model['hiddenite'] / model['bnn']:.3f} | {energy['hiddenite']:.1f} | "
            f"{energy['bnn']:.1f} | {energy['int8']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
