import pytest

from cost_models.calibration import load_calibration
from cost_models.catalog import gpu
from cost_models.shape import FAST_ENGINE, RowStats
from cost_models.step_time import estimate_step_time, time_features
from tests.cost_models.helpers import shape

TIME = load_calibration().time


def step(job, card="H200"):
    return estimate_step_time(job, gpu(card), TIME)


def test_lora_flops_have_no_weight_gradient_and_recompute_adds_a_forward():
    job = shape(model="llama-3-8b", checkpointing="none", samples=1.0)
    tokens = job.tokens_per_micro_batch
    peak = gpu("H200").bf16_tflops * 1e12
    linear = time_features(job, gpu("H200"))["gemm"] * peak
    head = 6 * job.arch.hidden * job.arch.vocab * job.targets(tokens)
    lora = 6 * job.lora_params * tokens
    assert linear == pytest.approx(4 * job.arch.linear_params * tokens + lora + head)
    recompute = time_features(job.with_(checkpointing="full"), gpu("H200"))["gemm"] * peak
    assert recompute - linear == pytest.approx(2 * (job.arch.linear_params + job.lora_params) * tokens)


def test_bigger_jobs_take_longer_and_slower_cards_take_longer():
    small = step(shape(seq=2048, micro_batch=1))
    assert step(shape(seq=2048, micro_batch=4)).step > small.step
    assert step(shape(grad_accum=2)).step == pytest.approx(2 * small.step, rel=0.05)
    big = shape(model="llama-3-8b", seq=4096)
    assert step(big, "L4").step > step(big, "A100-80GB").step > step(big, "H200").step


def test_small_jobs_on_fast_cards_are_host_bound_and_big_ones_gpu_bound():
    assert step(shape(model="qwen2-0.5b", seq=512)).bound == "host"
    assert step(shape(model="llama-3-8b", seq=4096, micro_batch=4), "A10G").bound == "gpu"


def test_offload_adds_copies():
    full = step(shape(checkpointing="full"))
    offload = step(shape(checkpointing="offload"))
    assert offload.offload_copies > 0 and offload.step > full.step


def test_two_gpus_add_a_gradient_sync():
    assert step(shape()).gradient_sync == 0
    assert step(shape().with_(gpus=2)).gradient_sync > 0


def fast(job):
    return job.with_(engine=FAST_ENGINE)


def test_the_fast_engine_attends_within_each_sample_without_a_mask():
    whole = time_features(fast(shape(seq=8192, samples=1.0)), gpu("H200"))
    packed = time_features(fast(shape(seq=8192, samples=4.0)), gpu("H200"))
    assert packed["masked_attention"] == whole["masked_attention"] == 0
    assert packed["varlen_attention"] == pytest.approx(whole["causal_attention"] / 4)  # the same FLOPs, varlen


def test_packed_rows_attend_through_varlen_and_full_rows_of_one_sample_in_one_batched_call():
    """A plan's packed rows (RowStats.full_rows, when the data set cannot be read) run varlen flash attention at its
    fitted efficiency; rows of one sample filling seq_len run the batched SDPA call at the batched efficiency."""
    time = load_calibration(FAST_ENGINE).time
    packed = fast(shape(micro_batch=2)).with_(rows=RowStats.full_rows(2048))
    full = fast(shape(micro_batch=4, samples=1.0))
    for job, path, efficiency in ((packed, "varlen_attention", time.varlen_attention_efficiency),
                                  (full, "causal_attention", time.causal_attention_efficiency)):
        features = time_features(job, gpu("H200"))
        assert features[path] > 0 and features["causal_attention"] + features["varlen_attention"] == features[path]
        assert estimate_step_time(job, gpu("H200"), time).attention == pytest.approx(features[path] / efficiency)


def test_rows_of_one_sample_and_several_lengths_attend_batched_only_one_to_a_micro_batch_and_eager():
    rows = RowStats(1500.0, 2048, 1.0, 0.5, 1000, "one sample a row, not all of one length")
    one = fast(shape(micro_batch=1)).with_(rows=rows)
    assert one.equal_lengths
    assert not one.with_(micro_batch=2).equal_lengths
    assert not one.with_(cuda_graphs=True).equal_lengths  # a micro-batch of a new shape moves graphs to padded varlen
    assert not fast(shape(micro_batch=1, samples=2.0)).equal_lengths  # packed samples are taken as unequal


