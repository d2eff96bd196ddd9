"""What the registered aws provider gives its nodes: user-data that installs the run's wheel from the run's S3
prefix and starts the node entry point on the attempt's payload, with no credential in it; and what a restarted
controller finds on the instances to reattach to their attempt."""
from __future__ import annotations

import boto3
import pytest

from cluster.errors import ClusterError
from cluster.provider import LaunchSpec, Requirements
from cluster.providers import registry
from cluster.providers.aws import AwsProvider
from cluster.providers.aws_node import WheelBootScript, run_prefix
from cluster.providers.registry import ProviderContext
from tests.aws_server import MOTO_AMI, PLANTED_SECRET, PLANTED_TOKEN, moto_s3

PAYLOAD = "s3://runs/sweeps/run-7/t001-abc/attempts/2/payload.json"


@pytest.fixture
def provider(ec2, moto, tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
    moto_s3(moto).create_bucket(Bucket="runs")
    settings = registry.settings_model().model_validate({"aws": MOTO_AMI}).aws
    built = registry.build("aws", settings, ProviderContext(tmp_path / "run"))
    built.start()
    yield built
    built.stop()


def spec(payload: str = PAYLOAD, endpoint: str | None = None, nodes: int = 1) -> LaunchSpec:
    return LaunchSpec("run-7", "t001-abc", 1, 2, nodes=nodes, payload=payload, storage_endpoint=endpoint)


def test_the_registered_provider_boots_the_node_entry_point_from_the_runs_wheel(provider, moto):
    assert isinstance(provider, AwsProvider) and provider.accelerator == "cuda"
    assert isinstance(provider.boot_script, WheelBootScript)
    offer = provider.offers(Requirements(gpu_types=("L4",)))[0]
    script = provider.boot_script(offer, spec(endpoint=moto.url))
    wheel_keys = [item["Key"] for item in moto_s3(moto).list_objects_v2(Bucket="runs")["Contents"]]
    assert len(wheel_keys) == 1 and wheel_keys[0].startswith("sweeps/run-7/node/spottune-")
    assert f"s3://runs/{wheel_keys[0]}" in script
    assert f"export SPOTTUNE_PAYLOAD={PAYLOAD}" in script and f"SPOTTUNE_STORAGE_ENDPOINT={moto.url}" in script
    assert script.rstrip().endswith('node run --payload "$SPOTTUNE_PAYLOAD"')
    assert PLANTED_SECRET not in script and PLANTED_TOKEN not in script
    assert len(script.encode()) < 16 * 1024


def test_a_payload_outside_s3_or_the_attempt_layout_is_one_line(provider):
    offer = provider.offers(Requirements(gpu_types=("L4",)))[0]
    with pytest.raises(ClusterError, match=r"^aws: nodes reach the run's storage over S3; storage must be an s3://"):
        provider.boot_script(offer, spec(payload="file:///tmp/store/run-7/t001-abc/attempts/2/payload.json"))
    with pytest.raises(ClusterError, match=r"^aws: the payload 's3://runs/elsewhere/payload.json' is not under"):
        run_prefix(spec(payload="s3://runs/elsewhere/payload.json"))
    assert run_prefix(spec()) == "s3://runs/sweeps/run-7"


def test_an_attempt_on_two_instances_is_one_node_listed_with_its_payload_and_endpoint(provider, moto, ec2):
    offer = provider.offers(Requirements(gpu_types=("L4",)))[0]
    node = provider.launch(offer, spec(endpoint=moto.url, nodes=2))
    assert len(node.machines) == 2 and node.id == node.machines[0] and ec2.actions().count("RunInstances") == 1
    assert node.price_per_hour == offer.usd_per_hour(1) * 2
    listed = provider.list_nodes("run-7")
    assert [(n.id, n.machines, n.spec.nodes, n.spec.payload, n.spec.storage_endpoint, n.spec.attempt)
            for n in listed] == [(node.id, node.machines, 2, PAYLOAD, moto.url, 2)]
    assert [e.kind for e in provider.watch(node)] == ["running"]
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=[node.machines[1]])
    [lost] = provider.watch(node)
    assert lost.kind == "lost" and lost.reason.startswith(node.machines[1]), "one machine gone loses the attempt"
    provider.terminate(node)
    assert provider.list_nodes("run-7") == []
