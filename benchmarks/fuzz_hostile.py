"""Fuzz run of the hostile-input generators: every case of every family (tests draw a sample).

Each case runs ``hiddenite.cli.main`` in a forked child with a timeout and is counted as a
clean error (exit 2, one line, no traceback, nothing changed), accepted (exit 0 for an input
that may be valid), a traceback, a hang, or another failure. Usage::

    PYTHONPATH=src python benchmarks/fuzz_hostile.py [--flips 200] [--seed 0] [--timeout 30]

``--families`` limits the run; ``--show`` prints each problem found.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hostile_cases import FAMILIES, build_world, generate, metadata_of, run_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flips", type=int, default=200, help="byte flips and cuts per file")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a hang")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--show", action="store_true", help="print every problem")
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = build_world(root / "world")
        cases = [
            c
            for c in generate(*metadata_of(world), seed=args.seed, flips=args.flips)
            if c.family in args.families
        ]
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for i, case in enumerate(cases):
            outcome = run_case(case, world, root / f"case{i}", timeout=args.timeout)
            problem = outcome.problem(case)
            tally = counts[case.family]
            tally["tried"] += 1
            if outcome.hung:
                tally["hangs"] += 1
            elif outcome.traceback:
                tally["tracebacks"] += 1
            elif problem:
                tally["other failures"] += 1
            elif outcome.code == 0:
                tally["accepted (valid input)"] += 1
            else:
                tally["clean errors"] += 1
            if problem and args.show:
                print(f"{case.id}: {problem}", file=sys.stderr)
    seconds = time.perf_counter() - began
    keys = ["tried", "clean errors", "accepted (valid input)", "tracebacks", "hangs",
            "other failures"]  # fmt: skip
    print("| family | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    total: collections.Counter = collections.Counter()
    for family in args.families:
        total.update(counts[family])
        print(f"| {family} | " + " | ".join(str(counts[family][k]) for k in keys) + " |")
    print("| **all** | " + " | ".join(f"**{total[k]}**" for k in keys) + " |")
    print(f"\n{total['tried']} cases in {seconds:.0f} s (seed {args.seed}, flips {args.flips})")
    return 0 if total["tried"] == total["clean errors"] + total["accepted (valid input)"] else 1


if __name__ == "__main__":
    sys.exit(main())
