"""Pure estimators: GPU catalog, VRAM, step time and preemption-aware cost. Never imports torch."""
