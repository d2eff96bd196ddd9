"""From a sweep file to a registered run: validate, plan, check storage, and record the run before launching."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import ClusterError
from cluster.local import LocalProvider
from cluster.storage import StorageURI, check_writable, parse_uri
from orchestrator.errors import SpecError
from orchestrator.placement import TrialPlan, check_plan, check_resources, plan_sweep
from orchestrator.spec import SweepSpec, load_spec
from orchestrator.state import StateStore


@dataclass
class Prepared:
    path: Path
    spec: SweepSpec
    plans: list[TrialPlan]
    storage: StorageURI


def prepare(path: Path) -> Prepared:
    """Everything that can be wrong with a sweep fails here, as one line, before anything is launched."""
    spec, trials = load_spec(path)
    source = str(path)
    check_resources(spec, source)
    for trial in trials:
        for field in ("train", "eval"):
            value = getattr(trial.config.data, field)
            if value and not Path(value).is_absolute() and Path(value).exists():
                setattr(trial.config.data, field, str(Path(value).resolve()))
    try:
        storage = parse_uri(spec.storage).absolute(Path.cwd())
    except ClusterError as error:
        raise SpecError(f"{source}: {error}") from None
    pricing = LocalProvider(Path.cwd(), spec.simulation, cpus=1)
    plans = plan_sweep(spec, trials, pricing.offers)
    check_plan(spec, plans, source)
    check_writable(storage, spec.storage_endpoint)
    return Prepared(path, spec, plans, storage)


def plan_table(plans: list[TrialPlan]) -> str:
    header = ("TRIAL", "PARAMS", "NEEDS", "STEPS", "OFFER", "EST. HOURS", "EST. $")
    rows = [header]
    for plan in plans:
        params = ", ".join(f"{name}={value}" for name, value in plan.trial.params.items()) or "-"
        rows.append((plan.trial.id, params, f"{plan.requirements.min_vram_gib:g} GiB", str(plan.total_steps),
                     plan.offer.describe(), f"{plan.estimate.hours:.5f}", f"{plan.estimate.usd:.6f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["plan (interim estimator: crude parameter-count rule until the issue-3 planner lands):"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def register(prepared: Prepared, state_dir: Path) -> tuple[StateStore, str]:
    """Record the run and its trials (pending) in the state database; returns the store and the run id."""
    store = StateStore(state_dir)
    existing = {run.id for run in store.runs()}
    base = f"{prepared.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id, counter = base, 1
    while run_id in existing:
        counter += 1
        run_id = f"{base}-{counter}"
    trials = [
        {"id": plan.trial.id, "index": plan.trial.index, "params": plan.trial.params,
         "config": plan.trial.config.model_dump(mode="json"), "total_steps": plan.total_steps}
        for plan in prepared.plans
    ]
    store.create_run(run_id, prepared.spec.name, str(prepared.path.resolve()),
                     prepared.spec.model_dump(mode="json"), str(prepared.storage), trials)
    return store, run_id
