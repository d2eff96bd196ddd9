"""`spottune cancel` of an aws run mid-training (moto) leaves no instance running: the trial's instance is
terminated, its VM's processes are gone, and the run ends cancelled."""
from __future__ import annotations

import pytest

from tests.aws_nodes import VmRunner
from tests.aws_server import moto_s3, running_spottune_instances
from tests.aws_sweeps import aws_tiny_sweep, controller_env, submit_aws
from tests.orchestrator.sweeps import spottune, wait_for

pytestmark = pytest.mark.slow


def test_cancel_mid_training_terminates_every_instance(moto, tmp_path):
    moto.reset()
    moto_s3(moto).create_bucket(Bucket="cancel")
    vms = VmRunner(moto.url, tmp_path / "vms", env={"GLOO_SOCKET_IFNAME": "lo"}).start()
    env = controller_env(moto.url)
    spec = aws_tiny_sweep(tmp_path, "cancel", moto.url, "s3://cancel/sweeps", 300, epochs=12)
    state_dir = tmp_path / "state"
    try:
        run_id, state = submit_aws(spec, state_dir, env)
        wait_for(lambda: {e.trial_id for e in state.events(run_id) if e.kind == "training"} == {
            t.id for t in state.trials(run_id)}, 600, "both trials to train")
        assert len(running_spottune_instances(moto)) == 2
        cancelled = spottune("cancel", run_id, "--state-dir", str(state_dir), env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        wait_for(lambda: state.run(run_id).finished, 300, "the run to end")
        assert [t.state for t in state.trials(run_id)] == ["cancelled", "cancelled"]
        assert not running_spottune_instances(moto), "cancel leaves no instance running"
        wait_for(lambda: all(vm.process.poll() is not None for vm in vms.vms.values()), 30, "the VMs to stop")
    finally:
        vms.stop()
    assert not vms.errors, vms.errors
