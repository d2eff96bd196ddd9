"""Peak VRAM of one training worker, as a breakdown: weights, LoRA state, activations, loss, allocator, context.

Exact terms (weights, adapters, optimizer state, the fast engine's dequantization buffers) are counted; the
terms that depend on how the engine saves tensors are per-token byte counts of the decoder layer scaled by
coefficients fitted per engine to measured peaks (cost_models/data/calibration.csv via cost_models.fit).
Each engine has its own features: the fast engine has no bf16 base, no dense mask and no fp32 logits.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache

from cost_models import fast_engine
from cost_models.calibration import MemoryCoefficients
from cost_models.shape import FAST_ENGINE, LOSS_CHUNK_ROWS, JobShape
from runspec.fast_support import ce_chunk_rows

GIB = 2**30
BYTES_PER_PARAM = {
    "nf4": 0.5 + 1 / 64 + 4 / (64 * 256),  # 4-bit codes + uint8 absmax per 64 + fp32 absmax per 256 blocks
    "nf4-nodq": 0.5 + 4 / 64,  # fp32 absmax per block of 64
    "int8": 1.0 + 4 / 4096,  # LLM.int8 codes + per-row scales
    "bf16": 2.0,
    "fp32": 4.0,
}
EIGHT_BIT_MIN_ELEMENTS = 4096  # bitsandbytes keeps 32-bit states for smaller tensors
UPPER_PENDING = 1.5  # offload's held inputs at the bound, in offloaded inputs: the forward's (main pool, up to all)
# plus backward prefetches the copy stream's own pool holds while the host runs ahead; measured at most 1.49
SOFTCAPPED_MODEL_TYPES = {"gemma2"}  # final_logit_softcapping: train_core.loss keeps tanh(logits / cap) in fp32
COMPONENTS = {  # memory feature: the breakdown field it belongs to
    "saved": "activations", "saved_float_base": "activations", "working": "layer_recompute",
    "working_float_base": "layer_recompute", "mask_per_layer": "attention_mask", "logits": "logits_loss",
    "one": "allocator_and_workspace", "offload_pending": "offload_pending", "graph_pool": "allocator_and_workspace",
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """GiB per component; `reserved` is what PyTorch's allocator holds at the peak, `total` adds the CUDA context.
    The cached results are shared: treat them as read-only."""

    weights: float
    dequant_buffers: float
    embeddings_and_norms: float
    lora_params_grads: float
    optimizer_state: float
    cuda_graph_buffers: float
    merged_weights: float
    activations: float
    layer_recompute: float
    attention_mask: float
    logits_loss: float
    allocator_and_workspace: float
    offload_pending: float  # offload: freed layer-input blocks the allocator cannot reuse until their copy is done
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

    The fast engine's layer is counted from its code (fast_engine.layer_saved_bytes_per_token). For the
    transformers + PEFT engine, a least-squares fit (within 4%) to saved-tensor counts of the Hugging Face
    Llama/Qwen2 layer with PEFT LoRA under bf16 autocast, over widths and target sets: a module's input is
    kept only when an adapter needs it. With a dense mask it also keeps K and V expanded to every query head.
    """
    arch = shape.arch
    if shape.engine == FAST_ENGINE:
        return float(fast_engine.layer_saved_bytes_per_token(arch))
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
    saved += 4.0 * arch.hidden * max(0, arch.norms_per_layer - 2)  # the fp32 input each further RMSNorm keeps
    saved += 5.95 * shape.lora_rank * len(targets)
    if shape.masked:
        saved += 4.0 * (arch.q_dim - arch.kv_dim)
    return saved


@lru_cache(maxsize=8192)
def memory_features(shape: JobShape) -> dict[str, float]:
    """Byte counts whose scales the calibration fits, at the job's largest micro-batch; only the features
    this job's engine has (the keys are what cost_models.fit solves for, per engine).

    The terms add up: what the allocator reserves at the peak holds the saved activations, the loss
    chunk and one recomputed layer together, because blocks freed by one phase stay cached for the next.
    """
    return _fast_features(shape) if shape.engine == FAST_ENGINE else _hf_features(shape)


def _hf_features(shape: JobShape) -> dict[str, float]:
    """transformers + PEFT: a bf16/fp32 base keeps extra input copies for the adapters (the `*_float_base`
    terms); packed micro-batches get a dense T x T mask per layer; the loss chunk's logits are fp32."""
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


def _fast_features(shape: JobShape) -> dict[str, float]:
    """The fast engine (NF4, bf16): `working` is one layer's backward (and its recompute when checkpointed);
    `logits` is one bf16 chunk of logits (turned into its own gradient in place) plus the target rows'
    hidden states, their norm and their gradient. Offload keeps two layer inputs on the GPU: the last layer's
    (never offloaded) and the one prefetched while the layer after it runs backward. `offload_pending`: each
    offloaded input is recorded on the copy stream, so the caching allocator holds its block until the copy has
    run on the GPU; when the host launches the forward ahead of the GPU, up to every offloaded input is held at
    once (counted here at that worst case; estimate_memory scales it by how far ahead the host runs). Checkpointed
    layers replayed as CUDA graphs copy through static buffers instead (nothing pending) and allocate inside a
    private pool of their own, `graph_pool` (one per job: its fitted scale is in bytes)."""
    arch = shape.arch
    tokens = shape.max_tokens_per_micro_batch
    layer = fast_engine.layer_saved_bytes_per_token(arch)
    backward = fast_engine.backward_bytes_per_token(arch)
    layer_input = 2 * arch.hidden
    if shape.checkpointing == "none":
        saved, working = tokens * arch.layers * layer, tokens * backward
    elif shape.checkpointing == "full":
        saved, working = tokens * arch.layers * layer_input, tokens * (layer + backward)
    else:
        saved, working = tokens * 2 * layer_input, tokens * (layer + backward)
    targets = shape.targets(tokens)
    pending = tokens * (arch.layers - 1) * layer_input if shape.checkpointing == "offload" and not shape.graphed else 0
    return {
        "saved": float(saved),
        "working": float(working),
        "logits": 2.0 * min(targets, ce_chunk_rows(arch.vocab)) * arch.vocab + 3 * layer_input * targets,
        "one": 1.0,
        "offload_pending": float(pending),
        "graph_pool": 1.0 if shape.graphed and shape.checkpointing != "none" else 0.0,
    }


