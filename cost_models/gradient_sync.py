"""What data parallelism adds to a step on several GPUs of one host, from measurements (data/multi_gpu.csv).

train_core sums the LoRA gradients once per optimizer step: one NCCL all-reduce of the flat fp32 gradient
(train_core/flat_params.py gathers the per-tensor gradients into it on one GPU as on several, so the gather is
in the 1-GPU step and not part of the sync). The all-reduce is a fixed latency plus fp32 gradient bytes at a
rate, fitted on single-tensor all-reduces. On top, `slowdown` is whatever else the measured 2-GPU step added to
the 1-GPU step of the same work per GPU, as a share of it. Workers that share a host are pinned to their own
cores (train_core/affinity.py): unpinned, two 1-GPU processes at once each ran 21-31 % slower than one alone
(2026-11-30), which was the 26 % that this term held before; pinned, it fits to 0.
More than 2 GPUs: a ring moves 2(n-1)/n of the bytes and takes n-1 latency steps (not measured).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cost_models.errors import EstimateError

MEASUREMENTS = Path(__file__).with_name("data") / "multi_gpu.csv"
FP32_BYTES = 4


@dataclass(frozen=True)
class SyncCoefficients:
    latency_s: float  # per all-reduce call on 2 GPUs
    bytes_per_s: float  # fp32 gradient bytes through NCCL
    slowdown: float  # extra share of the 1-GPU step on several GPUs, beyond the all-reduce


@dataclass(frozen=True)
class SyncMeasurement:
    gpus: int
    measurement: str  # step | gather_allreduce (the job's gradients, gathered then reduced) | allreduce_synthetic
    grad_elements: int
    grad_tensors: int
    seconds: float
    row: dict


def load_sync_measurements(path: Path = MEASUREMENTS) -> list[SyncMeasurement]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [
            SyncMeasurement(int(r["gpus"]), r["measurement"], int(r["grad_elements"]),
                            int(r["grad_tensors"]) if r["grad_tensors"] else 0, float(r["seconds"]), r)
            for r in csv.DictReader(handle)
        ]


def allreduce_seconds(c: SyncCoefficients, gpus: int, elements: float) -> float:
    """One all-reduce of `elements` fp32 gradients over `gpus` workers; 0 on one."""
    if gpus <= 1:
        return 0.0
    ring = 2 * (gpus - 1) / gpus  # share of the bytes each worker sends, relative to 1 at 2 GPUs
    return (gpus - 1) * c.latency_s + ring * FP32_BYTES * elements / c.bytes_per_s


def fit_sync(points: list[SyncMeasurement]) -> SyncCoefficients:
    """Latency and rate from the 2-GPU single-tensor all-reduces (least squares on bytes), the slowdown from the
    1- and 2-GPU steps of the same job."""
    synthetic = [p for p in points if p.measurement == "allreduce_synthetic" and p.gpus == 2]
    steps = {p.gpus: p for p in points if p.measurement == "step"}
    if len(synthetic) < 2 or not {1, 2} <= set(steps):
        raise EstimateError(f"{MEASUREMENTS.name}: needs 2-GPU all-reduces and the 1- and 2-GPU steps of one job")
    xs = [FP32_BYTES * p.grad_elements for p in synthetic]
    ys = [p.seconds for p in synthetic]
    weights = [1 / y**2 for y in ys]  # least squares on relative error: the small calls weigh as much as the large
    total = sum(weights)
    mean_x = sum(w * x for w, x in zip(weights, xs)) / total
    mean_y = sum(w * y for w, y in zip(weights, ys)) / total
    slope = (sum(w * (x - mean_x) * (y - mean_y) for w, x, y in zip(weights, xs, ys))
             / sum(w * (x - mean_x) ** 2 for w, x in zip(weights, xs)))
    transfer = SyncCoefficients(mean_y - slope * mean_x, 1 / slope, 0.0)
    one, two = steps[1], steps[2]
    slowdown = (two.seconds - one.seconds - allreduce_seconds(transfer, 2, two.grad_elements)) / one.seconds
    return SyncCoefficients(transfer.latency_s, transfer.bytes_per_s, max(0.0, slowdown))


@lru_cache(maxsize=1)
def sync_coefficients() -> SyncCoefficients:
    return fit_sync(load_sync_measurements())
