"""The kubernetes provider through the official client against a local API server (tests/cluster/k8s_api_server.py).

What this proves: the requests the provider makes (paths, verbs, label selectors, bodies) as the official
client sends them; how it reads list and watch responses in the API's wire format, including a watch that
expires (410) and one that ends; the offers it derives from nodes; the NodeEvents it derives from pod and node
watch events; the RayCluster it creates validates against the KubeRay v1.7.0 CRD and the Kubernetes 1.33
schemas. What it cannot prove: that a real API server accepts the requests (RBAC, admission, defaulting), that
KubeRay turns the RayCluster into the pods these tests replay, that the scheduler places them on the pool,
that real Karpenter/GKE/termination-handler taints arrive in this order and timing, or that a pod's SIGTERM
reaches the node entry point in time. The node and pod objects replayed here are written from the API
reference and the clouds' label docs, not captured from a live cluster. docs/kubernetes.md says how to check
those on EKS or GKE.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from cluster.errors import ClusterError
from cluster.node.boot import IMAGE_INSTALL, boot_script
from cluster.provider import LaunchSpec, Requirements
from cluster.providers.kubernetes import (
    ANNOTATION_OFFER, LABEL_NODE, KubernetesProvider, KubernetesSettings, cluster_name,
    offer_from_catalog,
)
from tests.cluster.k8s_api_server import KubernetesApiServer, status
from tests.cluster.k8s_manifests import validate

NAMESPACE = "spot"
NODES = json.loads((Path(__file__).resolve().parents[1] / "data" / "k8s" / "nodes.json").read_text())
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayclusters"
EVENTS = f"/api/v1/namespaces/{NAMESPACE}/events"
PAYLOAD = "s3://bucket/runs/{run}/{trial}/attempts/{attempt}/payload.json"


@contextmanager
def started(provider: KubernetesProvider, server: KubernetesApiServer, pods: str = PODS):
    """The provider started against the server; afterwards its watches are ended from the server's side,
    as a real API server's watch timeout would (stop() alone returns, leaving a daemon blocked on the stream)."""
    provider.start()
    try:
        yield provider
    finally:
        provider._stopping.set()  # so the watch threads do not reconnect once their stream ends
        for path in (pods, "/api/v1/nodes"):
            server.end_stream(path)
        provider.stop()


def settings(**overrides) -> KubernetesSettings:
    return KubernetesSettings(image="registry.example/spottune:0.1.0", secret_env=["spottune-storage"],
                              service_account="spottune-node", **overrides)


def launch_spec(run: str, trial: str, index: int, attempt: int, **fields) -> LaunchSpec:
    """A LaunchSpec as the controller makes it: with the attempt's payload URI."""
    payload = PAYLOAD.format(run=run, trial=trial, attempt=attempt)
    return LaunchSpec(run, trial, index, attempt, payload=payload, **fields)


def env_of(template: dict) -> dict:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in template["spec"]["containers"][0]["env"]}


def wait_for(read, count: int, timeout_s: float = 20.0) -> list:
    """Collect what `read()` returns until `count` items have arrived (the watches run in threads)."""
    collected: list = []
    deadline = time.monotonic() + timeout_s
    while len(collected) < count and time.monotonic() < deadline:
        collected += read()
        time.sleep(0.01)
    return collected


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def offer_of(provider: KubernetesProvider, instance_type: str):
    return next(o for o in provider.offers(Requirements(market="any")) if o.instance_type == instance_type)


def pod(cluster: str, name: str, phase: str, node: str | None = None, **status_fields) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": str(time.monotonic_ns()),
                     "labels": {"app.kubernetes.io/managed-by": "spottune", LABEL_NODE: cluster}},
        "spec": {"containers": [{"name": "ray", "image": "x"}], **({"nodeName": node} if node else {})},
        "status": {"phase": phase, **status_fields},
    }


@pytest.fixture
def api(tmp_path):
    server = KubernetesApiServer().start()
    server.answer("GET", PODS, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"},
                                "items": []})
    server.answer("GET", "/api/v1/nodes", NODES)
    server.answer("POST", RAYCLUSTERS, lambda request: (201, {
        **request.body, "metadata": {**request.body["metadata"], "uid": "rc-uid", "resourceVersion": "300",
                                     "creationTimestamp": "2026-11-29T20:00:00Z"}}))
    server.answer("POST", EVENTS, lambda request: (201, request.body))
    yield server
    server.close()


