"""Runs one attempt as a Ray Train TorchTrainer around cluster/node/worker.py's `train_worker`, on the node's Ray.

Ray Train never retries (max_failures=0): the controller owns recovery, and a relaunched attempt resumes from the
committed `checkpoints/latest` in storage, never from Ray's bookkeeping.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from cluster.node.agent import NODE_DIR_ENV
from cluster.node.payload import AttemptPayload


def file_rendezvous_config(path: Path):
    """A TorchConfig whose process group meets through a file (torch's FileStore) instead of Ray Train's
    default TCPStore, which torch binds to every interface and serves without authentication. Only for
    workers that share a file system: those of one machine (the local provider's nodes)."""
    import ray
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

    class FileRendezvousBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config) -> None:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([
                worker_group.execute_single_async(
                    rank, _setup_torch_process_group, backend="nccl" if gpus > 0 else "gloo", world_rank=rank,
                    world_size=len(worker_group), init_method=backend_config.init_method,
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(len(worker_group))
            ])

    class FileRendezvousConfig(TorchConfig):
        @property
        def backend_cls(self):
            return FileRendezvousBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return FileRendezvousConfig(init_method=f"file://{path}")


def fit_attempt(payload: AttemptPayload) -> None:
    """Run the attempt's TorchTrainer to the end; raises what fit() raises when the attempt fails."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.node.worker import train_worker

    node_dir = Path(os.environ[NODE_DIR_ENV])
    scaling = ScalingConfig(
        num_workers=payload.workers, use_gpu=payload.use_gpu,
        resources_per_worker=None if payload.use_gpu else {"CPU": 1},
    )
    shared_files = payload.provider == "local"  # every node of a local attempt is this machine
    trainer = TorchTrainer(
        functools.partial(train_worker, payload), scaling_config=scaling,
        torch_config=file_rendezvous_config(node_dir / "torch-rendezvous") if shared_files else None,
        run_config=RunConfig(
            name=payload.name, storage_path=str(node_dir / "ray_results"),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()


def describe_failure(error: BaseException) -> str:
    """One line for a failed attempt: the first worker's exception when there is one."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, failure = sorted(failures.items())[0]
        cause = getattr(failure, "cause", None) or failure
        lines = [line for line in str(cause).splitlines() if line.strip()]
        return f"rank {rank}: {type(cause).__name__}: {lines[-1] if lines else ''}"
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"
