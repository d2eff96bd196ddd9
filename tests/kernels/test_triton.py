"""Each Triton kernel against its PyTorch reference on random CUDA inputs (bf16 tolerances)."""
from __future__ import annotations

import pytest
import torch

from train_core.fast.nf4 import quantize_nf4
from train_core.kernels import cross_entropy, geglu, rms_norm, rope, swiglu

pytestmark = pytest.mark.cuda
BF16 = dict(rtol=2e-2, atol=2e-2)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-12))


@pytest.fixture
def kernels(monkeypatch):
    """Switch between the Triton kernels and the references inside one test."""

    def use(mode: str) -> None:
        monkeypatch.setenv("SPOTTUNE_KERNELS", mode)

    return use


@pytest.mark.parametrize("rows,cols,rank", [(64, 128, 16), (1536, 1536, 16), (300, 8960, 8), (17, 320, 0)])
def test_nf4_dequant_with_lora_merge(kernels, rows, cols, rank):
    weight = torch.randn(rows, cols, device="cuda") * 0.02
    nf4 = quantize_nf4(weight.to(torch.bfloat16))
    lora = (torch.randn(rank, cols, device="cuda"), torch.randn(rows, rank, device="cuda") * 0.01) if rank else (None, None)
    outputs = {}
    for mode in ("triton", "reference"):
        kernels(mode)
        out = torch.full((rows, cols), float("nan"), dtype=torch.bfloat16, device="cuda")
        outputs[mode] = nf4.dequantize_into(out, *lora, 2.0)
    assert not outputs["triton"].isnan().any()
    torch.testing.assert_close(outputs["triton"], outputs["reference"], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("unit_offset", [False, True])
@pytest.mark.parametrize("rows,hidden", [(1, 64), (257, 1536), (1000, 4096), (33, 200), (4096, 256)])
def test_rms_norm_forward_backward(kernels, rows, hidden, unit_offset):
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16) * 3
    weight = (torch.rand(hidden, device="cuda") + 0.5).to(torch.bfloat16)
    grad = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    results = {}
    for mode in ("triton", "reference"):
        kernels(mode)
        leaf = x.clone().requires_grad_()
        out = rms_norm.rms_norm(leaf, weight, 1e-6, unit_offset)
        out.backward(grad)
        results[mode] = (out, leaf.grad)
    torch.testing.assert_close(results["triton"][0], results["reference"][0], **BF16)
    assert relative_error(results["triton"][1], results["reference"][1]) < 1e-2


@pytest.mark.parametrize("tokens,heads,head_dim", [(7, 3, 64), (4096, 14, 128), (513, 40, 128)])
def test_rope_forward_and_inverse(kernels, tokens, heads, head_dim):
    x = torch.randn(tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    positions = torch.randint(0, 8192, (tokens,), device="cuda", dtype=torch.int32)
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    results = {}
    for mode in ("triton", "reference"):
        kernels(mode)
        forward = rope.apply_rope(x, torch.full_like(x, float("nan")), positions, inv_freq)
        inverse = rope.apply_rope(x, torch.full_like(x, float("nan")), positions, inv_freq, inverse=True)
        in_place = x.clone()
        rope.apply_rope(in_place, in_place, positions, inv_freq)
        results[mode] = (forward, inverse, in_place)
    for got, expected in zip(results["triton"], results["reference"]):
        assert relative_error(got, expected) < 1e-2
    reference = x.float().requires_grad_()
    grad = torch.randn_like(reference)
    rope.rope_reference(reference, positions, inv_freq).backward(grad)
    kernels("triton")
    backward = rope.apply_rope(grad.to(torch.bfloat16), torch.empty_like(x), positions, inv_freq, inverse=True)
    assert relative_error(backward, reference.grad) < 1e-2


@pytest.mark.parametrize("tokens,inter", [(5, 176), (2048, 8960), (300, 14336)])
def test_swiglu_forward_backward(kernels, tokens, inter):
    eg = torch.randn(tokens, 2 * inter, device="cuda", dtype=torch.bfloat16) * 2
    grad = torch.randn(tokens, inter, device="cuda", dtype=torch.bfloat16)
    results = {}
    for mode in ("triton", "reference"):
        kernels(mode)
        results[mode] = (swiglu.swiglu(eg), swiglu.swiglu_backward_(grad, eg.clone()))
    for got, expected in zip(results["triton"], results["reference"]):
        assert relative_error(got, expected) < 1e-2


@pytest.mark.parametrize("tokens,inter", [(5, 176), (2048, 9216), (300, 6912)])
def test_geglu_forward_backward(kernels, tokens, inter):
    eg = torch.randn(tokens, 2 * inter, device="cuda", dtype=torch.bfloat16) * 2
    grad = torch.randn(tokens, inter, device="cuda", dtype=torch.bfloat16)
    results = {}
    for mode in ("triton", "reference"):
        kernels(mode)
        results[mode] = (geglu.geglu(eg), geglu.geglu_backward_(grad, eg.clone()))
    for got, expected in zip(results["triton"], results["reference"]):
        assert relative_error(got, expected) < 1e-2


@pytest.mark.parametrize("rows,vocab,hidden,chunk,softcap", [
    (9, 1000, 64, 4, None), (600, 151936, 1536, 256, None), (300, 128256, 512, 512, None), (300, 256000, 512, 256, 30.0),
    (9, 1000, 64, 4, 2.0),
])
def test_fused_linear_cross_entropy(kernels, rows, vocab, hidden, chunk, softcap):
    h = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16) * 0.05
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    results = {}
    for mode in ("triton", "reference"):
        kernels(mode)
        leaf = h.clone().requires_grad_()
        loss = cross_entropy.linear_cross_entropy(leaf, weight, targets, chunk, softcap)
        (loss * 0.5).backward()
        results[mode] = (loss, leaf.grad)
    exact = cross_entropy.linear_cross_entropy_reference(h.float(), weight.float(), targets, softcap)
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(results["triton"][0], exact, rtol=2e-3, atol=1e-2)
    assert relative_error(results["triton"][1], results["reference"][1]) < 1e-2
