"""Place trials on offers: each trial's TrainConfig becomes a cost_models JobShape, is sized and estimated on
every offered GPU type, priced per offer with expected preemptions, and the cheapest offer that fits (within
the sweep's limits) is chosen. An offer without capacity now (a spot type in its cooldown) is priced as waiting
for it: its run plus the expected wait at the sweep's value of an hour of delay (cost_models.waiting); when that
wins, choose_offer() answers None and the trial waits. The controller calls choose_offer() to place a trial and
again, with steps_done, to re-plan after a preemption. Never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pydantic import BaseModel

from cluster.errors import ClusterError
from cluster.provider import Requirements
from cluster.providers import registry
from cluster.providers.fleet import ProviderFleet
from cluster.providers.registry import ProviderContext
from cluster.storage import StorageURI
from cost_models.autosize import autosize, fit_advice
from cost_models.calibration import Calibration, load_calibration
from cost_models.catalog import Offer, gpus
from cost_models.errors import EstimateError
from cost_models.estimate import DEFAULT_VRAM_HEADROOM, Estimate
from cost_models.memory import static_bytes
from cost_models.preemption import RunCost, checkpoint_seconds, expected_run, restart_seconds
from cost_models.shape import JobShape
from cost_models.sizing import architecture, model_facts, row_stats, sizing_job
from cost_models.waiting import DEFAULT_DELAY_USD_PER_HOUR, expected_wait_hours, priced_usd
from orchestrator.errors import SpecError
from orchestrator.sweep.spec import Resources, SweepSpec, TrialSpec
from runspec.config import TrainConfig
from runspec.errors import ConfigError
from runspec.resolve import Device, run_steps, settle
from train_core.cache import cache_root

DEFAULT_STORAGE = StorageURI("file", "", "./runs")


@dataclass(frozen=True)
class TrialJob:
    """A trial as the estimators see it: the shape before sizing, and what sizing may change."""

    trial_id: str
    shape: JobShape
    rows_per_worker: int  # sequences one worker processes per optimizer step
    micro_batch: int | None  # None = auto
    checkpointing: str | None  # None = auto
    steps: int
    vram_headroom: float = DEFAULT_VRAM_HEADROOM  # share of the card kept free beyond the memory upper bound


@dataclass(frozen=True)
class PlanRow:
    trial_id: str
    offer: Offer
    estimate: Estimate
    run: RunCost | None  # None when the job does not fit this GPU
    chosen: bool = False
    excluded: str = ""  # why a fitting offer cannot be chosen (price limit)

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    @property
    def usd_per_hour(self) -> float:
        """What this trial pays per hour on this offer (every GPU of the instances it rents)."""
        return self.offer.usd_per_hour(self.estimate.shape.gpus)

    @property
    def wait_hours(self) -> float:
        """Expected hours before this offer has capacity (0: launchable now)."""
        return expected_wait_hours(self.offer.capacity_wait_s)

    def as_dict(self) -> dict:
        e, o, r = self.estimate, self.offer, self.run
        return {
            "trial": self.trial_id, "gpu": o.gpu.name, "provider": o.provider, "instance_type": o.instance_type,
            "region": o.region, "market": o.market, "usd_per_gpu_hour": o.usd_per_gpu_hour,
            "billed_gpus": o.billed_gpus(e.shape.gpus), "usd_per_hour": self.usd_per_hour, "price_date": o.date,
            "interruptions_per_hour": o.interruptions_per_hour, "fits": e.fits, "need_gib": e.need_gib,
            "need_upper_gib": e.need_upper_gib, "have_gib": e.have_gib, "headroom_gib": e.headroom_gib,
            "peak_reserved_gib": e.memory.reserved,
            "micro_batch": e.shape.micro_batch, "grad_accum": e.shape.grad_accum,
            "checkpointing": e.shape.checkpointing, "step_s": e.time.step, "step_s_low": e.step_low,
            "step_s_high": e.step_high, "bound": e.time.bound,
            "tokens_per_step": e.time.tokens_per_step, "work_hours": r.work_hours if r else None,
            "hours": r.wall_hours if r else None, "expected_preemptions": r.expected_preemptions if r else None,
            "checkpoint_every_steps": r.checkpoint_every_steps if r else None, "usd": r.usd if r else None,
            "wait_hours": self.wait_hours, "calibrated": e.calibrated, "chosen": self.chosen,
            "excluded": self.excluded,
        }


@dataclass(frozen=True)
class TrialPlan:
    trial_id: str
    steps: int
    data: str  # where the token statistics came from
    rows: list[PlanRow]
    chosen: PlanRow | None
    advice: str = ""  # when nothing fits: what would


@dataclass(frozen=True)
class SweepPlan:
    trials: list[TrialPlan]
    offers: int
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> list[PlanRow]:
        return [row for trial in self.trials for row in trial.rows]

    @property
    def total_usd(self) -> float:
        return sum(t.chosen.run.usd for t in self.trials if t.chosen and t.chosen.run)

    @property
    def unplaced(self) -> list[TrialPlan]:
        return [t for t in self.trials if t.chosen is None]


def trial_job(trial_id: str, config: TrainConfig, gpus_per_trial: int = 1,
              vram_headroom: float = DEFAULT_VRAM_HEADROOM) -> TrialJob:
    """Translate a TrainConfig into the estimators' terms: its run settled by runspec.resolve for a CUDA GPU, as
    train_core settles it, and its steps by runspec.run_steps over the data's estimated rows."""
    arch = architecture(config, cache_root())
    device = Device("cuda", workers=gpus_per_trial)
    run = settle(config, device, lambda: model_facts(arch))
    rows = row_stats(config, cache_root())
    job = sizing_job(config, run, arch, rows, gpus_per_trial)
    training = config.training
    steps = run_steps([rows.rows] * training.epochs, training.batch_size, training.max_steps)
    return TrialJob(trial_id, job.shape, job.rows_per_worker, job.micro_batch, job.checkpointing, steps, vram_headroom)


