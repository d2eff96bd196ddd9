import pytest

from cost_models.calibration import load_calibration
from cost_models.errors import EstimateError
from cost_models.memory import BYTES_PER_PARAM, estimate_memory, memory_features, reserved_upper_gib, static_bytes
from cost_models.shape import FAST_ENGINE
from tests.cost_models.helpers import shape

COEFFICIENTS = load_calibration().memory


def memory(**kwargs):
    return estimate_memory(shape(**kwargs), COEFFICIENTS)


def test_breakdown_adds_up_and_names_every_part():
    breakdown = memory()
    parts = breakdown.as_dict()
    for name in ("weights", "embeddings_and_norms", "lora_params_grads", "optimizer_state", "activations",
                 "layer_recompute", "attention_mask", "logits_loss", "allocator_and_workspace", "cuda_context"):
        assert parts[name] >= 0
    assert breakdown.total == pytest.approx(breakdown.reserved + breakdown.cuda_context)
    assert breakdown.total == pytest.approx(sum(v for k, v in parts.items() if k not in ("reserved", "total")))


def test_weight_formats_cost_what_they_store():
    qwen = shape(quantization="nf4").arch
    assert static_bytes(shape(quantization="nf4"))["weights"] == pytest.approx(qwen.linear_params * 0.5159, rel=1e-3)
    ratios = [static_bytes(shape(quantization=q))["weights"] for q in ("nf4", "nf4-nodq", "int8", "bf16", "fp32")]
    assert ratios == sorted(ratios)
    assert BYTES_PER_PARAM["nf4-nodq"] - BYTES_PER_PARAM["nf4"] == pytest.approx(0.373 / 8, rel=0.01)  # QLoRA DQ


def test_eight_bit_adam_is_smaller_than_fp32_adam():
    eight = static_bytes(shape())["optimizer_state"]
    full = static_bytes(shape().with_(optimizer="adamw"))["optimizer_state"]
    assert eight < full / 3


def test_more_tokens_more_memory_and_checkpointing_saves_it():
    assert memory(seq=4096).reserved > memory(seq=2048).reserved
    assert memory(micro_batch=4).reserved > memory(micro_batch=1).reserved
    assert memory(checkpointing="none").reserved > memory(checkpointing="full").reserved
    assert memory(checkpointing="full").reserved > memory(checkpointing="offload").reserved
    assert memory(quantization="bf16").reserved > memory(quantization="nf4").reserved


def test_dense_mask_only_costs_without_checkpointing_and_with_several_samples():
    packed = memory(checkpointing="none", micro_batch=2, seq=4096)
    single = memory(checkpointing="none", micro_batch=1, seq=8192, samples=1.0)
    assert packed.attention_mask > 0 and single.attention_mask == 0
    assert memory(checkpointing="full", micro_batch=2).attention_mask == 0


def test_fewer_lora_targets_keep_fewer_activations():
    all_linear = memory(checkpointing="none")
    qv = memory(checkpointing="none", targets=("q_proj", "v_proj"))
    assert qv.activations < all_linear.activations
    assert qv.lora_params_grads < all_linear.lora_params_grads


FAST = load_calibration(FAST_ENGINE).memory


def fast(**kwargs):
    return shape(**kwargs).with_(engine=FAST_ENGINE)


def test_the_fast_engine_has_neither_a_dense_mask_nor_a_float_base_and_counts_its_dequant_buffers():
    job = fast(checkpointing="none", micro_batch=4)
    assert set(memory_features(job)) == {"saved", "working", "logits", "one", "offload_pending", "graph_pool"}
    assert memory_features(job)["offload_pending"] == 0
    breakdown = estimate_memory(job, FAST)
    h, f = job.arch.hidden, job.arch.intermediate
    assert breakdown.attention_mask == 0
    assert breakdown.dequant_buffers * 2**30 == 2 * (2 * f * h + f * h)  # slot 0: gate|up, slot 1: down
    assert memory().dequant_buffers == 0


