"""The cost ledger, computed from the event log only: what each node cost and how much of it was wasted.

A node is billed from its `launch` event to its `terminated` event (or `now` while it is still held), at the
price recorded on the launch. Waste is charged to the cause of an interruption (a preemption, an error, or a
node lost while the controller was down) in two parts:
  lost work    the node time after the attempt's last committed checkpoint (all of it when none was committed);
  restart      on the attempt that follows, the node time from launch until its first step began.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.state import Event

INTERRUPTIONS = {"preempted": "preemption", "error": "error", "lost": "controller"}
CAUSES = tuple(INTERRUPTIONS.values())


@dataclass
class NodeLine:
    trial_id: str
    attempt: int
    node: str
    offer: str
    price_per_hour: float
    start: float
    end: float | None
    outcome: str = "running"  # succeeded | cancelled | failed | stopped | running, or an interruption cause
    last_checkpoint_time: float | None = None
    first_step_start: float | None = None
    lost_seconds: float = 0.0
    restart_seconds: float = 0.0
    restart_after: str | None = None  # what the restart overhead is charged to

    def seconds(self, now: float) -> float:
        return max(0.0, (self.end if self.end is not None else now) - self.start)

    def usd(self, now: float) -> float:
        return self.price_per_hour * self.seconds(now) / 3600.0


@dataclass
class TrialCost:
    trial_id: str
    nodes: list[NodeLine] = field(default_factory=list)
    usd: float = 0.0
    node_seconds: float = 0.0
    wasted_usd: dict[str, float] = field(default_factory=dict)  # interruption cause -> dollars


@dataclass
class Ledger:
    trials: dict[str, TrialCost]
    usd: float
    wasted_usd: dict[str, float]


def node_lines(events: list[Event]) -> list[NodeLine]:
    """One line per launched node, in launch order, with its interruption bookkeeping filled in."""
    lines: dict[tuple[str, int], NodeLine] = {}
    order: list[tuple[str, int]] = []
    for event in events:
        if event.trial_id is None or event.attempt is None:
            continue
        key = (event.trial_id, event.attempt)
        if event.kind == "launch":
            lines[key] = NodeLine(event.trial_id, event.attempt, event.node or "?", event.offer or "?",
                                  float(event.price or 0.0), event.time, None)
            order.append(key)
            continue
        line = lines.get(key)
        if line is None:
            continue
        if event.kind == "checkpoint":
            line.last_checkpoint_time = event.time
        elif event.kind == "training" and line.first_step_start is None:
            line.first_step_start = event.time - float(event.detail.get("step_seconds", 0.0))
        elif event.kind == "terminated":
            line.end = event.time
        elif event.kind in INTERRUPTIONS:
            line.outcome = INTERRUPTIONS[event.kind]
        elif event.kind in ("succeeded", "cancelled", "failed", "stopped") and line.outcome == "running":
            line.outcome = event.kind
    previous: dict[str, NodeLine] = {}
    for key in order:
        line = lines[key]
        if line.outcome in CAUSES and line.end is not None:
            since = line.last_checkpoint_time if line.last_checkpoint_time is not None else line.start
            line.lost_seconds = max(0.0, line.end - since)
        before = previous.get(line.trial_id)
        if before is not None and before.outcome in CAUSES and line.first_step_start is not None:
            line.restart_seconds = max(0.0, line.first_step_start - line.start)
            line.restart_after = before.outcome
        previous[line.trial_id] = line
    return [lines[key] for key in order]


def compute_ledger(events: list[Event], now: float) -> Ledger:
    trials: dict[str, TrialCost] = {}
    for event in events:
        if event.trial_id is not None and event.trial_id not in trials:
            trials[event.trial_id] = TrialCost(event.trial_id)
    for line in node_lines(events):
        cost = trials[line.trial_id]
        cost.nodes.append(line)
        cost.usd += line.usd(now)
        cost.node_seconds += line.seconds(now)
        hourly = line.price_per_hour / 3600.0
        if line.outcome in CAUSES:
            cost.wasted_usd[line.outcome] = cost.wasted_usd.get(line.outcome, 0.0) + line.lost_seconds * hourly
        if line.restart_after is not None:
            cost.wasted_usd[line.restart_after] = (
                cost.wasted_usd.get(line.restart_after, 0.0) + line.restart_seconds * hourly
            )
    wasted: dict[str, float] = {}
    for cost in trials.values():
        for cause, usd in cost.wasted_usd.items():
            wasted[cause] = wasted.get(cause, 0.0) + usd
    return Ledger(trials=trials, usd=sum(cost.usd for cost in trials.values()), wasted_usd=wasted)


def spent_usd(events: list[Event], now: float) -> float:
    return compute_ledger(events, now).usd
