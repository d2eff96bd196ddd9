"""What a finished sweep leaves people: an exportable best trial, an MLflow record, and — with early stopping —
losing trials stopped early with the dollars saved and the same best trial.

The same 4-trial tiny-model sweep runs twice, with and without early stopping (Optuna's successive halving,
judged at every checkpoint); two learning rates are far too small to learn anything in 24 steps (long enough for
a stop to land mid-training on a loaded host: the controller hears of each evaluation through storage).
"""
from __future__ import annotations

import json

import pytest
import torch

from orchestrator.cli import main
from orchestrator.run.state import StateStore
from tests.orchestrator.adapters import base_plus_adapter, prompt_inputs
from tests.orchestrator.sweeps import only_run, spottune, tiny_sweep, warm_model_cache

pytestmark = pytest.mark.slow

STEPS = 24
GOOD, WORSE, BAD, WORST = 3.0e-3, 1.0e-3, 1.0e-7, 1.0e-8


def _sweep(directory, name: str, **sections) -> dict:
    spec = tiny_sweep(directory, name, max_steps=STEPS,
                      search={"parameters": {"training.learning_rate": [GOOD, WORSE, BAD, WORST]}}, **sections)
    state_dir = directory / "state"
    warm_model_cache()
    submitted = spottune("submit", str(spec), "--state-dir", str(state_dir), timeout=900)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    run_id = only_run(state_dir)
    report = spottune("report", run_id, "--json", "--state-dir", str(state_dir))
    assert report.returncode == 0, report.stderr
    text = spottune("report", run_id, "--state-dir", str(state_dir))
    return {"run": run_id, "state": StateStore(state_dir), "state_dir": state_dir, "report": json.loads(report.stdout),
            "text": text.stdout}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("plain"), "plain")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("pruned"), "pruned",
                  early_stopping={"pruner": "successive_halving", "min_steps": 3, "reduction_factor": 2})


def _by_rate(sweep: dict) -> dict[float, dict]:
    return {line["params"]["training.learning_rate"]: line for line in sweep["report"]["trials"]}


def test_report_names_the_export_and_the_export_gives_base_plus_adapter_logits(plain, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    best = plain["report"]["best"]
    assert best["params"]["training.learning_rate"] == GOOD
    assert f"export it: {best['export_command']}" in plain["text"]
    command = best["export_command"].split()
    assert command[:3] == ["spottune", "export", best["adapter"]]
    out = tmp_path / "best"
    assert main(["export", best["adapter"], "--to", str(out), "--dtype", "fp32"]) == 0
    adapter_dir = plain["state_dir"].parent / "store" / plain["run"] / best["trial_id"] / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(**prompt_inputs(tokenizer)).logits
        reference_model = base_plus_adapter(adapter_dir)
        expected = reference_model(**prompt_inputs(tokenizer)).logits
        with reference_model.disable_adapter():
            base_only = reference_model(**prompt_inputs(tokenizer)).logits
    assert (exported - expected).abs().max().item() < 1e-4
    assert (base_only - expected).abs().max().item() > 1e-3, "the trained adapter changes the logits"


def test_mlflow_store_holds_the_sweep_its_trials_and_their_metrics(plain):
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(plain["state_dir"] / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("spottune/plain")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("spottune.run_id") == plain["run"]]
    children = {run.data.tags["spottune.trial_id"]: run for run in runs
                if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    trials = plain["state"].trials(plain["run"])
    assert set(children) == {trial.id for trial in trials}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["usd"] == pytest.approx(plain["report"]["usd"], rel=1e-6)
    for trial in trials:
        child = children[trial.id]
        assert child.data.params == {"training.learning_rate": str(trial.params["training.learning_rate"])}
        losses = client.get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in sorted(losses, key=lambda m: m.step)] == list(range(1, STEPS + 1))
        expected = {step: value for _, step, value, _ in plain["state"].metrics(plain["run"], trial.id)}
        assert {m.step: m.value for m in losses} == expected
        evals = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "eval_loss")}
        assert evals[STEPS] == pytest.approx(trial.eval_loss)
        metrics = child.data.metrics
        assert metrics["predicted_usd"] > 0 and metrics["usd"] > 0
        assert metrics["predicted_vram_gib"] > 0 and metrics["measured_peak_memory_gib"] > 0
        assert metrics["predicted_step_seconds"] > 0 and metrics["measured_step_seconds"] > 0


def test_losing_trials_stop_early_keep_checkpoints_and_report_dollars_saved(pruned):
    trials = _by_rate(pruned)
    for rate in (BAD, WORST):
        line = trials[rate]
        assert line["state"] == "stopped" and line["steps"] < STEPS and line["saved_usd"] > 0, line
        store = pruned["state_dir"].parent / "store" / pruned["run"] / line["trial_id"] / "checkpoints"
        assert int((store / "latest").read_text()) >= 3, "a stopped trial keeps its committed checkpoints"
    assert trials[GOOD]["state"] == "succeeded" and trials[GOOD]["steps"] == STEPS
    assert pruned["report"]["saved_usd"] == pytest.approx(sum(line["saved_usd"] for line in trials.values()))
    assert "early stopping: " in pruned["text"] and "saved" in pruned["text"] and "$ SAVED" in pruned["text"]
    assert pruned["report"]["usd"] > 0


def test_best_trial_is_the_same_with_and_without_early_stopping(plain, pruned):
    assert pruned["report"]["best"]["trial_id"] == plain["report"]["best"]["trial_id"]
    assert pruned["report"]["best"]["eval_loss"] == pytest.approx(plain["report"]["best"]["eval_loss"], abs=1e-6)


def test_an_optuna_search_draws_each_trials_parameters_at_launch_and_trains_with_them(tmp_path):
    spec = tiny_sweep(tmp_path, "tpe", max_steps=6, search={
        "method": "optuna", "samples": 3, "seed": 5, "startup_trials": 2,
        "parameters": {"training.learning_rate": {"log_uniform": [1.0e-4, 1.0e-2]}}})
    warm_model_cache()
    submitted = spottune("submit", str(spec), "--state-dir", str(tmp_path / "state"), timeout=900)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    state = StateStore(tmp_path / "state")
    run_id = only_run(tmp_path / "state")
    rates = []
    for trial in state.trials(run_id):
        rate = trial.params["training.learning_rate"]
        assert trial.state == "succeeded" and 1.0e-4 <= rate <= 1.0e-2
        assert trial.config["training"]["learning_rate"] == rate
        assert f"parameters from the optuna search: training.learning_rate={rate}" in \
            (tmp_path / "state" / run_id / "logs" / f"{trial.id}.log").read_text()
        rates.append(rate)
    assert len(set(rates)) == 3
