"""The controller's side of the attempt channel (cluster/node/channel.py): payloads out, records and outcomes in.

The controller runs no training and needs no inbound port. `prepare` writes an attempt's payload before its nodes
are launched; each loop the controller drains the records every attempt's rank 0 wrote, and `finished` reads the
outcome node 0 writes when training ended. A new controller `attach`es to attempts still running on nodes that
outlived its predecessor, skipping the records that one already read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from cluster.node.channel import AttemptChannel
from cluster.node.payload import AttemptPayload
from cluster.storage import describe_error, open_store, storage_errors

OUTCOME_EVERY_S = 1.0
HEARTBEAT_EVERY_S = 10.0


@dataclass
class AttemptHandle:
    name: str
    channel: AttemptChannel
    outcome: dict | None = None
    unreachable: str | None = None  # why the last read of the channel failed; None once it answers
    heartbeat: float | None = None  # the newest heartbeat of any of its nodes, as last read
    _asked_at: float = field(default=0.0)
    _beat_read_at: float = field(default=-HEARTBEAT_EVERY_S)


class StorageRunner:
    """Tracks the channels of the attempts in flight."""

    def __init__(self) -> None:
        self._handles: dict[str, AttemptHandle] = {}

    def prepare(self, payload: AttemptPayload) -> AttemptHandle:
        """Write the attempt's payload (before its nodes are launched: they read it first thing)."""
        handle = self.attach(payload.name, payload.channel, payload.storage_endpoint)
        handle.channel.write_payload(payload.to_dict())
        return handle

    def attach(self, name: str, channel: str, endpoint: str | None, skip_read: bool = False) -> AttemptHandle:
        """Follow an attempt's channel; with skip_read, records already there count as read."""
        handle = AttemptHandle(name, AttemptChannel(open_store(channel, endpoint)))
        if skip_read:
            handle.channel.new_records()
        self._handles[name] = handle
        return handle

    def forget(self, handle: AttemptHandle) -> None:
        self._handles.pop(handle.name, None)

    def drain(self) -> list[dict]:
        """New records of every attempt in flight; an attempt whose storage does not answer is read next time."""
        records: list[dict] = []
        for handle in list(self._handles.values()):
            try:
                records += handle.channel.new_records()
            except storage_errors() as error:
                handle.unreachable = describe_error(error)
                continue
            handle.unreachable = None
        return records

    def finished(self, handle: AttemptHandle, now: bool = False) -> dict | None:
        """The attempt's outcome once node 0 wrote it; None while it runs (asked at most once a second)."""
        if handle.outcome is None and (now or time.monotonic() - handle._asked_at >= OUTCOME_EVERY_S):
            handle._asked_at = time.monotonic()
            try:
                handle.outcome = handle.channel.read_outcome()
            except storage_errors():
                return None
        return handle.outcome

    def last_heartbeat(self, handle: AttemptHandle) -> float | None:
        """When a node of the attempt last beat (read at most every 10 s); None before the first beat."""
        if time.monotonic() - handle._beat_read_at >= HEARTBEAT_EVERY_S:
            handle._beat_read_at = time.monotonic()
            try:
                handle.heartbeat = handle.channel.last_heartbeat()
            except storage_errors():
                pass
        return handle.heartbeat

    def notice_deadline(self, handle: AttemptHandle) -> float | None:
        try:
            return handle.channel.notice_deadline()
        except storage_errors():
            return None
