"""The training loop on CUDA with the fast engine tracks the transformers + PEFT engine."""
from __future__ import annotations

import re

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


def test_a_killed_and_resumed_cuda_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """NF4, the fast engine and 8-bit AdamW on a GPU: the resumed run's adapter and losses differ from an uninterrupted
    run's by no more than two uninterrupted runs differ from each other (the attention backward's atomics round)."""
    from tests.train_core.test_resume_exact import final_state, train_and_kill
    from tests.train_core.helpers import run_cli

    config = write_config(tmp_path, {"model": {"name": "builtin:tiny-llama", "engine": "fast", "quantization": "nf4"},
                                     "data": {"eval": None},
                                     "training": {"max_steps": 24, "batch_size": 4, "optimizer": "adamw_8bit"},
                                     "checkpoint": {"every_steps": 3}})
    runs = {}
    for name in ("straight", "again"):
        done = run_cli("train", str(config), "--output-dir", str(tmp_path / name))
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = final_state(tmp_path / name)
    killed_at = train_and_kill(config, tmp_path / "resumed", 9)
    resumed = run_cli("train", str(config), "--output-dir", str(tmp_path / "resumed"), "--resume")
    assert resumed.returncode == 0 and f"resumed from step {killed_at}" in resumed.stderr, resumed.stderr[-2000:]
    runs["resumed"] = final_state(tmp_path / "resumed")

    def differences(name: str) -> tuple[float, float]:
        (history, adapter), (reference_history, reference) = runs[name], runs["straight"]
        loss = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(history, reference_history))
        weights = max(float((adapter[k].float() - reference[k].float()).norm() / reference[k].float().norm())
                      for k in reference)
        return loss, weights

    noise, resume = differences("again"), differences("resumed")
    print(f"run to run: losses {noise[0]:.2e}, adapter {noise[1]:.2e}; resumed: {resume[0]:.2e}, {resume[1]:.2e}")
    assert [entry["step"] for entry in runs["resumed"][0]] == list(range(1, 25))
    assert resume[0] <= 3 * noise[0] and resume[1] <= 3 * noise[1]  # both 0 on an H200 (2026-11-30)


def train_with_and_without(tmp_path, setting: str, training: dict) -> tuple[dict, dict]:
    """({False: result, True: result}, their log lines): tiny-llama on the fast engine, batch 4 in micro-batches of 2,
    trained with the boolean training `setting` off and on."""
    from train_core.trainer import Trainer

    results, logs = {}, {}
    for on in (False, True):
        directory = tmp_path / f"{setting}-{on}"
        directory.mkdir()
        config = load_config(write_config(directory, {
            "model": {"name": "builtin:tiny-llama", "engine": "fast"},
            "training": {"batch_size": 4, "micro_batch_size": 2, **training, setting: on}}))
        logs[on] = []
        results[on] = Trainer(config, log=logs[on].append).run()
    return results, logs


@pytest.mark.parametrize("checkpointing", ["none", "offload"])
def test_cuda_graphs_train_packed_data_as_the_eager_layers_do(tmp_path, checkpointing):
    """The Trainer with training.cuda_graphs on packed samples of many lengths: every micro-batch replays the
    graphs (padded to micro-batch x max_seq_length rows), and the losses are the eager run's."""
    results, logs = train_with_and_without(tmp_path, "cuda_graphs", {"max_steps": 6, "activation_checkpointing": checkpointing})
    assert len(results[True].losses) == 6
    for graphed, eager in zip(results[True].losses, results[False].losses):
        assert graphed == pytest.approx(eager, rel=2e-2)
    assert results[True].eval_loss == pytest.approx(results[False].eval_loss, rel=2e-2)
    assert "layers as CUDA graphs" in results[True].device_path
    summary = [line for line in logs[True] if line.startswith("CUDA graphs:")]
    print(summary)
    assert len(summary) == 1 and re.match(r"CUDA graphs: \d+ micro-batches replayed, 0 eager", summary[0])
    assert not any(line.startswith("CUDA graphs") for line in logs[False])


def test_kept_merged_weights_train_as_the_trainer_does_without_them(tmp_path):
    """training.keep_merged_weights: the same losses and eval loss as dequantizing on every use (the
    Trainer refreshes the kept weights after each optimizer step), one refresh per step."""
    results, logs = train_with_and_without(tmp_path, "keep_merged_weights",
                                           {"max_steps": 4, "activation_checkpointing": "full"})
    assert results[True].losses == results[False].losses
    assert results[True].eval_loss == results[False].eval_loss
    assert "merged weights kept between optimizer steps" in results[True].device_path
    assert "merged weights refreshed 4 times" in logs[True]
