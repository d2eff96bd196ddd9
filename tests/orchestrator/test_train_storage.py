"""`spottune train` writes to and resumes from an s3:// output location on a real S3 server."""
from __future__ import annotations

import json

import yaml

from cluster.storage import open_store, parse_uri
from tests.orchestrator.sweeps import (
    EVAL_DATA, TRAIN_DATA, adapter_tensors, assert_bit_identical, reference_adapter, spottune,
)

CONFIG = {
    "model": {"name": "builtin:tiny-llama", "quantization": "fp32"},
    "data": {"train": str(TRAIN_DATA), "eval": str(EVAL_DATA), "max_seq_length": 128},
    "lora": {"r": 8, "alpha": 16},
    "training": {"max_steps": 8, "batch_size": 4, "learning_rate": 1.0e-3, "seed": 5},
    "checkpoint": {"every_steps": 3, "keep": 2},
}


def _stopped_run(store, directory, stop_after: int) -> None:
    """Train in this process until `stop_after` steps are checkpointed, as an interrupted run would have."""
    import torch

    from runspec.config import TrainConfig
    from train_core.trainer import TrainHooks, Trainer

    steps = iter(range(1, 10_000))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig.model_validate({**CONFIG, "output_dir": "unused"})
        hooks = TrainHooks(stop_requested=lambda: next(steps) >= stop_after)
        result = Trainer(config, store=store, work_dir=directory, hooks=hooks, log=lambda m: None).run()
    finally:
        torch.set_num_threads(threads)
    assert (result.status, result.step) == ("stopped", stop_after)


def test_train_resumes_from_s3(s3_server, monkeypatch, tmp_path):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    uri = f"s3://{s3_server.bucket}/{s3_server.prefix('train')}/runs/one"
    store = open_store(parse_uri(uri))
    _stopped_run(store, tmp_path / "first", stop_after=4)
    assert store.read_text("checkpoints/latest").strip() == "4"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": "runs/ignored"}), encoding="utf-8")
    result = spottune("train", str(config), "--resume", "--output-dir", uri, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("completed: step 8/8")
    assert "resumed from step 4 (s3://" in result.stderr
    store.download_dir("adapter", tmp_path / "adapter")
    assert_bit_identical(adapter_tensors(tmp_path / "adapter"), reference_adapter(CONFIG, tmp_path / "reference"))
    steps = [json.loads(line)["step"] for line in store.read_text("metrics.jsonl").splitlines() if "loss" in line]
    assert steps[0] == 5 and steps[-1] == 8


def test_train_rejects_an_unknown_scheme_before_loading_anything(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": "gs://bucket/x"}), encoding="utf-8")
    bad = spottune("train", str(config))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"spottune train: error: {config}: field 'output_dir': unsupported storage scheme 'gs://'; "
        "accepted: file://PATH, s3://BUCKET/PREFIX or a local path"
    ]
