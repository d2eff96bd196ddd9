import csv
import io
import json
from dataclasses import replace

import pytest

from cost_models.catalog import list_offers
from orchestrator.sweep.planner import choose_offer, plan_sweep, trial_job
from orchestrator.sweep.spec import load_spec
from tests.orchestrator.helpers import run_cli, write_spec


@pytest.fixture
def planned(tmp_path):
    spec, trials = load_spec(write_spec(tmp_path))
    offers = list_offers(spec.resources.providers, "any")
    return spec, trials, offers, plan_sweep(spec, trials, offers)


def test_every_trial_gets_a_row_per_offer_and_the_cheapest_fitting_one_is_chosen(planned):
    _, trials, offers, plan = planned
    assert len(plan.trials) == len(trials) == 2
    for trial in plan.trials:
        assert len(trial.rows) == len(offers)
        chosen = [row for row in trial.rows if row.chosen]
        assert len(chosen) == 1 and chosen[0] is trial.chosen
        assert chosen[0].run.usd == min(row.run.usd for row in trial.rows if row.fits)
        assert not trial.advice


def test_rows_carry_what_the_table_shows(planned):
    row = planned[3].trials[0].chosen.as_dict()
    for key in ("fits", "need_gib", "need_upper_gib", "have_gib", "headroom_gib", "peak_reserved_gib", "step_s",
                "step_s_low", "step_s_high", "hours", "expected_preemptions", "usd", "calibrated", "micro_batch",
                "checkpointing", "price_date", "chosen"):
        assert key in row
    assert row["headroom_gib"] == pytest.approx(row["have_gib"] - row["need_upper_gib"], abs=0.02)
    assert row["step_s_low"] < row["step_s"] < row["step_s_high"]


