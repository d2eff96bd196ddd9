"""What a run looks like to a person or a script: its status, a trial table, event lines, and a live view."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

from orchestrator.controller import controller_pid
from orchestrator.layout import RunLayout
from orchestrator.ledger import compute_ledger
from orchestrator.state import Event, RunRow, StateStore, TrialRow

SHOWN_EVENTS = {"launch", "notice", "preempted", "lost", "error", "succeeded", "failed", "cancelled", "budget",
                "waiting", "training", "checkpoint_skipped", "storage_unavailable", "storage_restored", "retry",
                "stopped"}


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


def describe_event(event: Event) -> str:
    detail = event.detail
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    text = {
        "launch": lambda: f"attempt {event.attempt} on {detail.get('offer')}, from step {event.step}",
        "training": lambda: f"training (first step {event.step} of attempt {event.attempt})",
        "notice": lambda: f"preemption notice, {detail.get('notice_s')} s to the deadline",
        "preempted": lambda: (f"preempted ({detail.get('cause')}) at step {detail.get('reached_step')}, "
                              f"committed {event.step}, {detail.get('lost_steps')} step(s) to redo"),
        "lost": lambda: f"node lost ({detail.get('reason')}), committed step {event.step}",
        "error": lambda: f"error ({'retrying' if detail.get('retry') else 'no retries left'}): {detail.get('error')}",
        "succeeded": lambda: f"succeeded at step {event.step}, eval loss {_number(detail.get('eval_loss'))}",
        "budget": lambda: f"failed: budget exhausted (${detail.get('spent', 0):.4f} of ${detail.get('budget')})",
        "waiting": lambda: f"waiting: {detail.get('reason')}",
        "stopped": lambda: (f"stopped early at step {detail.get('reached_step')} (eval loss "
                            f"{_number(detail.get('eval_loss'))}), ${detail.get('saved_usd', 0):.6f} saved"),
        "storage_unavailable": lambda: f"storage unreachable, waiting with backoff: {detail.get('error')}",
        "storage_restored": lambda: "storage reachable again",
        "retry": lambda: f"failed trial sent back to pending by resume --retry-failed ({detail.get('errors')} errors)",
        "checkpoint_skipped": lambda: (f"damaged checkpoints skipped ({'; '.join(detail.get('skipped', []))}), "
                                       f"resumed from step {event.step}"),
    }.get(event.kind, lambda: event.kind)()
    return f"{stamp} {event.trial_id} {text}"


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
