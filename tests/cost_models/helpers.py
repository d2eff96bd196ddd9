"""Small builders for estimator tests."""
from __future__ import annotations

from cost_models.architectures import resolve_architecture
from cost_models.shape import JobShape, RowStats


def shape(model: str = "qwen2-1.5b", quantization: str = "nf4", seq: int = 2048, micro_batch: int = 1,
          grad_accum: int = 1, checkpointing: str = "full", rank: int = 16, samples: float = 2.0,
          targets: tuple[str, ...] | None = None) -> JobShape:
    arch = resolve_architecture(model)
    rows = RowStats(float(seq), seq, samples, 0.5, 1000, "test rows")
    return JobShape(arch, quantization, rank, targets or arch.module_names, seq, micro_batch, grad_accum,
                    checkpointing, rows)
