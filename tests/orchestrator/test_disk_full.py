"""Disk full: a checkpoint upload fails with ENOSPC, the trial fails with its older checkpoint intact, and
`spottune resume RUN --retry-failed` (after the cause is fixed) finishes it with the adapter of an
uninterrupted run. Without the flag, resume says how to retry instead of only "nothing to resume"."""
from __future__ import annotations

import pytest

from cluster.processes import start_ticks
from orchestrator.run.state import StateStore
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, controller_record, only_run, reference_adapter, spottune, tiny_sweep,
    wait_for, warm_model_cache,
)

pytestmark = pytest.mark.slow

STEPS, EVERY, FULL_AT = 8, 3, 6


def test_failed_trial_resumes_with_retry_failed_and_matches_an_uninterrupted_run(tmp_path):
    spec = tiny_sweep(
        tmp_path, "diskfull", max_steps=STEPS, checkpoint={"every_steps": EVERY, "keep": 2},
        search={"parameters": {"training.learning_rate": [1.0e-3]}}, max_parallel=1, max_error_retries=0,
        provider_settings={"local": {"market": {
            "storage_faults": [{"trial": 0, "attempt": 1, "step": FULL_AT, "kind": "disk_full"}]}}},
    )
    state_dir = tmp_path / "state"
    warm_model_cache()
    submitted = spottune("submit", str(spec), "--state-dir", str(state_dir), "--interval", "60")
    assert submitted.returncode == 1, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    run_id = only_run(state_dir)
    state = StateStore(state_dir)
    trial = state.trials(run_id)[0]
    error = [e for e in state.events(run_id, trial.id) if e.kind == "error"][-1]
    assert trial.state == "failed" and "No space left on device" in error.detail["error"]
    trial_store = tmp_path / "store" / run_id / trial.id
    assert (trial_store / "checkpoints" / "latest").read_text().strip() == str(EVERY)

    first = controller_record(state_dir, run_id)  # it has released the run; let its process end too
    wait_for(lambda: start_ticks(first.pid) != first.ticks, timeout=60, what="the first controller to exit")
    plain = spottune("resume", run_id, "--state-dir", str(state_dir))
    assert plain.returncode == 0 and "--retry-failed` relaunches them" in plain.stdout

    resumed = spottune("resume", run_id, "--retry-failed", "--state-dir", str(state_dir), "--interval", "60")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert f"retrying 1 failed trial(s): {trial.id}" in resumed.stdout
    trial = state.trials(run_id)[0]
    assert (trial.state, trial.step) == ("succeeded", STEPS)
    relaunch = [e for e in state.events(run_id, trial.id) if e.kind == "launch"][-1]
    assert (relaunch.attempt, relaunch.step) == (2, EVERY)
    expected = reference_adapter(trial.config, tmp_path / "reference")
    assert_bit_identical(adapter_tensors(trial_store / "adapter"), expected)
