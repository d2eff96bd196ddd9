"""The fast model's reference path against transformers + PEFT in fp32 on CPU (no triton needed)."""
from __future__ import annotations

import pytest
import torch

from tests.fast.helpers import hf_base, hf_loss_and_grads, hf_twin, packed_batch, randomize_adapters, tiny_path
from train_core.fast.batch import PackedBatch
from runspec.fast_support import model_facts, run_unsupported
from train_core.fast.engine import FastEngine
from train_core.fast.lora import LoRAGroup, lora_linear
from train_core.fast.loading import AdapterSpec, load_fast_model
from train_core.fast.nf4 import quantize_nf4
from train_core.fast.recompute import Recompute

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("SPOTTUNE_KERNELS", "reference")


def test_lora_autograd_matches_peft_lora_layer():
    from peft import LoraConfig, get_peft_model

    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(out, 128, generator=generator) * 0.05 for out in (96, 32, 32)]
    bases = [quantize_nf4(w) for w in weights]
    linear = torch.nn.ModuleDict({name: torch.nn.Linear(128, w.shape[0], bias=False) for name, w in zip("qkv", weights)})
    with torch.no_grad():
        for name, base in zip("qkv", bases):
            linear[name].weight.copy_(base.dequantize(torch.float32))
    peft_model = get_peft_model(linear, LoraConfig(r=4, lora_alpha=12, target_modules=["q", "v"]))
    pairs = {name: (peft_model.base_model.model[name].lora_A["default"].weight, peft_model.base_model.model[name].lora_B["default"].weight) for name in "qv"}
    with torch.no_grad():
        for _, b in pairs.values():
            b.normal_(0, 0.1, generator=generator)
    params = tuple(torch.nn.Parameter(t.detach().clone()) for name in "qv" for t in pairs[name])
    group = LoRAGroup(bases, [True, False, True], scale=3.0, dtype=torch.float32)
    x = torch.randn(10, 128, generator=generator, requires_grad=True)
    residual = torch.randn(10, 160, generator=generator, requires_grad=True)
    ours = lora_linear(x, group, params, residual=residual)
    reference = residual + torch.cat([peft_model.base_model.model[name](x) for name in "qkv"], dim=1)
    grad = torch.randn(10, 160, generator=generator)
    got = torch.autograd.grad(ours, [x, residual, *params], grad)
    expected = torch.autograd.grad(reference, [x, residual, *(t for name in "qv" for t in pairs[name])], grad)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


TINY_MODELS = ["tiny-qwen2", "tiny-llama", "tiny-qwen3", "tiny-llama3.2", "tiny-phi3", "tiny-gemma2", "tiny-gemma3"]


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("mode,tile", [("none", None), ("full", None), ("full", 5)])
def test_fast_model_matches_transformers_peft_on_packed_batches(name, mode, tile):
    check_against_transformers(name, [5, 9, 3, 7], mode, tile)


def test_phi3_longrope_switches_to_its_long_factors_as_transformers_does():
    """tiny-phi3 was pretrained on 64 tokens: a 70-token sample takes the whole batch to the long factors."""
    model = check_against_transformers("tiny-phi3", [70, 10], "full", None)
    rotary = model.layers[0].rotary
    assert not torch.equal(rotary.for_length(70), rotary.for_length(64)) and rotary.scaling > 1


@pytest.mark.slow
def test_phi35_real_layer_shape_matches_transformers_in_fp32(tmp_path):
    """Phi-3.5-mini's layer width (head_dim 96, 32 heads, longrope with its attention factor) on its long factors,
    one layer deep and with the pretraining length cut to 256 so a short sample passes it."""
    import dataclasses

    from tests.fast.helpers import fast_loss_and_grads, relative_error
    from tests.fast.real_shapes import REAL_SHAPES, build

    shape = REAL_SHAPES["phi-3.5-mini"]
    config = dict(shape.config, original_max_position_embeddings=256)
    config["rope_parameters"] = dict(config["rope_parameters"], original_max_position_embeddings=256)
    path = build(dataclasses.replace(shape, config=config), tmp_path / "phi", CPU, torch.float32, layers=1)
    model = load_fast_model(path, AdapterSpec.from_target_modules(8, 16, "all-linear", seed=1), CPU, torch.float32)
    generator = torch.Generator().manual_seed(2)
    randomize_adapters(model, generator)
    batch = packed_batch([300, 60], model.spec.vocab, generator)
    loss, _ = fast_loss_and_grads(model, batch, Recompute("none", CPU), CPU)
    keys = list(model.adapter_state())
    twin = hf_twin(model, path, torch.float32, "cpu", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], r=8, alpha=16)
    expected_loss, expected_grads = hf_loss_and_grads(twin, *batch, keys)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-4)
    for key, grad in zip(keys, expected_grads):
        assert relative_error(model.adapter_state()[key].grad, grad) < 1e-4, key


