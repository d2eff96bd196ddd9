"""Wait for the preferred offer's capacity, or move now: both priced in dollars.

A trial that lost its node may relaunch at once on the cheapest offer with capacity, or wait for an offer whose
capacity the provider expects back (a spot type just reclaimed has none for a cooldown). Waiting is not billed,
but the trial finishes later; the sweep says what an hour of that delay is worth to its user
(`resources.delay_usd_per_hour`). An option's price is its expected run cost (preemptions, checkpoints and restarts
included: cost_models.preemption) plus its expected wait at that value; the cheaper option wins.
"""
from __future__ import annotations

DEFAULT_DELAY_USD_PER_HOUR = 0.25  # what an hour of one trial's idle wait is worth by default (see README)


def expected_wait_hours(capacity_wait_s: float) -> float:
    """Hours until the offer can be launched: the provider's reported cooldown (0 = capacity now)."""
    return max(0.0, capacity_wait_s) / 3600


def priced_usd(run_usd: float, capacity_wait_s: float, delay_usd_per_hour: float) -> float:
    """An option's price: its expected run dollars plus its expected wait at the user's value of an hour of delay."""
    return run_usd + expected_wait_hours(capacity_wait_s) * delay_usd_per_hour

