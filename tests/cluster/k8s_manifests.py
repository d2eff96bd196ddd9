"""Schema checks for what spottune sends to Kubernetes: built-in kinds through kubernetes-validate (strict, at a
pinned cluster version), RayClusters through the KubeRay v1.7.0 CRD's openAPIV3Schema with jsonschema."""
from __future__ import annotations

import copy
import hashlib
import lzma
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33"  # oldest minor of EKS and GKE standard support that the docs target
CRD = Path(__file__).resolve().parents[1] / "data" / "kuberay" / "ray.io_rayclusters.yaml.xz"
CRD_SHA256 = "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1"


def crd_text() -> bytes:
    return lzma.decompress(CRD.read_bytes())


@lru_cache(maxsize=1)
def raycluster_spec_schema() -> dict[str, Any]:
    """The CRD's served-and-stored version's `spec` schema, closed: a field the schema does not name fails
    (the API server would silently prune it from a structural CRD)."""
    assert hashlib.sha256(crd_text()).hexdigest() == CRD_SHA256
    crd = yaml.load(crd_text(), Loader=yaml.CSafeLoader)
    version = next(v for v in crd["spec"]["versions"] if v["storage"])
    assert version["name"] == "v1"
    return _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]["properties"]["spec"]))


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            _closed(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)
    return schema


def validate(manifest: dict[str, Any]) -> None:
    """Raise if the manifest is not valid for its kind."""
    if manifest["kind"] == "RayCluster":
        assert manifest["apiVersion"] == "ray.io/v1"
        jsonschema.validate(manifest["spec"], raycluster_spec_schema())
        # metadata and pod templates against the built-in schemas too
        metadata_only = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": manifest["metadata"]}
        kubernetes_validate.validate(metadata_only, KUBERNETES_VERSION, strict=True)
        templates = [manifest["spec"]["headGroupSpec"]["template"]]
        templates += [group["template"] for group in manifest["spec"].get("workerGroupSpecs", [])]
        for template in templates:
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": template}, KUBERNETES_VERSION, strict=True)
        return
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
