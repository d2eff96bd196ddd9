"""Which engine a training run gets: the fast one only where it supports the run."""
from __future__ import annotations

import pytest

from runspec.config import load_config
from runspec.errors import ConfigError
from runspec.resolve import Device
from tests.train_core.helpers import write_config
from train_core.device import choose_device_path
from train_core.engine import HFEngine, build_engine

H200 = Device("cuda", "H200", 139.8)


def test_auto_falls_back_to_transformers_peft_on_cpu(tmp_path):
    config = load_config(write_config(tmp_path))
    path = choose_device_path(config, force_cpu=True)
    assert path.engine == "hf" and "CUDA" in path.engine_note
    assert isinstance(build_engine(config, path), HFEngine)


def test_fast_engine_where_it_cannot_run_is_a_config_error(tmp_path):
    config = load_config(write_config(tmp_path, {"model": {"name": "builtin:tiny-llama", "engine": "fast"}}))
    with pytest.raises(ConfigError, match="model.engine: fast is not possible"):
        build_engine(config, choose_device_path(config, force_cpu=True))


def test_auto_takes_the_fast_engine_on_cuda_where_it_runs(tmp_path):
    config = load_config(write_config(tmp_path, {"model": {"name": "builtin:tiny-llama"}}))
    path = choose_device_path(config, device=H200)
    assert (path.engine, path.engine_note, path.quantization) == ("fast", None, "nf4")


def test_unsupported_lora_settings_are_named(tmp_path):
    config = load_config(write_config(tmp_path, {"lora": {"r": 8, "alpha": 16, "dropout": 0.1}}))
    path = choose_device_path(config, device=H200)
    assert path.engine == "hf" and "dropout" in path.engine_note
    sized = {"micro_batch_size": 2, "activation_checkpointing": "full"}
    config = load_config(write_config(tmp_path, {"lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "lm_head"]},
                                                 "training": sized}))
    assert "lm_head" in choose_device_path(config, device=H200).engine_note


def test_auto_sizing_a_run_the_memory_model_cannot_describe_asks_for_explicit_values(tmp_path):
    config = load_config(write_config(tmp_path, {"lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "lm_head"]}}))
    with pytest.raises(ConfigError, match="cannot be sized on cuda H200 .*lm_head.*set both explicitly"):
        choose_device_path(config, device=H200)


def test_cuda_graphs_go_with_the_fast_engine_and_any_checkpointing(tmp_path):
    def path_for(training: dict, engine: str = "auto"):
        overrides = {"model": {"name": "builtin:tiny-llama", "engine": engine},
                     "training": {"micro_batch_size": 2, "cuda_graphs": True, **training}}
        return choose_device_path(load_config(write_config(tmp_path, overrides)), device=H200)

    graphed = path_for({"activation_checkpointing": "none"})
    assert graphed.cuda_graphs and "layers as CUDA graphs" in graphed.describe()
    assert graphed.graphs_note is None and "layers eager" not in graphed.describe()
    plain = path_for({"activation_checkpointing": "none"}, engine="hf")
    assert not plain.cuda_graphs and "layers eager (training.cuda_graphs needs the fast engine)" in plain.describe()
    unasked = path_for({"activation_checkpointing": "none", "cuda_graphs": False})
    assert not unasked.cuda_graphs and unasked.graphs_note is None
    gemma2 = load_config(write_config(tmp_path, {"model": {"name": "builtin:tiny-gemma2"}, "training": {
        "micro_batch_size": 2, "activation_checkpointing": "none", "cuda_graphs": True}}))
    assert "soft-capped attention has no flash kernel" in choose_device_path(gemma2, device=H200).describe()
    sized = load_config(write_config(tmp_path, {"model": {"name": "builtin:tiny-llama"}, "training": {"cuda_graphs": True}}))
    full = choose_device_path(sized, device=H200, sizer=lambda config, run, device: (2, "full"))
    assert full.cuda_graphs and full.graphs_note is None
    assert choose_device_path(sized, force_cpu=True).graphs_note == "needs a CUDA GPU"
    offload = path_for({"activation_checkpointing": "offload"})
    assert offload.cuda_graphs and "layers as CUDA graphs" in offload.describe()


def test_cuda_graphs_leave_the_checkpoint_fingerprint_alone(tmp_path):
    plain = load_config(write_config(tmp_path))
    graphed = load_config(write_config(tmp_path, {"training": {"cuda_graphs": True}}))
    assert plain.fingerprint() == graphed.fingerprint()


def test_kept_merged_weights_go_with_the_fast_engine_and_leave_the_fingerprint_alone(tmp_path):
    def path_for(engine: str, keep: bool = True):
        overrides = {"model": {"name": "builtin:tiny-llama", "engine": engine},
                     "training": {"micro_batch_size": 2, "activation_checkpointing": "full", "keep_merged_weights": keep}}
        return choose_device_path(load_config(write_config(tmp_path, overrides)), device=H200)

    kept = path_for("auto")
    assert kept.merged_weights_kept and "merged weights kept between optimizer steps" in kept.describe()
    plain = path_for("hf")
    assert not plain.merged_weights_kept
    assert "merged weights not kept (training.keep_merged_weights needs the fast engine" in plain.describe()
    assert path_for("auto", keep=False).merged_weights_note is None
    assert load_config(write_config(tmp_path)).fingerprint() == load_config(
        write_config(tmp_path, {"training": {"keep_merged_weights": True}})).fingerprint()
