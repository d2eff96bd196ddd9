"""Preemption, end to end: notice -> checkpoint now -> stop; lost -> back to `latest`.

1. A provider learns a node will be reclaimed (the local market posts it to the node with
   cluster/node/agent.py's `post_notice`; a cloud node reads its metadata service) and reports a `notice` with a
   deadline to the controller (cluster/provider.py), which records it (orchestrator/run/events.py's Notice).
2. On the node, every rank asks `NoticeGuard.stop_requested` after each optimizer step (train_core's generic
   `stop_requested` hook). With a notice pending and time enough to save, the trainer checkpoints that step,
   commits `latest` and returns status "stopped"; too late to save, it trains on until the node is killed.
3. The attempt ends (stopped, or killed at the deadline: `lost`); the controller names the cause with
   `interruption` and relaunches the trial, on the cheapest offer that fits then.
4. The relaunched attempt resumes from the trial's committed `checkpoints/latest` (train_core/checkpoint.py),
   never from anything the lost node held; the steps after it are redone (`lost_steps`).

Pure Python: used by the node's worker and by the controller, it imports nothing of either.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Protocol

DEFAULT_SAVE_SECONDS = 5.0
SAVE_SAFETY = 1.5
SAVE_MARGIN_S = 1.0


class PreemptionCause(StrEnum):
    """How an attempt was interrupted by the loss of its node."""

    NOTICE_CHECKPOINT = "notice_checkpoint"  # saved and stopped on the notice: nothing to redo
    KILLED_AFTER_NOTICE = "killed_after_notice"  # a notice came, but too late to save
    KILLED_WITHOUT_NOTICE = "killed_without_notice"
    CONTROLLER_RESTART = "controller_restart"  # the node died with the controller that drove it


class NoticeSource(Protocol):
    def notice_deadline(self) -> float | None:
        """The wall-clock deadline of a pending preemption notice, or None."""


class NoticeGuard:
    """Decides, after each step, whether to write an emergency checkpoint and stop because of a notice."""

    def __init__(self, source: NoticeSource | None, log: Callable[[str], None]) -> None:
        self.source = source
        self.log = log
        self.save_seconds: float | None = None
        self._asked_at: float | None = None
        self._told = False

    def stop_requested(self) -> bool:
        now = time.time()
        self._asked_at = now
        deadline = self.source.notice_deadline() if self.source is not None else None
        if deadline is None:
            return False
        left = deadline - now
        need = (self.save_seconds if self.save_seconds is not None else DEFAULT_SAVE_SECONDS) * SAVE_SAFETY
        need += SAVE_MARGIN_S
        if not self._told:
            self._told = True
            if left >= need:
                self.log(f"preemption notice: {left:.1f} s left, a checkpoint takes ~{need:.1f} s: saving and stopping")
            else:
                self.log(f"preemption notice: {left:.1f} s left, a checkpoint needs ~{need:.1f} s: "
                         "too late to save, training on until the node is reclaimed")
        return left >= need

    def checkpoint_written(self) -> None:
        """Called after each checkpoint: the time since the last question is what saving takes."""
        if self._asked_at is not None:
            self.save_seconds = time.time() - self._asked_at


@dataclass(frozen=True)
class Interruption:
    """What a preemption cost an attempt: the trial goes back to `committed` and redoes `lost_steps`."""

    cause: PreemptionCause
    reached_step: int
    committed: int

    @property
    def lost_steps(self) -> int:
        return max(0, self.reached_step - self.committed)


def interruption(noticed: bool, stopped: bool, reached_step: int, committed: int) -> Interruption:
    """Name how a preempted attempt ended: `stopped` when its trainer saved and stopped on the notice."""
    if stopped:
        cause = PreemptionCause.NOTICE_CHECKPOINT
    elif noticed:
        cause = PreemptionCause.KILLED_AFTER_NOTICE
    else:
        cause = PreemptionCause.KILLED_WITHOUT_NOTICE
    return Interruption(cause, reached_step, committed)
