"""Typed events: written once through StateStore.record, stored as strings and JSON, read back by the ledger,
the progress views and the report; runs written before the types existed read back unchanged."""
from __future__ import annotations

import json

import pytest

from cluster.node.preemption import PreemptionCause
from orchestrator.run.events import (
    DETAILS, Budget, CapacityRefused, Checkpoint, CheckpointSkipped, Error, EventKind, Launch, Lost, NodeLost, Notice,
    OrphanTerminated, Preempted, Retry, Stopped, StorageRestored, StorageUnavailable, Succeeded, Training, Waiting, WorkersStarted,
)
from orchestrator.run.ledger import compute_ledger
from orchestrator.views.progress import describe_event
from orchestrator.views.report import build_report, render_text, resume_latencies
from orchestrator.run.state import StateStore
from orchestrator.run.tracking import trial_summary

TRIAL = "t000-aaaaaa"
PRICE = 3600.0  # $/h: a second costs a dollar
EXAMPLES = [
    Waiting("no offer fits right now"),
    Budget(spent=1.5, budget=2.0),
    Launch("L4", "spot", "1xL4 spot local/local $0.2830/h", 3, 0.01, 2.5, 0.2, {"checkpoint.every_steps": 4}),
    WorkersStarted(2),
    Training(step_seconds=0.5, resumed_from=3),
    Checkpoint(save_seconds=0.25),
    CheckpointSkipped(["step-00000004: missing adapter_model.safetensors"], 2),
    StorageUnavailable("EndpointConnectionError: no route", "worker"),
    StorageRestored("controller"),
    Notice(deadline=1005.0, notice_s=5.0, reason="spot capacity reclaimed (schedule), 5 s notice"),
    NodeLost("spot capacity reclaimed (schedule)"),
    OrphanTerminated("1xL4 spot local/local $0.2830/h"),
    Preempted(PreemptionCause.NOTICE_CHECKPOINT, "spot capacity reclaimed", 6, 0),
    Lost(PreemptionCause.CONTROLLER_RESTART, "node lost while the controller was down"),
    Error("RuntimeError: boom", True, 1, 2),
    Succeeded(train_loss=1.25, eval_loss=1.5),
    Stopped(eval_loss=2.5, reached_step=4, total_steps=10, saved_usd=0.002, pruner="median"),
    Retry(errors=3),
    CapacityRefused("aws:g5.xlarge:us-east-1/us-east-1a:spot", "InsufficientInstanceCapacity",
                    "We currently do not have sufficient g5.xlarge capacity in the Availability Zone you requested."),
]


def _store(tmp_path) -> StateStore:
    store = StateStore(tmp_path)
    rows = [{"id": TRIAL, "index": 0, "params": {}, "config": {}, "total_steps": 10}]
    store.create_run("r1", "demo", "spec.yaml", {"name": "demo"}, "file:///tmp/x", rows)
    return store


def test_every_kind_with_a_detail_has_an_example():
    assert {type(example) for example in EXAMPLES} == set(DETAILS.values())


def test_each_detail_reads_back_as_it_was_written(tmp_path):
    store = _store(tmp_path)
    for example in EXAMPLES:
        store.record("r1", TRIAL, example)
    events = store.events("r1", TRIAL)[1:]
    assert [event.kind for event in events] == [example.kind for example in EXAMPLES]
    assert all(isinstance(event.kind, EventKind) for event in events)
    assert [event.data for event in events] == EXAMPLES
    raw = store._db.execute("SELECT kind, detail FROM events WHERE kind = 'preempted'").fetchone()
    assert (raw["kind"], json.loads(raw["detail"])) == (
        "preempted", {"cause": "notice_checkpoint", "reason": "spot capacity reclaimed", "reached_step": 6,
                      "lost_steps": 0})


def test_a_kind_nobody_defined_is_refused(tmp_path):
    with pytest.raises(ValueError, match="premptd"):
        _store(tmp_path).record("r1", TRIAL, "premptd")


def test_rows_of_older_runs_and_newer_kinds_read_back(tmp_path):
    store = _store(tmp_path)
    store._db.execute("INSERT INTO events (run_id, trial_id, time, kind, detail) VALUES "
                      "('r1', ?, 1.0, 'preempted', '{\"cause\": \"killed_without_notice\"}'), "
                      "('r1', ?, 2.0, 'a_kind_from_a_newer_version', '{\"x\": 1}')", (TRIAL, TRIAL))
    old, newer = store.events("r1", TRIAL)[1:]
    assert old.data == Preempted("killed_without_notice", None, None, None)
    assert old.detail == {"cause": "killed_without_notice"}
    assert (newer.kind, newer.data) == ("a_kind_from_a_newer_version", None)
    assert describe_event(old).endswith("preempted (killed_without_notice) at step None, committed None, "
                                        "None step(s) to redo")
    assert describe_event(newer).endswith(f"{TRIAL} a_kind_from_a_newer_version")


