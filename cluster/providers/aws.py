"""The `aws` provider: EC2 GPU instances, spot or on-demand, through boto3.

Offers: the catalog's AWS instance types (cost_models/data/offers.csv) whose GPU family is in GPU_BY_FAMILY,
in every zone of the configured regions that offers the type (describe_instance_type_offerings); GPU count and
memory from describe_instance_types; spot prices per zone from describe_spot_price_history, cached with the time
they were read; on-demand prices and interruption buckets from the catalog. When EC2 cannot be reached (or there
are no credentials, as for `spottune plan` without an AWS account) the offers are the catalog's, marked
`price_origin="catalog-fallback"`. An offer EC2 refused for capacity lately carries a wait (Offer.capacity_wait_s).
Launch: one run_instances per attempt for all its nodes (MinCount=MaxCount=spec.nodes), spot one-time with
terminate on interruption (or on-demand), IMDSv2 only, tagged spottune:run / spottune:trial / spottune:attempt /
spottune:payload on the instances and their volumes, user-data = the boot script (cluster/providers/aws_node.py:
install the run's wheel, start the node entry point; refused if it holds an AWS credential). Capacity refusals
raise cluster.capacity.CapacityError; throttling is retried by botocore's standard retry mode (exponential
backoff with jitter).
Watch: describe_instances turns into `running`, `lost` (with the StateReason, e.g. Server.SpotInstanceTermination)
and `exited` (the instance shut itself down); the 2-minute `notice` is read on the node from IMDS
(cluster/node/imds.py) and reaches the controller through the attempt's channel in the run's storage (or through
the `notice_reader` a caller passes).
Every EC2 action called here is listed in docs/aws-iam-controller.json (a test checks both ways).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.parsers import ResponseParserError

from cluster.capacity import CapacityError
from cluster.errors import ClusterError
from cluster.provider import LaunchSpec, Node, NodeEvent, Requirements
from cluster.providers.aws_node import WheelBootScript
from cluster.providers.aws_settings import AwsSettings
from cluster.providers.aws_wheel import NodeWheel
from cluster.providers.registry import ProviderContext
from cost_models.catalog import Gpu, Offer, gpu as catalog_gpu, interruption_rates, list_offers

log = logging.getLogger("spottune.aws")

NAME = "aws"
GPU_BY_FAMILY = {
    "g4dn": "T4", "g5": "A10G", "g6": "L4", "g6e": "L40S",
    "p4d": "A100-40GB", "p4de": "A100-80GB", "p5": "H100", "p5en": "H200",
}
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "VcpuLimitExceeded",
    "Unsupported",
})
TAG_RUN, TAG_TRIAL, TAG_TRIAL_INDEX, TAG_ATTEMPT = "spottune:run", "spottune:trial", "spottune:trial-index", \
    "spottune:attempt"
TAG_PAYLOAD, TAG_ENDPOINT = "spottune:payload", "spottune:storage-endpoint"  # so a restarted controller reattaches
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
USER_DATA_LIMIT = 16 * 1024  # bytes, EC2's limit before base64
SELF_SHUTDOWN = "Client.InstanceInitiatedShutdown"  # the node shut down on its own (shutdown behaviour: terminate)
NOT_FOUND_GRACE_S = 120.0  # EC2 is eventually consistent: a fresh instance may be unknown to describe_instances
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
NO_CREDENTIALS = ("aws: no AWS credentials found; set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
                  "or run the controller with an instance role (docs/aws.md)")
INSTANCE_TYPE = re.compile(r"^([a-z0-9-]+)\.[a-z0-9]+$")

BootScript = Callable[[Offer, LaunchSpec], str]
NoticeReader = Callable[[Node], "float | None"]


def credentials_secrets(session: boto3.Session | None = None) -> list[str]:
    """The secret parts of the credentials in use (never to be written anywhere)."""
    found = [os.environ[name] for name in SECRET_ENV if os.environ.get(name)]
    credentials = (session or boto3.Session()).get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        found += [value for value in (frozen.secret_key, frozen.token) if value]
    return [value for value in found if len(value) >= 8]


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


@dataclass
class _Region:
    """What launching in one region needs, resolved and checked once."""

    name: str
    client: Any
    ami_id: str
    subnet_by_zone: dict[str, str]
    security_groups: list[str]


@dataclass(frozen=True)
class _TypeInfo:
    gpus: int
    gpu_memory_mib: int
    api_gpu_name: str


@dataclass(frozen=True)
class SpotPrices:
    """One read of describe_spot_price_history for a region: the newest price per (instance type, zone)."""

    fetched_at: float
    prices: dict[tuple[str, str], tuple[float, datetime]]


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "Unknown")


def _message(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Message", "").strip().replace("\n", " ")


class AwsApi:
    """boto3 EC2 clients per region with botocore's standard retries, and credential scrubbing of messages."""

    def __init__(self, settings: AwsSettings, session: boto3.Session | None = None) -> None:
        self.settings = settings
        self.session = session or boto3.Session()
        self._clients: dict[str, Any] = {}

    def client(self, region: str):
        if region not in self._clients:
            config = Config(retries={"mode": "standard", "max_attempts": self.settings.api_max_attempts},
                            user_agent_extra="spottune")
            self._clients[region] = self.session.client("ec2", region_name=region, config=config)
        return self._clients[region]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def scrub(self, text: str) -> str:
        return scrub(text, credentials_secrets(self.session))