@pytest.fixture
def provider(api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
    with started(KubernetesProvider(settings(kubeconfig=str(kubeconfig))), api) as provider:
        yield provider


def test_offers_come_from_schedulable_gpu_nodes_priced_by_annotation_or_catalog(provider, api):
    spot = provider.offers(Requirements(market="spot"))
    assert [(o.instance_type, o.gpu.name, o.gpus_per_instance, o.region, o.usd_per_gpu_hour) for o in spot] == [
        ("gpu-spot/g6.12xlarge", "L4", 4, "us-east-1", 0.3879),  # a pool of two instance types: two offers
        ("gpu-spot/g6.xlarge", "L4", 1, "us-east-1", 0.3879),  # the catalog's aws g6.xlarge spot price (EKS node)
        ("a100-spot/a2-ultragpu-1g", "A100-80GB", 1, "us-east4", 1.5),  # the node's price annotation
    ]
    assert all(o.provider == "kubernetes" for o in spot)
    assert "aws g6.xlarge" in spot[0].source and spot[2].source == "price set on pool a100-spot/a2-ultragpu-1g"
    on_demand = provider.offers(Requirements(market="on-demand"))
    assert [(o.instance_type, o.gpu.name, o.usd_per_gpu_hour) for o in on_demand] == [
        ("a10g-ondemand/g5.xlarge", "A10G", 1.006)]
    assert provider.offers(Requirements(market="any", gpu_types=("a10g", "H100"))) == on_demand
    request = api.calls("GET", "/api/v1/nodes", watch=False)[-1]
    assert request.headers["authorization"] == "Bearer test-token"  # the kubeconfig's user reached the server


def test_a_declared_pool_is_offered_without_nodes_and_an_unpriced_gpu_is_refused(api, tmp_path):
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE))
    pool = {"name": "h100-zero", "node_selector": {"karpenter.sh/nodepool": "h100"}, "gpu": "H100",
            "gpus_per_node": 8, "market": "spot"}
    provider = KubernetesProvider(settings(kubeconfig=kubeconfig, pools=[pool], watch_timeout_s=1))
    with started(provider, api):
        offer = next(o for o in provider.offers(Requirements(gpu_types=("H100",))) if o.instance_type == "h100-zero")
        assert (offer.gpus_per_instance, offer.usd_per_gpu_hour) == (8, 1.976)  # cheapest catalog H100 spot
        manifest = provider.raycluster_manifest(offer, launch_spec("run-1", "t000-aa", 0, 1, gpus=8))
        head = manifest["spec"]["headGroupSpec"]
        assert "workerGroupSpecs" not in manifest["spec"]  # one machine: the head is the whole attempt
        assert head["rayStartParams"]["num-gpus"] == "8"
        assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert head["template"]["spec"]["nodeSelector"] == {"karpenter.sh/nodepool": "h100"}
        validate(manifest)
        with pytest.raises(ClusterError, match="no spot price for A10.*usd_per_gpu_hour"):
            offer_from_catalog("a10", "A10", 1, "cluster", "spot", None, None)


