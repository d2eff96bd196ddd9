"""EC2 nodes on this machine for tests: what a VM would be, without a VM.

FakeImds speaks IMDSv2 for one node as EC2 does (a token from PUT, 401 without one, 404 until a document exists)
and serves what the node entry point asks: instance-id, ami-launch-index, local-ipv4, and, once the test posts
them, spot/instance-action and events/recommendations/rebalance.

VmRunner stands in for EC2's hypervisor in front of moto's server: it polls describe_instances (straight at moto,
not through the fault proxy) and, for each spottune-tagged instance that moto reports running, starts a local
process running that instance's user-data with bash (decoded from describe_instance_attribute userData), with a
FakeImds of its own, a loopback address of its own and the environment a test node needs. When moto reports the
instance gone, the process group is killed. `reclaim` is EC2's spot interruption: the notice on the node's IMDS,
then, after the deadline, the instance terminated on moto and its processes killed. `vanish` is a node that dies
without a word: processes killed, instance terminated.
"""
from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

from cluster.processes import processes_with_environment

TOKEN_PATH = "/latest/api/token"
META = "/latest/meta-data"
INSTANCE_ACTION = f"{META}/spot/instance-action"
REBALANCE = f"{META}/events/recommendations/rebalance"
NODE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIANODEPROFILE00000", "AWS_SECRET_ACCESS_KEY": "node-profile-secret"}
KEPT_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "SPOTTUNE_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM",
            "MPLCONFIGDIR", "RAY_TMPDIR")


