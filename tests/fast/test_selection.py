"""Which engine a training run gets: the fast one only where it supports the run."""
from __future__ import annotations

import pytest
import torch

from tests.train_core.helpers import write_config
from runspec.config import load_config
from train_core.device import choose_device_path
from train_core.engine import HFEngine, build_engine
from runspec.errors import ConfigError
from train_core.fast.engine import fast_engine_unsupported


def test_auto_falls_back_to_transformers_peft_on_cpu(tmp_path):
    config = load_config(write_config(tmp_path))
    path = choose_device_path(config, force_cpu=True)
    assert "CUDA" in fast_engine_unsupported(config, path)
    assert isinstance(build_engine(config, path), HFEngine)


def test_fast_engine_where_it_cannot_run_is_a_config_error(tmp_path):
    config = load_config(write_config(tmp_path, {"model": {"name": "builtin:tiny-llama", "engine": "fast"}}))
    with pytest.raises(ConfigError, match="model.engine: fast is not possible"):
        build_engine(config, choose_device_path(config, force_cpu=True))


def test_unsupported_lora_settings_are_named(tmp_path):
    config = load_config(write_config(tmp_path, {"lora": {"r": 8, "alpha": 16, "dropout": 0.1}}))
    cuda_path = choose_device_path(config, force_cpu=True).__class__("cuda", "nf4", torch.bfloat16, "adamw_8bit", "full", "test")
    assert "dropout" in fast_engine_unsupported(config, cuda_path)
    config = load_config(write_config(tmp_path, {"lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "lm_head"]}}))
    assert "lm_head" in fast_engine_unsupported(config, cuda_path)
