import os

import pytest

from train_core.affinity import core_share, physical_cores, pin_to_core_share


def write_topology(root, cpus: dict[int, tuple[int, int]]):
    for cpu, (package, core) in cpus.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


def test_hyperthread_siblings_stay_together_and_ranks_get_disjoint_cores(tmp_path):
    # 2 packages x 2 cores x 2 threads, siblings numbered as Linux does (cpu n and n + 4)
    topology = write_topology(tmp_path, {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1),
                                         4: (0, 0), 5: (0, 1), 6: (1, 0), 7: (1, 1)})
    allowed = set(range(8))
    assert physical_cores(allowed, topology) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert core_share(0, 2, allowed, topology) == {0, 4, 1, 5}
    assert core_share(1, 2, allowed, topology) == {2, 6, 3, 7}
    assert core_share(3, 4, allowed, topology) == {3, 7}


def test_a_share_of_fewer_than_two_cpus_is_not_made_and_unreadable_topology_counts_cpus(tmp_path):
    assert core_share(1, 3, {0, 1}, tmp_path) is None
    assert core_share(1, 2, {0, 1}, tmp_path) is None
    assert physical_cores({5, 2}, tmp_path) == [[2], [5]]
    assert core_share(1, 2, {0, 1, 2, 3, 4}, tmp_path) == {2, 3}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_pinning_applies_to_this_thread_and_one_rank_is_not_pinned():
    before = os.sched_getaffinity(0)
    try:
        assert pin_to_core_share(0, 1) is None
        share = pin_to_core_share(0, 2)
        if len(before) < 4:
            assert share is None and os.sched_getaffinity(0) == before
        else:
            assert share and os.sched_getaffinity(0) == share and share < before
    finally:
        os.sched_setaffinity(0, before)
