"""Early stopping: an Optuna pruner decides, from eval losses at checkpoint boundaries, which trials to stop.

Each sweep trial is an Optuna trial of one in-memory study; the controller reports every eval loss a trial
measures (`trial.report(value, step)`) and, when the pruner says so, stops the trial right after its next
committed checkpoint: the node is released, the checkpoints stay in storage, and the trial ends `stopped`
with the dollars its remaining steps would have cost at its measured $/step. Pruners (Optuna's own):

    successive_halving  SuccessiveHalvingPruner(min_resource=min_steps, reduction_factor)   (ASHA)
    hyperband           HyperbandPruner(min_resource=min_steps, max_resource=the trials' steps, reduction_factor)
    median              MedianPruner(n_startup_trials=1, n_warmup_steps=min_steps)

The study is rebuilt from the run's SQLite state when a controller restarts (every recorded eval loss is
reported again in trial order), so decisions do not depend on which controller process made them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.state import StateStore


class EarlyStopping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pruner: Literal["none", "successive_halving", "hyperband", "median"] = Field(
        "none", description="Optuna pruner that stops losing trials at checkpoint boundaries; none = run all."
    )
    min_steps: int = Field(1, ge=1, description="Steps every trial trains before it can be stopped.")
    reduction_factor: int = Field(
        3, ge=2, description="successive_halving / hyperband: keep 1 of this many trials at each rung."
    )

    @property
    def enabled(self) -> bool:
        return self.pruner != "none"


def make_pruner(settings: EarlyStopping, max_steps: int):
    import optuna

    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.min_steps,
                                                      reduction_factor=settings.reduction_factor)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=settings.min_steps, max_resource=max_steps,
                                              reduction_factor=settings.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=settings.min_steps)


class Pruning:
    """The sweep's Optuna study: eval losses in, stop decisions out."""

    def __init__(self, settings: EarlyStopping, max_steps: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # A fixed name: Hyperband assigns trials to brackets by a hash of the study name and trial number.
        self.study = optuna.create_study(study_name="spottune", direction="minimize",
                                         pruner=make_pruner(settings, max_steps))
        self.trials: dict = {}
        self.reported: dict[str, set[int]] = {}
        self.ended: set[str] = set()

    def _trial(self, trial_id: str):
        if trial_id not in self.trials:
            self.trials[trial_id] = self.study.ask()
        return self.trials[trial_id]

    def report(self, trial_id: str, step: int, eval_loss: float) -> bool:
        """Record an eval loss; True when the trial should stop. The eval before the first step is not a rung."""
        if step <= 0 or trial_id in self.ended:
            return False
        trial = self._trial(trial_id)
        if step in self.reported.setdefault(trial_id, set()):
            return False
        self.reported[trial_id].add(step)
        trial.report(eval_loss, step)
        return trial.should_prune()

    def completed(self, trial_id: str, eval_loss: float | None) -> None:
        import optuna

        if trial_id in self.ended:
            return
        self.ended.add(trial_id)
        trial = self._trial(trial_id)
        if eval_loss is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, eval_loss)

    def stopped(self, trial_id: str) -> None:
        import optuna

        if trial_id not in self.ended:
            self.ended.add(trial_id)
            self.study.tell(self._trial(trial_id), state=optuna.trial.TrialState.PRUNED)

    @classmethod
    def rebuild(cls, settings: EarlyStopping, max_steps: int, state: StateStore, run_id: str) -> "Pruning":
        """The study as the run's recorded eval losses and trial outcomes leave it."""
        pruning = cls(settings, max_steps)
        for trial in state.trials(run_id):
            evals = sorted({step: value for _, step, value, _ in state.metrics(run_id, trial.id, "eval_loss")}.items())
            for step, value in evals:
                pruning.report(trial.id, step, value)
            if trial.state == "succeeded":
                pruning.completed(trial.id, trial.eval_loss)
            elif trial.state == "stopped":
                pruning.stopped(trial.id)
            elif trial.terminal:
                pruning.completed(trial.id, None)
        return pruning


def saved_usd(spent_usd: float, steps_done: int, total_steps: int | None) -> float:
    """What the steps a stopped trial will not train would have cost, at the $/step it was paying."""
    if not total_steps or steps_done <= 0:
        return 0.0
    return spent_usd / steps_done * max(0, total_steps - steps_done)