def test_trial_steps_come_from_the_data_set(tmp_path):
    spec, trials = load_spec(write_spec(tmp_path, config={"training": {"max_steps": None, "epochs": 2}}))
    job = trial_job(trials[0].id, trials[0].config)
    assert job.steps == 2 * -(-job.shape.rows.rows // 8)
    assert job.shape.rows.mean_tokens < 1024  # real rows, not max_seq_length


def test_replanning_after_progress_costs_less(planned):
    spec, trials, offers, _ = planned
    steps = trial_job(trials[0].id, trials[0].config).steps
    fresh = choose_offer(trials[0], offers, spec.resources)
    later = choose_offer(trials[0], offers, spec.resources, steps_done=steps * 3 // 4)
    assert later.run.work_hours == pytest.approx(fresh.run.work_hours * (steps - steps * 3 // 4) / steps, rel=0.01)
    assert later.run.usd < fresh.run.usd


def test_max_price_excludes_offers(tmp_path):
    spec, trials = load_spec(write_spec(tmp_path, resources={"max_price_per_hour": 0.3}))
    plan = plan_sweep(spec, trials, list_offers(spec.resources.providers, "any"))
    for trial in plan.trials:
        assert trial.chosen.usd_per_hour <= 0.3
        assert any(row.excluded for row in trial.rows)


def test_cli_table_marks_the_choice_and_flags_uncalibrated_rows(tmp_path):
    result = run_cli("plan", str(write_spec(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "uncalibrated" in result.stdout and "\n  *  " in result.stdout
    assert "placed 2/2 trial(s)" in result.stdout


def test_cli_filters_and_machine_readable_output(tmp_path):
    spec = str(write_spec(tmp_path))
    rows = json.loads(run_cli("plan", spec, "--json", "--gpu", "L4,A10G", "--spot").stdout)["rows"]
    assert rows and {r["gpu"] for r in rows} <= {"L4", "A10G"} and {r["market"] for r in rows} == {"spot"}
    table = list(csv.DictReader(io.StringIO(run_cli("plan", spec, "--csv", "--provider", "gcp",
                                                    "--max-price", "1").stdout)))
    assert table and {r["provider"] for r in table} == {"gcp"}
    assert all(float(r["usd_per_gpu_hour"]) <= 1 for r in table)


def test_cli_plot_writes_a_png(tmp_path):
    target = tmp_path / "plan.png"
    result = run_cli("plan", str(write_spec(tmp_path)), "--plot", str(target))
    assert result.returncode == 0, result.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("change, expected", [
    ({"resources": {"gpus": ["B300"]}}, "resources.gpus: unknown GPU 'B300'; accepted: "),
    ({"config": {"model": {"name": "nobody/unknown-model"}}}, "model.name: 'nobody/unknown-model' is not in"),
    ({"config": {"lora": {"target_modules": ["q_proj", "wq"]}}}, "lora.target_modules: ['wq'] not in qwen2.5-1.5b"),
])
def test_bad_specs_fail_with_one_line(tmp_path, change, expected):
    result = run_cli("plan", str(write_spec(tmp_path, **change)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "sweep.yaml" in lines[0], result.stderr


def test_a_config_that_fits_nowhere_says_what_would_make_it_fit(tmp_path):
    spec = write_spec(tmp_path, config={
        "model": {"name": "qwen2.5-72b", "quantization": "bf16"}, "data": {"max_seq_length": 8192},
    }, resources={"gpus": ["L4", "A10G"]})
    result = run_cli("plan", str(spec))
    assert result.returncode == 1
    assert "fits no offered GPU: needs" in result.stdout
    assert "would fit with: model.quantization nf4 on" in result.stdout
    assert "placed 0/2 trial(s)" in result.stdout


@pytest.mark.parametrize("model, expected", [
    ({"engine": "hf"}, "train_core-hf"),
    ({}, "train_core-fast"),  # auto: NF4 Qwen2 with bf16 compute runs on the fast engine
    ({"quantization": "bf16"}, "train_core-hf"),
    ({"name": "gemma-2-2b"}, "train_core-fast"),
    ({"name": "qwen3-8b"}, "train_core-fast"),
    ({"name": "phi-3.5-mini"}, "train_core-fast"),
    ({"name": "gemma-3-4b"}, "train_core-hf"),  # an image-text checkpoint: its text tower is not a fast-engine model
])
def test_the_engine_is_the_one_train_core_would_pick(tmp_path, model, expected):
    _, trials = load_spec(write_spec(tmp_path, config={"model": model}))
    assert trial_job(trials[0].id, trials[0].config).shape.engine == expected


def test_forcing_the_fast_engine_where_it_cannot_run_fails_with_one_line(tmp_path):
    result = run_cli("plan", str(write_spec(tmp_path, config={"model": {"engine": "fast", "quantization": "bf16"}})))
    assert result.returncode == 2
    assert "model.engine: fast is not possible for this run (base weights bf16" in result.stderr


@pytest.mark.parametrize("train, expected", [
    ("/nonexistent/train.jsonl", "field 'data.train': /nonexistent/train.jsonl: data file not found"),
    ("rows.jsonl", "field 'data.train': {dir}/rows.jsonl:2: field 'output' must be a string, got int"),
])
def test_plan_reads_the_data_as_the_trainer_does_instead_of_assuming_full_rows(tmp_path, train, expected):
    (tmp_path / "rows.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 123}\n',
                                         encoding="utf-8")
    result = run_cli("plan", str(write_spec(tmp_path, config={"data": {"train": str(tmp_path / train)}})))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected.format(dir=tmp_path) in lines[0], result.stderr


def test_plan_and_submit_say_the_same_about_providers(tmp_path):
    from cluster.providers.registry import support

    spec = write_spec(tmp_path, resources={"providers": ["moon"]})
    planned = run_cli("plan", str(spec))
    submitted = run_cli("submit", str(spec), "--state-dir", str(tmp_path / "state"))
    for result in (planned, submitted):
        assert result.returncode == 2
        assert "provider 'moon' is not available; " + support() in result.stderr, result.stderr
    assert support().startswith("this build plans aws, ") and support().endswith(" and launches aws, kubernetes, local")
    gcp = run_cli("submit", str(write_spec(tmp_path, resources={"providers": ["gcp"]}, name="gcp.yaml")))
    assert "provider 'gcp' can be planned (spottune plan) but not launched by this build; " + support() in gcp.stderr


def test_plot_labels_do_not_overlap(repo):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from orchestrator.views.plan_output import plan_figure

    spec, trials = load_spec(repo / "examples" / "sweep_qwen7b.yaml")  # 13 GPU types, the README's example
    figure = plan_figure(plan_sweep(spec, trials, list_offers(spec.resources.providers, "any")))
    renderer = FigureCanvasAgg(figure).get_renderer()
    for axis in figure.axes:
        boxes = [label.get_window_extent(renderer) for label in axis.get_xticklabels()]
        assert len(boxes) > 5
        for left, right in zip(boxes, boxes[1:]):
            assert left.x1 <= right.x0, (left, right)


def _cooling(offers, chosen, wait_s):
    return [replace(o, capacity_wait_s=wait_s) if o.key == chosen.offer.key else o for o in offers]


def test_replan_waits_for_the_cheaper_offer_unless_the_delay_is_worth_more(tmp_path):
    spec, trials = load_spec(write_spec(tmp_path))
    offers = list_offers(spec.resources.providers, "spot")
    preferred = choose_offer(trials[0], offers, spec.resources)
    cooling = _cooling(offers, preferred, 1800)
    free_delay = spec.resources.model_copy(update={"delay_usd_per_hour": 0})
    assert choose_offer(trials[0], cooling, free_delay) is None, "waiting costs nothing: wait"
    costly_delay = spec.resources.model_copy(update={"delay_usd_per_hour": 10_000})
    moved = choose_offer(trials[0], cooling, costly_delay)
    assert moved.offer.key != preferred.offer.key and moved.run.usd > preferred.run.usd
    assert choose_offer(trials[0], _cooling(offers, preferred, 0), costly_delay).offer.key == preferred.offer.key


def test_the_delay_price_decides_at_the_break_even_value(tmp_path):
    spec, trials = load_spec(write_spec(tmp_path))
    offers = list_offers(spec.resources.providers, "spot")
    preferred = choose_offer(trials[0], offers, spec.resources)
    runner_up = choose_offer(trials[0], [o for o in offers if o.key != preferred.offer.key], spec.resources)
    wait_s = 3600.0
    break_even = runner_up.run.usd - preferred.run.usd  # $ per hour of a one-hour wait
    below = spec.resources.model_copy(update={"delay_usd_per_hour": break_even * 0.9})
    above = spec.resources.model_copy(update={"delay_usd_per_hour": break_even * 1.1})
    assert choose_offer(trials[0], _cooling(offers, preferred, wait_s), below) is None
    assert choose_offer(trials[0], _cooling(offers, preferred, wait_s), above).offer.key == runner_up.offer.key


def test_plan_rows_show_the_wait(tmp_path):
    spec, trials = load_spec(write_spec(tmp_path))
    offers = list_offers(spec.resources.providers, "spot")
    preferred = choose_offer(trials[0], offers, spec.resources)
    plan = plan_sweep(spec, trials, _cooling(offers, preferred, 900))
    waits = {row.offer.key: row.as_dict()["wait_hours"] for row in plan.trials[0].rows}
    assert waits[preferred.offer.key] == pytest.approx(0.25) and sum(waits.values()) == pytest.approx(0.25)
