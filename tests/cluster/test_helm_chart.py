"""helm/spottune with the real Helm engine (helm-sdkpy ships Helm as a library; each action runs in a child
Python, see tests/cluster/helm_install.py).

Lint is Helm's `lint` of the chart directory. Rendering is Helm's install into the local API server of
tests/cluster/helm_install.py (helm-sdkpy has no offline `template`): the objects Helm POSTs are the rendered
manifests, validated strictly against the Kubernetes 1.33 schemas. Values are checked by Helm against
values.schema.json, and its messages are the ones asserted. What this cannot prove: that a real cluster
admits the objects (PodSecurity admission, quotas, the StorageClass binding the PVC), that the image runs
read-only as UID 10001, or that the RBAC below is enough on a live API server (docs/kubernetes.md).
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.sweep.spec import load_spec
from tests.cluster.helm_install import CHART, HelmError, helm_install, helm_lint
from tests.cluster.k8s_manifests import validate

PROVIDER = Path(__file__).resolve().parents[2] / "cluster" / "providers" / "kubernetes.py"

TRAIN_YAML = "model:\n  name: builtin:tiny-llama\ndata:\n  train: train.jsonl\n"  # the sweep's base, next to it
TRAIN_ROWS = '{"instruction": "Name a colour.", "input": "", "output": "Blue."}\n'
SWEEP = {
    "name": "qwen-lora", "base": "train.yaml", "storage": "s3://my-bucket/spottune",
    "resources": {"providers": ["kubernetes"], "market": "spot"},
    "provider_settings": {"kubernetes": {"secret_env": ["spottune-storage"]}},  # image: the controller's own
}
OVERRIDES = {
    "default": (None, "spottune"),
    "eks-irsa": ({
        "image": {"repository": "123456789012.dkr.ecr.us-east-1.amazonaws.com/spottune", "tag": "0.1.0",
                  "pullPolicy": "Always"},
        "sweep": SWEEP,
        "files": {"train.yaml": TRAIN_YAML, "train.jsonl": TRAIN_ROWS},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/spottune"}},
        "state": {"size": "5Gi", "storageClassName": "gp3"},
        "controller": {"secretEnv": ["spottune-storage"], "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"},
                       "runId": "qwen-lora-v2",
                       "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                                     "limits": {"cpu": 1, "memory": "2Gi"}}},
    }, "tuning"),
    "existing-claim-no-node-reader": ({
        "imagePullSecrets": ["regcred"], "state": {"existingClaim": "spottune-runs"}, "rbac": {"nodeReader": False},
        "controller": {"env": {"SPOTTUNE_LOG": "debug"}, "args": ["resume", "sweep-20261129"]},
    }, "spottune-gke"),
}


def lint(chart: Path) -> list[dict]:
    result = helm_lint(chart)
    assert result["TotalChartsLinted"] == 1
    return result["Messages"]


def by_kind(created: list[dict]) -> dict[str, dict]:
    return {item["kind"]: item for item in created}


def test_helm_lint_passes_with_nothing_above_info():
    assert [m for m in lint(CHART) if m["Severity"] > 1] == []


def test_helm_lint_fails_a_chart_whose_values_break_the_schema(tmp_path):
    broken = shutil.copytree(CHART, tmp_path / "spottune")
    values = yaml.safe_load((broken / "values.yaml").read_text())
    values["controller"]["resources"]["limits"]["memory"] = "-4Gi"
    (broken / "values.yaml").write_text(yaml.safe_dump(values))
    assert {(m["Severity"], m["Path"]) for m in lint(broken)} >= {(3, "values.yaml")}  # 3: error


@pytest.mark.parametrize("case", list(OVERRIDES))
def test_rendered_manifests_validate_and_hold_the_security_settings(case, tmp_path):
    values, release = OVERRIDES[case]
    result, created = helm_install(values, release=release)
    assert result["info"]["status"] == "deployed"
    for item in created:
        validate(item)
    kinds = by_kind(created)
    assert "Secret" not in kinds  # secrets by reference only
    deployment = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    assert deployment["securityContext"]["runAsNonRoot"] is True and deployment["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["livenessProbe"]["exec"]["command"][:2] == ["spottune", "status"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["SPOTTUNE_OWNER_DEPLOYMENT"] == kinds["Deployment"]["metadata"]["name"]
    assert kinds["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
    claim = deployment["volumes"][0]["persistentVolumeClaim"]["claimName"]
    sweep = yaml.safe_load(kinds["ConfigMap"]["data"]["sweep.yaml"])
    assert env["SPOTTUNE_IMAGE"] == container["image"]  # the trial pods run the controller's image by default
    if case != "existing-claim-no-node-reader":  # submit once as a stable run id; resume it after a restart
        assert container["args"] == ["submit", "/etc/spottune/sweep.yaml", "--run-id", "$(SPOTTUNE_RUN_ID)", "--stay"]
        assert env["SPOTTUNE_RUN_ID"]  # in the container's env, so Kubernetes expands $(SPOTTUNE_RUN_ID) in args
    if case == "default":
        assert container["image"] == "spottune:0.1.0" and sweep == {}
        assert env["SPOTTUNE_RUN_ID"] == kinds["Deployment"]["metadata"]["name"]
        assert kinds["PersistentVolumeClaim"]["metadata"]["name"] == claim
        assert "ClusterRole" in kinds
    if case == "eks-irsa":
        assert container["image"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/spottune:0.1.0"
        assert sweep == SWEEP and kinds["ConfigMap"]["data"]["train.yaml"] == TRAIN_YAML
        assert env["SPOTTUNE_RUN_ID"] == "qwen-lora-v2"
        for name, text in kinds["ConfigMap"]["data"].items():  # /etc/spottune as the controller reads it
            (tmp_path / name).write_text(text)
        spec, trials = load_spec(tmp_path / "sweep.yaml")
        assert spec.resources.providers == ["kubernetes"] and len(trials) == 1
        assert spec.provider_settings.kubernetes.secret_env == ["spottune-storage"]
        assert container["envFrom"] == [{"secretRef": {"name": "spottune-storage"}}]
        annotations = kinds["ServiceAccount"]["metadata"]["annotations"]
        assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/spottune"
        assert kinds["PersistentVolumeClaim"]["spec"]["storageClassName"] == "gp3"
    if case == "existing-claim-no-node-reader":
        assert claim == "spottune-runs" and "PersistentVolumeClaim" not in kinds
        assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
        assert deployment["imagePullSecrets"] == [{"name": "regcred"}]
        assert container["args"] == ["resume", "sweep-20261129"] and env["SPOTTUNE_LOG"] == "debug"


@pytest.mark.parametrize("values, message", [
    ({"controller": {"resources": {"limits": {"cpu": "-1"}}}},
     "at '/controller/resources/limits/cpu': '-1' does not match pattern"),
    ({"controller": {"resources": {"requests": {"memory": -512}}}},
     "at '/controller/resources/requests/memory': minimum: got -512, want 0"),
    ({"replicaCount": 2}, "at '': additional properties 'replicaCount' not allowed"),
    ({"controller": {"resource": {}}}, "at '/controller': additional properties 'resource' not allowed"),
    ({"image": {"repository": ""}}, "at '/image/repository': minLength: got 0, want 1"),
    ({"image": None}, "at '': missing property 'image'"),
    ({"controller": {"runId": "../runs"}}, "at '/controller/runId': '../runs' does not match pattern"),
    # Helm names the location of a propertyNames failure unreliably (seen: '/files' and '/imagePullSecrets')
    ({"files": {"sweep.yaml": "x"}}, "invalid propertyName 'sweep.yaml'"),
])
def test_bad_values_are_refused_by_the_schema_with_helms_message(values, message):
    with pytest.raises(HelmError) as refused:
        helm_install(values)
    assert "values don't meet the specifications of the schema" in str(refused.value)
    assert message in str(refused.value)


def test_notes_name_kuberay_as_the_prerequisite_when_the_cluster_lacks_it_and_warn_of_no_sweep():
    without, _ = helm_install(None, kuberay=False)
    with_kuberay, _ = helm_install({"sweep": SWEEP})
    assert "does not serve ray.io/v1 RayCluster. Install the KubeRay operator first" in without["info"]["notes"]
    assert "no sweep is set" in without["info"]["notes"]
    assert "KubeRay" not in with_kuberay["info"]["notes"] and "no sweep" not in with_kuberay["info"]["notes"]


def provider_api_calls() -> set[tuple[str, str, str, bool]]:
    """(apiGroup, resource, verb, namespaced) for every Kubernetes API method cluster/providers/kubernetes.py
    names: called -> its verb; passed as a value (to Watch.stream) -> `watch`, after the list it also makes."""
    from kubernetes import client

    tree = ast.parse(PROVIDER.read_text(encoding="utf-8"))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    raycluster = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                      and getattr(node.targets[0], "id", "") == "RAYCLUSTER")
    apis = {"": client.CoreV1Api, "apps": client.AppsV1Api, None: client.CustomObjectsApi}
    verbs = {"create": "create", "delete": "delete", "list": "list", "read": "get", "patch": "patch",
             "replace": "update"}
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = [group for group, api in apis.items() if hasattr(api, node.attr)
                 and node.attr.split("_")[0] in verbs]
        if not owner:
            continue
        verb = verbs[node.attr.split("_")[0]] if id(node) in called else "watch"
        if owner == [None]:
            assert node.attr.endswith("_namespaced_custom_object"), node.attr
            found.add((raycluster["group"], raycluster["plural"], verb, True))
            continue
        (group,) = owner
        namespaced = "_namespaced_" in node.attr
        kind = node.attr.split("_namespaced_" if namespaced else "_", 1)[1]
        found.add((group, f"{kind}s", verb, namespaced))
    return found


def rule_set(rules: list[dict], namespaced: bool) -> set[tuple[str, str, str, bool]]:
    return {(group, resource, verb, namespaced) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_rbac_grants_exactly_the_calls_the_provider_makes():
    calls = provider_api_calls()
    assert ("", "pods", "watch", True) in calls and ("", "nodes", "watch", False) in calls  # the walk sees watches
    _, created = helm_install(None)
    kinds = by_kind(created)
    granted = rule_set(kinds["Role"]["rules"], True) | rule_set(kinds["ClusterRole"]["rules"], False)
    assert granted == calls
    assert kinds["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}]
    (owner_rule,) = [rule for rule in kinds["Role"]["rules"] if "deployments" in rule["resources"]]
    assert owner_rule["resourceNames"] == [kinds["Deployment"]["metadata"]["name"]]  # only its own Deployment
    assert all("resourceNames" not in rule for rule in kinds["Role"]["rules"] if rule is not owner_rule)
    assert kinds["RoleBinding"]["subjects"][0]["name"] == kinds["ServiceAccount"]["metadata"]["name"]
