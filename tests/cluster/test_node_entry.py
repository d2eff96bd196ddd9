"""The node side of an attempt without a controller: the boot script, the channel, notices from SIGTERM and from
the local market, and `spottune node run` itself, started the way a KubeRay pod starts it (the platform's own
`ray start` line), training a tiny trial from a payload in storage and writing its records and outcome there."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.errors import ClusterError
from cluster.node.agent import LocalNodeAgent, post_notice
from cluster.node.boot import boot_script, local_install, wheel_install
from cluster.node.channel import AttemptChannel, attempt_prefix
from cluster.node.entry import identify, payload_location
from cluster.node.notices import NodeNotices
from cluster.node.payload import AttemptPayload
from cluster.node.ray_node import OWNER_FILE, TEMP_PREFIX, sweep_abandoned_temp_dirs
from cluster.ports import unused_ports
from cluster.processes import ProcessRecord, processes_with_environment
from cluster.storage import open_store, parse_uri
from runspec.config import TrainConfig
from tests.aws_nodes import FakeImds
from tests.orchestrator.sweeps import EVAL_DATA, REPO, TRAIN_DATA, warm_model_cache

SECRET_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN")


RAY = Path(sys.executable).with_name("ray")


def kuberay_token_env() -> dict[str, str]:
    """What KubeRay puts in every pod of a RayCluster with `authOptions: {mode: token}`."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


SILENT_GCS = """
import socket, sys, time
listener = socket.create_server(("127.0.0.1", int(sys.argv[1].rpartition(":")[2])))
held = []
while True:
    held.append(listener.accept())
"""


def start_silent_raylet() -> subprocess.Popen:
    """A process that Ray's `address="auto"` takes for another cluster's raylet on this host, whose GCS accepts
    connections and never answers (as a cluster going down did in CI)."""
    gcs = f"127.0.0.1:{unused_ports(1)[0]}"
    raylet = subprocess.Popen(["bash", "-c", f'exec -a raylet {sys.executable} -c "$0" --gcs-address={gcs}', SILENT_GCS],
                              start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(gcs.split(":"), timeout=1).close()
            return raylet
        except OSError:
            assert raylet.poll() is None and time.monotonic() < deadline, "the silent raylet did not start"
            time.sleep(0.1)


def test_the_boot_script_is_the_same_text_for_every_provider_apart_from_the_install_lines():
    local = boot_script("s3://b/run/t/attempts/1/payload.json", "http://127.0.0.1:9000", local_install("/usr/bin/python3"))
    aws = boot_script("s3://b/run/t/attempts/1/payload.json", "http://127.0.0.1:9000", wheel_install("s3://b/run/node/x.whl"))
    common = [line for line in local.splitlines() if line in aws.splitlines()]
    assert common[0] == "#!/bin/bash" and common[-1].startswith('exec "$SPOTTUNE_PYTHON" -m orchestrator.cli node run')
    assert "export SPOTTUNE_PAYLOAD=s3://b/run/t/attempts/1/payload.json" in common
    assert "export SPOTTUNE_STORAGE_ENDPOINT=http://127.0.0.1:9000" in common
    assert not any(name in script for name in SECRET_NAMES for script in (local, aws))
    assert subprocess.run(["bash", "-n"], input=aws, text=True).returncode == 0, "the script parses"
    with pytest.raises(ValueError, match="s3://"):
        wheel_install("/tmp/x.whl")


def test_a_payload_uri_must_name_payload_json():
    assert payload_location("s3://b/r/t/attempts/2/payload.json") == ("s3://b/r/t/attempts/2", "payload.json")
    with pytest.raises(ClusterError, match="expected a URI ending in /payload.json"):
        payload_location("s3://b/r/t/attempts/2/")


def test_records_are_read_in_order_once_each_and_only_whole_batches(tmp_path):
    channel = AttemptChannel(open_store(f"file://{tmp_path}"))
    reader = AttemptChannel(open_store(f"file://{tmp_path}"))
    assert reader.new_records() == []
    channel.append_records(1, [{"n": 2}])  # batch 0 not written yet: nothing is read past the gap
    assert reader.new_records() == []
    channel.append_records(0, [{"n": 0}, {"n": 1}])
    assert [r["n"] for r in reader.new_records()] == [0, 1, 2]
    assert reader.new_records() == []
    assert reader.notice_deadline() is None and reader.last_heartbeat() is None
    channel.post_notice(1, 200.0, "imds")
    channel.post_notice(0, 100.0, "sigterm")
    assert reader.notice_deadline() == 100.0, "the earliest deadline of any node"


def test_sigterm_is_a_notice_for_the_workers_and_the_controller(tmp_path):
    channel = AttemptChannel(open_store(f"file://{tmp_path / 'channel'}"))
    notices = NodeNotices(tmp_path / "node", channel, index=1, grace_s=25.0)
    (tmp_path / "node").mkdir()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        notices.start()
        before = time.time()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while channel.notice_deadline() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        notices.stop()
        signal.signal(signal.SIGTERM, previous)
    posted = json.loads((tmp_path / "channel" / "notice" / "1.json").read_text())
    assert posted["source"] == "sigterm" and before + 24 <= posted["deadline"] <= time.time() + 25
    assert LocalNodeAgent(tmp_path / "node").notice_deadline() == posted["deadline"], "the workers see it too"


def test_the_local_market_s_notice_reaches_the_controller_through_the_channel(tmp_path):
    channel = AttemptChannel(open_store(f"file://{tmp_path / 'channel'}"))
    (tmp_path / "node").mkdir()
    notices = NodeNotices(tmp_path / "node", channel, index=0, grace_s=25.0)
    post_notice(tmp_path / "node", 1234.5)
    notices.poll_once()
    assert json.loads((tmp_path / "channel" / "notice" / "0.json").read_text()) == {"deadline": 1234.5,
                                                                                     "source": "local"}


@pytest.mark.slow
def test_node_run_with_the_platform_s_ray_start_line_trains_and_reports_through_storage(tmp_path):
    """What a KubeRay pod runs, on CPU: the entry point starts the given `ray start --head ... --block` line, joins
    it as the driver and trains; everything the controller needs is then in the attempt's channel. What looks like
    another Ray cluster runs on the same host, and the driver must not take it for the platform's, though the
    platform's line takes a while to come up."""
    warm_model_cache()
    storage = parse_uri(f"file://{tmp_path / 'store'}")
    prefix = attempt_prefix(storage, "run1", "t000-x", 1)
    config = TrainConfig.model_validate({
        "model": {"name": "builtin:tiny-llama", "quantization": "fp32"},
        "data": {"train": str(TRAIN_DATA), "eval": str(EVAL_DATA), "max_seq_length": 64},
        "lora": {"r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 2, "seed": 1},
        "output_dir": str(storage.child("run1", "t000-x")),
    })
    payload = AttemptPayload("run1", "t000-x", 1, "kubernetes", config, str(prefix), None, nodes=1, gpus_per_node=1,
                             use_gpu=False)
    AttemptChannel(open_store(prefix)).write_payload(payload.to_dict())
    decoy = start_silent_raylet()
    given = (f"sleep 3 && {RAY} start --head --block --node-ip-address=127.0.0.1 --port={unused_ports(1)[0]} --num-cpus=1 "
             "--num-gpus=0 --include-dashboard=false --disable-usage-stats")
    env = {**os.environ, **kuberay_token_env(), "SPOTTUNE_RAY_START": given, "SPOTTUNE_NODE_IP": "127.0.0.1",
           "SPOTTUNE_NODE_ROLE": "head", "SPOTTUNE_NODE_DIR": str(tmp_path / "node"), "GLOO_SOCKET_IFNAME": "lo"}
    try:
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "node", "run", "--payload",
                                 str(prefix.child("payload.json"))], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300, start_new_session=True)
    finally:
        left = processes_with_environment("SPOTTUNE_NODE_DIR", str(tmp_path / "node"))
        for process in left:
            process.kill()
        decoy.kill()
    assert result.returncode == 0, result.stderr[-3000:]
    assert left == [], "the entry point stopped Ray's daemons, though they run in sessions of their own"
    channel = AttemptChannel(open_store(prefix))
    assert channel.read_outcome() == {"ok": True, "error": None}
    kinds = [record["kind"] for record in channel.new_records()]
    assert kinds[0] == "started" and kinds[-1] == "finished" and "checkpoint" in kinds
    assert (tmp_path / "store" / "run1" / "t000-x" / "adapter" / "adapter_model.safetensors").is_file()


