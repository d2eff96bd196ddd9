"""What a run looks like to a person or a script: its status, a trial table, event lines, and a live view."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

from orchestrator.run.controller import controller_pid
from orchestrator.run.events import (
    Budget, CapacityRefused, CheckpointSkipped, Error, EventKind, Launch, Lost, Notice, Preempted, Retry, Stopped,
    StorageUnavailable, Succeeded, Waiting,
)
from orchestrator.run.layout import RunLayout
from orchestrator.run.ledger import compute_ledger
from orchestrator.run.state import Event, RunRow, StateStore, TrialRow

SHOWN_EVENTS = {
    EventKind.LAUNCH, EventKind.NOTICE, EventKind.PREEMPTED, EventKind.LOST, EventKind.ERROR, EventKind.SUCCEEDED,
    EventKind.CANCELLED, EventKind.BUDGET, EventKind.WAITING, EventKind.TRAINING, EventKind.CHECKPOINT_SKIPPED,
    EventKind.STORAGE_UNAVAILABLE, EventKind.STORAGE_RESTORED, EventKind.RETRY, EventKind.STOPPED,
    EventKind.CAPACITY_REFUSED,
}


def run_status(run: RunRow, trials: list[TrialRow], alive: bool) -> str:
    if any(not trial.terminal for trial in trials):
        return "running" if alive else "interrupted"
    states = {trial.state for trial in trials}
    if "succeeded" in states and states <= {"succeeded", "stopped"}:  # early stopping's losers are expected
        return "succeeded"
    return "failed" if "failed" in states else "cancelled"


@dataclass
class TrialView:
    id: str
    state: str
    offer: str | None
    step: int
    total_steps: int | None
    loss: float | None
    eval_loss: float | None
    usd: float
    preemptions: int
    errors: int
    attempts: int
    params: dict


def trial_views(state: StateStore, run_id: str) -> list[TrialView]:
    ledger = compute_ledger(state.events(run_id), time.time())
    views = []
    for trial in state.trials(run_id):
        cost = ledger.trials.get(trial.id)
        views.append(TrialView(
            trial.id, trial.state, _offer_label(trial.offer), trial.step, trial.total_steps, trial.loss,
            trial.eval_loss, cost.usd if cost else 0.0, trial.preemptions, trial.errors, trial.attempts, trial.params,
        ))
    return views


def _offer_label(offer_id: str | None) -> str | None:
    if not offer_id:
        return None
    provider, instance, region, market = offer_id.split(":")
    return f"{instance.removeprefix('simulated-')} {market}"


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def trial_table(views: list[TrialView]) -> str:
    header = ("TRIAL", "STATE", "OFFER", "STEP", "LOSS", "EVAL", "$ SO FAR", "PREEMPT", "ERRORS")
    rows = [header]
    for view in views:
        total = view.total_steps if view.total_steps is not None else "?"
        rows.append((view.id, view.state, view.offer or "-", f"{view.step}/{total}", _number(view.loss),
                     _number(view.eval_loss), f"{view.usd:.6f}", str(view.preemptions), str(view.errors)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _describe(event: Event) -> str:
    """What happened, in words (the event's kind alone for kinds without a description)."""
    data = event.data
    match data:
        case Launch():
            return f"attempt {event.attempt} on {data.offer}, from step {event.step}"
        case Notice():
            return f"preemption notice, {data.notice_s} s to the deadline"
        case Preempted():
            return (f"preempted ({data.cause}) at step {data.reached_step}, committed {event.step}, "
                    f"{data.lost_steps} step(s) to redo")
        case Lost():
            return f"node lost ({data.reason}), committed step {event.step}"
        case Error():
            return f"error ({'retrying' if data.retry else 'no retries left'}): {data.error}"
        case Succeeded():
            return f"succeeded at step {event.step}, eval loss {_number(data.eval_loss)}"
        case Budget():
            return f"failed: budget exhausted (${data.spent or 0:.4f} of ${data.budget})"
        case Waiting():
            return f"waiting: {data.reason}"
        case CapacityRefused():
            return f"capacity refused: {data.offer}: {data.code}"
        case Stopped():
            return (f"stopped early at step {data.reached_step} (eval loss {_number(data.eval_loss)}), "
                    f"${data.saved_usd or 0:.6f} saved")
        case StorageUnavailable():
            return f"storage unreachable, waiting with backoff: {data.error}"
        case Retry():
            return f"failed trial sent back to pending by resume --retry-failed ({data.errors} errors)"
        case CheckpointSkipped():
            return f"damaged checkpoints skipped ({'; '.join(data.skipped or [])}), resumed from step {event.step}"
    if event.kind == EventKind.TRAINING:
        return f"training (first step {event.step} of attempt {event.attempt})"
    if event.kind == EventKind.STORAGE_RESTORED:
        return "storage reachable again"
    return str(event.kind)


def describe_event(event: Event) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    return f"{stamp} {event.trial_id} {_describe(event)}"


def watch(state: StateStore, layout: RunLayout, interval: float = 5.0, out=sys.stdout) -> str:
    """Print events as they happen, and the trial table at most every `interval` s when more than its $ changed.

    Returns the run's status once its controller has exited.
    """
    seen = 0
    last_shown: tuple = ()
    last_print = 0.0
    while True:
        for event in state.events(layout.run_id, after=seen):
            seen = event.seq
            if event.kind in SHOWN_EVENTS:
                print(describe_event(event), file=out, flush=True)
        run = state.run(layout.run_id)
        trials = state.trials(layout.run_id)
        alive = controller_pid(layout) is not None
        status = run_status(run, trials, alive)
        views = trial_views(state, layout.run_id)
        shown = tuple((v.state, v.offer, v.step, v.loss, v.eval_loss, v.preemptions, v.errors) for v in views)
        now = time.monotonic()
        finished = status != "running" and not alive
        if shown != last_shown and (now - last_print >= interval or finished):
            print(trial_table(views), file=out, flush=True)
            last_shown, last_print = shown, now
        if finished:
            return status
        time.sleep(0.5)


def follow(state: StateStore, layout: RunLayout, interval: float = 5.0, out=sys.stdout) -> int:
    """Watch a run to its end and say how it ended; Ctrl-C stops the watching, never the run. Exit status."""
    run_id = layout.run_id
    try:
        status = watch(state, layout, interval, out)
    except KeyboardInterrupt:
        print(f"\nstopped following; run {run_id} goes on in the background "
              f"(`spottune status {run_id}`, `spottune cancel {run_id}`)", file=out)
        return 0
    print(f"run {run_id} {status}; see `spottune report {run_id}`", file=out)
    return 0 if status == "succeeded" else 1


def status_json(state: StateStore, layout: RunLayout) -> dict:
    run = state.run(layout.run_id)
    trials = state.trials(layout.run_id)
    pid = controller_pid(layout)
    ledger = compute_ledger(state.events(layout.run_id), time.time())
    return {
        "run": run.id, "name": run.name, "status": run_status(run, trials, pid is not None),
        "controller_pid": pid, "created": run.created, "finished": run.finished, "storage": run.storage,
        "usd": ledger.usd, "trials": [asdict(view) for view in trial_views(state, layout.run_id)],
    }
