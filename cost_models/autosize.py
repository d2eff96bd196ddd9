"""Pick micro-batch and activation checkpointing per GPU (fastest that fits, same effective batch), and say
what would make a job fit when nothing does."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Iterable

from cost_models.calibration import Calibration, load_calibration
from cost_models.catalog import Gpu
from cost_models.estimate import DEFAULT_VRAM_HEADROOM, Estimate, estimate, fits_on, upper_need_gib
from cost_models.shape import CHECKPOINTING, JobShape

MODE_ORDER = {"none": 0, "full": 1, "offload": 2}  # prefer keeping more on the GPU when times tie


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@lru_cache(maxsize=1024)
def candidate_shapes(
    shape: JobShape, rows_per_worker: int, micro_batch: int | None, checkpointing: str | None
) -> tuple[JobShape, ...]:
    """Every (micro-batch, checkpointing) the config allows; micro-batches divide the rows of one worker."""
    sizes = [micro_batch] if micro_batch else divisors(rows_per_worker)
    modes = [checkpointing] if checkpointing else list(CHECKPOINTING)
    return tuple(
        shape.with_(micro_batch=size, grad_accum=max(1, rows_per_worker // size), checkpointing=mode)
        for size in sizes for mode in modes
    )


def autosize(
    shape: JobShape,
    gpu: Gpu,
    rows_per_worker: int,
    micro_batch: int | None = None,
    checkpointing: str | None = None,
    calibration: Calibration | None = None,
    headroom: float = DEFAULT_VRAM_HEADROOM,
) -> Estimate:
    """The fastest choice whose memory upper bound fits (None = auto); when nothing fits, the choice needing the
    least memory."""
    calibration = calibration or load_calibration(shape.engine)
    options = candidate_shapes(shape, rows_per_worker, micro_batch, checkpointing)
    needs = [(upper_need_gib(option, gpu, calibration), option) for option in options]
    fitting = [estimate(option, gpu, calibration, headroom) for need, option in needs if fits_on(need, gpu, headroom)]
    if fitting:
        return min(fitting, key=lambda o: (o.time.step, MODE_ORDER[o.shape.checkpointing], o.need_upper_gib))
    return estimate(min(needs, key=lambda pair: pair[0])[1], gpu, calibration, headroom)


def shorter_rows(shape: JobShape) -> JobShape:
    """The same job with max_seq_length halved (rows get shorter, samples get truncated)."""
    half = max(16, shape.seq_len // 2)
    rows = replace(shape.rows, mean_tokens=min(shape.rows.mean_tokens, half),
                   max_tokens=min(shape.rows.max_tokens, half))
    return shape.with_(seq_len=half, rows=rows)


def fit_advice(
    shape: JobShape,
    rows_per_worker: int,
    offered: Iterable[Gpu],
    catalog_gpus: Iterable[Gpu],
    micro_batch: int | None = None,
    checkpointing: str | None = None,
    calibration: Calibration | None = None,
    headroom: float = DEFAULT_VRAM_HEADROOM,
) -> str:
    """One line: how short the job falls on the biggest offered card, and which changes would make it fit."""
    calibration = calibration or load_calibration(shape.engine)
    offered = sorted(offered, key=lambda g: g.memory_gib)
    if not offered:
        return "no offer matches the filters (providers, market, GPUs, price)"
    biggest = offered[-1]
    best = autosize(shape, biggest, rows_per_worker, micro_batch, checkpointing, calibration, headroom)
    tries = [
        ("training.micro_batch_size 1", shape, 1, checkpointing),
        ("training.activation_checkpointing offload", shape, micro_batch, "offload"),
        (f"data.max_seq_length {max(16, shape.seq_len // 2)}", shorter_rows(shape), micro_batch, checkpointing),
    ]
    if shape.quantization not in ("nf4", "nf4-nodq"):
        tries.insert(2, ("model.quantization nf4", shape.with_(quantization="nf4"), micro_batch, checkpointing))
    by_size = sorted(catalog_gpus, key=lambda g: g.memory_gib)
    fixes = []
    for label, changed, size, mode in [("as configured", shape, micro_batch, checkpointing), *tries]:
        if label != "as configured" and autosize(changed, biggest, rows_per_worker, size, mode, calibration,
                                                 headroom).fits:
            fixes.append(label)
            continue
        card = next((g for g in by_size if g.memory_gib > biggest.memory_gib
                     and autosize(changed, g, rows_per_worker, size, mode, calibration, headroom).fits), None)
        if card is not None:
            where = f"{card.name} ({card.memory_gib:.0f} GiB) or bigger"
            fixes.append(f"a bigger card: {where}" if label == "as configured" else f"{label} on {where}")
    needed = (f"needs up to {best.need_upper_gib:.1f} GiB on {biggest.name} ({biggest.memory_gib:.0f} GiB) even with "
              f"micro-batch {best.shape.micro_batch} and {best.shape.checkpointing} checkpointing")
    return f"fits no offered GPU: {needed}; would fit with: {'; '.join(fixes) or 'nothing in the catalog'}"
