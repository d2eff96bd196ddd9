"""Early stopping decisions (Optuna pruners over eval losses), their rebuild from run state, and spec checks."""
from __future__ import annotations

import importlib.util

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.pruning import EarlyStopping, SweepStudy, saved_usd
from orchestrator.spec import load_spec
from orchestrator.state import StateStore
from orchestrator.tracking import TrackingSettings, wandb_enabled
from tests.orchestrator.sweeps import tiny_sweep

HALVING = EarlyStopping(pruner="successive_halving", min_steps=3, reduction_factor=2)
GOOD = {3: 7.63, 6: 7.60, 9: 7.59, 12: 7.58}
FLAT = {3: 7.65, 6: 7.65, 9: 7.65, 12: 7.65}


def test_successive_halving_stops_a_trial_worse_than_the_best_at_its_first_rung():
    pruning = SweepStudy(HALVING, 12)
    assert not any(pruning.report("t0", step, value) for step, value in GOOD.items())
    pruning.completed("t0", GOOD[12])
    assert pruning.report("t1", 0, 7.65) is False, "the eval before training is not a rung"
    assert pruning.report("t1", 3, FLAT[3]) is True


def test_a_trial_better_at_every_rung_is_never_stopped():
    pruning = SweepStudy(HALVING, 12)
    for step, value in FLAT.items():
        pruning.report("t0", step, value)
    pruning.completed("t0", FLAT[12])
    assert not any(pruning.report("t1", step, value) for step, value in GOOD.items())


@pytest.mark.parametrize("pruner, expected", [("median", [True, True, True]), ("hyperband", [False, True, False])])
def test_other_pruners_stop_flat_trials_after_good_ones(pruner, expected):
    """Hyperband compares trials within their bracket only (assigned by a hash of the study name and trial
    number, fixed here): a flat trial first in its bracket's rung goes on."""
    pruning = SweepStudy(EarlyStopping(pruner=pruner, min_steps=3, reduction_factor=2), 12)
    for index in range(3):
        for step, value in GOOD.items():
            pruning.report(f"good{index}", step, value - index * 0.001)
        pruning.completed(f"good{index}", GOOD[12])
    stopped = [any(pruning.report(f"flat{index}", step, value) for step, value in FLAT.items()) for index in range(3)]
    assert stopped == expected


def test_a_rebuilt_study_decides_like_the_live_one(tmp_path):
    state = StateStore(tmp_path)
    rows = [{"id": trial, "index": index, "params": {}, "config": {}, "total_steps": 12}
            for index, trial in enumerate(("t0", "t1"))]
    state.create_run("r1", "demo", "spec.yaml", {"name": "demo"}, "file:///tmp/x", rows)
    state.add_metrics("r1", "t0", 1, [(step, "eval_loss", value, 0.0) for step, value in GOOD.items()])
    rebuilt = SweepStudy.rebuild(HALVING, 12, state, "r1")
    assert rebuilt.report("t1", 3, FLAT[3]) is True


def test_saved_dollars_are_the_remaining_steps_at_the_paid_rate():
    assert saved_usd(0.03, 3, 9) == pytest.approx(0.09)
    assert saved_usd(0.03, 0, 9) == 0.0 and saved_usd(0.03, 3, 0) == 0.0


def test_early_stopping_without_an_eval_set_is_one_line(tmp_path):
    spec = tiny_sweep(tmp_path, "noeval", early_stopping={"pruner": "median"})
    raw = yaml.safe_load(spec.read_text())
    del raw["config"]["data"]["eval"]
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"noeval\.yaml: field 'early_stopping': trials are judged by eval loss; "
                                        r"set data\.eval$"):
        load_spec(spec)


def test_early_stopping_judges_at_checkpoints(tmp_path):
    spec, trials = load_spec(tiny_sweep(tmp_path, "judged", early_stopping={"pruner": "median"}))
    assert all(trial.config.training.eval_every == spec.checkpoint.every_steps for trial in trials)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="checks the wandb-not-installed path")
def test_without_wandb_installed_auto_is_off_and_true_is_a_spec_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_enabled(TrackingSettings()) is False
    with pytest.raises(SpecError, match=r"wandb\.yaml: field 'tracking\.wandb'.*needs the wandb package"):
        load_spec(tiny_sweep(tmp_path, "wandb", tracking={"wandb": True}))


def _optuna_spec(tmp_path, samples: int = 6, **search):
    parameters = {"training.learning_rate": {"log_uniform": [1.0e-5, 1.0e-2]}, "lora.r": [4, 8]}
    return load_spec(tiny_sweep(tmp_path, "tpe", search={"method": "optuna", "samples": samples, "seed": 7,
                                                         "parameters": parameters, **search}))


def test_optuna_search_makes_its_trials_and_draws_their_parameters_in_range(tmp_path):
    spec, trials = _optuna_spec(tmp_path)
    assert len({trial.id for trial in trials}) == 6 and all(trial.params == {} for trial in trials)
    draws = []
    for attempt in range(2):
        study = SweepStudy(EarlyStopping(), 10, spec.search)
        draws.append([study.ask_params(trial.id) for trial in trials[:3]])
    assert draws[0] == draws[1], "the seed fixes the draws"
    for params in draws[0]:
        assert 1.0e-5 <= params["training.learning_rate"] <= 1.0e-2 and params["lora.r"] in (4, 8)


def test_tpe_takes_over_after_the_startup_trials_and_learns_from_their_losses(tmp_path):
    spec, trials = _optuna_spec(tmp_path, samples=24, startup_trials=8)
    study = SweepStudy(EarlyStopping(), 10, spec.search)
    rates = []
    for trial in trials:  # the loss falls as the learning rate rises: TPE should move to high rates
        rates.append(study.ask_params(trial.id)["training.learning_rate"])
        study.completed(trial.id, -rates[-1])
    startup, guided = sorted(rates[:8]), sorted(rates[-8:])
    assert guided[4] > startup[4] and guided[4] > 3.0e-3, rates


def test_a_rebuilt_study_replays_recorded_parameters(tmp_path):
    spec, trials = _optuna_spec(tmp_path)
    state = StateStore(tmp_path)
    rows = [{"id": t.id, "index": t.index, "params": {}, "config": {}, "total_steps": 10} for t in trials]
    state.create_run("r1", "tpe", "spec.yaml", {"name": "tpe"}, "file:///tmp/x", rows)
    recorded = {"training.learning_rate": 3.0e-4, "lora.r": 8}
    state.set_trial_params("r1", trials[0].id, recorded, {})
    study = SweepStudy.rebuild(EarlyStopping(), 10, state, "r1", spec.search)
    assert study.study.trials[0].params == recorded


def test_an_optuna_range_the_field_does_not_accept_is_one_line(tmp_path):
    spec = tiny_sweep(tmp_path, "badrange", search={"method": "optuna", "samples": 2,
                                                    "parameters": {"lora.dropout": {"uniform": [0.0, 1.5]}}})
    with pytest.raises(SpecError, match=r"badrange\.yaml \(search\.parameters\.lora\.dropout=1\.5\)"):
        load_spec(spec)
