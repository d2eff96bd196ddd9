"""The fast engine on CUDA: Triton path against its reference path and against transformers + PEFT in bf16."""
from __future__ import annotations

import pytest
import torch

from tests.fast.helpers import (
    fast_loss_and_grads, hf_loss_and_grads, hf_twin, packed_batch, randomize_adapters, relative_error, tiny_path,
)
from train_core.fast.attention import varlen_backend
from train_core.fast.batch import PackedBatch
from train_core.fast.host_store import HostStore
from train_core.fast.loading import AdapterSpec, load_fast_model
from train_core.fast.recompute import ActivationOffloader, Recompute

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def run(model, batch_tensors, mode: str, recompute: Recompute | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return fast_loss_and_grads(model, batch_tensors, recompute or Recompute(mode, CUDA), CUDA)


@pytest.fixture(params=["tiny-qwen2", "tiny-llama", "tiny-qwen3", "tiny-llama3.2", "tiny-phi3", "tiny-gemma2", "tiny-gemma3"])
def setup(request):
    path = tiny_path(request.param)
    model = load_fast_model(path, AdapterSpec.from_target_modules(16, 16, "all-linear", seed=1), CUDA)
    generator = torch.Generator().manual_seed(2)
    randomize_adapters(model, generator)
    return path, model, packed_batch([300, 77, 512, 135], model.spec.vocab, generator)


def test_varlen_attention_backend_is_found():
    assert varlen_backend(CUDA) is not None


def test_equal_length_samples_attend_batched_with_the_varlen_results():
    from train_core.fast.attention import attention

    generator = torch.Generator(device=CUDA).manual_seed(0)
    lengths = [512] * 3

    def leaves() -> list[torch.Tensor]:
        return [torch.randn(1536, heads, 128, device=CUDA, dtype=torch.bfloat16, generator=generator).requires_grad_()
                for heads in (12, 2, 2)]

    batched = leaves()
    varlen = [t.detach().clone().requires_grad_() for t in batched]
    weights = torch.randn(1536, 12, 128, device=CUDA, generator=generator)
    batch = PackedBatch.build(*packed_batch(lengths, 100, torch.Generator().manual_seed(1))[:2], None, CUDA)
    out = attention(*batched, batch)
    expected = varlen_backend(CUDA)(*varlen, batch.cu_seqlens, 512)
    (out.float() * weights).sum().backward()
    (expected.float() * weights).sum().backward()
    assert relative_error(out, expected) < 1e-2
    assert max(relative_error(a.grad, b.grad) for a, b in zip(batched, varlen)) < 2e-2


def test_varlen_attention_backend_is_found_from_a_forward_without_grad():
    """A checkpointed layer's first forward runs without grad; the probe's backward must still run (it failed
    there once, and every checkpointed run fell back to attention per sample)."""
    varlen_backend.cache_clear()
    with torch.no_grad():
        assert varlen_backend(CUDA) is not None


def test_triton_path_matches_reference_path(setup, monkeypatch):
    _, model, batch = setup
    monkeypatch.setenv("SPOTTUNE_KERNELS", "reference")
    loss_ref, grads_ref = run(model, batch, "none")
    monkeypatch.setenv("SPOTTUNE_KERNELS", "auto")
    loss, grads = run(model, batch, "none")
    assert relative_error(loss, loss_ref) < 2e-3
    assert max(relative_error(g, r) for g, r in zip(grads, grads_ref)) < 3e-2


def test_checkpointing_modes_agree(setup):
    _, model, batch = setup
    loss_none, grads_none = run(model, batch, "none")
    loss_full, grads_full = run(model, batch, "full")
    loss_offload, grads_offload = run(model, batch, "offload")
    assert torch.equal(loss_full, loss_offload)
    # the attention backward accumulates with atomics, so gradients agree to rounding, not bitwise
    assert max(relative_error(a, b) for a, b in zip(grads_full, grads_offload)) < 5e-3
    assert relative_error(loss_full, loss_none) < 1e-3
    assert max(relative_error(a, b) for a, b in zip(grads_full, grads_none)) < 2e-2
    no_room = Recompute("offload", CUDA, host_budget_bytes=0)  # every input stays on the GPU, as in full
    loss_kept, grads_kept = run(model, batch, "offload", no_room)
    assert no_room.offloader.kept == {0}
    assert torch.equal(loss_full, loss_kept)
    assert max(relative_error(a, b) for a, b in zip(grads_full, grads_kept)) < 5e-3


def test_offloader_round_trips_in_chunks_and_refuses_what_passes_the_budget():
    chunk = 4096
    offloader = ActivationOffloader(CUDA, HostStore(budget_bytes=5 * chunk, pin=True, chunk_bytes=chunk))
    generator = torch.Generator(device=CUDA).manual_seed(0)
    inputs = [torch.randn(rows, 2, device=CUDA, generator=generator).to(torch.bfloat16) for rows in (3000, 2500, 1000)]
    expected = [x.clone() for x in inputs]
    placed = [offloader.put(index, x) for index, x in enumerate(inputs)]  # 3 chunks, 3 more (refused), 1
    assert placed == [True, False, True]
    assert offloader.kept == {1}
    assert offloader.store.held_bytes == 4 * chunk
    del inputs
    scribble = torch.full((4 * 3000 * 2,), float("nan"), device=CUDA)  # reuse the freed device memory
    assert torch.equal(offloader.take(2), expected[2])
    offloader.prefetch(0)
    assert torch.equal(offloader.take(0), expected[0])
    assert not offloader.meta and not offloader.ready
    del scribble


@pytest.mark.parametrize("lengths", ["packed", "equal"])
def test_matches_transformers_peft_in_bf16(setup, lengths):
    """Packed samples of different lengths (varlen attention) and of one length (batched SDPA)."""
    path, model, batch = setup
    if lengths == "equal":
        batch = packed_batch([256] * 3, model.spec.vocab, torch.Generator().manual_seed(3))
    targets = sorted({key.rsplit(".", 3)[-3] for key in model.adapter_state()})
    twin = hf_twin(model, path, torch.bfloat16, "cuda", targets, r=16, alpha=16)
    loss, grads = run(model, batch, "full")
    ids, positions, labels = (t.to(CUDA) for t in batch)
    expected_loss, expected_grads = hf_loss_and_grads(twin, ids, positions, labels, list(model.adapter_state()))
    assert relative_error(loss, expected_loss) < 5e-3
    assert max(relative_error(g, e) for g, e in zip(grads, expected_grads)) < 5e-2


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-phi3"])
def test_input_embedding_in_host_memory_gives_the_same_step(name):
    path = tiny_path(name)
    adapters = AdapterSpec.from_target_modules(16, 16, "all-linear", seed=1)
    on_gpu = load_fast_model(path, adapters, CUDA)
    on_host = load_fast_model(path, adapters, CUDA, checkpointing="offload")
    assert on_host.embed.device.type == "cpu" and on_host.head.device.type == "cuda"
    for model in (on_gpu, on_host):
        randomize_adapters(model, torch.Generator().manual_seed(2))
    batch = packed_batch([300, 77, 512], on_gpu.spec.vocab, torch.Generator().manual_seed(3))
    loss_gpu, grads_gpu = run(on_gpu, batch, "full")
    loss_host, grads_host = run(on_host, batch, "full")
    assert torch.equal(loss_gpu, loss_host)
    assert max(relative_error(a, b) for a, b in zip(grads_gpu, grads_host)) < 5e-3


def test_a_warm_training_micro_step_never_waits_for_the_gpu():
    """No host-device synchronisation from building the batch to the end of backward: one would drain the queue of
    launched kernels at every micro-batch (a host-bound engine's only slack)."""

    model = load_fast_model(tiny_path("tiny-llama"), AdapterSpec.from_target_modules(16, 16, "all-linear", seed=1), CUDA)
    tensors = packed_batch([300, 77, 512, 135], model.spec.vocab, torch.Generator().manual_seed(2))
    recompute = Recompute("none", CUDA)
    run(model, tensors, "none", recompute)  # the first call probes attention and tunes kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = model.loss_sum(PackedBatch.build(*tensors, CUDA), recompute, ce_chunk_rows=256)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


def test_adapter_gradient_products_are_fp32_products_of_the_bf16_operands():
    from train_core.fast.lora import fp32_output_gemm, scaled_fp32_product

    generator = torch.Generator(device=CUDA).manual_seed(3)
    grad = torch.randn(512, 96, device=CUDA, generator=generator).bfloat16()
    xa = torch.randn(512, 48, device=CUDA, generator=generator).bfloat16()
    left = grad[:, 32:64].t()  # a column block of dY, transposed: what adapter_grads passes
    product = scaled_fp32_product(left, xa[:, 16:32], 0.5)
    reference = 0.5 * (left.double() @ xa[:, 16:32].double())
    assert product.dtype == torch.float32 and product.shape == (32, 16)
    bf16_rounding = (0.5 * (left @ xa[:, 16:32]).double() - reference).abs().max()
    print(f"one-GEMM fp32 path: {fp32_output_gemm(CUDA, torch.bfloat16)}")
    assert (product.double() - reference).abs().max() <= bf16_rounding + 1e-6


def two_sign_steps(loss_of, flat, batches, after_step=lambda: None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(every micro-batch's loss, each step's summed gradient) of two optimizer steps over `batches`, the flat
    adapter buffer changed in place between them as an optimizer changes it (a signed step of 1e-2)."""
    losses, gradients = [], []
    for _ in range(2):
        for tensors in batches:
            loss = loss_of(tensors)
            loss.backward()
            losses.append(loss.detach())
        gradients.append(flat.gather_grads().clone())
        with torch.no_grad():
            flat.parameter.sub_(1e-2 * flat.parameter.grad.sign())
        flat.parameter.grad = None
        after_step()
    return torch.stack(losses), gradients


GRAPHED_BATCHES = {  # sample lengths of each micro-batch; graphs bound a micro-batch at 1100 rows, samples at 512
    "one shape": [[300, 77, 512, 135], [135, 512, 77, 300]],
    "two shapes": [[300, 77, 512, 135], [512, 400, 11]],
    # 40 samples need a second capture; a 600-row sample and 1224 rows run eagerly
    "every case": [[300, 77, 512, 135], [512, 400, 11], [20] * 40, [600, 100], [512, 512, 200]],
    "equal lengths": [[256] * 4, [256] * 4],  # captured as they are, attention batched
    "equal, then mixed": [[256] * 4, [300, 77, 512, 135], [256] * 4],  # padded from the second on
}
GRAPHED_CAPTURES = {"every case": (6, 2, (1164, 64, 512, False)), "equal lengths": (4, 1, (1024, 4, 256, True)),
                    "equal, then mixed": (6, 2, (1108, 8, 512, False))}


def graphed_layers(model, mode: str, recompute: Recompute, host_budget_bytes: int | None = None):
    """The layers as CUDA graphs for `mode`, bounded at 1100 rows a micro-batch and 512 a sample."""
    from train_core.fast.checkpoint_graphs import CheckpointedGraphs
    from train_core.fast.graphs import GraphedLayers

    if mode == "none":
        return GraphedLayers(model.layers, model.spec, None, 1100, 512)
    return CheckpointedGraphs(model.layers, model.spec, None, recompute.offloader, 1100, 512)


@pytest.mark.parametrize("mode", ["none", "full", "offload"])
@pytest.mark.parametrize("case", GRAPHED_BATCHES)
def test_layers_replayed_as_cuda_graphs_give_the_eager_losses_and_accumulated_gradients(case, mode):
    """Two optimizer steps over packed micro-batches (padded to the captured shape with filler samples), the
    adapters changed in place between the steps as the optimizer changes them: the losses and summed gradients
    are the eager ones, with each activation checkpointing mode."""
    from train_core.fast.graphs import GraphShape
    from train_core.flat_params import FlatParameters

    path = tiny_path("tiny-llama")
    results = []
    for graphed in (False, True):
        model = load_fast_model(path, AdapterSpec.from_target_modules(16, 16, "all-linear", seed=1), CUDA)
        randomize_adapters(model, torch.Generator().manual_seed(2))
        flat = FlatParameters(model.parameters())
        recompute = Recompute(mode, CUDA)
        graphs = graphed_layers(model, mode, recompute) if graphed else None
        generator = torch.Generator().manual_seed(5)
        batches = [packed_batch(lengths, model.spec.vocab, generator) for lengths in GRAPHED_BATCHES[case]]
        loss_of = lambda tensors: model.loss_sum(  # noqa: E731
            PackedBatch.build(*tensors, CUDA), recompute, ce_chunk_rows=256, graphs=graphs)
        results.append(two_sign_steps(loss_of, flat, batches))
        if graphs is not None:
            print(graphs.describe())
            assert graphs.eager == (4 if case == "every case" else 0)
            if case in GRAPHED_CAPTURES:
                replayed, captures, shape = GRAPHED_CAPTURES[case]
                assert (graphs.replayed, graphs.captures, graphs.shape) == (replayed, captures, GraphShape(*shape))
    (eager_losses, eager_grads), (graph_losses, graph_grads) = results
    assert relative_error(graph_losses, eager_losses) < 2e-3
    for step, (graph_grad, eager_grad) in enumerate(zip(graph_grads, eager_grads)):
        assert relative_error(graph_grad, eager_grad) < 3e-2, f"step {step + 1}"


def test_offloaded_layers_run_eagerly_when_the_host_budget_cannot_hold_their_inputs():
    model = load_fast_model(tiny_path("tiny-llama"), AdapterSpec.from_target_modules(16, 16, "all-linear", seed=1), CUDA)
    recompute = Recompute("offload", CUDA, host_budget_bytes=0)
    graphs = graphed_layers(model, "offload", recompute)
    batch = PackedBatch.build(*packed_batch([300, 77], model.spec.vocab, torch.Generator().manual_seed(5)), CUDA)
    for _ in range(2):
        model.loss_sum(batch, recompute, ce_chunk_rows=256, graphs=graphs).backward()
    assert graphs.refused and (graphs.eager, graphs.replayed, graphs.captures) == (2, 0, 0)
    assert "the host budget cannot hold" in graphs.describe() and recompute.offloader.kept == {0}


def test_kept_merged_weights_train_as_fresh_ones_eagerly_and_as_cuda_graphs():
    """Two optimizer steps over packed micro-batches with the merged weights kept between steps (refreshed after
    each step), eagerly and with the layers as CUDA graphs reading the kept weights, against fresh dequantization."""
    from train_core.fast.engine import FastEngine
    from train_core.flat_params import FlatParameters

    path = tiny_path("tiny-llama")
    results = {}
    for name, options in {"fresh": {}, "kept": {"merged_weights": True},
                          "kept, graphed": {"merged_weights": True, "cuda_graphs": True, "graph_bounds": (1100, 512)}}.items():
        engine = FastEngine(path, AdapterSpec.from_target_modules(16, 16, "all-linear", seed=1), CUDA, "none", **options)
        randomize_adapters(engine.model, torch.Generator().manual_seed(2))
        flat = FlatParameters(engine.trainable_parameters())
        generator = torch.Generator().manual_seed(5)
        batches = [packed_batch(lengths, engine.model.spec.vocab, generator) for lengths in GRAPHED_BATCHES["two shapes"]]
        results[name] = two_sign_steps(lambda tensors: engine.loss_sum(*tensors), flat, batches,
                                       engine.parameters_changed)
        print(name, engine.run_summary())
        if engine.merged is not None:  # the second refresh replayed the graph captured at the first
            assert engine.merged.refreshes == 2 and engine.merged.graph is not None
    fresh_losses, fresh_grads = results["fresh"]
    kept_losses, kept_grads = results["kept"]
    first = len(batches)
    # The first refresh runs eagerly, the same kernels as fresh dequantization: the same step, bit for bit. The
    # second replays its CUDA graph, where cuBLAS (the tiny model's odd widths take the reference merge) may pick
    # another algorithm: it must follow the adapters' change, to far less than the change itself.
    assert torch.equal(kept_losses[:first], fresh_losses[:first]) and torch.equal(kept_grads[0], fresh_grads[0])
    step_change = (fresh_losses[first:] - fresh_losses[:first]).abs()
    assert ((kept_losses[first:] - fresh_losses[first:]).abs() < step_change / 10).all()
    assert relative_error(kept_grads[1], fresh_grads[1]) < 1e-2
    graph_losses, graph_grads = results["kept, graphed"]
    assert relative_error(graph_losses, fresh_losses) < 2e-3
    for step, (graph_grad, fresh_grad) in enumerate(zip(graph_grads, fresh_grads)):
        assert relative_error(graph_grad, fresh_grad) < 3e-2, f"step {step + 1}"
