"""Helpers for sweep tests: tiny-model sweep specs, the CLI in a subprocess, reference runs, process checks."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cluster.processes import ProcessRecord, session_members
from orchestrator.run.state import StateStore

REPO = Path(__file__).resolve().parents[2]
TRAIN_DATA = REPO / "examples" / "data" / "copywriting_train.jsonl"
EVAL_DATA = REPO / "examples" / "data" / "copywriting_eval.jsonl"


def tiny_sweep(directory: Path, name: str, max_steps: int = 10, **sections) -> Path:
    """A sweep of builtin:tiny-llama trials over learning rates; keyword arguments replace top-level sections."""
    spec = {
        "name": name,
        "config": {
            "model": {"name": "builtin:tiny-llama", "quantization": "fp32"},
            "data": {"train": str(TRAIN_DATA), "eval": str(EVAL_DATA), "max_seq_length": 128},
            "lora": {"r": 8, "alpha": 16},
            "training": {"max_steps": max_steps, "batch_size": 4, "learning_rate": 1.0e-3, "seed": 3},
        },
        "search": {"parameters": {"training.learning_rate": [1.0e-3, 2.0e-3]}},
        "checkpoint": {"every_steps": 3, "keep": 2},
        "storage": f"file://{directory / 'store'}",
        "max_parallel": 2,
        **sections,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def warm_model_cache() -> None:
    """Build builtin:tiny-llama once here, so parallel trials do not all build it at start."""
    from train_core.models.sources import resolve_model

    resolve_model("builtin:tiny-llama")


def spottune(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `spottune ARGS` in a fresh interpreter from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def only_run(state_dir: Path) -> str:
    runs = StateStore(state_dir).runs()
    assert len(runs) == 1, [run.id for run in runs]
    return runs[0].id


def submit_detached(spec: Path, state_dir: Path) -> tuple[str, StateStore]:
    """`spottune submit --detach` of a sweep (model cache warmed first): its run id and the state store."""
    warm_model_cache()
    submitted = spottune("submit", str(spec), "--detach", "--state-dir", str(state_dir))
    assert submitted.returncode == 0, submitted.stderr
    run_id = only_run(state_dir)
    return run_id, StateStore(state_dir)


def reference_adapter(config: dict, directory: Path) -> dict:
    """Train the same config in this process, single-threaded like a Ray worker, and return its adapter tensors."""
    import torch
    from safetensors.torch import load_file

    from runspec.config import TrainConfig
    from train_core.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trial = TrainConfig.model_validate({**config, "output_dir": str(directory)})
        Trainer(trial, log=lambda message: None).run()
    finally:
        torch.set_num_threads(threads)
    return load_file(str(directory / "adapter" / "adapter_model.safetensors"))


def adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def assert_bit_identical(got: dict, expected: dict) -> None:
    import torch

    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), f"{key} differs"


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def node_processes(run_dir: Path) -> list[int]:
    """Processes of the run's local nodes: the node entry points, their Ray and its workers all carry their node's
    directory (under the run's) in their environment."""
    marker = f"SPOTTUNE_NODE_DIR={run_dir.resolve()}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def leftover_processes(controller: ProcessRecord, run_dir: Path) -> list[int]:
    """Processes still alive from a controller's session and from the run's nodes."""
    alive = [controller.pid] if controller.alive() else []
    return alive + [process.pid for process in session_members(controller)] + node_processes(run_dir)


def controller_record(state_dir: Path, run_id: str) -> ProcessRecord:
    """The controller of a run as it recorded itself (PID, start time and command line)."""
    return ProcessRecord.parse((state_dir / run_id / "controller.json").read_text(encoding="utf-8"))
