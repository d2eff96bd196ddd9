"""What the fast engine runs: architectures and LoRA targets. Torch-free, so the planner can ask too."""
from __future__ import annotations

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3", "phi3", "gemma2", "gemma3_text")
FUSED_MODEL_TYPES = ("phi3",)  # one qkv_proj and one gate_up_proj linear per layer
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS
FUSED_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
ALL_PROJECTIONS = PROJECTIONS + ("qkv_proj", "gate_up_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj", "gate_up_proj")

SPLIT_GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
FUSED_GROUPS = {"qkv": ("qkv_proj",), "o": ("o_proj",), "gate_up": ("gate_up_proj",), "down": ("down_proj",)}


def projection_groups(model_type: str) -> dict[str, tuple[str, ...]]:
    """The layer's linears by fused group (q|k|v, o, gate|up, down), in the model's module order."""
    return FUSED_GROUPS if model_type in FUSED_MODEL_TYPES else SPLIT_GROUPS


def projections(model_type: str) -> tuple[str, ...]:
    """LoRA-targetable linear module names of one decoder layer, in PEFT's order."""
    return FUSED_PROJECTIONS if model_type in FUSED_MODEL_TYPES else PROJECTIONS
