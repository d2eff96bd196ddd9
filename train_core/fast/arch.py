"""Which Hugging Face decoder configs the fast engine runs, and their shapes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from train_core.fast.support import SUPPORTED_MODEL_TYPES


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
    sliding_window: int | None


def unsupported_reason(config) -> str | None:
    """Why the fast engine cannot run this config (None when it can)."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (fast engine supports {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        return f"activation {config.hidden_act!r}"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "llama3", "linear"):
        return f"rope type {rope.get('rope_type')!r}"
    return None


def arch_spec(config) -> ArchSpec:
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    return ArchSpec(
        model_type=config.model_type,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=_head_dim(config),
        vocab=config.vocab_size,
        eps=config.rms_norm_eps,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        sliding_window=window,
    )


def rope_parameters(config) -> dict:
    parameters = getattr(config, "rope_parameters", None)
    if parameters:
        return dict(parameters)
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    scaling.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    scaling.setdefault("rope_type", scaling.get("type", "default"))
    return scaling


def inverse_frequencies(config) -> torch.Tensor:
    """fp32 (head_dim / 2,) rotary inverse frequencies, as Hugging Face computes them for this config."""
    rope = rope_parameters(config)
    kind = rope.get("rope_type", "default")
    if kind == "default":
        dim = _head_dim(config)
        return 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"))
    if scaling != 1.0:
        raise ValueError(f"rope type {kind!r} with attention scaling {scaling} is not supported by the fast engine")
    return inv_freq.float()


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
