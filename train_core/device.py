"""Which hardware path a run takes (device, weight format, compute dtype, optimizer, engine, micro-batch,
activation checkpointing), and why: this machine described to runspec.resolve, which decides."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from runspec.config import TrainConfig
from runspec.fast_support import model_facts
from runspec.resolve import Device, Run, Sizer, resolve
from train_core.bitsandbytes_cpu import DESCRIPTIONS, GENERIC, choose_bitsandbytes_cpu_path
from train_core.cache import cache_root
from train_core.models.attention import choose_attention

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class DevicePath:
    device: str  # "cuda" or "cpu"
    quantization: str  # "nf4" | "bf16" | "fp32"
    compute_dtype: torch.dtype
    optimizer: str  # "adamw" | "adamw_8bit"
    activation_checkpointing: str  # "none" | "full" | "offload"
    reason: str
    attention: str = "sdpa"  # the attn_implementation the model loads with
    attention_reason: str = "default"
    engine: str = "hf"  # "fast" | "hf"
    micro_batch: int = 1  # sequences per forward/backward on one worker
    engine_note: str | None = None  # why not the fast engine
    cuda_graphs: bool = False  # decoder layers replayed as CUDA graphs
    graphs_note: str | None = None  # why not, when training.cuda_graphs asks for them
    merged_weights_kept: bool = False  # merged weights kept between optimizer steps (training.keep_merged_weights)
    merged_weights_note: str | None = None  # why not, when the config asks for it

    def describe(self) -> str:
        dtype = str(self.compute_dtype).removeprefix("torch.")
        return (
            f"{self.device}: base weights {self.quantization}, compute {dtype}, optimizer {self.optimizer}, "
            f"activation checkpointing {self.activation_checkpointing}, micro-batch {self.micro_batch}, "
            + ("layers as CUDA graphs, " if self.cuda_graphs else "")
            + (f"layers eager (training.cuda_graphs {self.graphs_note}), " if self.graphs_note else "")
            + ("merged weights kept between optimizer steps, " if self.merged_weights_kept else "")
            + (f"merged weights not kept (training.keep_merged_weights {self.merged_weights_note}), "
               if self.merged_weights_note else "")
            + f"attention {self.attention} ({self.attention_reason}) ({self.reason})"
        )


@lru_cache(maxsize=1)
def bitsandbytes_cpu_trains() -> tuple[bool, str]:
    """Probe bitsandbytes' CPU backend: a 4-bit NF4 layer must run forward and backward and give finite grads."""
    try:
        import bitsandbytes as bnb
    except Exception as error:  # missing or broken install
        return False, f"bitsandbytes unavailable ({type(error).__name__})"
    try:
        generator = torch.Generator().manual_seed(0)
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(
            torch.randn(64, 64, generator=generator), requires_grad=False, quant_type="nf4"
        )
        layer = layer.to("cpu")
        choose_bitsandbytes_cpu_path(layer)
        inputs = torch.randn(4, 64, generator=generator, requires_grad=True)
        layer(inputs).sum().backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            return False, "bitsandbytes CPU backward gave no finite gradient"
    except Exception as error:
        return False, f"bitsandbytes CPU backend failed ({type(error).__name__}: {error})"
    return True, "bitsandbytes CPU backend trains 4-bit layers"


def cuda_device(workers: int = 1) -> Device:
    """This machine's CUDA GPU as runspec sees it: the catalog card its name belongs to, and its memory."""
    from cost_models.catalog import gpu_for_device

    card = gpu_for_device(torch.cuda.get_device_name())
    memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    return Device("cuda", card.name if card else None, memory, workers)


def cpu_device(config: TrainConfig, workers: int = 1) -> Device:
    """The CPU, with bitsandbytes' CPU backend probed when the config may want NF4 weights."""
    if config.model.quantization not in ("auto", "nf4"):
        return Device("cpu", workers=workers)
    trains, why = bitsandbytes_cpu_trains()
    return Device("cpu", workers=workers, cpu_nf4=trains, cpu_nf4_note=f"{why}; {DESCRIPTIONS[GENERIC]}" if trains else why)


def model_config(name: str):  # type: ignore[no-untyped-def]
    """The Hugging Face config of a model name as train_core loads it (a GGUF or built-in model is converted)."""
    from transformers import AutoConfig

    from train_core.models.sources import resolve_model

    return AutoConfig.from_pretrained(resolve_model(name).path)


def merged_weights_note(config: TrainConfig, run: Run) -> str | None:
    """Why a run that asks to keep its merged weights does not (they are a fast-engine buffer)."""
    if not config.training.keep_merged_weights or run.merged_weights_kept:
        return None
    return f"needs the fast engine: {run.engine_note}" if run.engine_note else "needs the fast engine"


def choose_device_path(
    config: TrainConfig, force_cpu: bool = False, workers: int = 1, device: Device | None = None,
    sizer: Sizer | None = None,
) -> DevicePath:
    """How this run trains here, as runspec.resolve decides it: on CUDA, `auto` micro-batch and checkpointing are
    sized by cost_models' memory model for this GPU (the planner's rule), unless another sizer is given.
    `device` describes a device other than this machine's (the CUDA branch runs without a GPU)."""
    kind = device.kind if device is not None else ("cuda" if torch.cuda.is_available() and not force_cpu else "cpu")
    attention = choose_attention(config.model, kind)  # a wrong attention setting fails before the bitsandbytes probe
    if device is None:
        device = cuda_device(workers) if kind == "cuda" else cpu_device(config, workers)
    if device.kind == "cuda" and sizer is None:
        from cost_models.sizing import MemoryModelSizer

        sizer = MemoryModelSizer(cache_root(), model_config=lambda: model_config(config.model.name).to_dict())
    run = resolve(config, device, lambda: model_facts(model_config(config.model.name)), sizer)
    reason = run.reason if device.kind == "cpu" else f"{run.reason}: {device.describe()}"
    return DevicePath(run.device, run.quantization, DTYPES[run.compute_dtype], run.optimizer, run.checkpointing,
                      reason, *attention, run.engine, run.micro_batch, run.engine_note, run.cuda_graphs, run.graphs_note,
                      run.merged_weights_kept, merged_weights_note(config, run))