def check(settings: AwsSettings, session: boto3.Session | None = None) -> dict[str, _Region]:
    """Validate the `aws:` section against EC2 before anything is launched: regions, credentials, AMI, subnets,
    security groups, key pair. Raises ClusterError with one line naming the field; returns what launch needs."""
    api = AwsApi(settings, session)
    known = set(api.session.get_available_regions("ec2"))
    for region in settings.regions:
        if region not in known:
            raise ClusterError(f"aws.regions: unknown region {region!r}; accepted: EC2 regions such as us-east-1, "
                               "us-west-2, eu-west-1")
    if api.session.get_credentials() is None:
        raise ClusterError(NO_CREDENTIALS)
    resolved = {name: _check_region(api, name) for name in settings.regions}
    _check_each_found(settings.subnets, [set(r.subnet_by_zone.values()) for r in resolved.values()], "aws.subnets")
    _check_each_found(settings.security_groups, [set(r.security_groups) for r in resolved.values()],
                      "aws.security_groups")
    return resolved


def _check_each_found(wanted: list[str], found_per_region: list[set[str]], field: str) -> None:
    found = set().union(*found_per_region)
    for item in wanted:
        if item not in found:
            raise ClusterError(f"{field}: {item!r} not found in any configured region")


def _check_region(api: AwsApi, region: str) -> _Region:
    client, settings = api.client(region), api.settings
    try:
        ami_id = _resolve_ami(client, settings, region)
        subnets = _existing(client.describe_subnets, "Subnets", "SubnetIds", "InvalidSubnetID.NotFound",
                            settings.subnets)
        subnet_by_zone = {subnet["AvailabilityZone"]: subnet["SubnetId"] for subnet in subnets}
        groups = [group["GroupId"] for group in _existing(
            client.describe_security_groups, "SecurityGroups", "GroupIds", "InvalidGroup.NotFound",
            settings.security_groups)]
        if settings.key_name:
            try:
                client.describe_key_pairs(KeyNames=[settings.key_name])
            except ClientError as error:
                if _code(error) != "InvalidKeyPair.NotFound":
                    raise
                raise ClusterError(f"aws.key_name: key pair {settings.key_name!r} not found in {region}") from None
    except ClientError as error:
        raise ClusterError(api.scrub(f"aws ({region}): {_code(error)}: {_message(error)}")) from None
    except NoCredentialsError:
        raise ClusterError(NO_CREDENTIALS) from None
    except BotoCoreError as error:
        raise ClusterError(api.scrub(f"aws ({region}): EC2 cannot be reached: {error}")) from None
    return _Region(region, client, ami_id, subnet_by_zone, groups)


