"""The node entry point, `spottune node run --payload URI`: what every rented node of an attempt runs.

The boot script (cluster/node/boot.py) starts it on every provider. It reads the attempt's payload from storage,
brings up this node's part of the attempt's own Ray cluster (cluster/node/ray_node.py), watches for preemption
notices and beats a heartbeat (cluster/node/notices.py); node 0 then runs the attempt as a Ray Train TorchTrainer
(cluster/node/fit.py) and writes the outcome to the channel; the other nodes serve as Ray workers until it
appears. Exit status 0 when training ended (completed or stopped on a notice), 1 when it failed.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cluster.errors import ClusterError
from cluster.node.agent import NODE_DIR_ENV
from cluster.node.channel import PAYLOAD, AttemptChannel
from cluster.node.payload import AttemptPayload

ENDPOINT_ENV = "SPOTTUNE_STORAGE_ENDPOINT"
INDEX_ENV = "SPOTTUNE_NODE_INDEX"
ADDRESS_ENV = "SPOTTUNE_NODE_IP"
GRACE_ENV = "SPOTTUNE_SIGTERM_GRACE_S"
RAY_START_ENV = "SPOTTUNE_RAY_START"  # the platform's own `ray start` line (KubeRay's), run instead of ours
IMDS_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_GRACE_S = 25.0
OUTCOME_POLL_S = 2.0


@dataclass(frozen=True)
class NodeIdentity:
    """Which node of the attempt this is, the address Ray binds and where the node keeps its files."""

    index: int
    address: str
    node_dir: Path
    imds_url: str | None  # EC2's metadata service, on an aws node


def identify(provider: str, environ: Mapping[str, str]) -> NodeIdentity:
    """This node, from the environment its provider set up (and IMDS on EC2 for what the environment lacks)."""
    imds_url = None
    index, address = environ.get(INDEX_ENV), environ.get(ADDRESS_ENV)
    if provider == "aws":
        from cluster.node.imds import IMDS_URL, ImdsClient

        imds_url = environ.get(IMDS_ENV, IMDS_URL)
        client = ImdsClient(imds_url)
        index = index or client.get("/latest/meta-data/ami-launch-index")
        address = address or client.get("/latest/meta-data/local-ipv4")
    node_dir = environ.get(NODE_DIR_ENV) or tempfile.mkdtemp(prefix="spottune-node-")
    return NodeIdentity(int(index or 0), address or "127.0.0.1", Path(node_dir), imds_url)


def payload_location(uri: str) -> tuple[str, str]:
    """(channel prefix, key) of a payload URI ending in /payload.json."""
    prefix, _, key = uri.rstrip("/").rpartition("/")
    if key != PAYLOAD or not prefix:
        raise ClusterError(f"--payload {uri}: expected a URI ending in /{PAYLOAD}")
    return prefix, key


def run_node(payload_uri: str, environ: Mapping[str, str]) -> int:
    from cluster.node.ray_node import RayNode, prepare_environment
    from cluster.storage import RetryingStore, open_store

    prefix, _ = payload_location(payload_uri)
    endpoint = environ.get(ENDPOINT_ENV) or None
    raw = open_store(prefix, endpoint)
    channel = AttemptChannel(RetryingStore(raw))
    document = channel.read_payload()
    if document is None:
        raise ClusterError(f"--payload {payload_uri}: no such object")
    payload = AttemptPayload.from_dict(document)
    if payload.storage_endpoint is None and endpoint is not None:
        payload = AttemptPayload.from_dict({**document, "storage_endpoint": endpoint})
    node = identify(payload.provider, environ)
    node.node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[NODE_DIR_ENV] = str(node.node_dir)
    notices = start_notices(payload, node, AttemptChannel(raw), environ)
    given = environ.get(RAY_START_ENV) or None
    temp_dir = prepare_environment(payload.ray_token, single_node=payload.nodes == 1, manage_auth=given is None)
    cpus = payload.gpus_per_node if not payload.use_gpu else (os.cpu_count() or 1)
    gpus = payload.gpus_per_node if payload.use_gpu else 0
    ray_node = RayNode(node.address, cpus, gpus, temp_dir)
    try:
        if node.index == 0:
            return lead(payload, ray_node, channel, given)
        return follow(payload, ray_node, channel, given)
    finally:
        ray_node.close()
        notices.stop()
        reap_session()


def reap_session() -> None:
    """Kill what Ray left in this process's session (its agents can outlive ray.shutdown()), when it leads one."""
    from cluster.processes import ProcessRecord, session_members

    if os.getsid(0) == os.getpid():
        for process in session_members(ProcessRecord.current()):
            process.kill()


def start_notices(payload: AttemptPayload, node: NodeIdentity, channel: AttemptChannel, environ: Mapping[str, str]):
    from cluster.node.notices import NodeNotices

    imds = None
    if node.imds_url is not None:
        from cluster.node.imds import ImdsNoticeWatcher

        watcher = ImdsNoticeWatcher(node.imds_url)
        watcher.start()
        imds = watcher.notice_deadline
    notices = NodeNotices(node.node_dir, channel, node.index, float(environ.get(GRACE_ENV, DEFAULT_GRACE_S)), imds)
    notices.start()
    return notices


def lead(payload: AttemptPayload, ray_node, channel: AttemptChannel, given: str | None) -> int:
    """Node 0: the Ray head; runs the attempt and writes its outcome."""
    from cluster.node.fit import describe_failure, fit_attempt

    try:
        if given is not None:
            ray_node.start_given(given, head=True)
            ray_node.wait_for_nodes(payload.nodes)
        elif payload.nodes == 1:
            ray_node.start_single()
        else:
            channel.publish_head(ray_node.start_head())
            ray_node.wait_for_nodes(payload.nodes)
        fit_attempt(payload)
    except Exception as error:
        channel.write_outcome(False, describe_failure(error))
        print(f"spottune node: {describe_failure(error)}", file=sys.stderr)
        return 1
    channel.write_outcome(True)
    return 0


def follow(payload: AttemptPayload, ray_node, channel: AttemptChannel, given: str | None) -> int:
    """Another node: join the head (once it has published its address, unless the platform's own `ray start`
    line knows it), then serve until the outcome is written."""
    if given is not None:
        ray_node.start_given(given, head=False)
    else:
        head = channel.head_address()
        while head is None:
            time.sleep(OUTCOME_POLL_S / 4)
            head = channel.head_address()
        ray_node.join(head)
    while (outcome := channel.read_outcome()) is None:
        time.sleep(OUTCOME_POLL_S)
    return 0 if outcome["ok"] else 1
