"""Seconds per optimizer step: GPU work (FLOPs and bytes over calibrated rates) against host work (Python and
kernel launches per layer), combined per micro-batch, plus the optimizer.

FLOPs of LoRA on a frozen base: forward 2·N, backward 2·N (no weight-gradient GEMM), +2·N with recompute;
the LM head runs on target tokens only. Per engine: transformers + PEFT runs the adapters as extra GEMMs
(forward, input and weight gradients), recomputes each loss chunk, and attends over the whole micro-batch
(dense mask when packed); the fast engine merges the adapters into the dequantized weight (adapters add only
their weight gradients), finishes the loss gradient in the forward, defers a checkpointed layer's MLP to its
backward (down is never recomputed) and attends within each sample: samples of one length in one batched SDPA call,
unequal ones through varlen flash attention, each at its own fitted efficiency.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

from cost_models import fast_engine
from cost_models.calibration import TimeCoefficients
from cost_models.catalog import Gpu
from cost_models.gradient_sync import allreduce_seconds, sync_coefficients
from cost_models.memory import BYTES_PER_PARAM, layer_bytes_per_token
from cost_models.shape import FAST_ENGINE, LOSS_CHUNK_ROWS, JobShape



@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step and where they go (per-micro-batch terms are summed over the step)."""

    gemm: float
    attention: float
    memory_traffic: float
    host: float
    offload_copies: float
    optimizer: float
    gradient_sync: float
    step: float
    tokens_per_step: float
    bound: str  # "gpu" or "host": which side sets the pace

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8192)
def work(shape: JobShape) -> dict[str, float]:
    """FLOPs, bytes and host operations of one micro-batch at the job's mean size, for any GPU."""
    arch = shape.arch
    tokens = shape.tokens_per_micro_batch
    passes = shape.passes
    sync = sync_coefficients()
    engine = _fast_work(shape) if shape.engine == FAST_ENGINE else _hf_work(shape)
    if shape.graphed:  # the layers' kernels, adapter gradients included, replay from CUDA graphs: no host work
        engine["target_passes"] = 0.0
    return {
        **engine,
        "layer_passes": 0.0 if shape.graphed else float(arch.layers * passes),
        "tokens": tokens,
        "activation_bytes": passes * tokens * arch.layers * layer_bytes_per_token(shape) * shape.activation_scale,
        "float_base": 1.0 if shape.float_base else 0.0,
        "grad_accum": float(shape.grad_accum),
        "lora_tensors": float(shape.lora_tensors),
        "gradient_sync": allreduce_seconds(sync, shape.gpus, shape.lora_params),
        "data_parallel": sync.slowdown if shape.gpus > 1 else 0.0,
        "tokens_per_step": shape.grad_accum * tokens * shape.gpus,
    }


def _hf_work(shape: JobShape) -> dict[str, float]:
    arch = shape.arch
    tokens = shape.tokens_per_micro_batch
    targets = shape.targets(tokens)
    passes = shape.passes
    gemm = (2 * passes * arch.linear_params + (2 * passes + 2) * shape.lora_params) * tokens
    gemm += 6 * arch.hidden * arch.vocab * targets  # head + checkpointed loss chunk + input gradient
    attention = 4 * tokens**2 * arch.q_dim * arch.layers * (passes - 1 + 2.5)
    weight_bytes = passes * arch.linear_params * (
        2.0 if shape.float_base else BYTES_PER_PARAM[shape.quantization] + 4.0
    )
    return {
        "target_passes": float(arch.layers * passes * len(shape.lora_targets)),
        "loss_chunks": float(passes * max(1, math.ceil(targets / LOSS_CHUNK_ROWS))),
        "gemm": gemm * shape.activation_scale,  # fp32 compute runs at about half the bf16 (TF32) rate
        "masked_attention": attention if shape.masked else 0.0,
        "causal_attention": 0.0 if shape.masked else attention / 2,
        "varlen_attention": 0.0,
        "weight_bytes": weight_bytes,
        "score_bytes": 0.0,  # the dense mask path's scores are inside masked_attention's fitted efficiency
        "offload_bytes": 4.0 * tokens * arch.layers * arch.hidden if shape.checkpointing == "offload" else 0.0,
    }


