"""The node side of a provider: what the training processes on a rented node use to talk to it.

Workers register their PIDs (so the node can be hard-killed), beat their step, and ask whether the node
has been given a preemption notice and its deadline. The local provider keeps these in a per-node
directory named by SPOTTUNE_NODE_DIR; a cloud provider would read its metadata service instead.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Mapping

from cluster.processes import ProcessRecord

NODE_DIR_ENV = "SPOTTUNE_NODE_DIR"
NOTICE_FILE = "notice.json"
HEARTBEAT_FILE = "heartbeat.json"
PIDS_DIR = "pids"
RECLAIMED_FILE = "reclaimed"


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename; the file is readable by this user only (mode 0600)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


class LocalNodeAgent:
    """Files in the node's directory: pids/<name>, heartbeat.json, notice.json."""

    def __init__(self, node_dir: Path) -> None:
        self.node_dir = Path(node_dir)

    def register(self, name: str) -> None:
        """Record this process as running on the node; on a node already reclaimed, die at once.

        The provider marks a node reclaimed before it reads the PIDs to kill, and this writes the PID before
        reading the mark, so a process starting during a reclaim is always killed by one side or the other.
        """
        pids = self.node_dir / PIDS_DIR
        pids.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(pids / name, ProcessRecord.current().dump())
        if (self.node_dir / RECLAIMED_FILE).exists():
            os.kill(os.getpid(), signal.SIGKILL)

    def beat(self, step: int) -> None:
        write_atomic(self.node_dir / HEARTBEAT_FILE, json.dumps({"step": step, "time": time.time()}))

    def step(self) -> int:
        """The step the node's rank 0 last beat, 0 before the first."""
        try:
            return int(json.loads((self.node_dir / HEARTBEAT_FILE).read_text(encoding="utf-8"))["step"])
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def notice_deadline(self) -> float | None:
        """The wall-clock deadline of a pending preemption notice, or None."""
        try:
            return float(json.loads((self.node_dir / NOTICE_FILE).read_text(encoding="utf-8"))["deadline"])
        except FileNotFoundError:
            return None


def post_notice(node_dir: Path, deadline: float) -> None:
    """Give the node a preemption notice: its workers see `deadline` through LocalNodeAgent.notice_deadline."""
    write_atomic(Path(node_dir) / NOTICE_FILE, json.dumps({"deadline": deadline}))


def agent_from_env(env: Mapping[str, str]) -> LocalNodeAgent | None:
    """The agent for the node described by `env` (a Node's env), or None outside a provider's node."""
    node_dir = env.get(NODE_DIR_ENV)
    return LocalNodeAgent(Path(node_dir)) if node_dir else None
