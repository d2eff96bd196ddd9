"""A damaged newest checkpoint (truncated, garbled, or a garbage `latest`) is skipped for the newest intact one,
with a line saying what was skipped, and the resumed run ends exactly where an uninterrupted one does."""
from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from train_core.checkpoint import LATEST_KEY, MANIFEST_FILE, CheckpointManager, newest_committed_step, step_key
from runspec.config import load_config
from train_core.store import LocalStore
from train_core.trainer import Trainer, TrainHooks

STEPS, EVERY = 6, 2
SETTINGS = {"model": {"name": "builtin:tiny-llama", "quantization": "fp32"},
            "training": {"max_steps": STEPS, "log_every": 1}, "checkpoint": {"every_steps": EVERY, "keep": 2}}


def _adapter(output_dir):
    return load_file(str(output_dir / "adapter" / "adapter_model.safetensors"))


def _train_until(config, stop_after: int) -> None:
    """Train and stop (checkpointed) once step `stop_after` is done."""
    steps = []
    hooks = TrainHooks(on_metrics=lambda record: steps.append(record.get("step", 0)),
                       stop_requested=lambda: bool(steps) and max(steps) >= stop_after)
    result = Trainer(config, hooks=hooks, log=lambda line: None).run()
    assert (result.status, result.step) == ("stopped", stop_after)


def _resume(config) -> tuple[list, list[str]]:
    skipped, lines = [], []
    hooks = TrainHooks(on_checkpoint_skipped=lambda step, what: skipped.append((step, what)))
    Trainer(config, hooks=hooks, log=lines.append).run(resume=True)
    return skipped, lines


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from tests.train_core.helpers import write_config

    directory = tmp_path_factory.mktemp("reference")
    config = load_config(write_config(directory, SETTINGS))
    Trainer(config, log=lambda line: None).run()
    return _adapter(directory / "run")


def _interrupted(config_factory):
    config = load_config(config_factory(SETTINGS))
    _train_until(config, 4)
    return config, Path(config.output_dir)


def _assert_equal(got: dict, expected: dict) -> None:
    import torch

    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_intact_one(config_factory, reference, damage):
    config, output = _interrupted(config_factory)
    adapter = output / step_key(4) / "adapter_model.safetensors"
    data = adapter.read_bytes()
    adapter.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:100] + b"\xff" * 64 + data[164:])
    skipped, lines = _resume(config)
    assert len(skipped) == 1 and skipped[0][0] == 2
    assert "step 4: adapter_model.safetensors" in skipped[0][1][0]
    assert any("skipped damaged checkpoints" in line and "resuming from step 2" in line for line in lines)
    _assert_equal(_adapter(output), reference)


def test_garbage_in_latest_resumes_from_the_newest_intact_step(config_factory, reference):
    config, output = _interrupted(config_factory)
    (output / LATEST_KEY).write_bytes(b"\x00garbage\xff\n")
    store = LocalStore(output)
    assert newest_committed_step(store) == 4
    manager = CheckpointManager(store, output / "staging", keep=1)
    manager.prune()
    assert sorted(store.list_dir("checkpoints")) == ["latest", "step-00000002", "step-00000004"], "pruned blind"
    skipped, _ = _resume(config)
    assert skipped == [(4, ["`latest` holds '<bytes that are not UTF-8>', not a step number"])]
    _assert_equal(_adapter(output), reference)


def test_manifest_is_committed_before_latest_and_fallback_survives_pruning(tmp_path):
    store = LocalStore(tmp_path / "run")
    manager = CheckpointManager(store, tmp_path / "staging", keep=1)

    def write(directory, step):
        for name in ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt"):
            (directory / name).write_text(f"{name}@{step}")
        (directory / "trainer_state.json").write_text(
            '{"step": %d, "epoch": 0, "cursor": 0, "tokens_seen": 0, "config_fingerprint": "x", "world_size": 1}' % step)

    manager.save(2, lambda d: write(d, 2))
    assert MANIFEST_FILE in store.list_dir(step_key(2))
    manager.save(4, lambda d: write(d, 4))
    manager.keep = 2
    manager.save(6, lambda d: write(d, 6))
    (tmp_path / "run" / step_key(6) / "optimizer.pt").write_text("optimizer.pt@7")
    restored = manager.restore(tmp_path / "restore")
    assert restored.step == 4 and restored.skipped == ["step 6: optimizer.pt does not match its sha256 in the manifest"]
    manager.keep = 1
    manager.prune()
    assert store.list_dir("checkpoints") == ["latest", "step-00000004", "step-00000006"]
    (tmp_path / "run" / step_key(4) / "scheduler.pt").unlink()
    with pytest.raises(RuntimeError, match="no intact checkpoint.*step 4: scheduler.pt is missing"):
        CheckpointManager(store, tmp_path / "staging").restore(tmp_path / "restore2")
