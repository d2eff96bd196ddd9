"""Shared pieces of the GPU benchmarks: models built from configs, the standard HF recipe, timing, memory."""
from __future__ import annotations

import datetime
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

ARCHITECTURES = {
    "qwen2-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, max_position_embeddings=131072,
        use_sliding_window=False,
    ),
    "smollm2-1.7b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 130000.0}, max_position_embeddings=8192,
    ),
    "llama-3-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, max_position_embeddings=1048576,
    ),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 2**30


def build_model(name: str, root: Path, layers: int | None = None) -> Path:
    """Random-initialised bf16 checkpoint (safetensors) of a named architecture, built on the GPU once."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(ARCHITECTURES[name])
    if layers is not None:
        settings["num_hidden_layers"] = layers
    target = root / (name if layers is None else f"{name}-{layers}l")
    if (target / "config.json").exists():
        return target
    config = AutoConfig.for_model(**settings)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    del model
    release()
    return target


def environment() -> dict:
    import bitsandbytes
    import peft
    import transformers
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 1), "torch": torch.__version__,
        "cuda": torch.version.cuda, "triton": triton.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }


def release() -> None:
    from train_core.fast.lora import BUFFERS

    BUFFERS.clear()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak_gib() -> tuple[float, float]:
    return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB


def timed_steps(step: Callable[[int], float], warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """(seconds of each timed step, loss of every step) for warm-up steps followed by timed ones."""
    seconds, losses = [], []
    for index in range(warmup + steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        losses.append(step(index))
        torch.cuda.synchronize()
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    return seconds, losses


def summarise(label: str, seconds: list[float], tokens_per_step: int, extra: dict | None = None) -> dict:
    """Median step and tokens/s, the steps' spread, peak memory, and whether the allocator used expandable segments."""
    alloc, reserved = peak_gib()
    median = statistics.median(seconds)
    return {
        "run": label, "s_per_step": round(median, 4), "tokens_per_s": round(tokens_per_step / median),
        "step_spread_pct": round(100 * (max(seconds) - min(seconds)) / median, 1),
        "peak_alloc_gib": round(alloc, 2), "peak_reserved_gib": round(reserved, 2),
        **segments_by_stream(),
        **(extra or {}),
    }


def segments_by_stream() -> dict:
    """What the allocator holds now, per CUDA stream: reserved and allocated GiB (with expandable segments nothing
    is unmapped before empty_cache, so at the end of a run reserved is its peak)."""
    streams: dict[str, list[float]] = {}
    segments = torch.cuda.memory_snapshot()
    for segment in segments:
        held = streams.setdefault(str(segment["stream"]), [0.0, 0.0])
        held[0] += segment["total_size"] / GIB
        held[1] += segment["allocated_size"] / GIB
    return {"expandable_segments": any(segment.get("is_expandable") for segment in segments),
            "held_by_stream_gib": {stream: [round(v, 3) for v in held] for stream, held in streams.items()}}


def random_batch(step: int, micro: int, rows: int, seq: int, vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randint(0, vocab, (rows, seq), generator=generator)


def shifted_labels(ids: torch.Tensor) -> torch.Tensor:
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    return labels


def load_hf_recipe(path: Path, seed: int = 0, r: int = 16, alpha: int = 16, checkpointing: bool = True):
    """The standard QLoRA recipe: bnb NF4 + double quant, SDPA, prepare_model_for_kbit_training with
    non-reentrant gradient checkpointing, get_peft_model on all seven projections, in train mode (transformers
    checkpoints only while training, so a model left in from_pretrained's eval mode would run without it).
    `checkpointing=False` is the same recipe without activation checkpointing."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0}
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    peft_model.train()
    return peft_model


def hf_step(model, optimizer, batches: list[torch.Tensor]) -> float:
    """One optimizer step of the recipe: bf16 autocast, mean loss per micro-batch / grad-accum."""
    total = torch.zeros((), device="cuda")
    for ids in batches:
        ids = ids.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss / len(batches)
        loss.backward()
        total += loss.detach().float()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total)


def fast_step(engine, optimizer: "AdapterOptimizer", batches: list[torch.Tensor]) -> float:
    """One optimizer step of the fast engine: summed token loss over the step's targets, normalised once."""
    labels = [shifted_labels(ids) for ids in batches]
    targets = sum(int((l != -100).sum()) for l in labels)
    total = torch.zeros((), device="cuda")
    for ids, label in zip(batches, labels):
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        loss = engine.loss_sum(ids, positions, label) / targets
        loss.backward()
        total += loss.detach()
    optimizer.step()
    engine.parameters_changed()
    return float(total)


def adamw_8bit(parameters, lr: float = 2e-4):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(parameters, lr=lr)


class AdapterOptimizer:
    """8-bit AdamW over the fast engine's adapters as the Trainer steps them, from one flat buffer; `per_tensor`
    keeps one state per adapter tensor instead (the engine before the flat buffer)."""

    def __init__(self, parameters: list[torch.nn.Parameter], per_tensor: bool = False) -> None:
        from train_core.flat_params import FlatParameters

        self.flat = None if per_tensor else FlatParameters(parameters)
        self.optimizer = adamw_8bit(parameters if per_tensor else [self.flat.parameter])

    def step(self) -> None:
        if self.flat is not None:
            self.flat.gather_grads()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def drop_grads(self) -> None:
        """Forget the gradients of a step that did not finish (out of memory)."""
        if self.flat is not None:
            self.flat.drop_grads()
        else:
            self.optimizer.zero_grad(set_to_none=True)


def write_result(out: Path, record: dict) -> None:
    with open(out / "results.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print("RESULT " + json.dumps(record), flush=True)
