"""DecoderShape: the sizes of a decoder-only transformer, read once from a Hugging Face config (object or
config.json dict). The fast engine's ArchSpec and the estimators' Architecture are both this shape plus what
each of them needs besides."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from runspec.fast_support import field_of


@dataclass(frozen=True)
class DecoderShape:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def decoder_shape(config: object, missing: Callable[[str], Exception]) -> DecoderShape:
    """The shape of a decoder config; a required size that is absent or not a positive integer raises missing(key)."""

    def size(key: str) -> int:
        value = field_of(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise missing(key)
        return value

    hidden, heads = size("hidden_size"), size("num_attention_heads")
    return DecoderShape(
        model_type=str(field_of(config, "model_type", "")), hidden=hidden, intermediate=size("intermediate_size"),
        layers=size("num_hidden_layers"), heads=heads, kv_heads=int(field_of(config, "num_key_value_heads") or heads),
        head_dim=int(field_of(config, "head_dim") or hidden // heads), vocab=size("vocab_size"),
        tied=bool(field_of(config, "tie_word_embeddings", False)),
    )
