"""Which Hugging Face decoder configs the fast engine runs, and their shapes and per-architecture choices."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from runspec.fast_support import ACTIVATIONS, FUSED_MODEL_TYPES, activation_name
from runspec.shapes import DecoderShape, decoder_shape

GEMMA_TYPES = ("gemma2", "gemma3_text")
QK_NORM_TYPES = ("qwen3", "gemma3_text")


@dataclass(frozen=True)
class ArchSpec(DecoderShape):
    """A decoder shape with what the fast engine computes differently per architecture."""

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


def arch_spec(config) -> ArchSpec:
    shape = decoder_shape(config, lambda key: ValueError(f"config field {key!r} is missing or not a positive integer"))
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) is not False else None
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"] * shape.layers
    gemma = config.model_type in GEMMA_TYPES
    return ArchSpec(
        **asdict(shape),
        eps=config.rms_norm_eps,
        layer_types=tuple(layer_types),
        sliding_window=window,
        activation=ACTIVATIONS[activation_name(config)],
        fused=config.model_type in FUSED_MODEL_TYPES,
        qk_norm=config.model_type in QK_NORM_TYPES,
        gemma=gemma,
        attention_scale=config.query_pre_attn_scalar**-0.5 if gemma else None,
        attention_softcap=getattr(config, "attn_logit_softcapping", None),
        final_softcap=getattr(config, "final_logit_softcapping", None),
    )
