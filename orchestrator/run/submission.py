"""From a sweep file to a registered run: validate, plan, check storage, and record the run before launching."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import ClusterError
from cluster.storage import check_writable
from cost_models.errors import EstimateError
from orchestrator.sweep.data_check import check_trial_data
from orchestrator.errors import SpecError
from orchestrator.sweep.planner import SweepPlan, check_providers, offers_for, plan_sweep
from orchestrator.sweep.spec import SweepSpec, TrialSpec, load_spec
from orchestrator.run.state import StateStore

@dataclass
class Prepared:
    path: Path
    spec: SweepSpec
    trials: list[TrialSpec]
    plan: SweepPlan


def prepare(path: Path) -> Prepared:
    """Everything that can be wrong with a sweep fails here, as one line, before anything is launched."""
    spec, trials = load_spec(path)
    source = str(path)
    check_providers(spec.resources.providers, f"{source}: field 'resources.providers'", launch=True)
    for trial in trials:
        for field in ("train", "eval"):
            value = getattr(trial.config.data, field)
            if value and not Path(value).is_absolute() and Path(value).exists():
                setattr(trial.config.data, field, str(Path(value).resolve()))
    check_trial_data(trials, source)
    spec = spec.model_copy(update={"storage": spec.storage.absolute(Path.cwd())})
    for name in dict.fromkeys(spec.resources.providers):  # what launching needs exists (aws: region, AMI, ...)
        check_launch = getattr(getattr(spec.provider_settings, name), "check_launch", None)
        if check_launch is None:
            continue
        try:
            check_launch(spec.storage)
        except ClusterError as error:
            raise SpecError(f"{source}: {error}") from None
    try:
        plan = plan_sweep(spec, trials, offers_for(spec.resources, spec.provider_settings))
    except EstimateError as error:
        raise SpecError(f"{source}: {error}") from None
    for trial in plan.unplaced:
        raise SpecError(f"{source}: trial {trial.trial_id} cannot be placed: {trial.advice or 'no offer'}")
    budget = spec.resources.max_total_cost
    cheapest = min(plan.trials, key=lambda trial: trial.chosen.run.usd)
    if budget is not None and budget < cheapest.chosen.run.usd:
        offer = cheapest.chosen.offer
        raise SpecError(
            f"{source}: field 'resources.max_total_cost': budget ${budget:g} is below the expected "
            f"${cheapest.chosen.run.usd:.3g} of the cheapest trial ({cheapest.trial_id} on {offer.gpu.name} "
            f"{offer.market})"
        )
    try:
        check_writable(spec.storage, spec.storage_endpoint)
    except ClusterError as error:
        raise SpecError(f"{source}: {error}") from None
    return Prepared(path, spec, trials, plan)


def register(prepared: Prepared, state_dir: Path, run_id: str | None = None) -> tuple[StateStore, str]:
    """Record the run and its trials (pending) in the state database; returns the store and the run id
    (`run_id` when given and free, else the sweep's name and the time)."""
    store = StateStore(state_dir)
    steps = {plan.trial_id: plan.steps for plan in prepared.plan.trials}
    trials = [
        {"id": trial.id, "index": trial.index, "params": trial.params,
         "config": trial.config.model_dump(mode="json"), "total_steps": steps[trial.id]}
        for trial in prepared.trials
    ]
    base = run_id or f"{prepared.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = store.create_run(base, prepared.spec.name, str(prepared.path.resolve()),
                              prepared.spec.model_dump(mode="json"), str(prepared.spec.storage), trials)
    return store, run_id
