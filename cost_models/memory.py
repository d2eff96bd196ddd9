"""Peak VRAM of one training worker, as a breakdown: weights, LoRA state, activations, loss, allocator, context.

Exact terms (weights, adapters, optimizer state) are counted; the terms that depend on how the engine
saves tensors are per-token byte counts of the decoder layer scaled by coefficients fitted to measured
peaks (cost_models/data/calibration.csv via cost_models.fit).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache

from cost_models.calibration import MemoryCoefficients
from cost_models.shape import LOSS_CHUNK_ROWS, JobShape

GIB = 2**30
BYTES_PER_PARAM = {
    "nf4": 0.5 + 1 / 64 + 4 / (64 * 256),  # 4-bit codes + uint8 absmax per 64 + fp32 absmax per 256 blocks
    "nf4-nodq": 0.5 + 4 / 64,  # fp32 absmax per block of 64
    "int8": 1.0 + 4 / 4096,  # LLM.int8 codes + per-row scales
    "bf16": 2.0,
    "fp32": 4.0,
}
EIGHT_BIT_MIN_ELEMENTS = 4096  # bitsandbytes keeps 32-bit states for smaller tensors


@dataclass(frozen=True)
class MemoryBreakdown:
    """GiB per component; `reserved` is what PyTorch's allocator holds at the peak, `total` adds the CUDA context.
    The cached results are shared: treat them as read-only."""

    weights: float
    embeddings_and_norms: float
    lora_params_grads: float
    optimizer_state: float
    activations: float
    layer_recompute: float
    attention_mask: float
    logits_loss: float
    allocator_and_workspace: float
    cuda_context: float

    @cached_property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def reserved(self) -> float:
        return self.total - self.cuda_context

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "reserved": self.reserved, "total": self.total}


def layer_bytes_per_token(shape: JobShape) -> float:
    """Bytes one decoder layer saves per token for backward (bf16 compute, LoRA on shape.lora_targets).

    A least-squares fit (within 4%) to saved-tensor counts of the Hugging Face Llama/Qwen2 layer with PEFT
    LoRA under bf16 autocast, over widths and target sets: a module's input is kept only when an adapter
    needs it. With a dense mask the engine also keeps K and V expanded to every query head.
    """
    arch = shape.arch
    targets = set(shape.lora_targets)
    saved = 11.7 * arch.hidden + 5.84 * arch.intermediate + 2.75 * arch.kv_dim
    if targets & {"q_proj", "k_proj", "v_proj", "qkv_proj"}:
        saved += 4.0 * arch.hidden
    if targets & {"k_proj", "v_proj", "qkv_proj"}:
        saved += 2.3 * arch.kv_dim
    if "o_proj" in targets:
        saved += 3.58 * arch.q_dim
    if targets & {"gate_proj", "up_proj", "gate_up_proj"}:
        saved += 3.65 * arch.hidden
    if "down_proj" in targets:
        saved += 2.53 * arch.intermediate
    saved += 5.95 * shape.lora_rank * len(targets)
    if shape.masked:
        saved += 4.0 * (arch.q_dim - arch.kv_dim)
    return saved


@lru_cache(maxsize=8192)
def memory_features(shape: JobShape) -> dict[str, float]:
    """Byte counts whose scales the calibration fits, at the job's largest micro-batch.

    The terms add up: what the allocator reserves at the peak holds the saved activations, the loss
    chunk and one recomputed layer together, because blocks freed by one phase stay cached for the next.
    A bf16/fp32 base keeps extra input copies for the adapters (the `*_float_base` terms).
    """
    arch = shape.arch
    tokens = shape.max_tokens_per_micro_batch
    per_layer = layer_bytes_per_token(shape) * shape.activation_scale
    mask_entries = float(tokens) ** 2 if shape.masked else 0.0
    if shape.checkpointing == "none":
        saved, working = tokens * arch.layers * per_layer, 0.0
    elif shape.checkpointing == "full":
        saved, working = tokens * arch.layers * 2 * arch.hidden * shape.activation_scale, tokens * per_layer
    else:  # offload: the layer inputs live in pinned CPU memory
        saved, working = 0.0, tokens * per_layer
    return {
        "saved": saved,
        "saved_float_base": saved if shape.float_base else 0.0,
        "mask_per_layer": mask_entries * arch.layers * shape.activation_scale if shape.checkpointing == "none" else 0.0,
        "logits": min(shape.targets(tokens), LOSS_CHUNK_ROWS) * arch.vocab,
        "working": working,
        "working_float_base": working if shape.float_base else 0.0,
        "one": 1.0,
    }


@lru_cache(maxsize=4096)
def static_bytes(shape: JobShape) -> dict[str, float]:
    """Weights, adapters and optimizer state: counted exactly."""
    arch = shape.arch
    other_bytes = 4.0 if shape.quantization == "fp32" else 2.0
    lora = shape.lora_params
    if shape.optimizer == "adamw":
        optimizer = 8.0 * lora
    else:
        optimizer = 0.0
        for linear in shape.lora_linears:
            for numel in (shape.lora_rank * linear.inputs, shape.lora_rank * linear.outputs):
                per = 2.0 + 8.0 / 256 if numel >= EIGHT_BIT_MIN_ELEMENTS else 8.0
                optimizer += arch.layers * numel * per
    return {
        "weights": arch.linear_params * BYTES_PER_PARAM[shape.quantization],
        "embeddings_and_norms": arch.other_params * other_bytes,
        "lora_params_grads": 8.0 * lora,  # fp32 adapters and their fp32 gradients
        "optimizer_state": optimizer,
    }


@lru_cache(maxsize=8192)
def estimate_memory(shape: JobShape, coefficients: MemoryCoefficients) -> MemoryBreakdown:
    f = memory_features(shape)
    static = static_bytes(shape)
    c = coefficients
    return MemoryBreakdown(
        weights=static["weights"] / GIB,
        embeddings_and_norms=static["embeddings_and_norms"] / GIB,
        lora_params_grads=static["lora_params_grads"] / GIB,
        optimizer_state=static["optimizer_state"] / GIB,
        activations=(c.saved * f["saved"] + c.saved_float_base * f["saved_float_base"]) / GIB,
        layer_recompute=(c.working * f["working"] + c.working_float_base * f["working_float_base"]) / GIB,
        attention_mask=c.mask_per_layer * f["mask_per_layer"] / GIB,
        logits_loss=c.logits * f["logits"] / GIB,
        allocator_and_workspace=c.one / GIB,
        cuda_context=c.cuda_context_gib,
    )
