"""Build a FastCausalLM from a Hugging Face checkpoint directory (config.json + safetensors)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from train_core.fast.arch import arch_spec, inverse_frequencies, unsupported_reason
from train_core.fast.layer import GROUPS, DecoderLayer, module_path
from train_core.fast.support import PROJECTIONS
from train_core.fast.lora import LoRAGroup
from train_core.fast.model import FastCausalLM
from train_core.fast.nf4 import quantize_nf4


@dataclass(frozen=True)
class AdapterSpec:
    r: int
    alpha: float
    targets: tuple[str, ...]  # projection names, e.g. ("q_proj", ..., "down_proj")
    seed: int

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def from_target_modules(cls, r: int, alpha: float, target_modules, seed: int) -> "AdapterSpec":
        targets = PROJECTIONS if target_modules == "all-linear" else tuple(target_modules)
        unknown = sorted(set(targets) - set(PROJECTIONS))
        if unknown:
            raise ValueError(f"lora.target_modules: {unknown} not in this model; accepted: all-linear or among {list(PROJECTIONS)}")
        return cls(r, alpha, tuple(name for name in PROJECTIONS if name in targets), seed)


class Checkpoint:
    """Tensors of a safetensors checkpoint by name, read straight onto the device."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from safetensors import safe_open

        index = path / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
        self.handles = [safe_open(str(path / name), framework="pt", device=str(device)) for name in files]
        self.where = {key: handle for handle in self.handles for key in handle.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)

    def shape(self, name: str) -> list[int]:
        return self.where[name].get_slice(name).get_shape()


def load_fast_model(path: str | Path, adapters: AdapterSpec, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> FastCausalLM:
    """Quantize the decoder's linear weights to NF4 on `device` as they are read; add fresh LoRA adapters."""
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    reason = unsupported_reason(config)
    if reason:
        raise ValueError(f"the fast engine does not support {reason}")
    spec = arch_spec(config)
    weights = Checkpoint(path, device)
    generator = torch.Generator().manual_seed(adapters.seed)
    layers = [_load_layer(weights, index, adapters, generator, device, dtype) for index in range(spec.layers)]
    embed = weights.get("model.embed_tokens.weight").to(dtype)
    head = embed if spec.tied or "lm_head.weight" not in weights else weights.get("lm_head.weight").to(dtype)
    return FastCausalLM(
        spec=spec, embed=embed, head=head, final_norm=weights.get("model.norm.weight").to(dtype), layers=layers,
        inv_freq=inverse_frequencies(config).to(device),
    )


def _load_layer(
    weights: Checkpoint, index: int, adapters: AdapterSpec, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> DecoderLayer:
    prefix = f"model.layers.{index}"
    lora = {
        name: _fresh_adapter(weights.shape(f"{module_path(index, name)}.weight"), adapters.r, generator, device)
        for name in PROJECTIONS
        if name in adapters.targets
    }
    groups = {}
    for group, names in GROUPS.items():
        bases = [quantize_nf4(weights.get(f"{module_path(index, name)}.weight").to(dtype)) for name in names]
        biases = [f"{module_path(index, name)}.bias" for name in names]
        bias = torch.cat([weights.get(b).to(dtype) for b in biases]) if all(b in weights for b in biases) else None
        groups[group] = LoRAGroup(bases, [name in lora for name in names], adapters.scale, bias, dtype)
    return DecoderLayer(
        input_norm=weights.get(f"{prefix}.input_layernorm.weight").to(dtype),
        post_attention_norm=weights.get(f"{prefix}.post_attention_layernorm.weight").to(dtype),
        groups=groups,
        adapters=lora,
    )


def _fresh_adapter(shape: list[int], rank: int, generator: torch.Generator, device: torch.device) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """PEFT's default init: A ~ kaiming_uniform(a=sqrt(5)) i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0."""
    out_features, in_features = shape
    bound = 1.0 / math.sqrt(in_features)
    a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
    return torch.nn.Parameter(a.to(device)), torch.nn.Parameter(torch.zeros(out_features, rank, device=device))
