"""One job shape on one GPU: VRAM breakdown, step time, whether it fits, and whether measurements back it."""
from __future__ import annotations

from dataclasses import dataclass

from cost_models.calibration import Calibration, load_calibration
from cost_models.catalog import Gpu
from cost_models.memory import MemoryBreakdown, estimate_memory
from cost_models.shape import JobShape
from cost_models.step_time import StepTime, estimate_step_time

SAFETY_FRACTION = 0.05  # of the card's memory kept free: no VRAM estimate is over 5.2% below a measured peak


@dataclass(frozen=True)
class Estimate:
    gpu: Gpu
    shape: JobShape
    memory: MemoryBreakdown
    time: StepTime
    calibrated: bool
    need_gib: float  # peak reserved by PyTorch plus the CUDA context
    fits: bool  # need_gib within the card's memory less SAFETY_FRACTION

    @property
    def have_gib(self) -> float:
        return self.gpu.memory_gib

    @property
    def headroom_gib(self) -> float:
        return self.have_gib - self.need_gib


def estimate(shape: JobShape, gpu: Gpu, calibration: Calibration | None = None) -> Estimate:
    calibration = calibration or load_calibration(shape.engine)
    memory = estimate_memory(shape, calibration.memory)
    return Estimate(
        gpu=gpu, shape=shape, memory=memory, time=estimate_step_time(shape, gpu, calibration.time),
        calibrated=calibration.covers(gpu, shape), need_gib=memory.total,
        fits=memory.total <= gpu.memory_gib * (1 - SAFETY_FRACTION),
    )
