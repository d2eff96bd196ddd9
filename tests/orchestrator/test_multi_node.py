"""One trial across two nodes: two local machines (127.0.0.2 and 127.0.0.3), each running the node entry point,
form one Ray cluster (node 0 the head, node 1 joining it through the address node 0 published in storage) and
train one trial with one gloo worker each. The adapter is bit-identical to the same trial on one node with two
workers: the same world size, the same all-reduce, only the machines differ."""
from __future__ import annotations

import json
import os
import re

import pytest

from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, node_processes, only_run, spottune, tiny_sweep, wait_for, warm_model_cache,
)
from orchestrator.run.state import StateStore

pytestmark = pytest.mark.slow

STEPS = 6


def _run(directory, nodes: int):
    spec = tiny_sweep(directory, f"nodes{nodes}", max_steps=STEPS, search={"parameters": {"training.seed": [3]}},
                      resources={"gpus_per_trial": 2, "nodes_per_trial": nodes})
    submitted = spottune("submit", str(spec), "--detach", "--state-dir", str(directory / "state"))
    assert submitted.returncode == 0, submitted.stderr
    return directory / "state"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    warm_model_cache()
    runs = {nodes: _run(tmp_path_factory.mktemp(f"nodes{nodes}"), nodes) for nodes in (2, 1)}
    result = {}
    for nodes, state_dir in runs.items():
        run_id = only_run(state_dir)
        state = StateStore(state_dir)
        wait_for(lambda: state.run(run_id).finished, timeout=900, what=f"the {nodes}-node run to finish")
        result[nodes] = (state_dir, run_id, state)
    return result


def test_two_nodes_form_one_ray_cluster_and_train_one_trial(two_runs):
    state_dir, run_id, state = two_runs[2]
    trial = state.trials(run_id)[0]
    assert trial.state == "succeeded", (state_dir / run_id / "logs" / f"{trial.id}.log").read_text()[-3000:]
    assert [e.detail["world_size"] for e in state.events(run_id) if e.kind == "workers_started"] == [2]
    launch = next(e for e in state.events(run_id) if e.kind == "launch")
    assert launch.detail["offer"].endswith("x2 nodes")
    channel = state_dir.parent / "store" / run_id / trial.id / "attempts" / "1"
    head = json.loads((channel / "ray-head.json").read_text())["address"]
    assert head.startswith("127.0.0.2:"), "node 0 leads on its own address; node 1 (127.0.0.3) joined it"
    assert sorted(path.name for path in (channel / "heartbeat").iterdir()) == ["0.json", "1.json"]
    assert json.loads((channel / "outcome.json").read_text()) == {"ok": True, "error": None}
    wait_for(lambda: not node_processes(state_dir / run_id), timeout=60,
             what="every process of both machines, Ray's daemons in their own sessions included, to be gone")


def test_two_nodes_give_the_adapter_of_one_node_with_two_workers(two_runs):
    adapters = []
    for nodes in (2, 1):
        state_dir, run_id, state = two_runs[nodes]
        trial = state.trials(run_id)[0]
        assert trial.state == "succeeded"
        adapters.append(adapter_tensors(state_dir.parent / "store" / run_id / trial.id / "adapter"))
    assert_bit_identical(*adapters)


def test_workers_sharing_a_node_are_pinned_to_their_own_cores(two_runs):
    logs = {}
    for nodes in (2, 1):
        state_dir, run_id, state = two_runs[nodes]
        logs[nodes] = (state_dir / run_id / "logs" / f"{state.trials(run_id)[0].id}.log").read_text()
    pinned = re.search(r"rank 0: pinned to (\d+) of the node's CPUs, apart from its other workers", logs[1])
    if len(os.sched_getaffinity(0)) >= 4:
        assert pinned and int(pinned.group(1)) >= 2
    else:
        assert not pinned, "a share of one CPU would starve the worker's own helper threads"
    assert "pinned to" not in logs[2], "one worker per machine has its machine's CPUs to itself"
