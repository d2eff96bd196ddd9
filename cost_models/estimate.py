"""One job shape on one GPU: VRAM (a point and an upper bound), step time (a point and an interval), whether
the upper bound fits, and how far the job lies from measured points."""
from __future__ import annotations

from dataclasses import dataclass

from cost_models.calibration import Calibration, Distance, load_calibration
from cost_models.catalog import Gpu, gpus
from cost_models.memory import MemoryBreakdown, estimate_memory, reserved_upper_gib
from cost_models.shape import JobShape
from cost_models.step_time import StepTime, estimate_step_time, host_ahead

DEFAULT_VRAM_HEADROOM = 0.03  # of the card's memory kept free beyond the upper bound (resources.vram_headroom)


@dataclass(frozen=True)
class Estimate:
    gpu: Gpu
    shape: JobShape
    memory: MemoryBreakdown  # the point: what the allocator most likely reserves at the peak
    time: StepTime
    distance: Distance
    need_gib: float  # point: peak reserved by PyTorch plus the CUDA context
    need_upper_gib: float  # upper bound of need_gib: what placement checks
    step_low: float  # step-time interval, seconds
    step_high: float
    headroom: float  # share of the card kept free beyond need_upper_gib
    fits: bool  # need_upper_gib within the card's memory less `headroom`

    @property
    def calibrated(self) -> bool:
        return self.distance.calibrated

    @property
    def have_gib(self) -> float:
        return self.gpu.memory_gib

    @property
    def headroom_gib(self) -> float:
        """Memory left beyond the upper bound."""
        return self.have_gib - self.need_upper_gib


def upper_need_gib(shape: JobShape, gpu: Gpu, calibration: Calibration) -> float:
    """need_upper_gib without the step-time work: what sizing compares with the card."""
    distance = calibration.distance(gpu, shape).memory
    return reserved_upper_gib(shape, calibration.memory, distance) + calibration.memory.cuda_context_gib


def fits_on(need_upper_gib: float, gpu: Gpu, headroom: float) -> bool:
    return need_upper_gib <= gpu.memory_gib * (1 - headroom)


def estimate(
    shape: JobShape, gpu: Gpu, calibration: Calibration | None = None, headroom: float = DEFAULT_VRAM_HEADROOM
) -> Estimate:
    calibration = calibration or load_calibration(shape.engine)
    distance = calibration.distance(gpu, shape)
    reference = gpus().get(calibration.cards[0]) if calibration.cards else None
    ahead = host_ahead(shape, gpu, calibration.time, None, reference) if shape.checkpointing == "offload" else 1.0
    memory = estimate_memory(shape, calibration.memory, round(ahead, 3))
    upper = upper_need_gib(shape, gpu, calibration)
    time = estimate_step_time(shape, gpu, calibration.time, None, reference)
    spread = 1 + calibration.time.margin * (1 + distance.time)
    return Estimate(
        gpu=gpu, shape=shape, memory=memory, time=time, distance=distance, need_gib=memory.total,
        need_upper_gib=upper, step_low=time.step / spread, step_high=time.step * spread, headroom=headroom,
        fits=fits_on(upper, gpu, headroom),
    )
