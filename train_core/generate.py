"""Generate replies from a base model, optionally with a trained LoRA adapter."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from runspec.config import ModelSettings
from runspec.data_formats import detect_format, read_jsonl
from runspec.chat_templates import apply_chat_template_setting
from runspec.errors import DataError
from train_core.errors import ModelSourceError
from train_core.models.loading import load_tokenizer
from train_core.models.sources import resolve_model


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt file (one per line) or a JSONL file (alpaca rows, or {"prompt": ...})."""
    path = Path(path)
    if path.suffix == ".jsonl":
        prompts = []
        for number, row in read_jsonl(path):
            if "prompt" in row and isinstance(row["prompt"], str):
                prompts.append(row["prompt"])
            elif detect_format(row) == "alpaca" or "instruction" in row:
                extra = row.get("input") or ""
                prompts.append(f"{row['instruction']}\n\n{extra}" if extra.strip() else row["instruction"])
            else:
                raise DataError(f"{path}:{number}: expected 'prompt' or alpaca 'instruction' (and optional 'input')")
        return prompts
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts (expected one per line)")
    return prompts


DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


def adapter_base_model(adapter: str | Path, flag: str = "--model") -> str:
    """The base model an adapter was trained on (adapter_config.json base_model_name_or_path), checked to exist."""
    config_path = Path(adapter) / "adapter_config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"--adapter: {adapter} has no adapter_config.json (expected a PEFT adapter dir)")
    try:
        base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ModelSourceError(f"{config_path}: not a readable adapter config ({type(error).__name__})") from None
    if not isinstance(base, str) or not base:
        raise ModelSourceError(f"{config_path}: no base_model_name_or_path; pass {flag} with the adapter's base model")
    looks_like_a_path = base.startswith(("/", ".", "~")) or base.endswith(".gguf")
    if looks_like_a_path and not Path(base).expanduser().exists():
        raise ModelSourceError(
            f"{config_path}: base model {base} (base_model_name_or_path) is not on this machine; "
            f"pass {flag} with the adapter's base model"
        )
    return base


class Generator:
    def __init__(self, model_name: str | None = None, adapter: str | None = None, device: str | None = None) -> None:
        """`model_name` None means the adapter's own base model, or the default model without an adapter."""
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model_name is None:
            model_name = adapter_base_model(adapter) if adapter else DEFAULT_MODEL
        resolved = resolve_model(ModelSettings(name=model_name).name)
        self.tokenizer = load_tokenizer(adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else resolved.path)
        apply_chat_template_setting(self.tokenizer, "auto")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype).to(self.device)
        if adapter:
            if not (Path(adapter) / "adapter_config.json").is_file():
                raise ModelSourceError(f"--adapter: {adapter} has no adapter_config.json (expected a PEFT adapter dir)")
            from peft import PeftModel

            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.eval()

    @torch.no_grad()
    def reply(self, prompt: str, system: str | None = None, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        options = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
        else:
            options.update(do_sample=False)
        output = self.model.generate(**encoded, **options)
        return self.tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def generate_all(generator: Generator, prompts: list[str], **options) -> list[dict]:
    return [{"prompt": prompt, "reply": generator.reply(prompt, **options)} for prompt in prompts]


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
