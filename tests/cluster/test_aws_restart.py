"""A controller killed mid-training on aws (moto): the instance keeps training and writing to S3; `spottune resume`
finds it by its tags (list_nodes, with the attempt's payload), re-attaches to its channel instead of relaunching,
and the trial finishes in its first attempt with the adapter of an uninterrupted run."""
from __future__ import annotations

import os
import signal

import pytest

from orchestrator.run.controller import controller_pid
from orchestrator.run.layout import RunLayout
from tests.aws_nodes import VmRunner
from tests.aws_server import moto_s3, running_spottune_instances
from tests.aws_sweeps import aws_tiny_sweep, controller_env, submit_aws
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, reference_adapter, spottune, wait_for,
)

pytestmark = pytest.mark.slow
STEPS = 300
BUCKET = "restart"


@pytest.fixture(scope="module")
def restarted(moto, tmp_path_factory):
    moto.reset()
    s3 = moto_s3(moto)
    s3.create_bucket(Bucket=BUCKET)
    directory = tmp_path_factory.mktemp("awsrestart")
    vms = VmRunner(moto.url, directory / "vms", env={"GLOO_SOCKET_IFNAME": "lo"}).start()
    env = controller_env(moto.url)
    spec = aws_tiny_sweep(directory, "restart", moto.url, f"s3://{BUCKET}/sweeps", STEPS, epochs=12,
                          search={"parameters": {"training.seed": [3]}}, checkpoint={"every_steps": 20, "keep": 2})
    state_dir = directory / "state"
    try:
        run_id, state = submit_aws(spec, state_dir, env)
        wait_for(lambda: any(e.kind == "training" for e in state.events(run_id)), 600, "the trial to train")
        pid = controller_pid(RunLayout(state_dir, run_id))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: controller_pid(RunLayout(state_dir, run_id)) is None, 30, "the controller to die")
        instances_at_kill = running_spottune_instances(moto)
        resumed = spottune("resume", run_id, "--state-dir", str(state_dir), "--interval", "30", env=env)
        yield {"run": run_id, "state": state, "state_dir": state_dir, "resumed": resumed,
               "instances_at_kill": instances_at_kill, "s3": s3, "vms": vms, "moto": moto}
    finally:
        vms.stop()
    assert not vms.errors, vms.errors
    assert not running_spottune_instances(moto)


def test_the_new_controller_reattaches_to_the_running_instance(restarted):
    assert restarted["resumed"].returncode == 0, restarted["resumed"].stderr[-3000:]
    state, run_id = restarted["state"], restarted["run"]
    [trial] = state.trials(run_id)
    assert (trial.state, trial.step, trial.attempts, trial.preemptions) == ("succeeded", STEPS, 1, 0)
    [launch] = [e for e in state.events(run_id) if e.kind == "launch"]
    assert restarted["instances_at_kill"] == [launch.node], "the instance outlived its controller"
    assert len(restarted["vms"].vms) == 1, "nothing was launched again"
    log = (restarted["state_dir"] / run_id / "logs" / f"{trial.id}.log").read_text()
    assert f"re-attached to node {launch.node}, still running after a controller restart" in log


def test_the_reattached_trial_has_the_adapter_of_an_uninterrupted_run(restarted, tmp_path):
    state, run_id = restarted["state"], restarted["run"]
    [trial] = state.trials(run_id)
    prefix = f"sweeps/{run_id}/{trial.id}/adapter/"
    (tmp_path / "adapter").mkdir()
    for item in restarted["s3"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
        restarted["s3"].download_file(BUCKET, item["Key"], str(tmp_path / "adapter" / item["Key"][len(prefix):]))
    assert_bit_identical(adapter_tensors(tmp_path / "adapter"), reference_adapter(trial.config, tmp_path / "ref"))