def _existing(call, key: str, id_parameter: str, missing_code: str, ids: list[str]) -> list[dict]:
    """The items of these ids that exist in this region (with several regions, an id exists in one of them)."""
    found = []
    for one in ids:
        try:
            found += call(**{id_parameter: [one]})[key]
        except ClientError as error:
            if _code(error) != missing_code:
                raise
    return found


def _resolve_ami(client, settings: AwsSettings, region: str) -> str:
    if settings.ami:
        try:
            images = client.describe_images(ImageIds=[settings.ami])["Images"]
        except ClientError as error:
            if _code(error) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
                raise
            images = []
        if not images:
            raise ClusterError(f"aws.ami: AMI {settings.ami!r} not found in {region}")
        return images[0]["ImageId"]
    images = client.describe_images(Owners=settings.ami_owners, Filters=[
        {"Name": "name", "Values": [settings.ami_name]}, {"Name": "state", "Values": ["available"]},
        {"Name": "architecture", "Values": ["x86_64"]},
    ])["Images"]
    if not images:
        raise ClusterError(f"aws.ami_name: no available x86_64 AMI named {settings.ami_name!r} owned by "
                           f"{', '.join(settings.ami_owners)} in {region}; set aws.ami to an AMI id or aws.ami_name")
    return max(images, key=lambda image: (image.get("CreationDate", ""), image["ImageId"]))["ImageId"]


def catalog_types() -> dict[str, dict[str, Offer]]:
    """The catalog's launchable AWS instance types (a real EC2 name in a known GPU family), by type and market."""
    found: dict[str, dict[str, Offer]] = {}
    for offer in list_offers([NAME]):
        match = INSTANCE_TYPE.match(offer.instance_type)
        if match and GPU_BY_FAMILY.get(match.group(1)) == offer.gpu.name:
            found.setdefault(offer.instance_type, {})[offer.market] = offer
    return found


