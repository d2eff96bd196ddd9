"""Ray on one node of an attempt: the head (node 0) or a worker that joins it, bound to the node's own address.

One-node attempts start Ray inside the node entry point's process (`ray.init(address="local")`). An attempt that
spans nodes runs `ray start --head` on node 0, which publishes its address in the attempt's channel; the other
nodes run `ray start --address` against it. Where the platform starts Ray its own way (KubeRay gives each pod its
`ray start` line), that line runs instead, and its authentication is the platform's. Every Ray process uses token authentication: the payload's token when
the cluster spans nodes (the controller made it; it travels in storage, never in a boot script), otherwise a fresh
one. No dashboard. Ray's temp dir is a short private directory (Ray's socket paths must stay under 108 bytes);
a node killed with SIGKILL cannot remove it, so each node first sweeps those whose owner process is gone.
On a node IP of 127.0.0.1 Ray listens on loopback only; with another address it listens on every interface
(Ray's own behaviour): the security group (aws) or the pod network (kubernetes) must keep it private.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.errors import ClusterError
from cluster.ports import unused_ports
from cluster.processes import ProcessRecord, processes_with_environment

# Read by Ray when it is imported: set before the first `import ray` of the process (and inherited by Ray's own).
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps a 127.0.0.1 node IP from being replaced by the machine's outward
# address, which would make Ray listen on every interface; a cluster across nodes must leave it unset.
RAY_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}
SINGLE_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
OBJECT_STORE_BYTES = 200 * 2**20
TEMP_PREFIX = "spottune-ray-"
OWNER_FILE = "owner.json"  # the node entry point's ProcessRecord: its directory is abandoned once that process is gone
HEAD_WAIT_S = 600.0


def prepare_environment(token: str | None, single_node: bool, manage_auth: bool = True) -> Path:
    """Set Ray's variables in this process (before `import ray`) and write its token; returns Ray's temp dir.

    Ray makes its temp dir 0777 (again and again), so it lives inside a private (0700) directory with the token.
    """
    sweep_abandoned_temp_dirs()
    private = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    (private / OWNER_FILE).write_text(ProcessRecord.current().dump(), encoding="utf-8")
    temp_dir = private / "r"
    temp_dir.mkdir()
    os.environ.update({name: value for name, value in RAY_ENV.items() if manage_auth or name != "RAY_AUTH_MODE"})
    if single_node:
        os.environ.update(SINGLE_NODE_ENV)
    else:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    os.environ["RAY_TMPDIR"] = str(temp_dir)
    if not manage_auth:
        return temp_dir
    token_file = private / "auth_token"
    descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token or secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    return temp_dir


def sweep_abandoned_temp_dirs(older_than_s: float = 86400.0) -> list[Path]:
    """Remove this user's node temp dirs whose owner process is gone (a node killed with SIGKILL never cleans up),
    and, from before owners were recorded, those untouched for `older_than_s`; returns what was removed."""
    removed = []
    for private in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            if private.stat().st_uid != os.getuid():
                continue
            owner = private / OWNER_FILE
            if owner.exists():
                abandoned = not ProcessRecord.parse(owner.read_text(encoding="utf-8")).alive()
            else:
                abandoned = time.time() - private.stat().st_mtime > older_than_s
        except (OSError, ValueError, KeyError):
            continue
        if abandoned:
            shutil.rmtree(private, ignore_errors=True)
            removed.append(private)
    return removed


class RayNode:
    """This node's share of the attempt's Ray cluster; `close()` stops every Ray process it started."""

    def __init__(self, address: str, cpus: int, gpus: int, temp_dir: Path) -> None:
        self.address = address
        self.cpus = cpus
        self.gpus = gpus
        self.temp_dir = temp_dir
        self._daemon: subprocess.Popen | None = None

    def start_single(self) -> None:
        """The whole cluster in this process: head and driver."""
        import ray

        ray.init(address="local", num_cpus=self.cpus, num_gpus=self.gpus, include_dashboard=False,
                 log_to_driver=False, _temp_dir=str(self.temp_dir), _node_ip_address=self.address,
                 object_store_memory=OBJECT_STORE_BYTES, configure_logging=False)
        if ray.util.get_node_ip_address() != self.address:
            raise ClusterError(f"Ray took node address {ray.util.get_node_ip_address()} instead of {self.address}")

    def start_head(self) -> str:
        """`ray start --head` on this node's address; returns the address other nodes join."""
        port, = unused_ports(1, self.address)
        self._daemon = self._ray_start(["--head", f"--port={port}", "--include-dashboard=false",
                                        f"--temp-dir={self.temp_dir}"])
        head = f"{self.address}:{port}"
        self._connect(head)
        return head

    def join(self, head: str) -> None:
        """`ray start --address` to the head."""
        self._daemon = self._ray_start([f"--address={head}"])

    def start_given(self, command: str, head: bool) -> None:
        """Run the platform's own `ray start` line (it blocks, so in the background); the head's driver joins it."""
        log = open(self.temp_dir / "ray-start.log", "ab")
        self._daemon = subprocess.Popen(["bash", "-c", command], stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        if head:
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            # `ray start` turns token auth on when RAY_AUTH_MODE is unset; a driver given an explicit address does
            # not, so it follows Ray's own rule for a cluster it found by itself.
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            self._connect(self._given_head_address())

    def _given_head_address(self, timeout_s: float = 120) -> str:
        """The address the platform's `ray start --head` recorded in this node's temp dir.

        Not `address="auto"`: that takes any Ray cluster running on the host when this one has not written its
        address yet (found when a test's head met another test's cluster on the same machine).
        """
        from ray._common.utils import get_ray_address_file

        recorded = Path(get_ray_address_file(None))
        deadline = time.monotonic() + timeout_s
        while not recorded.exists() or not recorded.read_text().strip():
            if self._daemon.poll() is not None:
                raise ClusterError(f"ray start exited with {self._daemon.returncode}; see {self.temp_dir}/ray-start.log")
            if time.monotonic() > deadline:
                raise ClusterError(f"ray start recorded no address in {timeout_s:g} s; see {self.temp_dir}/ray-start.log")
            time.sleep(0.5)
        return recorded.read_text().strip()

    def _ray_start(self, arguments: list[str]) -> subprocess.Popen:
        ray = Path(sys.executable).with_name("ray")
        command = [str(ray) if ray.exists() else "ray", "start", "--block", f"--node-ip-address={self.address}",
                   f"--num-cpus={self.cpus}", f"--num-gpus={self.gpus}",
                   f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats", *arguments]
        log = open(self.temp_dir / "ray-start.log", "ab")
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _connect(self, head: str) -> None:
        """Connect this process (the driver) to the head once it answers."""
        import ray

        deadline = time.monotonic() + 120
        while True:
            if self._daemon is not None and self._daemon.poll() is not None:
                raise ClusterError(f"ray start exited with {self._daemon.returncode}; see {self.temp_dir}/ray-start.log")
            try:
                ray.init(address=head, _node_ip_address=self.address, log_to_driver=False, configure_logging=False)
                return
            except (ConnectionError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def wait_for_nodes(self, count: int, timeout_s: float = HEAD_WAIT_S) -> None:
        """Block until `count` nodes are alive in the cluster."""
        import ray

        deadline = time.monotonic() + timeout_s
        while sum(1 for node in ray.nodes() if node["Alive"]) < count:
            if time.monotonic() > deadline:
                raise ClusterError(f"only {sum(1 for n in ray.nodes() if n['Alive'])} of {count} nodes joined "
                                   f"in {timeout_s:g} s")
            time.sleep(0.5)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self._daemon is not None:
            try:
                os.killpg(self._daemon.pid, signal.SIGTERM)
                self._daemon.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(self._daemon.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in processes_with_environment("RAY_TMPDIR", str(self.temp_dir)):
            process.kill()  # Ray's daemons run in sessions of their own; they all carry this node's temp dir
        shutil.rmtree(self.temp_dir.parent, ignore_errors=True)