def requirements(resources: Resources) -> Requirements:
    """What a sweep's resources ask of a provider's market."""
    return Requirements(resources.gpus_per_node, tuple(resources.gpus) if resources.gpus else None, resources.market)


def check_providers(names: list[str], where: str, launch: bool) -> None:
    """Raise SpecError naming `where` for the first provider that cannot be planned (or, with launch, launched)."""
    try:
        registry.check(names, launch)
    except ClusterError as error:
        raise SpecError(f"{where}: {error}") from None


def offers_for(resources: Resources, settings: BaseModel) -> list[Offer]:
    """The offers a sweep may use: what each of its providers, built from its settings, offers now."""
    fleet = ProviderFleet.build(resources.providers, settings, ProviderContext(Path.cwd()))
    return fleet.offers(requirements(resources))


def price_row(job: TrialJob, offer: Offer, sized: Estimate, steps_done: int, storage: StorageURI,
              every_steps: int | None) -> PlanRow:
    if not sized.fits:
        return PlanRow(job.trial_id, offer, sized, None)
    shape = sized.shape
    state = static_bytes(shape)
    checkpoint = checkpoint_seconds(state["lora_params_grads"] / 2 + state["optimizer_state"], str(storage))
    restart = restart_seconds(shape.arch.total_params * 2)
    run = expected_run(max(0, job.steps - steps_done), sized.time.step, offer.usd_per_hour(shape.gpus),
                       offer.interruptions_per_hour, checkpoint, restart, every_steps)
    return PlanRow(job.trial_id, offer, sized, run)


def _pick(rows: list[PlanRow], max_price_per_hour: float | None, delay_usd_per_hour: float) -> list[PlanRow]:
    priced = []
    for row in rows:
        if row.run is not None and max_price_per_hour is not None and row.usd_per_hour > max_price_per_hour:
            row = PlanRow(row.trial_id, row.offer, row.estimate, row.run,
                          excluded=f"over max_price_per_hour {max_price_per_hour:g}")
        priced.append(row)
    candidates = [r for r in priced if r.run is not None and not r.excluded]
    if candidates:
        best = min(candidates, key=lambda r: (priced_usd(r.run.usd, r.offer.capacity_wait_s, delay_usd_per_hour),
                                              r.wait_hours + r.run.wall_hours, r.offer.key))
        priced = [PlanRow(r.trial_id, r.offer, r.estimate, r.run, True) if r is best else r for r in priced]
    return sorted(priced, key=lambda r: (not r.fits, r.run.usd if r.run else math.inf, r.offer.key))


