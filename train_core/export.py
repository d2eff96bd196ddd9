"""Merge a LoRA adapter into its base model and write a plain Hugging Face model directory.

The base is loaded un-quantised in the export dtype (a QLoRA run trained on NF4 weights; the merge is into
the de-quantised bf16/fp16 weights, as PEFT's own merge of a 4-bit model does), the adapter is applied with
`PeftModel.from_pretrained` and folded in with `merge_and_unload`, and the result is saved as safetensors
shards with its config, generation config, tokenizer and chat template, loadable by
`AutoModelForCausalLM.from_pretrained` with no PEFT installed.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from train_core.errors import ModelSourceError

EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SHARD_SIZE = "2GB"


def adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, int]]:
    """Module name (as in the base model) -> (in_features, out_features) the adapter's LoRA matrices imply."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            name = key.removeprefix("base_model.model.")
            for part, index in ((".lora_A.", 1), (".lora_B.", 0)):
                if part in name:
                    module = name.split(part)[0]
                    slot = shapes.setdefault(module, [0, 0])
                    slot[0 if part == ".lora_A." else 1] = handle.get_slice(key).get_shape()[index]
    return {module: (shape[0], shape[1]) for module, shape in shapes.items()}


def check_adapter_fits(model, adapter_dir: Path, base_name: str) -> None:
    """One line when a LoRA matrix has no module of its shape in the base (a different base model)."""
    modules = dict(model.named_modules())
    for name, (fan_in, fan_out) in sorted(adapter_shapes(adapter_dir).items()):
        module = modules.get(name)
        if module is None:
            raise ModelSourceError(
                f"--base: {base_name} does not match the adapter: it has no module {name} "
                f"(the adapter was trained on {_trained_on(adapter_dir)})"
            )
        have = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if have != (fan_in, fan_out):
            raise ModelSourceError(
                f"--base: {base_name} does not match the adapter: {name} is {have[0]}->{have[1]} in the base, "
                f"{fan_in}->{fan_out} in the adapter (trained on {_trained_on(adapter_dir)})"
            )


def _trained_on(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return config.get("base_model_name_or_path") or "an unnamed base"


def merged_model(base_path: str, adapter_dir: Path, dtype: str, base_name: str | None = None):
    """The base model with the adapter merged in, in `dtype` (bf16, fp16 or fp32), on the CPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=EXPORT_DTYPES[dtype])
    check_adapter_fits(model, adapter_dir, base_name or base_path)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    return merged.eval()


def export_tokenizer(base_path: str, adapter_dir: Path):
    """The tokenizer the run trained with (saved beside the adapter), else the base model's; chat template set."""
    from runspec.chat_templates import apply_chat_template_setting
    from train_core.models.loading import load_tokenizer

    source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_path
    tokenizer = load_tokenizer(str(source))
    apply_chat_template_setting(tokenizer, "auto")
    return tokenizer


def save_merged(model, tokenizer, directory: Path) -> None:
    """Safetensors shards, config, generation config, tokenizer and chat template into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(str(directory))
