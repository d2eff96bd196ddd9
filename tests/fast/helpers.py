"""Helpers for fast-engine tests: tiny models, packed batches, and the HF + PEFT twin of a fast model."""
from __future__ import annotations

import torch

from train_core.fast.batch import PackedBatch
from train_core.fast.layer import module_path
from train_core.fast.model import FastCausalLM
from train_core.fast.recompute import Recompute
from runspec.config import ModelSettings
from train_core.models.attention import choose_attention
from train_core.models.sources import resolve_model


def tiny_path(name: str) -> str:
    return resolve_model(f"builtin:{name}").path


def packed_batch(lengths: list[int], vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(input_ids, position_ids, labels) of one (1, T) row; a few labels ignored, none crossing samples."""
    ids = torch.randint(0, vocab, (1, sum(lengths)), generator=generator)
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    labels = torch.roll(ids, -1, dims=1)
    ends = torch.tensor(lengths).cumsum(0) - 1
    labels[0, ends] = -100
    labels[0, 1] = -100
    return ids, positions, labels


def randomize_adapters(model: FastCausalLM, generator: torch.Generator) -> None:
    """Non-zero B matrices so the adapters change the output and every gradient path is exercised."""
    with torch.no_grad():
        for layer in model.layers:
            for _, b in layer.adapters.values():
                b.copy_(torch.randn(b.shape, generator=generator) * 0.05)


def hf_base(model: FastCausalLM, path: str, dtype: torch.dtype, device: str):
    """The transformers model with our dequantized NF4 weights in place of its linear weights."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=choose_attention(ModelSettings(name=path), "cpu")[0])
    hf = hf.to(device)
    hf.config.use_cache = False
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            for group, names in layer.names.items():
                for name, base in zip(names, layer.groups[group].bases):
                    hf.get_submodule(module_path(index, name)).weight.copy_(base.dequantize(dtype))
    return hf


def hf_twin(model: FastCausalLM, path: str, dtype: torch.dtype, device: str, targets: list[str], r: int, alpha: float):
    """hf_base wrapped by PEFT with a copy of our adapters."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    hf = hf_base(model, path, dtype, device)
    peft_model = get_peft_model(hf, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, task_type="CAUSAL_LM"))
    set_peft_model_state_dict(peft_model, {k: v.detach().clone() for k, v in model.adapter_state().items()})
    return peft_model


def hf_loss_and_grads(peft_model, ids, positions, labels, keys: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    peft_model.zero_grad()
    logits = peft_model(input_ids=ids, position_ids=positions).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[0], labels[0].to(logits.device), reduction="sum")
    loss.backward()
    named = dict(peft_model.named_parameters())
    return loss.detach(), [named[key.replace(".weight", ".default.weight")].grad for key in keys]


def fast_loss_and_grads(model: FastCausalLM, batch_tensors, recompute: Recompute, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The fast model's summed loss on one packed batch and its adapter gradients (parameters() order)."""
    for parameter in model.parameters():
        parameter.grad = None
    loss = model.loss_sum(PackedBatch.build(*batch_tensors, device), recompute, ce_chunk_rows=256)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-12))
