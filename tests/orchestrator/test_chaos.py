"""Chaos: a 3-trial sweep on real Ray with preemptions with a long notice, a too-short notice and none.

Every trial must finish with the adapter it would have had without interruption (bit-identical on CPU), a
notice long enough to save must lose no step, and the ledger, report and logs must tell the story.
"""
from __future__ import annotations

import json

import pytest

from orchestrator.run.ledger import compute_ledger
from orchestrator.run.state import StateStore
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, controller_record, leftover_processes, only_run, reference_adapter,
    spottune, tiny_sweep, warm_model_cache,
)

pytestmark = pytest.mark.slow

# Tiny-model steps take well under 0.1 s on a quiet machine, faster than the market notices a step and a
# 0.5 s notice runs out: enough steps after the preemption point keep every trial running until it lands.
STEPS = 25  # one epoch of the copywriting rows at this sequence length and batch
PREEMPTIONS = [
    {"trial": 0, "at_step": 4, "notice_s": 60},  # long notice: emergency checkpoint, nothing lost
    {"trial": 1, "at_step": 5, "notice_s": 0},  # no notice: hard kill
    {"trial": 2, "at_step": 4, "notice_s": 0.5},  # notice too short to save: killed at the deadline
]


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chaos")
    spec = tiny_sweep(
        directory, "chaos", max_steps=STEPS,
        search={"parameters": {"training.learning_rate": [1.0e-3, 2.0e-3, 3.0e-3]}},
        max_parallel=3,
        provider_settings={"local": {"market": {"seed": 1, "capacity_cooldown_s": 600, "preemptions": PREEMPTIONS}}},
    )
    state_dir = directory / "state"
    warm_model_cache()
    result = spottune("submit", str(spec), "--state-dir", str(state_dir), "--interval", "30")
    run_id = only_run(state_dir)
    return {"result": result, "state_dir": state_dir, "run": run_id, "store": directory / "store" / run_id,
            "state": StateStore(state_dir), "directory": directory}


def test_every_trial_succeeds(chaos):
    assert chaos["result"].returncode == 0, chaos["result"].stdout[-3000:] + chaos["result"].stderr[-3000:]
    trials = chaos["state"].trials(chaos["run"])
    assert [trial.state for trial in trials] == ["succeeded"] * 3
    assert [trial.preemptions for trial in trials] == [1, 1, 1]
    assert all(trial.errors == 0 for trial in trials)
    assert "preempted (notice_checkpoint)" in chaos["result"].stdout


def test_adapters_bit_identical_to_uninterrupted_runs(chaos, tmp_path):
    for trial in chaos["state"].trials(chaos["run"]):
        expected = reference_adapter(trial.config, tmp_path / trial.id)
        assert_bit_identical(adapter_tensors(chaos["store"] / trial.id / "adapter"), expected)


def test_preemption_causes_and_no_step_lost_with_a_long_notice(chaos):
    state, run_id = chaos["state"], chaos["run"]
    causes = {}
    for trial in state.trials(run_id):
        events = state.events(run_id, trial.id)
        preempted = next(e for e in events if e.kind == "preempted")
        causes[trial.idx] = preempted.detail["cause"]
        resumed = next(e for e in events if e.kind == "training" and e.attempt == 2)
        assert resumed.step == preempted.step + 1, "the second attempt starts right after the committed step"
        if trial.idx == 0:
            assert preempted.detail["lost_steps"] == 0
            assert preempted.step == preempted.detail["reached_step"]
        launches = [e for e in events if e.kind == "launch"]
        assert launches[1].step == preempted.step
        assert launches[1].detail["gpu"] != launches[0].detail["gpu"], "spot capacity of the reclaimed GPU is gone"
    assert causes == {0: "notice_checkpoint", 1: "killed_without_notice", 2: "killed_after_notice"}


def test_every_step_has_a_loss_and_retrained_steps_match(chaos):
    state, run_id = chaos["state"], chaos["run"]
    for trial in state.trials(run_id):
        rows = state.metrics(run_id, trial.id)
        by_step: dict[int, set] = {}
        for _, step, value, _ in rows:
            by_step.setdefault(step, set()).add(value)
        assert sorted(by_step) == list(range(1, STEPS + 1))
        assert all(len(values) == 1 for values in by_step.values()), "a retrained step gave another loss"


def test_ledger_is_consistent_with_events(chaos):
    state, run_id = chaos["state"], chaos["run"]
    events = state.events(run_id)
    launches = [(e.trial_id, e.attempt) for e in events if e.kind == "launch"]
    terminated = [(e.trial_id, e.attempt) for e in events if e.kind == "terminated"]
    assert sorted(launches) == sorted(terminated) and len(launches) == 6
    run = state.run(run_id)
    ledger = compute_ledger(events, run.finished)
    assert ledger.usd == pytest.approx(sum(cost.usd for cost in ledger.trials.values()))
    for cost in ledger.trials.values():
        spans = sorted((line.start, line.end) for line in cost.nodes)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
        assert cost.usd == pytest.approx(sum(l.price_per_hour * (l.end - l.start) / 3600 for l in cost.nodes))
        assert cost.wasted_usd["preemption"] > 0


def test_report_json_and_png(chaos):
    result = spottune("report", chaos["run"], "--state-dir", str(chaos["state_dir"]), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["best"]["trial_id"] in {trial.id for trial in chaos["state"].trials(chaos["run"])}
    assert len(report["resume_latency"]) == 3
    assert all(sample["total"] > 0 for sample in report["resume_latency"])
    with open(report["png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_logs_and_status(chaos):
    trial = chaos["state"].trials(chaos["run"])[0]
    logs = spottune("logs", f"{chaos['run']}/{trial.id}", "--state-dir", str(chaos["state_dir"]))
    assert "preemption notice" in logs.stdout and "saving and stopping" in logs.stdout
    status = spottune("status", chaos["run"], "--state-dir", str(chaos["state_dir"]), "--json")
    assert json.loads(status.stdout)["status"] == "succeeded"


def test_nothing_left_running(chaos):
    assert leftover_processes(controller_record(chaos["state_dir"], chaos["run"]), chaos["state_dir"] / chaos["run"]) == []