def test_an_ec2_node_learns_its_index_and_address_from_imdsv2_and_the_environment_wins(tmp_path):
    """Machine 1 of a two-instance attempt: ami-launch-index 1 and its private address, read with an IMDSv2 token;
    the multi-node mechanics after that are the local provider's (tests/orchestrator/test_multi_node.py)."""
    imds = FakeImds(launch_index=1, local_ipv4="10.0.3.17")
    try:
        node = identify("aws", {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "SPOTTUNE_NODE_DIR": str(tmp_path)})
        assert (node.index, node.address, node.imds_url, node.node_dir) == (1, "10.0.3.17", imds.url, tmp_path)
        assert imds.requests and all(valid for _, _, valid in imds.requests), "every GET carried a token"
        given = identify("aws", {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "SPOTTUNE_NODE_INDEX": "0",
                                 "SPOTTUNE_NODE_IP": "10.0.3.18", "SPOTTUNE_NODE_DIR": str(tmp_path)})
        assert (given.index, given.address) == (0, "10.0.3.18")
    finally:
        imds.close()
    local = identify("local", {"SPOTTUNE_NODE_DIR": str(tmp_path)})
    assert (local.index, local.address, local.imds_url) == (0, "127.0.0.1", None)


def test_a_node_sweeps_the_ray_temp_dirs_of_nodes_that_died_without_cleaning_up(tmp_path, monkeypatch):
    """A node killed with SIGKILL leaves its Ray temp dir behind; the next node on the machine removes it, and
    never one whose owner still runs or that another node has only just made."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive, legacy_old, legacy_new = (tmp_path / f"{TEMP_PREFIX}{name}" for name in ("dead", "alive", "old", "new"))
    for private in (dead, alive, legacy_old, legacy_new):
        (private / "r" / "session").mkdir(parents=True)
    (dead / OWNER_FILE).write_text(ProcessRecord(int(finished.stdout), 0).dump())
    (alive / OWNER_FILE).write_text(ProcessRecord.current().dump())
    os.utime(legacy_old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    (tmp_path / "unrelated").mkdir()
    assert sorted(sweep_abandoned_temp_dirs()) == sorted([dead, legacy_old])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([alive.name, legacy_new.name, "unrelated"])
