"""The trainable tensors as views into one flat buffer, so that the gradient all-reduce, clipping and the optimizer
step each run over one tensor: one launch each instead of one (or several) per adapter matrix.

Each tensor's slice starts on a multiple of `ALIGN` elements (bitsandbytes' 8-bit optimizers quantize their state in
blocks of 256), so no quantization block spans two tensors and the padding between them stays zero.
"""
from __future__ import annotations

import torch

ALIGN = 256


def padded(count: int, align: int = ALIGN) -> int:
    return -(-count // align) * align


class FlatParameters:
    """`parameters` re-homed into one buffer; `parameter` is what the optimizer steps."""

    def __init__(self, parameters: list[torch.nn.Parameter], align: int = ALIGN) -> None:
        if not parameters:
            raise ValueError("no trainable parameters to flatten")
        kinds = {(p.dtype, p.device) for p in parameters}
        if len(kinds) != 1:
            raise ValueError(f"trainable parameters differ in dtype or device: {sorted(map(str, kinds))}")
        dtype, device = kinds.pop()
        self.tensors = list(parameters)
        self.offsets: list[int] = []
        zeros = torch.zeros(align, dtype=dtype, device=device)
        self._gaps: list[torch.Tensor | None] = []  # the zeros after each tensor up to the next aligned slice
        total = 0
        for tensor in self.tensors:
            self.offsets.append(total)
            size = padded(tensor.numel(), align)
            self._gaps.append(zeros[: size - tensor.numel()] if size > tensor.numel() else None)
            total += size
        self.parameter = torch.nn.Parameter(torch.zeros(total, dtype=dtype, device=device))
        with torch.no_grad():
            for tensor, offset in zip(self.tensors, self.offsets):
                view = self.parameter.data[offset : offset + tensor.numel()].view_as(tensor)
                view.copy_(tensor.data)
                tensor.data = view

    def gather_grads(self) -> torch.Tensor:
        """Move every tensor's gradient into the flat gradient (one copy; a tensor without one counts as zero),
        leave the tensors without gradients, and return the flat gradient. It is made here, not kept between steps,
        so backward's peak holds one copy of the gradients, as before the flat buffer."""
        pieces: list[torch.Tensor] = []
        for tensor, gap in zip(self.tensors, self._gaps):
            pieces.append(tensor.grad.reshape(-1) if tensor.grad is not None else torch.zeros_like(tensor).reshape(-1))
            if gap is not None:
                pieces.append(gap)
        self.parameter.grad = torch.cat(pieces)
        for tensor in self.tensors:
            tensor.grad = None
        return self.parameter.grad

    def drop_grads(self) -> None:
        """Forget every gradient (after a failed step)."""
        for tensor in self.tensors:
            tensor.grad = None
        self.parameter.grad = None
