"""The `kubernetes` provider: each trial attempt is one KubeRay RayCluster on the cluster's (spot) GPU nodes.

Offers come from the cluster's nodes (and from pools the sweep declares, for pools that scale from zero):
the GPU type from `nvidia.com/gpu.product` or the GKE/EKS/Karpenter accelerator labels, mapped onto the
catalog's GPU names; the count from allocatable `nvidia.com/gpu`; spot or on-demand from the Karpenter, EKS
and GKE capacity labels; the price from the node's `spottune.io/usd-per-gpu-hour` annotation, else the
catalog's cheapest offer of that GPU and market (of the node's cloud when it can be told).

`launch` creates one RayCluster (ray.io/v1) per attempt: one pod per machine of the attempt (LaunchSpec.nodes),
each with LaunchSpec.gpus GPUs and pinned to the offer's pool by nodeSelector; machine 0 is the Ray head, machine
i > 0 is worker group `node-i` (one replica each, so every pod knows its index). The RayCluster is labelled with
run/trial/attempt and owned by the controller's Deployment when the controller runs in the cluster (so
`helm uninstall` leaves nothing behind). Every pod runs the node entry point, `spottune node run --payload URI`
(node_command), with KubeRay's own `ray start` line in $SPOTTUNE_RAY_START (KubeRay leaves it in
$KUBERAY_GEN_RAY_START_CMD because the RayCluster carries `ray.io/overwrite-container-cmd: "true"`); SIGTERM is
the pod's notice, $SPOTTUNE_SIGTERM_GRACE_S seconds before the grace period's SIGKILL.

Two watches (the namespace's spottune pods; all nodes) run in background threads from `start()` and turn what they
see into NodeEvents: all pods Running -> `running`; a pod being deleted or marked DisruptionTarget, or its node
tainted by Karpenter, GKE or the AWS node termination handler -> `notice` (deadline: the pod's deletion time, or
the taint's time plus its notice); a pod evicted or shut down by the kubelet or vanished, or its node deleted ->
`lost`; a pod whose node entry point ended by itself (Succeeded, or Failed without a kubelet reason; pods run with
restartPolicy Never) -> `exited`. `watch(node)` hands out what accumulated. `terminate` deletes the RayCluster;
`list_nodes(run)` finds what is left of a run by label and, for a controller that restarted, takes those
RayClusters back under watch: the pods the watches saw before are replayed, so their `running` (or `notice`,
`lost`) is reported again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Callable, Iterator, Literal

from cluster.errors import ClusterError
from cluster.node.boot import IMAGE_INSTALL, boot_script
from cluster.provider import LaunchSpec, Node, NodeEvent, Requirements
from cluster.providers.kubernetes_settings import GPU_RESOURCE, IMAGE_ENV, KubernetesSettings
from cluster.providers.registry import ProviderContext, ProviderKind, register
from cost_models.catalog import Offer, gpus, interruption_rates, list_offers

log = logging.getLogger(__name__)

NAME = "kubernetes"

# What every RayCluster pod runs: the boot script every provider uses (cluster/node/boot.py; the image has spottune),
# given KubeRay's `ray start` line. The rest of what the node entry point reads is the pod's env (_pod_template).
RAY_START_LINE = 'export SPOTTUNE_RAY_START="$KUBERAY_GEN_RAY_START_CMD"\n'


def node_command(spec: LaunchSpec) -> list[str]:
    """The container command of every pod of the attempt: the boot script for its payload."""
    return ["bash", "-c", RAY_START_LINE + boot_script(spec.payload, spec.storage_endpoint, IMAGE_INSTALL)]

SIGKILL_MARGIN_S = 5  # the node's notice deadline comes this long before the grace period's SIGKILL

RAYCLUSTER = {"group": "ray.io", "version": "v1", "plural": "rayclusters"}
MANAGED_BY = ("app.kubernetes.io/managed-by", "spottune")
LABEL_RUN, LABEL_TRIAL, LABEL_ATTEMPT, LABEL_NODE, LABEL_NODE_INDEX = (
    "spottune.io/run", "spottune.io/trial", "spottune.io/attempt", "spottune.io/node", "spottune.io/node-index",
)
ANNOTATION_PRICE = "spottune.io/usd-per-gpu-hour"  # on a node (set it on the pool's node template)
ANNOTATION_OFFER, ANNOTATION_SPEC = "spottune.io/offer", "spottune.io/launch-spec"  # on a RayCluster
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"  # in a pod
OWNER_ENV = "SPOTTUNE_OWNER_DEPLOYMENT"  # set by the Helm chart: the controller's Deployment
POOL_LABELS = ("karpenter.sh/nodepool", "eks.amazonaws.com/nodegroup", "cloud.google.com/gke-nodepool")
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
# (label, value meaning spot, value meaning on-demand); absent GKE label = on-demand
CAPACITY_LABELS = (
    ("karpenter.sh/capacity-type", "spot", "on-demand"),
    ("eks.amazonaws.com/capacityType", "SPOT", "ON_DEMAND"),
    ("cloud.google.com/gke-spot", "true", None),
)
# Accelerator labels whose values are short names, and the catalog GPU each names.
ACCELERATOR_LABELS = ("cloud.google.com/gke-accelerator", "karpenter.k8s.aws/instance-gpu-name",
                      "eks.amazonaws.com/instance-gpu-name", "k8s.amazonaws.com/accelerator")
ACCELERATORS = {
    "nvidia-l4": "L4", "nvidia-tesla-a100": "A100-40GB", "nvidia-a100-80gb": "A100-80GB",
    "nvidia-h100-80gb": "H100", "nvidia-h100-mega-80gb": "H100", "nvidia-h200-141gb": "H200",
    "a10g": "A10G", "nvidia-a10g": "A10G", "l4": "L4", "l40s": "L40S", "h100": "H100", "h200": "H200",
}
AWS_A100_BY_MEMORY_MIB = {40960: "A100-40GB", 81920: "A100-80GB"}  # karpenter.k8s.aws/instance-gpu-memory
CLOUD_OF_LABEL_PREFIX = (("cloud.google.com/", "gcp"), ("eks.amazonaws.com/", "aws"), ("karpenter.k8s.aws/", "aws"))
# Node taints that announce the node's end, and the notice each gives (None: the pod's grace period).
TERMINATION_TAINTS: dict[str, float | None] = {
    "karpenter.sh/disrupted": None,
    "karpenter.sh/disruption": None,
    "cloud.google.com/impending-node-termination": 30.0,
    "aws-node-termination-handler/spot-itn": 120.0,
    "aws-node-termination-handler/rebalance-recommendation": None,
    "aws-node-termination-handler/scheduled-maintenance": None,
    "aws-node-termination-handler/asg-lifecycle-termination": None,
    "ToBeDeletedByClusterAutoscaler": None,
}
BUILTIN_TAINT_PREFIXES = ("node.kubernetes.io/", "node.cloudprovider.kubernetes.io/", "node-role.kubernetes.io/")
STOP_WAIT_S = 2.0


@dataclass(frozen=True)
class _Pool:
    """Where an offer's pods go: the nodeSelector of its pool and the taints they must tolerate."""

    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Any], ...]


