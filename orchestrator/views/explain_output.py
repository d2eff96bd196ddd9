"""`spottune plan SPEC --explain TRIAL GPU`: where one trial's memory and step time come from on one GPU type,
with the point, the upper bound or interval, and the distance from measured points that widens them."""
from __future__ import annotations

from cost_models.calibration import load_calibration
from cost_models.errors import EstimateError
from cost_models.shape import FAST_ENGINE
from orchestrator.sweep.planner import PlanRow, SweepPlan
from orchestrator.views.render import table

MEMORY_TERMS = (  # breakdown field, label, what it is
    ("weights", "weights", "quantized decoder linears, counted"),
    ("dequant_buffers", "dequant buffers", "fast engine: two reused bf16 buffers for merged weights, counted"),
    ("embeddings_and_norms", "embeddings + norms", "compute dtype, counted"),
    ("lora_params_grads", "LoRA params + grads", "fp32, counted"),
    ("optimizer_state", "optimizer state", "AdamW state of the adapters, counted"),
    ("cuda_graph_buffers", "CUDA graph buffers", "fast engine, training.cuda_graphs: static layer tensors, counted"),
    ("merged_weights", "kept merged weights", "fast engine, training.keep_merged_weights: bf16 linears, counted"),
    ("activations", "activations", "saved per layer for backward (fitted scale)"),
    ("layer_recompute", "layer working set", "one layer's backward / recompute (fitted scale)"),
    ("attention_mask", "attention mask", "dense mask of packed micro-batches, plain path (fitted scale)"),
    ("logits_loss", "logits / loss", "one loss chunk of logits and its gradient (fitted scale)"),
    ("allocator_and_workspace", "workspace", "allocator and library workspaces (fitted constant)"),
    ("offload_pending", "offload held inputs", "offloaded inputs held while their copy is pending (fitted scale)"),
    ("cuda_context", "CUDA context", "outside PyTorch's allocator (measured mean)"),
)
TIME_TERMS = (
    ("gemm", "GEMMs", "FLOPs / (datasheet bf16 peak x fitted efficiency)"),
    ("attention", "attention", "FLOPs / (peak x fitted attention efficiency)"),
    ("memory_traffic", "memory traffic", "dequantization and elementwise bytes / datasheet bandwidth"),
    ("host", "host (Python, launches)", "per layer pass, target, loss chunk and token, x host speed"),
    ("offload_copies", "offload copies", "activation bytes / fitted copy rate, on top"),
    ("optimizer", "optimizer", "per LoRA tensor, once per step"),
    ("gradient_sync", "gradient all-reduce", "adapter gradients between GPUs + multi-GPU slowdown (2xH200 measured)"),
)


def pick_row(plan: SweepPlan, trial_id: str, gpu_name: str) -> PlanRow:
    """The trial's chosen row when it is on that GPU type, else its cheapest row there (the rows are sorted)."""
    trial = next((t for t in plan.trials if t.trial_id == trial_id), None)
    if trial is None:
        known = ", ".join(t.trial_id for t in plan.trials)
        raise EstimateError(f"--explain: no trial {trial_id!r} in this sweep; accepted: {known}")
    rows = [row for row in trial.rows if row.offer.gpu.name.lower() == gpu_name.lower()]
    if not rows:
        known = ", ".join(sorted({row.offer.gpu.name for row in trial.rows}))
        raise EstimateError(f"--explain: no offer of GPU {gpu_name!r} for trial {trial_id}; accepted: {known}")
    return next((row for row in rows if row.chosen), rows[0])


def render_explain(row: PlanRow) -> str:
    e, s = row.estimate, row.estimate.shape
    calibration = load_calibration(s.engine)
    memory = e.memory.as_dict()
    margin_gib = e.need_upper_gib - e.need_gib
    lines = [
        f"trial {row.trial_id} on {e.gpu.name} ({row.offer.provider} {row.offer.instance_type} {row.offer.market}): "
        f"{s.arch.name}, {s.engine}, {s.quantization}, LoRA r{s.lora_rank} on {len(s.lora_targets)} modules, "
        f"micro-batch {s.micro_batch} x {s.grad_accum} accumulation, {s.checkpointing} checkpointing, "
        f"{s.tokens_per_micro_batch:.0f} tokens per micro-batch (longest {s.max_tokens_per_micro_batch})",
        "",
        "memory at the peak (GiB)",
        table(("TERM", "GiB", "WHAT"), [(label, f"{memory[name]:.3f}", what) for name, label, what in MEMORY_TERMS
                                        if memory[name] or name in ("weights", "activations", "logits_loss")],
              indent="  "),
        f"  point (reserved + context)   {e.need_gib:.2f}",
        f"  allocator margin             {margin_gib:+.2f}  ("
        + ("every offloaded input held x1.5, then " if s.checkpointing == "offload" and s.engine == FAST_ENGINE else "")
        + f"+{calibration.memory.margin:.1%} worst fitted under-prediction x (1 + distance {e.distance.memory:.2f}))",
        f"  upper bound                  {e.need_upper_gib:.2f}",
        f"  card {e.have_gib:.2f} GiB less {e.headroom:.0%} headroom = {e.have_gib * (1 - e.headroom):.2f}: "
        + ("fits" if e.fits else "does not fit"),
        "",
        f"step time (s), {e.time.bound}-bound; tokens per step {e.time.tokens_per_step:.0f}",
        table(("TERM", "s/STEP", "HOW"), [(label, f"{getattr(e.time, name):.4f}", how)
                                          for name, label, how in TIME_TERMS if getattr(e.time, name)], indent="  "),
        f"  step {e.time.step:.3f} s (host and GPU overlap per micro-batch), interval {e.step_low:.3f}-"
        f"{e.step_high:.3f} (x/÷ 1 + {calibration.time.margin:.1%} x (1 + distance {e.distance.time:.2f}))",
        "",
        "distance from measured points (0 = measured; >= 1 in total = uncalibrated)",
        "  " + ", ".join(f"{name} {value:.2f}" for name, value in vars(e.distance).items())
        + f" -> {'calibrated' if e.calibrated else 'uncalibrated'}",
    ]
    if row.run is not None:
        r = row.run
        lines += ["", f"run: {r.work_hours:.2f} h of steps, {r.wall_hours:.2f} h expected with "
                  f"{r.expected_preemptions:.2f} preemptions, checkpoint every {r.checkpoint_every_steps} steps, "
                  f"${r.usd:.2f} expected"]
    return "\n".join(lines)
