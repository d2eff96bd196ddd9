"""Each training process of a node on its own physical cores.

The engine launches its kernels from one host thread and is host-bound on fast GPUs, so two ranks whose main threads
share a core's hyperthreads, or migrate onto each other's cores, both slow down.
"""
from __future__ import annotations

import os
from pathlib import Path

CPU_TOPOLOGY = Path("/sys/devices/system/cpu")


def physical_cores(allowed: set[int], topology: Path = CPU_TOPOLOGY) -> list[list[int]]:
    """The allowed logical CPUs grouped by physical core (package, core id), in CPU order; a CPU whose topology is
    not readable counts as a core of its own."""
    cores: dict[tuple[int, int], list[int]] = {}
    for cpu in sorted(allowed):
        try:
            package = int((topology / f"cpu{cpu}/topology/physical_package_id").read_text())
            core = int((topology / f"cpu{cpu}/topology/core_id").read_text())
        except (OSError, ValueError):
            package, core = -1, cpu
        cores.setdefault((package, core), []).append(cpu)
    return sorted(cores.values())


def core_share(local_rank: int, local_world_size: int, allowed: set[int], topology: Path = CPU_TOPOLOGY) -> set[int]:
    """Local rank r's logical CPUs: the r-th of local_world_size equal runs of whole physical cores (all of
    `allowed` when there are fewer cores than ranks)."""
    cores = physical_cores(allowed, topology)
    per_rank = len(cores) // local_world_size
    if per_rank == 0:
        return set(allowed)
    return {cpu for core in cores[local_rank * per_rank:(local_rank + 1) * per_rank] for cpu in core}


def pin_to_core_share(local_rank: int, local_world_size: int) -> set[int] | None:
    """Pin this thread (and the threads it starts later) to its core share; None when there is nothing to share."""
    if local_world_size <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    share = core_share(local_rank, local_world_size, os.sched_getaffinity(0))
    os.sched_setaffinity(0, share)
    return share
