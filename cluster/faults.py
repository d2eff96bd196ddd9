"""A flaky object store for the simulated market: one checkpoint upload dies midway, like a dropped connection
or a full disk."""
from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

from train_core.checkpoint import step_key
from train_core.store import ObjectStore


class SimulatedStorageFault(OSError):
    """Raised by FlakyStore when the injected fault fires."""


class FlakyStore:
    """Wraps a real store; the upload of `checkpoints/step-<fail_step>` writes half its files, then fails with
    a lost connection (`connection_lost`) or ENOSPC (`disk_full`)."""

    def __init__(self, inner: ObjectStore, fail_step: int, kind: str = "connection_lost") -> None:
        self.inner = inner
        self.fail_key = step_key(fail_step)
        self.kind = kind
        self.fired = False

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        if self.fired or key_prefix != self.fail_key:
            self.inner.upload_dir(local_dir, key_prefix)
            return
        self.fired = True
        files = sorted(path for path in Path(local_dir).rglob("*") if path.is_file())
        with tempfile.TemporaryDirectory(dir=Path(local_dir).parent) as partial:
            for path in files[: len(files) // 2]:
                target = Path(partial) / path.relative_to(local_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            self.inner.upload_dir(Path(partial), key_prefix)
        if self.kind == "disk_full":
            raise SimulatedStorageFault(errno.ENOSPC, "No space left on device (simulated)",
                                        self.inner.describe(key_prefix))
        raise SimulatedStorageFault(
            f"simulated storage fault: connection lost uploading {self.inner.describe(key_prefix)} "
            f"after {len(files) // 2} of {len(files)} files"
        )

    def download_dir(self, key_prefix: str, local_dir: Path) -> None:
        self.inner.download_dir(key_prefix, local_dir)

    def read_text(self, key: str) -> str | None:
        return self.inner.read_text(key)

    def write_text(self, key: str, text: str) -> None:
        self.inner.write_text(key, text)

    def list_dir(self, key_prefix: str) -> list[str]:
        return self.inner.list_dir(key_prefix)

    def delete_prefix(self, key_prefix: str) -> None:
        self.inner.delete_prefix(key_prefix)

    def describe(self, key: str) -> str:
        return self.inner.describe(key)
