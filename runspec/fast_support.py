"""What the fast engine runs: architectures, model-config features and LoRA targets. Torch-free, so the planner
asks the same questions train_core does."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

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


def input_embedding_on_host(checkpointing: str, tied: bool) -> bool:
    """The fast engine keeps the input embedding in host memory when it offloads activations and the model has a
    separate output head (a tied one is the head, which must stay on the GPU)."""
    return checkpointing == "offload" and not tied


SOFTCAPPED_ATTENTION = ("gemma2",)  # attn_logit_softcapping: no flash kernel, the fast engine materializes the scores


def layers_graphed(cuda_graphs: bool, engine_is_fast: bool, model_type: str) -> bool:
    """Whether the fast engine replays the decoder layers as CUDA graphs (training.cuda_graphs), with any activation
    checkpointing: where attention runs on flash kernels; train_core checks the device on top."""
    return cuda_graphs and graphs_off_reason(engine_is_fast, model_type) is None


def graphs_off_reason(engine_is_fast: bool, model_type: str) -> str | None:
    """Why a run that asks for CUDA graphs runs its layers eagerly, or None when they are graphed."""
    if not engine_is_fast:
        return "needs the fast engine"
    return "soft-capped attention has no flash kernel to capture" if model_type in SOFTCAPPED_ATTENTION else None


def projection_groups(model_type: str) -> dict[str, tuple[str, ...]]:
    """The layer's linears by fused group (q|k|v, o, gate|up, down), in the model's module order."""
    return FUSED_GROUPS if model_type in FUSED_MODEL_TYPES else SPLIT_GROUPS


def projections(model_type: str) -> tuple[str, ...]:
    """LoRA-targetable linear module names of one decoder layer, in PEFT's order."""
    return FUSED_PROJECTIONS if model_type in FUSED_MODEL_TYPES else PROJECTIONS


ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
ROPE_TYPES = ("default", "llama3", "linear", "longrope")
DROPOUTS = ("attention_dropout", "resid_pdrop", "embd_pdrop")
DEFAULT_ROPE_KEY = "full_attention"
DEFAULT_CE_BUDGET_MIB = 512  # bf16 logits of one loss chunk


def ce_chunk_rows(vocab: int, budget_mib: int = DEFAULT_CE_BUDGET_MIB) -> int:
    """Rows of bf16 logits per loss chunk that fit the budget, in [256, 8192], a multiple of 256."""
    rows = (budget_mib * 2**20) // (vocab * 2) // 256 * 256
    return max(256, min(8192, rows))


def field_of(config: object, name: str, default: object = None) -> object:
    """A field of a Hugging Face config object or of its config.json mapping."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def activation_name(config: object) -> str:
    return field_of(config, "hidden_activation") or field_of(config, "hidden_act") or "silu"


def rope_layer_parameters(config: object) -> dict[str, dict]:
    """Rope parameters by layer type ("full_attention" alone when every layer shares them)."""
    parameters = field_of(config, "rope_parameters")
    if parameters is None:
        scaling = dict(field_of(config, "rope_scaling") or {})
        scaling.setdefault("rope_theta", field_of(config, "rope_theta", 10000.0))
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        parameters = scaling
    if parameters and all(isinstance(value, dict) for value in parameters.values()):
        return {key: dict(value) for key, value in parameters.items()}
    return {DEFAULT_ROPE_KEY: dict(parameters)}


def unsupported_reason(config: object) -> str | None:
    """Why the fast engine cannot run this model config, an HF config or its config.json dict (None when it can)."""
    model_type = field_of(config, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (fast engine supports {', '.join(SUPPORTED_MODEL_TYPES)})"
    if activation_name(config) not in ACTIVATIONS:
        return f"activation {activation_name(config)!r}"
    if field_of(config, "mlp_bias", False):
        return "MLP biases"
    if field_of(config, "use_bidirectional_attention", False):
        return "bidirectional attention"
    dropped = [name for name in DROPOUTS if field_of(config, name, 0.0)]
    if dropped:
        return f"dropout in the model ({', '.join(dropped)})"
    for rope in rope_layer_parameters(config).values():
        if rope.get("rope_type", "default") not in ROPE_TYPES:
            return f"rope type {rope.get('rope_type')!r}"
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            return f"partial rotary embedding (factor {rope['partial_rotary_factor']})"
    return None


@dataclass(frozen=True)
class ModelFacts:
    """What the fast engine's choice needs to know about a base model."""

    model_type: str
    unsupported: str | None  # unsupported_reason of its config


def model_facts(config: object) -> ModelFacts:
    """ModelFacts of a Hugging Face config object or its config.json dict."""
    return ModelFacts(str(field_of(config, "model_type", "")), unsupported_reason(config))


def run_unsupported(
    device: str, quantization: str, compute_dtype: str, lora_dropout: float, targets: tuple[str, ...] | None,
    model: Callable[[], ModelFacts],
) -> str | None:
    """Why the fast engine cannot train this run (targets None = all linears; None when it can). `model` is
    called only when the run's own settings allow the fast engine (reading it may load a config)."""
    if device != "cuda":
        return "the fast engine runs on CUDA only"
    if quantization != "nf4" or compute_dtype != "bf16":
        return f"base weights {quantization} with compute {compute_dtype} (fast engine: nf4 with bf16)"
    if lora_dropout:
        return "LoRA dropout (the fast engine's fused LoRA has none)"
    facts = model()
    beyond = sorted(set(targets or ()) - set(projections(facts.model_type)))
    if beyond:
        return f"LoRA targets beyond the decoder projections ({beyond})"
    return facts.unsupported