def test_launch_posts_one_valid_raycluster_whose_pods_run_the_node_entry_point(provider, api):
    offer = offer_of(provider, "gpu-spot/g6.xlarge")
    spec = launch_spec("sweep-20261129", "t001-bdea8d", 1, 2, gpus=1, nodes=3,
                       storage_endpoint="http://seaweedfs.storage:8333")
    node = provider.launch(offer, spec)
    posted = api.calls("POST", RAYCLUSTERS)[-1].body
    validate(posted)
    assert node.id == posted["metadata"]["name"] == cluster_name(spec)
    assert node.price_per_hour == pytest.approx(3 * 0.3879)  # three one-GPU machines
    assert posted["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "spottune", "spottune.io/run": "sweep-20261129",
        "spottune.io/trial": "t001-bdea8d", "spottune.io/attempt": "2",
    }
    assert posted["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert "ownerReferences" not in posted["metadata"]  # outside the cluster there is no controller object
    groups = posted["spec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"], g["minReplicas"], g["maxReplicas"]) for g in groups] == [
        ("node-1", 1, 1, 1), ("node-2", 1, 1, 1)]  # machines 1 and 2, one pod each so each knows its index
    templates = [posted["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in groups]
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    for index, template in enumerate(templates):
        pod_spec = template["spec"]
        container = pod_spec["containers"][0]
        shell, flag, script = container["command"]
        assert (shell, flag) == ("bash", "-c")
        assert script == 'export SPOTTUNE_RAY_START="$KUBERAY_GEN_RAY_START_CMD"\n' + boot_script(
            "s3://bucket/runs/sweep-20261129/t001-bdea8d/attempts/2/payload.json", "http://seaweedfs.storage:8333",
            IMAGE_INSTALL), "the same boot script as every provider's, spottune from the image"
        assert env_of(template) == {
            "SPOTTUNE_PAYLOAD": "s3://bucket/runs/sweep-20261129/t001-bdea8d/attempts/2/payload.json",
            "SPOTTUNE_NODE_ROLE": "head" if index == 0 else "worker", "SPOTTUNE_NODE_INDEX": str(index),
            "SPOTTUNE_NODE_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
            "SPOTTUNE_SIGTERM_GRACE_S": "115",  # the notice deadline comes 5 s before the grace period's SIGKILL
            "SPOTTUNE_STORAGE_ENDPOINT": "http://seaweedfs.storage:8333",
        }
        assert pod_spec["terminationGracePeriodSeconds"] == 120 and pod_spec["serviceAccountName"] == "spottune-node"
        assert pod_spec["restartPolicy"] == "Never"  # an entry point that ends is not run again in the same pod
        assert container["image"] == "registry.example/spottune:0.1.0"
        assert container["envFrom"] == [{"secretRef": {"name": "spottune-storage"}}]  # secrets by reference only
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod_spec["nodeSelector"] == {"karpenter.sh/nodepool": "gpu-spot", "karpenter.sh/capacity-type": "spot",
                                            "node.kubernetes.io/instance-type": "g6.xlarge"}
        assert gpu_taint in pod_spec["tolerations"]  # the pool's own taint
        assert template["metadata"]["labels"]["spottune.io/node-index"] == str(index)
    assert json.loads(posted["metadata"]["annotations"][ANNOTATION_OFFER])["usd_per_gpu_hour"] == 0.3879
    assert posted["spec"]["rayVersion"] == version("ray")  # the controller's Ray: same image as the pods


def test_an_attempt_the_pods_cannot_run_fails_in_one_line(provider, api, monkeypatch):
    offer = offer_of(provider, "gpu-spot/g6.xlarge")
    with pytest.raises(ClusterError, match="^kubernetes: attempt 1 of trial t has no payload URI"):
        provider.launch(offer, LaunchSpec("r", "t", 0, 1))
    with pytest.raises(ClusterError, match=r"^kubernetes: 2 GPUs per machine do not fit pool gpu-spot/g6.xlarge "
                                           r"\(1 per node\); re-plan$"):
        provider.launch(offer, launch_spec("r", "t", 0, 1, gpus=2))
    assert api.calls("POST", RAYCLUSTERS) == []
    monkeypatch.delenv("SPOTTUNE_IMAGE", raising=False)
    with pytest.raises(ClusterError) as no_image:
        KubernetesProvider(KubernetesSettings()).start()
    assert str(no_image.value).startswith("provider_settings.kubernetes.image: no image for the trial pods")
    monkeypatch.setenv("SPOTTUNE_IMAGE", "registry.example/spottune:chart")  # what the Helm chart sets
    assert KubernetesSettings().pod_image() == "registry.example/spottune:chart"


def test_pod_and_node_watch_events_become_running_notice_and_lost(provider, api):
    l4_offer = offer_of(provider, "gpu-spot/g6.xlarge")
    l4 = provider.launch(l4_offer, launch_spec("run-1", "t000-aa", 0, 1, nodes=2))
    a100_offer = offer_of(provider, "a100-spot/a2-ultragpu-1g")
    a100 = provider.launch(a100_offer, launch_spec("run-1", "t001-bb", 1, 1, nodes=2))
    evicted = provider.launch(l4_offer, launch_spec("run-1", "t002-cc", 2, 1, nodes=2))
    gpu_node = "ip-10-0-1-12.ec2.internal"

    # trial 0: Pending -> Running on a spot L4 node, then the termination handler taints the node
    api.push(PODS, "ADDED", pod(l4.id, f"{l4.id}-head", "Pending"))
    api.push(PODS, "MODIFIED", pod(l4.id, f"{l4.id}-head", "Running", "ip-10-0-0-5.ec2.internal"))
    api.push(PODS, "ADDED", pod(l4.id, f"{l4.id}-worker", "Pending", gpu_node))
    api.push(PODS, "MODIFIED", pod(l4.id, f"{l4.id}-worker", "Running", gpu_node))
    assert [e.kind for e in wait_for(lambda: provider.watch(l4), 1)] == ["running"]
    tainted = copy.deepcopy(next(n for n in NODES["items"] if n["metadata"]["name"] == gpu_node))
    tainted["spec"]["taints"].append({"key": "aws-node-termination-handler/spot-itn", "value": "1795982400",
                                      "effect": "NoSchedule", "timeAdded": "2026-11-29T20:00:00Z"})
    api.push("/api/v1/nodes", "MODIFIED", tainted)
    (notice,) = wait_for(lambda: provider.watch(l4), 1)
    assert notice.kind == "notice" and "spot-itn" in notice.reason
    assert notice.deadline == epoch("2026-11-29T20:00:00Z") + 120  # taint time + the 2-minute spot notice
    api.push("/api/v1/nodes", "DELETED", tainted)
    (lost,) = wait_for(lambda: provider.watch(l4), 1)
    assert (lost.kind, lost.reason) == ("lost", f"node {gpu_node} was deleted")

    # trial 1: its node is deleted with no notice at all
    gke = "gke-train-a100-spot-4f2a"
    api.push(PODS, "ADDED", pod(a100.id, f"{a100.id}-head", "Running", "ip-10-0-0-5.ec2.internal"))
    api.push(PODS, "ADDED", pod(a100.id, f"{a100.id}-worker", "Running", gke))
    assert [e.kind for e in wait_for(lambda: provider.watch(a100), 1)] == ["running"]
    api.push("/api/v1/nodes", "DELETED", next(n for n in NODES["items"] if n["metadata"]["name"] == gke))
    assert [(e.kind, e.reason) for e in wait_for(lambda: provider.watch(a100), 1)] == [
        ("lost", f"node {gke} was deleted")]

    # trial 2: the worker is drained (DisruptionTarget, deletion with its grace period), then fails Evicted
    other = "ip-10-0-1-13.ec2.internal"
    api.push(PODS, "ADDED", pod(evicted.id, f"{evicted.id}-head", "Running", "ip-10-0-0-5.ec2.internal"))
    worker = pod(evicted.id, f"{evicted.id}-worker", "Running", other)
    api.push(PODS, "ADDED", worker)
    assert [e.kind for e in wait_for(lambda: provider.watch(evicted), 1)] == ["running"]
    draining = copy.deepcopy(worker)
    draining["metadata"]["deletionTimestamp"] = "2026-11-29T20:02:00Z"
    draining["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                         "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]
    api.push(PODS, "MODIFIED", draining)
    (notice,) = wait_for(lambda: provider.watch(evicted), 1)
    assert notice.kind == "notice" and notice.deadline == epoch("2026-11-29T20:02:00Z")
    assert "EvictionByEvictionAPI" in notice.reason
    api.push(PODS, "MODIFIED", pod(evicted.id, f"{evicted.id}-worker", "Failed", other, reason="Evicted",
                                   message="The node was low on resource: memory."))
    (lost,) = wait_for(lambda: provider.watch(evicted), 1)
    assert lost.kind == "lost" and lost.reason.startswith(f"pod {evicted.id}-worker evicted: Evicted")

    wait_for(lambda: [True] if len(api.calls("POST", EVENTS)) >= 5 else [], 1)
    recorded = [r.body for r in api.calls("POST", EVENTS)]
    assert sorted((e["involvedObject"]["name"], e["reason"]) for e in recorded) == sorted([
        (l4.id, "SpottuneNotice"), (l4.id, "SpottuneLost"), (a100.id, "SpottuneLost"),
        (evicted.id, "SpottuneNotice"), (evicted.id, "SpottuneLost"),
    ])
    for event in recorded:
        validate({"apiVersion": "v1", "kind": "Event", **event})


def test_an_entry_point_that_ends_by_itself_is_exited_and_a_node_shutdown_is_lost(provider, api):
    offer = offer_of(provider, "gpu-spot/g6.xlarge")
    done, crashed, shut_down = (provider.launch(offer, launch_spec("run-1", f"t00{i}-aa", i, 1)) for i in range(3))
    gpu_node = "ip-10-0-1-12.ec2.internal"

    def ended(code: int) -> dict:
        return {"containerStatuses": [{"name": "ray-head", "image": "x", "imageID": "", "ready": False,
                                       "restartCount": 0, "state": {"terminated": {"exitCode": code}}}]}

    for node in (done, crashed, shut_down):
        api.push(PODS, "ADDED", pod(node.id, f"{node.id}-head", "Running", gpu_node))
        assert [e.kind for e in wait_for(lambda: provider.watch(node), 1)] == ["running"]
    api.push(PODS, "MODIFIED", pod(done.id, f"{done.id}-head", "Succeeded", gpu_node, **ended(0)))
    api.push(PODS, "MODIFIED", pod(crashed.id, f"{crashed.id}-head", "Failed", gpu_node, **ended(1)))
    api.push(PODS, "MODIFIED", pod(shut_down.id, f"{shut_down.id}-head", "Failed", gpu_node, reason="Terminated",
                                   message="Pod was terminated in response to imminent node shutdown.", **ended(143)))
    assert [(e.kind, e.reason) for e in wait_for(lambda: provider.watch(done), 1)] == [
        ("exited", f"pod {done.id}-head: node entry point exited with status 0")]
    assert [(e.kind, e.reason) for e in wait_for(lambda: provider.watch(crashed), 1)] == [
        ("exited", f"pod {crashed.id}-head: node entry point exited with status 1")]
    assert [(e.kind, e.reason) for e in wait_for(lambda: provider.watch(shut_down), 1)] == [
        ("lost", f"pod {shut_down.id}-head failed: Terminated Pod was terminated in response to imminent node "
                 "shutdown.")]
    api.push(PODS, "DELETED", pod(done.id, f"{done.id}-head", "Succeeded", gpu_node))  # KubeRay removes it
    sentinel = provider.launch(offer, launch_spec("run-1", "t009-zz", 9, 1))
    api.push(PODS, "ADDED", pod(sentinel.id, f"{sentinel.id}-head", "Running", gpu_node))  # after, on one stream
    assert [e.kind for e in wait_for(lambda: provider.watch(sentinel), 1)] == ["running"]
    assert provider.watch(done) == []  # one last event per attempt
    assert done.machines == [f"{done.id}-head"]  # the pods that ran it


def test_a_terminated_cluster_reports_nothing_and_an_expired_watch_relists(provider, api):
    offer = offer_of(provider, "gpu-spot/g6.xlarge")
    node = provider.launch(offer, launch_spec("run-1", "t000-aa", 0, 1))
    api.answer("DELETE", f"{RAYCLUSTERS}/{node.id}", {"kind": "Status", "apiVersion": "v1", "status": "Success"})
    provider.terminate(node)
    api.push(PODS, "MODIFIED", pod(node.id, f"{node.id}-worker", "Failed", "n", reason="Evicted"))
    lists_before = len(api.calls("GET", PODS, watch=False))
    api.push(PODS, "ERROR", status(410, "Expired", "too old resource version: 100 (250)"))
    wait_for(lambda: api.calls("GET", PODS, watch=False)[lists_before:], 1)
    assert len(api.calls("GET", PODS, watch=False)) == lists_before + 1  # relisted after the 410
    assert provider.watch(node) == []
    api.answer("DELETE", f"{RAYCLUSTERS}/{node.id}", status(404, "NotFound", "gone"), code=404)
    provider.terminate(node)  # idempotent
    assert len(api.calls("DELETE", f"{RAYCLUSTERS}/{node.id}")) == 2


def test_list_nodes_finds_a_runs_leftovers_by_label(provider, api):
    offer = offer_of(provider, "gpu-spot/g6.xlarge")
    spec = launch_spec("run-1", "t000-aa", 0, 3, gpus=1)
    launched = provider.launch(offer, spec)
    created = api.calls("POST", RAYCLUSTERS)[-1].body
    api.answer("GET", RAYCLUSTERS, {"apiVersion": "ray.io/v1", "kind": "RayClusterList", "metadata": {},
                                    "items": [created]})
    (leftover,) = provider.list_nodes("run-1")
    assert api.calls("GET", RAYCLUSTERS)[-1].query["labelSelector"] == (
        "spottune.io/run=run-1,app.kubernetes.io/managed-by=spottune")
    assert (leftover.id, leftover.offer, leftover.spec) == (launched.id, offer, spec)


def test_a_restarted_controller_finds_its_rayclusters_and_their_watches_report_again(api, tmp_path):
    """Controller 1 launches two attempts and dies; controller 2 (a new provider on the same API server) lists
    the run's RayClusters: same ids as launch returned, and the pods the cluster already runs give `running`
    again; a later eviction is reported too. A cluster being deleted and another run's cluster are not its."""
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kc", NAMESPACE))
    with started(KubernetesProvider(settings(kubeconfig=kubeconfig)), api) as provider:
        offer = offer_of(provider, "gpu-spot/g6.xlarge")
        first = provider.launch(offer, launch_spec("run-1", "t000-aa", 0, 1, nodes=2))
        second = provider.launch(offer, launch_spec("run-1", "t001-bb", 1, 4))
        other_run = provider.launch(offer, launch_spec("run-2", "t000-aa", 0, 1))
    created = [call.body for call in api.calls("POST", RAYCLUSTERS)]
    deleting = copy.deepcopy(created[0])
    deleting["metadata"].update(name="st-t002-cc-a1-000000", deletionTimestamp="2026-11-29T20:05:00Z")
    api.answer("GET", RAYCLUSTERS, lambda request: (200, {
        "apiVersion": "ray.io/v1", "kind": "RayClusterList", "metadata": {"resourceVersion": "400"},
        "items": [item for item in created + [deleting]
                  if item["metadata"]["labels"]["spottune.io/run"] in request.query["labelSelector"]]}))
    gpu_nodes = ("ip-10-0-1-12.ec2.internal", "ip-10-0-1-13.ec2.internal", "ip-10-0-3-3.ec2.internal")
    running = [pod(first.id, f"{first.id}-head", "Running", gpu_nodes[0]),
               pod(first.id, f"{first.id}-node-1-x7k2p", "Running", gpu_nodes[1]),
               pod(second.id, f"{second.id}-head", "Running", gpu_nodes[2]),
               pod(other_run.id, f"{other_run.id}-head", "Running", gpu_nodes[2])]
    api.answer("GET", PODS, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "500"},
                             "items": running})
    watches_before = len(api.calls("GET", PODS, watch=True))
    restarted = KubernetesProvider(settings(kubeconfig=kubeconfig))
    with started(restarted, api):
        wait_for(lambda: api.calls("GET", PODS, watch=True)[watches_before:], 1)  # it listed the pods, then watches
        found = restarted.list_nodes("run-1")
        assert sorted((n.id, n.offer, n.spec) for n in found) == sorted(
            (n.id, n.offer, n.spec) for n in (first, second))  # what launch returned: the controller matches ids
        assert all(n.price_per_hour == m.price_per_hour for n, m in zip(sorted(found, key=lambda n: n.id),
                                                                        sorted((first, second), key=lambda n: n.id)))
        by_id = {n.id: n for n in found}
        assert [e.kind for e in wait_for(lambda: restarted.watch(by_id[first.id]), 1)] == ["running"]
        assert [e.kind for e in wait_for(lambda: restarted.watch(by_id[second.id]), 1)] == ["running"]
        api.push(PODS, "MODIFIED", pod(second.id, f"{second.id}-head", "Failed", gpu_nodes[2], reason="Evicted"))
        (lost,) = wait_for(lambda: restarted.watch(by_id[second.id]), 1)
        assert lost.kind == "lost" and "evicted" in lost.reason
        assert restarted.watch(by_id[first.id]) == []
        assert sorted(by_id[first.id].machines) == [f"{first.id}-head", f"{first.id}-node-1-x7k2p"]
        assert restarted.list_nodes("run-1") and restarted.watch(by_id[first.id]) == []  # adopted once


