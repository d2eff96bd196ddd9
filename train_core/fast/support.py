"""What the fast engine runs: architectures and LoRA targets. Torch-free, so the planner can ask too."""
from __future__ import annotations

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS
