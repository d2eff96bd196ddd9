"""Which attention kernel a model loads with: the configured one, checked before anything loads, or for auto the
one transformers can run for this model (sdpa, but eager for models that softcap attention logits, like Gemma 2)."""
from __future__ import annotations

import importlib.util

from runspec.config import ModelSettings
from runspec.errors import ConfigError
from train_core.errors import ModelSourceError
from train_core.models.sources import resolve_model

ACCEPTED = "auto, sdpa, eager, flash_attention_2 (with the flash-attn package on a CUDA GPU)"


def choose_attention(settings: ModelSettings, device: str) -> tuple[str, str]:
    """(attn_implementation to load with, why)."""
    requested = settings.attn_implementation
    if requested == "flash_attention_2":
        if device != "cuda":
            raise ConfigError(f"model.attn_implementation: flash_attention_2 needs a CUDA GPU; accepted here: {ACCEPTED}")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                f"model.attn_implementation: flash_attention_2 needs the flash-attn package, which is not installed; "
                f"accepted: {ACCEPTED}"
            )
        return requested, "as configured"
    if requested == "eager":
        return requested, "as configured"
    softcap = getattr(_model_config(settings.name), "attn_logit_softcapping", None)
    if softcap is not None:
        return "eager", f"{requested} asked for, but this model softcaps attention logits, which sdpa cannot"
    return "sdpa", "as configured" if requested == "sdpa" else "auto"


def _model_config(name: str):
    from transformers import AutoConfig

    path = resolve_model(name).path
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"model.name: cannot read the config of {path}: {str(error).splitlines()[0]}") from None
