"""The fast engine on CUDA: it loads onto the GPU the process chose, and its memory lands in expandable segments."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.fast.helpers import packed_batch, tiny_path
from train_core.cuda_setup import ALLOCATOR_VARIABLES
from train_core.fast.engine import FastEngine
from train_core.fast.loading import AdapterSpec

pytestmark = pytest.mark.cuda

SEGMENTS_PROBE = """
import torch
from tests.fast.helpers import packed_batch, tiny_path
from train_core.fast.engine import FastEngine
from train_core.fast.loading import AdapterSpec
engine = FastEngine(tiny_path("tiny-llama"), AdapterSpec.from_target_modules(8, 16, "all-linear", seed=0), torch.device("cuda"))
ids, positions, labels = packed_batch([200, 100], engine.model.spec.vocab, torch.Generator().manual_seed(0))
engine.loss_sum(ids, positions, labels).backward()
print("expandable" if all(s["is_expandable"] for s in torch.cuda.memory_snapshot()) else "fixed")
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_engine_loads_onto_the_current_gpu():
    torch.cuda.set_device(1)
    try:
        engine = FastEngine(tiny_path("tiny-llama"), AdapterSpec.from_target_modules(8, 16, "all-linear", seed=0), torch.device("cuda"))
        ids, positions, labels = packed_batch([200, 100], engine.model.spec.vocab, torch.Generator().manual_seed(0))
        loss = engine.loss_sum(ids, positions, labels)
        loss.backward()
    finally:
        torch.cuda.set_device(0)
    second = torch.device("cuda", 1)
    assert engine.device == second
    assert engine.model.embed.device == engine.model.head.device == second
    assert {layer.groups[name].bases[0].packed.device for layer in engine.model.layers for name in layer.groups} == {second}
    assert {p.device for p in engine.trainable_parameters()} == {second}
    assert loss.device == second and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.device == second for p in engine.trainable_parameters())


def probe_segments(allocator: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    if allocator is not None:
        env[ALLOCATOR_VARIABLES[0]] = allocator
    result = subprocess.run([sys.executable, "-c", SEGMENTS_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()[-1]


def test_engine_reserves_expandable_segments_unless_the_user_configured_the_allocator():
    assert probe_segments(None) == "expandable"
    assert probe_segments("expandable_segments:False") == "fixed"
