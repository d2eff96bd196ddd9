"""The fast engine's adapters in PEFT's on-disk format, so `PeftModel.from_pretrained` loads them."""
from __future__ import annotations

from pathlib import Path

import torch

from train_core.fast.loading import AdapterSpec

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_peft_adapter(state: dict[str, torch.Tensor], adapters: AdapterSpec, base_model: str, directory: str | Path) -> None:
    """Write adapter_config.json (through PEFT's own LoraConfig) and adapter_model.safetensors."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(
        r=adapters.r, lora_alpha=adapters.alpha, lora_dropout=0.0, target_modules=list(adapters.targets),
        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model,
    )
    config.inference_mode = True
    config.save_pretrained(str(directory))
    save_file({key: value.detach().float().contiguous().cpu() for key, value in state.items()}, str(directory / ADAPTER_WEIGHTS))


def load_peft_state(target: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    """Copy a PEFT adapter state dict (with or without the '.default' adapter name) into our parameters."""
    incoming = {key.replace(".default.", "."): value for key, value in state.items()}
    missing = sorted(set(target) - set(incoming))
    unexpected = sorted(set(incoming) - set(target))
    if missing or unexpected:
        raise ValueError(f"adapter state does not match this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for key, parameter in target.items():
            parameter.copy_(incoming[key].to(parameter.device, parameter.dtype))