def test_the_fast_engine_needs_less_than_transformers_peft_and_checkpointing_still_saves():
    for mode in ("none", "full", "offload"):
        assert estimate_memory(fast(checkpointing=mode), FAST).reserved < memory(checkpointing=mode).reserved
    none, full, offload = (estimate_memory(fast(checkpointing=m, seq=8192), FAST, 0.0).reserved
                           for m in ("none", "full", "offload"))
    assert none > full > offload, "when the host does not run ahead of the GPU"
    ahead = estimate_memory(fast(checkpointing="offload", seq=8192), FAST, 1.0).reserved
    assert ahead > full, "a GPU-bound offload job holds more layer inputs in the allocator than full keeps"


def test_the_fast_engine_runs_only_nf4_with_bf16_compute():
    with pytest.raises(EstimateError, match="train_core-fast runs an nf4 base with bf16 compute"):
        shape(quantization="bf16").with_(engine=FAST_ENGINE)


def test_offload_holds_its_offloaded_inputs_as_far_as_the_host_runs_ahead():
    """Each offloaded layer input waits on the copy stream: none held when the host never runs ahead, every one
    of them (layers - 1 inputs) at the upper bound, which lies above the point whatever the share."""
    from cost_models.memory import UPPER_PENDING, reserved_upper_gib

    job = fast(checkpointing="offload", seq=8192)
    inputs = 8192 * (job.arch.layers - 1) * 2 * job.arch.hidden
    assert memory_features(job)["offload_pending"] == inputs
    none, half, full = (estimate_memory(job, FAST, ahead) for ahead in (0.0, 0.5, 1.0))
    assert none.offload_pending == 0
    assert full.offload_pending == pytest.approx(2 * half.offload_pending)
    assert full.offload_pending * 2**30 == pytest.approx(FAST.offload_pending * inputs)
    upper = reserved_upper_gib(job, FAST, 0.0)
    assert upper == pytest.approx((none.reserved + UPPER_PENDING * inputs / 2**30) * (1 + FAST.margin))
    assert reserved_upper_gib(job, FAST, 1.0) > upper > full.reserved


def test_softcapped_logits_keep_one_more_fp32_chunk_on_the_plain_path():
    gemma = shape(model="gemma-2-2b", checkpointing="full")
    plain = estimate_memory(gemma, COEFFICIENTS)
    counted = 4 * min(gemma.targets(gemma.max_tokens_per_micro_batch), 1024) * gemma.arch.vocab / 2**30
    as_if_uncapped = COEFFICIENTS.logits * min(gemma.targets(gemma.max_tokens_per_micro_batch), 1024) * gemma.arch.vocab
    assert plain.logits_loss == pytest.approx(as_if_uncapped / 2**30 + counted)


def test_offload_counts_a_separate_models_input_embedding_in_host_memory_as_the_fast_engine_keeps_it():
    """runspec.fast_support.input_embedding_on_host decides for the engine and the estimate alike; calibration rows
    measured before the engine moved it keep it on the GPU."""
    llama = fast(model="llama-3-8b", checkpointing="offload")
    arch = llama.arch
    on_host = static_bytes(llama)["embeddings_and_norms"]
    assert static_bytes(llama.with_(checkpointing="full"))["embeddings_and_norms"] - on_host == 2.0 * arch.vocab * arch.hidden
    assert static_bytes(llama.with_(embedding_measured_on_gpu=True))["embeddings_and_norms"] == (
        static_bytes(llama.with_(checkpointing="full"))["embeddings_and_norms"])
    tied = fast(model="qwen2-1.5b", checkpointing="offload")
    assert tied.arch.tied and not tied.input_embedding_on_host
    assert not shape(model="llama-3-8b", checkpointing="offload").input_embedding_on_host, "transformers + PEFT"


