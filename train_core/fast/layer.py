"""One decoder layer over packed tokens, built from our fused Functions: the llama form (norm, attention,
residual, norm, MLP, residual) and Gemma's, which also normalises the attention's and the MLP's outputs
before each residual add."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from train_core.fast.arch import ArchSpec
from train_core.fast.attention import AttentionShape, attention
from train_core.fast.batch import PackedBatch
from train_core.fast.lora import LoRAGroup, lora_linear
from train_core.fast.mlp import lora_mlp
from train_core.fast.qkv import HeadNorms, qkv_rope
from train_core.fast.rotary import RotaryFrequencies
from runspec.fast_support import MLP_MODULES
from train_core.kernels.rms_norm import rms_norm


def module_path(layer: int, projection: str) -> str:
    """The projection's module name in the Hugging Face model."""
    block = "mlp" if projection in MLP_MODULES else "self_attn"
    return f"model.layers.{layer}.{block}.{projection}"


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor
    mlp_norm: torch.Tensor  # before the MLP (llama's post_attention_layernorm, Gemma's pre_feedforward_layernorm)
    names: dict[str, tuple[str, ...]]  # group -> projection names, in module order
    groups: dict[str, LoRAGroup]
    adapters: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]  # projection -> (A, B)
    rotary: RotaryFrequencies
    attention_shape: AttentionShape
    head_norms: HeadNorms | None = None
    attention_output_norm: torch.Tensor | None = None  # Gemma's post_attention_layernorm
    mlp_output_norm: torch.Tensor | None = None  # Gemma's post_feedforward_layernorm

    def params(self, group: str) -> tuple[torch.Tensor, ...]:
        return tuple(p for name in self.names[group] if name in self.adapters for p in self.adapters[name])

    def parameters(self) -> list[torch.nn.Parameter]:
        """Adapter parameters in PEFT's order (the model's module order; A before B)."""
        return [p for names in self.names.values() for name in names if name in self.adapters for p in self.adapters[name]]

    def forward(
        self, x: torch.Tensor, batch: PackedBatch, spec: ArchSpec, mlp_tile_rows: int | None, recomputing: bool = False,
    ) -> torch.Tensor:
        """The layer's output; when `recomputing` for a checkpoint's backward, the output's values are not computed
        (only its graph is needed) and the MLP does its work in backward (the llama form only: Gemma's output norm
        needs the MLP's values)."""
        tokens = x.shape[0]
        unit = spec.gemma
        normed = rms_norm(x, self.input_norm, spec.eps, unit)
        q, k, v = qkv_rope(
            normed, batch.positions, self.rotary.for_length(batch.max_length), self.groups["qkv"], spec.heads,
            spec.kv_heads, self.params("qkv"), self.head_norms, self.rotary.scaling,
        )
        attended = attention(q, k, v, batch, self.attention_shape).reshape(tokens, spec.heads * spec.head_dim)
        if self.attention_output_norm is None:
            x = lora_linear(attended, self.groups["o"], self.params("o"), residual=x)
        else:
            x = x + rms_norm(lora_linear(attended, self.groups["o"], self.params("o")), self.attention_output_norm, spec.eps, unit)
        normed = rms_norm(x, self.mlp_norm, spec.eps, unit)
        mlp = (self.groups["gate_up"], self.groups["down"], self.params("gate_up"), self.params("down"), mlp_tile_rows)
        if self.mlp_output_norm is None:
            return lora_mlp(normed, x, *mlp, defer=recomputing, activation=spec.activation)
        out = lora_mlp(normed, None, *mlp, activation=spec.activation)
        return x + rms_norm(out, self.mlp_output_norm, spec.eps, unit)