@dataclass
class _Cluster:
    """What the watches know about one launched RayCluster."""

    node: Node
    pods_expected: int
    pod_nodes: dict[str, str] = field(default_factory=dict)  # pod name -> node name ("" while unscheduled)
    running_pods: set[str] = field(default_factory=set)
    events: list[NodeEvent] = field(default_factory=list)
    running: bool = False
    noticed: bool = False
    lost: bool = False  # lost or exited: the attempt's last event was sent
    terminated: bool = False


def label_value(text: str) -> str:
    """`text` as a valid label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned) or "x"


def cluster_name(spec: LaunchSpec) -> str:
    """RayCluster name: DNS-1123, short enough for KubeRay's derived pod and service names, unique per run."""
    digest = hashlib.sha1(spec.run_id.encode()).hexdigest()[:6]
    trial = re.sub(r"[^a-z0-9-]", "-", spec.trial_id.lower()).strip("-")[:24].strip("-")
    return f"st-{trial}-a{spec.attempt}-{digest}"


def sigterm_grace_s(termination_grace_s: int) -> int:
    """How long after SIGTERM the node entry point's notice deadline is: before the grace period's SIGKILL."""
    return max(1, termination_grace_s - SIGKILL_MARGIN_S)


def node_of_raycluster(item: dict[str, Any]) -> Node:
    """The Node `launch` returned for this RayCluster, rebuilt from its annotations (same id, offer and spec)."""
    annotations = item["metadata"].get("annotations", {})
    offer_fields = json.loads(annotations[ANNOTATION_OFFER])
    offer_fields["gpu"] = gpus()[offer_fields["gpu"]]
    spec_fields = json.loads(annotations[ANNOTATION_SPEC])
    known = {spec_field.name for spec_field in fields(LaunchSpec)}
    spec = LaunchSpec(**{key: value for key, value in spec_fields.items() if key in known})
    created = _timestamp(item["metadata"].get("creationTimestamp")) or time.time()
    return Node(item["metadata"]["name"], Offer(**offer_fields), spec, created)


