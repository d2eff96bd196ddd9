"""How `spottune plan` shows a SweepPlan: a table per trial, a summary, and an optional PNG per GPU type."""
from __future__ import annotations

from cost_models.calibration import load_calibration
from cost_models.errors import EstimateError
from orchestrator.planner import PlanRow, SweepPlan
from orchestrator.render import hours, money, table
from orchestrator.spec import TrialSpec

HEADERS = ("", "GPU", "PROVIDER", "INSTANCE", "MARKET", "$/GPU-H", "FITS", "NEED (UP TO)/HAVE GiB", "HEADROOM",
           "MBxGA", "CKPT", "STEP s (RANGE)", "HOURS", "E[PREEMPT]", "E[$]", "CALIBRATED", "PRICE DATE")


def best_per_gpu(rows: list[PlanRow]) -> list[PlanRow]:
    """The chosen row plus, per GPU type and market, the cheapest row (rows arrive sorted by expected $)."""
    seen, kept = set(), []
    for row in rows:
        key = (row.offer.gpu.name, row.offer.market)
        if row.chosen or key not in seen:
            kept.append(row)
            seen.add(key)
    return kept


def _instance(row: PlanRow) -> str:
    billed = row.offer.billed_gpus(row.estimate.shape.gpus)
    return row.offer.instance_type if billed == 1 else f"{row.offer.instance_type} (bills {billed} GPUs)"


def _cells(row: PlanRow) -> list[str]:
    e, r = row.estimate, row.run
    fits = "yes" if e.fits else "no"
    if row.excluded:
        fits = "price"
    return [
        "*" if row.chosen else "", e.gpu.name, row.offer.provider, _instance(row), row.offer.market,
        money(row.offer.usd_per_gpu_hour), fits, f"{e.need_gib:.1f} ({e.need_upper_gib:.1f})/{e.have_gib:.0f}",
        f"{e.headroom_gib:+.1f}", f"{e.shape.micro_batch}x{e.shape.grad_accum}", e.shape.checkpointing,
        f"{e.time.step:.2f} ({e.step_low:.2f}-{e.step_high:.2f})",
        hours(r.wall_hours if r else None), f"{r.expected_preemptions:.2f}" if r else "-", money(r.usd if r else None),
        "yes" if e.calibrated else "uncalibrated", row.offer.date,
    ]


def render_plan(name: str, trials: list[TrialSpec], plan: SweepPlan, all_offers: bool = False) -> str:
    params = {t.id: t.params for t in trials}
    lines = [f"sweep {name}: {len(plan.trials)} trial(s) x {plan.offers} offer(s); * = chosen (cheapest expected $ "
             "that fits, spot preemptions included); provider local = simulated market at catalog prices"]
    for trial in plan.trials:
        shown = params.get(trial.trial_id) or {}
        label = " ".join(f"{k}={v}" for k, v in shown.items())
        lines += ["", f"trial {trial.trial_id} {label}".rstrip() + f": {trial.steps} steps; data {trial.data}"]
        rows = trial.rows if all_offers else best_per_gpu(trial.rows)
        lines.append(table(HEADERS, [_cells(row) for row in rows], indent="  "))
        if trial.advice:
            lines.append(f"  {trial.advice}")
    placed = [t for t in plan.trials if t.chosen]
    lines += ["", f"placed {len(placed)}/{len(plan.trials)} trial(s); expected total {money(plan.total_usd)}"]
    lines += plan.notes
    if any(not row.estimate.calibrated for row in plan.rows):
        engines = sorted({row.estimate.shape.engine for row in plan.rows})
        cards = "; ".join(f"{engine} on {', '.join(load_calibration(engine).cards)}" for engine in engines)
        lines.append(f"uncalibrated = no measured point near this job on that GPU for this engine (measured: {cards}); "
                     "its bounds are widened; treat its VRAM and time as a model, see cost_models/README.md")
    lines.append("FITS compares the upper bound (UP TO) with the card less resources.vram_headroom; "
                 "`spottune plan SPEC --explain TRIAL GPU` shows the terms")
    if not all_offers:
        lines.append("showing the cheapest offer per GPU type and market; --all-offers lists every offer")
    return "\n".join(lines)


def plan_figure(plan: SweepPlan):
    """Two bar charts over GPU types: expected $ and hours for the whole sweep on the cheapest offer of each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise EstimateError("--plot needs matplotlib: pip install matplotlib") from None
    usd: dict[str, float] = {}
    wall: dict[str, float] = {}
    placed: dict[str, int] = {}
    for trial in plan.trials:
        cheapest: dict[str, PlanRow] = {}
        for row in trial.rows:
            name = row.offer.gpu.name
            if row.run is not None and (name not in cheapest or row.run.usd < cheapest[name].run.usd):
                cheapest[name] = row
        for name, row in cheapest.items():
            usd[name] = usd.get(name, 0.0) + row.run.usd
            wall[name] = wall.get(name, 0.0) + row.run.wall_hours
            placed[name] = placed.get(name, 0) + 1
    complete = [name for name, count in placed.items() if count == len(plan.trials)]
    if not complete:
        raise EstimateError("--plot: no GPU type fits every trial, nothing to draw")
    names = sorted(complete, key=usd.__getitem__)
    # vertical labels, one bar width each, never overlap however many GPU types there are
    figure = Figure(figsize=(max(12.0, 0.9 * len(names)), 5.5))
    cost_axis, time_axis = figure.subplots(1, 2)
    cost_axis.bar(names, [usd[n] for n in names], color="tab:green")
    cost_axis.set_ylabel("expected $ (whole sweep, cheapest offer per GPU)")
    time_axis.bar(names, [wall[n] for n in names], color="tab:blue")
    time_axis.set_ylabel("expected hours (sum over trials)")
    for axis in (cost_axis, time_axis):
        axis.tick_params(axis="x", labelrotation=90)
    figure.suptitle(f"{len(plan.trials)} trial(s): cost and time per GPU type (spot preemptions included)")
    figure.tight_layout()
    return figure


def plot_plan(plan: SweepPlan, path: str) -> None:
    plan_figure(plan).savefig(path, dpi=110)
