"""Each kernel's plain-PyTorch reference against an independent computation (runs on CPU, no triton)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train_core.bitsandbytes_cpu import use_portable_cpu_dequantize
from train_core.fast.nf4 import dynamic_map, quantize_nf4
from train_core.kernels.cross_entropy import cross_entropy_reference_, linear_cross_entropy, linear_cross_entropy_reference
from train_core.kernels.nf4_dequant import dequantize_reference
from train_core.kernels.geglu import geglu_backward_reference, geglu_reference
from train_core.kernels.rms_norm import rms_norm_reference
from train_core.kernels.rope import rope_reference
from train_core.kernels.swiglu import swiglu_backward_reference, swiglu_reference


FP32 = dict(rtol=1e-4, atol=1e-5)  # references compute in fp32 even for fp64 inputs


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("SPOTTUNE_KERNELS", "reference")
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", [(128, 64), (300, 192), (96, 1536), (64, 176)])
def test_nf4_quantization_matches_bitsandbytes(shape):
    bnb = pytest.importorskip("bitsandbytes.functional")
    use_portable_cpu_dequantize()  # the CPU path train_core runs; bitsandbytes' AVX512 kernel is wrong for 176 columns
    weight = (torch.randn(shape) * 0.02).to(torch.bfloat16)
    ours = quantize_nf4(weight)
    packed, state = bnb.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    assert torch.equal(torch.tensor(dynamic_map()), bnb.create_dynamic_map())
    assert torch.equal(ours.packed, packed.reshape(-1))
    torch.testing.assert_close(ours.offset.reshape(()), state.offset.reshape(()))
    torch.testing.assert_close(ours.absmax2, state.state2.absmax)
    # bitsandbytes' CPU search may pick the other neighbour at near-ties of the 8-bit absmax code
    differ = ours.absmax_q.int() - state.absmax.reshape(-1).int()
    assert differ.abs().max() <= 1 and (differ != 0).float().mean() < 0.02
    expected = bnb.dequantize_4bit(packed, state).float()
    got = ours.dequantize().float()
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    assert (got == expected).float().mean() > 0.97


def test_nf4_dequantization_with_merged_lora_is_base_plus_scaled_product():
    bnb = pytest.importorskip("bitsandbytes.functional")
    use_portable_cpu_dequantize()
    weight = torch.randn(48, 128) * 0.05
    nf4 = quantize_nf4(weight)
    packed, state = bnb.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    a, b = torch.randn(8, 128), torch.randn(48, 8)
    out = torch.empty(48, 128)
    dequantize_reference(nf4.packed, state.absmax, state.state2.absmax, state.state2.code, state.offset, out, a, b, 0.5)
    torch.testing.assert_close(out, bnb.dequantize_4bit(packed, state) + 0.5 * b @ a)


@pytest.mark.parametrize("rows,hidden", [(5, 64), (17, 200)])
def test_rms_norm_matches_transformers(rows, hidden):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(hidden, eps=1e-6).to(torch.bfloat16)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(rows, hidden).to(torch.bfloat16)
    torch.testing.assert_close(rms_norm_reference(x, norm.weight.detach(), 1e-6), norm(x).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_unit_offset_rms_norm_matches_gemma(dtype):
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

    norm = Gemma2RMSNorm(200, eps=1e-6).to(dtype)
    torch.nn.init.uniform_(norm.weight, -0.5, 0.5)
    x = (torch.randn(17, 200) * 3).to(dtype)
    torch.testing.assert_close(rms_norm_reference(x, norm.weight.detach(), 1e-6, unit_offset=True), norm(x).detach(), rtol=0, atol=0)


def test_geglu_reference_matches_transformers_gelu_tanh_and_its_gradient():
    from transformers.activations import ACT2FN

    eg = torch.randn(9, 2 * 40, dtype=torch.float64, requires_grad=True)
    e, g = eg.chunk(2, dim=-1)
    h = ACT2FN["gelu_pytorch_tanh"](e) * g
    grad = torch.randn_like(h)
    (expected,) = torch.autograd.grad(h, eg, grad)
    torch.testing.assert_close(geglu_reference(eg.detach()), h.detach(), **FP32)
    torch.testing.assert_close(geglu_backward_reference(grad, eg.detach().clone()), expected, **FP32)


def test_soft_capped_cross_entropy_reference_gives_loss_and_logit_gradient():
    logits = (torch.randn(6, 50, dtype=torch.float64) * 20).requires_grad_()
    targets = torch.randint(0, 50, (6,))
    loss = F.cross_entropy(torch.tanh(logits / 30.0) * 30.0, targets, reduction="none")
    (expected,) = torch.autograd.grad(loss.sum(), logits)
    buffer = logits.detach().clone()
    torch.testing.assert_close(cross_entropy_reference_(buffer, targets, softcap=30.0).double(), loss.detach(), **FP32)
    torch.testing.assert_close(buffer, expected, **FP32)


@pytest.mark.parametrize("heads,head_dim", [(3, 16), (5, 64)])
def test_rope_matches_transformers(heads, head_dim):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    tokens = 11
    positions = torch.randint(0, 500, (tokens,))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    x = torch.randn(tokens, heads, head_dim, dtype=torch.float64)
    freqs = positions.double()[:, None] * inv_freq.double()[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    q = x.transpose(0, 1)[None]  # (1, heads, tokens, dim)
    expected, _ = apply_rotary_pos_emb(q, q, emb.cos()[None], emb.sin()[None])
    got = rope_reference(x, positions, inv_freq)
    torch.testing.assert_close(got, expected[0].transpose(0, 1), rtol=1e-4, atol=1e-4)  # fp32 angles
    torch.testing.assert_close(rope_reference(got, positions, inv_freq, inverse=True), x, rtol=1e-5, atol=1e-5)


def test_swiglu_reference_and_its_gradient():
    eg = torch.randn(9, 2 * 40, dtype=torch.float64, requires_grad=True)
    e, g = eg.chunk(2, dim=-1)
    h = F.silu(e) * g
    grad = torch.randn_like(h)
    (expected,) = torch.autograd.grad(h, eg, grad)
    torch.testing.assert_close(swiglu_reference(eg.detach()), h.detach(), **FP32)
    torch.testing.assert_close(swiglu_backward_reference(grad, eg.detach().clone()), expected, **FP32)


def test_cross_entropy_reference_gives_loss_and_logit_gradient():
    logits = torch.randn(6, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (6,))
    loss = F.cross_entropy(logits, targets, reduction="none")
    (expected,) = torch.autograd.grad(loss.sum(), logits)
    buffer = logits.detach().clone()
    torch.testing.assert_close(cross_entropy_reference_(buffer, targets).double(), loss.detach(), **FP32)
    torch.testing.assert_close(buffer, expected, **FP32)


@pytest.mark.parametrize("chunk_rows", [3, 7, 64])
def test_fused_linear_cross_entropy_matches_full_logits(chunk_rows):
    hidden = torch.randn(20, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(70, 16, dtype=torch.float64)
    targets = torch.randint(0, 70, (20,))
    expected = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected * 0.3, hidden)
    got = linear_cross_entropy(hidden, weight, targets, chunk_rows)
    (got_grad,) = torch.autograd.grad(got * 0.3, hidden)
    torch.testing.assert_close(got.double(), expected, **FP32)
    torch.testing.assert_close(got_grad, expected_grad, **FP32)
    torch.testing.assert_close(linear_cross_entropy_reference(hidden, weight, targets).double(), expected, **FP32)
