"""The Ray Train worker function: one rank of one attempt of a trial, running train_core's loop on a node.

`train_worker` builds the trial's store (file:// or s3://), registers with the node's agent, and runs
train_core's Trainer with hooks: metrics and checkpoints go back to the controller through the attempt's
progress sink, and a preemption notice stops training after an emergency checkpoint (cluster/node/preemption.py).
train_core all-reduces gradients itself when Ray has initialised torch.distributed (gloo on CPU), so the model is
not wrapped in DDP here. Resume always starts from the committed `checkpoints/latest` in storage.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cluster.node.agent import agent_from_env
from cluster.node.preemption import NoticeGuard
from cluster.providers.local_market import StorageFault
from runspec.config import TrainConfig


class RecordKind(StrEnum):
    """What rank 0 reports to the controller; each record is a dict with trial, attempt, kind, time and fields."""

    STARTED = "started"  # world_size
    METRICS = "metrics"  # step, total_steps, loss, lr, step_seconds, peak_memory_gib
    EVAL = "eval"  # step, eval_loss
    CHECKPOINT = "checkpoint"  # step, save_seconds
    CHECKPOINT_SKIPPED = "checkpoint_skipped"  # step (resumed from), skipped
    STORAGE_OUTAGE = "storage_outage"  # error (None: storage is back)
    LOG = "log"  # line
    FINISHED = "finished"  # status, step, total_steps, train_loss, eval_loss, resumed_from


@dataclass(frozen=True)
class AttemptPayload:
    """Everything a node's workers need to run one attempt, built once by the controller.

    It crosses one process boundary, to the Ray Train workers, pickled by Ray as it is: the config arrives as
    the TrainConfig the controller built and is not validated again.
    """

    run_id: str
    trial_id: str
    attempt: int
    config: TrainConfig  # the attempt's full config, its output_dir the trial's storage prefix
    storage: str  # the trial's storage prefix (file:// or s3://)
    storage_endpoint: str | None
    node_env: dict[str, str]  # what the workers need to find their node's agent (Node.env)
    workers: int
    use_gpu: bool
    storage_fault: dict | None  # the local market's simulated storage fault for this attempt (Node.storage_fault)
    work_dir: str
    ray_storage: str
    sink: Any = field(default=None, compare=False)  # the controller's progress mailbox (a Ray actor handle)

    @property
    def name(self) -> str:
        return f"{self.trial_id}-a{self.attempt}"


def train_worker(payload: AttemptPayload) -> None:
    """The per-worker training function that Ray Train runs on every rank."""
    import ray.train

    from cluster.faults import FlakyStore
    from cluster.storage import RetryingStore, open_store
    from train_core.trainer import Trainer, TrainHooks

    rank = ray.train.get_context().get_world_rank()
    agent = agent_from_env(payload.node_env)
    if agent is not None:
        agent.register(f"rank-{rank}")
    tag = {"trial": payload.trial_id, "attempt": payload.attempt}

    def send(kind: RecordKind, wait: bool = False, **data: Any) -> None:
        if rank != 0:
            return
        reference = payload.sink.put.remote({**tag, "kind": kind, "time": time.time(), **data})
        if wait:
            ray.get(reference)

    def log(line: str) -> None:
        send(RecordKind.LOG, line=line)

    send(RecordKind.STARTED, world_size=ray.train.get_context().get_world_size())

    def on_outage(error: str | None) -> None:
        send(RecordKind.STORAGE_OUTAGE, wait=True, error=error)

    store = RetryingStore(open_store(payload.storage, payload.storage_endpoint), on_outage=on_outage)
    if payload.storage_fault is not None:
        fault = StorageFault.model_validate(payload.storage_fault)
        store = FlakyStore(store, fault.step, fault.kind)
    guard = NoticeGuard(agent, log)

    def on_metrics(record: dict) -> None:
        if "loss" in record:
            if agent is not None and rank == 0:
                agent.beat(record["step"])
            send(RecordKind.METRICS, step=record["step"], total_steps=record["total_steps"], loss=record["loss"],
                 lr=record["lr"], step_seconds=record["step_seconds"],
                 peak_memory_gib=record.get("peak_reserved_gib", record.get("peak_rss_gib")))
        elif "eval_loss" in record:
            send(RecordKind.EVAL, step=record["step"], eval_loss=record["eval_loss"])

    def on_checkpoint(step: int) -> None:
        guard.checkpoint_written()
        send(RecordKind.CHECKPOINT, step=step, save_seconds=guard.save_seconds)

    def on_checkpoint_skipped(step: int, skipped: list[str]) -> None:
        send(RecordKind.CHECKPOINT_SKIPPED, wait=True, step=step, skipped=skipped)

    hooks = TrainHooks(on_metrics=on_metrics, on_checkpoint=on_checkpoint, stop_requested=guard.stop_requested,
                       on_checkpoint_skipped=on_checkpoint_skipped)
    work_dir = Path(payload.work_dir) / f"rank-{rank}"
    try:
        result = Trainer(payload.config, store=store, work_dir=work_dir, hooks=hooks, log=log).run(resume=True)
    except Exception as error:
        send(RecordKind.LOG, wait=True, line=f"error: {type(error).__name__}: {error}")
        raise
    send(RecordKind.FINISHED, wait=True, status=result.status, step=result.step, total_steps=result.total_steps,
         train_loss=result.train_loss, eval_loss=result.eval_loss, resumed_from=result.resumed_from)
