"""Shared test settings: offline, caches inside the checkout, and helpers to write train configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPOTTUNE_CACHE", str(REPO / ".cache" / "spottune"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib"))

# Property tests draw the same examples on every run, so a clean clone's result does not depend on luck;
# HYPOTHESIS_PROFILE=explore draws new ones (run it while working on input handling).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    _files_with_slow_tests_first(items)
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _files_with_slow_tests_first(items) -> None:
    """xdist hands out whole files in collection order (scripts/test: --dist loadfile --no-loadscope-reorder): the
    long end-to-end files start first and the many short ones fill in around them, so no worker ends alone on one."""
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture
def repo() -> Path:
    return REPO


from tests.s3_server import s3_server  # noqa: E402,F401  (session fixture: a real S3 server on 127.0.0.1)
from tests.aws_server import ec2, moto  # noqa: E402,F401  (moto EC2+S3 per module, a fault proxy per test)