def test_a_preempted_attempt_reads_back_in_ledger_progress_and_report(tmp_path):
    store = _store(tmp_path)
    node = dict(offer="local:local:sim-l4-x1:spot", price=PRICE)

    def attempt(number, start, resume_from, events):
        common = dict(attempt=number, node=f"n{number}", **node)
        launch = Launch("L4", "spot", f"1xL4 a{number}", resume_from, 0.5, 3.0, 0.25, {})
        store.record("r1", TRIAL, launch, "provisioning", count="attempts", now=start, step=resume_from, **common)
        for event, state, when, extra in events:
            store.record("r1", TRIAL, event, state, now=when, **common, **extra)

    attempt(1, 100.0, 0, [
        (EventKind.NODE_RUNNING, "running", 101.0, {}),
        (WorkersStarted(1), None, 102.0, {}),
        (Training(step_seconds=1.0, resumed_from=0), None, 110.0, {"step": 1}),
        (Notice(118.0, 5.0, "spot capacity reclaimed"), None, 113.0, {}),
        (Checkpoint(0.5), None, 115.0, {"step": 4}),
        (NodeLost("spot capacity reclaimed"), None, 118.0, {}),
        (Preempted(PreemptionCause.NOTICE_CHECKPOINT, "spot capacity reclaimed", 4, 0), "preempted", 118.5,
         {"step": 4, "count": "preemptions"}),
        (EventKind.TERMINATED, None, 118.0, {}),
    ])
    attempt(2, 120.0, 4, [
        (EventKind.NODE_RUNNING, "running", 122.0, {}),
        (WorkersStarted(1), None, 125.0, {}),
        (Training(step_seconds=2.0, resumed_from=4), None, 131.0, {"step": 5}),
        (Succeeded(0.9, 1.1), "succeeded", 140.0, {"step": 10}),
        (EventKind.TERMINATED, None, 140.0, {}),
    ])
    events = store.events("r1")

    cost = compute_ledger(events, now=1000.0).trials[TRIAL]
    assert [(line.outcome, line.first_step_start) for line in cost.nodes] == [("preemption", 109.0),
                                                                              ("succeeded", 129.0)]
    assert cost.wasted_usd == {"preemption": pytest.approx((118.0 - 115.0) + (129.0 - 120.0))}

    lines = [describe_event(event).split(" ", 2)[2] for event in events]
    assert "preemption notice, 5.0 s to the deadline" in lines
    assert "preempted (notice_checkpoint) at step 4, committed 4, 0 step(s) to redo" in lines
    assert "attempt 2 on 1xL4 a2, from step 4" in lines
    assert "succeeded at step 10, eval loss 1.1000" in lines

    [latency] = resume_latencies(events)
    assert (latency.attempt, latency.cause) == (2, "notice_checkpoint")
    assert latency.detect == pytest.approx(118.5 - 118.0)  # from the node's loss
    assert (latency.boot, latency.workers, latency.first_step) == (2.0, 3.0, 2.0)
    assert latency.restore == pytest.approx(129.0 - 125.0)
    assert latency.total == pytest.approx(131.0 - 118.0)

    summary = trial_summary(store, "r1", store.trial("r1", TRIAL))
    assert summary["tags"]["spottune.offer"] == "1xL4 a1"
    assert (summary["final"]["predicted_usd"], summary["final"]["predicted_vram_gib"],
            summary["final"]["predicted_step_seconds"]) == (0.5, 3.0, 0.25)
    assert summary["final"]["preemptions"] == 1.0


def test_capacity_refusals_show_in_status_lines_and_the_report(tmp_path):
    store = _store(tmp_path)
    first, second = "aws:g5.xlarge:us-east-1/us-east-1a:spot", "aws:g5.xlarge:us-east-1/us-east-1b:spot"
    for offer in (first, second, first):
        store.record("r1", TRIAL, CapacityRefused(offer, "InsufficientInstanceCapacity", "no capacity"), attempt=1)
    launch = Launch("L4", "spot", "1xL4 spot aws/us-east-1 $0.8000/h", 0, 0.5, 3.0, 0.25, {})
    store.record("r1", TRIAL, launch, "provisioning", attempt=1, node="i-0abc", offer="aws:g6.xlarge:us-east-1/"
                 "us-east-1a:spot", price=0.8, count="attempts", step=0)
    lines = [describe_event(event).split(" ", 2)[2] for event in store.events("r1")]
    assert f"capacity refused: {first}: InsufficientInstanceCapacity" in lines
    assert store.trial("r1", TRIAL).offer == "aws:g6.xlarge:us-east-1/us-east-1a:spot", "a refusal is not the offer"
    report = build_report(store, "r1")
    assert [(r["offer"], r["code"], r["attempt"]) for r in report["capacity_refusals"]] == [
        (first, "InsufficientInstanceCapacity", 1), (second, "InsufficientInstanceCapacity", 1),
        (first, "InsufficientInstanceCapacity", 1)]
    text = render_text(report)
    assert f"  {first}: InsufficientInstanceCapacity x2" in text
    assert f"  {second}: InsufficientInstanceCapacity x1" in text
    node_line = next(line for line in text.splitlines() if line.startswith(TRIAL) and "i-0abc" in line)
    assert "aws:g6.xlarge:us-east-1/us-east-1a:spot" in node_line and "0.8000" in node_line
