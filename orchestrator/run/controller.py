"""The sweep controller: one state machine per trial, driven by provider events and runner outcomes.

    pending -> provisioning -> running -> (preempted -> provisioning -> running)* -> succeeded|failed|cancelled

Preemptions (a notice or a lost node) are relaunched on the cheapest offer that fits at that moment, as
long as the budget lasts; real errors go back to pending up to `max_error_retries` times, then fail.
Every attempt resumes from the committed `checkpoints/latest` in the trial's storage prefix.
The controller talks to nodes only through the provider's API and the run's storage: it writes an attempt's
payload before launching its nodes, and reads their records, notices and outcome from the attempt's channel
(cluster/node/channel.py, orchestrator/run/runner.py). Restart-safe: a new controller re-attaches to attempts
whose nodes the provider still rents (they train on without it); the others, whose nodes died with the previous
controller, have their ledger lines closed at the last sign of life and are relaunched.

Run as a daemon: `python -m orchestrator.run.controller --state-dir DIR RUN` (spawned by submit/resume).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.capacity import launch_first_available
from cluster.node.channel import PAYLOAD, AttemptChannel, attempt_prefix
from cluster.node.payload import AttemptPayload
from cluster.node.preemption import PreemptionCause, interruption
from cluster.node.worker import RecordKind
from cluster.provider import LaunchSpec, Node, describe_offer
from cluster.storage import Backoff, describe_error, open_store, storage_errors
from orchestrator.run.attempt import attempt_config, planned_settings
from orchestrator.run.events import (
    Budget, CapacityRefused, Checkpoint, CheckpointSkipped, Error, EventDetail, EventKind, Launch, Lost, NodeLost,
    Notice, OrphanTerminated, Preempted, Stopped, StorageRestored, StorageUnavailable, Succeeded, Training,
    WorkersStarted, Waiting,
)
from orchestrator.run.layout import RunLayout
from orchestrator.run.ledger import compute_ledger, spent_usd
from orchestrator.run.mirror import RunMirror
from orchestrator.sweep.planner import choose_offer, requirements
from orchestrator.sweep.pruning import SweepStudy, saved_usd
from orchestrator.sweep.spec import SweepSpec, TrialSpec, with_params
from orchestrator.run.state import StateStore
from train_core.checkpoint import STATE_FILE, newest_committed_step, step_key
from runspec.config import TrainConfig

if TYPE_CHECKING:
    from cluster.providers.fleet import ProviderFleet
    from orchestrator.run.runner import AttemptHandle, StorageRunner
    from train_core.store import ObjectStore

POLL_S = 0.25
NODE_SILENCE_S = 300.0  # a node that beat once (every 5 s) and then stays silent this long is taken for lost
EXIT_STATE_LOST = 4


class StateLost(Exception):
    """The run's state database disappeared from under the controller."""




@dataclass
class Active:
    """An attempt in flight: its node, and what the controller has seen of it."""

    trial_id: str
    attempt: int
    node: Node
    resume_step: int
    config: TrainConfig  # the attempt's train config (orchestrator/run/attempt.py)
    handle: AttemptHandle
    notice_deadline: float | None = None
    lost_at: float | None = None
    lost_reason: str = ""
    max_step: int = 0
    trained: bool = False
    final: dict | None = None
    stop_at: int | None = None  # early stopping judged this trial at this step: stop once it is committed
    channel_down: bool = False  # the controller could not read the attempt's channel (storage unreachable)


