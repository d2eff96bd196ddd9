"""The few collective operations the loop needs; a no-op when torch.distributed is not initialised.

Whoever starts the workers (Ray Train's TorchTrainer, torchrun) initialises the process group;
train_core only uses it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int

    @classmethod
    def from_environment(cls) -> "Distributed":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls(0, 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @staticmethod
    def _collective_device() -> torch.device:
        """NCCL reduces only CUDA tensors; gloo takes CPU tensors."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return tensor
        on_device = tensor.to(self._collective_device())
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        return on_device.to(tensor.device)

    def all_reduce_in_place(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` (the flat gradient) over workers in place; the loss is already divided by the global target
        count."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def any_true(self, flag: bool) -> bool:
        if not self.active:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def gather_objects(self, item: object) -> list:
        if not self.active:
            return [item]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, item)
        return gathered

    def barrier(self) -> None:
        if self.active:
            dist.barrier()
