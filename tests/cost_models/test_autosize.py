from cost_models.autosize import autosize, fit_advice
from cost_models.catalog import gpu, gpus
from tests.cost_models.helpers import shape


def test_auto_keeps_the_effective_batch_and_fits():
    for card in ("L4", "A100-40GB", "H200"):
        chosen = autosize(shape(model="llama-3-8b", seq=2048), gpu(card), rows_per_worker=8)
        assert chosen.fits
        assert chosen.shape.micro_batch * chosen.shape.grad_accum == 8


def test_small_cards_need_checkpointing_where_big_cards_do_not():
    job = shape(model="llama-3-8b", seq=4096)
    assert autosize(job, gpu("L4"), 8).shape.checkpointing in ("full", "offload")
    assert autosize(job, gpu("H200"), 8).shape.checkpointing == "none"


def test_fixed_settings_are_kept_even_when_they_do_not_fit():
    chosen = autosize(shape(model="llama-3-8b", seq=8192), gpu("L4"), 8, micro_batch=8, checkpointing="none")
    assert (chosen.shape.micro_batch, chosen.shape.checkpointing, chosen.fits) == (8, "none", False)


def test_a_job_that_fits_nowhere_offered_says_what_would_make_it_fit():
    job = shape(model="qwen2.5-72b", quantization="bf16", seq=8192)
    advice = fit_advice(job, 8, [gpu("L4"), gpu("A10G")], gpus().values())
    assert advice.startswith("fits no offered GPU: needs ")
    assert "model.quantization nf4 on" in advice
    advice = fit_advice(shape(model="llama-3-8b", seq=8192), 8, [gpu("L4")], gpus().values(), micro_batch=8,
                        checkpointing="none")
    assert "training.micro_batch_size 1" in advice or "training.activation_checkpointing offload" in advice
    assert "\n" not in advice


def test_sizing_with_cuda_graphs_counts_their_buffers_in_every_checkpointing_option():
    job = shape(model="qwen2-1.5b", seq=2048).with_(engine="train_core-fast")
    eager = autosize(job, gpu("L4"), 8, micro_batch=4, checkpointing="none")
    graphed = autosize(job.with_(cuda_graphs=True), gpu("L4"), 8, micro_batch=4, checkpointing="none")
    buffers = graphed.memory.cuda_graph_buffers
    assert buffers > 1.0 and graphed.need_upper_gib > eager.need_upper_gib + buffers
    full = autosize(job.with_(cuda_graphs=True), gpu("L4"), 8, micro_batch=4, checkpointing="full")
    assert 0 < full.memory.cuda_graph_buffers < buffers / 5  # a few tensors between layers, not three per layer
