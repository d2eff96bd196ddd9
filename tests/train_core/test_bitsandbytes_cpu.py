"""bitsandbytes' two CPU code paths, chosen by train_core: results must not depend on the CPU's features."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.train_core.helpers import write_config
from train_core.bitsandbytes_cpu import (
    DESCRIPTIONS, GENERIC, PACKED, choose_bitsandbytes_cpu_path, cpu_has_avx512_bf16, dequantize_4bit_cpu,
    dequantize_4bit_native, dequantize_4bit_portable,
)
from runspec.config import load_config
from train_core.fast.nf4 import quantize_nf4
from train_core.trainer import Trainer

bnb = pytest.importorskip("bitsandbytes")
needs_avx512_bf16 = pytest.mark.skipif(
    not cpu_has_avx512_bf16(), reason="bitsandbytes' packed CPU path only runs on a CPU with AVX512-BF16; this one has none"
)


def nf4_layer(out_features: int, in_features: int, path: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A CPU Linear4bit holding a random weight, with the given bitsandbytes CPU path; also the float weight."""
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(out_features)) * 0.02
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    assert choose_bitsandbytes_cpu_path(layer, path) == 1
    return layer, weight


def effective_weight(layer: torch.nn.Module, in_features: int) -> torch.Tensor:
    """The (out, in) matrix the layer multiplies by, read off by feeding it the identity."""
    return layer(torch.eye(in_features)).T


def assert_is_nf4_of(got: torch.Tensor, weight: torch.Tensor) -> None:
    """`got` is the NF4 round trip of `weight` as the plain-PyTorch quantizer computes it (near-ties may differ)."""
    expected = quantize_nf4(weight).dequantize(torch.float32)
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    assert (got == expected).float().mean() > 0.97


@pytest.mark.parametrize("out_features, in_features", [(96, 64), (176, 64), (64, 176), (40, 100)])
def test_generic_path_multiplies_by_the_nf4_weight_in_train_and_eval_and_never_repacks(out_features, in_features):
    layer, weight = nf4_layer(out_features, in_features, GENERIC)
    stored = layer.weight.data.clone()
    assert_is_nf4_of(effective_weight(layer, in_features), weight)
    layer.eval()
    with torch.no_grad():
        in_eval = effective_weight(layer, in_features)
    assert torch.equal(layer.weight.data, stored) and not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert_is_nf4_of(in_eval, weight)
    inputs = torch.randn(3, in_features, requires_grad=True)
    layer.train()
    layer(inputs).sum().backward()
    torch.testing.assert_close(inputs.grad, effective_weight(layer, in_features).sum(0).expand(3, -1).detach())


@needs_avx512_bf16
def test_packed_path_repacks_the_weight_at_the_first_eval_forward_and_needs_multiples_of_32():
    layer, weight = nf4_layer(96, 64, PACKED)
    stored = layer.weight.data.clone()
    layer.eval()
    with torch.no_grad():
        got = effective_weight(layer, 64).float()
    assert layer.weight.quant_state.packing_format_for_cpu and not torch.equal(layer.weight.data, stored)
    expected = quantize_nf4(weight).dequantize(torch.float32)
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()  # bf16 compute
    odd, _ = nf4_layer(40, 64, PACKED)
    odd.eval()
    with torch.no_grad(), pytest.raises(AssertionError, match="divisible by block_n"):
        odd(torch.eye(64))


@pytest.mark.parametrize("shape", [(1536, 576), (64, 128), (300, 192), (64, 176), (176, 64), (40, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dequantize_is_exact_native_where_whole_blocks_and_portable_elsewhere(shape, dtype):
    """Native only where it equals plain PyTorch bit for bit on this CPU; both equal bitsandbytes' own PyTorch code."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.02
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    args = (packed, absmax, 64, "nf4", list(state.shape), dtype)
    reference = _dequantize_4bit_compute.__wrapped__(
        packed.reshape(-1), absmax, bnb.functional.get_4bit_type("nf4", device="cpu"), 64, list(state.shape), dtype
    )
    portable = dequantize_4bit_portable(*args)
    assert torch.equal(portable, reference)
    native = dequantize_4bit_native(*args)
    assert (native is None) == (shape[-1] % 64 != 0)
    if native is not None:
        assert torch.equal(native, portable)
    assert torch.equal(dequantize_4bit_cpu(*args), portable)


def train(tmp_path, name: str, overrides: dict) -> tuple[Trainer, object]:
    directory = tmp_path / name
    directory.mkdir()
    config = load_config(write_config(directory, {"training": {"max_steps": 6, "batch_size": 4}, **overrides}))
    trainer = Trainer(config, log=lambda message: None)
    return trainer, trainer.run()


def test_eval_in_the_middle_of_training_changes_nothing_on_a_model_whose_dims_are_not_multiples_of_32(tmp_path):
    """tiny-llama's MLP is 176 wide (not a multiple of 32); on CPU it trains with NF4 base weights."""
    _, plain = train(tmp_path, "train-only", {"data": {"eval": None}})
    trainer, with_eval = train(tmp_path, "eval-every-2", {"training": {"max_steps": 6, "batch_size": 4, "eval_every": 2}})
    assert trainer.path.quantization == "nf4" and DESCRIPTIONS[GENERIC] in with_eval.device_path
    assert with_eval.losses == plain.losses and len(plain.losses) == 6
    assert with_eval.eval_loss is not None and with_eval.eval_loss == with_eval.eval_loss
    only = load_file(str(tmp_path / "train-only" / "run" / "adapter" / "adapter_model.safetensors"))
    evaluated = load_file(str(tmp_path / "eval-every-2" / "run" / "adapter" / "adapter_model.safetensors"))
    assert only.keys() == evaluated.keys()
    for key in only:
        assert torch.equal(only[key], evaluated[key]), key
