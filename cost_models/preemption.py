"""Expected wall time and dollars to finish a job under spot interruptions at rate λ (Poisson).

Daly (2006): with MTBF M = 1/λ, work W, checkpoint cost C, restart cost R and compute between
checkpoints τ, the expected wall time is T = M·e^{R/M}·(e^{(τ+C)/M} − 1)·W/τ; the interval that
minimises it is about √(2CM)·(1 + ⅓√(C/2M) + (C/2M)/9) − C (Young's √(2CM) to first order).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

BOOT_SECONDS = 180.0  # EST: acquire a replacement node, boot, start the worker
MODEL_LOAD_BYTES_PER_S = 500e6  # EST: download/read and quantize the base weights on restart
CHECKPOINT_FIXED_SECONDS = 0.5  # commit overhead; calibration: 30 MB took 0.16 s on local disk
STORAGE_BYTES_PER_S = {"file": 200e6, "s3": 80e6}  # EST write rates of a checkpoint


@dataclass(frozen=True)
class RunCost:
    work_hours: float  # compute time without interruptions or checkpoints
    wall_hours: float  # expected, including checkpoints, lost work and restarts
    checkpoint_every_steps: int
    checkpoint_interval_hours: float
    checkpoint_seconds: float
    restart_seconds: float
    expected_preemptions: float
    usd: float  # expected spend: the market's price for the whole wall time

    def as_dict(self) -> dict:
        return asdict(self)


def checkpoint_seconds(checkpoint_bytes: float, storage: str = "file") -> float:
    scheme = storage.split("://", 1)[0] if "://" in storage else "file"
    return CHECKPOINT_FIXED_SECONDS + checkpoint_bytes / STORAGE_BYTES_PER_S.get(scheme, STORAGE_BYTES_PER_S["s3"])


def restart_seconds(model_bytes: float) -> float:
    return BOOT_SECONDS + model_bytes / MODEL_LOAD_BYTES_PER_S


def optimal_interval_hours(checkpoint_hours: float, rate_per_hour: float) -> float:
    """Daly's higher-order optimum of the compute time between checkpoints."""
    if rate_per_hour <= 0:
        return math.inf
    mtbf = 1.0 / rate_per_hour
    c = checkpoint_hours
    if c >= 2 * mtbf:
        return mtbf
    ratio = c / (2 * mtbf)
    return math.sqrt(2 * c * mtbf) * (1 + math.sqrt(ratio) / 3 + ratio / 9) - c


def expected_wall_hours(work: float, interval: float, checkpoint: float, restart: float, rate: float) -> float:
    """Daly's expected wall time; without interruptions it is the work plus one checkpoint per interval."""
    segments = work / interval
    if rate <= 0:
        return work + segments * checkpoint
    mtbf = 1.0 / rate
    exponent = (interval + checkpoint) / mtbf
    if exponent > 50:
        return math.inf
    return mtbf * math.exp(restart / mtbf) * math.expm1(exponent) * segments


def expected_run(
    steps: int,
    step_seconds: float,
    usd_per_hour: float,
    rate_per_hour: float,
    checkpoint_s: float,
    restart_s: float,
    every_steps: int | None = None,
) -> RunCost:
    """Wall time and cost to finish `steps` steps; every_steps None = the Daly optimum (rounded to steps)."""
    step_hours = step_seconds / 3600
    work = steps * step_hours
    checkpoint_h, restart_h = checkpoint_s / 3600, restart_s / 3600
    if every_steps is None:
        best = optimal_interval_hours(checkpoint_h, rate_per_hour)
        every_steps = max(1, min(steps, round(best / step_hours))) if steps else 1
    interval = max(1, min(every_steps, max(steps, 1))) * step_hours
    wall = expected_wall_hours(work, interval, checkpoint_h, restart_h, rate_per_hour) if steps else 0.0
    return RunCost(
        work_hours=work, wall_hours=wall, checkpoint_every_steps=every_steps, checkpoint_interval_hours=interval,
        checkpoint_seconds=checkpoint_s, restart_seconds=restart_s, expected_preemptions=rate_per_hour * wall,
        usd=usd_per_hour * wall,
    )
