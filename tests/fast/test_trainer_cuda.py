"""The training loop on CUDA with the fast engine tracks the transformers + PEFT engine."""
from __future__ import annotations

import pytest
import torch

from tests.train_core.helpers import write_config
from runspec.config import load_config
from train_core.trainer import train

pytestmark = pytest.mark.cuda


def test_fast_engine_losses_track_hf_engine_and_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from train_core.models.sources import resolve_model

    results = {}
    for engine in ("hf", "fast"):
        (tmp_path / engine).mkdir()
        config = load_config(write_config(tmp_path / engine, {"model": {"name": "builtin:tiny-llama", "engine": engine}}))
        results[engine] = train(config)
    assert len(results["fast"].losses) == len(results["hf"].losses) > 0
    for fast, hf in zip(results["fast"].losses, results["hf"].losses):
        assert fast == pytest.approx(hf, rel=0.02)
    base = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-llama").path, dtype=torch.bfloat16)
    PeftModel.from_pretrained(base, str(tmp_path / "fast" / "run" / "adapter"))
