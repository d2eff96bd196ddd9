"""Checkpoints: atomic, PEFT-format, committed by `latest`; the last K kept.

Layout under the run's store:
    checkpoints/step-00000040/{adapter_config.json, adapter_model.safetensors,
                               optimizer.pt, scheduler.pt, trainer_state.json}
    checkpoints/latest          -> "40", written only after every file of step-00000040 is stored.
A reader trusts only `latest`; step directories above it are half-written and are deleted.
"""
from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from train_core.store import ObjectStore

CHECKPOINTS = "checkpoints"
LATEST_KEY = f"{CHECKPOINTS}/latest"
STATE_FILE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", STATE_FILE)


def step_key(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step:08d}"


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int
    epoch: int
    cursor: int
    tokens_seen: int
    config_fingerprint: str
    world_size: int
    rng: list[dict] = field(default_factory=list)
    loss_history: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainerState":
        return cls(**json.loads(text))


class CheckpointManager:
    """Writes and finds committed checkpoints of one run in an ObjectStore."""

    def __init__(self, store: ObjectStore, staging_root: Path, keep: int = 2) -> None:
        self.store = store
        self.staging_root = Path(staging_root)
        self.keep = keep

    def latest_step(self) -> int | None:
        text = self.store.read_text(LATEST_KEY)
        if text is None:
            return None
        return int(text.strip())

    def save(self, step: int, write_files: Callable[[Path], None]) -> None:
        """Stage files locally, upload them, then commit `latest`; prune old and half-written steps."""
        self.staging_root.mkdir(parents=True, exist_ok=True)
        staging = self.staging_root / f"save-{step:08d}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            write_files(staging)
            missing = [name for name in REQUIRED_FILES if not (staging / name).is_file()]
            if missing:
                raise RuntimeError(f"checkpoint for step {step} lacks {missing}")
            self.store.upload_dir(staging, step_key(step))
            self.store.write_text(LATEST_KEY, f"{step}\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.prune()

    def load(self, step: int, into: Path) -> Path:
        """Download committed step `step` into a fresh local directory and return it."""
        target = Path(into) / f"step-{step:08d}"
        if target.exists():
            shutil.rmtree(target)
        self.store.download_dir(step_key(step), target)
        return target

    def prune(self) -> None:
        """Keep the newest `keep` committed steps; delete older ones and anything not committed."""
        latest = self.latest_step()
        committed: list[int] = []
        for name in self.store.list_dir(CHECKPOINTS):
            if name == "latest":
                continue
            match = STEP_DIR.match(name)
            if match is None or latest is None or int(match.group(1)) > latest:
                self.store.delete_prefix(f"{CHECKPOINTS}/{name}")
            else:
                committed.append(int(match.group(1)))
        for old in sorted(committed)[: -self.keep]:
            self.store.delete_prefix(step_key(old))
