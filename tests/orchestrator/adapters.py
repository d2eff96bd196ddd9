"""PEFT adapters with non-zero LoRA weights on a base model, and the logits a base + adapter gives."""
from __future__ import annotations

from pathlib import Path

import torch

PROMPT = "Write a tagline for a bamboo toothbrush."


def random_adapter(base_name: str, directory: Path, scale: float = 0.3, seed: int = 0) -> Path:
    """Save a LoRA adapter on every linear layer of `base_name` whose B matrices are random (not zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from train_core.models.loading import load_tokenizer
    from train_core.models.sources import resolve_model

    path = resolve_model(base_name).path
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(scale)
    peft_model.save_pretrained(directory)
    load_tokenizer(path).save_pretrained(directory)
    return directory


def base_plus_adapter(adapter_dir: Path):
    """The adapter's base model in fp32 with the adapter applied unmerged (PEFT), for reference outputs."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def prompt_inputs(tokenizer) -> dict:
    return tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)


@torch.no_grad()
def greedy_text(model, tokenizer, max_new_tokens: int = 24) -> str:
    inputs = prompt_inputs(tokenizer)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
