"""Which providers this build can plan (it has their prices) and which it can launch: one answer for every command."""
from __future__ import annotations

from cost_models.catalog import providers
from orchestrator.errors import SpecError

LAUNCHABLE = ("local",)


def support() -> str:
    """'this build plans aws, gcp, local, runpod and launches local'."""
    return f"this build plans {', '.join(providers())} and launches {', '.join(LAUNCHABLE)}"


def check_providers(names: list[str], where: str, launch: bool) -> None:
    """Raise SpecError naming `where` for the first provider that cannot be planned (or, with launch, launched)."""
    for name in names:
        if name not in providers():
            raise SpecError(f"{where}: provider {name!r} is not available; {support()}")
        if launch and name not in LAUNCHABLE:
            raise SpecError(f"{where}: provider {name!r} can be planned (spottune plan) but not launched by this "
                            f"build; {support()}")
