"""What train_core's fast engine (train_core/fast, `train_core-fast`) holds and does per decoder layer, counted
from its code (which imports torch, so the counts are mirrored here).

Each projection group (q|k|v, o, gate|up, down) is dequantized with its LoRA merged into one of two reused
bf16 buffers and applied as one GEMM; the layer saves only what its hand-written backward needs; the loss
projects target rows only, a chunk of bf16 logits at a time; attention is varlen flash attention per sample,
except Gemma 2's soft-capped scores, which it computes per sample as plain tensors (train_core.fast.attention).
"""
from __future__ import annotations

import math

from cost_models.architectures import Architecture
from runspec.fast_support import SOFTCAPPED_ATTENTION, ce_chunk_rows


def loss_chunks(vocab: int, targets: float) -> int:
    return max(1, math.ceil(targets / ce_chunk_rows(vocab)))


def dequant_buffer_elements(arch: Architecture) -> tuple[int, int]:
    """Elements of the two module-global dequantization buffers (train_core.fast.lora.BUFFERS): slot 0 takes
    q|k|v, o and gate|up in turn, slot 1 takes down; each grows to the largest weight it ever held."""
    h, q, kv, f = arch.hidden, arch.q_dim, arch.kv_dim, arch.intermediate
    return max((q + 2 * kv) * h, h * q, 2 * f * h), f * h


SCORE_SAVED_BYTES = 10  # per score entry kept for backward: fp32 tanh and softmax outputs, their bf16 copy
SCORE_BACKWARD_BYTES = 12  # per score entry a layer's attention backward has in flight on top of what it saved
SCORE_FORWARD_TRAFFIC, SCORE_BACKWARD_TRAFFIC = 68, 77  # bytes read and written per entry: the forward's nine
# elementwise steps (bf16 scores, fp32 copy, scale, cap, tanh, uncap, mask, softmax, bf16 copy) and their gradients


def score_entries_per_token(arch: Architecture, sample_tokens: float) -> float:
    """Attention score entries per token of one layer: every query head against every key of its sample, where
    the scores are materialized (soft-capped attention); 0 on flash attention."""
    return arch.heads * sample_tokens if arch.model_type in SOFTCAPPED_ATTENTION else 0.0


def softcap_saved_bytes_per_token(arch: Architecture, sample_tokens: float) -> float:
    """What soft-capped attention keeps beyond flash attention's saved tensors: the scores' fp32 tanh and softmax
    and bf16 weights, and K and V repeated to every query head, in place of the fp32 log-sum-exp."""
    if arch.model_type not in SOFTCAPPED_ATTENTION:
        return 0.0
    entries = score_entries_per_token(arch, sample_tokens)
    return SCORE_SAVED_BYTES * entries + 2 * 2 * arch.q_dim - 4 * arch.heads


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


GRAPHED_CHECKPOINT_BUFFERS = {"full": 3, "offload": 7}  # static (tokens, hidden) tensors beyond the eager layers'


def graph_buffer_bytes(arch: Architecture, tokens: int, checkpointing: str, lora_params: int) -> float:
    """What replaying the layers as CUDA graphs holds beyond the eager layers, in bf16 (tokens, hidden) tensors that
    stay allocated between replays.

    - none (torch.cuda.make_graphed_callables): per layer, the forward graph's static output, the backward graph's
      static incoming gradient and its static input gradient. Measured beside the eager run: 2.4-2.8 of these per
      layer (Qwen2-1.5B, Llama-3-8B; docs/BENCHMARKS.md rounds 12-13).
    - full and offload (train_core.fast.checkpoint_graphs): two gradients between layers, and for full the output
      beside the layer inputs it keeps anyway; for offload the ring of three inputs and the two restored ones,
      counted whole. Both keep every adapter's gradient in fp32 for the backward graphs to write.
    """
    if checkpointing == "none":
        return 3.0 * arch.layers * tokens * arch.hidden * 2
    return GRAPHED_CHECKPOINT_BUFFERS[checkpointing] * tokens * arch.hidden * 2 + 4.0 * lora_params


def down_params(arch: Architecture) -> int:
    """Parameters of every layer's down projection: the one group a checkpointed layer's recompute never runs
    (its MLP forward is deferred to backward, which recomputes gate|up only)."""
    return arch.layers * arch.hidden * arch.intermediate


def attention_params(arch: Architecture) -> int:
    """Parameters of every layer's q, k, v and o projections (dequantized again by the recompute)."""
    h, q, kv = arch.hidden, arch.q_dim, arch.kv_dim
    return arch.layers * ((q + 2 * kv) * h + q * h)
