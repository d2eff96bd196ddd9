import csv

import pytest

from cost_models import catalog
from cost_models.errors import EstimateError

REQUIRED_GPUS = {"A10G", "L4", "RTX4090", "RTX3090", "L40S", "A100-40GB", "A100-80GB", "H100", "H200"}


@pytest.mark.parametrize("name", ["gpus.csv", "offers.csv", "interruption_buckets.csv", "architectures.csv"])
def test_every_data_row_has_a_source_and_a_date(name):
    with open(catalog.DATA / name, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    for row in rows:
        assert row["source"].strip() and row["date"].strip(), row


def test_catalog_covers_the_required_gpus_across_clouds_and_marketplaces():
    offers = catalog.list_offers()
    assert REQUIRED_GPUS <= {offer.gpu.name for offer in offers}
    assert {"aws", "gcp", "runpod", "vast", "lambda"} <= {offer.provider for offer in offers}
    assert all(offer.usd_per_gpu_hour > 0 and offer.interruptions_per_hour > 0 for offer in offers)
    spot = [o for o in offers if o.market == "spot"]
    on_demand = [o for o in offers if o.market == "on-demand"]
    assert spot and on_demand
    assert max(o.interruptions_per_hour for o in on_demand) < min(o.interruptions_per_hour for o in spot)


def test_filters_by_provider_market_gpu_and_price():
    offers = catalog.list_offers(["aws"], "spot", ["L4", "a10g"], max_price=0.39)
    assert {(o.provider, o.market) for o in offers} == {("aws", "spot")}
    assert {o.gpu.name for o in offers} == {"L4"}
    assert [o.usd_per_gpu_hour for o in offers] == sorted(o.usd_per_gpu_hour for o in offers)


def test_local_is_a_simulated_market_at_the_cheapest_catalog_price():
    real = catalog.list_offers()
    local = catalog.list_offers(["local"])
    assert {o.provider for o in local} == {"local"}
    for offer in local:
        same = [o.usd_per_gpu_hour for o in real if o.gpu == offer.gpu and o.market == offer.market]
        assert offer.usd_per_gpu_hour == min(same)
    assert {o.gpu.name for o in local} == {o.gpu.name for o in real}


@pytest.mark.parametrize("call, field", [
    (lambda: catalog.list_offers(gpu_names=["B300"]), "resources.gpus"),
    (lambda: catalog.list_offers(["nowhere"]), "resources.providers"),
    (lambda: catalog.list_offers(market="cheap"), "resources.market"),
])
def test_bad_names_fail_with_one_line_naming_the_field_and_the_accepted_values(call, field):
    with pytest.raises(EstimateError) as error:
        call()
    message = str(error.value)
    assert message.startswith(field) and "accepted" in message and "\n" not in message


def test_device_names_map_to_catalog_gpus():
    assert catalog.gpu_for_device("NVIDIA H200").name == "H200"
    assert catalog.gpu_for_device("NVIDIA H100 80GB HBM3").name == "H100"
    assert catalog.gpu_for_device("Some Other GPU") is None
