"""Helpers for train_core tests: small configs and running the CLI in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TRAIN_DATA = REPO / "examples" / "data" / "copywriting_train.jsonl"
EVAL_DATA = REPO / "examples" / "data" / "copywriting_eval.jsonl"


def write_config(directory: Path, overrides: dict | None = None, name: str = "train.yaml") -> Path:
    """A small tiny-model train config in `directory`, with nested overrides merged in."""
    config = {
        "model": {"name": "builtin:tiny-llama"},
        "data": {"train": str(TRAIN_DATA), "eval": str(EVAL_DATA), "max_seq_length": 128},
        "lora": {"r": 8, "alpha": 16},
        "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-3, "seed": 3},
        "checkpoint": {"every_steps": 2, "keep": 2},
        "output_dir": str(directory / "run"),
    }
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path = directory / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `spottune ARGS` in a fresh interpreter and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