def test_under_the_chart_the_raycluster_is_owned_by_the_controller_deployment(api, tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTTUNE_OWNER_DEPLOYMENT", "spottune")
    api.answer("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/spottune", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "spottune", "uid": "deploy-uid"},
        "spec": {"selector": {}, "template": {}}})
    provider = KubernetesProvider(settings(kubeconfig=str(api.write_kubeconfig(tmp_path / "kc", NAMESPACE))))
    with started(provider, api):
        node = provider.launch(offer_of(provider, "gpu-spot/g6.xlarge"), launch_spec("r", "t", 0, 1))
        posted = api.calls("POST", RAYCLUSTERS)[-1].body
        assert posted["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                          "name": "spottune", "uid": "deploy-uid",
                                                          "controller": False, "blockOwnerDeletion": False}]
        assert node.id == posted["metadata"]["name"]
        validate(posted)


def test_bad_settings_fail_with_the_field_named():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="image\n  String should have at least 1 character"):
        KubernetesSettings(image="")
    with pytest.raises(ValidationError, match="termination_grace_s\n  Input should be greater than or equal to 10"):
        KubernetesSettings(termination_grace_s=3)
    with pytest.raises(ValidationError, match="memory\n.*'16 GB' is not a Kubernetes quantity"):
        KubernetesSettings(image="x", memory="16 GB")
    with pytest.raises(ValidationError, match="nodeSelector\n  Extra inputs are not permitted"):
        KubernetesSettings(image="x", nodeSelector={})


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the in-cluster config speaks HTTPS to the service address)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "ca.crt", directory / "tls.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_inside_a_pod_the_service_account_config_is_used(tmp_path, monkeypatch):
    """The in-cluster path: service address from the environment, token, CA and namespace from the
    service-account files (here in tmp_path instead of /var/run/secrets), over TLS."""
    from kubernetes.config import incluster_config

    from cluster.providers import kubernetes as provider_module

    cert_file, key_file = self_signed_certificate(tmp_path)
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "namespace").write_text("ml-team")
    server = KubernetesApiServer().start(certificate=(cert_file, key_file))
    server.answer("GET", "/api/v1/nodes", NODES)
    server.answer("GET", "/api/v1/namespaces/ml-team/pods", {"kind": "PodList", "apiVersion": "v1",
                                                              "metadata": {"resourceVersion": "1"}, "items": []})
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(cert_file))
    monkeypatch.setattr(provider_module, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "namespace"))
    provider = KubernetesProvider(KubernetesSettings(image="x"))
    try:
        with started(provider, server, pods="/api/v1/namespaces/ml-team/pods"):
            assert provider.namespace == "ml-team"
            assert [o.instance_type for o in provider.offers(Requirements(gpu_types=("L4",)))] == [
                "gpu-spot/g6.12xlarge", "gpu-spot/g6.xlarge"]
            assert server.calls("GET", "/api/v1/nodes")[-1].headers["authorization"].lower() == "bearer pod-token"
            wait_for(lambda: server.calls("GET", "/api/v1/namespaces/ml-team/pods", watch=True), 1)
    finally:
        server.close()


