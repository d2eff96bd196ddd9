"""The one interface every capacity provider implements (local, aws, kubernetes): offers, launch, terminate, watch,
a start/stop lifecycle and list_nodes.

A provider rents nodes; it does not know about training. A provider is built from its settings (a pydantic
model, see cluster/providers/registry.py). `offers` works before `start` (`spottune plan` starts nothing);
the controller calls `start` once, asks for the offers a provider can launch now, the planner
(orchestrator/sweep/planner.py) picks the cheapest one that fits a trial, the provider launches it, the controller
polls `watch` for what happened to the node and terminates it when the attempt is over. At the end of a sweep
the controller terminates whatever `list_nodes(run_id)` still reports, then calls `stop`. Events are
`running` (capacity is up), `notice` (it will be reclaimed at `deadline`) and `lost` (it is gone).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from cost_models.catalog import Offer


@dataclass(frozen=True)
class Requirements:
    """What a trial asks of a provider's market (whether the job fits a GPU is the planner's question)."""

    gpus: int = 1
    gpu_types: tuple[str, ...] | None = None
    market: Literal["spot", "on-demand", "any"] = "spot"


@dataclass(frozen=True)
class LaunchSpec:
    """Who the node is for; providers use it for naming, tagging and (local) the simulated market."""

    run_id: str
    trial_id: str
    trial_index: int
    attempt: int
    gpus: int = 1


@dataclass
class Node:
    id: str
    offer: Offer
    spec: LaunchSpec
    launched_at: float
    env: dict[str, str] = field(default_factory=dict)  # what the node's workers need to find their agent
    accelerator: Literal["cpu", "cuda"] = "cuda"  # what the workers compute on (the local market simulates GPUs on CPU)
    storage_fault: dict | None = None  # a checkpoint upload the simulated market makes fail on this node

    @property
    def price_per_hour(self) -> float:
        """What the node costs: every GPU of the instances rented for it."""
        return self.offer.usd_per_hour(self.spec.gpus)


@dataclass(frozen=True)
class NodeEvent:
    kind: Literal["running", "notice", "lost"]
    time: float
    deadline: float | None = None
    reason: str = ""


class Provider(Protocol):
    name: str

    def start(self) -> None:
        """Acquire what launching needs (a local Ray instance, an API connection, watches)."""

    def stop(self) -> None:
        """Release what start() acquired; nodes still rented are the caller's to terminate first."""

    def list_nodes(self, run_id: str) -> list[Node]:
        """Every node this provider still rents for the run (so that none is left behind)."""

    def offers(self, requirements: Requirements) -> list[Offer]:
        """Catalog offers for these requirements, cheapest first; one without capacity now carries the wait the
        provider expects (Offer.capacity_wait_s > 0) and must not be launched before it has passed."""

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        """Start renting a node; it reports `running` through watch() once usable."""

    def terminate(self, node: Node) -> None:
        """Stop the node and everything on it; idempotent."""

    def watch(self, node: Node) -> list[NodeEvent]:
        """Events since the previous call for this node (non-blocking)."""


def describe_offer(offer: Offer, gpus: int) -> str:
    """One line for logs and events, e.g. '1xL4 spot local/local $0.2830/h'."""
    return f"{gpus}x{offer.gpu.name} {offer.market} {offer.provider}/{offer.region} ${offer.usd_per_hour(gpus):.4f}/h"
