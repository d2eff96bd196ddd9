"""The `kubernetes` provider's section of a sweep spec (`provider_settings.kubernetes`), importable without the
kubernetes client: every sweep spec validates it, `spottune plan` included."""
from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

GPU_RESOURCE = "nvidia.com/gpu"
IMAGE_ENV = "SPOTTUNE_IMAGE"  # set by the Helm chart: the controller's own image, the pods' default
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeclaredPool(_Strict):
    """A GPU node pool that may have no node right now (scale from zero), described by the user."""

    name: str = Field(..., description="Pool name used in offers (the instance_type column).")
    node_selector: dict[str, str] = Field(..., min_length=1, description="Labels that select the pool's nodes.")
    gpu: str = Field(..., description="Catalog GPU name, e.g. L4, A100-80GB.")
    gpus_per_node: int = Field(1, ge=1)
    market: Literal["spot", "on-demand"] = "spot"
    usd_per_gpu_hour: float | None = Field(None, gt=0, description="Price; default: the catalog's.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class KubernetesSettings(_Strict):
    """Where and how the trials' RayClusters run."""

    image: str | None = Field(None, min_length=1, description="Image every RayCluster pod runs (see the Dockerfile); "
                                                              f"default: ${IMAGE_ENV}, the controller's image under "
                                                              "the Helm chart.")
    namespace: str | None = Field(None, description="Default: the controller pod's namespace, or the context's.")
    kubeconfig: str | None = Field(None, description="Kubeconfig file (outside the cluster); default ~/.kube/config.")
    context: str | None = Field(None, description="Kubeconfig context; default the current one.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    ray_version: str | None = Field(None, description="Ray version in the image (KubeRay reads it); default: "
                                                       "the controller's own Ray, which runs from the same image.")
    service_account: str | None = Field(None, description="Pods' service account (e.g. IRSA / Workload Identity "
                                                         "for the run's storage).")
    secret_env: list[str] = Field(default_factory=list, description="Secrets whose keys become pod env (by name).")
    env: dict[str, str] = Field(default_factory=dict, description="Plain env for the pods (no secrets here).")
    cpu: str = Field("4", description="CPU of each pod (one pod per machine of an attempt).")
    memory: str = Field("16Gi", description="Memory of each pod.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        description="Tolerations of the GPU pods, added to the pool's own taints.",
    )
    termination_grace_s: int = Field(120, ge=10, description="Pod grace period: time to checkpoint on SIGTERM.")
    pools: list[DeclaredPool] = Field(default_factory=list)
    watch_timeout_s: int = Field(300, ge=1, description="Each watch request's server-side timeout.")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
        return value

    def pod_image(self) -> str | None:
        """The image the pods run: this section's, else the controller's own ($SPOTTUNE_IMAGE)."""
        return self.image or os.environ.get(IMAGE_ENV) or None