def check_against_transformers(name: str, lengths: list[int], mode: str, tile: int | None):
    """Loss and every adapter gradient of one packed batch equal transformers + PEFT's (fp32, CPU)."""
    path = tiny_path(name)
    model = load_fast_model(path, AdapterSpec.from_target_modules(8, 16, "all-linear", seed=1), CPU, torch.float32)
    targets = sorted({name.rsplit(".", 3)[-3] for name in model.adapter_state()})
    generator = torch.Generator().manual_seed(2)
    randomize_adapters(model, generator)
    twin = hf_twin(model, path, torch.float32, "cpu", targets, r=8, alpha=16)
    ids, positions, labels = packed_batch(lengths, model.spec.vocab, generator)
    loss = model.loss_sum(PackedBatch.build(ids, positions, labels, CPU), Recompute(mode, CPU), ce_chunk_rows=7, mlp_tile_rows=tile)
    loss.backward()
    keys = list(model.adapter_state())
    expected_loss, expected_grads = hf_loss_and_grads(twin, ids, positions, labels, keys)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-4)
    for key, grad in zip(keys, expected_grads):
        torch.testing.assert_close(model.adapter_state()[key].grad, grad, rtol=1e-3, atol=1e-5, msg=key)
    return model


def test_engine_adapter_loads_with_peft_and_gives_the_same_loss(tmp_path):
    from peft import PeftModel

    path = tiny_path("tiny-llama")
    targets = ["q_proj", "v_proj", "down_proj"]
    engine = FastEngine(path, AdapterSpec.from_target_modules(8, 16, targets, seed=3), CPU, "none", dtype=torch.float32)
    generator = torch.Generator().manual_seed(4)
    randomize_adapters(engine.model, generator)
    ids, positions, labels = packed_batch([12, 20], engine.model.spec.vocab, generator)
    with torch.no_grad():
        loss = engine.loss_sum(ids, positions, labels)
    engine.save_adapter(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(hf_base(engine.model, path, torch.float32, "cpu"), str(tmp_path / "adapter"))
    with torch.no_grad():
        logits = loaded(input_ids=ids, position_ids=positions).logits.float()
    expected = torch.nn.functional.cross_entropy(logits[0], labels[0], reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)


def test_engine_loads_its_own_adapter_state():
    path = tiny_path("tiny-qwen2")
    spec = AdapterSpec.from_target_modules(4, 8, "all-linear", seed=5)
    first = FastEngine(path, spec, CPU, "none", dtype=torch.float32)
    randomize_adapters(first.model, torch.Generator().manual_seed(6))
    second = FastEngine(path, AdapterSpec.from_target_modules(4, 8, "all-linear", seed=7), CPU, "none", dtype=torch.float32)
    second.load_adapter_state({k.replace(".lora_A.", ".lora_A.default."): v for k, v in first.adapter_state_dict().items()})
    for key, value in first.adapter_state_dict().items():
        assert torch.equal(second.adapter_state_dict()[key], value)
    with pytest.raises(ValueError, match="does not match"):
        second.load_adapter_state({"base_model.model.nothing.lora_A.weight": torch.zeros(1)})


def test_unsupported_reasons():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_path("tiny-llama"))
    facts = lambda: model_facts(config)  # noqa: E731
    assert "CUDA" in run_unsupported("cpu", "nf4", "bf16", 0.0, None, facts)
    assert "dropout" in run_unsupported("cuda", "nf4", "bf16", 0.1, None, facts)
    assert run_unsupported("cuda", "nf4", "bf16", 0.0, None, facts) is None
    assert "MLP biases" in run_unsupported("cuda", "nf4", "bf16", 0.0, None, lambda: model_facts(
        {**config.to_dict(), "mlp_bias": True}))
    with pytest.raises(ValueError, match="target_modules"):
        AdapterSpec.from_target_modules(8, 16, ["q_proj", "lm_head"], seed=0)


@pytest.mark.parametrize("mode", ["none", "full"])
def test_cuda_graphs_are_described_as_off_without_cuda(mode):
    adapters = AdapterSpec.from_target_modules(8, 16, "all-linear", seed=0)
    engine = FastEngine(tiny_path("tiny-llama"), adapters, CPU, mode, dtype=torch.float32, cuda_graphs=True)
    assert engine.graphs is None and "layers eager (CUDA graphs need a CUDA device)" in engine.description
