"""The Ray Train worker function: one rank of one attempt of a trial, running train_core's loop on a node.

`train_worker` builds the trial's store (file:// or s3://), registers with the node's agent, and runs
train_core's Trainer with hooks: rank 0 writes metrics, checkpoints and log lines to the attempt's channel in
storage (cluster/node/channel.py), where the controller reads them, and a preemption notice stops training after an
emergency checkpoint (cluster/node/preemption.py). train_core all-reduces gradients itself when Ray has initialised
torch.distributed (gloo on CPU, NCCL on GPUs), so the model is not wrapped in DDP here. Resume always starts from
the committed `checkpoints/latest` in storage.
"""
from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from cluster.node.agent import NODE_DIR_ENV, agent_from_env
from cluster.node.channel import AttemptChannel
from cluster.node.payload import AttemptPayload
from cluster.node.preemption import NoticeGuard
from cluster.providers.local_market import StorageFault

STORAGE_FAULT_ENV = "SPOTTUNE_STORAGE_FAULT"  # the local market's simulated storage fault for this node (JSON)
FLUSH_EVERY_S = 1.0


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


class RecordWriter:
    """Rank 0's records, written to the channel in batches: at once for those the controller acts on, else at most
    once a second. A batch that cannot be written (storage down) stays queued for the next flush."""

    def __init__(self, channel: AttemptChannel, tag: dict[str, Any]) -> None:
        self.channel = channel
        self.tag = tag
        self._queued: list[dict[str, Any]] = []
        self._sequence = 0
        self._flushed_at = 0.0

    def send(self, kind: RecordKind, urgent: bool = True, **data: Any) -> None:
        self._queued.append({**self.tag, "kind": kind, "time": time.time(), **data})
        if urgent or time.monotonic() - self._flushed_at >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> bool:
        """Write what is queued; False (and keep it) when storage refuses."""
        from cluster.storage import storage_errors

        if not self._queued:
            return True
        try:
            self.channel.append_records(self._sequence, self._queued)
        except storage_errors():
            return False
        self._sequence += 1
        self._queued = []
        self._flushed_at = time.monotonic()
        return True

    def flush_patiently(self, patience_s: float = 600.0) -> None:
        """Flush, waiting with backoff while storage is down; RuntimeError after `patience_s`."""
        from cluster.storage import Backoff

        backoff, give_up = Backoff(first_s=0.5, cap_s=30.0), time.monotonic() + patience_s
        while not self.flush():
            if time.monotonic() >= give_up:
                raise RuntimeError(f"the attempt's records could not be written to storage in {patience_s:g} s")
            time.sleep(backoff.next_wait())


def train_worker(payload: AttemptPayload) -> None:
    """The per-worker training function that Ray Train runs on every rank."""
    import ray.train

    from cluster.faults import FlakyStore
    from cluster.storage import RetryingStore, open_store
    from train_core.affinity import pin_to_core_share
    from train_core.trainer import Trainer, TrainHooks

    context = ray.train.get_context()
    rank = context.get_world_rank()
    pinned = pin_to_core_share(context.get_local_rank(), context.get_local_world_size())
    agent = agent_from_env(os.environ)
    if agent is not None:
        agent.register(f"rank-{rank}")
    writer = RecordWriter(AttemptChannel(open_store(payload.channel, payload.storage_endpoint)),
                          {"trial": payload.trial_id, "attempt": payload.attempt})

    def send(kind: RecordKind, urgent: bool = True, **data: Any) -> None:
        if rank == 0:
            writer.send(kind, urgent, **data)

    def log(line: str) -> None:
        send(RecordKind.LOG, urgent=False, line=line)

    send(RecordKind.STARTED, world_size=context.get_world_size())
    if pinned is not None:
        log(f"rank {rank}: pinned to {len(pinned)} of the node's CPUs, apart from its other workers")

    def on_outage(error: str | None) -> None:
        send(RecordKind.STORAGE_OUTAGE, error=error)

    store = RetryingStore(open_store(payload.config.output_dir, payload.storage_endpoint), on_outage=on_outage)
    if os.environ.get(STORAGE_FAULT_ENV):
        fault = StorageFault.model_validate(json.loads(os.environ[STORAGE_FAULT_ENV]))
        store = FlakyStore(store, fault.step, fault.kind)
    guard = NoticeGuard(agent, log)

    def on_metrics(record: dict) -> None:
        if "loss" in record:
            if agent is not None and rank == 0:
                agent.beat(record["step"])
            send(RecordKind.METRICS, urgent=False, step=record["step"], total_steps=record["total_steps"],
                 loss=record["loss"], lr=record["lr"], step_seconds=record["step_seconds"],
                 peak_memory_gib=record.get("peak_reserved_gib", record.get("peak_rss_gib")))
        elif "eval_loss" in record:
            send(RecordKind.EVAL, step=record["step"], eval_loss=record["eval_loss"])

    def on_checkpoint(step: int) -> None:
        guard.checkpoint_written()
        send(RecordKind.CHECKPOINT, step=step, save_seconds=guard.save_seconds)

    def on_checkpoint_skipped(step: int, skipped: list[str]) -> None:
        send(RecordKind.CHECKPOINT_SKIPPED, step=step, skipped=skipped)

    hooks = TrainHooks(on_metrics=on_metrics, on_checkpoint=on_checkpoint, stop_requested=guard.stop_requested,
                       on_checkpoint_skipped=on_checkpoint_skipped)
    work_dir = Path(os.environ[NODE_DIR_ENV]) / "work" / f"rank-{rank}"
    try:
        result = Trainer(payload.config, store=store, work_dir=work_dir, hooks=hooks, log=log).run(resume=True)
    except Exception as error:
        send(RecordKind.LOG, line=f"error: {type(error).__name__}: {error}")
        raise
    send(RecordKind.FINISHED, status=result.status, step=result.step, total_steps=result.total_steps,
         train_loss=result.train_loss, eval_loss=result.eval_loss, resumed_from=result.resumed_from)
    if rank == 0:
        writer.flush_patiently()
