"""Run state in SQLite: validated transitions, the event log, metrics, and the ledger computed from events."""
from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.run.events import EventKind, Training
from orchestrator.run.ledger import compute_ledger
from orchestrator.run.state import StateStore

PRICE = 3600.0  # $/h, so a second costs a dollar


def _store(tmp_path, trials=("t000-aaaaaa",)) -> StateStore:
    store = StateStore(tmp_path)
    rows = [{"id": t, "index": i, "params": {}, "config": {}, "total_steps": 10} for i, t in enumerate(trials)]
    store.create_run("r1", "demo", "spec.yaml", {"name": "demo"}, "file:///tmp/x", rows)
    return store


def _attempt(store, attempt, start, events):
    common = dict(attempt=attempt, node=f"n{attempt}", offer="local:local:sim-l4-x1:spot", price=PRICE)
    store.record("r1", "t000-aaaaaa", EventKind.LAUNCH, "provisioning", count="attempts", now=start, step=0, **common)
    for event, state, when, extra in events:
        store.record("r1", "t000-aaaaaa", event, state, now=when, **common, **extra)


def test_illegal_transitions_are_refused(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(RuntimeError, match="illegal transition pending -> succeeded"):
        store.record("r1", "t000-aaaaaa", "succeeded", "succeeded")
    store.record("r1", "t000-aaaaaa", "launch", "provisioning", attempt=1)
    store.record("r1", "t000-aaaaaa", "cancelled", "cancelled")
    with pytest.raises(RuntimeError, match="illegal transition cancelled -> provisioning"):
        store.record("r1", "t000-aaaaaa", "launch", "provisioning", attempt=2)
    assert [e.kind for e in store.events("r1")] == ["submitted", "launch", "cancelled"]


def test_metrics_keep_the_first_record_per_attempt_and_step(tmp_path):
    store = _store(tmp_path)
    store.add_metrics("r1", "t000-aaaaaa", 1, [(1, "loss", 2.0, 10.0), (2, "loss", 1.5, 11.0)])
    store.add_metrics("r1", "t000-aaaaaa", 1, [(2, "loss", 9.9, 12.0)])
    store.add_metrics("r1", "t000-aaaaaa", 2, [(2, "loss", 1.5, 20.0)])
    assert store.metrics("r1", "t000-aaaaaa") == [(1, 1, 2.0, 10.0), (1, 2, 1.5, 11.0), (2, 2, 1.5, 20.0)]


def test_ledger_charges_lost_work_and_restart_to_the_preemption(tmp_path):
    store = _store(tmp_path)
    _attempt(store, 1, 100.0, [
        ("node_running", "running", 101.0, {}),
        (Training(step_seconds=1.0, resumed_from=0), None, 110.0, {"step": 1}),
        ("checkpoint", None, 120.0, {"step": 3}),
        ("node_lost", None, 125.0, {}),
        ("preempted", "preempted", 125.5, {"step": 3, "count": "preemptions"}),
        ("terminated", None, 125.0, {}),
    ])
    _attempt(store, 2, 126.0, [
        ("node_running", "running", 127.0, {}),
        (Training(step_seconds=2.0, resumed_from=3), None, 140.0, {"step": 4}),
        ("succeeded", "succeeded", 150.0, {"step": 10}),
        ("terminated", None, 150.0, {}),
    ])
    ledger = compute_ledger(store.events("r1"), now=1000.0)
    cost = ledger.trials["t000-aaaaaa"]
    assert [(line.start, line.end, line.outcome) for line in cost.nodes] == [
        (100.0, 125.0, "preemption"), (126.0, 150.0, "succeeded")]
    assert cost.usd == pytest.approx(25.0 + 24.0)
    assert cost.wasted_usd == {"preemption": pytest.approx(5.0 + 12.0)}  # after the checkpoint + launch->step start
    assert ledger.usd == pytest.approx(cost.usd)
    trial = store.trial("r1", "t000-aaaaaa")
    assert (trial.state, trial.attempts, trial.preemptions, trial.step) == ("succeeded", 2, 1, 10)


def test_an_open_node_is_billed_until_now(tmp_path):
    store = _store(tmp_path)
    _attempt(store, 1, 100.0, [("node_running", "running", 101.0, {})])
    assert compute_ledger(store.events("r1"), now=160.0).usd == pytest.approx(60.0)


def test_cancel_without_a_controller_and_status(tmp_path, capsys):
    store = _store(tmp_path, trials=("t000-aaaaaa", "t001-bbbbbb"))
    store.record("r1", "t001-bbbbbb", "launch", "provisioning", attempt=1)
    store.record("r1", "t001-bbbbbb", "cancelled", "cancelled")
    assert main(["cancel", "r1", "--state-dir", str(tmp_path)]) == 0
    assert "cancelled 1 trial(s) (no controller was running)" in capsys.readouterr().out
    assert [t.state for t in store.trials("r1")] == ["cancelled", "cancelled"]
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    assert "r1  cancelled" in capsys.readouterr().out
    assert main(["status", "nope", "--state-dir", str(tmp_path)]) == 2
    assert "run 'nope' not found" in capsys.readouterr().err
    assert main(["resume", "r1", "--state-dir", str(tmp_path)]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_following_a_run_ends_with_its_status_and_ctrl_c_leaves_it_running(tmp_path, monkeypatch):
    import io

    from orchestrator.views import progress
    from orchestrator.run.layout import RunLayout

    store = _store(tmp_path)
    layout = RunLayout(tmp_path, "r1")
    out = io.StringIO()
    assert progress.follow(store, layout, out=out) == 1  # no controller, trial never ran
    assert out.getvalue().strip().splitlines()[-1].startswith("run r1 ")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(progress, "watch", interrupted)
    out = io.StringIO()
    assert progress.follow(store, layout, out=out) == 0
    assert "run r1 goes on in the background" in out.getvalue()
    assert store.trials("r1")[0].state == "pending" and not store.trials("r1")[0].cancel_requested
