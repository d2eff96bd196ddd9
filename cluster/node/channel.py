"""What the controller and the nodes of one attempt say to each other, as objects in the run's storage.

The controller needs no inbound port and the nodes need no address of the controller: everything goes through
the attempt's prefix `{storage}/{run}/{trial}/attempts/{attempt}/` (file:// or s3://):

    payload.json              the controller, before launch: what to run (cluster/node/payload.py)
    records/{seq:08d}.jsonl   rank 0: progress records, a batch per object (RecordKind in cluster/node/worker.py)
    heartbeat/{node}.json     every node: {"time", "step"} every few seconds
    notice/{node}.json        a node that got a preemption notice: {"deadline", "source"}
    ray-head.json             node 0 of a multi-node attempt: {"address"} of its Ray head, for the others to join
    outcome.json              node 0, when training ended either way: {"ok", "error"}

Each object is written whole (a rename on file://, one PUT on S3), so a reader sees all of it or nothing.
"""
from __future__ import annotations

import json
import time
from typing import Any

from cluster.storage import StorageURI
from train_core.store import ObjectStore

PAYLOAD = "payload.json"
RECORDS = "records"
HEARTBEAT = "heartbeat"
NOTICE = "notice"
RAY_HEAD = "ray-head.json"
OUTCOME = "outcome.json"


def attempt_prefix(storage: StorageURI, run_id: str, trial_id: str, attempt: int) -> StorageURI:
    """Where one attempt's channel lives: beside the trial's checkpoints, never inside them."""
    return storage.child(run_id, trial_id, "attempts", str(attempt))


class AttemptChannel:
    """Reads and writes the objects of one attempt's prefix (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._read_batches = 0

    # written by the controller

    def write_payload(self, payload: dict[str, Any]) -> None:
        self.store.write_text(PAYLOAD, json.dumps(payload, sort_keys=True))

    # written by the nodes

    def read_payload(self) -> dict[str, Any] | None:
        text = self.store.read_text(PAYLOAD)
        return json.loads(text) if text is not None else None

    def append_records(self, sequence: int, records: list[dict[str, Any]]) -> None:
        """One batch of records under its sequence number (the writer counts from 0, one writer per attempt)."""
        lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
        self.store.write_text(f"{RECORDS}/{sequence:08d}.jsonl", lines)

    def beat(self, node: int, step: int) -> None:
        self.store.write_text(f"{HEARTBEAT}/{node}.json", json.dumps({"time": time.time(), "step": step}))

    def post_notice(self, node: int, deadline: float, source: str) -> None:
        self.store.write_text(f"{NOTICE}/{node}.json", json.dumps({"deadline": deadline, "source": source}))

    def publish_head(self, address: str) -> None:
        self.store.write_text(RAY_HEAD, json.dumps({"address": address}))

    def head_address(self) -> str | None:
        text = self.store.read_text(RAY_HEAD)
        return json.loads(text)["address"] if text is not None else None

    def write_outcome(self, ok: bool, error: str | None = None) -> None:
        self.store.write_text(OUTCOME, json.dumps({"ok": ok, "error": error}))

    # read by the controller

    def read_outcome(self) -> dict[str, Any] | None:
        text = self.store.read_text(OUTCOME)
        return json.loads(text) if text is not None else None

    def new_records(self) -> list[dict[str, Any]]:
        """Records of the batches not read yet, in order; a batch is read once it and every earlier one exist."""
        names = {name for name in self.store.list_dir(RECORDS) if name.endswith(".jsonl") and name[0] != "."}
        records: list[dict[str, Any]] = []
        while f"{self._read_batches:08d}.jsonl" in names:
            text = self.store.read_text(f"{RECORDS}/{self._read_batches:08d}.jsonl") or ""
            records += [json.loads(line) for line in text.splitlines() if line]
            self._read_batches += 1
        return records

    def notice_deadline(self) -> float | None:
        """The earliest deadline any node of the attempt posted, or None."""
        return min((float(document["deadline"]) for document in self._per_node(NOTICE)), default=None)

    def last_heartbeat(self) -> float | None:
        """The newest heartbeat time of any node, or None before the first."""
        return max((float(document["time"]) for document in self._per_node(HEARTBEAT)), default=None)

    def _per_node(self, directory: str) -> list[dict[str, Any]]:
        """The documents the nodes wrote under `directory`, one per node."""
        documents = []
        for name in self.store.list_dir(directory):
            if name.endswith(".json") and name[0] != ".":
                text = self.store.read_text(f"{directory}/{name}")
                if text is not None:
                    documents.append(json.loads(text))
        return documents
