"""Merged weights kept between optimizer steps give the training a fresh dequantization every use gives."""
from __future__ import annotations

import pytest
import torch

from tests.fast.helpers import packed_batch, randomize_adapters, tiny_path
from train_core.fast.engine import FastEngine
from train_core.fast.loading import AdapterSpec

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("SPOTTUNE_KERNELS", "reference")


def engine(checkpointing: str, kept: bool) -> FastEngine:
    built = FastEngine(tiny_path("tiny-llama"), AdapterSpec.from_target_modules(8, 16, ["q_proj", "v_proj", "down_proj"],
                       seed=3), CPU, checkpointing, dtype=torch.float32, merged_weights=kept)
    randomize_adapters(built.model, torch.Generator().manual_seed(4))
    return built


def train(engine: FastEngine, steps: int, say_changed: bool = True) -> list[float]:
    """Losses of `steps` AdamW steps of two micro-batches each (the eval loss after each step in between)."""
    optimizer = torch.optim.AdamW(engine.trainable_parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(steps):
        for _ in range(2):
            ids, positions, labels = packed_batch([12, 20], engine.model.spec.vocab, generator)
            loss = engine.loss_sum(ids, positions, labels)
            loss.backward()
            losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
        if say_changed:
            engine.parameters_changed()
        engine.eval()
        with torch.no_grad():
            losses.append(engine.loss_sum(ids, positions, labels).item())
        engine.train()
    return losses


@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_kept_merged_weights_train_exactly_as_fresh_ones(checkpointing):
    fresh, kept = engine(checkpointing, kept=False), engine(checkpointing, kept=True)
    assert train(kept, 3) == train(fresh, 3)
    for key, value in fresh.adapter_state_dict().items():
        assert torch.equal(kept.adapter_state_dict()[key], value)
    assert kept.merged.refreshes == 3 and "merged weights kept between optimizer steps" in kept.description
    assert kept.run_summary() == "merged weights refreshed 3 times" and fresh.run_summary() is None


def test_weights_not_refreshed_after_a_step_train_differently():
    """What the Trainer's parameters_changed call prevents: the second step's micro-batches on the first's weights.
    The eval losses, which dequantize afresh, still see the updated adapters."""
    fresh = train(engine("none", kept=False), 2)
    stale = train(engine("none", kept=True), 2, say_changed=False)
    assert stale[:3] == fresh[:3] and stale[3:5] != fresh[3:5]


def test_loading_an_adapter_state_refreshes_the_kept_weights():
    kept, other = engine("none", kept=True), engine("none", kept=False)
    ids, positions, labels = packed_batch([12, 20], kept.model.spec.vocab, torch.Generator().manual_seed(6))
    before = kept.loss_sum(ids, positions, labels).item()
    randomize_adapters(other.model, torch.Generator().manual_seed(7))
    kept.load_adapter_state({k.replace(".lora_A.", ".lora_A.default."): v for k, v in other.adapter_state_dict().items()})
    after = kept.loss_sum(ids, positions, labels).item()
    assert after != before and after == other.loss_sum(ids, positions, labels).item()
