"""Health check: can this machine train? Each check prints PASS or FAIL with what it found."""
from __future__ import annotations

import platform
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


VERSIONED_PACKAGES = (
    "torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "tokenizers", "ray", "pydantic",
)


def installed_versions() -> str:
    """The versions this process runs, read from package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def one(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} not installed"

    return ", ".join(one(name) for name in VERSIONED_PACKAGES)


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    seconds: float


def run_check(name: str, body: Callable[[], str]) -> CheckResult:
    """Run one check; an exception becomes a FAIL naming the error and where it was raised."""
    started = time.perf_counter()
    try:
        detail = body()
        return CheckResult(name, True, detail, time.perf_counter() - started)
    except Exception as error:  # a failed check is reported, never raised
        where = traceback.extract_tb(error.__traceback__)[-1]
        detail = f"{type(error).__name__}: {error} ({Path(where.filename).name}:{where.lineno})"
        return CheckResult(name, False, detail, time.perf_counter() - started)


def run_checks(work_dir: Path | None = None) -> list[CheckResult]:
    from runspec.config import TrainConfig
    from train_core.bitsandbytes_cpu import DESCRIPTIONS, GENERIC
    from train_core.device import bitsandbytes_cpu_trains, choose_device_path
    from train_core.metrics import peak_memory_gib

    results: list[CheckResult] = []
    work = Path(work_dir or tempfile.mkdtemp(prefix="spottune-doctor-"))

    def environment() -> str:
        return f"python {platform.python_version()}, {installed_versions()}, {torch.get_num_threads()} CPU threads"

    def device() -> str:
        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            return f"CUDA: {torch.cuda.device_count()} x {properties.name}, {properties.total_memory / 2**30:.1f} GiB"
        return "no CUDA GPU: the CPU path will be used"

    def quantization() -> str:
        if torch.cuda.is_available():
            import bitsandbytes as bnb

            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
            inputs = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            layer(inputs).float().sum().backward()
            return f"bitsandbytes {bnb.__version__} NF4 forward+backward on CUDA"
        trains, why = bitsandbytes_cpu_trains()
        return f"{why}; {DESCRIPTIONS[GENERIC]}" if trains else f"{why}; CPU training will use fp32 weights"

    def train_step() -> str:
        data = work / "data.jsonl"
        data.write_text(
            '{"instruction": "Name a colour.", "input": "", "output": "Blue."}\n'
            '{"instruction": "Say hello.", "input": "", "output": "Hello!"}\n',
            encoding="utf-8",
        )
        config = TrainConfig.model_validate(
            {
                "model": {"name": "builtin:tiny-llama"},
                "data": {"train": str(data), "max_seq_length": 64},
                "training": {"max_steps": 1, "batch_size": 2},
                "output_dir": str(work / "run"),
            }
        )
        from train_core.trainer import Trainer

        trainer = Trainer(config, log=lambda message: None)
        result = trainer.run()
        loss = result.losses[0]
        if not loss == loss or loss <= 0:
            raise RuntimeError(f"loss is {loss}")
        memory = ", ".join(f"{key} {value}" for key, value in peak_memory_gib(trainer.path.device).items())
        return f"tiny model, 1 LoRA step ({choose_device_path(config).describe()}): loss {loss:.3f}; {memory}"

    def checkpoint() -> str:
        from train_core.checkpoint import CheckpointManager
        from train_core.store import LocalStore

        manager = CheckpointManager(LocalStore(work / "run"), work / "staging")
        step = manager.latest_step()
        if step != 1:
            raise RuntimeError(f"expected a committed checkpoint at step 1, found {step}")
        restored = manager.load(step, work / "restore")
        return f"committed checkpoint step {step} reads back ({len(list(restored.iterdir()))} files)"

    for name, body in (
        ("environment", environment),
        ("device", device),
        ("4-bit weights", quantization),
        ("train step", train_step),
        ("checkpoint", checkpoint),
    ):
        results.append(run_check(name, body))
    return results
