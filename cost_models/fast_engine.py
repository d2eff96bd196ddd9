"""What train_core's fast engine (train_core/fast, `train_core-fast`) holds and does per decoder layer, counted
from its code (which imports torch, so the counts are mirrored here).

Each projection group (q|k|v, o, gate|up, down) is dequantized with its LoRA merged into one of two reused
bf16 buffers and applied as one GEMM; the layer saves only what its hand-written backward needs; the loss
projects target rows only, a chunk of bf16 logits at a time; attention is varlen flash attention per sample.
"""
from __future__ import annotations

import math

from cost_models.architectures import Architecture
from runspec.fast_support import ce_chunk_rows


def loss_chunks(vocab: int, targets: float) -> int:
    return max(1, math.ceil(targets / ce_chunk_rows(vocab)))


def dequant_buffer_elements(arch: Architecture) -> tuple[int, int]:
    """Elements of the two module-global dequantization buffers (train_core.fast.lora.BUFFERS): slot 0 takes
    q|k|v, o and gate|up in turn, slot 1 takes down; each grows to the largest weight it ever held."""
    h, q, kv, f = arch.hidden, arch.q_dim, arch.kv_dim, arch.intermediate
    return max((q + 2 * kv) * h, h * q, 2 * f * h), f * h


def layer_saved_bytes_per_token(arch: Architecture) -> int:
    """Bytes one layer keeps per token for its backward: its input, the residual after attention and both
    norms' outputs (bf16) with the norms' fp32 1/rms; the q|k|v output; the attention output and its fp32
    log-sum-exp per head; the gate|up output (silu(gate) * up is recomputed in backward). LoRA adds nothing
    per token."""
    h, q, kv, f = arch.hidden, arch.q_dim, arch.kv_dim, arch.intermediate
    return 2 * 4 * h + 2 * 4 + 2 * (q + 2 * kv) + 2 * q + 4 * arch.heads + 2 * 2 * f


def backward_bytes_per_token(arch: Architecture) -> int:
    """Bytes a layer's backward allocates on top of what it saved: silu(gate) * up (reused as its gradient),
    the gradient of the MLP input and the incoming gradient."""
    return 2 * arch.intermediate + 2 * 2 * arch.hidden


def down_params(arch: Architecture) -> int:
    """Parameters of every layer's down projection: the one group a checkpointed layer's recompute never runs
    (its MLP forward is deferred to backward, which recomputes gate|up only)."""
    return arch.layers * arch.hidden * arch.intermediate


def attention_params(arch: Architecture) -> int:
    """Parameters of every layer's q, k, v and o projections (dequantized again by the recompute)."""
    h, q, kv = arch.hidden, arch.q_dim, arch.kv_dim
    return arch.layers * ((q + 2 * kv) * h + q * h)
