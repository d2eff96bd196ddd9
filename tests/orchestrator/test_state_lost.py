"""`rm runs/spottune.db` mid-run: the controller notices, stops with one line, and the run's history, mirrored
in its storage, lets `spottune resume --from STORAGE/RUN` re-attach it and finish with the uninterrupted adapter."""
from __future__ import annotations

import json

import pytest

from cluster.processes import start_ticks
from orchestrator.errors import SpecError
from orchestrator.run.mirror import MIRROR_KEY
from orchestrator.run.state import StateStore
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, controller_record, reference_adapter, spottune, submit_detached,
    tiny_sweep, wait_for,
)

pytestmark = pytest.mark.slow

STEPS, EVERY = 24, 3
BOOT_S = 8  # the simulated node boots this long: the database goes while the trial is in flight


def test_removed_database_stops_the_controller_and_the_run_reattaches_from_storage(tmp_path):
    spec = tiny_sweep(tmp_path, "dblost", max_steps=STEPS, checkpoint={"every_steps": EVERY, "keep": 2},
                      search={"parameters": {"training.learning_rate": [1.0e-3]}}, max_parallel=1,
                      provider_settings={"local": {"market": {"boot_s": BOOT_S}}})
    state_dir = tmp_path / "state"
    run_id, state = submit_detached(spec, state_dir)
    trial_id = state.trials(run_id)[0].id
    mirror = tmp_path / "store" / run_id / MIRROR_KEY

    def launch_mirrored() -> bool:
        return mirror.is_file() and "launch" in [event["kind"] for event in json.loads(mirror.read_text())["events"]]

    wait_for(launch_mirrored, timeout=600, what="the launch in the run's mirror", every=0.1)
    controller = controller_record(state_dir, run_id)
    for suffix in ("", "-wal", "-shm"):
        (state_dir / f"spottune.db{suffix}").unlink(missing_ok=True)
    wait_for(lambda: start_ticks(controller.pid) != controller.ticks, timeout=120, what="the controller to stop")
    log = (state_dir / run_id / "controller.log").read_text()
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1] == (
        f"run {run_id}: the state database {state_dir / 'spottune.db'} was removed; stopping. Its history is "
        f"mirrored in storage: spottune resume --from file://{tmp_path / 'store' / run_id}")

    resumed = spottune("resume", "--from", f"file://{tmp_path / 'store' / run_id}", "--state-dir", str(state_dir),
                       "--interval", "60")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert resumed.stdout.startswith(f"run {run_id}: re-attached from file://")
    state = StateStore(state_dir)
    trial = state.trial(run_id, trial_id)
    assert (trial.state, trial.step) == ("succeeded", STEPS)
    events = state.events(run_id, trial_id)
    assert [e.kind for e in events][:2] == ["submitted", "launch"], "the history before the loss is gone"
    lost = next(e for e in events if e.kind == "lost")
    assert lost.detail["cause"] == "controller_restart"
    expected = reference_adapter(trial.config, tmp_path / "reference")
    assert_bit_identical(adapter_tensors(tmp_path / "store" / run_id / trial_id / "adapter"), expected)


def test_mirror_import_refuses_unknown_columns_and_a_run_already_present(tmp_path):
    store = StateStore(tmp_path / "a")
    store.create_run("r1", "demo", "spec.yaml", {"name": "demo"}, "file:///tmp/x",
                     [{"id": "t0", "index": 0, "params": {}, "config": {}, "total_steps": 5}])
    snapshot = store.export_run("r1")
    with pytest.raises(SpecError, match="already in"):
        store.import_run(snapshot)
    other = StateStore(tmp_path / "b")
    bad = {**snapshot, "trials": [{**snapshot["trials"][0], "state) VALUES (1); DROP TABLE runs; --": 1}]}
    with pytest.raises(SpecError, match="unknown columns"):
        other.import_run(bad)
    assert other.runs() == []
    assert other.import_run(snapshot) == "r1"
    assert [e.kind for e in other.events("r1")] == ["submitted"]
    assert other.export_run("r1") == snapshot


def test_resume_from_a_prefix_without_a_mirror_is_one_line_and_writes_nothing(tmp_path, capsys):
    from orchestrator.cli import main

    assert main(["resume", "--from", f"file://{tmp_path / 'store' / 'r1'}", "--state-dir", str(tmp_path / "s")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(f"--from: {tmp_path / 'store' / 'r1' / MIRROR_KEY} does not exist; give the run's prefix, "
                          f"e.g. file://{tmp_path / 'store' / 'r1'}/RUN_ID under the sweep's storage")
    assert len(error.splitlines()) == 1 and not (tmp_path / "s").exists()
