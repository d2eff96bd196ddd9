"""Runs one attempt of a trial on a node as a Ray Train TorchTrainer around train_core's loop.

Controller side: `RayRunner.start(payload)` calls `TorchTrainer.fit()` on a thread; progress (metrics,
checkpoints, logs, the final status) flows back through one `ProgressSink` actor that the controller drains.
Worker side: `train_worker` builds the trial's store (file:// or s3://), registers with the node's agent,
and runs train_core's Trainer with hooks; train_core all-reduces gradients itself when Ray has initialised
torch.distributed (gloo on CPU), so the model is not wrapped in DDP here. Ray Train never retries
(max_failures=0): the controller owns recovery, and resume always starts from the committed
`checkpoints/latest` in storage, never from Ray's bookkeeping.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from cluster.node_agent import LocalNodeAgent, agent_from_env

DEFAULT_SAVE_SECONDS = 5.0
SAVE_SAFETY = 1.5
SAVE_MARGIN_S = 1.0


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


class NoticeGuard:
    """Decides, after each step, whether to write an emergency checkpoint and stop because of a notice."""

    def __init__(self, agent: LocalNodeAgent | None, log) -> None:
        self.agent = agent
        self.log = log
        self.save_seconds: float | None = None
        self._asked_at: float | None = None
        self._told = False

    def stop_requested(self) -> bool:
        now = time.time()
        self._asked_at = now
        deadline = self.agent.notice_deadline() if self.agent is not None else None
        if deadline is None:
            return False
        left = deadline - now
        need = (self.save_seconds if self.save_seconds is not None else DEFAULT_SAVE_SECONDS) * SAVE_SAFETY
        need += SAVE_MARGIN_S
        if not self._told:
            self._told = True
            if left >= need:
                self.log(f"preemption notice: {left:.1f} s left, a checkpoint takes ~{need:.1f} s: saving and stopping")
            else:
                self.log(f"preemption notice: {left:.1f} s left, a checkpoint needs ~{need:.1f} s: "
                         "too late to save, training on until the node is reclaimed")
        return left >= need

    def checkpoint_written(self) -> None:
        if self._asked_at is not None:
            self.save_seconds = time.time() - self._asked_at


def train_worker(payload: dict) -> None:
    """The per-worker training function that Ray Train runs on every rank."""
    import ray.train

    from cluster.faults import FlakyStore
    from cluster.storage import RetryingStore, open_store
    from runspec.config import TrainConfig
    from train_core.trainer import Trainer, TrainHooks

    rank = ray.train.get_context().get_world_rank()
    agent = agent_from_env(payload["node_env"])
    if agent is not None:
        agent.register(f"rank-{rank}")
    sink = payload["sink"]
    tag = {"trial": payload["trial_id"], "attempt": payload["attempt"]}

    def send(kind: str, wait: bool = False, **data: Any) -> None:
        if rank != 0:
            return
        reference = sink.put.remote({**tag, "kind": kind, "time": time.time(), **data})
        if wait:
            ray.get(reference)

    def log(line: str) -> None:
        send("log", line=line)

    send("started", world_size=ray.train.get_context().get_world_size())
    def on_outage(error: str | None) -> None:
        send("storage_outage", wait=True, error=error)

    store = RetryingStore(open_store(payload["storage"], payload.get("storage_endpoint")), on_outage=on_outage)
    if payload.get("storage_fault") is not None:
        store = FlakyStore(store, payload["storage_fault"]["step"], payload["storage_fault"]["kind"])
    guard = NoticeGuard(agent, log)

    def on_metrics(record: dict) -> None:
        if "loss" in record:
            if agent is not None and rank == 0:
                agent.beat(record["step"])
            send("metrics", step=record["step"], total_steps=record["total_steps"], loss=record["loss"],
                 lr=record["lr"], step_seconds=record["step_seconds"],
                 peak_memory_gib=record.get("peak_reserved_gib", record.get("peak_rss_gib")))
        elif "eval_loss" in record:
            send("eval", step=record["step"], eval_loss=record["eval_loss"])

    def on_checkpoint(step: int) -> None:
        guard.checkpoint_written()
        send("checkpoint", step=step, save_seconds=guard.save_seconds)

    def on_checkpoint_skipped(step: int, skipped: list[str]) -> None:
        send("checkpoint_skipped", wait=True, step=step, skipped=skipped)

    config = TrainConfig.model_validate(payload["config"])
    hooks = TrainHooks(on_metrics=on_metrics, on_checkpoint=on_checkpoint, stop_requested=guard.stop_requested,
                       on_checkpoint_skipped=on_checkpoint_skipped)
    work_dir = Path(payload["work_dir"]) / f"rank-{rank}"
    try:
        result = Trainer(config, store=store, work_dir=work_dir, hooks=hooks, log=log).run(resume=True)
    except Exception as error:
        send("log", wait=True, line=f"error: {type(error).__name__}: {error}")
        raise
    send("finished", wait=True, status=result.status, step=result.step, total_steps=result.total_steps,
         train_loss=result.train_loss, eval_loss=result.eval_loss, resumed_from=result.resumed_from)


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


def fit_attempt(payload: dict) -> None:
    """Run one attempt's TorchTrainer to the end; raises what fit() raises when the attempt fails."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = ScalingConfig(
        num_workers=payload["workers"], use_gpu=payload["use_gpu"],
        resources_per_worker=None if payload["use_gpu"] else {"CPU": 1},
    )
    local_node = agent_from_env(payload["node_env"]) is not None
    trainer = TorchTrainer(
        train_worker, train_loop_config=payload, scaling_config=scaling,
        torch_config=file_rendezvous_config(Path(payload["work_dir"]) / "torch-rendezvous") if local_node else None,
        run_config=RunConfig(
            name=f"{payload['trial_id']}-a{payload['attempt']}", storage_path=payload["ray_storage"],
            failure_config=FailureConfig(max_failures=0),
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

    def start(self, payload: dict) -> AttemptHandle:
        handle = AttemptHandle(f"{payload['trial_id']}-a{payload['attempt']}")
        threading.Thread(target=self._fit, args=(handle, {**payload, "sink": self.sink}), name=handle.name,
                         daemon=True).start()
        return handle

    @staticmethod
    def _fit(handle: AttemptHandle, payload: dict) -> None:
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
