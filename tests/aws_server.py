"""A real EC2 API for tests: moto's server on 127.0.0.1, behind a small proxy that can answer chosen calls with
EC2's own error XML (capacity refusals, throttling) before they reach moto.

moto_server is started once per test session on a free port; each test starts from `POST /moto-api/reset`.
The proxy matches a call by its Action and, optionally, by request parameters (e.g. the availability zone).
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from cluster.ports import unused_ports

READY_TIMEOUT_S = 60
# The HTTP status EC2 answers each error with (server errors are 5xx, the caller's are 4xx).
ERROR_STATUS = {
    "InsufficientInstanceCapacity": 500, "RequestLimitExceeded": 503, "Throttling": 400,
    "SpotMaxPriceTooLow": 400, "MaxSpotInstanceCountExceeded": 400, "VcpuLimitExceeded": 400, "Unsupported": 400,
}


def ec2_error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestID></Response>"
    ).encode()


@dataclass
class Fault:
    """Answer `action` calls whose parameters include `where` with EC2 error `code`, `times` times (None: always)."""

    action: str
    code: str
    where: dict[str, str] = field(default_factory=dict)
    times: int | None = None
    message: str = "We currently do not have sufficient capacity in the Availability Zone you requested."

    def matches(self, action: str, parameters: dict[str, str]) -> bool:
        return (action == self.action and (self.times is None or self.times > 0)
                and all(parameters.get(key) == value for key, value in self.where.items()))


class FaultProxy:
    """An HTTP proxy in front of moto: records every EC2 Action it sees and answers matching calls with faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.answered: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parameters = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                action = parameters.get("Action", "")
                proxy.calls.append((action, parameters))
                fault = next((f for f in proxy.faults if f.matches(action, parameters)), None)
                if fault is not None:
                    if fault.times is not None:
                        fault.times -= 1
                    proxy.answered.append((action, fault.code))
                    self._reply(ERROR_STATUS.get(fault.code, 400), {"Content-Type": "text/xml"},
                                ec2_error_xml(fault.code, fault.message))
                    return
                self._forward("POST", body)

            def do_GET(self) -> None:
                self._forward("GET", b"")

            def _forward(self, method: str, body: bytes) -> None:
                host, port = proxy.upstream.removeprefix("http://").split(":")
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                connection.request(method, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                connection.close()
                passed = {k: v for k, v in response.getheaders()
                          if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                self._reply(response.status, passed, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                """Quiet: the test reads `calls` instead."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def actions(self) -> list[str]:
        return [action for action, _ in self.calls]

    def reset(self) -> None:
        self.faults.clear()
        self.calls.clear()
        self.answered.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class MotoServer:
    url: str

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=30).read()


def start_moto(directory: Path) -> tuple[MotoServer, subprocess.Popen]:
    port, = unused_ports(1)
    binary = Path(sys.executable).parent / "moto_server"
    log = open(directory / "moto.out", "wb")
    process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=directory)
    server = MotoServer(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}; see {directory / 'moto.out'}")
        try:
            server.reset()
            return server, process
        except OSError:
            time.sleep(0.2)
    stop_moto(process)
    raise RuntimeError(f"moto_server did not answer within {READY_TIMEOUT_S} s")


def stop_moto(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


PLANTED_SECRET = "plantedSecretKey0123456789abcdefghijKLMN"
PLANTED_TOKEN = "plantedSessionTokenFQoGZXIvYXdzEBcaDHhBTEXAMPLE"
REGIONS = ("us-east-1", "us-west-2")
# moto ships this public AMI ("Deep Learning AMI Ubuntu Linux - 2.4_Oct2017"); the real default filter names the
# current Deep Learning AMIs, which moto does not have.
MOTO_AMI = {"ami_name": "Deep Learning AMI Ubuntu*", "ami_owners": ["898082745236"]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's server for one test module (a module imports this fixture, and `ec2` with it)."""
    server, process = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    stop_moto(process)


@pytest.fixture
def ec2(moto, monkeypatch):
    """A proxy in front of a freshly reset moto, and the environment that points boto3's EC2 at it, with planted
    secret credentials (a test looks for them wherever the code writes); after the test, no spottune-tagged
    instance may be left pending or running."""
    moto.reset()
    proxy = FaultProxy(moto.url)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
        "AWS_SESSION_TOKEN": PLANTED_TOKEN, "AWS_ENDPOINT_URL_EC2": proxy.url, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE":
        "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield proxy
    proxy.close()
    for region in REGIONS:
        left = running_spottune_instances(moto, region)
        assert not left, f"a test left spottune instances running in {region}: {left}"


def running_spottune_instances(server: MotoServer, region: str = "us-east-1") -> list[str]:
    """Instance ids moto lists as pending or running with a spottune tag (asked of moto directly)."""
    import boto3

    client = boto3.client("ec2", region_name=region, endpoint_url=server.url, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    reply = client.describe_instances(Filters=[{"Name": "tag-key", "Values": ["spottune:run"]},
                                               {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]


def moto_s3(server: MotoServer, region: str = "us-east-1"):
    """An S3 client straight at moto (S3 calls do not go through the EC2 fault proxy)."""
    import boto3

    return boto3.client("s3", region_name=region, endpoint_url=server.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")