def plan_trial(
    job: TrialJob,
    offers: Sequence[Offer],
    max_price_per_hour: float | None = None,
    steps_done: int = 0,
    storage: StorageURI = DEFAULT_STORAGE,
    every_steps: int | None = None,
    calibration: Calibration | None = None,
    sizing_cache: dict | None = None,
    delay_usd_per_hour: float = DEFAULT_DELAY_USD_PER_HOUR,
) -> TrialPlan:
    """Every offer for one trial, sized per GPU type, priced, with the cheapest fitting one chosen (a wait for
    capacity priced at delay_usd_per_hour)."""
    calibration = calibration or load_calibration(job.shape.engine)
    cache = {} if sizing_cache is None else sizing_cache
    rows = []
    for offer in offers:
        key = (job.shape, job.rows_per_worker, job.micro_batch, job.checkpointing, offer.gpu.name, job.vram_headroom)
        if key not in cache:
            cache[key] = autosize(job.shape, offer.gpu, job.rows_per_worker, job.micro_batch, job.checkpointing,
                                  calibration, job.vram_headroom)
        rows.append(price_row(job, offer, cache[key], steps_done, storage, every_steps))
    rows = _pick(rows, max_price_per_hour, delay_usd_per_hour)
    chosen = next((r for r in rows if r.chosen), None)
    advice = ""
    if chosen is None:
        if any(r.fits for r in rows):
            advice = f"fits, but every fitting offer costs more than max_price_per_hour {max_price_per_hour:g}"
        else:
            offered = {o.gpu.name: o.gpu for o in offers}.values()
            advice = fit_advice(job.shape, job.rows_per_worker, offered, gpus().values(), job.micro_batch,
                                job.checkpointing, calibration, job.vram_headroom)
    return TrialPlan(job.trial_id, job.steps, job.shape.rows.source, rows, chosen, advice)


def choose_offer(
    trial: TrialSpec,
    offers: Sequence[Offer],
    resources: Resources,
    steps_done: int = 0,
    storage: StorageURI = DEFAULT_STORAGE,
    every_steps: int | None = None,
) -> PlanRow | None:
    """The cheapest offer (expected $, preemptions included) on which the trial's remaining steps fit; None when
    none fits, or when waiting for an offer's capacity (its wait priced at resources.delay_usd_per_hour) is cheaper
    than every offer launchable now."""
    job = trial_job(trial.id, trial.config, resources.gpus_per_trial, resources.vram_headroom)
    chosen = plan_trial(job, offers, resources.max_price_per_hour, steps_done, storage, every_steps,
                        delay_usd_per_hour=resources.delay_usd_per_hour).chosen
    return chosen if chosen is not None and chosen.wait_hours == 0 else None


def plan_sweep(spec: SweepSpec, trials: Iterable[TrialSpec], offers: Sequence[Offer]) -> SweepPlan:
    """Every trial × offer of a sweep; trials with equal shapes share their sizing."""
    every = spec.checkpoint.every_steps if isinstance(spec.checkpoint.every_steps, int) else None
    cache: dict = {}
    plans = []
    for trial in trials:
        try:
            job = trial_job(trial.id, trial.config, spec.resources.gpus_per_trial, spec.resources.vram_headroom)
        except (EstimateError, ConfigError) as error:
            raise EstimateError(f"trial {trial.id}: {error}") from None
        plans.append(plan_trial(job, offers, spec.resources.max_price_per_hour, 0, spec.storage, every, None, cache,
                                spec.resources.delay_usd_per_hour))
    notes = []
    if spec.resources.max_total_cost is not None:
        total = sum(p.chosen.run.usd for p in plans if p.chosen and p.chosen.run)
        if total > spec.resources.max_total_cost:
            limit = spec.resources.max_total_cost
            notes.append(f"expected total ${total:.2f} exceeds resources.max_total_cost ${limit:g}")
    return SweepPlan(plans, len(offers), notes)