def test_cuda_graphs_hold_their_static_tensors_only_where_the_engine_graphs():
    graphed = fast(checkpointing="none", micro_batch=4, samples=1.0).with_(cuda_graphs=True)
    arch = graphed.arch
    assert graphed.graphed_tokens == 4 * 2048 + 8  # 4 samples and at least one filler: 8 sample slots
    counted = estimate_memory(graphed, FAST).cuda_graph_buffers * 2**30
    assert counted == 3 * arch.layers * (4 * 2048 + 8) * arch.hidden * 2  # three per layer
    tensor = (4 * 2048 + 8) * arch.hidden * 2
    for checkpointing, tensors in (("full", 3), ("offload", 7)):  # between the layers, not per layer
        counted = estimate_memory(graphed.with_(checkpointing=checkpointing), FAST).cuda_graph_buffers * 2**30
        assert counted == tensors * tensor + 4 * graphed.lora_params
    assert estimate_memory(graphed.with_(cuda_graphs=False), FAST).cuda_graph_buffers == 0
    assert estimate_memory(shape(checkpointing="none").with_(cuda_graphs=True), COEFFICIENTS).cuda_graph_buffers == 0
    gemma2 = fast(model="gemma-2-2b", checkpointing="none").with_(cuda_graphs=True)  # soft-capped: runs eagerly
    assert estimate_memory(gemma2, FAST).cuda_graph_buffers == 0


def test_checkpointed_graphs_add_their_pool_and_hold_no_offloaded_inputs():
    """The checkpointed layers' graphs allocate in a pool of their own (one per job, fitted); offload copies their
    inputs out of a static ring, so no freed block waits on the copy stream (eagerly, up to every input does)."""
    eager = fast(checkpointing="offload", micro_batch=4, samples=1.0)
    graphed = eager.with_(cuda_graphs=True)
    assert memory_features(eager)["offload_pending"] > 0 and memory_features(graphed)["offload_pending"] == 0
    assert [memory_features(job)["graph_pool"] for job in (eager, graphed, graphed.with_(checkpointing="full"),
                                                           graphed.with_(checkpointing="none"))] == [0, 1, 1, 0]
    pool = FAST.graph_pool / 2**30
    assert 0.4 < pool < 0.8  # measured beside the eager twins (calibration rows of 2026-11-30T10:40Z)
    with_pool = estimate_memory(graphed, FAST, 0.0).allocator_and_workspace
    assert with_pool == pytest.approx(estimate_memory(eager, FAST, 0.0).allocator_and_workspace + pool)


@pytest.mark.parametrize("model, micro_batch, eager_gib, graphed_gib", [
    ("qwen2-1.5b", 4, 13.81, 15.62),  # docs/BENCHMARKS.md round 12, fast:4x2:none vs :graphs, H200
    ("qwen2-1.5b", 4, 14.01, 15.56),  # round 13, the padded form
    ("llama-3-8b", 2, 20.31, 22.95),  # round 12, fast:2x4:none vs :graphs
])
def test_the_counted_graph_buffers_cover_what_graphs_added_to_the_measured_peak(model, micro_batch, eager_gib,
                                                                                graphed_gib):
    job = fast(model=model, checkpointing="none", micro_batch=micro_batch, samples=1.0).with_(cuda_graphs=True)
    counted = estimate_memory(job, FAST).cuda_graph_buffers
    assert graphed_gib - eager_gib <= counted <= 1.3 * (graphed_gib - eager_gib)


@pytest.mark.parametrize("micro_batch, graphed_gib", [
    (1, 1.91), (2, 2.04),  # docs/BENCHMARKS.md round 14: fast:1x8:offload:ce=64:graphs, fast:2x4:offload:ce=64:tile=1024:graphs
    (4, 2.46),  # fast:4x2:offload:ce=128:tile=2048:graphs
])
def test_the_planners_bound_covers_the_measured_lean_runs_with_checkpointed_layers_as_cuda_graphs(micro_batch, graphed_gib):
    job = fast(model="qwen2-1.5b", checkpointing="offload", micro_batch=micro_batch, samples=1.0).with_(cuda_graphs=True)
    assert graphed_gib <= reserved_upper_gib(job, FAST, 0.0)


def test_kept_merged_weights_hold_every_linear_in_bf16_on_the_fast_engine_only():
    job = fast(checkpointing="full").with_(keep_merged_weights=True)
    assert estimate_memory(job, FAST).merged_weights * 2**30 == 2 * job.arch.linear_params
    assert estimate_memory(job.with_(keep_merged_weights=False), FAST).merged_weights == 0
    assert estimate_memory(shape().with_(keep_merged_weights=True), COEFFICIENTS).merged_weights == 0
