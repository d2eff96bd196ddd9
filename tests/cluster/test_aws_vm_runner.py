"""The end-to-end fixture's VMs: each instance the aws provider launches on moto boots its own user-data as a local
process with its own IMDSv2 and address; terminating the instance kills it; a reclaim is the notice on the node's
IMDS, then termination at the deadline; a vanished node is killed and terminated with no notice."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cluster.provider import LaunchSpec, Requirements
from cluster.providers.aws import AwsProvider, AwsSettings
from tests.aws_nodes import NODE_CREDENTIALS, VmRunner, imds_time
from tests.aws_server import MOTO_AMI, PLANTED_SECRET, PLANTED_TOKEN

# User-data as a node would run it: IMDSv2 (PUT a token, then GETs), what it learnt written to booted.json, then
# it polls spot/instance-action as the node's watcher does and writes notice.json when EC2 posts one.
NODE_SCRIPT = r'''#!/bin/bash
set -eu
export SPOTTUNE_TRIAL=__TRIAL__
"$SPOTTUNE_PYTHON" - <<'PY'
import json, os, time, urllib.error, urllib.request
base = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
token = urllib.request.urlopen(urllib.request.Request(base + "/latest/api/token", method="PUT",
                               headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})).read().decode()
def get(path):
    request = urllib.request.Request(base + "/latest/meta-data/" + path, headers={"X-aws-ec2-metadata-token": token})
    return urllib.request.urlopen(request).read().decode()
names = ("instance-id", "ami-launch-index", "local-ipv4")
env = {name: os.environ.get(name) for name in ("SPOTTUNE_TRIAL", "SPOTTUNE_PIP_OPTIONS", "PYTHONPATH",
       "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "SPOTTUNE_PYTHON")}
json.dump({"meta": {name: get(name) for name in names}, "env": env}, open("booted.json", "w"))
while True:
    try:
        json.dump(json.loads(get("spot/instance-action")), open("notice.json", "w"))
        break
    except urllib.error.HTTPError as error:
        assert error.code == 404, error.code
        time.sleep(0.05)
PY
sleep 600
'''


def node_script(offer, spec) -> str:
    return NODE_SCRIPT.replace("__TRIAL__", spec.trial_id)


@pytest.fixture
def vms(ec2, moto, tmp_path):
    runner = VmRunner(moto.url, tmp_path / "vms").start()
    yield runner
    runner.stop()
    assert not runner.errors, runner.errors


def launched(nodes: int = 1):
    provider = AwsProvider(AwsSettings(**MOTO_AMI), node_script)
    provider.start()
    offer = next(o for o in provider.offers(Requirements(gpu_types=("L4",))) if o.instance_type == "g6.xlarge")
    return provider, provider.launch(offer, LaunchSpec("run-v", "t0", 0, 1, nodes=nodes))


def wait_until(condition, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() and path.stat().st_size else None


def test_each_instance_boots_its_user_data_with_its_own_imds_and_is_killed_when_terminated(vms, moto):
    provider, node = launched(nodes=2)
    booted = vms.wait_for(2)
    assert sorted(vm.instance_id for vm in booted) == sorted(node.machines)
    seen = {vm.instance_id: wait_until(lambda vm=vm: read_json(vm.directory / "booted.json")) for vm in booted}
    assert sorted(s["meta"]["ami-launch-index"] for s in seen.values()) == ["0", "1"]
    for vm in booted:
        meta, env = seen[vm.instance_id]["meta"], seen[vm.instance_id]["env"]
        assert (meta["instance-id"], meta["local-ipv4"]) == (vm.instance_id, vm.local_ipv4)
        assert env["SPOTTUNE_TRIAL"] == "t0", "the instance's own user-data ran"
        assert env["SPOTTUNE_PIP_OPTIONS"].endswith(f"--no-deps --target {vm.directory / 'site'}")
        assert env["PYTHONPATH"] == str(vm.directory / "site") and env["AWS_ENDPOINT_URL"] == moto.url
        assert env["AWS_SECRET_ACCESS_KEY"] == NODE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], "the node's own credentials"
        assert not env["AWS_SESSION_TOKEN"]
        script = (vm.directory / "user-data.sh").read_text()
        assert PLANTED_SECRET not in script and PLANTED_TOKEN not in script
        assert all(valid for method, _, valid in vm.imds.requests if method == "GET"), "every GET had a token"
    assert len({vm.local_ipv4 for vm in booted}) == 2
    provider.terminate(node)
    wait_until(lambda: all(vm.process.poll() is not None for vm in booted))
    assert [e.kind for e in provider.watch(node)] == ["lost"]


def test_a_reclaim_posts_the_notice_then_terminates_the_instance_at_the_deadline(vms):
    provider, node = launched()
    [vm] = vms.wait_for(1)
    wait_until(lambda: read_json(vm.directory / "booted.json"))
    deadline = vms.reclaim(vm.instance_id, notice_s=3)
    notice = wait_until(lambda: read_json(vm.directory / "notice.json"))
    assert notice == {"action": "terminate", "time": imds_time(deadline)}
    wait_until(lambda: vm.process.poll() is not None)
    assert time.time() >= deadline, "the node lives until the deadline"
    events = wait_until(lambda: provider.watch(node))
    assert [e.kind for e in events] == ["lost"] and "terminated" in events[0].reason


def test_a_node_that_vanishes_is_killed_and_terminated_without_notice(vms):
    provider, node = launched()
    [vm] = vms.wait_for(1)
    wait_until(lambda: read_json(vm.directory / "booted.json"))
    vms.vanish(vm.instance_id)
    assert vm.process.poll() is not None and not (vm.directory / "notice.json").exists()
    events = provider.watch(node)
    assert [e.kind for e in events] == ["lost"] and "terminated" in events[0].reason
