"""What data parallelism adds to a step on several GPUs of one host, from measurements (data/multi_gpu.csv).

train_core sums the LoRA gradients once per optimizer step: one NCCL all-reduce of the flat fp32 gradient
(train_core/flat_params.py gathers the per-tensor gradients into it with one copy, on one GPU as on several, so
the gather is not part of the sync). The measurements were taken before the flat buffer, when train_core
concatenated the gradients and copied each slice back; the fit therefore has three terms: a fixed latency,
fp32 gradient bytes at a rate, and that implementation's host cost per gradient tensor, which the plan no
longer counts. On top, the measured 2-GPU step was slower than the 1-GPU step by more
than the all-reduce: that remainder, as a share of the 1-GPU step, is `slowdown` (one measured point;
cause not isolated: the two workers' steps also varied more, 0.49-0.59 s against 0.41-0.48 s).
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
    bytes_per_s: float  # fp32 gradient bytes through concatenate + NCCL + copy back
    per_tensor_s: float  # host seconds per gradient tensor
    slowdown: float  # extra share of the 1-GPU step on several GPUs, beyond the all-reduce


@dataclass(frozen=True)
class SyncMeasurement:
    gpus: int
    measurement: str  # step | allreduce | allreduce_synthetic
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


def allreduce_seconds(c: SyncCoefficients, gpus: int, elements: float, tensors: int = 0) -> float:
    """One all-reduce of `elements` fp32 gradients over `gpus` workers; 0 on one. `tensors` adds the per-tensor
    copies of the implementation the measurements were taken with (before the flat buffer)."""
    if gpus <= 1:
        return 0.0
    ring = 2 * (gpus - 1) / gpus  # share of the bytes each worker sends, relative to 1 at 2 GPUs
    return (gpus - 1) * c.latency_s + ring * FP32_BYTES * elements / c.bytes_per_s + tensors * c.per_tensor_s


def fit_sync(points: list[SyncMeasurement]) -> SyncCoefficients:
    """Latency and rate from the 16-tensor all-reduces (least squares on bytes), the per-tensor cost from the
    real gradients' all-reduce, the slowdown from the 1- and 2-GPU steps of the same job."""
    synthetic = [p for p in points if p.measurement == "allreduce_synthetic" and p.gpus == 2]
    real = [p for p in points if p.measurement == "allreduce" and p.gpus == 2]
    steps = {p.gpus: p for p in points if p.measurement == "step"}
    if len(synthetic) < 2 or not real or not {1, 2} <= set(steps):
        raise EstimateError(f"{MEASUREMENTS.name}: needs 2-GPU all-reduces and the 1- and 2-GPU steps of one job")
    xs = [FP32_BYTES * p.grad_elements for p in synthetic]
    ys = [p.seconds for p in synthetic]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    base = SyncCoefficients(mean_y - slope * mean_x, 1 / slope, 0.0, 0.0)
    point = real[0]
    per_tensor = (point.seconds - allreduce_seconds(base, 2, point.grad_elements, 0)) / (point.grad_tensors - 16)
    latency = base.latency_s - 16 * per_tensor  # the synthetic calls' 16 tensors were inside the intercept
    one, two = steps[1], steps[2]
    slowdown = (two.seconds - one.seconds - point.seconds) / one.seconds
    return SyncCoefficients(latency, base.bytes_per_s, per_tensor, max(0.0, slowdown))


@lru_cache(maxsize=1)
def sync_coefficients() -> SyncCoefficients:
    return fit_sync(load_sync_measurements())
