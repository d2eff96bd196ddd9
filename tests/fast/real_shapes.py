"""Real layer shapes of the newly supported models (from each model's config.json on huggingface.co), built
random-initialised and a few layers deep for tests."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

LAYERS = 2


@dataclass(frozen=True)
class RealShape:
    model_type: str
    config: dict  # the model's config.json fields that shape its forward
    lengths: list[int] = field(default_factory=lambda: [700, 300, 1100])


REAL_SHAPES = {  # from each model's config.json on huggingface.co
    "qwen3-8b": RealShape("qwen3", dict(
        hidden_size=4096, intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
    )),
    "llama-3.2-3b": RealShape("llama", dict(
        hidden_size=3072, intermediate_size=8192, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
        vocab_size=128256, rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192),
    )),
    "phi-3.5-mini": RealShape("phi3", dict(
        hidden_size=3072, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
        rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=131072,
        original_max_position_embeddings=4096, sliding_window=262144, pad_token_id=32000,
        rope_parameters=dict(  # factors of Phi-3.5's form: 48 each, short near 1, long growing to ~50
            rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=4096,
            short_factor=[1.0 + 0.02 * i for i in range(48)], long_factor=[1.08 * 1.085**i for i in range(48)],
        ),
    ), lengths=[4200, 500]),
    "gemma-2-2b": RealShape("gemma2", dict(
        hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        vocab_size=256000, rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=4096,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=True,
    ), lengths=[4200, 900]),
    "gemma-3-1b": RealShape("gemma3_text", dict(
        hidden_size=1152, intermediate_size=6912, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        vocab_size=262144, rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=512,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
        rope_parameters=dict(sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                             full_attention=dict(rope_type="default", rope_theta=1000000.0)),
    )),
}


def build(shape: RealShape, directory, device: torch.device = torch.device("cuda"), dtype: torch.dtype = torch.bfloat16, layers: int = LAYERS) -> str:
    """A random-initialised (seed 0) checkpoint of the shape, `layers` deep."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(shape.model_type, num_hidden_layers=layers, **shape.config)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory)
    del model
    return str(directory)