def imds_time(epoch: float) -> str:
    """An IMDS timestamp, e.g. '2026-11-29T20:50:00Z' (whole seconds, as EC2 writes them)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeImds:
    """IMDSv2 on 127.0.0.1 for one node; `documents` maps a path to the body served there."""

    def __init__(self, instance_id: str = "i-0000000000000000", launch_index: int = 0,
                 local_ipv4: str = "127.0.0.1") -> None:
        self.documents: dict[str, str] = {
            f"{META}/instance-id": instance_id, f"{META}/ami-launch-index": str(launch_index),
            f"{META}/local-ipv4": local_ipv4,
        }
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, bool]] = []  # method, path, had a valid token
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                if self.path != TOKEN_PATH or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(400, "")
                    return
                token = secrets.token_hex(16)
                imds.tokens.add(token)
                imds.requests.append(("PUT", self.path, True))
                self._send(200, token)

            def do_GET(self) -> None:
                valid = self.headers.get("X-aws-ec2-metadata-token") in imds.tokens
                imds.requests.append(("GET", self.path, valid))
                if not valid:
                    self._send(401, "")
                elif self.path in imds.documents:
                    self._send(200, imds.documents[self.path])
                else:
                    self._send(404, "")

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                """Quiet: the test reads `requests` instead."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def post_notice(self, deadline: float, action: str = "terminate") -> None:
        """EC2 decided to reclaim the instance at `deadline` (the 2-minute warning)."""
        self.documents[INSTANCE_ACTION] = f'{{"action": "{action}", "time": "{imds_time(deadline)}"}}'

    def post_rebalance(self, when: float) -> None:
        self.documents[REBALANCE] = f'{{"noticeTime": "{imds_time(when)}"}}'

    def revoke(self) -> None:
        """Expire every token (the next GET gets 401)."""
        self.tokens.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Vm:
    """One instance's stand-in: its process, IMDS and directory."""

    instance_id: str
    region: str
    imds: FakeImds
    directory: Path
    process: subprocess.Popen
    local_ipv4: str
    killed: bool = False

    def kill(self) -> None:
        """SIGKILL everything the VM runs (the VM is gone: nothing on it gets to clean up): its process group and
        whatever left it (Ray starts daemons in sessions of their own), found by the VM's own IMDS address."""
        if not self.killed:
            self.killed = True
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            for process in processes_with_environment("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.url):
                process.kill()

    def log(self) -> str:
        return (self.directory / "console.log").read_text(errors="replace")


@dataclass
class VmRunner:
    """Runs the user-data of every running spottune instance on moto as a local process (see the module doc)."""

    moto_url: str
    directory: Path
    regions: tuple[str, ...] = ("us-east-1",)
    env: dict[str, str] = field(default_factory=dict)  # added to every node's environment
    poll_s: float = 0.2
    vms: dict[str, Vm] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._addresses = iter(f"127.0.0.{n}" for n in range(2, 255))
        self._clients = {region: boto3.client("ec2", region_name=region, endpoint_url=self.moto_url,
                                              aws_access_key_id="testing", aws_secret_access_key="testing")
                         for region in self.regions}
        self._thread = threading.Thread(target=self._run, name="vm-runner", daemon=True)

    def start(self) -> "VmRunner":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as error:  # noqa: BLE001  (a test reads `errors`; the runner keeps going)
                self.errors.append(repr(error))
            self._stop.wait(self.poll_s)

    def poll_once(self) -> None:
        """Start a VM for each newly running instance; kill the VM of each instance no longer running."""
        with self._lock:
            for region, client in self._clients.items():
                states = {}
                for page in client.get_paginator("describe_instances").paginate(
                        Filters=[{"Name": "tag-key", "Values": ["spottune:run"]}]):
                    for reservation in page["Reservations"]:
                        for instance in reservation["Instances"]:
                            states[instance["InstanceId"]] = instance
                for instance_id, instance in states.items():
                    state = instance["State"]["Name"]
                    if state == "running" and instance_id not in self.vms:
                        self.vms[instance_id] = self._boot(region, instance)
                    elif state != "running" and instance_id in self.vms:
                        self.vms[instance_id].kill()

    def _boot(self, region: str, instance: dict) -> Vm:
        instance_id = instance["InstanceId"]
        user_data = self._clients[region].describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData")["UserData"].get("Value", "")
        directory = self.directory / instance_id
        site = directory / "site"
        site.mkdir(parents=True)
        script = directory / "user-data.sh"
        script.write_bytes(base64.b64decode(user_data))
        address = next(self._addresses)
        imds = FakeImds(instance_id, instance.get("AmiLaunchIndex", 0), address)
        env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
        env.update(NODE_CREDENTIALS)
        env.update({
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_DEFAULT_REGION": region, "SPOTTUNE_PYTHON": sys.executable,
            "SPOTTUNE_PIP_OPTIONS": f"--quiet --no-deps --target {site}", "PYTHONPATH": str(site),
            **self.env,
        })
        console = open(directory / "console.log", "wb")
        process = subprocess.Popen(["bash", str(script)], cwd=directory, env=env, stdout=console,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        console.close()
        return Vm(instance_id, region, imds, directory, process, address)

    def wait_for(self, count: int, timeout_s: float = 60) -> list[Vm]:
        """The first `count` VMs, once they have booted."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.vms) >= count:
                    return list(self.vms.values())[:count]
            time.sleep(self.poll_s)
        raise AssertionError(f"{len(self.vms)} of {count} VMs booted within {timeout_s} s; errors: {self.errors}")

    def reclaim(self, instance_id: str, notice_s: float) -> float:
        """A spot interruption: the notice on the node's IMDS now, the instance terminated at the deadline.
        Returns the deadline (epoch seconds)."""
        vm = self.vms[instance_id]
        deadline = float(int(time.time() + notice_s))
        vm.imds.post_notice(deadline)
        timer = threading.Timer(max(0.0, deadline - time.time()), self._terminate, args=(vm,))
        timer.daemon = True
        timer.start()
        return deadline

    def vanish(self, instance_id: str) -> None:
        """The node dies without a notice: its processes are killed, then EC2 reports it terminated."""
        self._terminate(self.vms[instance_id])

    def _terminate(self, vm: Vm) -> None:
        vm.kill()
        self._clients[vm.region].terminate_instances(InstanceIds=[vm.instance_id])

    def stop(self) -> None:
        """Stop polling and kill every VM (the test's own cleanup; instances are the code under test's)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for vm in self.vms.values():
                vm.kill()
                vm.imds.close()
