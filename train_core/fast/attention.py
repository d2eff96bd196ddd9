"""Causal attention over packed samples without padding: samples of one length batched through SDPA, else torch's
varlen flash attention, else SDPA per sample.

q is (tokens, heads, head_dim) and k, v are (tokens, kv_heads, head_dim), exactly as the fused QKV
projection lays them out, so no transposes or copies are needed on the varlen path. When every sample of a
micro-batch has the same length (rows cut to the sequence length, one sample each), they are one batched SDPA call
instead: on Hopper SDPA takes cuDNN's kernel there, 27 ms against varlen flash attention's 47 ms forward and
backward in a Qwen2-1.5B step (docs/BENCHMARKS.md, round 15). The first CUDA
call probes which form of varlen attention this torch build accepts (native grouped-query heads, or
K/V repeated to the query heads), forward and backward against SDPA, and keeps it; without one, each
sample goes through SDPA. A sliding window lets a query see its `window` latest keys (itself included),
as Hugging Face's sliding masks do. Soft-capped scores (Gemma 2) have no flash kernel here: those layers
compute their scores per sample.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from train_core.fast.batch import PackedBatch


@dataclass(frozen=True)
class AttentionShape:
    """What varies between layers and architectures: the window, the softmax scale and the score cap."""

    window: int | None = None
    scale: float | None = None  # None = head_dim ** -0.5
    softcap: float | None = None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, shape: AttentionShape = AttentionShape()) -> torch.Tensor:
    """(tokens, heads, head_dim) causal attention within each sample."""
    window = shape.window if shape.window is not None and shape.window < batch.max_length else None
    if q.is_cuda and shape.softcap is None:
        if window is None and equal_lengths(batch.lengths):
            return sdpa_per_sample(q, k, v, batch.lengths, AttentionShape(scale=shape.scale))
        varlen = varlen_backend(q.device)
        if varlen is not None and (window is None or varlen.windows):
            return varlen(q, k, v, batch.cu_seqlens, batch.max_length, window, shape.scale)
    return sdpa_per_sample(q, k, v, batch.lengths, AttentionShape(window, shape.scale, shape.softcap))


def equal_lengths(lengths: list[int]) -> bool:
    """Whether the samples are one run of equal lengths (one batched attention call); a captured batch whose
    boundaries change between replays has no lengths."""
    return bool(lengths) and lengths.count(lengths[0]) == len(lengths)


def sdpa_per_sample(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], shape: AttentionShape = AttentionShape()) -> torch.Tensor:
    """Reference path: one causal attention call per run of equal-length samples."""
    outputs, start, index = [], 0, 0
    while index < len(lengths):
        length, count = lengths[index], 1
        while index + count < len(lengths) and lengths[index + count] == length:
            count += 1
        end = start + length * count
        view = [t[start:end].view(count, length, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v)]
        out = _causal(*view, shape)
        outputs.append(out.transpose(1, 2).reshape(end - start, q.shape[1], q.shape[2]))
        start, index = end, index + count
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: AttentionShape) -> torch.Tensor:
    """(batch, heads, length, head_dim) causal attention of equal-length samples."""
    length = q.shape[2]
    window = shape.window if shape.window is not None and shape.window < length else None
    if shape.softcap is None and window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=shape.scale, enable_gqa=q.shape[1] != k.shape[1])
    rows = torch.arange(length, device=q.device)
    distance = rows[:, None] - rows[None, :]
    allowed = (distance >= 0) & (distance < window if window is not None else True)
    if shape.softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=shape.scale, enable_gqa=q.shape[1] != k.shape[1])
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * (shape.scale if shape.scale is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / shape.softcap) * shape.softcap
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).to(q.dtype)
    return weights @ v


class Varlen:
    """A varlen attention call; `windows` says whether it takes sliding windows."""

    def __init__(self, call: Callable, windows: bool) -> None:
        self.call, self.windows = call, windows

    def __call__(self, q, k, v, cu_seqlens, max_length: int, window: int | None = None, scale: float | None = None):
        return self.call(q, k, v, cu_seqlens, max_length, window, scale)


@functools.lru_cache(maxsize=None)
def varlen_backend(device: torch.device) -> Varlen | None:
    """The first varlen form that runs forward and backward here and matches SDPA, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    windows = "window_size" in parameters
    takes_scale = "scale" in parameters
    native_gqa = {"enable_gqa": True} if "enable_gqa" in parameters else {}

    def options(window: int | None, scale: float | None) -> dict:
        extra = {"scale": scale} if scale is not None else {}
        if window is not None or windows:
            return {"window_size": (window - 1 if window is not None else -1, 0), **extra}
        return {"is_causal": True, **extra}

    def scaled(q: torch.Tensor, scale: float | None) -> tuple[torch.Tensor, float | None]:
        """Without a scale argument, fold the scale into q."""
        if scale is None or takes_scale:
            return q, scale
        return q * (scale * q.shape[-1] ** 0.5), None

    def native(q, k, v, cu_seqlens, max_length, window, scale):
        q, scale = scaled(q, scale)
        extra = native_gqa if k.shape[1] != q.shape[1] else {}
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, **options(window, scale), **extra)

    def repeated(q, k, v, cu_seqlens, max_length, window, scale):
        q, scale = scaled(q, scale)
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, **options(window, scale))

    for candidate in (Varlen(native, False), Varlen(repeated, False)):
        if _probe(candidate, device, AttentionShape(scale=0.1)):
            candidate.windows = windows and _probe(candidate, device, AttentionShape(window=32, scale=0.1))
            return candidate
    return None


def _probe(candidate: Varlen, device: torch.device, shape: AttentionShape) -> bool:
    """Whether `candidate` runs forward and backward on two samples and matches SDPA in float32 on both."""
    generator = torch.Generator(device=device).manual_seed(0)
    lengths = [48, 80]

    def leaf(heads: int) -> torch.Tensor:
        return torch.randn(128, heads, 64, device=device, dtype=torch.bfloat16, generator=generator).requires_grad_()

    q, k, v = leaf(4), leaf(2), leaf(2)
    weights = torch.randn(128, 4, 64, device=device, generator=generator)
    cu = torch.tensor([0, 48, 128], dtype=torch.int32, device=device)
    with torch.enable_grad():  # a first call may come from a forward without grad
        try:
            out = candidate(q, k, v, cu, max(lengths), shape.window, shape.scale)
            (out.float() * weights).sum().backward()
        except (RuntimeError, ValueError, TypeError, NotImplementedError):
            return False
        references = [t.detach().float().requires_grad_() for t in (q, k, v)]
        reference = sdpa_per_sample(*references, lengths, shape)
        (reference * weights).sum().backward()
    pairs = [(out, reference)] + [(t.grad, r.grad) for t, r in zip((q, k, v), references)]
    return all(got is not None and _relative_error(got, want) < 2e-2 for got, want in pairs)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().float() - want.detach()).norm() / want.detach().norm().clamp_min(1e-12))
