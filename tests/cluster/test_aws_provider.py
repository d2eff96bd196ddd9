"""The aws provider against a real EC2 wire protocol: moto's server on 127.0.0.1, behind a proxy that answers
chosen calls with EC2's error XML. boto3 finds it through AWS_ENDPOINT_URL_EC2, with dummy credentials whose
secret parts are planted so that a test can look for them everywhere the provider writes."""
from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

import boto3
import pytest
from pydantic import ValidationError

from cluster.capacity import CapacityError, launch_first_available
from cluster.errors import ClusterError
from cluster.provider import LaunchSpec, Requirements
from cluster.providers.aws import AwsProvider, AwsSettings, catalog_types, check
from cost_models.catalog import list_offers
from tests.aws_server import MOTO_AMI, PLANTED_SECRET, PLANTED_TOKEN, Fault

REPO = Path(__file__).resolve().parents[2]


def boot_script(offer, spec) -> str:
    return f"#!/bin/bash\nexport SPOTTUNE_RUN={spec.run_id} SPOTTUNE_TRIAL={spec.trial_id}\necho boot {offer.key}\n"


def moto_client(region: str = "us-east-1"):
    """A client that goes through the proxy too (so its calls are visible), for what the test itself looks at."""
    return boto3.client("ec2", region_name=region)


def started(**settings) -> AwsProvider:
    provider = AwsProvider(AwsSettings(**{**MOTO_AMI, "api_max_attempts": 3, **settings}), boot_script)
    provider.start()
    return provider


def spec(trial: str = "t0", attempt: int = 1, run: str = "run-a") -> LaunchSpec:
    return LaunchSpec(run_id=run, trial_id=trial, trial_index=int(trial[1:]), attempt=attempt)


def first(offers, instance_type: str, market: str = "spot"):
    return next(o for o in offers if o.instance_type == instance_type and o.market == market)


def test_offers_are_per_zone_with_live_spot_prices_and_catalog_on_demand(ec2):
    provider = started()
    offers = provider.offers(Requirements(market="any"))
    client = moto_client()
    zones = {item["Location"] for item in client.describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": ["g5.xlarge"]}],
    )["InstanceTypeOfferings"]}
    g5_spot = [o for o in offers if o.instance_type == "g5.xlarge" and o.market == "spot"]
    assert {o.zone for o in g5_spot} == zones and all(o.region == "us-east-1" for o in g5_spot)
    history = client.describe_spot_price_history(InstanceTypes=["p5en.48xlarge"], ProductDescriptions=["Linux/UNIX"])
    p5en = [o for o in offers if o.instance_type == "p5en.48xlarge" and o.market == "spot"]
    for offer in p5en:
        price = next(float(h["SpotPrice"]) for h in history["SpotPriceHistory"] if h["AvailabilityZone"] == offer.zone)
        assert offer.price_origin == "live" and offer.usd_per_gpu_hour == pytest.approx(price / 8)
    catalog = {(o.instance_type, o.market): o for o in list_offers(["aws"])}
    for offer in (o for o in offers if o.market == "on-demand"):
        assert offer.usd_per_gpu_hour == catalog[(offer.instance_type, "on-demand")].usd_per_gpu_hour
    types = client.describe_instance_types(InstanceTypes=["p4d.24xlarge"])["InstanceTypes"][0]["GpuInfo"]["Gpus"][0]
    p4d = first(offers, "p4d.24xlarge", "on-demand")
    assert p4d.gpus_per_instance == types["Count"] and p4d.gpu.memory_gib == types["MemoryInfo"]["SizeInMiB"] / 1024
    assert p4d.gpu.name == "A100-40GB"
    assert [o.usd_per_gpu_hour for o in offers] == sorted(o.usd_per_gpu_hour for o in offers)
    assert {o.instance_type for o in offers} <= set(catalog_types())


def test_spot_prices_are_cached_with_their_time(ec2):
    provider = started(spot_price_max_age_s=3600)
    provider.offers(Requirements(gpu_types=("L4",)))
    provider.offers(Requirements(gpu_types=("L4",)))
    assert ec2.actions().count("DescribeSpotPriceHistory") == 1
    provider.settings.spot_price_max_age_s = 1e-9
    provider.offers(Requirements(gpu_types=("L4",)))
    assert ec2.actions().count("DescribeSpotPriceHistory") == 2


