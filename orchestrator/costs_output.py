"""What `spottune costs` shows: the catalog like `sky show-gpus`, or one job's cost on every GPU type."""
from __future__ import annotations

from cost_models.catalog import Offer
from orchestrator.planner import PlanRow, TrialJob, plan_trial
from orchestrator.render import hours, money, table


def catalog_records(offers: list[Offer]) -> list[dict]:
    """One record per instance: both markets' price per GPU-hour side by side."""
    merged: dict[tuple, dict] = {}
    for offer in offers:
        key = (offer.gpu.name, offer.provider, offer.instance_type, offer.region)
        record = merged.setdefault(key, {
            "gpu": offer.gpu.name, "vram_gib": offer.gpu.memory_gib, "bf16_tflops": offer.gpu.bf16_tflops,
            "mem_bw_gbs": offer.gpu.mem_bw_gbs, "provider": offer.provider, "instance_type": offer.instance_type,
            "gpus_per_instance": offer.gpus_per_instance, "region": offer.region,
            "on_demand_usd_per_gpu_hour": None, "spot_usd_per_gpu_hour": None, "spot_interruption_bucket": None,
            "spot_interruptions_per_hour": None, "date": offer.date, "source": offer.source,
        })
        if offer.market == "spot":
            record.update(spot_usd_per_gpu_hour=offer.usd_per_gpu_hour, spot_interruption_bucket=offer.bucket,
                          spot_interruptions_per_hour=offer.interruptions_per_hour)
        else:
            record["on_demand_usd_per_gpu_hour"] = offer.usd_per_gpu_hour
    return sorted(merged.values(), key=lambda r: (r["vram_gib"], r["gpu"], min(
        p for p in (r["on_demand_usd_per_gpu_hour"], r["spot_usd_per_gpu_hour"], float("inf")) if p is not None)))


def catalog_table(records: list[dict]) -> str:
    headers = ("GPU", "VRAM GiB", "BF16 TF", "BW GB/s", "PROVIDER", "INSTANCE", "QTY", "REGION", "ON-DEMAND $/GPU-H",
               "SPOT $/GPU-H", "SPOT INTERRUPTIONS", "DATE")
    rows = [
        (r["gpu"], f"{r['vram_gib']:.1f}", f"{r['bf16_tflops']:g}", f"{r['mem_bw_gbs']:g}", r["provider"],
         r["instance_type"], r["gpus_per_instance"], r["region"], money(r["on_demand_usd_per_gpu_hour"]),
         money(r["spot_usd_per_gpu_hour"]),
         f"{r['spot_interruption_bucket']} ({r['spot_interruptions_per_hour']:g}/h)" if r["spot_interruption_bucket"]
         else "-", r["date"])
        for r in records
    ]
    return table(headers, rows) + "\nprices are per GPU-hour (instance price / GPUs), with the date of their source; " \
        "interruption rates per hour are priors from the bucket (cost_models/data/interruption_buckets.csv)"


def _offer_name(row: PlanRow) -> str:
    billed = row.offer.billed_gpus(row.estimate.shape.gpus)
    suffix = f" (bills {billed} GPUs)" if billed > 1 else ""
    return f"{row.offer.provider} {row.offer.instance_type}{suffix}"


def _cheapest(rows: list[PlanRow], market: str) -> PlanRow | None:
    fitting = [r for r in rows if r.run is not None and r.offer.market == market]
    return min(fitting, key=lambda r: r.run.usd) if fitting else None


def job_records(job: TrialJob, offers: list[Offer]) -> list[dict]:
    """Per GPU type: the sizing picked for it and the cheapest expected $ in each market."""
    plan = plan_trial(job, offers)
    by_gpu: dict[str, list[PlanRow]] = {}
    for row in plan.rows:
        by_gpu.setdefault(row.offer.gpu.name, []).append(row)
    records = []
    for name, rows in by_gpu.items():
        e = rows[0].estimate
        record = {
            "gpu": name, "fits": e.fits, "need_gib": round(e.need_gib, 2), "need_upper_gib": round(e.need_upper_gib, 2),
            "have_gib": e.have_gib,
            "micro_batch": e.shape.micro_batch, "grad_accum": e.shape.grad_accum,
            "checkpointing": e.shape.checkpointing, "step_s": round(e.time.step, 4), "steps": job.steps,
            "calibrated": e.calibrated, "engine": e.shape.engine, "data": plan.data,
        }
        for market in ("on-demand", "spot"):
            best = _cheapest(rows, market)
            prefix = market.replace("-", "_")
            record.update({
                f"{prefix}_offer": _offer_name(best) if best else None,
                f"{prefix}_usd_per_gpu_hour": best.offer.usd_per_gpu_hour if best else None,
                f"{prefix}_hours": round(best.run.wall_hours, 4) if best else None,
                f"{prefix}_usd": round(best.run.usd, 4) if best else None,
                f"{prefix}_expected_preemptions": round(best.run.expected_preemptions, 3) if best else None,
                f"{prefix}_price_date": best.offer.date if best else None,
            })
        records.append(record)
    return sorted(records, key=lambda r: (not r["fits"], min(
        v for v in (r["spot_usd"], r["on_demand_usd"], float("inf")) if v is not None)))


def job_table(source: str, records: list[dict]) -> str:
    headers = ("GPU", "FITS", "NEED (UP TO)/HAVE GiB", "MBxGA", "CKPT", "STEP s", "STEPS", "ON-DEMAND", "$", "HOURS",
               "SPOT", "E[$]", "E[HOURS]", "E[PREEMPT]", "CALIBRATED")
    rows = [
        (r["gpu"], "yes" if r["fits"] else "no", f"{r['need_gib']:.1f} ({r['need_upper_gib']:.1f})/{r['have_gib']:.0f}",
         f"{r['micro_batch']}x{r['grad_accum']}", r["checkpointing"], f"{r['step_s']:.2f}", r["steps"],
         r["on_demand_offer"] or "-", money(r["on_demand_usd"]), hours(r["on_demand_hours"]), r["spot_offer"] or "-",
         money(r["spot_usd"]), hours(r["spot_hours"]),
         f"{r['spot_expected_preemptions']:.2f}" if r["spot_expected_preemptions"] is not None else "-",
         "yes" if r["calibrated"] else "uncalibrated")
        for r in records
    ]
    if not records:
        return f"{source}: no offer matches the filters"
    header = f"{source}: engine {records[0]['engine']}; data {records[0]['data']}"
    return "\n".join([header, table(headers, rows)])