def attention_score_bytes(shape: JobShape) -> tuple[float, float]:
    """The fast engine's soft-capped attention (Gemma 2), counted from its code and added unscaled: (bytes the
    layers keep for backward, bytes one layer's backward or recompute holds on top). Every layer keeps its
    scores without checkpointing; with it, only the layer being recomputed does."""
    if shape.engine != FAST_ENGINE:
        return 0.0, 0.0
    arch, tokens = shape.arch, shape.max_tokens_per_micro_batch
    sample = shape.rows.max_tokens / max(1.0, shape.rows.mean_samples)  # the scores grow with the sample length
    kept = tokens * fast_engine.softcap_saved_bytes_per_token(arch, sample)
    in_flight = tokens * fast_engine.SCORE_BACKWARD_BYTES * fast_engine.score_entries_per_token(arch, sample)
    if shape.checkpointing == "none":
        return arch.layers * kept, in_flight
    return 0.0, kept + in_flight


def softcap_bytes(shape: JobShape) -> float:
    """transformers + PEFT with final-logit softcapping (Gemma 2): the fp32 tanh of one loss chunk's logits,
    saved for backward on top of the logits the fitted term counts (train_core.loss._chunk_loss_sum)."""
    if shape.engine == FAST_ENGINE or shape.arch.model_type not in SOFTCAPPED_MODEL_TYPES:
        return 0.0
    return 4.0 * min(shape.targets(shape.max_tokens_per_micro_batch), LOSS_CHUNK_ROWS) * shape.arch.vocab


def counted_peak_bytes(shape: JobShape) -> float:
    """The peak's counted terms beyond static_bytes (the fit subtracts them before solving for its scales)."""
    return softcap_bytes(shape) + sum(attention_score_bytes(shape))


@lru_cache(maxsize=4096)
def static_bytes(shape: JobShape) -> dict[str, float]:
    """Weights, adapters, optimizer state, the fast engine's dequantization buffers, its CUDA graphs' static
    tensors and its kept merged weights: counted exactly."""
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
    buffers = sum(fast_engine.dequant_buffer_elements(arch)) * 2.0 if shape.engine == FAST_ENGINE else 0.0
    graphs = fast_engine.graph_buffer_bytes(arch, shape.graphed_tokens, shape.checkpointing, lora) if shape.graphed else 0.0
    merged = 2.0 * arch.linear_params if shape.merged_kept else 0.0  # every group's bf16 weight, adapters merged
    return {
        "weights": arch.linear_params * BYTES_PER_PARAM[shape.quantization],
        "dequant_buffers": buffers,  # the fast engine's two reused bf16 buffers for merged weights
        "embeddings_and_norms": (arch.other_params - (arch.vocab * arch.hidden if shape.input_embedding_on_host else 0))
        * other_bytes,
        "lora_params_grads": 8.0 * lora,  # fp32 adapters and their fp32 gradients
        "optimizer_state": optimizer,
        "cuda_graph_buffers": graphs,
        "merged_weights": merged,
    }


@lru_cache(maxsize=8192)
def estimate_memory(shape: JobShape, coefficients: MemoryCoefficients, host_ahead: float = 1.0) -> MemoryBreakdown:
    """The breakdown at the peak. host_ahead (0..1): the share of the forward pass the host has launched ahead
    of the GPU, which sets how many offloaded inputs wait on the copy stream (1 = all: the bound)."""
    static = static_bytes(shape)
    fitted = dict.fromkeys(set(COMPONENTS.values()), 0.0)
    for name, count in memory_features(shape).items():
        share = host_ahead if name == "offload_pending" else 1.0
        fitted[COMPONENTS[name]] += getattr(coefficients, name) * count * share / GIB
    fitted["logits_loss"] += softcap_bytes(shape) / GIB
    kept, in_flight = attention_score_bytes(shape)
    fitted["activations"] += kept / GIB
    fitted["layer_recompute"] += in_flight / GIB
    return MemoryBreakdown(
        **{name: value / GIB for name, value in static.items()}, **fitted, cuda_context=coefficients.cuda_context_gib,
    )


def reserved_upper_gib(shape: JobShape, coefficients: MemoryCoefficients, distance: float) -> float:
    """An upper bound on peak reserved memory: the rest of the breakdown plus UPPER_PENDING times every offloaded
    input, all of it times the engine's worst fitted under-prediction, widened in proportion to the job's
    distance from the measured points."""
    pending = UPPER_PENDING * memory_features(shape).get("offload_pending", 0.0) / GIB
    base = estimate_memory(shape, coefficients, 0.0).reserved + pending
    return base * (1 + coefficients.margin * (1 + distance))