def test_the_vendored_crd_is_the_kuberay_release_file():
    from tests.cluster.k8s_manifests import CRD_SHA256, crd_text

    assert hashlib.sha256(crd_text()).hexdigest() == CRD_SHA256
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kuberay" / "ray.io_rayclusters.yaml"
    if shared.is_file():  # the project's shared data next to the checkout, when there is one
        assert shared.read_bytes() == crd_text()


def test_api_refusals_and_an_unreachable_server_fail_in_one_line(provider, api, tmp_path):
    offer = offer_of(provider, "gpu-spot/g6.xlarge")
    forbidden = ('rayclusters.ray.io is forbidden: User "system:serviceaccount:spot:spottune" cannot create '
                 'resource "rayclusters" in API group "ray.io" in the namespace "spot"')
    api.answer("POST", RAYCLUSTERS, status(403, "Forbidden", forbidden), code=403)
    spec = launch_spec("run-1", "t000-aa", 0, 1)
    with pytest.raises(ClusterError) as refused:
        provider.launch(offer, spec)
    assert str(refused.value) == (
        f"kubernetes: cannot create RayCluster spot/{cluster_name(spec)}: 403 Forbidden ({forbidden})")
    assert provider._clusters == {}

    closed = KubernetesApiServer()
    kubeconfig = closed.write_kubeconfig(tmp_path / "closed", NAMESPACE)
    closed.close()  # nothing listens on its port any more
    unreachable = KubernetesProvider(settings(kubeconfig=str(kubeconfig)))
    unreachable.start()
    try:
        with pytest.raises(ClusterError, match=r"^kubernetes: cannot list nodes: MaxRetryError: .*refused") as down:
            unreachable.offers(Requirements())
        assert "\n" not in str(down.value)
    finally:
        unreachable.stop()


