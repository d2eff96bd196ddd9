"""Build a FastCausalLM from a Hugging Face checkpoint directory (config.json + safetensors)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from runspec.fast_support import input_embedding_on_host
from train_core.fast.arch import ArchSpec, arch_spec
from train_core.fast.attention import AttentionShape
from train_core.fast.layer import DecoderLayer, module_path
from train_core.fast.lora import LoRAGroup
from train_core.fast.model import FastCausalLM
from train_core.fast.nf4 import quantize_nf4
from train_core.fast.qkv import HeadNorms
from train_core.fast.rotary import RotaryFrequencies, rotary_frequencies
from runspec.fast_support import ALL_PROJECTIONS, DEFAULT_ROPE_KEY, projection_groups, projections, unsupported_reason


@dataclass(frozen=True)
class AdapterSpec:
    r: int
    alpha: float
    targets: tuple[str, ...] | None  # projection names, e.g. ("q_proj", ..., "down_proj"); None = all linears
    seed: int

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def from_target_modules(cls, r: int, alpha: float, target_modules, seed: int) -> "AdapterSpec":
        if target_modules == "all-linear":
            return cls(r, alpha, None, seed)
        unknown = sorted(set(target_modules) - set(ALL_PROJECTIONS))
        if unknown:
            raise ValueError(f"lora.target_modules: {unknown} not in this model; accepted: all-linear or among {list(ALL_PROJECTIONS)}")
        return cls(r, alpha, tuple(target_modules), seed)

    def for_model(self, model_type: str) -> "AdapterSpec":
        """These adapters with their targets named as in this model type, in its module order."""
        names = projections(model_type)
        targets = names if self.targets is None else self.targets
        unknown = sorted(set(targets) - set(names))
        if unknown:
            raise ValueError(f"lora.target_modules: {unknown} not in this model; accepted: all-linear or among {list(names)}")
        return AdapterSpec(self.r, self.alpha, tuple(name for name in names if name in targets), self.seed)


class Checkpoint:
    """Tensors of a safetensors checkpoint by name, read straight onto the device."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from safetensors import safe_open

        index = path / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
        self.handles = [safe_open(str(path / name), framework="pt", device=str(device)) for name in files]
        self.where = {key: handle for handle in self.handles for key in handle.keys()}
        self.where_file = {key: str(path / name) for name, handle in zip(files, self.handles) for key in handle.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)

    def get_on_host(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.where_file[name], framework="pt", device="cpu") as handle:
            return handle.get_tensor(name)

    def shape(self, name: str) -> list[int]:
        return self.where[name].get_slice(name).get_shape()


def load_fast_model(
    path: str | Path, adapters: AdapterSpec, device: torch.device, dtype: torch.dtype = torch.bfloat16,
    checkpointing: str = "none",
) -> FastCausalLM:
    """Quantize the decoder's linear weights to NF4 on `device` as they are read; add fresh LoRA adapters.
    The input embedding stays in host memory where runspec.fast_support.input_embedding_on_host says so."""
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    reason = unsupported_reason(config)
    if reason:
        raise ValueError(f"the fast engine does not support {reason}")
    spec = arch_spec(config)
    adapters = adapters.for_model(spec.model_type)
    weights = Checkpoint(path, device)
    generator = torch.Generator().manual_seed(adapters.seed)
    rotary = {key: table.to(device) for key, table in rotary_frequencies(config).items()}
    layers = [_load_layer(weights, spec, index, adapters, rotary, generator, device, dtype) for index in range(spec.layers)]
    separate_head = not spec.tied and "lm_head.weight" in weights
    read_embed = weights.get_on_host if input_embedding_on_host(checkpointing, tied=not separate_head) else weights.get
    embed = read_embed("model.embed_tokens.weight").to(dtype)
    head = weights.get("lm_head.weight").to(dtype) if separate_head else embed
    return FastCausalLM(spec=spec, embed=embed, head=head, final_norm=weights.get("model.norm.weight").to(dtype), layers=layers)


def _load_layer(
    weights: Checkpoint, spec: ArchSpec, index: int, adapters: AdapterSpec, rotary: dict[str, RotaryFrequencies],
    generator: torch.Generator, device: torch.device, dtype: torch.dtype,
) -> DecoderLayer:
    prefix = f"model.layers.{index}"
    names = projection_groups(spec.model_type)
    lora = {
        name: _fresh_adapter(weights.shape(f"{module_path(index, name)}.weight"), adapters.r, generator, device)
        for name in adapters.targets
    }
    groups = {}
    for group, members in names.items():
        bases = [quantize_nf4(weights.get(f"{module_path(index, name)}.weight").to(dtype)) for name in members]
        biases = [f"{module_path(index, name)}.bias" for name in members]
        bias = torch.cat([weights.get(b).to(dtype) for b in biases]) if all(b in weights for b in biases) else None
        groups[group] = LoRAGroup(bases, [name in lora for name in members], adapters.scale, bias, dtype)

    def norm(name: str) -> torch.Tensor:
        return weights.get(f"{prefix}.{name}.weight").to(dtype)

    layer_type = spec.layer_types[index]
    head_norms = None
    if spec.qk_norm:
        head_norms = HeadNorms(norm("self_attn.q_norm"), norm("self_attn.k_norm"), spec.eps, spec.gemma)
    return DecoderLayer(
        input_norm=norm("input_layernorm"),
        mlp_norm=norm("pre_feedforward_layernorm" if spec.gemma else "post_attention_layernorm"),
        names=names,
        groups=groups,
        adapters=lora,
        rotary=rotary.get(layer_type, rotary.get(DEFAULT_ROPE_KEY)),
        attention_shape=AttentionShape(spec.window(index), spec.attention_scale, spec.attention_softcap),
        head_norms=head_norms,
        attention_output_norm=norm("post_attention_layernorm") if spec.gemma else None,
        mlp_output_norm=norm("post_feedforward_layernorm") if spec.gemma else None,
    )


def _fresh_adapter(shape: list[int], rank: int, generator: torch.Generator, device: torch.device) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """PEFT's default init: A ~ kaiming_uniform(a=sqrt(5)) i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0."""
    out_features, in_features = shape
    bound = 1.0 / math.sqrt(in_features)
    a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
    return torch.nn.Parameter(a.to(device)), torch.nn.Parameter(torch.zeros(out_features, rank, device=device))
