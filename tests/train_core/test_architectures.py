"""The plain path (transformers + PEFT) trains each architecture the fast engine added, with default settings."""
from __future__ import annotations

import json
import math

import pytest

from tests.train_core.helpers import write_config
from runspec.config import ModelSettings, load_config
from train_core.models.attention import choose_attention
from train_core.models.sources import resolve_model
from train_core.trainer import train

LINEARS = {
    "tiny-qwen3": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "tiny-llama3.2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "tiny-phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "tiny-gemma2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "tiny-gemma3": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
}


@pytest.mark.parametrize("name", sorted(LINEARS))
def test_trains_and_saves_a_peft_adapter_on_every_linear(tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # fp32 weights: bitsandbytes' CPU inference path needs out_features % 32 == 0 on some CPUs, which tiny models lack
    config = load_config(write_config(tmp_path, {
        "model": {"name": f"builtin:{name}", "quantization": "fp32"}, "training": {"max_steps": 2},
        "checkpoint": {"every_steps": 2},
    }))
    result = train(config)
    assert len(result.losses) == 2 and all(math.isfinite(loss) for loss in result.losses)
    adapter = tmp_path / "run" / "adapter"
    targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert {target.rsplit(".", 1)[-1] for target in targets} == LINEARS[name]
    base = AutoModelForCausalLM.from_pretrained(resolve_model(f"builtin:{name}").path)
    PeftModel.from_pretrained(base, str(adapter))


def test_soft_capped_models_load_with_eager_attention_without_being_asked():
    for requested in ("auto", "sdpa"):
        assert choose_attention(ModelSettings(name="builtin:tiny-gemma2", attn_implementation=requested), "cpu")[0] == "eager"
        assert choose_attention(ModelSettings(name="builtin:tiny-gemma3", attn_implementation=requested), "cpu")[0] == "sdpa"
