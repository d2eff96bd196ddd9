"""bench/policy.py's simulated trainer: the step clock, periodic checkpoints committed in real storage, and the
difference a preemption notice makes (spottune saves and stops; the SkyPilot-like policy trains on and dies)."""
import json
import sys
from pathlib import Path

import pytest

from cluster.node_agent import NOTICE_FILE, RECLAIMED_FILE
from train_core.checkpoint import LATEST_KEY
from train_core.store import LocalStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from policy import SimulatedAttempt  # noqa: E402


def _attempt(tmp_path, use_notice, step=0):
    node = tmp_path / "node"
    node.mkdir(exist_ok=True)
    store = LocalStore(tmp_path / "store")
    # simulated seconds: load 10, a step 10, a checkpoint 5, every 3 steps, 40 steps; clock 10x the wall
    attempt = SimulatedAttempt("t0", 1, node, store, started_real=1000.0, scale=10.0, step_s=10.0, load_s=10.0,
                               save_s=5.0, every=3, total=40, step=step, use_notice=use_notice)
    return attempt, node, store


def _kinds(records):
    return [(r["kind"], r.get("step")) for r in records]


def test_steps_and_checkpoints_follow_the_simulated_clock(tmp_path):
    attempt, _, store = _attempt(tmp_path, use_notice=True)
    assert attempt.advance(1000.5) == []  # 5 s of a 10 s load
    records = attempt.advance(1004.6)  # 46 s: loaded at 10, steps at 20, 30, 40 then a checkpoint until 45
    assert _kinds(records) == [("started", None), ("metrics", 1), ("metrics", 3), ("checkpoint", 3)]
    assert records[-1]["time"] == pytest.approx(1004.5)
    assert store.read_text(LATEST_KEY) == "3"
    assert attempt.phase == "training" and attempt.outcome is None


def test_notice_saves_and_stops_for_spottune_but_not_for_the_skypilot_like_policy(tmp_path):
    for use_notice in (True, False):
        directory = tmp_path / str(use_notice)
        directory.mkdir()
        attempt, node, store = _attempt(directory, use_notice)
        attempt.advance(1004.6)  # checkpoint at step 3
        # a deadline at simulated 350 s (real 1035) and so a notice at 230 s (bench NOTICE_S = 120)
        (node / NOTICE_FILE).write_text(json.dumps({"deadline": 1035.0}))
        records = attempt.advance(1040.0)
        if use_notice:  # step 19 ends at 230 s, as the notice comes: save until 235 s and stop
            assert _kinds(records)[-2:] == [("checkpoint", 19), ("finished", 19)]
            assert records[-1]["status"] == "stopped" and records[-1]["time"] == pytest.approx(1023.5)
            assert attempt.outcome == {"ok": True} and store.read_text(LATEST_KEY) == "19"
        else:  # trains on until the kill at 350 s: the last periodic checkpoint (step 27, at 325 s) is kept
            assert attempt.phase == "dead" and attempt.outcome is None and attempt.step == 29
            assert store.read_text(LATEST_KEY) == "27"


def test_a_kill_without_notice_ends_the_trainer_when_the_node_was_reclaimed(tmp_path):
    import os

    attempt, node, store = _attempt(tmp_path, use_notice=True, step=6)
    (node / RECLAIMED_FILE).write_text("")
    os.utime(node / RECLAIMED_FILE, (1005.0, 1005.0))  # reclaimed at simulated 50 s
    attempt.advance(2000.0)
    assert attempt.phase == "dead" and attempt.step == 9  # loaded at 10, steps 7-9 by 40, saved by 45, dead at 50
    assert store.read_text(LATEST_KEY) == "9"
