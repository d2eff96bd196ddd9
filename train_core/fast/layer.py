"""One llama/qwen2/mistral decoder layer over packed tokens, built from our fused Functions."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from train_core.fast.arch import ArchSpec
from train_core.fast.attention import attention
from train_core.fast.batch import PackedBatch
from train_core.fast.lora import LoRAGroup, lora_linear
from train_core.fast.mlp import lora_mlp
from train_core.fast.qkv import qkv_rope
from train_core.fast.support import ATTENTION_PROJECTIONS, PROJECTIONS
from train_core.kernels.rms_norm import rms_norm

GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}


def module_path(layer: int, projection: str) -> str:
    """The projection's module name in the Hugging Face model."""
    block = "self_attn" if projection in ATTENTION_PROJECTIONS else "mlp"
    return f"model.layers.{layer}.{block}.{projection}"


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor
    post_attention_norm: torch.Tensor
    groups: dict[str, LoRAGroup]
    adapters: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]  # projection -> (A, B)

    def params(self, group: str) -> tuple[torch.Tensor, ...]:
        return tuple(p for name in GROUPS[group] if name in self.adapters for p in self.adapters[name])

    def parameters(self) -> list[torch.nn.Parameter]:
        """Adapter parameters in PEFT's order (q, k, v, o, gate, up, down; A before B)."""
        return [p for name in PROJECTIONS if name in self.adapters for p in self.adapters[name]]

    def forward(
        self, x: torch.Tensor, batch: PackedBatch, spec: ArchSpec, inv_freq: torch.Tensor, mlp_tile_rows: int | None,
        recomputing: bool = False,
    ) -> torch.Tensor:
        """The layer's output; when `recomputing` for a checkpoint's backward, the output's values are not computed
        (only its graph is needed) and the MLP does its work in backward."""
        tokens = x.shape[0]
        normed = rms_norm(x, self.input_norm, spec.eps)
        q, k, v = qkv_rope(normed, batch.positions, inv_freq, self.groups["qkv"], spec.heads, spec.kv_heads, self.params("qkv"))
        attended = attention(q, k, v, batch).reshape(tokens, spec.heads * spec.head_dim)
        x = lora_linear(attended, self.groups["o"], self.params("o"), residual=x)
        normed = rms_norm(x, self.post_attention_norm, spec.eps)
        return lora_mlp(
            normed, x, self.groups["gate_up"], self.groups["down"], self.params("gate_up"), self.params("down"), mlp_tile_rows,
            defer=recomputing,
        )
