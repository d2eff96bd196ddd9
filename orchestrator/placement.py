"""Where each trial runs: requirements, the cheapest offer that fits, and a cost estimate for the plan.

INTERIM, deliberately crude: until the estimators of issue 3 land (orchestrator/planner.py over
cost_models/), memory need and step time come from the parameter count alone (named builtins, or a
"7B"-style size in the model name, else 7B assumed) and a fixed 35 % of the GPU's bf16 peak. Swap
`requirements_for` / `estimate` for the planner's functions when it lands; the controller calls only these.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from cluster.interim_catalog import gpu_prices
from cluster.provider import NodeOffer, Requirements
from orchestrator.errors import SpecError
from orchestrator.spec import Resources, SweepSpec, TrialSpec
from train_core.config import TrainConfig

KNOWN_PARAMS_B = {"builtin:tiny-llama": 0.001, "builtin:tiny-qwen2": 0.001, "builtin:smollm2-135m-instruct": 0.135}
BYTES_PER_PARAM = {"nf4": 0.6, "auto": 0.6, "bf16": 2.0, "fp32": 4.0}
OVERHEAD_GIB = 3.0  # LoRA state, activations, CUDA context: a flat crude allowance
ASSUMED_PARAMS_B = 7.0
MFU = 0.35


@dataclass(frozen=True)
class Estimate:
    hours: float
    usd: float


def parameters_b(config: TrainConfig) -> float:
    name = config.model.name
    if name in KNOWN_PARAMS_B:
        return KNOWN_PARAMS_B[name]
    match = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", name)
    return float(match.group(1)) if match else ASSUMED_PARAMS_B


def requirements_for(config: TrainConfig, resources: Resources) -> Requirements:
    need = parameters_b(config) * BYTES_PER_PARAM[config.model.quantization] + OVERHEAD_GIB
    return Requirements(
        gpus=resources.gpus_per_trial, min_vram_gib=round(need, 2),
        gpu_types=tuple(resources.gpus) if resources.gpus else None,
        market=resources.market, max_price_per_hour=resources.max_price_per_hour,
    )


def estimate(config: TrainConfig, offer: NodeOffer, total_steps: int) -> Estimate:
    tflops = {row.gpu: row.bf16_tflops for row in gpu_prices()}.get(offer.gpu, 100.0)
    tokens = total_steps * config.training.batch_size * config.data.max_seq_length
    seconds = 6 * parameters_b(config) * 1e9 * tokens / (tflops * 1e12 * MFU * offer.gpus)
    hours = seconds / 3600.0
    return Estimate(hours, hours * offer.price_per_hour)


def choose_offer(offers: list[NodeOffer]) -> NodeOffer | None:
    """The cheapest offer per hour (offers already meet the trial's requirements)."""
    return min(offers, key=lambda offer: offer.price_per_hour, default=None)


def check_resources(spec: SweepSpec, source: str) -> None:
    """Names in resources that the catalog or this build does not know fail here, before anything launches."""
    known = [row.gpu for row in gpu_prices()]
    for gpu in spec.resources.gpus or []:
        if gpu not in known:
            raise SpecError(f"{source}: field 'resources.gpus': unknown GPU {gpu!r}; known: {', '.join(known)}")
    for provider in spec.resources.providers:
        if provider != "local":
            raise SpecError(
                f"{source}: field 'resources.providers': provider {provider!r} is not available; accepted: local"
            )


@dataclass(frozen=True)
class TrialPlan:
    trial: TrialSpec
    requirements: Requirements
    total_steps: int
    offer: NodeOffer | None
    estimate: Estimate | None


def planned_steps(config: TrainConfig) -> int:
    """Optimizer steps: max_steps, else one step per batch of rows per epoch (packing only lowers it)."""
    if config.training.max_steps is not None:
        return config.training.max_steps
    with open(config.data.train, encoding="utf-8") as handle:
        rows = sum(1 for line in handle if line.strip())
    return max(1, -(-rows // config.training.batch_size)) * config.training.epochs


def plan_sweep(spec: SweepSpec, trials: list[TrialSpec], offers_for) -> list[TrialPlan]:
    """Each trial's cheapest fitting offer and estimated cost; `offers_for(requirements)` asks the providers."""
    plans = []
    for trial in trials:
        requirements = requirements_for(trial.config, spec.resources)
        steps = planned_steps(trial.config)
        offer = choose_offer(offers_for(requirements))
        plans.append(TrialPlan(trial, requirements, steps, offer,
                               estimate(trial.config, offer, steps) if offer is not None else None))
    return plans


def check_plan(spec: SweepSpec, plans: list[TrialPlan], source: str) -> None:
    """Trials that fit nowhere, or a budget below the cheapest trial, fail before anything launches."""
    for plan in plans:
        if plan.offer is None:
            wanted = plan.requirements
            raise SpecError(
                f"{source}: trial {plan.trial.id}: no offer has {wanted.gpus} GPU(s) with >= {wanted.min_vram_gib} GiB "
                f"(market {wanted.market}, gpus {list(wanted.gpu_types) if wanted.gpu_types else 'any'}, "
                f"max ${wanted.max_price_per_hour or 'any'}/h); allow more GPU types, another market or a higher price"
            )
    budget = spec.resources.max_total_cost
    cheapest = min(plans, key=lambda plan: plan.estimate.usd)
    if budget is not None and budget < cheapest.estimate.usd:
        raise SpecError(
            f"{source}: field 'resources.max_total_cost': budget ${budget:g} is below the estimated "
            f"${cheapest.estimate.usd:.3g} of the cheapest trial ({cheapest.trial.id} on {cheapest.offer.describe()})"
        )