def _exit_code(pod: Any) -> int | str:
    """The exit status of the pod's container, or '?' when the status does not say."""
    for status in (pod.status.container_statuses or []) if pod.status else []:
        terminated = status.state.terminated if status.state else None
        if terminated is not None:
            return terminated.exit_code
    return "?"


def gpu_of_node(labels: dict[str, str]) -> str | None:
    """Catalog GPU name of a node from its labels, or None when it has no GPU the catalog knows."""
    product = labels.get("nvidia.com/gpu.product")
    if product:
        wanted = re.sub(r"[^a-z0-9]", "", product.lower())
        for gpu in gpus().values():
            if any(re.sub(r"[^a-z0-9]", "", name.lower()) == wanted for name in gpu.device_names):
                return gpu.name
    for label in ACCELERATOR_LABELS:
        value = labels.get(label, "").lower()
        if value == "a100":
            return AWS_A100_BY_MEMORY_MIB.get(int(labels.get("karpenter.k8s.aws/instance-gpu-memory", "0") or 0))
        if value in ACCELERATORS:
            return ACCELERATORS[value]
    return None


def market_of_node(labels: dict[str, str]) -> Literal["spot", "on-demand"]:
    for label, spot, on_demand in CAPACITY_LABELS:
        value = labels.get(label)
        if value == spot:
            return "spot"
        if value is not None and value == on_demand:
            return "on-demand"
    return "on-demand"


def _cloud_of(labels: dict[str, str]) -> str | None:
    for prefix, cloud in CLOUD_OF_LABEL_PREFIX:
        if any(key.startswith(prefix) for key in labels):
            return cloud
    return None


