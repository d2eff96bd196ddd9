"""When a provider has no capacity for an offer: the typed error, and the order in which to try other offers.

A cloud refuses a launch for reasons that say nothing about the job (no capacity in that zone, a spot price
ceiling, an account quota, a type not offered there). The provider raises CapacityError with the reason; the
caller chooses again among the offers not refused yet: the same instance type and market in other zones or
regions first (same GPU, same price class), then every other offer. Each refusal is handed to the caller, which
records it as an event.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from cluster.errors import ClusterError
from cost_models.catalog import Offer

Choice = TypeVar("Choice")
Launched = TypeVar("Launched")


class CapacityError(ClusterError):
    """The provider could not rent this offer now; `code` is its reason (e.g. InsufficientInstanceCapacity)."""

    def __init__(self, offer: Offer, code: str, message: str) -> None:
        super().__init__(f"{offer.key}: {code}: {message}")
        self.offer = offer
        self.code = code
        self.message = message


def same_type(offer: Offer, other: Offer) -> bool:
    """The same instance type on the same market (it may be in another zone or region)."""
    return (offer.provider, offer.instance_type, offer.market) == (other.provider, other.instance_type, other.market)


def launch_first_available(
    launch: Callable[[Choice], Launched],
    choose: Callable[[Sequence[Offer]], Choice | None],
    offer_of: Callable[[Choice], Offer],
    chosen: Choice,
    offers: Sequence[Offer],
    refused: Callable[[CapacityError], None],
) -> tuple[Choice, Launched] | None:
    """Launch `chosen` (a choice of offer, e.g. a plan row); after each CapacityError (handed to `refused`) choose
    again among the offers not refused yet, those of the refused offer's type and market first, then all of them.
    None when every choice is refused."""
    refused_keys: set[str] = set()
    choice: Choice | None = chosen
    while choice is not None:
        offer = offer_of(choice)
        try:
            return choice, launch(choice)
        except CapacityError as refusal:
            refused(refusal)
            refused_keys.add(offer.key)
            left = [other for other in offers if other.key not in refused_keys]
            choice = choose([other for other in left if same_type(other, offer)]) or choose(left)
    return None
