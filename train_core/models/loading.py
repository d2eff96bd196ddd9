"""Load the base model in the chosen weight format and wrap it with PEFT LoRA adapters."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from runspec.config import LoraSettings, ModelSettings
from train_core.bitsandbytes_cpu import choose_bitsandbytes_cpu_path
from train_core.device import DevicePath
from runspec.errors import ConfigError
from train_core.errors import ModelSourceError
from train_core.models.sources import resolve_model


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def declared_tokenizer_class(path: str) -> str | None:
    """The tokenizer_class a local model directory's tokenizer_config.json names, if any."""
    config = Path(path) / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    except (ValueError, AttributeError):
        return None


def load_tokenizer(path: str):
    """The directory's tokenizer; one saved as a plain tokenizer.json is loaded as exactly that.

    AutoTokenizer maps a generic tokenizer class to the model type's own (Qwen2Tokenizer for a qwen2 config), which
    rebuilds a byte-level BPE from the file and encodes a WordLevel or other non-BPE tokenizer.json to nothing.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if declared_tokenizer_class(path) in GENERIC_TOKENIZER_CLASSES:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: str, settings: ModelSettings, device_path: DevicePath):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    kwargs: dict = {"attn_implementation": device_path.attention}
    if device_path.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=device_path.compute_dtype,
        )
        kwargs["dtype"] = device_path.compute_dtype
    else:
        kwargs["dtype"] = torch.bfloat16 if device_path.quantization == "bf16" else torch.float32
    kwargs["device_map"] = {"": torch.cuda.current_device()} if device_path.device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"model.name: cannot load {path}: {str(error).splitlines()[0]}") from None
    if device_path.quantization == "nf4" and device_path.device == "cpu":
        choose_bitsandbytes_cpu_path(model)
    model.config.use_cache = False
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def add_lora(model, settings: LoraSettings, seed: int):
    """Attach fresh LoRA adapters; their initial values depend only on `seed`."""
    from peft import LoraConfig, get_peft_model

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    targets = settings.target_modules
    if isinstance(targets, list):
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        unknown = [name for name in targets if name not in present]
        if unknown:
            raise ConfigError(
                f"lora.target_modules: {unknown} not in this model; accepted: all-linear or names among "
                f"{sorted(n for n in present if n.endswith('proj'))}"
            )
    torch.manual_seed(seed)
    lora_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def load_model(settings: ModelSettings, device_path: DevicePath):
    """(base model, description of the source)."""
    resolved = resolve_model(settings.name)
    return load_base_model(resolved.path, settings, device_path), resolved.description
