"""Providers by name: unknown names and bad settings fail in one line, plan-only clouds offer but never launch,
and a fleet of providers sends each node back to the provider that launched it."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from cluster.errors import ClusterError
from cluster.provider import LaunchSpec, Requirements
from cluster.providers import registry
from cluster.providers.fleet import ProviderFleet
from cluster.providers.local import LocalProvider, LocalSettings
from cluster.providers.registry import ProviderContext, UnknownProvider
from cost_models.catalog import list_offers


def test_an_unknown_provider_is_one_line_naming_what_this_build_has():
    with pytest.raises(UnknownProvider) as raised:
        registry.kind("moon")
    message = str(raised.value)
    assert message == f"provider 'moon' is not available; {registry.support()}"
    assert "\n" not in message and "local" in message and "aws" in message


def test_settings_are_validated_by_the_providers_own_model(tmp_path):
    model = registry.settings_model()
    settings = model.model_validate({"local": {"market": {"seed": 5, "boot_s": 2}}})
    assert isinstance(settings.local, LocalSettings) and settings.local.market.seed == 5
    provider = registry.build("local", settings.local, ProviderContext(tmp_path))
    assert isinstance(provider, LocalProvider)
    assert (provider.market.boot_s, provider.run_dir) == (2, tmp_path)
    with pytest.raises(ValidationError) as raised:
        model.model_validate({"local": {"market": {"hazard_per_hour": -1}}})
    assert raised.value.errors()[0]["loc"] == ("local", "market", "hazard_per_hour")
    with pytest.raises(ValidationError) as raised:
        model.model_validate({"moon": {}})
    assert raised.value.errors()[0]["type"] == "extra_forbidden"


def test_a_plan_only_provider_offers_the_catalog_and_refuses_launch_in_one_line(tmp_path):
    assert not registry.kind("gcp").launches and registry.kind("local").launches and registry.kind("aws").launches
    gcp = registry.build("gcp", registry.settings_model()().gcp, ProviderContext(tmp_path))
    offers = gcp.offers(Requirements(market="any"))
    assert offers == list_offers(["gcp"], "any")
    with pytest.raises(ClusterError) as raised:
        gcp.launch(offers[0], LaunchSpec("run", "t000-a", 0, 1))
    assert str(raised.value) == ("provider 'gcp' can be planned (spottune plan) but not launched by this build; "
                                 + registry.support())
    assert gcp.list_nodes("run") == []
    with pytest.raises(ClusterError, match="^provider 'gcp' can be planned"):
        registry.check(["local", "gcp"], launch=True)
    registry.check(["local", "gcp"], launch=False)


def test_a_fleet_merges_offers_and_each_node_goes_back_to_its_provider(tmp_path):
    settings = registry.settings_model()()
    fleet = ProviderFleet.build(["local", "gcp", "local"], settings, ProviderContext(tmp_path))
    offers = fleet.offers(Requirements(gpu_types=("L4",), market="any"))
    assert {offer.provider for offer in offers} == {"local", "gcp"}
    assert offers == sorted(offers, key=lambda o: (o.usd_per_gpu_hour, o.provider, o.instance_type))
    local_offer = next(offer for offer in offers if offer.provider == "local")
    node = fleet.launch(local_offer, LaunchSpec("run-1", "t000-a", 0, 1))
    fleet.providers["local"].launch(local_offer, LaunchSpec("run-2", "t001-b", 1, 1))
    assert [listed.id for listed in fleet.list_nodes("run-1")] == [node.id]
    fleet.terminate(node)
    assert fleet.list_nodes("run-1") == [] and fleet.watch(node) == []
    with pytest.raises(ClusterError, match="^provider 'gcp' can be planned"):
        fleet.launch(next(offer for offer in offers if offer.provider == "gcp"), LaunchSpec("run-1", "t000-a", 0, 2))
