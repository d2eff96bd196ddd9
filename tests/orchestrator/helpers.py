"""Sweep specs for planner tests, and the CLI in a fresh interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TRAIN_DATA = REPO / "examples" / "data" / "copywriting_train.jsonl"


def write_spec(directory: Path, config: dict | None = None, parameters: dict | None = None,
               resources: dict | None = None, name: str = "sweep.yaml") -> Path:
    base = {
        "model": {"name": "qwen2.5-1.5b"},
        "data": {"train": str(TRAIN_DATA), "max_seq_length": 1024},
        "lora": {"r": 16},
        "training": {"batch_size": 8, "epochs": 40, "max_steps": 200},
    }
    for section, values in (config or {}).items():
        base.setdefault(section, {}).update(values)
    spec = {
        "name": "plan-test", "config": base,
        "search": {"method": "grid", "parameters": parameters or {"lora.r": [8, 32]}},
        "resources": {"providers": ["aws", "gcp", "runpod"], "market": "any", **(resources or {})},
    }
    path = directory / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def run_cli(*args: str, check_no_torch: bool = False) -> subprocess.CompletedProcess:
    """`spottune ARGS` in a new interpreter; optionally fail if anything imported torch."""
    code = (
        "import sys\nfrom orchestrator.cli import main\n"
        f"code = main({list(args)!r})\n"
        + ("assert 'torch' not in sys.modules, 'torch was imported'\n" if check_no_torch else "")
        + "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
