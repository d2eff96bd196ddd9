"""Causal attention over packed samples without padding: torch's varlen flash attention, else SDPA per sample.

q is (tokens, heads, head_dim) and k, v are (tokens, kv_heads, head_dim), exactly as the fused QKV
projection lays them out, so no transposes or copies are needed on the varlen path. The first CUDA
call probes which form of varlen attention this torch build accepts (native grouped-query heads, or
K/V repeated to the query heads) and keeps it; without one, each sample goes through SDPA.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
import torch.nn.functional as F

from train_core.fast.batch import PackedBatch


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(tokens, heads, head_dim) causal attention within each sample."""
    if q.is_cuda:
        varlen = varlen_backend(q.device)
        if varlen is not None:
            return varlen(q, k, v, batch.cu_seqlens, batch.max_length)
    return sdpa_per_sample(q, k, v, batch.lengths)


def sdpa_per_sample(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Reference path: one causal SDPA call per run of equal-length samples."""
    outputs, start, index = [], 0, 0
    while index < len(lengths):
        length, count = lengths[index], 1
        while index + count < len(lengths) and lengths[index + count] == length:
            count += 1
        end = start + length * count
        view = [t[start:end].view(count, length, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*view, is_causal=True, enable_gqa=view[0].shape[1] != view[1].shape[1])
        outputs.append(out.transpose(1, 2).reshape(end - start, q.shape[1], q.shape[2]))
        start, index = end, index + count
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


Varlen = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@functools.lru_cache(maxsize=None)
def varlen_backend(device: torch.device) -> Varlen | None:
    """The first varlen form that runs forward and backward here and matches SDPA, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
    native_gqa = {"enable_gqa": True} if "enable_gqa" in parameters else {}

    def native(q, k, v, cu_seqlens, max_length):
        extra = native_gqa if k.shape[1] != q.shape[1] else {}
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, **causal, **extra)

    def repeated(q, k, v, cu_seqlens, max_length):
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, **causal)

    for candidate in (native, repeated):
        if _probe(candidate, device):
            return candidate
    return None


def _probe(candidate: Varlen, device: torch.device) -> bool:
    generator = torch.Generator(device=device).manual_seed(0)
    lengths = [48, 80]
    q = torch.randn(128, 4, 64, device=device, dtype=torch.bfloat16, generator=generator).requires_grad_()
    k = torch.randn(128, 2, 64, device=device, dtype=torch.bfloat16, generator=generator).requires_grad_()
    v = torch.randn(128, 2, 64, device=device, dtype=torch.bfloat16, generator=generator).requires_grad_()
    cu = torch.tensor([0, 48, 128], dtype=torch.int32, device=device)
    try:
        out = candidate(q, k, v, cu, max(lengths))
        out.float().square().sum().backward()
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False
    reference = sdpa_per_sample(q.detach().float(), k.detach().float(), v.detach().float(), lengths)
    return bool(torch.allclose(out.float(), reference, atol=2e-2, rtol=2e-2)) and q.grad is not None
