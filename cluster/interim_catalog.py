"""Interim GPU price rows for the local provider's simulated market.

Stands in until the catalog of issue 3 (cost_models/catalog.py) lands on main; then the local market prices
its offers from that catalog and this file goes. Figures are public list prices per GPU-hour (AWS us-east-1
from the SkyPilot catalog, RunPod for the RTX 4090), as collected in the project's research notes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPrice:
    gpu: str
    vram_gib: float
    bf16_tflops: float
    on_demand_per_gpu_hour: float
    spot_per_gpu_hour: float


ROWS = (
    GpuPrice("RTX4090", 24, 165.2, 0.69, 0.34),
    GpuPrice("L4", 24, 121, 0.8048, 0.3879),
    GpuPrice("A10G", 24, 70, 1.006, 0.397),
    GpuPrice("L40S", 48, 362, 1.861, 0.787),
    GpuPrice("A100-80GB", 80, 312, 5.1207, 0.7299),
    GpuPrice("H100", 80, 989, 12.29, 2.6242),
)


def gpu_prices() -> tuple[GpuPrice, ...]:
    return ROWS
