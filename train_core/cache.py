"""Where spottune keeps converted models and built-in tiny models."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_root() -> Path:
    """$SPOTTUNE_CACHE, else $XDG_CACHE_HOME/spottune, else ~/.cache/spottune."""
    explicit = os.environ.get("SPOTTUNE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spottune"


def publish_directory(staging: Path, target: Path) -> None:
    """Move a fully written staging directory into place; if another process won the race, keep theirs."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)