def test_a_node_with_a_bad_price_annotation_is_left_out(api, tmp_path):
    nodes = copy.deepcopy(NODES)
    gke = next(n for n in nodes["items"] if n["metadata"]["name"] == "gke-train-a100-spot-4f2a")
    gke["metadata"]["annotations"]["spottune.io/usd-per-gpu-hour"] = "cheap"
    api.answer("GET", "/api/v1/nodes", nodes)
    provider = KubernetesProvider(settings(kubeconfig=str(api.write_kubeconfig(tmp_path / "kc", NAMESPACE))))
    with started(provider, api):
        assert {o.gpu.name for o in provider.offers(Requirements(market="spot"))} == {"L4"}


def chart_grants() -> set[tuple[str, str, str, bool]]:
    """(apiGroup, resource, verb, namespaced) that helm/spottune's Role and node ClusterRole grant."""
    rbac = Path(__file__).resolve().parents[2] / "helm" / "spottune" / "rbac"
    granted = set()
    for name, namespaced in (("role-rules.yaml", True), ("cluster-rules.yaml", False)):
        for rule in yaml.safe_load((rbac / name).read_text()):
            granted |= {(group, resource, verb, namespaced) for group in rule["apiGroups"]
                        for resource in rule["resources"] for verb in rule["verbs"]}
    return granted