def _installed_ray_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        raise ClusterError("kubernetes.ray_version: Ray is not installed here; set the image's Ray version") from None


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Turn what the API or the network says into one ClusterError line naming the action."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as error:
        try:
            detail = json.loads(error.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            detail = ""
        raise ClusterError(f"kubernetes: {action}: {error.status} {error.reason}"
                           + (f" ({detail})" if detail else "")) from None
    except (HTTPError, OSError) as error:
        raise ClusterError(f"kubernetes: {action}: {type(error).__name__}: {error}") from None


def offer_from_catalog(pool: str, gpu_name: str, gpus_per_node: int, region: str,
                       market: Literal["spot", "on-demand"], price: float | None, cloud: str | None) -> Offer:
    """An offer of a pool, priced by the user's annotation or by the catalog (its interruption rate is the
    catalog's for that GPU and market)."""
    catalog = list_offers(None, market, [gpu_name])
    preferred = [offer for offer in catalog if offer.provider == cloud] or catalog
    reference = preferred[0] if preferred else None
    if price is None and reference is None:
        raise ClusterError(f"kubernetes pool {pool}: the catalog has no {market} price for {gpu_name}; set the "
                           f"node annotation {ANNOTATION_PRICE} or kubernetes.pools[].usd_per_gpu_hour")
    bucket = reference.bucket if reference else "unknown"
    if price is not None:
        source = f"price set on pool {pool}"
    else:
        price = reference.usd_per_gpu_hour
        source = f"catalog price of {reference.provider} {reference.instance_type} ({reference.source})"
    return Offer(
        provider=NAME, instance_type=pool, gpu=gpus()[gpu_name], gpus_per_instance=gpus_per_node, region=region,
        market=market, usd_per_gpu_hour=price, interruptions_per_hour=interruption_rates()[bucket], bucket=bucket,
        source=source, date=reference.date if reference else time.strftime("%Y-%m-%d"),
    )


class KubernetesProvider:
    name = NAME
    accelerator = "cuda"

    def __init__(self, settings: KubernetesSettings, api_client: Any | None = None) -> None:
        self.settings = settings
        self._api_client = api_client
        self._core: Any = None
        self._custom: Any = None
        self._namespace = settings.namespace
        self._owner: dict[str, Any] | None = None
        self._pools: dict[str, _Pool] = {}
        self._clusters: dict[str, _Cluster] = {}
        self._unclaimed_pods: dict[str, dict[str, tuple[str, Any]]] = {}  # RayCluster -> pod -> last (event, pod)
        self._node_notices: dict[str, tuple[float, str]] = {}  # node name -> (deadline, reason)
        self._lock = threading.Lock()
        self._unrecorded: list[tuple[str, str, str]] = []  # (RayCluster, reason, message) to post as Events
        self._stopping = threading.Event()
        self._watches: list[Any] = []
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_settings(cls, settings: KubernetesSettings, context: ProviderContext) -> KubernetesProvider:
        return cls(settings)

    # lifecycle

    def start(self) -> None:
        """Connect (in-cluster config inside a pod, else kubeconfig), find the owner object, start the watches."""
        if self.settings.pod_image() is None:
            raise ClusterError(f"provider_settings.kubernetes.image: no image for the trial pods; set it (the image "
                               f"built from this repository's Dockerfile), or run the controller under the Helm "
                               f"chart, which sets ${IMAGE_ENV} to its own image")
        self._api()
        self._owner = self._find_owner()
        self._stopping.clear()
        for target in (self._watch_pods, self._watch_nodes):
            thread = threading.Thread(target=target, name=f"k8s-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the watches (RayClusters are left alone: `terminate` and `list_nodes` own those). A watch thread
        blocked on a quiet stream ends at its next event or at the server-side timeout; it is a daemon."""
        self._stopping.set()
        for stream in list(self._watches):
            stream.stop()
        for thread in self._threads:
            thread.join(timeout=STOP_WAIT_S)
        self._threads.clear()

    def _api(self) -> None:
        """Connect once (offers work before start: `spottune plan` lists the cluster's nodes without watching)."""
        from kubernetes import client

        if self._core is not None:
            return
        if self._api_client is None:
            self._api_client = self._connect()
        self._core = client.CoreV1Api(self._api_client)
        self._custom = client.CustomObjectsApi(self._api_client)

    def _connect(self) -> Any:
        from kubernetes import client, config

        if os.environ.get("KUBERNETES_SERVICE_HOST") and self.settings.kubeconfig is None:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            if self._namespace is None:
                with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
                    self._namespace = handle.read().strip()
            return client.ApiClient(configuration)
        try:
            api = config.new_client_from_config(config_file=self.settings.kubeconfig, context=self.settings.context)
            if self._namespace is None:
                contexts, active = config.list_kube_config_contexts(config_file=self.settings.kubeconfig)
                if self.settings.context is not None:
                    active = next(c for c in contexts if c["name"] == self.settings.context)
                self._namespace = active["context"].get("namespace", "default")
        except (config.ConfigException, OSError, StopIteration) as error:
            raise ClusterError(f"kubernetes: cannot load kubeconfig ({error}); set provider_settings.kubernetes."
                               "kubeconfig/context or run inside the cluster") from None
        return api

    def _find_owner(self) -> dict[str, Any] | None:
        """ownerReference to the controller's Deployment (named by the chart in $SPOTTUNE_OWNER_DEPLOYMENT)."""
        from kubernetes import client

        name = os.environ.get(OWNER_ENV)
        if not name:
            return None
        with api_errors(f"cannot read the controller's Deployment {self.namespace}/{name} (its owner)"):
            deployment = client.AppsV1Api(self._api_client).read_namespaced_deployment(name, self.namespace)
        return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": deployment.metadata.uid}

    @property
    def namespace(self) -> str:
        return self._namespace or "default"

    # offers

    def offers(self, requirements: Requirements) -> list[Offer]:
        """One offer per (pool, GPU, count, market, region) among schedulable GPU nodes, plus declared pools."""
        found: dict[str, Offer] = {}
        self._api()
        with api_errors("cannot list nodes"):
            nodes = self._core.list_node().items
        for node in nodes:
            described = self._describe_node(node)
            if described is not None:
                offer, pool = described
                found.setdefault(offer.key, offer)
                self._pools.setdefault(offer.key, pool)
        for declared in self.settings.pools:
            offer = offer_from_catalog(declared.name, declared.gpu, declared.gpus_per_node, "cluster",
                                       declared.market, declared.usd_per_gpu_hour, None)
            found.setdefault(offer.key, offer)
            self._pools.setdefault(offer.key, _Pool(dict(declared.node_selector), tuple(declared.tolerations)))
        wanted_gpus = None if requirements.gpu_types is None else {name.lower() for name in requirements.gpu_types}
        selected = [
            offer for offer in found.values()
            if (requirements.market == "any" or offer.market == requirements.market)
            and (wanted_gpus is None or offer.gpu.name.lower() in wanted_gpus)
        ]
        return sorted(selected, key=lambda offer: (offer.usd_per_gpu_hour, offer.instance_type))

    def _describe_node(self, node: Any) -> tuple[Offer, _Pool] | None:
        labels = node.metadata.labels or {}
        allocatable = (node.status.allocatable or {}) if node.status else {}
        count = int(allocatable.get(GPU_RESOURCE, "0") or 0)
        gpu_name = gpu_of_node(labels)
        taints = (node.spec.taints or []) if node.spec else []
        if count < 1 or gpu_name is None or (node.spec and node.spec.unschedulable):
            return None
        if any(taint.key in TERMINATION_TAINTS for taint in taints):
            return None
        # a pool may mix instance types (Karpenter): one offer per pool and instance type, pinned to both
        pool_label = next((label for label in POOL_LABELS if label in labels), None)
        instance_type = labels.get(INSTANCE_TYPE_LABEL)
        selector = {pool_label: labels[pool_label]} if pool_label else {}
        if instance_type:
            selector[INSTANCE_TYPE_LABEL] = instance_type
        if not selector:
            selector = {"kubernetes.io/hostname": node.metadata.name}
        pool_name = "/".join(selector.values())
        market = market_of_node(labels)
        for label, spot, on_demand in CAPACITY_LABELS:
            if label in labels:
                selector[label] = labels[label]
        annotation = (node.metadata.annotations or {}).get(ANNOTATION_PRICE)
        try:
            price = float(annotation) if annotation is not None else None
            if price is not None and price <= 0:
                raise ValueError(annotation)
            region = labels.get("topology.kubernetes.io/region", "cluster")
            offer = offer_from_catalog(pool_name, gpu_name, count, region, market, price, _cloud_of(labels))
        except ValueError:
            log.warning("kubernetes: node %s not offered: annotation %s=%r is not a positive number of dollars per "
                        "GPU-hour", node.metadata.name, ANNOTATION_PRICE, annotation)
            return None
        except ClusterError as error:
            log.warning("%s; node %s not offered", error, node.metadata.name)
            return None
        tolerations = tuple(
            {"key": taint.key, "operator": "Equal", "value": taint.value, "effect": taint.effect}
            if taint.value else {"key": taint.key, "operator": "Exists", "effect": taint.effect}
            for taint in taints if not taint.key.startswith(BUILTIN_TAINT_PREFIXES)
        )
        return offer, _Pool(selector, tolerations)

    # launch and cleanup

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        """Create the attempt's RayCluster; the watches report `running` once every pod runs."""
        manifest = self.raycluster_manifest(offer, spec)
        name = manifest["metadata"]["name"]
        node = Node(name, offer, spec, time.time())
        with self._lock:
            self._clusters[name] = _Cluster(node, pods_expected=spec.nodes)
        try:
            with api_errors(f"cannot create RayCluster {self.namespace}/{name}"):
                self._custom.create_namespaced_custom_object(body=manifest, namespace=self.namespace, **RAYCLUSTER)
        except ClusterError:
            with self._lock:
                del self._clusters[name]
            raise
        return node

    def terminate(self, node: Node) -> None:
        """Delete the RayCluster (its pods go with it); idempotent."""
        from kubernetes.client.exceptions import ApiException

        with self._lock:
            state = self._clusters.get(node.id)
            if state is not None:
                state.terminated = True
        with api_errors(f"cannot delete RayCluster {self.namespace}/{node.id}"):
            try:
                self._custom.delete_namespaced_custom_object(name=node.id, namespace=self.namespace, **RAYCLUSTER)
            except ApiException as error:
                if error.status != 404:
                    raise

    def list_nodes(self, run_id: str) -> list[Node]:
        """The run's RayClusters still in the namespace, rebuilt from their annotations with the id `launch`
        returned. One this provider did not launch (a previous controller did) is taken under watch: the pods
        the watches already saw of it are replayed, so `watch` reports its `running`, `notice` or `lost` again."""
        self._api()
        selector = f"{LABEL_RUN}={label_value(run_id)},{MANAGED_BY[0]}={MANAGED_BY[1]}"
        with api_errors(f"cannot list the RayClusters of run {run_id}"):
            listed = self._custom.list_namespaced_custom_object(namespace=self.namespace, label_selector=selector,
                                                                **RAYCLUSTER)
        nodes = []
        for item in listed.get("items", []):
            if item["metadata"].get("deletionTimestamp"):
                continue  # being deleted: terminated already, its pods are going
            node = node_of_raycluster(item)
            if node.spec.run_id == run_id:  # label values are cut to 63 characters; the annotation is whole
                nodes.append(node)
        with self._lock:
            for node in nodes:
                if node.id not in self._clusters:
                    self._clusters[node.id] = _Cluster(node, pods_expected=node.spec.nodes)
                    for kind, pod in self._unclaimed_pods.pop(node.id, {}).values():
                        self._apply_pod(kind, pod)
        self._record_events()
        return nodes

    # the manifest

    def raycluster_manifest(self, offer: Offer, spec: LaunchSpec) -> dict[str, Any]:
        """The RayCluster of one trial attempt (ray.io/v1), as `launch` creates it."""
        settings = self.settings
        image = settings.pod_image()
        if image is None:
            raise ClusterError(f"provider_settings.kubernetes.image: no image for the trial pods (nor ${IMAGE_ENV})")
        if not spec.payload:
            raise ClusterError(f"kubernetes: attempt {spec.attempt} of trial {spec.trial_id} has no payload URI; the "
                               "node entry point has nothing to run")
        if spec.gpus > offer.gpus_per_instance:
            raise ClusterError(f"kubernetes: {spec.gpus} GPUs per machine do not fit pool {offer.instance_type} "
                               f"({offer.gpus_per_instance} per node); re-plan")
        pool = self._pools.get(offer.key)
        if pool is None:
            self.offers(Requirements(gpus=spec.gpus, market=offer.market))
            pool = self._pools.get(offer.key)
        if pool is None:
            raise ClusterError(f"kubernetes: pool {offer.instance_type} ({offer.key}) has no schedulable GPU node "
                               "any more; re-plan")
        name = cluster_name(spec)
        labels = {
            MANAGED_BY[0]: MANAGED_BY[1], LABEL_RUN: label_value(spec.run_id), LABEL_TRIAL: label_value(spec.trial_id),
            LABEL_ATTEMPT: str(spec.attempt),
        }
        offer_fields = {**asdict(offer), "gpu": offer.gpu.name}
        metadata: dict[str, Any] = {
            "name": name, "namespace": self.namespace, "labels": labels,
            "annotations": {
                "ray.io/overwrite-container-cmd": "true",
                ANNOTATION_OFFER: json.dumps(offer_fields, sort_keys=True),
                ANNOTATION_SPEC: json.dumps(asdict(spec), sort_keys=True),
            },
        }
        if self._owner is not None:
            metadata["ownerReferences"] = [{**self._owner, "controller": False, "blockOwnerDeletion": False}]
        start_params = {"num-gpus": str(spec.gpus)}
        templates = [self._pod_template(name, labels, spec, index, image, pool) for index in range(spec.nodes)]
        ray_spec: dict[str, Any] = {
            "rayVersion": settings.ray_version or _installed_ray_version(),
            "authOptions": {"mode": "token"},
            "headGroupSpec": {"rayStartParams": {**start_params, "dashboard-host": "127.0.0.1"},
                              "template": templates[0]},
        }
        if spec.nodes > 1:
            ray_spec["workerGroupSpecs"] = [
                {"groupName": f"node-{index}", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                 "rayStartParams": dict(start_params), "template": templates[index]}
                for index in range(1, spec.nodes)
            ]
        return {"apiVersion": f"{RAYCLUSTER['group']}/{RAYCLUSTER['version']}", "kind": "RayCluster",
                "metadata": metadata, "spec": ray_spec}

    def _pod_template(self, name: str, labels: dict[str, str], spec: LaunchSpec, index: int, image: str,
                      pool: _Pool) -> dict[str, Any]:
        """Machine `index` of the attempt: the Ray head when 0, else a worker; its env is what the node entry
        point reads (cluster/node/entry.py)."""
        settings = self.settings
        role = "head" if index == 0 else "worker"
        env: list[dict[str, Any]] = [
            {"name": "SPOTTUNE_PAYLOAD", "value": spec.payload},
            {"name": "SPOTTUNE_NODE_ROLE", "value": role},
            {"name": "SPOTTUNE_NODE_INDEX", "value": str(index)},
            {"name": "SPOTTUNE_NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SPOTTUNE_SIGTERM_GRACE_S", "value": str(sigterm_grace_s(settings.termination_grace_s))},
        ]
        if spec.storage_endpoint:
            env.append({"name": "SPOTTUNE_STORAGE_ENDPOINT", "value": spec.storage_endpoint})
        env += [{"name": key, "value": value} for key, value in sorted(settings.env.items())]
        resources = {"cpu": settings.cpu, "memory": settings.memory, GPU_RESOURCE: str(spec.gpus)}
        container: dict[str, Any] = {
            "name": f"ray-{role}", "image": image, "imagePullPolicy": settings.image_pull_policy,
            "command": node_command(spec), "env": env,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
        if settings.secret_env:
            container["envFrom"] = [{"secretRef": {"name": secret}} for secret in settings.secret_env]
        pod: dict[str, Any] = {
            "containers": [container], "restartPolicy": "Never",  # an entry point that ends leaves the pod ended
            "terminationGracePeriodSeconds": settings.termination_grace_s,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "nodeSelector": dict(pool.node_selector),
        }
        if settings.service_account:
            pod["serviceAccountName"] = settings.service_account
        tolerations = [*pool.tolerations, *settings.tolerations]
        if tolerations:
            pod["tolerations"] = tolerations
        return {"metadata": {"labels": {**labels, LABEL_NODE: name, LABEL_NODE_INDEX: str(index)}}, "spec": pod}

    # events

    def watch(self, node: Node) -> list[NodeEvent]:
        with self._lock:
            state = self._clusters.get(node.id)
            if state is None:
                return []
            events, state.events = state.events, []
        return events

    def _watch_pods(self) -> None:
        selector = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
        self._follow(lambda **kw: self._core.list_namespaced_pod(self.namespace, label_selector=selector, **kw),
                     self._core.list_namespaced_pod, {"namespace": self.namespace, "label_selector": selector},
                     self._on_pod)

    def _watch_nodes(self) -> None:
        self._follow(lambda **kw: self._core.list_node(**kw), self._core.list_node, {},
                     self._on_node)

    def _follow(self, list_now: Callable[..., Any], list_call: Callable[..., Any], arguments: dict[str, Any],
                handle: Callable[[str, Any], None]) -> None:
        """List, then watch from that resourceVersion; relist when the server says the version is gone (410)."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listed = list_now()
                    for item in listed.items:
                        handle("ADDED", item)
                    self._record_events()
                    version = listed.metadata.resource_version
                stream = watch.Watch()
                self._watches.append(stream)
                try:
                    for event in stream.stream(list_call, resource_version=version,
                                               timeout_seconds=self.settings.watch_timeout_s, **arguments):
                        handle(event["type"], event["object"])
                        self._record_events()
                        version = stream.resource_version
                        if self._stopping.is_set():
                            break
                finally:
                    self._watches.remove(stream)
            except ApiException as error:
                if error.status == 410:
                    version = None
                    continue
                log.warning("kubernetes watch failed (%s %s); retrying", error.status, error.reason)
                self._stopping.wait(1.0)
            except Exception as error:  # a dropped connection must not end the watch
                log.warning("kubernetes watch interrupted (%s); retrying", error)
                self._stopping.wait(1.0)

    def _on_pod(self, kind: str, pod: Any) -> None:
        with self._lock:
            self._apply_pod(kind, pod)

    def _apply_pod(self, kind: str, pod: Any) -> None:
        """One pod event, under the lock. A pod of a RayCluster this provider does not hold (yet) is kept, the
        latest event per pod, until list_nodes takes that RayCluster over."""
        name = (pod.metadata.labels or {}).get(LABEL_NODE)
        if name is None:
            return
        state = self._clusters.get(name)
        if state is None:
            self._unclaimed_pods.setdefault(name, {})[pod.metadata.name] = (kind, pod)
            return
        if state.terminated:
            return
        pod_name = pod.metadata.name
        state.pod_nodes[pod_name] = (pod.spec.node_name or "") if pod.spec else ""
        if pod_name not in state.node.machines:
            state.node.machines.append(pod_name)
        phase = pod.status.phase if pod.status else None
        disruption = next((c for c in (pod.status.conditions or []) if c.type == "DisruptionTarget"
                           and c.status == "True"), None) if pod.status else None
        if kind == "DELETED":
            self._lose(state, f"pod {pod_name} was deleted")
        elif phase == "Succeeded" or (phase == "Failed" and not pod.status.reason):
            self._exit(state, f"pod {pod_name}: node entry point exited with status {_exit_code(pod)}")
        elif phase == "Failed":  # the kubelet ended it (Evicted, node shutdown, ...), not the entry point
            why = " ".join(filter(None, (pod.status.reason, pod.status.message)))
            self._lose(state, f"pod {pod_name} {'evicted' if pod.status.reason == 'Evicted' else 'failed'}: {why}")
        elif pod.metadata.deletion_timestamp is not None or disruption is not None:
            deadline = _timestamp(pod.metadata.deletion_timestamp)
            if deadline is None:
                deadline = time.time() + self.settings.termination_grace_s
            why = f" ({disruption.reason}: {disruption.message})" if disruption is not None else ""
            self._notice(state, deadline, f"pod {pod_name} is being terminated{why}")
        elif phase == "Running":
            state.running_pods.add(pod_name)
            if not state.running and len(state.running_pods) >= state.pods_expected:
                state.running = True
                state.events.append(NodeEvent("running", time.time()))
        node_notice = self._node_notices.get(state.pod_nodes[pod_name])
        if node_notice is not None:
            self._notice(state, *node_notice)

    def _on_node(self, kind: str, node: Any) -> None:
        node_name = node.metadata.name
        with self._lock:
            affected = [state for state in self._clusters.values()
                        if not state.terminated and node_name in state.pod_nodes.values()]
            if kind == "DELETED":
                for state in affected:
                    self._lose(state, f"node {node_name} was deleted")
                return
            for taint in (node.spec.taints or []) if node.spec else []:
                if taint.key not in TERMINATION_TAINTS or node_name in self._node_notices:
                    continue
                added = _timestamp(taint.time_added) or time.time()
                notice_s = TERMINATION_TAINTS[taint.key]
                deadline = added + (notice_s if notice_s is not None else self.settings.termination_grace_s)
                self._node_notices[node_name] = (deadline, f"node {node_name} tainted {taint.key} ({taint.effect})")
                for state in affected:
                    self._notice(state, *self._node_notices[node_name])

    def _notice(self, state: _Cluster, deadline: float, reason: str) -> None:
        if state.noticed or state.lost:
            return
        state.noticed = True
        state.events.append(NodeEvent("notice", time.time(), deadline=deadline, reason=reason))
        self._unrecorded.append((state.node.id, "SpottuneNotice", reason))

    def _lose(self, state: _Cluster, reason: str) -> None:
        if state.lost:
            return
        state.lost = True
        state.events.append(NodeEvent("lost", time.time(), reason=reason))
        self._unrecorded.append((state.node.id, "SpottuneLost", reason))

    def _exit(self, state: _Cluster, reason: str) -> None:
        """A pod's node entry point ended by itself (its pods run with restartPolicy Never)."""
        if state.lost:
            return
        state.lost = True
        state.events.append(NodeEvent("exited", time.time(), reason=reason))

    def _record_events(self) -> None:
        """Post the Kubernetes Events queued under the lock (outside it: each is an API call)."""
        with self._lock:
            pending, self._unrecorded = self._unrecorded, []
        for name, reason, message in pending:
            self._record(name, reason, message)

    def _record(self, name: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the RayCluster, so `kubectl describe raycluster` says why spottune gave it up."""
        from kubernetes.client.exceptions import ApiException

        now = datetime.fromtimestamp(time.time()).astimezone().isoformat()
        body = {
            "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": self.namespace},
            "involvedObject": {"apiVersion": f"{RAYCLUSTER['group']}/{RAYCLUSTER['version']}", "kind": "RayCluster",
                               "name": name, "namespace": self.namespace},
            "reason": reason, "message": message, "type": "Warning", "source": {"component": "spottune"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._core.create_namespaced_event(self.namespace, body)
        except ApiException as error:
            log.warning("kubernetes: cannot record event on %s (%s %s)", name, error.status, error.reason)


register(ProviderKind(NAME, KubernetesSettings, KubernetesProvider.from_settings))
