"""Runs one attempt of a trial as a Ray Train TorchTrainer around the node-side worker function.

Controller side: `RayRunner.start(payload)` calls `TorchTrainer.fit()` on a thread; progress (metrics,
checkpoints, logs, the final status) flows back through one `ProgressSink` actor that the controller drains.
What each worker runs is cluster/node/worker.py's `train_worker`. Ray Train never retries (max_failures=0):
the controller owns recovery, and resume always starts from the committed `checkpoints/latest` in storage,
never from Ray's bookkeeping.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import ray

from cluster.node.agent import agent_from_env
from cluster.node.worker import AttemptPayload, train_worker


@ray.remote(num_cpus=0)
class ProgressSink:
    """A mailbox: workers put records, the controller drains them."""

    def __init__(self) -> None:
        self._records: list[dict] = []

    def put(self, record: dict) -> None:
        self._records.append(record)

    def drain(self) -> list[dict]:
        records, self._records = self._records, []
        return records


def file_rendezvous_config(path: Path):
    """A TorchConfig whose process group meets through a file (torch's FileStore) instead of Ray Train's
    default TCPStore, which torch binds to every interface and serves without authentication. Only for
    workers that share a file system: those of one machine (the local provider's nodes)."""
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
    """Run one attempt's TorchTrainer to the end; raises what fit() raises when the attempt fails."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = ScalingConfig(
        num_workers=payload.workers, use_gpu=payload.use_gpu,
        resources_per_worker=None if payload.use_gpu else {"CPU": 1},
    )
    local_node = agent_from_env(payload.node_env) is not None
    trainer = TorchTrainer(
        functools.partial(train_worker, payload), scaling_config=scaling,
        torch_config=file_rendezvous_config(Path(payload.work_dir) / "torch-rendezvous") if local_node else None,
        run_config=RunConfig(
            name=payload.name, storage_path=payload.ray_storage, failure_config=FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()


def describe_failure(error: BaseException) -> str:
    """One line for a failed fit: the first worker's exception when there is one."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, failure = sorted(failures.items())[0]
        cause = getattr(failure, "cause", None) or failure
        lines = [line for line in str(cause).splitlines() if line.strip()]
        return f"rank {rank}: {type(cause).__name__}: {lines[-1] if lines else ''}"
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


@dataclass
class AttemptHandle:
    name: str
    outcome: dict = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


class RayRunner:
    """Starts attempts on the Ray instance the provider brought up, and relays their progress.

    Each attempt's `fit()` blocks, so it runs on its own thread of the controller (Ray Train supports
    driving trainers from threads); its TrainController and workers are Ray actors. An attempt is stopped
    by its provider killing the node's processes, which makes `fit()` fail and the thread end.
    """

    def __init__(self) -> None:
        self.sink = ProgressSink.remote()

    def start(self, payload: AttemptPayload) -> AttemptHandle:
        handle = AttemptHandle(payload.name)
        threading.Thread(target=self._fit, args=(handle, dataclasses.replace(payload, sink=self.sink)),
                         name=handle.name, daemon=True).start()
        return handle

    @staticmethod
    def _fit(handle: AttemptHandle, payload: AttemptPayload) -> None:
        try:
            fit_attempt(payload)
            handle.outcome.update(ok=True)
        except Exception as error:
            handle.outcome.update(ok=False, error=describe_failure(error))
        finally:
            handle.done.set()

    def finished(self, handle: AttemptHandle) -> dict | None:
        """The attempt's outcome once fit() returned; None while it runs."""
        return dict(handle.outcome) if handle.done.is_set() else None

    def drain(self) -> list[dict]:
        return ray.get(self.sink.drain.remote())
