"""Attention choice: checked before any model loads, and eager picked for models sdpa cannot run (Gemma 2)."""
from __future__ import annotations

import json

from tests.train_core.helpers import run_cli
from runspec.config import ModelSettings
from train_core.models.attention import choose_attention


def gemma2_like(tmp_path, softcap: float | None):
    """A model directory whose config.json is a tiny Gemma 2 (only the config is read before loading)."""
    directory = tmp_path / f"gemma2-softcap-{softcap}"
    directory.mkdir()
    config = {
        "model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 256,
        "attn_logit_softcapping": softcap,
    }
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(directory)


def test_gemma2_gets_eager_for_auto_and_sdpa_and_says_why(tmp_path):
    name = gemma2_like(tmp_path, 50.0)
    for requested in ("auto", "sdpa"):
        attention, why = choose_attention(ModelSettings(name=name, attn_implementation=requested), "cpu")
        assert attention == "eager" and why == f"{requested} asked for, but this model softcaps attention logits, which sdpa cannot"
    assert choose_attention(ModelSettings(name=gemma2_like(tmp_path, None)), "cpu") == ("sdpa", "auto")
    assert choose_attention(ModelSettings(name="builtin:tiny-llama"), "cpu") == ("sdpa", "auto")


def test_flash_attention_without_flash_attn_is_one_line_before_loading(config_factory):
    config = config_factory({"model": {"name": "builtin:tiny-llama", "attn_implementation": "flash_attention_2"}})
    result = run_cli("train", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("spottune train: error: model.attn_implementation: flash_attention_2 needs")
    assert "accepted" in result.stderr and "auto, sdpa, eager, flash_attention_2" in result.stderr
    assert not (config.parent / "run" / "checkpoints").exists()
