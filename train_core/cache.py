"""Where spottune keeps converted models and built-in tiny models."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$SPOTTUNE_CACHE, else $XDG_CACHE_HOME/spottune, else ~/.cache/spottune."""
    explicit = os.environ.get("SPOTTUNE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spottune"
