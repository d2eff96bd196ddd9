"""When a provider has no capacity for an offer: the typed error, and the order in which to try other offers.

A cloud refuses a launch for reasons that say nothing about the job (no capacity in that zone, a spot price
ceiling, an account quota, a type not offered there). The provider raises CapacityError with the reason; the
caller tries the next cheapest offer that fits: the same instance type in another zone first (same GPU, same
price class), then other types, cheapest first. Every refusal is kept so the controller can record it as an event.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from cluster.errors import ClusterError
from cluster.provider import LaunchSpec, Node
from cost_models.catalog import Offer


class CapacityError(ClusterError):
    """The provider could not rent this offer now; `code` is its reason (e.g. InsufficientInstanceCapacity)."""

    def __init__(self, offer: Offer, code: str, message: str) -> None:
        super().__init__(f"{offer.key}: {code}: {message}")
        self.offer = offer
        self.code = code


@dataclass(frozen=True)
class LaunchOutcome:
    node: Node
    refusals: tuple[CapacityError, ...]  # the offers tried before it, each with the provider's reason


def fallback_order(chosen: Offer, fitting: Sequence[Offer]) -> list[Offer]:
    """`chosen`, then the same instance type and market in other zones/regions, then every other fitting offer;
    each group cheapest first."""
    def same_type(offer: Offer) -> bool:
        return (offer.provider, offer.instance_type, offer.market) == (chosen.provider, chosen.instance_type,
                                                                        chosen.market)

    others = [offer for offer in fitting if offer.key != chosen.key]
    by_price = sorted(others, key=lambda offer: (offer.usd_per_gpu_hour, offer.key))
    return [chosen] + [o for o in by_price if same_type(o)] + [o for o in by_price if not same_type(o)]


def launch_first_available(
    launch: Callable[[Offer, LaunchSpec], Node], chosen: Offer, fitting: Sequence[Offer], spec: LaunchSpec,
) -> LaunchOutcome:
    """Launch `chosen` or, on a CapacityError, the next offer in fallback_order; the last refusal is raised when
    no offer can be rented."""
    refusals: list[CapacityError] = []
    for offer in fallback_order(chosen, fitting):
        try:
            return LaunchOutcome(launch(offer, spec), tuple(refusals))
        except CapacityError as refusal:
            refusals.append(refusal)
    raise refusals[-1]
