"""The GPU catalog as data: GPU specs, priced offers per provider and market, interruption-rate buckets.

Every row carries its source and date (cost_models/data/*.csv). Provider `local` is the simulated
market: one offer per catalog GPU type per market at the cheapest catalog price; cluster's local
provider prices its simulated spot market from `simulated_offers`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal

from cost_models.errors import EstimateError

DATA = Path(__file__).with_name("data")
Market = Literal["spot", "on-demand"]
# Where an offer's price comes from: this dated catalog, the provider's API now, or the catalog because the
# provider's API could not be reached.
PriceOrigin = Literal["catalog", "live", "catalog-fallback"]
MARKETS = ("spot", "on-demand")
LOCAL = "local"


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # what the driver reports as total device memory
    bf16_tflops: float  # dense
    mem_bw_gbs: float
    device_names: tuple[str, ...]
    source: str
    date: str
    measured_bf16_tflops: float | None = None  # a measured large bf16 GEMM rate, where someone measured one

    @property
    def achieved_gemm_fraction(self) -> float | None:
        """Measured over datasheet bf16 rate (None: not measured)."""
        return self.measured_bf16_tflops / self.bf16_tflops if self.measured_bf16_tflops else None


@dataclass(frozen=True)
class Offer:
    """One rentable GPU: price per GPU-hour in one market, and how often that market takes it back."""

    provider: str
    instance_type: str
    gpu: Gpu
    gpus_per_instance: int
    region: str
    market: Market
    usd_per_gpu_hour: float
    interruptions_per_hour: float  # λ, from the offer's bucket
    bucket: str
    source: str
    date: str
    zone: str = ""  # the availability zone an offer is priced in, where the provider prices zones apart
    price_origin: PriceOrigin = "catalog"

    @property
    def key(self) -> str:
        where = f"{self.region}/{self.zone}" if self.zone else self.region
        return f"{self.provider}:{self.instance_type}:{where}:{self.market}"

    def billed_gpus(self, gpus: int) -> int:
        """GPUs paid for when a job needs `gpus`: whole instances are rented (a p4d bills all 8)."""
        return -(-gpus // self.gpus_per_instance) * self.gpus_per_instance

    def usd_per_hour(self, gpus: int) -> float:
        return self.usd_per_gpu_hour * self.billed_gpus(gpus)


def _rows(name: str) -> list[dict[str, str]]:
    with open(DATA / name, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@lru_cache(maxsize=1)
def gpus() -> dict[str, Gpu]:
    return {
        row["name"]: Gpu(
            name=row["name"], memory_gib=float(row["memory_gib"]), bf16_tflops=float(row["bf16_tflops"]),
            mem_bw_gbs=float(row["mem_bw_gbs"]), device_names=tuple(row["device_names"].split(";")),
            source=row["source"], date=row["date"],
            measured_bf16_tflops=float(row["measured_bf16_tflops"]) if row.get("measured_bf16_tflops") else None,
        )
        for row in _rows("gpus.csv")
    }


@lru_cache(maxsize=1)
def interruption_rates() -> dict[str, float]:
    return {row["bucket"]: float(row["rate_per_hour"]) for row in _rows("interruption_buckets.csv")}


def gpu(name: str, field: str = "resources.gpus") -> Gpu:
    """A catalog GPU by name (case-insensitive); unknown names fail listing the accepted ones."""
    for candidate in gpus().values():
        if candidate.name.lower() == name.lower():
            return candidate
    raise EstimateError(f"{field}: unknown GPU {name!r}; accepted: {', '.join(gpus())}")


def gpu_for_device(device_name: str) -> Gpu | None:
    """The catalog GPU that a CUDA device name (torch.cuda.get_device_name) belongs to."""
    for candidate in gpus().values():
        if device_name in candidate.device_names:
            return candidate
    return None


@lru_cache(maxsize=1)
def _catalog_offers() -> tuple[Offer, ...]:
    rates = interruption_rates()
    offers = []
    for row in _rows("offers.csv"):
        for market, column in (("spot", "spot_usd_hr"), ("on-demand", "on_demand_usd_hr")):
            if not row[column]:
                continue
            bucket = row["interruption_bucket"] if market == "spot" else "on-demand"
            offers.append(Offer(
                provider=row["provider"], instance_type=row["instance_type"], gpu=gpus()[row["gpu"]],
                gpus_per_instance=int(row["gpus_per_instance"]), region=row["region"], market=market,
                usd_per_gpu_hour=float(row[column]), interruptions_per_hour=rates[bucket], bucket=bucket,
                source=row["source"], date=row["date"],
            ))
    return tuple(offers)


def providers() -> list[str]:
    return sorted({offer.provider for offer in _catalog_offers()} | {LOCAL})


@lru_cache(maxsize=8)
def simulated_offers(prices_from: tuple[str, ...] | None = None) -> tuple[Offer, ...]:
    """The `local` provider's market: every GPU type, each market at the cheapest price any provider lists
    (or any of `prices_from`)."""
    for name in prices_from or ():
        if name not in providers() or name == LOCAL:
            accepted = ", ".join(p for p in providers() if p != LOCAL)
            raise EstimateError(f"simulation.prices_from: unknown provider {name!r}; accepted: {accepted}")
    cheapest: dict[tuple[str, str], Offer] = {}
    for offer in _catalog_offers():
        if prices_from is not None and offer.provider not in prices_from:
            continue
        key = (offer.gpu.name, offer.market)
        if key not in cheapest or offer.usd_per_gpu_hour < cheapest[key].usd_per_gpu_hour:
            cheapest[key] = offer
    return tuple(
        Offer(
            provider=LOCAL, instance_type=f"simulated-{offer.gpu.name.lower()}", gpu=offer.gpu, gpus_per_instance=1,
            region=LOCAL, market=offer.market, usd_per_gpu_hour=offer.usd_per_gpu_hour,
            interruptions_per_hour=offer.interruptions_per_hour, bucket=offer.bucket,
            source=f"simulated at the price of {offer.provider} {offer.instance_type} ({offer.source})",
            date=offer.date,
        )
        for offer in sorted(cheapest.values(), key=lambda o: (o.gpu.name, o.market))
    )


def list_offers(
    provider_names: Iterable[str] | None = None,
    market: str = "any",
    gpu_names: Iterable[str] | None = None,
    max_price: float | None = None,
    local_prices_from: Iterable[str] | None = None,
) -> list[Offer]:
    """Offers of the given providers (every real provider when None) in one market or both, optionally
    limited to GPU types and a $/GPU-hour ceiling; sorted by price. local_prices_from: the providers whose
    prices the `local` market copies (None: all)."""
    if market not in (*MARKETS, "any"):
        raise EstimateError(f"resources.market: {market!r}; accepted: spot, on-demand, any")
    wanted = None if provider_names is None else list(provider_names)
    for name in wanted or ():
        if name not in providers():
            raise EstimateError(f"resources.providers: unknown provider {name!r}; accepted: {', '.join(providers())}")
    allowed = None if gpu_names is None else {gpu(name).name for name in gpu_names}
    pool = list(_catalog_offers())
    if wanted is not None and LOCAL in wanted:
        pool += simulated_offers(None if local_prices_from is None else tuple(sorted(local_prices_from)))
    selected = [
        offer for offer in pool
        if (wanted is None or offer.provider in wanted)
        and (market == "any" or offer.market == market)
        and (allowed is None or offer.gpu.name in allowed)
        and (max_price is None or offer.usd_per_gpu_hour <= max_price)
    ]
    return sorted(selected, key=lambda offer: (offer.usd_per_gpu_hour, offer.provider, offer.instance_type))
