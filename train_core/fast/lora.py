"""Frozen NF4 projections with LoRA adapters, stacked by shared input, and their hand-written gradients.

A group (q|k|v, or gate|up, or a single projection) is dequantized with each adapter merged in
(W + s * B @ A) into one reused buffer, so its forward is a single GEMM. Backward re-dequantizes that
buffer for dX and computes the adapters' gradients with thin GEMMs, never a gradient for the frozen
base: xa = x @ A^T and u = dY @ B (rank-wide), then dA = s * u^T @ x and dB = s * dY^T @ xa.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from train_core.fast.nf4 import NF4Weight


class DequantBuffers:
    """One growing scratch buffer per (device, slot) that merged weights are written into and read from once."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, int], torch.Tensor] = {}

    def get(self, device: torch.device, slot: int, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        numel = shape[0] * shape[1]
        key = (device, slot)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        self._buffers.clear()


BUFFERS = DequantBuffers()


@dataclass
class LoRAGroup:
    """Projections reading the same input: NF4 bases stacked along the output, each with an optional adapter."""

    bases: list[NF4Weight]
    adapted: list[bool]  # which projections carry a LoRA pair (their A, B come in `params` order)
    scale: float
    bias: torch.Tensor | None = None  # concatenated output bias, frozen
    dtype: torch.dtype = torch.bfloat16
    kept: torch.Tensor | None = None  # the merged weight kept between optimizer steps (train_core.fast.merged_weights)
    out_features: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.out_features = [base.shape[0] for base in self.bases]

    @property
    def shape(self) -> tuple[int, int]:
        return sum(self.out_features), self.bases[0].shape[1]

    def merged_weight(self, params: tuple[torch.Tensor, ...], slot: int) -> torch.Tensor:
        """W + s * B @ A for every projection, stacked: the kept one when there is one, else dequantized into the
        reused buffer `slot` (valid until it is reused)."""
        if self.kept is not None:
            return self.kept
        return self.merge_into(BUFFERS.get(self.bases[0].packed.device, slot, self.shape, self.dtype), params)

    def merge_into(self, out: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Dequantize every projection with its adapter merged into `out` (shape `self.shape`)."""
        row, pair = 0, iter(_pairs(params))
        for base, adapted in zip(self.bases, self.adapted):
            a, b = next(pair) if adapted else (None, None)
            base.dequantize_into(out[row : row + base.shape[0]], a, b, self.scale)
            row += base.shape[0]
        return out

    def project(self, x: torch.Tensor, params: tuple[torch.Tensor, ...], residual: torch.Tensor | None, slot: int) -> torch.Tensor:
        """x @ merged^T (+ bias) (+ residual)."""
        weight = self.merged_weight(params, slot)
        add = residual if residual is not None else self.bias
        if add is None:
            return x @ weight.t()
        if residual is not None and self.bias is not None:
            return torch.addmm(residual + self.bias, x, weight.t())
        return torch.addmm(add, x, weight.t())

    def backward(
        self, x: torch.Tensor, grad: torch.Tensor, params: tuple[torch.Tensor, ...], need_input: bool, slot: int,
        grad_input_out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(dL/dx or None, gradients of the adapters in `params` order, fp32)."""
        grads = self.adapter_grads(x, grad, params) if params else []
        grad_input = None
        if need_input:
            weight = self.merged_weight(params, slot)
            grad_input = torch.mm(grad, weight, out=grad_input_out) if grad_input_out is not None else grad @ weight
        return grad_input, grads

    def adapter_grads(self, x: torch.Tensor, grad: torch.Tensor, params: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        pairs = _pairs(params)
        rank = pairs[0][0].shape[0]
        a_cat = torch.cat([a.to(x.dtype) for a, _ in pairs]) if len(pairs) > 1 else pairs[0][0].to(x.dtype)
        xa = x @ a_cat.t()  # (N, k*r)
        slices = [s for s, adapted in zip(self._row_slices(), self.adapted) if adapted]
        grads: list[torch.Tensor] = []
        u = torch.cat([grad[:, rows] @ b.to(grad.dtype) for rows, (_, b) in zip(slices, pairs)], dim=1)
        grad_a = scaled_fp32_product(u.t(), x, self.scale)  # (k*r, in)
        for index, (rows, _) in enumerate(zip(slices, pairs)):
            block = slice(index * rank, (index + 1) * rank)
            grads.append(grad_a[block])
            grads.append(scaled_fp32_product(grad[:, rows].t(), xa[:, block], self.scale))
        return grads

    def _row_slices(self) -> list[slice]:
        slices, row = [], 0
        for width in self.out_features:
            slices.append(slice(row, row + width))
            row += width
        return slices


def scaled_fp32_product(left: torch.Tensor, right: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * left @ right in fp32: where the build has it, one GEMM that accumulates and writes fp32 from bf16
    operands, instead of a bf16 product, an fp32 copy and a scaling pass."""
    if left.dtype != torch.float32 and fp32_output_gemm(left.device, left.dtype):
        out = torch.empty(left.shape[0], right.shape[1], dtype=torch.float32, device=left.device)
        return torch.addmm(out, left, right, out_dtype=torch.float32, beta=0, alpha=scale, out=out)
    return (left @ right).float().mul_(scale)


@functools.lru_cache(maxsize=None)
def fp32_output_gemm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether addmm takes `out_dtype=float32` for `dtype` operands on this device (CUDA builds of recent torch) and
    agrees with an fp32 product; probed once."""
    if device.type != "cuda":
        return False
    generator = torch.Generator(device=device).manual_seed(0)
    left = torch.randn(96, 48, device=device, generator=generator).to(dtype).t()  # transposed, as adapter_grads passes it
    right = torch.randn(96, 40, device=device, generator=generator).to(dtype)
    out = torch.empty(48, 40, dtype=torch.float32, device=device)
    try:
        torch.addmm(out, left, right, out_dtype=torch.float32, beta=0, alpha=0.5, out=out)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return bool(torch.allclose(out, 0.5 * (left.float() @ right.float()), rtol=1e-3, atol=1e-3))


def _pairs(params: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(params[i], params[i + 1]) for i in range(0, len(params), 2)]


class LoRALinear(torch.autograd.Function):
    """y = x @ merged^T (+ bias) (+ residual); saves only x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, residual: torch.Tensor | None, group: LoRAGroup, *params: torch.Tensor) -> torch.Tensor:
        ctx.group = group
        ctx.has_residual = residual is not None
        ctx.save_for_backward(x, *params)
        return group.project(x, params, residual, slot=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *params = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x, grads = ctx.group.backward(x, grad, tuple(params), ctx.needs_input_grad[0], slot=0)
        return (grad_x, grad if ctx.has_residual else None, None, *grads)


def lora_linear(x: torch.Tensor, group: LoRAGroup, params: tuple[torch.Tensor, ...], residual: torch.Tensor | None = None) -> torch.Tensor:
    return LoRALinear.apply(x, residual, group, *params)
