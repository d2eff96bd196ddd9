"""Controller crash: kill -9 the controller mid-sweep, `spottune resume RUN`, and lose nothing.

The killed controller's Ray instance dies with it (whatever survives is reaped by PID on resume); the new
controller closes the open attempts, relaunches them from the committed checkpoints, and the sweep ends
with the same adapters as uninterrupted runs, every step's loss recorded and a consistent ledger.
"""
from __future__ import annotations

import os
import signal

import pytest

from cluster.processes import start_ticks
from orchestrator.run.ledger import compute_ledger
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, controller_record, leftover_processes, reference_adapter, spottune,
    submit_detached, tiny_sweep, wait_for,
)

pytestmark = pytest.mark.slow

STEPS, EVERY = 24, 5  # the data set gives 25 steps per epoch


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("crash")
    spec = tiny_sweep(directory, "crash", max_steps=STEPS, checkpoint={"every_steps": EVERY, "keep": 2})
    state_dir = directory / "state"
    run_id, state = submit_detached(spec, state_dir)

    def training_with_a_checkpoint():
        for trial in state.trials(run_id):
            steps = [e.step for e in state.events(run_id, trial.id) if e.kind == "checkpoint"]
            if trial.state == "running" and steps and max(steps) >= EVERY:
                return True
        return False

    wait_for(training_with_a_checkpoint, timeout=600, what="a trial training past its first checkpoint", every=0.1)
    first = controller_record(state_dir, run_id)
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: start_ticks(first.pid) != first.ticks, timeout=30, what="the controller to die")
    before = {trial.id: (trial.state, state.events(run_id, trial.id)) for trial in state.trials(run_id)}
    resumed = spottune("resume", run_id, "--state-dir", str(state_dir), "--interval", "30")
    return {"run": run_id, "state": state, "state_dir": state_dir, "before": before, "resumed": resumed,
            "first": first, "second": controller_record(state_dir, run_id), "store": directory / "store" / run_id}


def test_resume_completes_the_sweep(crashed):
    assert crashed["resumed"].returncode == 0, crashed["resumed"].stdout[-3000:] + crashed["resumed"].stderr[-2000:]
    assert [t.state for t in crashed["state"].trials(crashed["run"])] == ["succeeded", "succeeded"]
    assert crashed["second"].pid != crashed["first"].pid


def test_nothing_lost_and_nothing_retrained_beyond_the_last_checkpoint(crashed):
    state, run_id = crashed["state"], crashed["run"]
    interrupted = 0
    for trial_id, (state_at_crash, events_before) in crashed["before"].items():
        if state_at_crash not in ("provisioning", "running"):
            continue
        interrupted += 1
        events = state.events(run_id, trial_id)
        lost = next(e for e in events if e.kind == "lost")
        assert lost.detail["cause"] == "controller_restart" and lost.state == "preempted"
        known = max([e.step for e in events_before if e.kind == "checkpoint"], default=0)
        relaunch = next(e for e in events if e.kind == "launch" and e.attempt == lost.attempt + 1)
        assert relaunch.step >= known, "a checkpoint committed before the crash was not used"
        trained = [e.step for e in events if e.kind == "training" and e.attempt == relaunch.attempt]
        # Workers of the dead controller may train on (even to the end) until the next controller reaps them.
        assert trained == ([] if relaunch.step == STEPS else [relaunch.step + 1])
        old_steps = [step for attempt, step, _, _ in state.metrics(run_id, trial_id) if attempt == lost.attempt]
        assert max(old_steps, default=0) - relaunch.step < EVERY, "retrained more than one checkpoint interval"
    assert interrupted >= 1
    assert any(e.kind == "checkpoint" for _, events in crashed["before"].values() for e in events)


def test_every_step_recorded_and_adapters_identical(crashed, tmp_path):
    state, run_id = crashed["state"], crashed["run"]
    for trial in state.trials(run_id):
        assert sorted({step for _, step, _, _ in state.metrics(run_id, trial.id)}) == list(range(1, STEPS + 1))
        assert_bit_identical(adapter_tensors(crashed["store"] / trial.id / "adapter"),
                             reference_adapter(trial.config, tmp_path / trial.id))


def test_ledger_consistent_across_the_crash(crashed):
    state, run_id = crashed["state"], crashed["run"]
    events = state.events(run_id)
    launches = sorted((e.trial_id, e.attempt) for e in events if e.kind == "launch")
    assert launches == sorted((e.trial_id, e.attempt) for e in events if e.kind == "terminated")
    ledger = compute_ledger(events, state.run(run_id).finished)
    for cost in ledger.trials.values():
        spans = sorted((line.start, line.end) for line in cost.nodes)
        assert all(start <= end for start, end in spans)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    assert ledger.usd == pytest.approx(sum(cost.usd for cost in ledger.trials.values()))
    assert "controller" in ledger.wasted_usd


def test_no_process_of_either_controller_survives(crashed):
    assert leftover_processes(crashed["first"], crashed["state_dir"] / crashed["run"]) == []
    assert leftover_processes(crashed["second"], crashed["state_dir"] / crashed["run"]) == []


def test_resume_refuses_a_finished_run(crashed):
    again = spottune("resume", crashed["run"], "--state-dir", str(crashed["state_dir"]))
    assert again.returncode == 0 and "nothing to resume" in again.stdout