class Controller:
    def __init__(self, state: StateStore, layout: RunLayout, provider: ProviderFleet, runner: StorageRunner,
                 poll_s: float = POLL_S):
        self.state = state
        self.layout = layout
        self.run_id = layout.run_id
        self.provider = provider
        self.runner = runner
        self.poll_s = poll_s
        run = state.run(self.run_id)
        self.spec = SweepSpec.model_validate(run.spec)
        self.storage = self.spec.storage
        self.mirror = RunMirror(state, self.run_id, self.storage, self.spec.storage_endpoint)
        self.active: dict[str, Active] = {}
        self._waiting: set[str] = set()
        self._storage_down: dict[str, tuple[Backoff, float]] = {}  # trial -> (backoff, monotonic time of next try)
        self.pruning: SweepStudy | None = None
        self.layout.logs.mkdir(parents=True, exist_ok=True)

    # storage

    def _store(self, trial_id: str) -> ObjectStore:
        return open_store(self.storage.child(self.run_id, trial_id), self.spec.storage_endpoint)

    def committed_step(self, trial_id: str) -> int:
        """The trial's committed step in storage; raises what storage raises when it cannot be read."""
        return newest_committed_step(self._store(trial_id))

    def known_step(self, trial_id: str) -> int:
        """The committed step in storage, or while storage is unreachable the last checkpoint the log saw."""
        try:
            return self.committed_step(trial_id)
        except storage_errors() as error:
            self.trial_log(trial_id, 0, f"storage unreachable ({describe_error(error)}); using the last known step")
            known = (EventKind.CHECKPOINT, EventKind.LAUNCH, EventKind.CHECKPOINT_SKIPPED)
            steps = [e.step for e in self.state.events(self.run_id, trial_id) if e.kind in known and e.step is not None]
            return max(steps, default=0)

    def storage_ready(self, trial_id: str) -> int | None:
        """The committed step when storage answers; None while it is down, waiting with backoff and an event."""
        down = self._storage_down.get(trial_id)
        if down is not None and time.monotonic() < down[1]:
            return None
        try:
            step = self.committed_step(trial_id)
        except storage_errors() as error:
            backoff = down[0] if down is not None else Backoff(first_s=1.0, cap_s=60.0)
            wait = backoff.next_wait()
            self._storage_down[trial_id] = (backoff, time.monotonic() + wait)
            if down is None:
                self.state.record(self.run_id, trial_id, StorageUnavailable(describe_error(error), "controller"))
                self.trial_log(trial_id, 0, f"storage unreachable ({describe_error(error)}); waiting for it")
            return None
        if down is not None:
            del self._storage_down[trial_id]
            self.state.record(self.run_id, trial_id, StorageRestored("controller"), step=step)
            self.trial_log(trial_id, 0, "storage reachable again")
        return step

    # the loop

    def run(self) -> None:
        self.recover()
        if self.spec.early_stopping.enabled or self.spec.search.method == "optuna":
            steps = max(trial.total_steps or 0 for trial in self.state.trials(self.run_id)) or 1
            self.pruning = SweepStudy.rebuild(self.spec.early_stopping, steps, self.state, self.run_id,
                                              self.spec.search)
        tracker = open_tracker(self.state, self.run_id, self.spec, self.layout.state_dir)
        while True:
            self.check_state()
            self.mirror.sync()
            self.apply(self.runner.drain())
            self.note_channel_outages()
            self.watch_nodes()
            self.check_silence()
            self.collect()
            self.handle_cancels()
            self.stop_losers()
            self.launch_ready()
            tracker.sync()
            if not self.active and all(trial.terminal for trial in self.state.trials(self.run_id)):
                break
            time.sleep(self.poll_s)
        self.terminate_leftovers()
        self.state.set_finished(self.run_id, time.time())
        self.mirror.sync(force=True)
        tracker.finish()

    def terminate_leftovers(self) -> None:
        """Terminate every node a provider still rents for this run once no attempt needs one (none is orphaned)."""
        for node in self.provider.list_nodes(self.run_id):
            self.provider.terminate(node)
            self.state.record(self.run_id, node.spec.trial_id, OrphanTerminated(describe_offer(node.offer, node.spec.gpus)),
                              attempt=node.spec.attempt, node=node.id, offer=node.offer.key)
            self.trial_log(node.spec.trial_id, node.spec.attempt, f"terminated leftover node {node.id}")

    def check_state(self) -> None:
        """Stop (StateLost) when the database file is gone: whatever is written from now on would be lost."""
        reason = self.state.missing()
        if reason is not None:
            raise StateLost(f"run {self.run_id}: {reason}; stopping. Its history is mirrored in storage: "
                            f"spottune resume --from {self.storage.child(self.run_id)}")

    def recover(self) -> None:
        """Close attempts left open by a controller that died; their trials go back to be relaunched."""
        events = self.state.events(self.run_id)
        closed = {(e.trial_id, e.attempt) for e in events if e.kind == EventKind.TERMINATED}
        rented = {node.id: node for node in self.provider.list_nodes(self.run_id)}
        for launch in [e for e in events if e.kind == EventKind.LAUNCH and (e.trial_id, e.attempt) not in closed]:
            trial = self.state.trial(self.run_id, launch.trial_id)
            if launch.node in rented and trial.state in ("provisioning", "running") and \
                    self.reattach(trial.id, launch.attempt, rented[launch.node], launch.step or 0):
                continue
            last_sign = max([e.time for e in events if (e.trial_id, e.attempt) == (launch.trial_id, launch.attempt)]
                            + [row[3] for row in self.state.metrics(self.run_id, trial.id) if row[0] == launch.attempt])
            if trial.state in ("provisioning", "running"):
                self.state.record(
                    self.run_id, trial.id, Lost(PreemptionCause.CONTROLLER_RESTART,
                                                "node lost while the controller was down"),
                    "preempted", attempt=launch.attempt, node=launch.node, offer=launch.offer, price=launch.price,
                    step=self.known_step(trial.id),
                )
                self.trial_log(trial.id, launch.attempt, "node lost while the controller was down; relaunching")
            self.state.record(self.run_id, trial.id, EventKind.TERMINATED, attempt=launch.attempt, node=launch.node,
                              offer=launch.offer, price=launch.price, now=last_sign)

    def reattach(self, trial_id: str, attempt: int, node: Node, resume_step: int) -> bool:
        """Follow an attempt whose node outlived the previous controller; False when its payload is unreadable."""
        channel = attempt_prefix(self.storage, self.run_id, trial_id, attempt)
        try:
            document = AttemptChannel(open_store(channel, self.spec.storage_endpoint)).read_payload()
        except storage_errors():
            return False
        if document is None:
            return False
        payload = AttemptPayload.from_dict(document)
        handle = self.runner.attach(payload.name, str(channel), self.spec.storage_endpoint, skip_read=True)
        self.active[trial_id] = Active(trial_id, attempt, node, resume_step, payload.config, handle)
        self.trial_log(trial_id, attempt, f"re-attached to node {node.id}, still running after a controller restart")
        return True

    def apply(self, records: list[dict]) -> None:
        """Turn worker records (cluster/node/worker.py's RecordKind) into metrics, progress, events and log lines."""
        metrics: dict[tuple[str, int], list[tuple[int, str, float, float]]] = {}
        progress: dict[str, dict] = {}
        for record in records:
            trial_id, attempt, kind, when = record["trial"], record["attempt"], record["kind"], record["time"]
            active = self.active.get(trial_id)
            current = active is not None and active.attempt == attempt
            if kind == RecordKind.METRICS:
                rows = metrics.setdefault((trial_id, attempt), [])
                rows += [(record["step"], "loss", record["loss"], when), (record["step"], "lr", record["lr"], when),
                         (record["step"], "step_seconds", record["step_seconds"], when)]
                if record.get("peak_memory_gib") is not None:
                    rows.append((record["step"], "peak_memory_gib", record["peak_memory_gib"], when))
                progress.setdefault(trial_id, {}).update(
                    step=record["step"], loss=record["loss"], total_steps=record["total_steps"])
                if current:
                    active.max_step = max(active.max_step, record["step"])
                    if not active.trained:
                        active.trained = True
                        self._event(active, Training(record["step_seconds"], active.resume_step),
                                    step=record["step"], now=when)
            elif kind == RecordKind.EVAL:
                row = (record["step"], "eval_loss", record["eval_loss"], when)
                metrics.setdefault((trial_id, attempt), []).append(row)
                progress.setdefault(trial_id, {})["eval_loss"] = record["eval_loss"]
                if current and self.pruning is not None and \
                        self.pruning.report(trial_id, record["step"], record["eval_loss"]):
                    active.stop_at = record["step"]
            elif kind == RecordKind.CHECKPOINT and current:
                self._event(active, Checkpoint(record.get("save_seconds")), step=record["step"], now=when)
            elif kind == RecordKind.STORAGE_OUTAGE and current:
                if record["error"] is None:
                    self._event(active, StorageRestored("worker"), now=when)
                else:
                    self._event(active, StorageUnavailable(record["error"], "worker"), now=when)
                self.trial_log(trial_id, attempt, f"storage unreachable, waiting: {record['error']}"
                               if record["error"] else "storage reachable again", when)
            elif kind == RecordKind.CHECKPOINT_SKIPPED and current:
                active.resume_step = record["step"]
                self._event(active, CheckpointSkipped(record["skipped"], record["step"]), step=record["step"], now=when)
            elif kind == RecordKind.STARTED and current:
                self._event(active, WorkersStarted(record["world_size"]), now=when)
            elif kind == RecordKind.LOG:
                self.trial_log(trial_id, attempt, record["line"], when)
            elif kind == RecordKind.FINISHED and current:
                active.final = record
        for (trial_id, attempt), rows in metrics.items():
            self.state.add_metrics(self.run_id, trial_id, attempt, rows)
        for trial_id, values in progress.items():
            self.state.update_progress(self.run_id, trial_id, **values)

    def note_channel_outages(self) -> None:
        """An event when an attempt's channel stops answering (storage down), and one when it answers again."""
        for active in self.active.values():
            error = active.handle.unreachable
            if error is not None and not active.channel_down:
                active.channel_down = True
                self._event(active, StorageUnavailable(error, "controller"))
                self.trial_log(active.trial_id, active.attempt, f"storage unreachable ({error}); the node waits too")
            elif error is None and active.channel_down:
                active.channel_down = False
                self._event(active, StorageRestored("controller"))
                self.trial_log(active.trial_id, active.attempt, "storage reachable again")

    def watch_nodes(self) -> None:
        for active in list(self.active.values()):
            for event in self.provider.watch(active.node):
                if event.kind == "running":
                    self._event(active, EventKind.NODE_RUNNING, "running", step=active.resume_step, now=event.time)
                elif event.kind == "notice":
                    self.noticed(active, event.deadline, event.time, event.reason)
                else:
                    # The node is gone or its entry point ended: nothing more can reach the channel. An outcome
                    # there says how training ended; without one, a lost node was preempted and an exited one
                    # failed before training could end.
                    outcome = self.runner.finished(active.handle, now=True)
                    self.read_notice(active)
                    self.apply(self.runner.drain())
                    if outcome is None and event.kind == "lost":
                        active.lost_at, active.lost_reason = event.time, event.reason
                        self._event(active, NodeLost(event.reason), now=event.time)
                    elif outcome is None:
                        outcome = {"ok": False, "error": f"the node stopped before training ended: {event.reason}"}
                    self.finish(active, outcome or {"ok": False, "error": event.reason})
                    break

    def check_silence(self, now: float | None = None) -> None:
        """Take an attempt whose nodes stopped beating for NODE_SILENCE_S as lost, though its provider still lists
        them (a hung machine, or pods gone while the controller was down); storage being down is not silence."""
        now = time.time() if now is None else now
        for active in list(self.active.values()):
            last = self.runner.last_heartbeat(active.handle)
            if active.handle.unreachable is not None or last is None or now - last <= NODE_SILENCE_S:
                continue
            reason = f"no heartbeat from the node for {now - last:.0f} s"
            active.lost_at, active.lost_reason = now, reason
            self._event(active, NodeLost(reason), now=now)
            self.trial_log(active.trial_id, active.attempt, f"{reason}: taking it for lost")
            self.finish(active, {"ok": False, "error": reason})

    def noticed(self, active: Active, deadline: float, when: float, reason: str) -> None:
        active.notice_deadline = deadline
        self._event(active, Notice(deadline, round(deadline - when, 3), reason), now=when)
        self.trial_log(active.trial_id, active.attempt, f"preemption notice: {reason}")

    def collect(self) -> None:
        """Finish the attempts whose node 0 wrote an outcome; record notices the nodes posted themselves."""
        for active in list(self.active.values()):
            outcome = self.runner.finished(active.handle)
            self.read_notice(active)
            if outcome is not None:
                self.apply(self.runner.drain())
                self.finish(active, outcome)

    def read_notice(self, active: Active) -> None:
        """Record the notice the attempt's nodes posted in its channel, once. Read after the outcome: a node that
        saved on a notice posted the notice before it wrote the outcome, so an outcome seen means its notice is."""
        if active.notice_deadline is None and (deadline := self.runner.notice_deadline(active.handle)):
            self.noticed(active, deadline, time.time(), "the node reported a preemption notice")

    def finish(self, active: Active, outcome: dict) -> None:
        """Decide how the attempt ended, release its node and move the trial on."""
        trial = self.state.trial(self.run_id, active.trial_id)
        self.provider.terminate(active.node)
        end = active.lost_at if active.lost_at is not None else time.time()
        committed = self.known_step(trial.id)
        final = active.final or {}
        if outcome["ok"] and final.get("status") == "completed":
            self._backfill_losses(trial.id, committed)
            if self.pruning is not None:
                self.pruning.completed(trial.id, final.get("eval_loss"))
            self._event(active, Succeeded(final.get("train_loss"), final.get("eval_loss")), "succeeded",
                        step=final["step"])
        elif trial.cancel_requested:
            self._event(active, EventKind.CANCELLED, "cancelled", step=committed)
        elif active.lost_at is not None or active.notice_deadline is not None:
            lost = interruption(noticed=active.notice_deadline is not None, stopped=final.get("status") == "stopped",
                                reached_step=active.max_step, committed=committed)
            self._event(active, Preempted(lost.cause, active.lost_reason or "spot capacity reclaimed",
                                          lost.reached_step, lost.lost_steps),
                        "preempted", step=committed, count="preemptions")
            self.trial_log(trial.id, active.attempt, f"preempted ({lost.cause}); committed step {committed}")
        else:
            error = outcome.get("error") or f"training ended with status {final.get('status')!r}"
            retry = trial.errors < self.spec.max_error_retries
            self._event(active, Error(error, retry, trial.errors + 1, self.spec.max_error_retries),
                        "pending" if retry else "failed", step=committed, count="errors", message=error)
            self.trial_log(trial.id, active.attempt, f"error: {error}" + ("; retrying" if retry else "; giving up"))
        self._event(active, EventKind.TERMINATED, now=end)
        self.runner.forget(active.handle)
        del self.active[active.trial_id]

    def handle_cancels(self) -> None:
        for trial in self.state.trials(self.run_id):
            if not trial.cancel_requested or trial.terminal:
                continue
            active = self.active.pop(trial.id, None)
            if active is None:
                self.state.record(self.run_id, trial.id, EventKind.CANCELLED, "cancelled")
                continue
            self.provider.terminate(active.node)
            self.runner.forget(active.handle)
            self._event(active, EventKind.CANCELLED, "cancelled", step=self.known_step(trial.id))
            self._event(active, EventKind.TERMINATED)

    def stop_losers(self) -> None:
        """Stop the trials early stopping chose, once their latest checkpoint is committed; checkpoints are kept."""
        for active in list(self.active.values()):
            if active.stop_at is None:
                continue
            trial = self.state.trial(self.run_id, active.trial_id)
            try:
                committed = self.committed_step(trial.id)
            except storage_errors():
                continue  # storage is down: stop once it answers and shows the judged step committed
            if committed < active.stop_at:
                continue  # the checkpoint of the judged step is not committed yet
            if self.runner.finished(active.handle, now=True) is not None:
                continue  # it ended before the stop could land: collect() records how
            self.provider.terminate(active.node)
            now = time.time()
            node = compute_ledger(self.state.events(self.run_id, trial.id), now).trials[trial.id].nodes[-1]
            training_usd = node.price_per_hour * (now - (node.first_step_start or node.start)) / 3600.0
            saved = saved_usd(training_usd, trial.step - active.resume_step, (trial.total_steps or 0) - trial.step)
            self._event(active, Stopped(trial.eval_loss, trial.step, trial.total_steps, saved,
                                        self.spec.early_stopping.pruner), "stopped", step=committed)
            self._event(active, EventKind.TERMINATED)
            self.trial_log(trial.id, active.attempt, f"stopped early at step {trial.step} (eval loss "
                                                     f"{trial.eval_loss:.4f}); ~${saved:.6f} not spent")
            self.pruning.stopped(trial.id)
            self.runner.forget(active.handle)
            del self.active[trial.id]

    def launch_ready(self) -> None:
        budget = self.spec.resources.max_total_cost
        for trial in self.state.trials(self.run_id):
            if len(self.active) >= self.spec.max_parallel:
                return
            if trial.state not in ("pending", "preempted") or trial.id in self.active or trial.cancel_requested:
                continue
            if budget is not None:
                spent = spent_usd(self.state.events(self.run_id), time.time())
                if spent >= budget:
                    message = f"budget exhausted: ${spent:.4f} of ${budget:g} spent"
                    self.state.record(self.run_id, trial.id, Budget(spent, budget), "failed", message=message)
                    continue
            if self.spec.search.method == "optuna" and trial.attempts == 0 and not trial.params:
                trial = self.sample_params(trial)
            resume = self.storage_ready(trial.id)
            if resume is None:
                continue
            config = TrainConfig.model_validate(trial.config)
            trial_spec = TrialSpec(id=trial.id, index=trial.idx, params=trial.params, config=config)
            every = self.spec.checkpoint.every_steps
            offers = self.provider.offers(requirements(self.spec.resources))
            choose = partial(choose_offer, trial_spec, resources=self.spec.resources, steps_done=resume,
                             storage=self.storage, every_steps=every if isinstance(every, int) else None)
            choice = choose(offers)
            if choice is None:
                if trial.id not in self._waiting:
                    self._waiting.add(trial.id)
                    self.state.record(self.run_id, trial.id, Waiting("no offer fits right now"))
                continue
            self._waiting.discard(trial.id)
            attempt = trial.attempts + 1
            resources = self.spec.resources
            try:
                launched = launch_first_available(
                    partial(self._start_attempt, trial, config, attempt), choose, lambda row: row.offer, choice,
                    offers, lambda refusal: self.state.record(self.run_id, trial.id, CapacityRefused(
                        refusal.offer.key, refusal.code, refusal.message), attempt=attempt))
            except storage_errors():
                continue  # storage went down since storage_ready: try again next round
            if launched is None:  # every choice was refused; each refused offer is priced as a wait now
                continue
            choice, (node, handle, config, settings) = launched
            self.active[trial.id] = Active(trial.id, attempt, node, resume, config, handle)
            label = describe_offer(choice.offer, resources.gpus_per_node) + \
                (f" x{resources.nodes_per_trial} nodes" if resources.nodes_per_trial > 1 else "")
            self.state.record(
                self.run_id, trial.id,
                Launch(choice.offer.gpu.name, choice.offer.market, label, resume,
                       choice.run.usd if choice.run else None, choice.estimate.need_gib, choice.estimate.time.step,
                       settings.fields()),
                "provisioning", attempt=attempt, node=node.id, offer=choice.offer.key, price=node.price_per_hour,
                step=resume, count="attempts",
            )
            self.trial_log(trial.id, attempt, f"== attempt {attempt} on {node.id} ({label}), from step {resume}")

    def _start_attempt(self, trial, config: TrainConfig, attempt: int, choice):
        """Write the attempt's payload for this choice of offer, then launch its nodes."""
        resources = self.spec.resources
        accelerator = self.provider.accelerator_of(choice.offer)
        settings = planned_settings(choice, config, self.spec, accelerator)
        config = attempt_config(config, settings, str(self.storage.child(self.run_id, trial.id)))
        channel = attempt_prefix(self.storage, self.run_id, trial.id, attempt)
        payload = AttemptPayload(
            self.run_id, trial.id, attempt, choice.offer.provider, config, str(channel),
            self.spec.storage_endpoint, resources.nodes_per_trial, resources.gpus_per_node,
            use_gpu=accelerator == "cuda",
            ray_token=secrets.token_hex(32) if resources.nodes_per_trial > 1 else None,
        )
        handle = self.runner.prepare(payload)
        spec = LaunchSpec(self.run_id, trial.id, trial.idx, attempt, resources.gpus_per_node,
                          resources.nodes_per_trial, str(channel.child(PAYLOAD)), self.spec.storage_endpoint)
        return self.provider.launch(choice.offer, spec), handle, config, settings

    def sample_params(self, trial):
        """Draw an Optuna-search trial's parameters (TPE over the trials so far) and write them into its config."""
        params = self.pruning.ask_params(trial.id)
        config = with_params(trial.config, params)
        self.state.set_trial_params(self.run_id, trial.id, params, config)
        self.trial_log(trial.id, 0, "parameters from the optuna search: "
                                    + ", ".join(f"{name}={value}" for name, value in params.items()))
        return self.state.trial(self.run_id, trial.id)

    # helpers

    def _event(self, active: Active, event: EventKind | EventDetail, state: str | None = None, **fields) -> None:
        self.state.record(self.run_id, active.trial_id, event, state, attempt=active.attempt, node=active.node.id,
                          offer=active.node.offer.key, price=active.node.price_per_hour, **fields)

    def _backfill_losses(self, trial_id: str, step: int) -> None:
        """Losses of steps whose live records were lost (e.g. with a dead controller), from the final checkpoint."""
        try:
            text = self._store(trial_id).read_text(f"{step_key(step)}/{STATE_FILE}")
        except storage_errors() as error:
            self.trial_log(trial_id, 0, f"storage unreachable ({describe_error(error)}); losses not backfilled")
            return
        if text is None:
            return
        history = json.loads(text).get("loss_history", [])
        self.state.add_metrics(self.run_id, trial_id, 0,
                               [(entry["step"], "loss", entry["loss"], 0.0) for entry in history])

    def trial_log(self, trial_id: str, attempt: int, line: str, when: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(when or time.time()))
        with open(self.layout.trial_log(trial_id), "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} [a{attempt}] {line}\n")


