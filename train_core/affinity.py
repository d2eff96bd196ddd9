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


MIN_SHARE_CPUS = 2  # the launch thread and the process's helper threads (data, NCCL proxy, Ray) each need one


def core_share(local_rank: int, local_world_size: int, allowed: set[int], topology: Path = CPU_TOPOLOGY) -> set[int] | None:
    """Local rank r's logical CPUs: the r-th of local_world_size equal runs of whole physical cores; None when a
    share would have fewer than MIN_SHARE_CPUS (one CPU starves the process's own helper threads, and a gloo
    process group on one CPU aborts at exit: 'terminate called without an active exception', torch 2.13)."""
    cores = physical_cores(allowed, topology)
    per_rank = len(cores) // local_world_size
    share = {cpu for core in cores[local_rank * per_rank:(local_rank + 1) * per_rank] for cpu in core}
    return share if len(share) >= MIN_SHARE_CPUS else None


def pin_to_core_share(local_rank: int, local_world_size: int) -> set[int] | None:
    """Pin this thread (and the threads it starts later) to its core share; None when it stays unpinned."""
    if local_world_size <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    share = core_share(local_rank, local_world_size, os.sched_getaffinity(0))
    if share is not None:
        os.sched_setaffinity(0, share)
    return share