def test_offers_fall_back_to_the_catalog_when_ec2_cannot_be_reached(ec2, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:9")
    provider = AwsProvider(AwsSettings(api_max_attempts=1), boot_script)
    offers = provider.offers(Requirements(gpu_types=("A10G",), market="any"))
    catalog = {(o.instance_type, o.market): o for o in list_offers(["aws"], gpu_names=["A10G"])}
    assert {(o.instance_type, o.market) for o in offers} == set(catalog)
    for offer in offers:
        assert offer.price_origin == "catalog-fallback" and "EC2 unreachable" in offer.source
        assert offer.usd_per_gpu_hour == catalog[(offer.instance_type, offer.market)].usd_per_gpu_hour


def test_launch_is_spot_imdsv2_only_tagged_and_carries_the_boot_script(ec2):
    provider = started()
    offer = first(provider.offers(Requirements(gpu_types=("A10G",))), "g5.xlarge")
    node = provider.launch(offer, spec("t3", attempt=2))
    client = moto_client()
    instance = client.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert instance["InstanceType"] == "g5.xlarge" and instance["InstanceLifecycle"] == "spot"
    assert instance["Placement"]["AvailabilityZone"] == offer.zone
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["spottune:run"] == "run-a" and tags["spottune:trial"] == "t3" and tags["spottune:attempt"] == "2"
    volumes = client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [node.id]}])["Volumes"]
    assert volumes and all({t["Key"]: t["Value"] for t in v["Tags"]}["spottune:trial"] == "t3" for v in volumes)
    user_data = client.describe_instance_attribute(InstanceId=node.id, Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(user_data).decode() == boot_script(offer, node.spec)
    run = next(parameters for action, parameters in ec2.calls if action == "RunInstances")
    assert run["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "one-time"
    assert run["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    provider.terminate(node)
    provider.terminate(node)


def test_on_demand_launch_has_no_market_options(ec2):
    provider = started()
    offer = first(provider.offers(Requirements(gpu_types=("L4",), market="on-demand")), "g6.xlarge", "on-demand")
    node = provider.launch(offer, spec())
    instance = moto_client().describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert "InstanceLifecycle" not in instance
    provider.terminate(node)


def test_watch_reports_running_notice_and_lost_once_each(ec2):
    deadlines: dict[str, float] = {}
    provider = AwsProvider(AwsSettings(**MOTO_AMI), boot_script, notice_reader=lambda n: deadlines.get(n.id))
    provider.start()
    node = provider.launch(first(provider.offers(Requirements(gpu_types=("L4",))), "g6.xlarge"), spec())
    assert [e.kind for e in provider.watch(node)] == ["running"]
    assert provider.watch(node) == []
    deadlines[node.id] = 1_900_000_120.0
    notice = provider.watch(node)
    assert [(e.kind, e.deadline) for e in notice] == [("notice", 1_900_000_120.0)]
    assert provider.watch(node) == []
    moto_client().terminate_instances(InstanceIds=[node.id])  # EC2 reclaims the instance
    lost = provider.watch(node)
    assert [e.kind for e in lost] == ["lost"] and "terminated" in lost[0].reason
    assert "UserInitiatedShutdown" in lost[0].reason
    assert provider.watch(node) == []


def test_list_nodes_finds_a_runs_instances_by_tag(ec2):
    provider = started(regions=["us-east-1", "us-west-2"], ami=None)
    offers = provider.offers(Requirements(gpu_types=("L4",)))
    west = next(o for o in offers if o.region == "us-west-2")
    east = next(o for o in offers if o.region == "us-east-1")
    nodes = [provider.launch(east, spec("t0")), provider.launch(west, spec("t1", attempt=3)),
             provider.launch(east, spec("t0", run="run-b"))]
    listed = sorted(provider.list_nodes("run-a"), key=lambda n: n.spec.trial_id)
    assert [(n.id, n.spec.trial_id, n.spec.attempt, n.offer.region, n.offer.zone) for n in listed] == [
        (nodes[0].id, "t0", 1, "us-east-1", east.zone), (nodes[1].id, "t1", 3, "us-west-2", west.zone)]
    assert all(n.offer.market == "spot" and n.offer.instance_type == "g6.xlarge" for n in listed)
    for node in provider.list_nodes("run-a") + provider.list_nodes("run-b"):
        provider.terminate(node)
    assert provider.list_nodes("run-a") == [] and provider.list_nodes("run-b") == []


def cheapest(offers):
    return min(offers, key=lambda offer: (offer.usd_per_gpu_hour, offer.key), default=None)


def launch_with_fallback(provider, chosen, offers):
    """launch_first_available as the controller calls it, with the cheapest offer as the planner's choice."""
    refusals = []
    launched = launch_first_available(lambda offer: provider.launch(offer, spec()), cheapest, lambda offer: offer,
                                      chosen, offers, refusals.append)
    return (launched[1] if launched else None), refusals


def test_capacity_refusal_moves_to_another_zone_first(ec2):
    provider = started()
    offers = provider.offers(Requirements(gpu_types=("A10G", "L4")))
    chosen = first(offers, "g5.xlarge")
    ec2.faults.append(Fault("RunInstances", "InsufficientInstanceCapacity",
                            where={"Placement.AvailabilityZone": chosen.zone}))
    node, refusals = launch_with_fallback(provider, chosen, offers)
    assert [(r.code, r.offer.key) for r in refusals] == [("InsufficientInstanceCapacity", chosen.key)]
    assert isinstance(refusals[0], CapacityError) and "sufficient capacity" in refusals[0].message
    assert node.offer.instance_type == "g5.xlarge" and node.offer.zone != chosen.zone
    provider.terminate(node)


def test_capacity_refusal_in_every_zone_moves_to_the_next_type(ec2):
    provider = started()
    offers = provider.offers(Requirements(gpu_types=("A10G", "L4")))
    chosen = first(offers, "g5.xlarge")
    ec2.faults.append(Fault("RunInstances", "Unsupported", where={"InstanceType": "g5.xlarge"},
                            message="The requested configuration is currently not supported."))
    node, refusals = launch_with_fallback(provider, chosen, offers)
    g5_spot = sorted((o for o in offers if o.instance_type == "g5.xlarge" and o.market == "spot"),
                     key=lambda o: (o.usd_per_gpu_hour, o.key))
    assert [r.offer.key for r in refusals] == [chosen.key] + [o.key for o in g5_spot if o.key != chosen.key], \
        "every zone of the type, cheapest first, before another type"
    assert {r.code for r in refusals} == {"Unsupported"}
    assert node.offer == cheapest([o for o in offers if o.instance_type != "g5.xlarge"])
    provider.terminate(node)


def test_when_no_offer_can_be_rented_every_refusal_is_reported(ec2):
    provider = started()
    offers = [o for o in provider.offers(Requirements(gpu_types=("L4",))) if o.instance_type == "g6.xlarge"][:2]
    ec2.faults.append(Fault("RunInstances", "VcpuLimitExceeded", message="You have requested more vCPU capacity"))
    node, refusals = launch_with_fallback(provider, offers[0], offers)
    assert node is None
    assert [(r.offer, r.code) for r in refusals] == [(offers[0], "VcpuLimitExceeded"), (offers[1], "VcpuLimitExceeded")]
    assert ec2.actions().count("RunInstances") == 2


def test_a_refused_offer_is_priced_as_a_wait_until_capacity_retry_s_has_passed(ec2):
    provider = started(capacity_retry_s=600)
    offer = first(provider.offers(Requirements(gpu_types=("L4",))), "g6.xlarge")
    ec2.faults.append(Fault("RunInstances", "InsufficientInstanceCapacity"))
    with pytest.raises(CapacityError):
        provider.launch(offer, spec())
    again = {o.key: o for o in provider.offers(Requirements(gpu_types=("L4",)))}
    assert 590 < again[offer.key].capacity_wait_s <= 600
    assert all(o.capacity_wait_s == 0 for key, o in again.items() if key != offer.key)
    provider.settings.capacity_retry_s = 0
    assert all(o.capacity_wait_s == 0 for o in provider.offers(Requirements(gpu_types=("L4",))))


@pytest.mark.parametrize("code", ["SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "VcpuLimitExceeded"])
def test_quota_and_price_refusals_are_capacity_errors(ec2, code):
    provider = started()
    offer = first(provider.offers(Requirements(gpu_types=("L4",))), "g6.xlarge")
    ec2.faults.append(Fault("RunInstances", code, message=f"{code} for this request"))
    with pytest.raises(CapacityError) as refused:
        provider.launch(offer, spec())
    assert refused.value.code == code and refused.value.offer == offer


def test_throttling_is_retried(ec2):
    provider = started(api_max_attempts=5)
    ec2.faults.append(Fault("DescribeSpotPriceHistory", "Throttling", times=1, message="Rate exceeded"))
    offers = provider.offers(Requirements(gpu_types=("L4",)))
    assert offers and all(o.price_origin == "live" for o in offers)
    ec2.faults.append(Fault("RunInstances", "RequestLimitExceeded", times=2, message="Request limit exceeded."))
    node = provider.launch(offers[0], spec())
    assert ec2.actions().count("RunInstances") == 3
    assert len({p["ClientToken"] for a, p in ec2.calls if a == "RunInstances"}) == 1, "retries are idempotent"
    provider.terminate(node)


def _bad_settings_cases(ec2_client) -> list[tuple[dict, str]]:
    return [
        ({"regions": ["us-east-7"]}, "aws.regions: unknown region 'us-east-7'"),
        ({"ami": "ami-0123456789abcdef0", "ami_name": "unused"}, "aws.ami: AMI 'ami-0123456789abcdef0' not found"),
        ({"ami_name": "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *", "ami_owners": ["amazon"]},
         "aws.ami_name: no available x86_64 AMI named"),
        ({"subnets": ["subnet-0badc0ffee0000000"]}, "aws.subnets: 'subnet-0badc0ffee0000000' not found"),
        ({"security_groups": ["sg-0badc0ffee0000000"]}, "aws.security_groups: 'sg-0badc0ffee0000000' not found"),
        ({"key_name": "nobody"}, "aws.key_name: key pair 'nobody' not found in us-east-1"),
    ]


def test_bad_settings_fail_in_one_line_before_anything_is_launched(ec2):
    for overrides, expected in _bad_settings_cases(moto_client()):
        settings = AwsSettings(**{**MOTO_AMI, **overrides})
        with pytest.raises(ClusterError) as failed:
            AwsProvider(settings, boot_script).start()
        message = str(failed.value)
        assert message.startswith(expected) and "\n" not in message, message
        assert PLANTED_SECRET not in message and PLANTED_TOKEN not in message
    assert "RunInstances" not in ec2.actions()
    assert ec2.actions().count("DescribeImages") >= 2, "the AMI checks asked EC2"


def test_missing_credentials_fail_in_one_line(ec2, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    with pytest.raises(ClusterError, match=r"^aws: no AWS credentials found; set AWS_PROFILE"):
        check(AwsSettings(**MOTO_AMI))
    assert ec2.actions() == []


def test_an_ami_id_belongs_to_one_region():
    with pytest.raises(ValidationError, match="an AMI id belongs to one region"):
        AwsSettings(regions=["us-east-1", "us-west-2"], ami="ami-12345678")


def test_subnets_pin_the_zones_offered_and_launch_in_them(ec2):
    client = moto_client()
    vpc = client.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="172.31.200.0/24", AvailabilityZone="us-east-1b")["Subnet"]
    group = client.create_security_group(GroupName="spottune-nodes", Description="nodes", VpcId=vpc)["GroupId"]
    provider = started(subnets=[subnet["SubnetId"]], security_groups=[group])
    offers = provider.offers(Requirements(gpu_types=("L4",)))
    assert {o.zone for o in offers} == {"us-east-1b"}
    node = provider.launch(offers[0], spec())
    instance = client.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert instance["SubnetId"] == subnet["SubnetId"]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
    provider.terminate(node)


def test_planted_credentials_never_leave_the_controller(ec2, caplog):
    caplog.set_level(logging.DEBUG, logger="spottune.aws")
    leaky = AwsProvider(AwsSettings(**MOTO_AMI), lambda offer, spec: f"export AWS_SECRET_ACCESS_KEY={PLANTED_SECRET}")
    leaky.start()
    offer = first(leaky.offers(Requirements(gpu_types=("L4",))), "g6.xlarge")
    with pytest.raises(ClusterError, match="boot script holds an AWS credential") as refused:
        leaky.launch(offer, spec())
    assert PLANTED_SECRET not in str(refused.value) and "RunInstances" not in ec2.actions()
    token_leak = AwsProvider(AwsSettings(**MOTO_AMI), lambda offer, spec: f"TOKEN={PLANTED_TOKEN}")
    token_leak.start()
    with pytest.raises(ClusterError, match="boot script holds an AWS credential"):
        token_leak.launch(offer, spec())

    provider = started()
    ec2.faults.append(Fault("RunInstances", "InsufficientInstanceCapacity",
                            message=f"no capacity for request signed with {PLANTED_SECRET} {PLANTED_TOKEN}"))
    with pytest.raises(CapacityError) as echoed:
        provider.launch(offer, spec())
    ec2.faults.clear()
    node = provider.launch(offer, spec(attempt=2))
    client = moto_client()
    instance = client.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    user_data = base64.b64decode(
        client.describe_instance_attribute(InstanceId=node.id, Attribute="userData")["UserData"]["Value"]).decode()
    provider.terminate(node)
    written = "\n".join([str(echoed.value), user_data, json.dumps(instance["Tags"]), caplog.text,
                         *(json.dumps(p) for a, p in ec2.calls if a == "RunInstances")])
    assert "InsufficientInstanceCapacity" in written and "no capacity for request signed with ***" in written
    assert PLANTED_SECRET not in written and PLANTED_TOKEN not in written


def _called_ec2_actions() -> set[str]:
    source = (REPO / "cluster" / "providers" / "aws.py").read_text()
    calls = set(re.findall(r"\.(describe_\w+|run_instances|terminate_instances)\b", source))
    calls |= set(re.findall(r'get_paginator\("(\w+)"\)', source))
    return {"ec2:" + "".join(part.capitalize() for part in call.split("_")) for call in calls}


def _policy_actions(name: str) -> set[str]:
    policy = json.loads((REPO / "docs" / name).read_text())
    actions = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        listed = statement["Action"]
        actions |= {listed} if isinstance(listed, str) else set(listed)
    return actions


def test_controller_policy_allows_exactly_the_ec2_calls_the_code_makes():
    called = _called_ec2_actions()
    assert {"ec2:RunInstances", "ec2:DescribeSpotPriceHistory", "ec2:TerminateInstances"} <= called
    policy = _policy_actions("aws-iam-controller.json")
    assert {a for a in policy if a.startswith("ec2:")} == called | {"ec2:CreateTags"}, \
        "CreateTags: what RunInstances' TagSpecifications need, limited to launches in the policy"
    assert {a for a in policy if not a.startswith(("ec2:", "s3:"))} == {"iam:PassRole"}, \
        "PassRole: launching with the instance profile"
    assert not any("*" in action for action in policy)


S3_ACTION_OF_CALL = {  # boto3 S3 client calls -> the IAM action each needs
    "get_object": "s3:GetObject", "download_file": "s3:GetObject", "put_object": "s3:PutObject",
    "upload_file": "s3:PutObject", "delete_object": "s3:DeleteObject", "delete_objects": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket", "head_bucket": "s3:ListBucket",
}


def test_controller_policy_allows_exactly_the_s3_calls_the_runs_storage_makes():
    source = (REPO / "cluster" / "storage.py").read_text()
    calls = set(re.findall(r"self\.client\.(\w+)\(", source)) | set(re.findall(r'get_paginator\("(\w+)"\)', source))
    assert calls - {"get_paginator"} <= set(S3_ACTION_OF_CALL), calls
    needed = {S3_ACTION_OF_CALL[call] for call in calls if call != "get_paginator"}
    policy = json.loads((REPO / "docs" / "aws-iam-controller.json").read_text())
    granted = {}
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in (a for a in actions if a.startswith("s3:")):
            granted[action] = statement["Resource"]
    assert set(granted) == needed
    assert granted["s3:ListBucket"] == "arn:aws:s3:::BUCKET"
    assert all(granted[a] == "arn:aws:s3:::BUCKET/PREFIX/*" for a in needed - {"s3:ListBucket"})


def test_node_policy_reaches_only_its_runs_storage_prefix():
    policy = json.loads((REPO / "docs" / "aws-iam-node.json").read_text())
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(a.startswith("s3:") and "*" not in a for a in actions)
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            assert resource.startswith("arn:aws:s3:::BUCKET"), resource
            if resource != "arn:aws:s3:::BUCKET":
                assert resource.startswith("arn:aws:s3:::BUCKET/PREFIX/RUN_ID/")
        if "s3:ListBucket" in actions:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == ["PREFIX/RUN_ID/*"]
