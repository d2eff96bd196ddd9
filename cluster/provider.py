"""The one interface every capacity provider implements (local, aws, kubernetes): offers, launch, terminate, watch,
a start/stop lifecycle and list_nodes.

A provider rents nodes; it does not know about training. A provider is built from its settings (a pydantic
model, see cluster/providers/registry.py). `offers` works before `start` (`spottune plan` starts nothing);
the controller calls `start` once, asks for the offers a provider can launch now, the planner
(orchestrator/sweep/planner.py) picks the cheapest one that fits a trial, the provider launches it, the controller
polls `watch` for what happened to the node and terminates it when the attempt is over. At the end of a sweep
the controller terminates whatever `list_nodes(run_id)` still reports, then calls `stop`. Events are
`running` (capacity is up), `notice` (it will be reclaimed at `deadline`), `lost` (it was taken away) and
`exited` (its node entry point ended by itself, e.g. an EC2 instance that shut itself down).

A `Node` is everything rented for one attempt: `spec.nodes` machines of the offer's type (`machines` names them),
each started with the boot script (cluster/node/boot.py) that runs the node entry point on `spec.payload`.
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
    gpus: int = 1  # per machine
    nodes: int = 1  # machines the attempt spans; they form one Ray cluster
    payload: str = ""  # the attempt's payload.json in the run's storage (cluster/node/channel.py)
    storage_endpoint: str | None = None  # S3 endpoint of the run's storage, for the boot script


@dataclass
class Node:
    id: str
    offer: Offer
    spec: LaunchSpec
    launched_at: float
    machines: list[str] = field(default_factory=list)  # instance ids, pod names or local process names
    env: dict[str, str] = field(default_factory=dict)  # what the local provider gives the node's processes

    @property
    def price_per_hour(self) -> float:
        """What the node costs: every GPU of every machine rented for it."""
        return self.offer.usd_per_hour(self.spec.gpus) * self.spec.nodes


@dataclass(frozen=True)
class NodeEvent:
    kind: Literal["running", "notice", "lost", "exited"]
    time: float
    deadline: float | None = None
    reason: str = ""


class Provider(Protocol):
    name: str
    accelerator: Literal["cpu", "cuda"]  # what its nodes compute on (the local market simulates GPUs on CPU)

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