class AwsProvider:
    name = NAME

    def __init__(self, settings: AwsSettings, boot_script: BootScript, notice_reader: NoticeReader | None = None,
                 session: boto3.Session | None = None) -> None:
        self.settings = settings
        self.accelerator = settings.accelerator
        self.boot_script = boot_script
        self.notice_reader = notice_reader
        self.api = AwsApi(settings, session)
        self._regions: dict[str, _Region] = {}
        self._types: dict[str, dict[str, _TypeInfo]] = {}
        self._zones: dict[str, dict[str, list[str]]] = {}
        self._spot: dict[str, SpotPrices] = {}
        self._reported: dict[str, set[str]] = {}
        self._refused: dict[str, float] = {}  # offer key -> when EC2 last refused it for capacity

    @classmethod
    def for_run(cls, settings: AwsSettings, context: ProviderContext) -> AwsProvider:
        """The provider a sweep's controller uses: nodes install the run's wheel (built from this source tree,
        cached under SPOTTUNE_CACHE or the run directory); their notices reach the controller through their
        attempt channel, which it reads itself."""
        cache = Path(os.environ["SPOTTUNE_CACHE"]) if os.environ.get("SPOTTUNE_CACHE") else context.run_dir
        return cls(settings, WheelBootScript(NodeWheel(cache)))

    # lifecycle

    def start(self) -> None:
        """Check the settings against EC2 (one line on failure) and resolve AMI, subnets and security groups."""
        self._regions = check(self.settings, self.api.session)

    def stop(self) -> None:
        self.api.close()
        self._regions = {}

    # offers

    def offers(self, requirements: Requirements) -> list[Offer]:
        wanted = None if requirements.gpu_types is None else {catalog_gpu(n).name for n in requirements.gpu_types}
        types = {t: rows for t, rows in catalog_types().items()
                 if wanted is None or next(iter(rows.values())).gpu.name in wanted}
        markets = ("spot", "on-demand") if requirements.market == "any" else (requirements.market,)
        found: list[Offer] = []
        credentials = self.api.session.get_credentials() is not None
        if not credentials:  # `spottune plan` on a machine without an AWS account
            log.info("aws: no AWS credentials; offering catalog prices")
        for region in self.settings.regions:
            if not credentials:
                found += _fallback_offers(region, types, markets, "no AWS credentials")
                continue
            try:
                found += self._region_offers(region, types, markets)
            except (BotoCoreError, ClientError, ResponseParserError) as error:
                reason = self.api.scrub(str(error))
                log.warning("aws %s: EC2 cannot be reached (%s); offering catalog prices", region, reason)
                found += _fallback_offers(region, types, markets, reason)
        return sorted((self._with_refusal_wait(offer) for offer in found),
                      key=lambda offer: (offer.usd_per_gpu_hour, offer.key))

    def _with_refusal_wait(self, offer: Offer) -> Offer:
        """An offer EC2 refused for capacity lately carries the rest of aws.capacity_retry_s as its wait."""
        refused = self._refused.get(offer.key)
        left = 0.0 if refused is None else refused + self.settings.capacity_retry_s - time.time()
        return dataclasses.replace(offer, capacity_wait_s=left) if left > 0 else offer

    def _region_offers(self, region: str, types: dict[str, dict[str, Offer]], markets: tuple[str, ...]) -> list[Offer]:
        infos = self._type_infos(region, list(types))
        zones = self._type_zones(region, list(types))
        spot = self._spot_prices(region, list(types)) if "spot" in markets else None
        allowed_zones = self._allowed_zones(region)
        offers = []
        for instance_type, rows in types.items():
            info = infos.get(instance_type)
            if info is None:
                continue
            catalog = next(iter(rows.values()))
            if not catalog.gpu.name.upper().startswith(info.api_gpu_name.upper()):
                log.warning("aws: %s has %s GPUs by describe_instance_types, the catalog says %s; skipped",
                            instance_type, info.api_gpu_name, catalog.gpu.name)
                continue
            gpu = dataclasses.replace(catalog.gpu, memory_gib=info.gpu_memory_mib / 1024)
            for zone in zones.get(instance_type, []):
                if allowed_zones is not None and zone not in allowed_zones:
                    continue
                for market in markets:
                    offer = self._zone_offer(rows, market, gpu, info.gpus, region, zone, spot)
                    if offer is not None:
                        offers.append(offer)
        return offers

    def _zone_offer(self, rows: dict[str, Offer], market: str, gpu: Gpu, count: int, region: str, zone: str,
                    spot: SpotPrices | None) -> Offer | None:
        template = rows.get(market) or next(iter(rows.values()))
        common = dict(gpu=gpu, gpus_per_instance=count, region=region, zone=zone, market=market)
        if market == "on-demand":
            if "on-demand" not in rows:
                return None
            return dataclasses.replace(template, **common)
        price = spot.prices.get((template.instance_type, zone)) if spot else None
        if price is None:
            return None
        usd, stamp = price
        bucket = rows["spot"].bucket if "spot" in rows else "unknown"
        fetched = datetime.fromtimestamp(spot.fetched_at, timezone.utc).isoformat(timespec="seconds")
        return dataclasses.replace(
            template, **common, usd_per_gpu_hour=usd / count, bucket=bucket,
            interruptions_per_hour=interruption_rates()[bucket], price_origin="live",
            source=f"EC2 describe_spot_price_history {zone} (price of {stamp.isoformat()}, read {fetched}); "
                   f"interruption bucket from the catalog",
            date=stamp.date().isoformat(),
        )

    def _allowed_zones(self, region: str) -> set[str] | None:
        allowed = set(self.settings.zones) if self.settings.zones is not None else None
        if self.settings.subnets and region in self._regions:
            by_subnet = set(self._regions[region].subnet_by_zone)
            allowed = by_subnet if allowed is None else allowed & by_subnet
        return allowed

    def _type_infos(self, region: str, instance_types: list[str]) -> dict[str, _TypeInfo]:
        if region not in self._types:
            client, infos = self.api.client(region), {}
            for page in client.get_paginator("describe_instance_types").paginate(InstanceTypes=instance_types):
                for item in page["InstanceTypes"]:
                    gpus = item.get("GpuInfo", {}).get("Gpus", [])
                    if gpus:
                        infos[item["InstanceType"]] = _TypeInfo(
                            sum(g["Count"] for g in gpus), gpus[0]["MemoryInfo"]["SizeInMiB"], gpus[0]["Name"])
            self._types[region] = infos
        return self._types[region]

    def _type_zones(self, region: str, instance_types: list[str]) -> dict[str, list[str]]:
        if region not in self._zones:
            zones: dict[str, list[str]] = {}
            pages = self.api.client(region).get_paginator("describe_instance_type_offerings").paginate(
                LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": instance_types}])
            for page in pages:
                for item in page["InstanceTypeOfferings"]:
                    zones.setdefault(item["InstanceType"], []).append(item["Location"])
            self._zones[region] = {t: sorted(z) for t, z in zones.items()}
        return self._zones[region]

    def _spot_prices(self, region: str, instance_types: list[str]) -> SpotPrices:
        cached = self._spot.get(region)
        if cached is not None and time.time() - cached.fetched_at < self.settings.spot_price_max_age_s:
            return cached
        now = datetime.now(timezone.utc)
        prices: dict[tuple[str, str], tuple[float, datetime]] = {}
        pages = self.api.client(region).get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=instance_types, ProductDescriptions=["Linux/UNIX"], StartTime=now - timedelta(hours=6))
        for page in pages:
            for item in page["SpotPriceHistory"]:
                key = (item["InstanceType"], item["AvailabilityZone"])
                stamp = item["Timestamp"]
                if key not in prices or stamp > prices[key][1]:
                    prices[key] = (float(item["SpotPrice"]), stamp)
        self._spot[region] = SpotPrices(now.timestamp(), prices)
        return self._spot[region]

    # launch, watch, terminate

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        region = self._region(offer.region)
        if spec.gpus > offer.gpus_per_instance:
            raise ClusterError(f"aws: {spec.gpus} GPUs need more than one {offer.instance_type}; this provider "
                               "launches one instance per node")
        user_data = self.boot_script(offer, spec)
        secrets = credentials_secrets(self.api.session)
        if scrub(user_data, secrets) != user_data:
            raise ClusterError("aws: the boot script holds an AWS credential; nodes get theirs from the instance "
                               "profile (aws.instance_profile), never from user-data")
        if len(user_data.encode()) > USER_DATA_LIMIT:
            raise ClusterError(f"aws: the boot script is {len(user_data.encode())} bytes; EC2 user-data takes at "
                               f"most {USER_DATA_LIMIT}")
        try:
            reply = region.client.run_instances(**self._run_parameters(region, offer, spec, user_data))
        except ClientError as error:
            message = scrub(_message(error), secrets)
            if _code(error) in CAPACITY_CODES:
                log.info("aws: %s refused: %s: %s", offer.key, _code(error), message)
                self._refused[offer.key] = time.time()
                raise CapacityError(offer, _code(error), message) from None
            raise ClusterError(f"aws: launching {offer.key} failed: {_code(error)}: {message}") from None
        except BotoCoreError as error:
            raise ClusterError(scrub(f"aws: launching {offer.key} failed: {error}", secrets)) from None
        machines = [i["InstanceId"] for i in sorted(reply["Instances"], key=lambda i: i.get("AmiLaunchIndex", 0))]
        log.info("aws: launched %s as %s for %s/%s attempt %d", offer.key, ", ".join(machines), spec.run_id,
                 spec.trial_id, spec.attempt)
        return Node(id=machines[0], offer=offer, spec=spec, launched_at=time.time(),
                    env={"SPOTTUNE_INSTANCE_ID": machines[0]}, machines=machines)

    def _run_parameters(self, region: _Region, offer: Offer, spec: LaunchSpec, user_data: str) -> dict:
        tags = [
            {"Key": TAG_RUN, "Value": spec.run_id}, {"Key": TAG_TRIAL, "Value": spec.trial_id},
            {"Key": TAG_TRIAL_INDEX, "Value": str(spec.trial_index)}, {"Key": TAG_ATTEMPT, "Value": str(spec.attempt)},
            {"Key": "Name", "Value": f"spottune-{spec.run_id}-{spec.trial_id}-a{spec.attempt}"},
            {"Key": TAG_PAYLOAD, "Value": spec.payload},
        ]
        if spec.storage_endpoint:
            tags.append({"Key": TAG_ENDPOINT, "Value": spec.storage_endpoint})
        token = hashlib.sha256(f"{spec.run_id}|{spec.trial_id}|{spec.attempt}|{offer.key}".encode()).hexdigest()[:48]
        parameters: dict[str, Any] = dict(
            ImageId=region.ami_id, InstanceType=offer.instance_type, MinCount=spec.nodes, MaxCount=spec.nodes,
            UserData=user_data,
            ClientToken=token, InstanceInitiatedShutdownBehavior="terminate",
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        )
        if offer.market == "spot":
            parameters["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        if offer.zone in region.subnet_by_zone:
            parameters["SubnetId"] = region.subnet_by_zone[offer.zone]
        elif offer.zone:
            parameters["Placement"] = {"AvailabilityZone": offer.zone}
        if region.security_groups:
            parameters["SecurityGroupIds"] = region.security_groups
        if self.settings.key_name:
            parameters["KeyName"] = self.settings.key_name
        profile = self.settings.instance_profile
        if profile:
            parameters["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        return parameters

    def watch(self, node: Node) -> list[NodeEvent]:
        """`lost` when any instance of the attempt is gone (or still unknown after NOT_FOUND_GRACE_S), `running`
        once all run, `notice` once a node posted one in its attempt channel."""
        reported = self._reported.setdefault(node.id, set())
        if "lost" in reported:
            return []
        now, events = time.time(), []
        machines = _machines(node)
        instances = self._describe(node)
        for machine in machines:
            instance = instances.get(machine)
            if instance is None and now - node.launched_at > NOT_FOUND_GRACE_S:
                reported.add("lost")
                return [NodeEvent("lost", now, reason=f"instance {machine} not found")]
            if instance is not None and instance["State"]["Name"] in GONE_STATES:
                reported.add("lost")
                prefix = f"{machine} " if len(machines) > 1 else ""
                shut_itself_down = (instance.get("StateReason") or {}).get("Code") == SELF_SHUTDOWN
                return [NodeEvent("exited" if shut_itself_down else "lost", now,
                                  reason=prefix + _state_reason(instance))]
        running = len(instances) == len(machines) and all(
            instance["State"]["Name"] == "running" for instance in instances.values())
        if running and "running" not in reported:
            reported.add("running")
            events.append(NodeEvent("running", now))
        deadline = self.notice_reader(node) if self.notice_reader is not None else None
        if deadline is not None and "notice" not in reported:
            reported.add("notice")
            events.append(NodeEvent("notice", now, deadline=deadline, reason="spot instance-action"))
        return events

    def _describe(self, node: Node) -> dict[str, dict]:
        """The attempt's instances EC2 knows, by id."""
        client = self._region(node.offer.region).client
        try:
            reservations = client.describe_instances(InstanceIds=_machines(node))["Reservations"]
        except ClientError as error:
            if _code(error) != "InvalidInstanceID.NotFound":
                raise ClusterError(self.api.scrub(
                    f"aws: describing {node.id}: {_code(error)}: {_message(error)}")) from None
            reservations = []
            for machine in _machines(node):  # one unknown id fails the whole call: ask for each
                try:
                    reservations += client.describe_instances(InstanceIds=[machine])["Reservations"]
                except ClientError as one:
                    if _code(one) != "InvalidInstanceID.NotFound":
                        raise ClusterError(self.api.scrub(
                            f"aws: describing {machine}: {_code(one)}: {_message(one)}")) from None
        return {i["InstanceId"]: i for r in reservations for i in r["Instances"]}

    def terminate(self, node: Node) -> None:
        client = self._region(node.offer.region).client
        for machine in _machines(node):
            try:
                client.terminate_instances(InstanceIds=[machine])
            except ClientError as error:
                if _code(error) != "InvalidInstanceID.NotFound":
                    raise ClusterError(self.api.scrub(
                        f"aws: terminating {machine}: {_code(error)}: {_message(error)}")) from None
        log.info("aws: terminated %s", ", ".join(_machines(node)))

    def list_nodes(self, run_id: str) -> list[Node]:
        """The run's live instances, one Node per attempt (its instances in launch-index order)."""
        nodes = []
        for name in self.settings.regions:
            groups: dict[tuple[str, str], list[dict]] = {}
            pages = self._region(name).client.get_paginator("describe_instances").paginate(Filters=[
                {"Name": f"tag:{TAG_RUN}", "Values": [run_id]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ])
            for page in pages:
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        tags = _tags(instance)
                        groups.setdefault((tags.get(TAG_TRIAL, ""), tags.get(TAG_ATTEMPT, "")), []).append(instance)
            nodes += [self._node_of(sorted(group, key=lambda i: i.get("AmiLaunchIndex", 0)), name, run_id)
                      for group in groups.values()]
        return nodes

    def _node_of(self, instances: list[dict], region: str, run_id: str) -> Node:
        instance = instances[0]
        tags = _tags(instance)
        market = "spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand"
        rows = catalog_types().get(instance["InstanceType"], {})
        template = rows.get(market) or next(iter(rows.values()), None)
        zone = instance.get("Placement", {}).get("AvailabilityZone", "")
        if template is None:
            unknown = Gpu(name="unknown", memory_gib=0.0, bf16_tflops=0.0, mem_bw_gbs=0.0, device_names=(),
                          source="an instance type the catalog does not list", date="")
            offer = Offer(NAME, instance["InstanceType"], unknown, 1, region, market, 0.0,
                          interruption_rates()["unknown"], "unknown", unknown.source, "", zone=zone)
        else:
            offer = dataclasses.replace(template, region=region, zone=zone, market=market)
        spec = LaunchSpec(run_id=run_id, trial_id=tags.get(TAG_TRIAL, ""),
                          trial_index=int(tags.get(TAG_TRIAL_INDEX, "0")), attempt=int(tags.get(TAG_ATTEMPT, "0")),
                          gpus=offer.gpus_per_instance, nodes=len(instances), payload=tags.get(TAG_PAYLOAD, ""),
                          storage_endpoint=tags.get(TAG_ENDPOINT))
        machines = [one["InstanceId"] for one in instances]
        return Node(id=machines[0], offer=offer, spec=spec, launched_at=instance["LaunchTime"].timestamp(),
                    env={"SPOTTUNE_INSTANCE_ID": machines[0]}, machines=machines)

    def _region(self, name: str) -> _Region:
        if name not in self._regions:
            raise ClusterError(f"aws: region {name!r} is not started; configured: {', '.join(self.settings.regions)}")
        return self._regions[name]


def _machines(node: Node) -> list[str]:
    return node.machines or [node.id]


def _tags(instance: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}


def _state_reason(instance: dict) -> str:
    reason = instance.get("StateReason") or {}
    code, message = reason.get("Code", ""), reason.get("Message", "")
    prefix = "spot interruption: " if code == "Server.SpotInstanceTermination" else ""
    detail = message if message.startswith(code) else f"{code}: {message}"
    return f"{prefix}{instance['State']['Name']} ({detail})" if code else instance["State"]["Name"]


def _fallback_offers(region: str, types: dict[str, dict[str, Offer]], markets: tuple[str, ...],
                     reason: str) -> list[Offer]:
    """The catalog's offers for a region whose EC2 API cannot be reached, marked as such."""
    return [
        dataclasses.replace(rows[market], region=region, price_origin="catalog-fallback",
                            source=f"catalog price, EC2 unreachable ({reason}): {rows[market].source}")
        for rows in types.values() for market in markets if market in rows
    ]
