"""Experiment tracking: a sweep's trials, metrics and costs in MLflow, and in Weights & Biases when set up.

MLflow: one parent run per sweep and one child run per trial (the `mlflow.parentRunId` tag), in an experiment
named after the sweep. A child carries the trial's search parameters, its loss, learning-rate and eval-loss
curves per step, and the plan's predictions beside what was measured: expected $ vs billed $, predicted peak
VRAM vs measured peak memory, predicted vs measured step seconds. The store is `tracking.mlflow_uri`, else
$MLFLOW_TRACKING_URI, else a local file store at <state dir>/mlruns (`mlflow ui --backend-store-uri` on it).
MLflow keeps its file store in maintenance mode; spottune opts into it for that embedded default only
(MLFLOW_ALLOW_FILE_STORE) because it needs no database set-up; give a sqlite:// or server URI to use those.

W&B: with `tracking.wandb: auto` (the default) a run per trial is logged, grouped by sweep, when the `wandb`
package is installed and configured (WANDB_API_KEY, or WANDB_MODE=offline); `true` makes a missing package
an error in the spec check; `false` turns it off.

Trials are logged when they end (succeeded, failed, cancelled or stopped), from the run state in SQLite, so a
controller that restarts logs nothing twice: a trial's child run is looked up by its tag first.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.ledger import compute_ledger
from orchestrator.state import StateStore, TrialRow

RUN_TAG = "spottune.run_id"
TRIAL_TAG = "spottune.trial_id"


class TrackingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mlflow: bool = Field(True, description="Log the sweep to MLflow (one run, a child run per trial).")
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else a file store in <state dir>/mlruns."
    )
    wandb: Union[bool, Literal["auto"]] = Field(
        "auto", description="Log trials to Weights & Biases: auto = when wandb is installed and configured."
    )
    wandb_project: str = Field("spottune", description="W&B project of the trial runs.")

    @field_validator("wandb")
    @classmethod
    def _wandb_installed(cls, value: Union[bool, str]) -> Union[bool, str]:
        if value is True and importlib.util.find_spec("wandb") is None:
            raise ValueError("wandb: true needs the wandb package (pip install wandb); use auto or false")
        return value


def mlflow_uri(settings: TrackingSettings, state_dir: Path) -> str:
    if settings.mlflow_uri:
        return settings.mlflow_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (state_dir / "mlruns").resolve().as_uri()


def wandb_enabled(settings: TrackingSettings) -> bool:
    if settings.wandb is False or importlib.util.find_spec("wandb") is None:
        return False
    return settings.wandb is True or bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))


def trial_summary(state: StateStore, run_id: str, trial: TrialRow) -> dict:
    """What a trial's tracking run carries: parameters, per-step curves, final numbers, predictions."""
    events = state.events(run_id, trial.id)
    ledger = compute_ledger(events, time.time())
    cost = ledger.trials.get(trial.id)
    launches = [e for e in events if e.kind == "launch"]
    stopped = next((e for e in events if e.kind == "stopped"), None)
    final = {
        "usd": cost.usd if cost else 0.0,
        "wasted_usd": sum(cost.wasted_usd.values()) if cost else 0.0,
        "steps": float(trial.step), "attempts": float(trial.attempts),
        "preemptions": float(trial.preemptions), "errors": float(trial.errors),
    }
    if trial.eval_loss is not None:
        final["final_eval_loss"] = trial.eval_loss
    if stopped is not None:
        final["saved_usd"] = float(stopped.detail.get("saved_usd", 0.0))
    predicted = launches[0].detail if launches else {}
    for name, key in (("predicted_usd", "expected_usd"), ("predicted_vram_gib", "expected_vram_gib"),
                      ("predicted_step_seconds", "expected_step_seconds")):
        if predicted.get(key) is not None:
            final[name] = float(predicted[key])
    curves = {kind: sorted({step: value for _, step, value, _ in state.metrics(run_id, trial.id, kind)}.items())
              for kind in ("loss", "lr", "eval_loss", "peak_memory_gib", "step_seconds")}
    measured_peaks = [value for _, value in curves["peak_memory_gib"]]
    if measured_peaks:
        final["measured_peak_memory_gib"] = max(measured_peaks)
    step_times = [value for _, value in curves["step_seconds"]]
    if step_times:
        final["measured_step_seconds"] = sorted(step_times)[len(step_times) // 2]
    return {
        "params": {name: str(value) for name, value in trial.params.items()},
        "tags": {TRIAL_TAG: trial.id, "spottune.state": trial.state, "spottune.offer": predicted.get("offer", "")},
        "curves": {kind: points for kind, points in curves.items() if points},
        "final": final,
    }


class NoTracker:
    """Stands in when tracking could not start: the sweep runs on, untracked."""

    def sync(self) -> None:
        pass

    def finish(self) -> None:
        pass


class Tracker:
    """Mirrors a sweep's finished trials into MLflow (and W&B); call sync() as often as you like.

    A tracking store that fails mid-run is reported once and then left alone; the sweep itself goes on.
    """

    def __init__(self, state: StateStore, run_id: str, settings: TrackingSettings, state_dir: Path) -> None:
        self.state = state
        self.run_id = run_id
        self.settings = settings
        self.logged: set[str] = set()
        self.broken = False
        self.client = None
        self.parent_id: str | None = None
        if settings.mlflow:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=mlflow_uri(settings, state_dir))
            self.experiment_id = self._experiment(state.run(run_id).name)
            self.parent_id = self._parent()
        self.wandb = wandb_enabled(settings)

    def _experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(f"spottune/{name}")
        return experiment.experiment_id if experiment else self.client.create_experiment(f"spottune/{name}")

    def _find(self, tag: str, value: str):
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'")
        return runs[0] if runs else None

    def _parent(self) -> str:
        existing = self._find(RUN_TAG, self.run_id)
        if existing is not None:
            return existing.info.run_id
        run = self.state.run(self.run_id)
        parent = self.client.create_run(self.experiment_id, run_name=self.run_id, tags={RUN_TAG: self.run_id},
                                        start_time=int(run.created * 1000))
        self.client.log_param(parent.info.run_id, "storage", run.storage)
        return parent.info.run_id

    def sync(self) -> None:
        """Log every trial that has ended and is not logged yet."""
        self._guarded(self._sync)

    def finish(self) -> None:
        """Log what is left and close the sweep's run with its totals."""
        self._guarded(self._finish)

    def _guarded(self, action) -> None:
        if self.broken:
            return
        try:
            action()
        except Exception as error:  # a tracking server that goes away must not stop the sweep
            self.broken = True
            print(f"tracking stopped: {type(error).__name__}: {str(error).splitlines()[0]}", file=sys.stderr)

    def _sync(self) -> None:
        for trial in self.state.trials(self.run_id):
            if trial.id in self.logged or not trial.terminal:
                continue
            summary = trial_summary(self.state, self.run_id, trial)
            if self.client is not None and self._find(TRIAL_TAG, trial.id) is None:
                self._log_mlflow(trial, summary)
            if self.wandb:
                self._log_wandb(trial, summary)
            self.logged.add(trial.id)

    def _finish(self) -> None:
        self._sync()
        if self.client is None:
            return
        from mlflow.entities import Metric

        run = self.state.run(self.run_id)
        ledger = compute_ledger(self.state.events(self.run_id), run.finished or time.time())
        now = int(time.time() * 1000)
        saved = sum(float(e.detail.get("saved_usd", 0.0)) for e in self.state.events(self.run_id) if e.kind == "stopped")
        totals = {"usd": ledger.usd, "wasted_usd": sum(ledger.wasted_usd.values()), "saved_usd": saved,
                  "trials": float(len(self.state.trials(self.run_id)))}
        self.client.log_batch(self.parent_id, metrics=[Metric(k, v, now, 0) for k, v in totals.items()])
        self.client.set_terminated(self.parent_id, "FINISHED", end_time=int((run.finished or time.time()) * 1000))

    def _log_mlflow(self, trial: TrialRow, summary: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        child = self.client.create_run(self.experiment_id, run_name=trial.id,
                                       tags={"mlflow.parentRunId": self.parent_id, **summary["tags"]})
        now = int(time.time() * 1000)
        metrics = [Metric(kind, value, now, step) for kind, points in summary["curves"].items()
                   for step, value in points]
        metrics += [Metric(name, value, now, trial.step) for name, value in summary["final"].items()]
        params = [Param(name, value) for name, value in summary["params"].items()]
        for start in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(child.info.run_id, metrics=metrics[start:start + 1000],
                                  params=params if start == 0 else [], tags=[RunTag(TRIAL_TAG, trial.id)])
        status = {"succeeded": "FINISHED", "stopped": "KILLED", "cancelled": "KILLED"}.get(trial.state, "FAILED")
        self.client.set_terminated(child.info.run_id, status)

    def _log_wandb(self, trial: TrialRow, summary: dict) -> None:
        import wandb

        run = wandb.init(project=self.settings.wandb_project, group=self.run_id, name=trial.id, reinit=True,
                         config=summary["params"], tags=[trial.state])
        steps = sorted({step for points in summary["curves"].values() for step, _ in points})
        for step in steps:
            run.log({kind: dict(points)[step] for kind, points in summary["curves"].items()
                     if step in dict(points)}, step=step)
        run.summary.update(summary["final"])
        run.finish()