def _fast_work(shape: JobShape) -> dict[str, float]:
    """The fast engine (NF4, bf16). Left out: the rank-r LoRA product inside each dequantization (2·r FLOPs per
    merged weight, under 4% of the GEMMs at rank 16 and 512 tokens)."""
    arch = shape.arch
    tokens = shape.tokens_per_micro_batch
    targets = shape.targets(tokens)
    recompute = shape.checkpointing != "none"
    linear = arch.linear_params
    gemm = 4 * linear * tokens  # forward and input gradient through the merged weights
    gemm += 4 * shape.lora_params * tokens  # adapter weight gradients: x·Aᵀ, dY·B, then dA and dB
    gemm += 4 * arch.hidden * arch.vocab * targets  # logits and their input gradient, once per chunk
    used = 2 * linear  # every group for the forward and again for its input gradient
    if recompute:
        gemm += 2 * (linear - fast_engine.down_params(arch)) * tokens
        used += fast_engine.attention_params(arch)
    dequantized = linear / shape.grad_accum if shape.merged_kept else used  # kept: one pass a step, shared
    attention = 4 * tokens * shape.mean_sample_tokens * arch.q_dim * arch.layers * (shape.passes - 1 + 2.5) / 2
    entries = tokens * arch.layers * fast_engine.score_entries_per_token(arch, shape.mean_sample_tokens)
    if entries:  # soft-capped scores: plain matmuls over every key (no causal skipping), then elementwise steps
        attention *= 2
    score_traffic = fast_engine.SCORE_FORWARD_TRAFFIC * (shape.passes - 1) + fast_engine.SCORE_BACKWARD_TRAFFIC
    varlen = not shape.equal_lengths and not entries  # soft-capped scores are plain ops whatever the lengths
    return {
        "target_passes": float(arch.layers * len(shape.lora_targets)),  # adapter gradients: backward only
        "loss_chunks": float(fast_engine.loss_chunks(arch.vocab, targets)),
        "gemm": gemm,
        "masked_attention": 0.0,
        "causal_attention": 0.0 if varlen else attention,
        "varlen_attention": attention if varlen else 0.0,
        "weight_bytes": dequantized * (BYTES_PER_PARAM["nf4"] + 2.0) + used * 2.0,  # NF4 to bf16, bf16 read per use
        "score_bytes": entries * score_traffic,
        "offload_bytes": 4.0 * tokens * (arch.layers - 1) * arch.hidden if shape.checkpointing == "offload" else 0.0,
    }


def gemm_peak(gpu: Gpu, reference: Gpu | None = None) -> float:
    """FLOP/s the fitted efficiencies apply to on `gpu`: its datasheet bf16 rate, times how its measured GEMM rate
    compares with the calibration card's where both were measured (else the datasheet alone: a transfer)."""
    ratio = 1.0
    if reference is not None and gpu.achieved_gemm_fraction and reference.achieved_gemm_fraction:
        ratio = gpu.achieved_gemm_fraction / reference.achieved_gemm_fraction
    return gpu.bf16_tflops * 1e12 * ratio


def time_features(shape: JobShape, gpu: Gpu, reference: Gpu | None = None) -> dict[str, float]:
    """The work of one micro-batch with FLOPs and device bytes divided by this GPU's peak rates (reference: the
    card the coefficients were fitted on)."""
    features = dict(work(shape))
    peak, bandwidth = gemm_peak(gpu, reference), gpu.mem_bw_gbs * 1e9
    for name in ("gemm", "masked_attention", "causal_attention", "varlen_attention"):
        features[name] /= peak
    for name in ("weight_bytes", "activation_bytes", "score_bytes"):
        features[name] /= bandwidth
    return features


