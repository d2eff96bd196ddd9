"""Checkpoints are committed by `latest` only; interrupted saves are never read and are cleaned up."""
import json
from pathlib import Path

import pytest
import torch

from train_core.checkpoint import MANIFEST_FILE, REQUIRED_FILES, CheckpointManager, build_manifest, step_key
from runspec.config import load_config
from runspec.errors import ConfigError
from train_core.store import LocalStore
from train_core.trainer import train


def write_step(directory: Path, step: int) -> None:
    for name in REQUIRED_FILES:
        (directory / name).write_text(f"{name}@{step}")


class FailingUploadStore(LocalStore):
    """A LocalStore whose directory upload dies after copying one file, like a process killed mid-save."""

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        target = self._path(key_prefix)
        target.mkdir(parents=True)
        first = sorted(local_dir.iterdir())[0]
        (target / first.name).write_bytes(first.read_bytes())
        raise OSError("connection reset during upload")


def test_interrupted_save_never_moves_latest_and_is_garbage_collected(tmp_path):
    manager = CheckpointManager(LocalStore(tmp_path / "run"), tmp_path / "staging", keep=2)
    manager.save(2, lambda d: write_step(d, 2))
    broken = CheckpointManager(FailingUploadStore(tmp_path / "run"), tmp_path / "staging", keep=2)
    with pytest.raises(OSError):
        broken.save(4, lambda d: write_step(d, 4))
    assert (tmp_path / "run" / step_key(4)).is_dir()
    assert manager.latest_step() == 2
    restored = manager.load(manager.latest_step(), tmp_path / "restore")
    assert (restored / "trainer_state.json").read_text() == "trainer_state.json@2"
    manager.prune()
    assert not (tmp_path / "run" / step_key(4)).exists()
    assert (tmp_path / "run" / step_key(2)).is_dir()


def test_keeps_only_the_last_k_and_requires_every_file(tmp_path):
    manager = CheckpointManager(LocalStore(tmp_path / "run"), tmp_path / "staging", keep=2)
    for step in (1, 2, 3, 4):
        manager.save(step, lambda d, s=step: write_step(d, s))
    assert manager.store.list_dir("checkpoints") == ["latest", "step-00000003", "step-00000004"]
    with pytest.raises(RuntimeError, match="lacks"):
        manager.save(5, lambda d: (d / "adapter_config.json").write_text("{}"))
    assert manager.latest_step() == 4


def test_resume_refuses_a_checkpoint_of_another_config(config_factory):
    first = load_config(config_factory({"training": {"max_steps": 2}}))
    train(first)
    changed = load_config(config_factory({"training": {"max_steps": 2, "learning_rate": 0.01}}, name="other.yaml"))
    with pytest.raises(ConfigError, match="different config"):
        train(changed, resume=True)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(first)


def test_resume_refuses_per_tensor_optimizer_state_in_one_line_and_keeps_the_checkpoint(config_factory, tmp_path):
    """A checkpoint from before the flat adapter buffer held one optimizer state per adapter tensor."""

    config = load_config(config_factory({"training": {"max_steps": 2}}))
    train(config)
    latest = tmp_path / "run" / step_key(2)
    saved = torch.load(latest / "optimizer.pt", weights_only=True)
    per_tensor = {"state": {}, "param_groups": [{**saved["param_groups"][0], "params": list(range(12))}]}
    torch.save(per_tensor, latest / "optimizer.pt")
    (latest / MANIFEST_FILE).write_text(json.dumps(build_manifest(latest)))
    with pytest.raises(ConfigError, match=r"optimizer state for 12 separate tensors.*resume it with that version") as caught:
        train(config, resume=True)
    assert "\n" not in str(caught.value)
    assert torch.load(latest / "optimizer.pt", weights_only=True) == per_tensor, "the checkpoint is left as it was"