def open_tracker(state: StateStore, run_id: str, spec: SweepSpec, state_dir: Path):
    """The run's experiment tracker; one that cannot start is reported and replaced by one that logs nothing."""
    from orchestrator.run.tracking import NoTracker, Tracker

    try:
        return Tracker(state, run_id, spec.tracking, state_dir)
    except Exception as error:  # a tracking server down must not stop the sweep
        print(f"tracking disabled: {type(error).__name__}: {str(error).splitlines()[0]}", file=sys.stderr)
        return NoTracker()


class ControllerLock:
    """An exclusive lock on the run's controller.lock; the holder's PID is written into the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def controller_pid(layout: RunLayout) -> int | None:
    """PID of the live controller of this run, or None when none holds the lock."""
    if not layout.lock.is_file():
        return None
    with open(layout.lock, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def main(argv: list[str] | None = None) -> int:
    from cluster.node.agent import write_atomic
    from cluster.processes import ProcessRecord
    from cluster.providers.fleet import ProviderFleet
    from cluster.providers.registry import ProviderContext
    from orchestrator.run.runner import StorageRunner

    parser = argparse.ArgumentParser(prog="python -m orchestrator.run.controller")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("run_id")
    args = parser.parse_args(argv)
    os.umask(0o077)  # the run's files, Ray's and the workers' included, are for this user only
    layout = RunLayout(Path(args.state_dir), args.run_id)
    lock = ControllerLock(layout.lock)
    if not lock.acquire():
        print(f"run {args.run_id} already has a controller (PID {controller_pid(layout)})", file=sys.stderr)
        return 3
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    write_atomic(layout.controller_record, ProcessRecord.current(with_cmdline=True).dump())
    state = StateStore(Path(args.state_dir))
    state.set_controller(args.run_id, os.getpid())
    spec = SweepSpec.model_validate(state.run(args.run_id).spec)
    context = ProviderContext(layout.root)
    provider = ProviderFleet.build(spec.resources.providers, spec.provider_settings, context)
    try:
        provider.start()
        Controller(state, layout, provider, StorageRunner()).run()
    except StateLost as lost:
        print(lost, file=sys.stderr, flush=True)
        return EXIT_STATE_LOST
    finally:
        provider.stop()
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
