"""Providers by name: what each one's settings are, how it is built, and whether this build can launch on it.

Style of Ray's autoscaler node_provider.py: a provider module registers its ProviderKind when imported, and the
registry imports a module only when its provider is named, so `spottune plan` loads nothing it does not use.
Clouds this build can only price (the catalog's aws, gcp, ...) are plan-only providers (catalog_only.py).
A sweep names its providers in `resources.providers` and their settings in `provider_settings.<name>`, each
validated by the provider's own pydantic model (settings_model() collects them into one spec section). A
settings model may define `unknown_trials(trial_ids) -> str` to name trials it refers to that the sweep lacks, and
`check_launch(storage)` to check, at submit, what launching needs (credentials, cloud resources), raising ClusterError.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, create_model

from cluster.errors import ClusterError
from cluster.provider import Provider
from cost_models.catalog import providers as catalog_providers

# Providers that can launch; each registers itself on import (aws from its settings module, which needs no boto3).
MODULES = {"local": "cluster.providers.local", "kubernetes": "cluster.providers.kubernetes",
           "aws": "cluster.providers.aws_settings"}


@dataclass(frozen=True)
class ProviderContext:
    """What a provider is given besides its settings: the run's directory on this machine."""

    run_dir: Path


@dataclass(frozen=True)
class ProviderKind:
    name: str
    settings: type[BaseModel]
    build: Callable[[Any, ProviderContext], Provider]
    launches: bool = True


class UnknownProvider(ClusterError):
    """A provider name this build neither plans nor launches."""


_KINDS: dict[str, ProviderKind] = {}


def register(kind: ProviderKind) -> ProviderKind:
    """Make a provider available by name (a provider module calls this when it is imported)."""
    _KINDS[kind.name] = kind
    return kind


def names() -> list[str]:
    """Every provider this build can plan, sorted."""
    return sorted(set(catalog_providers()) | set(MODULES) | set(_KINDS))


def kind(name: str) -> ProviderKind:
    """The registered provider `name`; UnknownProvider (one line) when there is none."""
    if name not in _KINDS and name in MODULES:
        importlib.import_module(MODULES[name])
    if name not in _KINDS and name in catalog_providers():
        from cluster.providers.catalog_only import catalog_only_kind

        register(catalog_only_kind(name))
    if name not in _KINDS:
        raise UnknownProvider(f"provider {name!r} is not available; {support()}")
    return _KINDS[name]


def support() -> str:
    """'this build plans aws, gcp, local, runpod and launches local'."""
    launching = [name for name in names() if kind(name).launches]
    return f"this build plans {', '.join(names())} and launches {', '.join(launching)}"


def check(provider_names: list[str], launch: bool) -> None:
    """Raise ClusterError (one line) for the first provider that cannot be planned (or, with launch, launched)."""
    for name in provider_names:
        if not kind(name).launches and launch:
            raise ClusterError(f"provider {name!r} can be planned (spottune plan) but not launched by this build; "
                               f"{support()}")


def build(name: str, settings: BaseModel, context: ProviderContext) -> Provider:
    """A provider, not started, from its validated settings."""
    return kind(name).build(settings, context)


@lru_cache(maxsize=1)
def settings_model() -> type[BaseModel]:
    """The sweep spec's `provider_settings` section: one optional field per provider, typed by its settings model."""
    fields = {name: (kind(name).settings, Field(default_factory=kind(name).settings)) for name in names()}
    return create_model("ProviderSettings", __config__=ConfigDict(extra="forbid"), **fields)
