"""A sweep with `resources.providers: [kubernetes]` through `spottune submit`'s preparation (validate, check the
providers can launch, build them from `provider_settings.kubernetes`, plan on their offers), with the provider
reaching the local API server of tests/cluster/k8s_api_server.py from a laptop (kubeconfig) and from a pod
(in-cluster service-account config). What it cannot prove: that a real API server admits these credentials."""
from __future__ import annotations

import yaml

from cluster.providers import registry
from orchestrator.run.submission import prepare
from tests.cluster.k8s_api_server import KubernetesApiServer
from tests.cluster.test_kubernetes_provider import NODES, self_signed_certificate
from tests.orchestrator.sweeps import TRAIN_DATA, spottune


def kubernetes_sweep(directory, settings: dict) -> str:
    spec = {
        "name": "k8s-sweep",
        "config": {"model": {"name": "builtin:tiny-llama"}, "data": {"train": str(TRAIN_DATA), "max_seq_length": 128},
                   "training": {"max_steps": 20, "batch_size": 4}},
        "search": {"parameters": {"training.learning_rate": [1.0e-3, 2.0e-3]}},
        "resources": {"providers": ["kubernetes"], "market": "spot", "gpus": ["L4"]},
        "storage": f"file://{directory / 'store'}",
        "provider_settings": {"kubernetes": {"image": "registry.example/spottune:0.1.0", **settings}},
    }
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def planned_offers(prepared) -> set[tuple[str, str]]:
    return {(trial.chosen.offer.provider, trial.chosen.offer.instance_type) for trial in prepared.plan.trials}


def test_kubernetes_is_a_launching_provider_whose_settings_load_without_the_client():
    assert registry.kind("kubernetes").launches
    registry.check(["kubernetes"], launch=True)
    assert "launches aws, kubernetes, local" in registry.support()


def test_submit_plans_on_the_clusters_nodes_through_a_kubeconfig(tmp_path):
    server = KubernetesApiServer().start()
    server.answer("GET", "/api/v1/nodes", NODES)
    try:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", "spot")
        prepared = prepare(kubernetes_sweep(tmp_path, {"kubeconfig": str(kubeconfig)}))
        assert planned_offers(prepared) == {("kubernetes", "gpu-spot/g6.xlarge")}  # the cheapest L4 spot pool
        assert server.calls("GET", "/api/v1/nodes")[-1].headers["authorization"] == "Bearer test-token"
    finally:
        server.close()


def test_submit_plans_on_the_clusters_nodes_from_inside_a_pod(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    from cluster.providers import kubernetes as provider_module

    cert_file, key_file = self_signed_certificate(tmp_path)
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "namespace").write_text("ml-team")
    server = KubernetesApiServer().start(certificate=(cert_file, key_file))
    server.answer("GET", "/api/v1/nodes", NODES)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(cert_file))
    monkeypatch.setattr(provider_module, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "namespace"))
    try:
        prepared = prepare(kubernetes_sweep(tmp_path, {}))
        assert planned_offers(prepared) == {("kubernetes", "gpu-spot/g6.xlarge")}
        assert server.calls("GET", "/api/v1/nodes")[-1].headers["authorization"].lower() == "bearer pod-token"
    finally:
        server.close()


def test_an_unreachable_cluster_fails_submit_in_one_line(tmp_path):
    closed = KubernetesApiServer()
    kubeconfig = closed.write_kubeconfig(tmp_path / "kubeconfig", "spot")
    closed.close()  # nothing listens on its port any more
    refused = spottune("submit", str(kubernetes_sweep(tmp_path, {"kubeconfig": str(kubeconfig)})),
                       "--state-dir", str(tmp_path / "state"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("spottune submit: error: kubernetes: cannot list nodes: MaxRetryError")
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "state" / "spottune.db").exists()
