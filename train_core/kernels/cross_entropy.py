"""Fused linear + cross-entropy over a frozen head: the full (tokens, vocab) logits never exist.

Rows are taken a chunk at a time: the chunk's bf16 logits are computed by one GEMM, a kernel turns
them in place into per-row losses and softmax - onehot (the gradient of the logits), and one more GEMM
gives the chunk's gradient with respect to the hidden states. The gradient is therefore finished in the
forward; backward only scales it. Callers drop ignored positions before calling. With `softcap` the logits
are capped as cap * tanh(logits / cap) first (Gemma 2's final logit soft-capping).
"""
from __future__ import annotations

import functools

import torch

from train_core.kernels import use_triton


def linear_cross_entropy_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None
) -> torch.Tensor:
    """Sum over rows of cross-entropy(hidden @ weight.T, targets), logits materialised and upcast to fp32."""
    logits = (hidden @ weight.t()).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def cross_entropy_reference_(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    """Per-row loss (fp32); logits are overwritten with their gradient, softmax(z) - onehot(targets) where z are
    the (capped) logits, times the cap's slope 1 - tanh^2."""
    logits_f = logits.float()
    slope = None
    if softcap:
        capped = torch.tanh(logits_f / softcap)
        slope = 1 - capped * capped
        logits_f = capped * softcap
    lse = torch.logsumexp(logits_f, dim=-1)
    loss = lse - logits_f.gather(1, targets[:, None]).squeeze(1)
    grad = torch.exp(logits_f - lse[:, None])
    grad[torch.arange(len(targets), device=logits.device), targets] -= 1.0
    logits.copy_(grad if slope is None else grad * slope)
    return loss


def cross_entropy_(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    """Per-row loss of contiguous (rows, vocab) logits, which become the logits' gradient in place."""
    if not use_triton(logits):
        return cross_entropy_reference_(logits, targets, softcap)
    rows, vocab = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _kernel()[(rows,)](logits, targets, loss, vocab, softcap or 1.0, SOFTCAP=bool(softcap), BLOCK=4096, num_warps=8)
    return loss


class LinearCrossEntropy(torch.autograd.Function):
    """loss_sum = sum_i CE(hidden_i @ weight.T, target_i); gradient only for hidden (the head is frozen)."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, softcap: float | None
    ) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = hidden[rows] @ weight.t()
            total += cross_entropy_(logits, targets[rows], softcap).sum()
            if need_grad:
                torch.mm(logits, weight, out=grad_hidden[rows])
            del logits
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad.to(grad_hidden.dtype), None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, softcap: float | None = None
) -> torch.Tensor:
    """Summed token cross-entropy of (rows, hidden) states against a frozen (vocab, hidden) head."""
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, softcap)


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def cross_entropy_kernel(logits_ptr, targets_ptr, loss_ptr, vocab, cap, SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * vocab
        running_max = tl.full([], float("-inf"), tl.float32)
        running_sum = tl.zeros([], tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < vocab
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            if SOFTCAP:  # cap * tanh(x / cap)
                x = cap * (2.0 * tl.sigmoid(2.0 * x / cap) - 1.0)
            x = tl.where(mask, x, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        target = tl.load(targets_ptr + row)
        target_logit = tl.load(base + target).to(tl.float32)
        if SOFTCAP:
            target_logit = cap * (2.0 * tl.sigmoid(2.0 * target_logit / cap) - 1.0)
        tl.store(loss_ptr + row, lse - target_logit)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < vocab
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            if SOFTCAP:
                t = 2.0 * tl.sigmoid(2.0 * x / cap) - 1.0
                grad = (tl.exp(cap * t - lse) - tl.where(cols == target, 1.0, 0.0)) * (1.0 - t * t)
            else:
                grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)

    return cross_entropy_kernel
