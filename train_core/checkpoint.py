"""Checkpoints: atomic, PEFT-format, committed by `latest`; the last K kept.

Layout under the run's store:
    checkpoints/step-00000040/{adapter_config.json, adapter_model.safetensors,
                               optimizer.pt, scheduler.pt, trainer_state.json, manifest.json}
    checkpoints/latest          -> "40", written only after every file of step-00000040 is stored.
A step's files are uploaded first, then its manifest (size and sha256 of every file), then `latest`.
A reader starts from `latest` and verifies the step against its manifest; a step that does not verify
(truncated, garbled) is skipped for the newest older one that does, and a `latest` that is not a step
number is ignored the same way. Step directories above `latest` are half-written and are deleted.
"""
from __future__ import annotations

import hashlib
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
MANIFEST_FILE = "manifest.json"
HASH_CHUNK = 1 << 20


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


def parse_step(text: str | None) -> int | None:
    """The step number that `latest` holds, or None when it is absent or not a step number."""
    value = (text or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 12 else None


def read_latest(store: ObjectStore) -> str | None:
    """The text of `latest` (None when absent); bytes that are not UTF-8 come back as a placeholder."""
    try:
        return store.read_text(LATEST_KEY)
    except UnicodeDecodeError:
        return "<bytes that are not UTF-8>"


def newest_committed_step(store: ObjectStore) -> int:
    """The step a resume would start from as far as names tell (0 for none), without reading the files."""
    text = read_latest(store)
    latest = parse_step(text)
    if latest is not None or text is None:
        return latest or 0
    return max(_manifested_steps(store), default=0)


def _step_dirs(store: ObjectStore) -> list[int]:
    return [int(match.group(1)) for match in map(STEP_DIR.match, store.list_dir(CHECKPOINTS)) if match]


def _manifested_steps(store: ObjectStore) -> list[int]:
    return [step for step in _step_dirs(store) if MANIFEST_FILE in store.list_dir(step_key(step))]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(directory: Path) -> dict:
    """{"files": {name: {"size", "sha256"}}} of every file of a staged step."""
    files = sorted(path for path in directory.rglob("*") if path.is_file() and path.name != MANIFEST_FILE)
    return {"files": {path.relative_to(directory).as_posix(): {"size": path.stat().st_size,
                                                                "sha256": file_digest(path)} for path in files}}


def verify_step(directory: Path) -> str | None:
    """Why a downloaded step cannot be trusted, or None when every file matches its manifest."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        return f"no manifest and missing {missing}" if missing else None  # written before manifests existed
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "its manifest is unreadable"
    for name in REQUIRED_FILES:
        if name not in files:
            return f"its manifest lacks {name}"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected.get('size')}"
        if file_digest(path) != expected.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None


@dataclass
class Restored:
    """The newest intact checkpoint, downloaded, and what was skipped to reach it (one line each)."""

    step: int
    path: Path
    skipped: list[str] = field(default_factory=list)


class CheckpointManager:
    """Writes and finds committed checkpoints of one run in an ObjectStore."""

    def __init__(self, store: ObjectStore, staging_root: Path, keep: int = 2) -> None:
        self.store = store
        self.staging_root = Path(staging_root)
        self.keep = keep
        self.restored_step: int | None = None  # kept by prune until a newer step is committed

    def latest_step(self) -> int | None:
        """The step `latest` names; None when there is none or it holds no step number."""
        return parse_step(read_latest(self.store))

    def newest_step(self) -> int | None:
        """The newest step that looks committed, also when `latest` is garbage; None for none."""
        return newest_committed_step(self.store) or None

    def restore(self, into: Path) -> Restored | None:
        """Download the newest step that verifies against its manifest; None when there is none."""
        text = read_latest(self.store)
        latest = parse_step(text)
        skipped: list[str] = []
        if text is not None and latest is None:
            skipped.append(f"`latest` holds {text.strip()[:40]!r}, not a step number")
        candidates = sorted((step for step in _step_dirs(self.store) if latest is None or step <= latest),
                            reverse=True)
        if latest is not None and latest not in candidates:
            skipped.append(f"step {latest}: its directory is missing")
        for step in candidates:
            local = self.load(step, into)
            problem = verify_step(local)
            if problem is None:
                problem = _state_problem(local)
            if problem is None:
                self.restored_step = step
                return Restored(step, local, skipped)
            skipped.append(f"step {step}: {problem}")
            shutil.rmtree(local, ignore_errors=True)
        if candidates:
            raise RuntimeError(f"no intact checkpoint in {self.store.describe(CHECKPOINTS)}: {'; '.join(skipped)}")
        return None

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
            manifest = json.dumps(build_manifest(staging), indent=1)
            self.store.upload_dir(staging, step_key(step))
            self.store.write_text(f"{step_key(step)}/{MANIFEST_FILE}", manifest)
            self.store.write_text(LATEST_KEY, f"{step}\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.restored_step = None
        self.prune()

    def load(self, step: int, into: Path) -> Path:
        """Download committed step `step` into a fresh local directory and return it."""
        target = Path(into) / f"step-{step:08d}"
        if target.exists():
            shutil.rmtree(target)
        self.store.download_dir(step_key(step), target)
        return target

    def prune(self) -> None:
        """Keep the newest `keep` committed steps (and the one resumed from); delete older ones and anything
        not committed. With a garbled `latest` nothing is deleted: what is committed is not known."""
        text = read_latest(self.store)
        latest = parse_step(text)
        if text is not None and latest is None:
            return
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
            if old != self.restored_step:
                self.store.delete_prefix(step_key(old))


def _state_problem(directory: Path) -> str | None:
    try:
        TrainerState.from_json((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        return f"{STATE_FILE} is unreadable ({type(error).__name__})"
    return None
