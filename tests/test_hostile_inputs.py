"""Hostile inputs at every entry point: each generated case must end in exit code 2 with one
line on stderr, no traceback, no hang, and no file changed (``tests/hostile_cases.py`` holds
the generators; ``benchmarks/fuzz_hostile.py`` runs all of them).

Each family draws a fixed sample of its cases; every case runs ``hiddenite.cli.main`` in a
forked child killed after a timeout, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import random

import pytest
import torch

import hostile_cases
from hostile_cases import FAMILIES, build_world, generate, metadata_of, run_case

SAMPLE = {"checkpoint": 40, "model-file": 25, "spec": 16, "command-line": 45, "special-file": 30}
TIMEOUT_S = 20.0

pytestmark = pytest.mark.skipif(not hasattr(hostile_cases.os, "fork"), reason="needs fork")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # forked children must not inherit a busy thread pool
    try:
        yield build_world(tmp_path_factory.mktemp("world"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cases(world):
    return generate(*metadata_of(world), seed=0, flips=6)


def test_every_family_has_cases(cases):
    counts = {f: sum(c.family == f for c in cases) for f in FAMILIES}
    assert all(n >= 20 for n in counts.values()), counts
    assert len({c.id for c in cases}) == len(cases)


@pytest.mark.parametrize("family", FAMILIES)
def test_hostile_inputs_fail_cleanly(world, cases, family, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mine = [c for c in cases if c.family == family]
        sample = random.Random(family).sample(mine, min(SAMPLE[family], len(mine)))
        problems = []
        for i, case in enumerate(sample):
            outcome = run_case(case, world, tmp_path / f"case{i}", timeout=TIMEOUT_S)
            problem = outcome.problem(case)
            if problem:
                problems.append(f"{case.id}: {problem}")
    finally:
        torch.set_num_threads(threads)
    assert not problems, "\n".join(problems)


def test_the_runner_sees_tracebacks_hangs_and_changes(world, tmp_path):
    """The checks above can fail: a bug, a hang and a write are each reported."""

    def crash(w, f):  # a fine command line; the child breaks the command itself
        return ["summary", "--model", "mlp"]

    def boom(w, f):
        import hiddenite.cli as cli

        def broken(args):
            raise ZeroDivisionError("a bug")

        cli._cmd_summary = broken

    case = hostile_cases.Case("x", "bug", crash, child=boom)
    outcome = run_case(case, world, tmp_path / "a")
    assert outcome.traceback and "internal error" in outcome.stderr
    assert "traceback" in outcome.problem(case)

    def hang(w, f):
        import time

        import hiddenite.cli as cli

        cli._cmd_summary = lambda args: time.sleep(60)

    outcome = run_case(hostile_cases.Case("x", "hang", crash, child=hang), world, tmp_path / "b",
                       timeout=2)  # fmt: skip
    assert outcome.hung and outcome.code is None

    def write(w, f):
        return ["export", str(w.run_sgd), "-o", str(f / "out.hnn")]

    case = hostile_cases.Case("x", "write", write)
    outcome = run_case(case, world, tmp_path / "c")
    assert outcome.code == 0 and outcome.changed
    assert "changed files" in outcome.problem(case)
