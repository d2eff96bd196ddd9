"""The sweep's Optuna study: early stopping (a pruner judges eval losses at checkpoint boundaries) and, for
`search.method: optuna`, the parameters of each trial (TPE, from the results of the trials before it).

Each sweep trial is an Optuna trial of one in-memory study; the controller reports every eval loss a trial
measures (`trial.report(value, step)`) and, when the pruner says so, stops the trial right after its next
committed checkpoint: the node is released, the checkpoints stay in storage, and the trial ends `stopped`
with the dollars its remaining steps would have cost at the $/step its node paid since its first step.
Pruners (Optuna's own):

    successive_halving  SuccessiveHalvingPruner(min_resource=min_steps, reduction_factor)   (ASHA)
    hyperband           HyperbandPruner(min_resource=min_steps, max_resource=the trials' steps, reduction_factor)
    median              MedianPruner(n_startup_trials=1, n_warmup_steps=min_steps)

With `search.method: optuna` a trial's parameters are drawn by Optuna's TPESampler when it is first launched
(the first `search.startup_trials` at random), so later trials learn from the final eval losses (and the
pruned curves) of earlier ones; lists are categorical choices, log_uniform and uniform are float ranges.

The study is rebuilt from the run's SQLite state when a controller restarts (recorded parameters are
enqueued, every recorded eval loss is reported again, outcomes are told, in trial order), so decisions do not
depend on which controller process made them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.run.state import StateStore
from runspec.config_types import MAX_STEPS, Integer

STUDY_NAME = "spottune"  # fixed: Hyperband assigns trials to brackets by a hash of the study name and trial number


class EarlyStopping(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pruner: Literal["none", "successive_halving", "hyperband", "median"] = Field(
        "none", description="Optuna pruner that stops losing trials at checkpoint boundaries; none = run all."
    )
    min_steps: Integer = Field(1, ge=1, le=MAX_STEPS, description="Steps every trial trains before it can be stopped.")
    reduction_factor: Integer = Field(
        3, ge=2, le=100, description="successive_halving / hyperband: keep 1 of this many trials at each rung."
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
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=settings.min_steps)
    return optuna.pruners.NopPruner()


def make_sampler(search):
    import optuna

    if search is None or search.method != "optuna":
        return None
    startup = search.startup_trials if search.startup_trials is not None else max(1, (search.samples or 3) // 3)
    return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=startup)


def suggest(trial, name: str, distribution):
    """Draw one search parameter (a list: categorical; log_uniform / uniform: a float range) for an Optuna trial."""
    if isinstance(distribution, list):
        return trial.suggest_categorical(name, distribution)
    if hasattr(distribution, "log_uniform"):
        low, high = distribution.log_uniform
        return trial.suggest_float(name, low, high, log=True)
    low, high = distribution.uniform
    return trial.suggest_float(name, low, high)


class SweepStudy:
    """The sweep's Optuna study: parameters out (optuna search), eval losses in, stop decisions out."""

    def __init__(self, settings: EarlyStopping, max_steps: int, search=None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.search = search
        self.study = optuna.create_study(study_name=STUDY_NAME, direction="minimize",
                                         pruner=make_pruner(settings, max_steps), sampler=make_sampler(search))
        self.trials: dict = {}
        self.reported: dict[str, set[int]] = {}
        self.ended: set[str] = set()

    def _trial(self, trial_id: str):
        if trial_id not in self.trials:
            self.trials[trial_id] = self.study.ask()
        return self.trials[trial_id]

    def ask_params(self, trial_id: str, recorded: dict | None = None) -> dict:
        """The search parameters of a trial: drawn by the sampler, or the recorded ones replayed on a rebuild."""
        if recorded is not None:
            self.study.enqueue_trial(recorded)
        trial = self._trial(trial_id)
        return {name: suggest(trial, name, distribution) for name, distribution in self.search.parameters.items()}

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
    def rebuild(cls, settings: EarlyStopping, max_steps: int, state: StateStore, run_id: str,
                search=None) -> "SweepStudy":
        """The study as the run's recorded parameters, eval losses and trial outcomes leave it."""
        pruning = cls(settings, max_steps, search)
        for trial in state.trials(run_id):
            if search is not None and search.method == "optuna" and trial.params:
                pruning.ask_params(trial.id, trial.params)
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


def saved_usd(training_usd: float, steps_trained: int, steps_left: int) -> float:
    """What the steps a stopped trial will not train would have cost, at the $/step its node was paying since
    its first step (start-up time is not counted: a trial that went on would not start again)."""
    if steps_trained <= 0 or steps_left <= 0:
        return 0.0
    return training_usd / steps_trained * steps_left
