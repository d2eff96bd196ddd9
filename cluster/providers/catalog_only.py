"""A provider this build can price but not rent from: offers from the dated catalog, launch refused in one line."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from cluster.errors import ClusterError
from cluster.provider import LaunchSpec, Node, NodeEvent, Requirements
from cluster.providers.registry import ProviderKind, support
from cost_models.catalog import Offer, list_offers


class CatalogSettings(BaseModel):
    """A plan-only provider takes no settings."""

    model_config = ConfigDict(extra="forbid")


class CatalogOnlyProvider:
    accelerator = "cuda"

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        """Nothing to acquire: this provider never rents."""

    def stop(self) -> None:
        """Nothing to release."""

    def list_nodes(self, run_id: str) -> list[Node]:
        return []

    def offers(self, requirements: Requirements) -> list[Offer]:
        return list_offers([self.name], requirements.market, requirements.gpu_types)

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        raise ClusterError(f"provider {self.name!r} can be planned (spottune plan) but not launched by this build; "
                           f"{support()}")

    def terminate(self, node: Node) -> None:
        """It launched nothing, so there is nothing to stop."""

    def watch(self, node: Node) -> list[NodeEvent]:
        return []


def catalog_only_kind(name: str) -> ProviderKind:
    """The registry entry of a catalog cloud that this build plans but does not launch."""
    return ProviderKind(name, CatalogSettings, lambda settings, context: CatalogOnlyProvider(name), launches=False)
