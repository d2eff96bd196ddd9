"""Eight `submit`s registering at the same moment each get their own run, with no lock or constraint error."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

from orchestrator.run.state import StateStore
from tests.orchestrator.sweeps import tiny_sweep

PROCESSES = 8


def _register(spec: str, state_dir: str, barrier) -> str:
    from orchestrator.run.submission import prepare, register

    prepared = prepare(Path(spec))
    barrier.wait()
    try:
        return register(prepared, Path(state_dir))[1]
    except Exception as error:  # reported back to the test, which names it
        return f"{type(error).__name__}: {error}"


def test_eight_simultaneous_registrations_get_distinct_runs(tmp_path):
    spec = tiny_sweep(tmp_path, "race")
    state_dir = tmp_path / "state"
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(PROCESSES)
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(_register, [(str(spec), str(state_dir), barrier)] * PROCESSES)
    assert all(result.startswith("race-") for result in results), results
    assert len(set(results)) == PROCESSES
    runs = StateStore(state_dir).runs()
    assert sorted(run.id for run in runs) == sorted(results)
    assert all(len(StateStore(state_dir).trials(run.id)) == 2 for run in runs)
