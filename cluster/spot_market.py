"""The local provider's simulated spot market: when a node is reclaimed, with how much notice, and what breaks.

Preemptions come from a schedule (per trial and attempt, at a training step or after some running time)
or at random from a hazard rate, drawn from a generator seeded by (seed, trial, attempt) so a sweep's
chaos is reproducible. Storage faults make one checkpoint upload fail midway.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

TrialRef = Union[int, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ScheduledPreemption(_Strict):
    trial: TrialRef = Field(..., description="Trial index in the sweep (0, 1, ...) or trial id.")
    attempt: int = Field(1, ge=1, description="Which launch of that trial is preempted (1 = the first).")
    at_step: int | None = Field(None, ge=1, description="Preempt once the node has trained this many steps.")
    after_s: float | None = Field(None, ge=0, description="Preempt this many seconds after the node is running.")
    notice_s: float = Field(0.0, ge=0, description="Warning before the hard kill; 0 kills without notice.")

    @model_validator(mode="after")
    def _one_trigger(self) -> "ScheduledPreemption":
        if (self.at_step is None) == (self.after_s is None):
            raise ValueError("give exactly one of at_step or after_s")
        return self


class StorageFault(_Strict):
    trial: TrialRef = Field(..., description="Trial index in the sweep or trial id.")
    attempt: int = Field(1, ge=1, description="Which launch of that trial sees the fault.")
    step: int = Field(..., ge=1, description="The checkpoint step whose upload fails midway.")
    kind: Literal["connection_lost", "disk_full"] = Field(
        "connection_lost", description="How it fails: a dropped connection, or ENOSPC (no space left on device).")


class SimulatedMarket(_Strict):
    seed: int = Field(0, description="Seed of the random preemptions.")
    hazard_per_hour: float = Field(0.0, ge=0, description="Random preemptions per node-hour of running time.")
    catalog_hazard_scale: float = Field(
        0.0, ge=0, description="Random preemptions at this multiple of each spot offer's catalog interruption "
        "bucket rate (used when hazard_per_hour is 0; 0 = off)."
    )
    prices_from: list[str] | None = Field(
        None, description="Providers whose catalog prices and buckets the market copies (cheapest per GPU type "
        "and market); null = every provider."
    )
    time_scale: float = Field(
        1.0, gt=0, description="Simulated seconds per real second: boot, preemption times, notices and cooldowns "
        "of the market run this much faster (hours-long runs replayed in minutes)."
    )
    notice_s: float = Field(120.0, ge=0, description="Notice given with random preemptions (AWS gives 120 s).")
    capacity_cooldown_s: float = Field(
        300.0, ge=0, description="After a preemption, that GPU type has no spot capacity for this long."
    )
    boot_s: float = Field(0.0, ge=0, description="Simulated time from launch until a node is running.")
    preemptions: list[ScheduledPreemption] = Field(default_factory=list)
    storage_faults: list[StorageFault] = Field(default_factory=list)


@dataclass(frozen=True)
class PreemptionPlan:
    at_step: int | None
    after_s: float | None
    notice_s: float
    source: str  # "schedule" or "hazard"


def _matches(reference: TrialRef, trial_index: int, trial_id: str) -> bool:
    return reference == trial_index if isinstance(reference, int) else reference == trial_id


def plan_preemption(market: SimulatedMarket, trial_index: int, trial_id: str, attempt: int,
                    catalog_rate_per_hour: float = 0.0) -> PreemptionPlan | None:
    """When (if ever) the node of this launch is reclaimed, in simulated seconds of running time.
    catalog_rate_per_hour: the launched offer's bucket rate, which catalog_hazard_scale multiplies."""
    for entry in market.preemptions:
        if entry.attempt == attempt and _matches(entry.trial, trial_index, trial_id):
            return PreemptionPlan(entry.at_step, entry.after_s, entry.notice_s, "schedule")
    rate = market.hazard_per_hour or market.catalog_hazard_scale * catalog_rate_per_hour
    if rate <= 0:
        return None
    generator = random.Random(f"{market.seed}/{trial_id}/{attempt}")
    return PreemptionPlan(None, generator.expovariate(rate / 3600.0), market.notice_s, "hazard")


def storage_fault(market: SimulatedMarket, trial_index: int, trial_id: str, attempt: int) -> StorageFault | None:
    """The checkpoint upload that fails on this launch, if any."""
    for fault in market.storage_faults:
        if fault.attempt == attempt and _matches(fault.trial, trial_index, trial_id):
            return fault
    return None


def unknown_trial_refs(market: SimulatedMarket, trial_ids: list[str]) -> list[str]:
    """References in the schedule that name no trial of the sweep."""
    bad = []
    for entry in [*market.preemptions, *market.storage_faults]:
        ref = entry.trial
        if (isinstance(ref, int) and not 0 <= ref < len(trial_ids)) or (isinstance(ref, str) and ref not in trial_ids):
            bad.append(str(ref))
    return bad