def test_the_fast_engine_merges_adapters_and_never_recomputes_the_down_projection():
    job = fast(shape(model="llama-3-8b", checkpointing="none"))
    tokens, arch = job.tokens_per_micro_batch, job.arch
    peak = gpu("H200").bf16_tflops * 1e12
    none = time_features(job, gpu("H200"))["gemm"] * peak
    head = 4 * arch.hidden * arch.vocab * job.targets(tokens)
    assert none == pytest.approx(4 * arch.linear_params * tokens + 4 * job.lora_params * tokens + head)
    full = time_features(job.with_(checkpointing="full"), gpu("H200"))["gemm"] * peak
    down = arch.layers * arch.hidden * arch.intermediate
    assert full - none == pytest.approx(2 * (arch.linear_params - down) * tokens)


def test_the_fast_engine_has_its_own_time_coefficients():
    time = load_calibration(FAST_ENGINE).time
    job = fast(shape())
    assert time.masked_attention_efficiency is None and time.host_layer_pass_float is None
    assert estimate_step_time(job, gpu("H200"), time).step < step(shape()).step


def test_a_measured_gemm_rate_moves_the_transfer_and_a_datasheet_alone_does_not():
    """gemm_peak: the datasheet rate times (measured/datasheet on this card) / (the same on the calibration card)."""
    from dataclasses import replace

    from cost_models.catalog import gpus
    from cost_models.step_time import gemm_peak

    h200, l4 = gpus()["H200"], gpus()["L4"]
    assert h200.measured_bf16_tflops and not l4.measured_bf16_tflops
    assert gemm_peak(l4, h200) == l4.bf16_tflops * 1e12
    assert gemm_peak(h200, h200) == h200.bf16_tflops * 1e12
    measured_l4 = replace(l4, measured_bf16_tflops=l4.bf16_tflops * h200.achieved_gemm_fraction / 2)
    assert gemm_peak(measured_l4, h200) == pytest.approx(l4.bf16_tflops * 1e12 / 2)
    job = shape(model="llama-3-8b", seq=4096)
    coefficients = load_calibration(FAST_ENGINE).time
    slow = estimate_step_time(job.with_(engine=FAST_ENGINE), measured_l4, coefficients, reference=h200)
    plain = estimate_step_time(job.with_(engine=FAST_ENGINE), l4, coefficients, reference=h200)
    assert slow.gemm == pytest.approx(2 * plain.gemm)


def test_cuda_graphs_take_the_layers_host_work_off_the_step():
    eager = shape(model="qwen2-1.5b", micro_batch=4, grad_accum=2, checkpointing="none").with_(engine=FAST_ENGINE)
    coefficients = load_calibration(FAST_ENGINE).time
    before = estimate_step_time(eager, gpu("H200"), coefficients)
    after = estimate_step_time(eager.with_(cuda_graphs=True), gpu("H200"), coefficients)
    assert after.host < before.host / 3 and after.step < before.step
    assert (after.gemm, after.attention, after.memory_traffic) == (before.gemm, before.attention, before.memory_traffic)
    for checkpointing in ("full", "offload"):  # checkpointed layers replay their forward and backward graphs
        checkpointed = eager.with_(checkpointing=checkpointing)
        before = estimate_step_time(checkpointed, gpu("H200"), coefficients)
        after = estimate_step_time(checkpointed.with_(cuda_graphs=True), gpu("H200"), coefficients)
        assert after.host < before.host / 3 and after.step < before.step
        assert (after.gemm, after.attention, after.memory_traffic) == (before.gemm, before.attention, before.memory_traffic)


def test_kept_merged_weights_dequantize_once_a_step():
    job = shape(model="qwen2-1.5b", micro_batch=2, grad_accum=4, checkpointing="full").with_(engine=FAST_ENGINE)
    work_of = lambda kept: time_features(job.with_(keep_merged_weights=kept), gpu("H200"))["weight_bytes"]  # noqa: E731
    linear, nf4 = job.arch.linear_params, 0.5 + 1 / 64 + 4 / (64 * 256)
    uses = 2 * linear + (job.arch.layers * ((job.arch.q_dim + 2 * job.arch.kv_dim) * job.arch.hidden
                                            + job.arch.q_dim * job.arch.hidden))
    bandwidth = gpu("H200").mem_bw_gbs * 1e9
    assert work_of(False) * bandwidth == pytest.approx(uses * (nf4 + 4))
    assert work_of(True) * bandwidth == pytest.approx(linear / 4 * (nf4 + 2) + uses * 2)
