"""A checkpoint upload that dies midway never moves `latest`; the half-written step is pruned later."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster.faults import FlakyStore, SimulatedStorageFault
from cluster.storage import StorageURI, open_store
from train_core.checkpoint import REQUIRED_FILES, CheckpointManager


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "file":
        return open_store(StorageURI("file", "", str(tmp_path / "store")))
    server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return open_store(StorageURI("s3", server.bucket, server.prefix("faults")))


def _write(directory: Path) -> None:
    for name in REQUIRED_FILES:
        (directory / name).write_text(name, encoding="utf-8")


def test_failed_upload_keeps_latest_and_is_pruned(store, tmp_path):
    flaky = FlakyStore(store, fail_step=6)
    manager = CheckpointManager(flaky, tmp_path / "staging", keep=2)
    manager.save(3, _write)
    with pytest.raises(SimulatedStorageFault, match="after 2 of 5 files"):
        manager.save(6, _write)
    assert manager.latest_step() == 3
    assert store.list_dir("checkpoints") == ["latest", "step-00000003", "step-00000006"]
    assert len(store.list_dir("checkpoints/step-00000006")) == 2
    retry = CheckpointManager(store, tmp_path / "staging", keep=2)
    retry.prune()
    assert store.list_dir("checkpoints") == ["latest", "step-00000003"]
    retry.save(6, _write)
    assert retry.latest_step() == 6
