"""Which Hugging Face decoder configs the fast engine runs, and their shapes and per-architecture choices."""
from __future__ import annotations

from dataclasses import dataclass

from train_core.fast.rotary import rope_layer_parameters
from runspec.fast_support import FUSED_MODEL_TYPES, SUPPORTED_MODEL_TYPES

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
ROPE_TYPES = ("default", "llama3", "linear", "longrope")
GEMMA_TYPES = ("gemma2", "gemma3_text")
QK_NORM_TYPES = ("qwen3", "gemma3_text")
DROPOUTS = ("attention_dropout", "resid_pdrop", "embd_pdrop")


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    tied: bool
    layer_types: tuple[str, ...]  # "full_attention" or "sliding_attention" per layer
    sliding_window: int | None  # keys a sliding layer sees, the query's own included
    activation: str = "silu"  # of the gated MLP: silu or gelu_tanh
    fused: bool = False  # one qkv_proj and one gate_up_proj linear per layer (Phi-3)
    qk_norm: bool = False  # RMSNorm of each query and key head before the rotation (Qwen3, Gemma 3)
    gemma: bool = False  # (1 + w) norms, norms after attention and MLP as well, embedding times sqrt(hidden)
    attention_scale: float | None = None  # softmax scale; None = head_dim ** -0.5
    attention_softcap: float | None = None  # scores capped as cap * tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None  # logits capped likewise (Gemma 2)

    def window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    @property
    def embed_scale(self) -> float | None:
        return self.hidden**0.5 if self.gemma else None


def unsupported_reason(config) -> str | None:
    """Why the fast engine cannot run this config (None when it can)."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (fast engine supports {', '.join(SUPPORTED_MODEL_TYPES)})"
    if _activation_name(config) not in ACTIVATIONS:
        return f"activation {_activation_name(config)!r}"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    if getattr(config, "use_bidirectional_attention", False):
        return "bidirectional attention"
    dropped = [name for name in DROPOUTS if getattr(config, name, 0.0)]
    if dropped:
        return f"dropout in the model ({', '.join(dropped)})"
    for rope in rope_layer_parameters(config).values():
        if rope.get("rope_type", "default") not in ROPE_TYPES:
            return f"rope type {rope.get('rope_type')!r}"
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            return f"partial rotary embedding (factor {rope['partial_rotary_factor']})"
    return None


def arch_spec(config) -> ArchSpec:
    heads = config.num_attention_heads
    layers = config.num_hidden_layers
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) is not False else None
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"] * layers
    gemma = config.model_type in GEMMA_TYPES
    return ArchSpec(
        model_type=config.model_type,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab=config.vocab_size,
        eps=config.rms_norm_eps,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        layer_types=tuple(layer_types),
        sliding_window=window,
        activation=ACTIVATIONS[_activation_name(config)],
        fused=config.model_type in FUSED_MODEL_TYPES,
        qk_norm=config.model_type in QK_NORM_TYPES,
        gemma=gemma,
        attention_scale=config.query_pre_attn_scalar**-0.5 if gemma else None,
        attention_softcap=getattr(config, "attn_logit_softcapping", None),
        final_softcap=getattr(config, "final_logit_softcapping", None),
    )


def _activation_name(config) -> str:
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None) or "silu"
