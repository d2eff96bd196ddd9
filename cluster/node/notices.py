"""A node's preemption notices, from wherever its provider gives them, passed on to its workers and the controller.

Sources: the local market's notice.json in the node directory, EC2's IMDSv2 `spot/instance-action` (aws), and
SIGTERM (any node: Kubernetes' pod eviction, a shutdown, `kill`), which gives `grace_s` seconds. The first notice
is written to the node directory (where every rank's NoticeGuard reads it, cluster/node/agent.py) and to the
attempt's channel (where the controller reads it). The same loop beats the node's heartbeat into the channel.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Callable

from cluster.node.agent import LocalNodeAgent, post_notice
from cluster.node.channel import AttemptChannel
from cluster.storage import storage_errors

HEARTBEAT_EVERY_S = 5.0
POLL_S = 0.5


class NodeNotices:
    """Polls this node's notice sources on a thread; `deadline` is the notice once one came."""

    def __init__(self, node_dir: Path, channel: AttemptChannel, index: int, grace_s: float,
                 imds: Callable[[], float | None] | None = None) -> None:
        self.agent = LocalNodeAgent(node_dir)
        self.channel = channel
        self.index = index
        self.grace_s = grace_s
        self.imds = imds
        self.deadline: float | None = None
        self._sigterm_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-notices", daemon=True)

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _on_sigterm(self, *_: object) -> None:
        if self._sigterm_at is None:
            self._sigterm_at = time.time()

    def poll_once(self) -> None:
        """Look at every source once; pass on the first notice."""
        if self.deadline is not None:
            return
        found: tuple[float, str] | None = None
        if self._sigterm_at is not None:
            found = (self._sigterm_at + self.grace_s, "sigterm")
        elif (posted := self.agent.notice_deadline()) is not None:
            found = (posted, "local")
        elif self.imds is not None and (imds_deadline := self.imds()) is not None:
            found = (imds_deadline, "imds")
        if found is None:
            return
        self.deadline, source = found
        if source != "local":
            post_notice(self.agent.node_dir, self.deadline)
        try:
            self.channel.post_notice(self.index, self.deadline, source)
        except storage_errors():
            pass  # the workers have it; the controller learns of it from the provider or the lost node

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            self.poll_once()
            if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                last_beat = time.monotonic()
                try:
                    self.channel.beat(self.index, self.agent.step())
                except storage_errors():
                    pass
            self._stop.wait(POLL_S)
