"""`spottune submit SWEEP --run-id NAME`: what the Helm chart's controller Deployment runs, so a restarted pod must
neither submit the sweep twice nor resubmit a finished one."""
from __future__ import annotations

import pytest

from orchestrator.run.layout import RunLayout
from orchestrator.run.state import StateStore
from tests.orchestrator.sweeps import spottune, tiny_sweep, warm_model_cache


def test_a_finished_run_is_not_submitted_again(tmp_path):
    state_dir = tmp_path / "state"
    store = StateStore(state_dir)
    spec = tiny_sweep(tmp_path, "once")
    run_id = store.create_run("demo", "once", str(spec), {"name": "once"}, f"file://{tmp_path}/store",
                              [{"id": "t000-abcdef", "index": 0, "params": {}, "config": {}, "total_steps": 10}])
    store.set_finished(run_id, 1.0)
    again = spottune("submit", str(spec), "--run-id", "demo", "--state-dir", str(state_dir))
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout == "run demo has finished; nothing to submit (`spottune report demo`)\n"
    assert [run.id for run in StateStore(state_dir).runs()] == ["demo"]
    assert not RunLayout(state_dir, "demo").controller_log.exists()  # no controller was started


def test_a_run_id_that_cannot_name_a_run_is_one_line(tmp_path):
    refused = spottune("submit", str(tmp_path / "x.yaml"), "--run-id", "../up", "--state-dir", str(tmp_path))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ("spottune submit: error: argument --run-id: '../up' is not a run id; accepted: 1-63 "
                              "letters, digits, '_', '.', '-', starting with a letter or digit "
                              "(see spottune submit --help)\n")


@pytest.mark.slow
def test_submitting_twice_gives_one_run_and_after_it_finished_nothing_happens(tmp_path):
    """First start submits run `demo`; a second start while it runs, with an edited sweep, says the run goes on as
    submitted and follows it to its end (no new run); a start after it finished does nothing and exits 0."""
    warm_model_cache()
    spec = tiny_sweep(tmp_path, "once", max_steps=6, search={"parameters": {"training.learning_rate": [1.0e-3]}},
                      max_parallel=1)
    state_dir = tmp_path / "state"
    first = spottune("submit", str(spec), "--run-id", "demo", "--detach", "--state-dir", str(state_dir))
    assert first.returncode == 0, first.stderr
    assert "run demo: 1 trial(s), controller PID" in first.stdout
    (tmp_path / "edited").mkdir()
    edited = tiny_sweep(tmp_path / "edited", "once", max_steps=6)  # two learning rates now
    second = spottune("submit", str(edited), "--run-id", "demo", "--state-dir", str(state_dir), "--interval", "60")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"warning: {edited} changed since run demo was submitted; the run goes on as it was submitted" \
        in second.stderr
    assert second.stdout.startswith("run demo: already driven by controller PID ")
    assert second.stdout.rstrip().endswith("run demo succeeded; see `spottune report demo`")
    store = StateStore(state_dir)
    assert [run.id for run in store.runs()] == ["demo"]
    assert [(trial.state, trial.step) for trial in store.trials("demo")] == [("succeeded", 6)]
    launches = [event for event in store.events("demo") if event.kind == "launch"]
    third = spottune("submit", str(spec), "--run-id", "demo", "--state-dir", str(state_dir))
    assert third.returncode == 0
    assert third.stdout == "run demo has finished; nothing to submit (`spottune report demo`)\n"
    store = StateStore(state_dir)
    assert [run.id for run in store.runs()] == ["demo"]
    assert [event for event in store.events("demo") if event.kind == "launch"] == launches
