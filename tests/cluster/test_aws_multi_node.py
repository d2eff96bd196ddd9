"""One trial on two EC2 instances (moto): one run_instances call for both, each VM booting its user-data with its
own IMDS and address; node 0 (ami-launch-index 0) leads the trial's Ray cluster on its local-ipv4 and node 1
joins it through the address published in S3. The adapter is bit-identical to the same trial on one instance with
two workers."""
from __future__ import annotations

import json

import pytest

from orchestrator.run.state import StateStore
from tests.aws_nodes import VmRunner
from tests.aws_server import moto_s3, running_spottune_instances
from tests.aws_sweeps import aws_tiny_sweep, controller_env
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, only_run, spottune, wait_for, warm_model_cache,
)

pytestmark = pytest.mark.slow
STEPS = 6
BUCKET = "multi"


@pytest.fixture(scope="module")
def two_runs(moto, tmp_path_factory):
    moto.reset()
    s3 = moto_s3(moto)
    s3.create_bucket(Bucket=BUCKET)
    directory = tmp_path_factory.mktemp("awsmulti")
    vms = VmRunner(moto.url, directory / "vms", env={"GLOO_SOCKET_IFNAME": "lo"}).start()
    env = controller_env(moto.url)
    warm_model_cache()
    runs = {}
    try:
        for nodes in (2, 1):
            spec = aws_tiny_sweep(directory, f"nodes{nodes}", moto.url, f"s3://{BUCKET}/n{nodes}", STEPS,
                                  search={"parameters": {"training.seed": [3]}},
                                  resources={"providers": ["aws"], "gpus_per_trial": 2, "nodes_per_trial": nodes})
            state_dir = directory / f"state{nodes}"
            submitted = spottune("submit", str(spec), "--detach", "--state-dir", str(state_dir), env=env)
            assert submitted.returncode == 0, submitted.stderr
            runs[nodes] = (state_dir, only_run(state_dir), StateStore(state_dir))
        for nodes, (state_dir, run_id, state) in runs.items():
            wait_for(lambda: state.run(run_id).finished, timeout=900, what=f"the {nodes}-node run to finish")
        yield {"runs": runs, "vms": vms, "s3": s3, "moto": moto}
    finally:
        vms.stop()
    assert not vms.errors, vms.errors
    assert not running_spottune_instances(moto)


def _channel(s3, nodes: int, run_id: str, trial_id: str, key: str):
    return json.loads(s3.get_object(Bucket=BUCKET, Key=f"n{nodes}/{run_id}/{trial_id}/attempts/1/{key}")["Body"].read())


def test_two_instances_form_one_ray_cluster_led_by_launch_index_0(two_runs):
    state_dir, run_id, state = two_runs["runs"][2]
    trial = state.trials(run_id)[0]
    assert trial.state == "succeeded", (state_dir / run_id / "logs" / f"{trial.id}.log").read_text()[-3000:]
    assert [e.detail["world_size"] for e in state.events(run_id) if e.kind == "workers_started"] == [2]
    launch = next(e for e in state.events(run_id) if e.kind == "launch")
    assert launch.detail["offer"].endswith("x2 nodes")
    vms = [vm for vm in two_runs["vms"].vms.values() if f"/n2/{run_id}/" in (vm.directory / "user-data.sh").read_text()]
    assert len(vms) == 2 and launch.node in {vm.instance_id for vm in vms}
    [leader] = [vm for vm in vms if vm.imds.documents["/latest/meta-data/ami-launch-index"] == "0"]
    head = _channel(two_runs["s3"], 2, run_id, trial.id, "ray-head.json")["address"]
    assert head.startswith(f"{leader.local_ipv4}:"), "node 0 leads on the private address IMDS gave it"
    assert _channel(two_runs["s3"], 2, run_id, trial.id, "outcome.json") == {"ok": True, "error": None}


def test_two_instances_give_the_adapter_of_one_instance_with_two_workers(two_runs, tmp_path):
    adapters = []
    for nodes in (2, 1):
        _, run_id, state = two_runs["runs"][nodes]
        trial = state.trials(run_id)[0]
        assert trial.state == "succeeded"
        target = tmp_path / f"n{nodes}"
        target.mkdir()
        prefix = f"n{nodes}/{run_id}/{trial.id}/adapter/"
        for item in two_runs["s3"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
            two_runs["s3"].download_file(BUCKET, item["Key"], str(target / item["Key"][len(prefix):]))
        adapters.append(adapter_tensors(target))
    assert_bit_identical(*adapters)
