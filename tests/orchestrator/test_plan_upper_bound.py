"""The planner places a trial only where the estimate's memory upper bound fits the card less the sweep's
vram_headroom, whatever the point estimate says."""
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
    config = {"data": {"train": str(tmp_path / "absent.jsonl"), "max_seq_length": 4096}}  # full 4096-token rows
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
