"""A node that stops beating is taken for lost, even while its provider still lists it: the controller reads the
heartbeats the nodes write to the attempt's channel, and silence for NODE_SILENCE_S ends the attempt as a
preemption without notice (the trial goes back to its committed step and is relaunched)."""
from __future__ import annotations

import json
import time

from cluster.providers.fleet import ProviderFleet
from cluster.providers.local import LocalProvider
from orchestrator.run.controller import NODE_SILENCE_S, Controller
from orchestrator.run.layout import RunLayout
from orchestrator.run.runner import StorageRunner
from orchestrator.run.submission import prepare, register
from orchestrator.sweep.spec import SweepSpec
from tests.orchestrator.sweeps import tiny_sweep


def test_a_silent_node_is_lost_and_its_trial_relaunched(tmp_path):
    state, run_id = register(prepare(tiny_sweep(tmp_path, "silence", search={"parameters": {"training.seed": [3]}})),
                             tmp_path / "state")
    layout = RunLayout(tmp_path / "state", run_id)
    spec = SweepSpec.model_validate(state.run(run_id).spec)
    fleet = ProviderFleet([LocalProvider(layout.root, spec.provider_settings.local.market)])
    controller = Controller(state, layout, fleet, StorageRunner())
    controller.launch_ready()
    (active,) = controller.active.values()
    beats = tmp_path / "store" / run_id / active.trial_id / "attempts" / "1" / "heartbeat"
    beats.mkdir(parents=True)
    now = time.time()
    (beats / "0.json").write_text(json.dumps({"time": now - NODE_SILENCE_S + 30, "step": 2}))
    controller.check_silence(now)
    assert controller.active, "30 s of beats left: not silent yet"
    active.handle._beat_read_at = float("-inf")  # read the heartbeat again now rather than in 10 s
    controller.check_silence(now + 60)
    assert not controller.active
    trial = state.trial(run_id, active.trial_id)
    kinds = [e.kind for e in state.events(run_id, trial.id)]
    assert kinds[-3:] == ["node_lost", "preempted", "terminated"]
    assert trial.state == "preempted" and "no heartbeat from the node for 330 s" in \
        next(e for e in state.events(run_id, trial.id) if e.kind == "node_lost").detail["reason"]
    controller.launch_ready()
    assert controller.active[trial.id].attempt == 2
    fleet.stop()
