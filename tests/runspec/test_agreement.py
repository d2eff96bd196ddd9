"""The planner prices the run train_core trains: for a grid of configs x devices, the plan row's engine,
weight format, micro-batch, activation checkpointing and step count equal what train_core resolves, both
standalone (`auto` sized for the detected GPU) and as a sweep attempt (the row's settings passed in)."""
from __future__ import annotations

import json
import shutil

import pytest

from cost_models.architectures import resolve_architecture
from cost_models.catalog import gpu as catalog_gpu
from cost_models.catalog import list_offers
from orchestrator.run.attempt import attempt_config, planned_settings
from orchestrator.sweep.planner import plan_trial, trial_job
from orchestrator.sweep.spec import load_spec
from runspec.config import TrainConfig, load_config
from runspec.errors import ConfigError
from runspec.resolve import Device, cpu_micro_batch
from tests.orchestrator.helpers import write_spec
from tests.train_core.helpers import write_config
from train_core.data.dataset import batch_plan, prepare_data
from train_core.device import choose_device_path
from train_core.models.loading import load_tokenizer
from train_core.models.sources import resolve_model

GPUS = ("L4", "A100-40GB", "H100", "H200")
CONFIGS = {
    "tiny llama, all auto": {},
    "tiny qwen2, two epochs unpacked": {"model": {"name": "builtin:tiny-qwen2"}, "data": {"packing": False},
                                        "training": {"max_steps": None, "epochs": 2, "batch_size": 8}},
    "tiny llama, one packed epoch": {"data": {"max_seq_length": 512},
                                     "training": {"max_steps": None, "batch_size": 4}},
    "bf16 weights (hf engine)": {"model": {"quantization": "bf16"}},
    "LoRA dropout (hf engine)": {"lora": {"r": 8, "alpha": 16, "dropout": 0.1}},
    "engine hf forced": {"model": {"engine": "hf"}},
    "fixed micro-batch": {"training": {"max_steps": 6, "batch_size": 8, "micro_batch_size": 2}},
    "fixed checkpointing": {"training": {"max_steps": 6, "activation_checkpointing": "offload"}},
    "1.7B llama shape, seq 2048, batch 8": {"model": {"name": "LLAMA_1_7B"}, "data": {"max_seq_length": 2048},
                                             "training": {"max_steps": 20, "batch_size": 8}},
}


@pytest.fixture(scope="module")
def llama_1_7b(tmp_path_factory):
    """A SmolLM2-1.7B-shaped model directory: its config.json and a tokenizer (no weights are needed to plan)."""
    directory = tmp_path_factory.mktemp("models") / "llama-1.7b"
    directory.mkdir()
    config = resolve_architecture("smollm2-1.7b").hf_config()
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    tiny = resolve_model("builtin:tiny-llama").path
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{tiny}/{name}", directory / name)
    return str(directory)


def train_config(tmp_path, case: str, llama_1_7b: str) -> TrainConfig:
    overrides = json.loads(json.dumps(CONFIGS[case]).replace("LLAMA_1_7B", llama_1_7b))
    return load_config(write_config(tmp_path, overrides))


def train_core_steps(config: TrainConfig) -> int:
    """The step count train_core's loop runs: its own tokenized, packed data plan."""
    data = prepare_data(config.data, load_tokenizer(resolve_model(config.model.name).path))
    training = config.training
    return batch_plan(data.train, config.data, training.seed, training.batch_size).total_steps(
        training.epochs, training.max_steps)


def plan_row(config: TrainConfig, gpu: str):
    job = trial_job("t", config)
    offers = list_offers(gpu_names=[gpu])[:1]
    return job, plan_trial(job, offers).rows[0]


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("case", list(CONFIGS))
def test_the_planners_run_is_the_one_train_core_trains(tmp_path, case, gpu, llama_1_7b):
    config = train_config(tmp_path, case, llama_1_7b)
    if config.model.name.startswith("builtin:"):
        # The planner counts rows with the model's own tokenizer once it is on this machine (without it, an
        # estimate); whether another test built it first must not decide what this one compares.
        resolve_model(config.model.name)
    job, row = plan_row(config, gpu)
    shape = row.estimate.shape
    planned = (shape.engine.removeprefix("train_core-"), shape.quantization, shape.micro_batch, shape.checkpointing)
    device = Device("cuda", gpu, catalog_gpu(gpu).memory_gib)

    standalone = choose_device_path(config, device=device)
    assert (standalone.engine, standalone.quantization, standalone.micro_batch,
            standalone.activation_checkpointing) == planned

    attempt = attempt_config(config, planned_settings(row, config, _spec(tmp_path), "cuda"), config.output_dir)
    attempt_path = choose_device_path(attempt, device=device)
    assert (attempt_path.engine, attempt_path.quantization, attempt_path.micro_batch,
            attempt_path.activation_checkpointing) == planned

    if config.model.name.startswith("builtin:"):
        assert train_core_steps(config) == job.steps


def test_an_unknown_gpu_is_sized_by_its_memory(tmp_path, llama_1_7b):
    config = train_config(tmp_path, "1.7B llama shape, seq 2048, batch 8", llama_1_7b)
    on_h200 = choose_device_path(config, device=Device("cuda", "H200", 140.4))
    unknown = choose_device_path(config, device=Device("cuda", None, 140.4))
    small = choose_device_path(config, device=Device("cuda", None, 12.0))
    assert (unknown.micro_batch, unknown.activation_checkpointing) == (on_h200.micro_batch,
                                                                       on_h200.activation_checkpointing)
    assert (small.micro_batch, small.activation_checkpointing) != (on_h200.micro_batch,
                                                                   on_h200.activation_checkpointing)


@pytest.mark.parametrize("case", list(CONFIGS))
def test_on_cpu_train_core_resolves_the_cpu_rule(tmp_path, case, llama_1_7b):
    config = train_config(tmp_path, case, llama_1_7b)
    if config.training.activation_checkpointing == "offload":
        with pytest.raises(ConfigError, match="offload needs a CUDA GPU"):
            choose_device_path(config, force_cpu=True)
        return
    path = choose_device_path(config, force_cpu=True)
    fixed = config.training.micro_batch_size
    assert path.engine == "hf" and (config.model.engine == "hf" or "CUDA" in path.engine_note)
    assert path.micro_batch == (fixed if isinstance(fixed, int) else cpu_micro_batch(config, 1))
    assert path.activation_checkpointing == "none"


def _spec(tmp_path):
    spec, _ = load_spec(write_spec(tmp_path))
    return spec
