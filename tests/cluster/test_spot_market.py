"""The simulated spot market's decisions: schedules, seeded hazards, storage faults."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from cluster.spot_market import (
    ScheduledPreemption, SimulatedMarket, plan_preemption, storage_fault, unknown_trial_refs,
)


def test_schedule_matches_by_index_or_id_and_attempt():
    market = SimulatedMarket(preemptions=[
        {"trial": 0, "at_step": 4, "notice_s": 30},
        {"trial": "t001-abcdef", "attempt": 2, "after_s": 5},
    ])
    first = plan_preemption(market, 0, "t000-aaaaaa", 1)
    assert (first.at_step, first.after_s, first.notice_s, first.source) == (4, None, 30, "schedule")
    assert plan_preemption(market, 0, "t000-aaaaaa", 2) is None
    assert plan_preemption(market, 1, "t001-abcdef", 1) is None
    assert plan_preemption(market, 1, "t001-abcdef", 2).after_s == 5


def test_hazard_is_reproducible_per_trial_and_attempt():
    market = SimulatedMarket(seed=7, hazard_per_hour=3600, notice_s=10)
    draws = [plan_preemption(market, 0, "t000-aaaaaa", attempt).after_s for attempt in (1, 2)]
    assert draws == [plan_preemption(market, 0, "t000-aaaaaa", attempt).after_s for attempt in (1, 2)]
    assert draws[0] != draws[1]
    other_seed = SimulatedMarket(seed=8, hazard_per_hour=3600)
    assert plan_preemption(other_seed, 0, "t000-aaaaaa", 1).after_s != draws[0]
    assert plan_preemption(market, 0, "t000-aaaaaa", 1).notice_s == 10
    assert plan_preemption(SimulatedMarket(), 0, "t000-aaaaaa", 1) is None


def test_a_preemption_needs_exactly_one_trigger():
    with pytest.raises(ValidationError, match="exactly one of at_step or after_s"):
        ScheduledPreemption(trial=0, at_step=3, after_s=2.0)
    with pytest.raises(ValidationError, match="exactly one of at_step or after_s"):
        ScheduledPreemption(trial=0)


def test_storage_faults_and_unknown_references():
    market = SimulatedMarket(storage_faults=[{"trial": 1, "step": 6, "kind": "disk_full"}],
                             preemptions=[{"trial": 5, "at_step": 1}])
    assert (storage_fault(market, 1, "t001-x", 1).step, storage_fault(market, 1, "t001-x", 1).kind) == (6, "disk_full")
    assert storage_fault(market, 1, "t001-x", 2) is None
    assert unknown_trial_refs(market, ["t000-x", "t001-x"]) == ["5"]


def test_catalog_hazard_scales_the_offers_bucket_rate():
    """Same seed and attempt: a rate k times higher draws the same exponential k times sooner."""
    market = SimulatedMarket(seed=3, catalog_hazard_scale=2.0)
    slow = plan_preemption(market, 0, "t000-aaaaaa", 1, catalog_rate_per_hour=0.05)
    fast = plan_preemption(market, 0, "t000-aaaaaa", 1, catalog_rate_per_hour=0.2)
    assert slow.source == fast.source == "hazard"
    assert slow.after_s == pytest.approx(4 * fast.after_s)
    assert plan_preemption(SimulatedMarket(seed=3), 0, "t000-aaaaaa", 1, catalog_rate_per_hour=0.2) is None
    fixed = SimulatedMarket(seed=3, hazard_per_hour=0.1, catalog_hazard_scale=2.0)
    assert plan_preemption(fixed, 0, "t000-aaaaaa", 1, 0.2).after_s == pytest.approx(fast.after_s * 4)
