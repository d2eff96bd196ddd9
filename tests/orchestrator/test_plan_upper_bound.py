"""The planner places a trial only where the estimate's memory upper bound fits the card less the sweep's
vram_headroom, whatever the point estimate says."""
import json

import pytest

from cost_models.catalog import list_offers
from orchestrator.planner import plan_sweep
from orchestrator.spec import load_spec
from tests.orchestrator.helpers import write_spec

GRID = {
    "model.name": ["qwen2.5-1.5b", "mistral-7b", "llama-3-8b", "gemma-2-2b"],
    "training.micro_batch_size": [1, 8],
    "training.activation_checkpointing": ["none", "offload", "auto"],
}


def _plan(tmp_path, headroom=None):
    resources = {"providers": ["aws", "gcp", "runpod", "lambda", "local"]}
    if headroom is not None:
        resources["vram_headroom"] = headroom
    rows = [{"instruction": f"Summarise report {i}.", "input": "", "output": "word " * 6000} for i in range(8)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = {"data": {"train": str(tmp_path / "long.jsonl"), "max_seq_length": 4096}}  # full 4096-token rows
    spec, trials = load_spec(write_spec(tmp_path, config=config, parameters=GRID, resources=resources))
    return spec, plan_sweep(spec, trials, list_offers(spec.resources.providers, "any"))


@pytest.mark.parametrize("headroom", [None, 0.0, 0.2])
def test_no_trial_is_placed_where_its_upper_bound_does_not_fit(tmp_path, headroom):
    spec, plan = _plan(tmp_path, headroom)
    keep = spec.resources.vram_headroom
    assert keep == (0.03 if headroom is None else headroom)
    placed = 0
    for trial in plan.trials:
        for row in trial.rows:
            e = row.estimate
            assert e.need_gib <= e.need_upper_gib
            assert row.fits == (e.need_upper_gib <= e.have_gib * (1 - keep))
            if row.chosen:
                placed += 1
                assert e.need_upper_gib <= e.have_gib * (1 - keep)
    assert placed and plan.unplaced  # the grid has trials that fit somewhere and trials that fit nowhere


def test_a_card_the_point_fits_but_the_upper_bound_does_not_is_refused(tmp_path):
    _, plan = _plan(tmp_path)
    between = [row for trial in plan.trials for row in trial.rows
               if row.estimate.need_gib <= row.estimate.have_gib * 0.97 < row.estimate.need_upper_gib]
    assert between, "the grid should hold jobs whose point fits a card that their upper bound does not"
    assert not any(row.fits or row.chosen or row.run for row in between)


def test_more_headroom_never_adds_a_placement(tmp_path):
    for name in ("tight", "loose"):
        (tmp_path / name).mkdir()
    _, tight = _plan(tmp_path / "tight", 0.0)
    _, loose = _plan(tmp_path / "loose", 0.2)
    fits_tight = {(t.trial_id, r.offer.key) for t in tight.trials for r in t.rows if r.fits}
    fits_loose = {(t.trial_id, r.offer.key) for t in loose.trials for r in t.rows if r.fits}
    assert fits_loose < fits_tight


def test_explain_shows_the_terms_the_bound_and_the_interval_without_torch(tmp_path):
    from tests.orchestrator.helpers import run_cli

    rows = [{"instruction": f"Summarise report {i}.", "input": "", "output": "word " * 6000} for i in range(8)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = {"data": {"train": str(tmp_path / "long.jsonl"), "max_seq_length": 4096}}
    spec_path = write_spec(tmp_path, config=config, parameters={"training.activation_checkpointing": ["offload"]},
                           resources={"providers": ["aws"]})
    spec, trials = load_spec(spec_path)
    plan = plan_sweep(spec, trials, list_offers(spec.resources.providers, "any"))
    row = next(r for r in plan.trials[0].rows if r.offer.gpu.name == "L4")
    result = run_cli("plan", str(spec_path), "--explain", trials[0].id, "l4", check_no_torch=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for term in ("weights", "LoRA params + grads", "activations", "logits / loss", "workspace",
                 "offload held inputs", "allocator margin", "upper bound", "GEMMs", "host (Python, launches)",
                 "interval", "distance from measured points"):
        assert term in out
    assert f"upper bound                  {row.estimate.need_upper_gib:.2f}" in out
    assert f"interval {row.estimate.step_low:.3f}-{row.estimate.step_high:.3f}" in out
    wrong = run_cli("plan", str(spec_path), "--explain", trials[0].id, "B300")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "accepted: " in wrong.stderr
