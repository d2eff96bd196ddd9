"""Nothing is orphaned: at the end of a sweep the controller asks its providers for the run's nodes that are still
rented and terminates them, with an event each. Real controller and a real process on the leftover node."""
from __future__ import annotations

import json
import subprocess
import sys

from orchestrator.run.state import StateStore
from orchestrator.run.submission import prepare, register
from tests.orchestrator.sweeps import REPO, tiny_sweep

WORKER = """
import sys, time
from cluster.node.agent import LocalNodeAgent
LocalNodeAgent(sys.argv[1]).register("rank-0")
time.sleep(600)
"""

# A node launched outside the controller's bookkeeping (as if a terminate had been lost), a process on it, every
# trial cancelled; then the real Controller.run() until the sweep ends.
CONTROLLER = """
import json, subprocess, sys, time
from pathlib import Path
from cluster.provider import LaunchSpec, Requirements
from cluster.providers.fleet import ProviderFleet
from cluster.providers.registry import ProviderContext
from orchestrator.run.controller import Controller
from orchestrator.run.layout import RunLayout
from orchestrator.run.runner import StorageRunner
from orchestrator.sweep.spec import SweepSpec
from orchestrator.run.state import StateStore

state_dir, run_id, worker = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
state, layout = StateStore(state_dir), RunLayout(state_dir, run_id)
spec = SweepSpec.model_validate(state.run(run_id).spec)
fleet = ProviderFleet.build(spec.resources.providers, spec.provider_settings, ProviderContext(layout.root))
fleet.start()
try:
    trial = state.trials(run_id)[0]
    node = fleet.launch(fleet.offers(Requirements())[0], LaunchSpec(run_id, trial.id, trial.idx, 1))
    process = subprocess.Popen([sys.executable, "-c", worker, node.env["SPOTTUNE_NODE_DIR"]])
    while not (Path(node.env["SPOTTUNE_NODE_DIR"]) / "pids" / "rank-0").is_file():
        time.sleep(0.05)
    for each in state.trials(run_id):
        state.record(run_id, each.id, "cancelled", "cancelled")
    Controller(state, layout, fleet, StorageRunner()).run()
    left = [leftover.id for leftover in fleet.list_nodes(run_id)]
    print(json.dumps({"node": node.id, "left": left, "worker_exit": process.wait(timeout=30)}))
finally:
    fleet.stop()
"""


def test_a_leftover_node_is_terminated_at_sweep_end_with_an_event(tmp_path):
    state_dir = tmp_path / "state"
    store, run_id = register(prepare(tiny_sweep(tmp_path, "leftover")), state_dir)
    result = subprocess.run(
        [sys.executable, "-c", CONTROLLER, str(state_dir), run_id, WORKER], cwd=REPO, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["left"] == [], "the controller terminated the leftover before it finished"
    assert outcome["worker_exit"] == -9, "the leftover node's process was killed"
    orphans = [event for event in StateStore(state_dir).events(run_id) if event.kind == "orphan_terminated"]
    assert [event.node for event in orphans] == [outcome["node"]]
    assert orphans[0].detail["offer"].startswith("1x") and orphans[0].attempt == 1
    assert StateStore(state_dir).run(run_id).finished is not None
