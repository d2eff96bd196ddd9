"""Kill -9 a training process mid-run, resume it, and get exactly what an uninterrupted run gets."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train_core.helpers import REPO, run_cli, write_config


def final_state(output_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    latest = (output_dir / "checkpoints" / "latest").read_text().strip()
    step_dir = output_dir / "checkpoints" / f"step-{int(latest):08d}"
    history = json.loads((step_dir / "trainer_state.json").read_text())["loss_history"]
    return history, load_file(str(output_dir / "adapter" / "adapter_model.safetensors"))


def train_and_kill(config: Path, output_dir: Path, kill_at_checkpoint: int) -> int:
    """Start `spottune train`, SIGKILL it as soon as a checkpoint >= kill_at_checkpoint is committed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "train", str(config), "--output-dir", str(output_dir)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ),
    )
    latest = output_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if latest.is_file() and int(latest.read_text().strip() or 0) >= kill_at_checkpoint:
                break
            if process.poll() is not None:
                pytest.fail(f"training ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return int(latest.read_text())


@pytest.mark.parametrize(
    "model, overrides, kill_at",
    [
        ("builtin:tiny-llama", {"training": {"max_steps": 24, "batch_size": 4}, "checkpoint": {"every_steps": 3}}, 9),
        pytest.param(
            "builtin:smollm2-135m-instruct",
            {"data": {"max_seq_length": 96}, "training": {"max_steps": 5, "batch_size": 2},
             "checkpoint": {"every_steps": 2}},
            2,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_killed_and_resumed_equals_uninterrupted(tmp_path, model, overrides, kill_at):
    overrides = {**overrides, "model": {"name": model}}
    overrides["data"] = {**overrides.get("data", {}), "eval": None}
    config = write_config(tmp_path, overrides)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    done = run_cli("train", str(config), "--output-dir", str(straight))
    assert done.returncode == 0, done.stderr[-2000:]
    total = int((straight / "checkpoints" / "latest").read_text())

    killed_at = train_and_kill(config, interrupted, kill_at)
    assert killed_at < total
    resumed = run_cli("train", str(config), "--output-dir", str(interrupted), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {killed_at}" in resumed.stderr

    straight_history, straight_adapter = final_state(straight)
    resumed_history, resumed_adapter = final_state(interrupted)
    assert [entry["step"] for entry in resumed_history] == list(range(1, total + 1))
    assert resumed_history == straight_history
    assert straight_adapter.keys() == resumed_adapter.keys()
    for name, tensor in straight_adapter.items():
        assert torch.equal(tensor, resumed_adapter[name]), name
    metric_steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()
                    if "loss" in json.loads(line)]
    assert metric_steps == list(range(1, total + 1))
