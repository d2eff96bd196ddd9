"""On an EC2 node: the spot interruption notice and rebalance recommendation, read from IMDSv2.

IMDSv2 is session based: PUT /latest/api/token (with a TTL header) gives a token that every GET must carry;
the instance is launched with HttpTokens=required, so IMDSv1 GETs are refused. Every `interval_s` (5 s, well
inside the 2-minute notice) the watcher GETs `spot/instance-action` (404 until EC2 decides to reclaim the
instance, then {"action": "terminate", "time": "...Z"}) and `events/recommendations/rebalance` (404, or
{"noticeTime": "...Z"}: elevated risk, no deadline). A 401 means the token expired: it takes a new one.
`notice_deadline()` is the NoticeSource the node's trainer asks after each step (cluster/node/preemption.py).
Standard library only: this runs on the node, next to the trainer, and imports nothing of the controller.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

IMDS_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def _epoch(stamp: str) -> float:
    """IMDS times ('2026-11-29T20:50:00Z') as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


class ImdsClient:
    """IMDSv2 reads: a session token (PUT, renewed before it expires or on a 401), then GETs that carry it."""

    def __init__(self, base_url: str = IMDS_URL, token_ttl_s: int = 21600, timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._token_expires = 0.0

    def get(self, path: str) -> str | None:
        """The document at `path`, or None when IMDS says there is none (404); a 401 renews the token once."""
        for _ in range(2):
            request = urllib.request.Request(self.base_url + path, headers={TOKEN_HEADER: self._valid_token()})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                if error.code != 401:
                    raise
                self._token = None
        raise urllib.error.URLError(f"IMDS refused a fresh token for {path}")

    def _valid_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_expires:
            request = urllib.request.Request(self.base_url + TOKEN_PATH, method="PUT",
                                             headers={TOKEN_TTL_HEADER: str(self.token_ttl_s)})
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                self._token = response.read().decode()
            self._token_expires = time.monotonic() + self.token_ttl_s - 60
        return self._token


class ImdsNoticeWatcher:
    """Polls IMDSv2 for a spot notice; `notice_deadline()` and `rebalance_at()` answer from the last poll."""

    def __init__(self, base_url: str = IMDS_URL, interval_s: float = 5.0, token_ttl_s: int = 21600,
                 timeout_s: float = 2.0) -> None:
        self.client = ImdsClient(base_url, token_ttl_s, timeout_s)
        self.interval_s = interval_s
        self.action: str | None = None  # terminate, stop or hibernate, once EC2 has decided
        self._deadline: float | None = None
        self._rebalance_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notice_deadline(self) -> float | None:
        """When EC2 will reclaim this instance, or None while it has not said so."""
        return self._deadline

    def rebalance_at(self) -> float | None:
        """When EC2 recommended rebalancing (higher risk of interruption, no deadline), or None."""
        return self._rebalance_at

    def poll_once(self) -> None:
        """Read both documents once; an unreachable IMDS leaves what is known unchanged."""
        try:
            action = self.client.get(INSTANCE_ACTION_PATH)
            rebalance = self.client.get(REBALANCE_PATH)
        except (urllib.error.URLError, OSError):
            return
        if action is not None:
            document = json.loads(action)
            self.action = document["action"]
            self._deadline = _epoch(document["time"])
        if rebalance is not None:
            self._rebalance_at = _epoch(json.loads(rebalance)["noticeTime"])

    def start(self) -> None:
        """Poll every interval_s on a daemon thread until stop() or a notice."""
        self._thread = threading.Thread(target=self._run, name="imds-notice-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            if self._deadline is not None:
                return
            self._stop.wait(self.interval_s)
