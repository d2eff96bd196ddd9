"""The one interface every capacity provider implements (local, aws, kubernetes): offers, launch, terminate, watch.

A provider rents nodes; it does not know about training. The controller asks for offers that meet a
trial's requirements, launches the one the planner picks, polls `watch` for what happened to it, and
terminates it when the attempt is over. Events are `running` (capacity is up), `notice` (it will be
reclaimed at `deadline`) and `lost` (it is gone).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Market = Literal["spot", "on-demand"]


@dataclass(frozen=True)
class Requirements:
    """What one trial needs from a node."""

    gpus: int = 1
    min_vram_gib: float = 0.0
    gpu_types: tuple[str, ...] | None = None
    market: Literal["spot", "on-demand", "any"] = "spot"
    max_price_per_hour: float | None = None


@dataclass(frozen=True)
class NodeOffer:
    """Something a provider can launch now, at a price for the whole node."""

    provider: str
    gpu: str
    gpus: int
    vram_gib: float
    market: Market
    price_per_hour: float
    region: str
    instance_type: str

    @property
    def id(self) -> str:
        return f"{self.provider}:{self.region}:{self.instance_type}:{self.market}"

    def describe(self) -> str:
        return f"{self.gpus}x{self.gpu} {self.market} {self.provider}/{self.region} ${self.price_per_hour:.4f}/h"


@dataclass(frozen=True)
class LaunchSpec:
    """Who the node is for; providers use it for naming, tagging and (local) the simulated market."""

    run_id: str
    trial_id: str
    trial_index: int
    attempt: int


@dataclass
class Node:
    id: str
    offer: NodeOffer
    spec: LaunchSpec
    launched_at: float
    env: dict[str, str] = field(default_factory=dict)  # what the node's workers need to find their agent
    accelerator: Literal["cpu", "cuda"] = "cuda"  # what the workers compute on (the local market simulates GPUs on CPU)


@dataclass(frozen=True)
class NodeEvent:
    kind: Literal["running", "notice", "lost"]
    time: float
    deadline: float | None = None
    reason: str = ""


class Provider(Protocol):
    name: str

    def offers(self, requirements: Requirements) -> list[NodeOffer]:
        """Offers that meet the requirements and can be launched now, cheapest first."""

    def launch(self, offer: NodeOffer, spec: LaunchSpec) -> Node:
        """Start renting a node; it reports `running` through watch() once usable."""

    def terminate(self, node: Node) -> None:
        """Stop the node and everything on it; idempotent."""

    def watch(self, node: Node) -> list[NodeEvent]:
        """Events since the previous call for this node (non-blocking)."""


def offer_matches(offer: NodeOffer, requirements: Requirements) -> bool:
    """The filter every provider applies to its candidate offers."""
    if offer.gpus < requirements.gpus or offer.vram_gib < requirements.min_vram_gib:
        return False
    if requirements.gpu_types is not None and offer.gpu not in requirements.gpu_types:
        return False
    if requirements.market != "any" and offer.market != requirements.market:
        return False
    return requirements.max_price_per_hour is None or offer.price_per_hour <= requirements.max_price_per_hour