def permission_of(request) -> tuple[str, str, str, bool]:
    """The RBAC (apiGroup, resource, verb, namespaced) an API request needs."""
    parts = request.path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespaced = rest[0] == "namespaces"
    rest = rest[2:] if namespaced else rest
    resource, named = rest[0], len(rest) > 1
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(request.method)
    if verb is None:
        verb = "get" if named else ("watch" if request.is_watch else "list")
    return group, resource, verb, namespaced


def test_every_request_the_provider_sends_is_granted_by_the_chart(api, tmp_path, monkeypatch):
    """The run-time side of tests/cluster/test_helm_chart.py's RBAC check: what went over the wire."""
    monkeypatch.setenv("SPOTTUNE_OWNER_DEPLOYMENT", "spottune")
    api.answer("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/spottune", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "spottune", "uid": "deploy-uid"},
        "spec": {"selector": {}, "template": {}}})
    provider = KubernetesProvider(settings(kubeconfig=str(api.write_kubeconfig(tmp_path / "kc", NAMESPACE))))
    with started(provider, api):
        node = provider.launch(offer_of(provider, "gpu-spot/g6.xlarge"), launch_spec("run-1", "t000-aa", 0, 1))
        api.push(PODS, "ADDED", pod(node.id, f"{node.id}-worker", "Failed", "n", reason="Evicted"))
        assert [e.kind for e in wait_for(lambda: provider.watch(node), 1)] == ["lost"]
        wait_for(lambda: api.calls("POST", EVENTS), 1)
        api.answer("DELETE", f"{RAYCLUSTERS}/{node.id}", {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        provider.terminate(node)
        api.answer("GET", RAYCLUSTERS, {"apiVersion": "ray.io/v1", "kind": "RayClusterList", "items": []})
        assert provider.list_nodes("run-1") == []
        wait_for(lambda: api.calls("GET", "/api/v1/nodes", watch=True), 1)
    sent = {permission_of(request) for request in api.requests}
    assert sent == chart_grants()  # every grant used in this scenario, and nothing sent that is not granted
