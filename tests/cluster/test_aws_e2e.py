"""`spottune submit` of a 2-trial sweep with `providers: [aws]`, end to end on a real EC2 and S3 wire protocol.

moto's server is EC2 and S3; the controller reaches EC2 through a proxy that answers chosen calls with EC2's error
XML (throttling from the start; InsufficientInstanceCapacity for trial 0's first instance type once it is
reclaimed). For each instance moto reports running, the VM runner (tests/aws_nodes.py) runs that instance's
user-data: the boot script downloads the wheel the controller uploaded to the run's S3 prefix, pip-installs it
into the VM's own directory and starts `spottune node run`, which trains on CPU with its own Ray. Trial 0 gets a
spot notice on its IMDS mid-training (then its instance is terminated at the deadline); trial 1's node vanishes
without a word right after its first committed checkpoint. Both must finish with the
adapter of an uninterrupted run. The controller's credentials are planted secrets that must appear nowhere the run
writes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.storage import open_store
from orchestrator.run.state import StateStore
from tests.aws_nodes import VmRunner
from tests.aws_server import PLANTED_SECRET, PLANTED_TOKEN, Fault, FaultProxy, moto_s3, running_spottune_instances
from tests.aws_sweeps import aws_tiny_sweep, submit_aws
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, reference_adapter, spottune, wait_for,
)

pytestmark = pytest.mark.slow
STEPS = 300  # 12 epochs of the example data: long enough for a notice to land mid-training
EVERY = 20
NOTICE_S = 25
BUCKET = "runs"


def controller_env(proxy: FaultProxy, moto_url: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
        "AWS_SESSION_TOKEN": PLANTED_TOKEN, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_EC2": proxy.url,
        "AWS_ENDPOINT_URL_S3": moto_url, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }


def first_launch(state: StateStore, run_id: str, trial_id: str, attempt: int):
    return next((e for e in state.events(run_id, trial_id) if e.kind == "launch" and e.attempt == attempt), None)


@pytest.fixture(scope="module")
def aws_sweep(moto, tmp_path_factory):
    directory = tmp_path_factory.mktemp("awssweep")
    moto.reset()
    moto_s3(moto).create_bucket(Bucket=BUCKET)
    proxy = FaultProxy(moto.url)
    proxy.faults.append(Fault("DescribeInstances", "RequestLimitExceeded", times=3, message="Request limit exceeded."))
    proxy.faults.append(Fault("RunInstances", "RequestLimitExceeded", times=1, message="Request limit exceeded."))
    vms = VmRunner(moto.url, directory / "vms", env={"GLOO_SOCKET_IFNAME": "lo"}).start()
    env = controller_env(proxy, moto.url)
    spec = aws_tiny_sweep(directory, "awssweep", moto.url, f"s3://{BUCKET}/sweeps", STEPS, epochs=12,
                          aws={"api_max_attempts": 4}, checkpoint={"every_steps": EVERY, "keep": 2})
    state_dir = directory / "state"
    try:
        run_id, state = submit_aws(spec, state_dir, env)
        first, second = (trial.id for trial in state.trials(run_id))

        wait_for(lambda: any(e.kind == "training" for e in state.events(run_id, first)), 600, "trial 0 to train")
        reclaimed = first_launch(state, run_id, first, 1)
        reclaimed_type = reclaimed.offer.split(":")[1]
        # Trial 0's launches of that type only (its trial tag is the instance's second tag): trial 1, relaunched
        # after it vanishes, may come first, and its launch must not be what meets the refusals.
        proxy.faults.append(Fault("RunInstances", "InsufficientInstanceCapacity",
                                  where={"InstanceType": reclaimed_type, "TagSpecification.1.Tag.2.Value": first}))
        deadline = vms.reclaim(reclaimed.node, NOTICE_S)

        wait_for(lambda: any(e.kind == "checkpoint" and e.attempt == 1 for e in state.events(run_id, second)), 600,
                 "trial 1's first checkpoint", every=0.05)
        vanished = first_launch(state, run_id, second, 1)
        vms.vanish(vanished.node)  # at once: on a slow host trial 1 could otherwise finish first
        wait_for(lambda: first_launch(state, run_id, first, 2), 600, "trial 0's relaunch")

        wait_for(lambda: state.run(run_id).finished, 900, "the run to finish")
        status = spottune("status", run_id, "--state-dir", str(state_dir), env=env)
        report = spottune("report", run_id, "--json", "--state-dir", str(state_dir), env=env)
        report_text = spottune("report", run_id, "--state-dir", str(state_dir), env=env)
        yield {"run": run_id, "state": state, "state_dir": state_dir, "dir": directory, "trials": (first, second),
               "reclaimed": reclaimed, "reclaimed_type": reclaimed_type, "deadline": deadline, "vanished": vanished,
               "status": status, "report": report, "report_text": report_text, "proxy": proxy, "vms": vms,
               "moto": moto}
    finally:
        vms.stop()
        proxy.close()
    assert not vms.errors, vms.errors
    assert not running_spottune_instances(moto), "no instance is left running"


def test_both_trials_finish_on_spot_instances_and_status_and_report_show_types_and_dollars(aws_sweep):
    state, run_id = aws_sweep["state"], aws_sweep["run"]
    assert [(t.state, t.step) for t in state.trials(run_id)] == [("succeeded", STEPS), ("succeeded", STEPS)]
    assert not running_spottune_instances(aws_sweep["moto"]), "every instance was terminated"
    launches = [e for e in state.events(run_id) if e.kind == "launch"]
    assert all(e.offer.startswith("aws:") and e.offer.endswith(":spot") and e.node.startswith("i-") for e in launches)
    status = aws_sweep["status"]
    assert status.returncode == 0, status.stderr
    for trial in state.trials(run_id):
        instance_type = trial.offer.split(":")[1]
        line = next(line for line in status.stdout.splitlines() if line.startswith(trial.id))
        assert f"{instance_type} spot" in line and "succeeded" in line
    report = json.loads(aws_sweep["report"].stdout)
    assert report["usd"] > 0 and {n["offer"] for n in report["nodes"]} == {e.offer for e in launches}
    assert all(n["usd"] > 0 for n in report["nodes"])
    text = aws_sweep["report_text"].stdout
    assert all(e.node in text for e in launches), "the report lists every instance it rented"


def test_a_notice_checkpoints_at_once_and_relaunches_on_another_type_after_a_capacity_refusal(aws_sweep, tmp_path,
                                                                                                 monkeypatch):
    state, run_id = aws_sweep["state"], aws_sweep["run"]
    first = aws_sweep["trials"][0]
    events = state.events(run_id, first)
    notice = next(e for e in events if e.kind == "notice")
    assert notice.attempt == 1 and notice.data.deadline == aws_sweep["deadline"]
    preempted = next(e for e in events if e.kind == "preempted")
    assert (preempted.data.cause, preempted.data.lost_steps) == ("notice_checkpoint", 0), "0 steps lost"
    assert preempted.step == preempted.data.reached_step < STEPS, "checkpointed where it stopped, mid-training"
    refusals = [e for e in events if e.kind == "capacity_refused"]
    assert refusals and all(r.data.code == "InsufficientInstanceCapacity" and r.attempt == 2 for r in refusals)
    assert all(r.data.offer.split(":")[1] == aws_sweep["reclaimed_type"] for r in refusals)
    relaunch = first_launch(state, run_id, first, 2)
    assert relaunch.offer.split(":")[1] != aws_sweep["reclaimed_type"] and relaunch.step == preempted.step
    report = json.loads(aws_sweep["report"].stdout)
    assert {(r["offer"], r["code"]) for r in report["capacity_refusals"]} == {
        (r.data.offer, "InsufficientInstanceCapacity") for r in refusals}
    assert "capacity refusals" in aws_sweep["report_text"].stdout
    assert_adapter_matches_an_uninterrupted_run(aws_sweep, first, tmp_path, monkeypatch)


def test_a_node_that_vanishes_resumes_from_its_last_committed_checkpoint(aws_sweep, tmp_path, monkeypatch):
    state, run_id = aws_sweep["state"], aws_sweep["run"]
    second = aws_sweep["trials"][1]
    events = state.events(run_id, second)
    assert not any(e.kind == "notice" for e in events)
    lost = next(e for e in events if e.kind == "preempted")
    assert lost.data.cause == "killed_without_notice" and lost.step > 0
    relaunch = first_launch(state, run_id, second, 2)
    assert relaunch.step >= lost.step and relaunch.step % EVERY == 0, \
        "resumed from the newest checkpoint committed in S3 (it may be newer than the last one the controller saw)"
    assert_adapter_matches_an_uninterrupted_run(aws_sweep, second, tmp_path, monkeypatch)


def test_throttling_was_answered_and_retried(aws_sweep):
    answered = aws_sweep["proxy"].answered
    assert answered.count(("DescribeInstances", "RequestLimitExceeded")) == 3
    assert ("RunInstances", "RequestLimitExceeded") in answered
    assert not any(e.kind == "error" for e in aws_sweep["state"].events(aws_sweep["run"]))


def test_the_planted_secret_is_nowhere_the_run_wrote(aws_sweep):
    found = []
    for path in [p for p in Path(aws_sweep["dir"]).rglob("*") if p.is_file()]:
        data = path.read_bytes()
        if PLANTED_SECRET.encode() in data or PLANTED_TOKEN.encode() in data:
            found.append(str(path))
    s3 = moto_s3(aws_sweep["moto"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            if PLANTED_SECRET.encode() in body or PLANTED_TOKEN.encode() in body:
                found.append(f"s3://{BUCKET}/{item['Key']}")
    for result in (aws_sweep["status"], aws_sweep["report"], aws_sweep["report_text"]):
        assert PLANTED_SECRET not in result.stdout + result.stderr
    user_data = [vm.directory / "user-data.sh" for vm in aws_sweep["vms"].vms.values()]
    assert len(user_data) >= 4 and all(PLANTED_SECRET not in p.read_text() for p in user_data)
    assert not found, found


def assert_adapter_matches_an_uninterrupted_run(aws_sweep: dict, trial_id: str, tmp_path: Path, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    run_id = aws_sweep["run"]
    trial = aws_sweep["state"].trial(run_id, trial_id)
    store = open_store(f"s3://{BUCKET}/sweeps/{run_id}/{trial_id}", aws_sweep["moto"].url)
    store.download_dir("adapter", tmp_path / "adapter")
    assert_bit_identical(adapter_tensors(tmp_path / "adapter"), reference_adapter(trial.config, tmp_path / "ref"))
