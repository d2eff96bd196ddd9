"""Render the chart with Helm's own engine (helm-sdkpy) by installing it into the local API server.

helm-sdkpy has no offline `template` or dry-run, and its Lint returns severities without the error texts.
Its Install does everything Helm does before and while applying a release: it checks values against
values.schema.json (with Helm's message), renders the templates with the cluster's capabilities, and POSTs
every object. Here the cluster is tests/cluster/k8s_api_server.py answering discovery for the kinds the chart
uses (and ray.io/v1, as a cluster with KubeRay would) and accepting every create: what it receives are the
chart's manifests as Helm renders them. Nothing is scheduled or admitted; RBAC is not evaluated.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.cluster.k8s_api_server import KubernetesApiServer, Request
from tests.cluster.k8s_manifests import KUBERNETES_VERSION

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "spottune"
KINDS = {  # group/version -> (kind, plural, namespaced)
    "v1": [("Secret", "secrets", True), ("ConfigMap", "configmaps", True), ("ServiceAccount", "serviceaccounts", True),
           ("PersistentVolumeClaim", "persistentvolumeclaims", True), ("Pod", "pods", True),
           ("Node", "nodes", False), ("Event", "events", True), ("Namespace", "namespaces", False)],
    "apps/v1": [("Deployment", "deployments", True)],
    "rbac.authorization.k8s.io/v1": [("Role", "roles", True), ("RoleBinding", "rolebindings", True),
                                     ("ClusterRole", "clusterroles", False),
                                     ("ClusterRoleBinding", "clusterrolebindings", False)],
    "ray.io/v1": [("RayCluster", "rayclusters", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource_list(group_version: str) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": [
        {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": VERBS}
        for kind, plural, namespaced in KINDS[group_version]]}


def serve_discovery(server: KubernetesApiServer, namespace: str, kuberay: bool) -> None:
    """Discovery of an API server of the pinned version serving the chart's kinds (and ray.io/v1 if `kuberay`)."""
    major, minor = KUBERNETES_VERSION.split(".")
    server.answer("GET", "/version", {"major": major, "minor": minor, "gitVersion": f"v1.{minor}.0",
                                      "platform": "linux/amd64"})
    server.answer("GET", "/api", {"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "x"}]})
    groups = [gv for gv in KINDS if "/" in gv and (kuberay or not gv.startswith("ray.io/"))]
    server.answer("GET", "/apis", {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
         "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in groups]})
    server.answer("GET", "/api/v1", _resource_list("v1"))
    for gv in groups:
        server.answer("GET", f"/apis/{gv}", _resource_list(gv))
    server.answer("GET", f"/api/v1/namespaces/{namespace}/secrets",
                  {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []})

    def created(request: Request) -> tuple[int, Any]:
        if isinstance(request.body, dict):
            body = dict(request.body)
        else:  # Helm's release record goes out as protobuf; answer with the object's JSON shape
            plural = request.path.rstrip("/").split("/")[-1 if request.method == "POST" else -2]
            kind = next(k for kinds in KINDS.values() for k, p, _ in kinds if p == plural)
            body = {"apiVersion": "v1", "kind": kind, "metadata": {"name": "record"}}
        body["metadata"] = {**body.get("metadata", {}), "uid": "u", "resourceVersion": "1"}
        return (201 if request.method == "POST" else 200), body

    server.answer_any("POST", created)
    server.answer_any("PUT", created)
    server.answer_any("PATCH", created)


class HelmError(Exception):
    """Helm refused the chart or its values; the message is Helm's own."""


def run_helm(action: str, arguments: dict[str, Any]) -> Any:
    """One helm-sdkpy action ("lint" or "install") in a child Python, so Helm's Go runtime (its threads and
    signal handlers) never loads into the test process that later runs Ray and forks workers."""
    child = subprocess.run([sys.executable, "-m", "tests.cluster.helm_install", action, json.dumps(arguments)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    if child.returncode != 0:
        raise RuntimeError(f"helm-sdkpy {action} crashed: {child.stderr[-2000:]}")
    reply = json.loads(child.stdout.strip().splitlines()[-1])
    if "error" in reply:
        raise HelmError(reply["error"])
    return reply["result"]


def helm_lint(chart: Path) -> dict[str, Any]:
    """Helm's lint of a chart directory: {"TotalChartsLinted", "Messages": [{"Severity", "Path", "Err"}], ...}."""
    return run_helm("lint", {"chart": str(chart)})


def helm_install(values: dict[str, Any] | None, release: str = "spottune", namespace: str = "spottune",
                 kuberay: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Install the chart into a fresh local API server: (Helm's release result, the objects it created).
    Raises HelmError with Helm's message when the values or templates are refused."""
    server = KubernetesApiServer().start()
    scratch = tempfile.TemporaryDirectory()
    try:
        serve_discovery(server, namespace, kuberay)
        kubeconfig = server.write_kubeconfig(Path(scratch.name) / "kubeconfig", namespace)
        result = run_helm("install", {"chart": str(CHART), "release": release, "namespace": namespace,
                                      "kubeconfig": str(kubeconfig), "values": values})
        created = [r.body for r in server.calls("POST") if isinstance(r.body, dict)]
        return result, created
    finally:
        server.close()
        scratch.cleanup()


def _child(action: str, arguments: dict[str, Any]) -> None:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace=arguments.get("namespace", "default"),
                                      kubeconfig=arguments.get("kubeconfig"))
    try:
        if action == "lint":
            result = asyncio.run(helm_sdkpy.Lint(config).run(arguments["chart"]))
        else:
            result = asyncio.run(helm_sdkpy.Install(config).run(
                arguments["release"], arguments["chart"], values=arguments["values"], wait=False, timeout=60))
        print(json.dumps({"result": result}))
    except helm_sdkpy.HelmError as error:
        print(json.dumps({"error": str(error)}))


if __name__ == "__main__":
    _child(sys.argv[1], json.loads(sys.argv[2]))