def step_from_features(f: dict[str, float], c: TimeCoefficients, host_speed: float) -> StepTime:
    """Combine the work of time_features with coefficients: per micro-batch the host and the GPU overlap
    (a p-norm of the two), offload copies add on top; the optimizer and gradient sync run once per step."""
    per_pass = c.host_layer_pass_float if f["float_base"] else c.host_layer_pass_4bit
    host = host_speed * (
        f["layer_passes"] * per_pass + f["target_passes"] * c.host_per_target
        + f["loss_chunks"] * c.host_loss_chunk + f["tokens"] * c.host_per_token + c.host_micro_batch
    )
    gemm = f["gemm"] / c.gemm_efficiency
    attention = attention_seconds(f, c)
    traffic = f["weight_bytes"] + c.elementwise_traffic * f["activation_bytes"] + f["score_bytes"]
    gpu_seconds = gemm + attention + traffic
    micro = (host**c.overlap + gpu_seconds**c.overlap) ** (1 / c.overlap)
    copies = f["offload_bytes"] / (c.offload_gbs * 1e9)
    optimizer = host_speed * c.host_lora_tensor * f["lora_tensors"]
    n = f["grad_accum"]
    compute = n * (micro + copies)
    sync = f["gradient_sync"] + f["data_parallel"] * (compute + optimizer)  # all-reduce + measured slowdown
    return StepTime(
        gemm=n * gemm, attention=n * attention, memory_traffic=n * traffic, host=n * host,
        offload_copies=n * copies, optimizer=optimizer, gradient_sync=sync,
        step=compute + optimizer + sync, tokens_per_step=f["tokens_per_step"],
        bound="gpu" if gpu_seconds >= host else "host",
    )


def attention_seconds(f: dict[str, float], c: TimeCoefficients) -> float:
    """GPU seconds of time_features' attention FLOPs (over the peak) at each attention path's fitted efficiency."""
    seconds = f["causal_attention"] / c.causal_attention_efficiency
    if f["masked_attention"]:
        seconds += f["masked_attention"] / c.masked_attention_efficiency
    if f["varlen_attention"]:
        seconds += f["varlen_attention"] / c.varlen_attention_efficiency
    return seconds


def host_ahead(shape: JobShape, gpu: Gpu, c: TimeCoefficients, host_factor: float | None = None,
               reference: Gpu | None = None) -> float:
    """The share (0..1) of the forward pass that the host launches ahead of the GPU: 1 - host seconds per layer
    over GPU seconds per layer of the forward (GEMMs, dequantization and attention at the fitted rates).
    The fast engine's offload holds that share of the offloaded layer inputs (memory.estimate_memory)."""
    f = time_features(shape, gpu, reference)
    arch = shape.arch
    speed = c.host_factor if host_factor is None else host_factor
    forward_flops = 2 * (arch.linear_params + shape.lora_params) * shape.tokens_per_micro_batch
    gpu_forward = (
        forward_flops / gemm_peak(gpu, reference) / c.gemm_efficiency
        + attention_seconds(f, c) / shape.passes
        + f["weight_bytes"] / shape.passes
    ) / arch.layers
    host_forward = speed * c.host_layer_pass_4bit
    return max(0.0, min(1.0, 1.0 - host_forward / gpu_forward)) if gpu_forward > 0 else 0.0


def estimate_step_time(
    shape: JobShape, gpu: Gpu, coefficients: TimeCoefficients, host_factor: float | None = None,
    reference: Gpu | None = None,
) -> StepTime:
    """Step time on `gpu`; host_factor scales host work (default: the mean of the calibrated machines);
    reference is the calibration card, for the measured-GEMM-rate term of gemm_peak."""
    speed = coefficients.host_factor if host_factor is None else host_factor
    return step_from_features(time_features(shape, gpu, reference), coefficients, speed)
