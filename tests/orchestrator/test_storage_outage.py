"""Storage outages against the real S3 server (SeaweedFS), cut off by closing a TCP gate in front of it:
the controller never dies of them (its trials wait with backoff and an event, and launch once storage answers),
and a worker's store waits an outage out and carries on. A garbled `latest` crashes nothing either."""
from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from cluster.providers.fleet import ProviderFleet
from cluster.providers.local import LocalProvider
from cluster.storage import Backoff, RetryingStore, S3Store
from orchestrator.run.controller import Controller
from orchestrator.run.layout import RunLayout
from orchestrator.run.runner import StorageRunner
from orchestrator.sweep.spec import SweepSpec
from orchestrator.run.submission import prepare, register
from tests.orchestrator.sweeps import (
    adapter_tensors, assert_bit_identical, reference_adapter, submit_detached, tiny_sweep, wait_for,
)
from tests.tcp_gate import TcpGate
from train_core.checkpoint import LATEST_KEY, MANIFEST_FILE, step_key


@pytest.fixture
def gate(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    address = urlparse(s3_server.endpoint)
    gate = TcpGate(address.hostname, address.port)
    gate.open()
    yield gate
    gate.close()


def _controller(directory: Path, storage: str, endpoint: str | None = None):
    extra = {"storage": storage, **({"storage_endpoint": endpoint} if endpoint else {})}
    state, run_id = register(prepare(tiny_sweep(directory, "outage", **extra)), directory / "state")
    layout = RunLayout(directory / "state", run_id)
    spec = SweepSpec.model_validate(state.run(run_id).spec)
    provider = ProviderFleet([LocalProvider(layout.root, spec.provider_settings.local.market)])
    return Controller(state, layout, provider, StorageRunner()), state, run_id


def _open_attempt(state, run_id: str, trial_id: str) -> None:
    """What a controller that died mid-attempt leaves behind: a launch with no `terminated`."""
    state.record(run_id, trial_id, "launch", "provisioning", attempt=1, node=f"{trial_id}-a1", offer="local:x:y:spot",
                 price=0.1, step=0, count="attempts")


def test_controller_waits_out_a_storage_outage_and_launches_when_it_returns(tmp_path, s3_server, gate):
    prefix = s3_server.prefix("outage")
    endpoint = f"http://127.0.0.1:{gate.port}"
    controller, state, run_id = _controller(tmp_path, f"s3://{s3_server.bucket}/{prefix}", endpoint)
    first, second = [trial.id for trial in state.trials(run_id)]
    S3Store(s3_server.bucket, f"{prefix}/{run_id}/{first}", s3_server.endpoint).write_text(LATEST_KEY, "3\n")
    _open_attempt(state, run_id, first)
    gate.close()

    controller.recover()
    controller.launch_ready()
    assert not controller.active
    kinds = {trial_id: [e.kind for e in state.events(run_id, trial_id)] for trial_id in (first, second)}
    assert kinds[first][-3:] == ["lost", "terminated", "storage_unavailable"]
    assert kinds[second][-1] == "storage_unavailable"
    assert "EndpointConnectionError" in state.events(run_id, second)[-1].detail["error"]
    assert [t.state for t in state.trials(run_id)] == ["preempted", "pending"]

    gate.open()

    def launched():
        controller.launch_ready()
        return len(controller.active) == 2

    wait_for(launched, timeout=120, what="both trials to launch once storage is back")
    for trial_id, resume in ((first, 3), (second, 0)):
        events = state.events(run_id, trial_id)
        assert [e.kind for e in events][-2:] == ["storage_restored", "launch"]
        assert events[-1].step == resume
    for active in controller.active.values():
        controller.provider.terminate(active.node)


def test_worker_store_waits_out_an_outage_and_finishes_the_upload(tmp_path, s3_server, gate):
    prefix = s3_server.prefix("retry")
    outages: list[str | None] = []
    store = RetryingStore(S3Store(s3_server.bucket, prefix, f"http://127.0.0.1:{gate.port}"),
                          on_outage=outages.append, backoff=Backoff(first_s=0.2, cap_s=1.0))
    (tmp_path / "step").mkdir()
    (tmp_path / "step" / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    store.write_text("before", "1")
    gate.close()
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            store.upload_dir(tmp_path / "step", step_key(5))
        except BaseException as error:  # reported to the test thread
            failure.append(error)

    worker = threading.Thread(target=upload)
    worker.start()
    wait_for(lambda: outages, timeout=120, what="the store to report the outage")
    assert outages[0].startswith(f"upload_dir s3://{s3_server.bucket}/{prefix}/{step_key(5)}: ")
    gate.open()
    worker.join(timeout=180)
    assert not worker.is_alive() and not failure
    assert outages == [outages[0], None]
    assert S3Store(s3_server.bucket, prefix, s3_server.endpoint).list_dir(step_key(5)) == ["adapter_model.safetensors"]


def test_garbage_latest_crashes_neither_recover_nor_launch(tmp_path):
    controller, state, run_id = _controller(tmp_path, f"file://{tmp_path / 'store'}")
    first = state.trials(run_id)[0].id
    checkpoints = tmp_path / "store" / run_id / first / "checkpoints"
    (checkpoints / "step-00000006").mkdir(parents=True)
    (checkpoints / "step-00000006" / MANIFEST_FILE).write_text("{}")
    (checkpoints / "latest").write_bytes(b"\xff\xfe garbage")
    _open_attempt(state, run_id, first)
    controller.recover()
    controller.launch_ready()
    launch = [e for e in state.events(run_id, first) if e.kind == "launch"][-1]
    assert launch.attempt == 2 and launch.step == 6
    for active in controller.active.values():
        controller.provider.terminate(active.node)


@pytest.mark.slow
def test_sweep_waits_out_an_outage_and_finishes_with_the_uninterrupted_adapter(tmp_path, s3_server, gate):
    """The whole path: the gate closes while the trial's node boots, so the node's first storage access (its
    payload) meets the outage; the controller, reading the attempt's channel, records it; the node waits (no error
    counted), goes on when the gate reopens, and the trial ends bit-identical."""
    prefix = s3_server.prefix("sweep-outage")
    spec = tiny_sweep(tmp_path, "outage", max_steps=9, checkpoint={"every_steps": 3, "keep": 2},
                      search={"parameters": {"training.learning_rate": [1.0e-3]}}, max_parallel=1,
                      storage=f"s3://{s3_server.bucket}/{prefix}", storage_endpoint=f"http://127.0.0.1:{gate.port}",
                      provider_settings={"local": {"market": {"boot_s": 3}}})
    state_dir = tmp_path / "state"
    run_id, state = submit_detached(spec, state_dir)
    trial_id = state.trials(run_id)[0].id
    wait_for(lambda: any(e.kind == "launch" for e in state.events(run_id, trial_id)), timeout=300,
             what="the trial's launch", every=0.05)
    gate.close()
    outage = wait_for(lambda: [e for e in state.events(run_id, trial_id) if e.kind == "storage_unavailable"],
                      timeout=300, what="the outage to be noticed")
    assert outage[0].detail["source"] == "controller" and "EndpointConnectionError" in outage[0].detail["error"]
    gate.open()
    wait_for(lambda: state.trial(run_id, trial_id).terminal, timeout=600, what="the trial to end")
    trial = state.trial(run_id, trial_id)
    assert (trial.state, trial.errors, trial.attempts) == ("succeeded", 0, 1)
    kinds = [e.kind for e in state.events(run_id, trial_id)]
    assert kinds.index("storage_unavailable") < kinds.index("storage_restored") < kinds.index("training")
    store = S3Store(s3_server.bucket, f"{prefix}/{run_id}/{trial_id}", s3_server.endpoint)
    store.download_dir("adapter", tmp_path / "adapter")
    assert_bit_identical(adapter_tensors(tmp_path / "adapter"), reference_adapter(trial.config, tmp_path / "ref"))


def test_worker_reports_become_events_a_person_reads(tmp_path):
    """What train_worker sends on a skipped damaged checkpoint or an outage is recorded and shown by `status`."""
    from orchestrator.views.progress import describe_event

    controller, state, run_id = _controller(tmp_path, f"file://{tmp_path / 'store'}")
    controller.launch_ready()
    trial_id, attempt = next(iter(controller.active.values())).trial_id, 1
    skipped = ["step 4: adapter_model.safetensors has 10 bytes, the manifest says 20"]
    controller.apply([
        {"trial": trial_id, "attempt": attempt, "kind": "checkpoint_skipped", "time": 1.0, "step": 2,
         "skipped": skipped},
        {"trial": trial_id, "attempt": attempt, "kind": "storage_outage", "time": 2.0, "error": "write_text x: boom"},
        {"trial": trial_id, "attempt": attempt, "kind": "storage_outage", "time": 3.0, "error": None},
    ])
    events = state.events(run_id, trial_id)[-3:]
    assert [(e.kind, e.step) for e in events] == [("checkpoint_skipped", 2), ("storage_unavailable", None),
                                                  ("storage_restored", None)]
    assert events[0].detail == {"skipped": skipped, "resumed_from": 2}
    assert describe_event(events[0]).endswith(f"{trial_id} damaged checkpoints skipped ({skipped[0]}), "
                                              "resumed from step 2")
    assert describe_event(events[1]).endswith("storage unreachable, waiting with backoff: write_text x: boom")
    for active in controller.active.values():
        controller.provider.terminate(active.node)
