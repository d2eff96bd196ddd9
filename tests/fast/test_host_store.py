"""HostStore on CPU (unpinned): chunked round trips, exact accounting, the budget, reuse across lengths."""
from __future__ import annotations

import pytest
import torch

from train_core.fast.host_store import HostStore, available_host_bytes, default_host_budget

CHUNK = 256


def round_trip(store: HostStore, key: int, x: torch.Tensor) -> torch.Tensor:
    for piece, host in store.pieces(key, x.reshape(-1)):
        host.copy_(piece)
    back = torch.empty_like(x)
    for piece, host in store.pieces(key, back.view(-1)):
        piece.copy_(host)
    return back


@pytest.mark.parametrize("numel", [1, 127, 128, 129, 1000])
def test_round_trip_is_exact_and_wastes_less_than_a_chunk(numel):
    store = HostStore(budget_bytes=10**6, pin=False, chunk_bytes=CHUNK)
    x = torch.randn(numel, dtype=torch.float64).to(torch.bfloat16).reshape(numel, 1)
    assert store.reserve(3, x.nbytes)
    assert torch.equal(round_trip(store, 3, x), x)
    assert x.nbytes <= store.held_bytes < x.nbytes + CHUNK


def test_budget_refuses_a_key_and_allocates_nothing_for_it():
    store = HostStore(budget_bytes=5 * CHUNK, pin=False, chunk_bytes=CHUNK)
    assert store.reserve(0, 2 * CHUNK)
    assert store.reserve(1, 2 * CHUNK + 1)  # 3 chunks: the budget is now full
    assert not store.reserve(2, 1)
    assert store.held_bytes == 5 * CHUNK
    assert store.chunks[2] == []


def test_chunks_are_reused_and_grown_across_lengths():
    store = HostStore(budget_bytes=100 * CHUNK, pin=False, chunk_bytes=CHUNK)
    assert store.reserve(0, 4 * CHUNK)
    first = [chunk.data_ptr() for chunk in store.chunks[0]]
    assert store.reserve(0, 2 * CHUNK)  # shorter: nothing new
    assert store.reserve(0, 6 * CHUNK)  # longer: two more chunks, the first four kept
    assert [chunk.data_ptr() for chunk in store.chunks[0][:4]] == first
    assert store.held_bytes == 6 * CHUNK
    x = torch.arange(6 * CHUNK // 4, dtype=torch.float32)
    assert torch.equal(round_trip(store, 0, x), x)


def test_chunk_size_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        HostStore(budget_bytes=0, pin=False, chunk_bytes=3 * 2**20)


def test_default_budget_is_part_of_the_available_host_memory():
    assert 0 < default_host_budget() < available_host_bytes()


class HostOffloader:
    """ActivationOffloader's protocol on CPU, without streams: what LayerCheckpoint sees of it."""

    def __init__(self, store: HostStore) -> None:
        self.store = store
        self.kept: set[int] = set()
        self.meta: dict[int, tuple[torch.Size, torch.dtype]] = {}

    def put(self, index: int, x: torch.Tensor) -> bool:
        if not self.store.reserve(index, x.nbytes):
            self.kept.add(index)
            return False
        for piece, host in self.store.pieces(index, x.reshape(-1)):
            host.copy_(piece)
        self.meta[index] = (x.shape, x.dtype)
        return True

    def prefetch(self, index: int) -> None:
        pass

    def take(self, index: int) -> torch.Tensor:
        shape, dtype = self.meta.pop(index)
        x = torch.empty(shape, dtype=dtype)
        for piece, host in self.store.pieces(index, x.view(-1)):
            piece.copy_(host)
        return x


@pytest.mark.parametrize("budget,kept", [(0, {0}), (2**20, set())])
def test_layer_checkpoint_keeps_refused_inputs_and_restores_stored_ones(monkeypatch, budget, kept):
    from tests.fast.helpers import packed_batch, randomize_adapters, tiny_path
    from train_core.fast.batch import PackedBatch
    from train_core.fast.loading import AdapterSpec, load_fast_model
    from train_core.fast.recompute import Recompute

    monkeypatch.setenv("SPOTTUNE_KERNELS", "reference")
    cpu = torch.device("cpu")
    model = load_fast_model(tiny_path("tiny-llama"), AdapterSpec.from_target_modules(8, 16, "all-linear", seed=1), cpu, torch.float32)
    generator = torch.Generator().manual_seed(2)
    randomize_adapters(model, generator)
    batch = PackedBatch.build(*packed_batch([5, 9, 3, 7], model.spec.vocab, generator), cpu)

    def loss_and_grads(recompute: Recompute) -> list[torch.Tensor]:
        for parameter in model.parameters():
            parameter.grad = None
        loss = model.loss_sum(batch, recompute, ce_chunk_rows=7)
        loss.backward()
        return [loss.detach(), *(p.grad.clone() for p in model.parameters())]

    expected = loss_and_grads(Recompute("full", cpu))
    through_host = Recompute("full", cpu)
    through_host.offloader = HostOffloader(HostStore(budget, pin=False, chunk_bytes=CHUNK))
    got = loss_and_grads(through_host)
    assert through_host.offloader.kept == kept and not through_host.offloader.meta
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
