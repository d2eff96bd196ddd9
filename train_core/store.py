"""The storage interface train_core writes through, and its local-directory implementation.

Keys are '/'-separated paths relative to the store's root (one training run or trial).
cluster/storage.py implements the same interface for file:// and s3:// URIs; train_core never
imports it, the caller passes a store in.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol


class ObjectStore(Protocol):
    """What train_core needs from storage. Implementations must make write_text atomic."""

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        """Copy every file under local_dir to key_prefix/<relative path>."""

    def download_dir(self, key_prefix: str, local_dir: Path) -> None:
        """Copy every object under key_prefix into local_dir (created if needed)."""

    def read_text(self, key: str) -> str | None:
        """The object's text, or None when it does not exist."""

    def write_text(self, key: str, text: str) -> None:
        """Create or replace one small object atomically (readers see the old or the new text)."""

    def list_dir(self, key_prefix: str) -> list[str]:
        """Names of the immediate children (objects and sub-prefixes) of key_prefix."""

    def delete_prefix(self, key_prefix: str) -> None:
        """Delete every object under key_prefix; no error when there is none."""

    def describe(self, key: str) -> str:
        """A human-readable location (path or URI) of key, for messages."""


class LocalStore:
    """An ObjectStore over a local directory; directory uploads land under a temporary name then are renamed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def upload_dir(self, local_dir: Path, key_prefix: str) -> None:
        target = self._path(key_prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
        shutil.copytree(local_dir, staging)
        _fsync_tree(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        _fsync_dir(target.parent)

    def download_dir(self, key_prefix: str, local_dir: Path) -> None:
        shutil.copytree(self._path(key_prefix), local_dir, dirs_exist_ok=True)

    def read_text(self, key: str) -> str | None:
        path = self._path(key)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def write_text(self, key: str, text: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_dir(path.parent)

    def list_dir(self, key_prefix: str) -> list[str]:
        path = self._path(key_prefix)
        return sorted(child.name for child in path.iterdir()) if path.is_dir() else []

    def delete_prefix(self, key_prefix: str) -> None:
        path = self._path(key_prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()

    def describe(self, key: str) -> str:
        return str(self._path(key))


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
