"""Notice -> checkpoint now -> stop, decided on the node from the agent's notice; and how an interruption is named."""
from __future__ import annotations

import time

from cluster.node.agent import LocalNodeAgent, post_notice
from cluster.node.preemption import (
    DEFAULT_SAVE_SECONDS, SAVE_MARGIN_S, SAVE_SAFETY, NoticeGuard, PreemptionCause, interruption,
)


def _notice(node_dir, seconds_left: float) -> None:
    post_notice(node_dir, time.time() + seconds_left)


def test_no_notice_means_train_on(tmp_path):
    lines = []
    guard = NoticeGuard(LocalNodeAgent(tmp_path), lines.append)
    assert guard.stop_requested() is False
    assert NoticeGuard(None, lines.append).stop_requested() is False
    assert lines == []


def test_a_notice_with_time_to_save_stops_and_says_so_once(tmp_path):
    lines = []
    guard = NoticeGuard(LocalNodeAgent(tmp_path), lines.append)
    _notice(tmp_path, 600.0)
    assert guard.stop_requested() is True
    assert guard.stop_requested() is True
    assert len(lines) == 1 and "saving and stopping" in lines[0]


def test_too_late_to_save_trains_on_until_the_node_is_reclaimed(tmp_path):
    lines = []
    guard = NoticeGuard(LocalNodeAgent(tmp_path), lines.append)
    _notice(tmp_path, DEFAULT_SAVE_SECONDS * SAVE_SAFETY + SAVE_MARGIN_S - 2.0)
    assert guard.stop_requested() is False
    assert "too late to save" in lines[0]


def test_the_measured_checkpoint_time_decides_whether_there_is_time(tmp_path):
    guard = NoticeGuard(LocalNodeAgent(tmp_path), lambda line: None)
    guard.stop_requested()
    guard.checkpoint_written()
    assert guard.save_seconds is not None and guard.save_seconds < DEFAULT_SAVE_SECONDS
    _notice(tmp_path, DEFAULT_SAVE_SECONDS * SAVE_SAFETY)  # too short for the default guess, enough for a fast save
    assert guard.stop_requested() is True


def test_interruptions_are_named_by_what_the_attempt_managed_to_do():
    saved = interruption(noticed=True, stopped=True, reached_step=7, committed=7)
    assert (saved.cause, saved.lost_steps) == (PreemptionCause.NOTICE_CHECKPOINT, 0)
    late = interruption(noticed=True, stopped=False, reached_step=9, committed=6)
    assert (late.cause, late.lost_steps) == (PreemptionCause.KILLED_AFTER_NOTICE, 3)
    killed = interruption(noticed=False, stopped=False, reached_step=4, committed=5)
    assert (killed.cause, killed.lost_steps) == (PreemptionCause.KILLED_WITHOUT_NOTICE, 0)
