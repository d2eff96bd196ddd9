"""Rotary inverse frequencies per layer type, as Hugging Face computes them for a config (default, linear,
llama3 and longrope scaling). Longrope switches to its long factors when a batch's longest sample passes the
pretraining length, as transformers does, and scales the rotated q and k by its attention factor."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runspec.fast_support import DEFAULT_ROPE_KEY, rope_layer_parameters

@dataclass
class RotaryFrequencies:
    short: torch.Tensor  # fp32 (head_dim / 2,)
    long: torch.Tensor | None = None  # longrope's frequencies past `original_length`
    original_length: int | None = None
    scaling: float = 1.0  # multiplies cos and sin (longrope's attention factor)

    def for_length(self, max_length: int) -> torch.Tensor:
        """The frequencies for a batch whose longest sample has `max_length` tokens."""
        if self.long is not None and max_length > self.original_length:
            return self.long
        return self.short

    def to(self, device: torch.device) -> "RotaryFrequencies":
        long = self.long.to(device) if self.long is not None else None
        return RotaryFrequencies(self.short.to(device), long, self.original_length, self.scaling)


def rotary_frequencies(config) -> dict[str, RotaryFrequencies]:
    """Frequencies by layer type; a layer whose type is not a key uses DEFAULT_ROPE_KEY's."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    parameters = rope_layer_parameters(config)
    per_type = len(parameters) > 1 or DEFAULT_ROPE_KEY not in parameters
    tables = {}
    for layer_type, rope in parameters.items():
        kind = rope.get("rope_type", "default")
        extra = {"layer_type": layer_type} if per_type else {}
        if kind == "default":
            dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            short = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
            tables[layer_type] = RotaryFrequencies(short)
            continue
        init = ROPE_INIT_FUNCTIONS[kind]
        short, scaling = init(config, torch.device("cpu"), **extra)
        if kind != "longrope":
            if scaling != 1.0:
                raise ValueError(f"rope type {kind!r} with attention scaling {scaling} is not supported by the fast engine")
            tables[layer_type] = RotaryFrequencies(short.float())
            continue
        original = rope.get("original_max_position_embeddings") or config.original_max_position_embeddings
        long, _ = init(config, torch.device("cpu"), seq_len=original + 1, **extra)
        tables[layer_type] = RotaryFrequencies(short.float(), long.float(), original, float(scaling))
    return tables
