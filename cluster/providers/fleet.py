"""The providers one sweep names, behind the Provider interface: offers from all, each node handled by its own."""
from __future__ import annotations

from pydantic import BaseModel

from cluster.provider import LaunchSpec, Node, NodeEvent, Provider, Requirements
from cluster.providers.registry import ProviderContext, build
from cost_models.catalog import Offer


class ProviderFleet:
    name = "fleet"

    def __init__(self, providers: list[Provider]) -> None:
        self.providers = {provider.name: provider for provider in providers}

    @classmethod
    def build(cls, names: list[str], settings: BaseModel, context: ProviderContext) -> ProviderFleet:
        """Each named provider (not started) from its section of the spec's `provider_settings`."""
        return cls([build(name, getattr(settings, name), context) for name in dict.fromkeys(names)])

    def start(self) -> None:
        started = []
        try:
            for provider in self.providers.values():
                provider.start()
                started.append(provider)
        except BaseException:
            for provider in reversed(started):
                provider.stop()
            raise

    def stop(self) -> None:
        for provider in reversed(self.providers.values()):
            provider.stop()

    def list_nodes(self, run_id: str) -> list[Node]:
        return [node for provider in self.providers.values() for node in provider.list_nodes(run_id)]

    def offers(self, requirements: Requirements) -> list[Offer]:
        """Every provider's offers, cheapest first (ties by provider and instance type, as the catalog sorts)."""
        offers = [offer for provider in self.providers.values() for offer in provider.offers(requirements)]
        return sorted(offers, key=lambda offer: (offer.usd_per_gpu_hour, offer.provider, offer.instance_type))

    def accelerator_of(self, offer: Offer) -> str:
        """What the nodes of this offer's provider compute on."""
        return self.providers[offer.provider].accelerator

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        return self.providers[offer.provider].launch(offer, spec)

    def terminate(self, node: Node) -> None:
        self.providers[node.offer.provider].terminate(node)

    def watch(self, node: Node) -> list[NodeEvent]:
        return self.providers[node.offer.provider].watch(node)
