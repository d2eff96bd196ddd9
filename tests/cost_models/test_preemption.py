import math

import pytest

from cost_models.preemption import expected_run, expected_wall_hours, optimal_interval_hours

CHECKPOINT_S, RESTART_S = 120.0, 600.0  # the worked example of research/estimation.md 5.1


def test_daly_interval_is_close_to_young_for_cheap_checkpoints():
    c = CHECKPOINT_S / 3600
    for rate in (0.01, 0.05, 0.2):
        young = math.sqrt(2 * c / rate)
        assert optimal_interval_hours(c, rate) == pytest.approx(young, rel=0.05)


@pytest.mark.parametrize("rate, wall", [(0.01, 10.3), (0.05, 10.7), (0.1, 11.1), (0.2, 11.6)])
def test_expected_wall_time_matches_the_worked_example(rate, wall):
    steps, step_s = 3600, 10.0  # 10 hours of work
    run = expected_run(steps, step_s, 0.40, rate, CHECKPOINT_S, RESTART_S)
    assert run.work_hours == pytest.approx(10.0)
    assert run.wall_hours == pytest.approx(wall, abs=0.15)
    assert run.usd == pytest.approx(0.40 * run.wall_hours)
    assert run.expected_preemptions == pytest.approx(rate * run.wall_hours)


def test_more_interruptions_cost_more_time_and_no_interruptions_cost_only_checkpoints():
    walls = [expected_run(1000, 36.0, 1.0, rate, 5.0, 300.0).wall_hours for rate in (0.001, 0.01, 0.1, 0.3)]
    assert walls == sorted(walls)
    assert expected_wall_hours(10.0, 1.0, 0.01, 0.1, 0.0) == pytest.approx(10.1)


def test_a_fixed_interval_is_respected_and_a_bad_one_costs_more():
    best = expected_run(2000, 10.0, 1.0, 0.1, 5.0, 300.0)
    fixed = expected_run(2000, 10.0, 1.0, 0.1, 5.0, 300.0, every_steps=1000)
    assert fixed.checkpoint_every_steps == 1000
    assert fixed.wall_hours > best.wall_hours


def test_finished_work_costs_nothing():
    assert expected_run(0, 10.0, 1.0, 0.1, 5.0, 300.0).usd == 0
