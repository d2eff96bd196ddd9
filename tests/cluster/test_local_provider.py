"""The local provider's market mechanics on real processes (no Ray needed): offers, notice, deadline kill."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.node.agent import LocalNodeAgent, agent_from_env
from cluster.providers.local import LocalProvider
from cluster.processes import ProcessRecord, command_line, session_id, start_ticks
from cluster.provider import LaunchSpec, Requirements
from cluster.providers.local_market import SimulatedMarket

WORKER = """
import os, time
from cluster.node.agent import LocalNodeAgent
agent = LocalNodeAgent(os.environ["SPOTTUNE_NODE_DIR"])
agent.register("rank-0")
for step in range(1, 10_000):
    agent.beat(step)
    time.sleep(0.05)
"""


@pytest.fixture
def node_image(tmp_path) -> str:
    """The interpreter a node boots with, standing in for a VM image: whatever the boot script asks of it, it runs
    a worker that registers on the node and beats a step every 50 ms (these tests are about the market)."""
    script = tmp_path / "node-python"
    script.write_text(f"#!/bin/bash\nexec {sys.executable} -c {shlex.quote(WORKER)}\n")
    script.chmod(0o755)
    return str(script)


def _registered(node, timeout=30.0) -> ProcessRecord:
    """The rank-0 process the node's boot started, once it has registered."""
    path = Path(node.env["SPOTTUNE_NODE_DIR"]) / "pids" / "rank-0"
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, "the node's worker did not register"
        time.sleep(0.05)
    return ProcessRecord.parse(path.read_text())


def _gone(record: ProcessRecord, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not record.alive()


def _watch_until(provider, node, kind, timeout=30.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += provider.watch(node)
        if any(event.kind == kind for event in seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event; saw {[e.kind for e in seen]}")


def test_offers_come_from_the_catalog_market_cheapest_first():
    provider = LocalProvider("/nonexistent", SimulatedMarket())
    spot = provider.offers(Requirements())
    assert spot and all(o.market == "spot" and o.provider == "local" for o in spot)
    assert [o.usd_per_gpu_hour for o in spot] == sorted(o.usd_per_gpu_hour for o in spot)
    both = provider.offers(Requirements(gpu_types=("L4",), market="any"))
    assert {(o.gpu.name, o.market) for o in both} == {("L4", "spot"), ("L4", "on-demand")}


def test_notice_then_hard_kill_at_the_deadline_and_capacity_cooldown(tmp_path, node_image):
    market = SimulatedMarket(preemptions=[{"trial": 0, "at_step": 5, "notice_s": 1.0}], capacity_cooldown_s=600)
    provider = LocalProvider(tmp_path, market, python=node_image)
    offer = provider.offers(Requirements())[0]
    node = provider.launch(offer, LaunchSpec("run", "t000-aaaaaa", 0, 1))
    agent = agent_from_env(node.env)
    try:
        events = _watch_until(provider, node, "notice")
        assert [e.kind for e in events] == ["running", "notice"]
        process = _registered(node)
        notice = events[-1]
        assert agent.notice_deadline() == pytest.approx(notice.deadline)
        assert process.alive(), "nothing is killed before the deadline"
        cooling = {o.gpu.name: o.capacity_wait_s for o in provider.offers(Requirements())}
        assert 0 < cooling[offer.gpu.name] <= 600, "spot capacity is gone, back after the cooldown"
        assert sum(cooling.values()) == cooling[offer.gpu.name], "other types have capacity now"
        assert offer.gpu.name in {o.gpu.name for o in provider.offers(Requirements(market="on-demand"))}
        lost = _watch_until(provider, node, "lost")[-1]
        assert lost.time >= notice.deadline
        assert _gone(process)
    finally:
        provider.stop()


def test_time_triggered_preemption_without_notice(tmp_path, node_image):
    provider = LocalProvider(tmp_path, SimulatedMarket(preemptions=[{"trial": 0, "after_s": 0.3}]), python=node_image)
    node = provider.launch(provider.offers(Requirements())[0], LaunchSpec("run", "t000-aaaaaa", 0, 1))
    try:
        events = _watch_until(provider, node, "running")
        process = _registered(node)
        events += _watch_until(provider, node, "lost")
        assert [e.kind for e in events] == ["running", "lost"]
        assert events[1].time - events[0].time >= 0.3
        assert _gone(process)
    finally:
        provider.stop()


def test_a_node_whose_entry_point_ends_reports_exited_and_one_killed_from_outside_lost(tmp_path):
    """What the controller needs to tell a node that ended by itself (it reads the outcome) from one taken away."""
    provider = LocalProvider(tmp_path, SimulatedMarket(), python="true")
    ended = provider.launch(provider.offers(Requirements(market="on-demand"))[0], LaunchSpec("run", "t000-a", 0, 1))
    assert [e.kind for e in _watch_until(provider, ended, "exited")] == ["running", "exited"]
    sleeper = tmp_path / "sleeping-python"
    sleeper.write_text("#!/bin/bash\nexec sleep 60\n")
    sleeper.chmod(0o755)
    provider = LocalProvider(tmp_path, SimulatedMarket(), python=str(sleeper))
    killed = provider.launch(provider.offers(Requirements(market="on-demand"))[0], LaunchSpec("run", "t001-b", 1, 1))
    try:
        _watch_until(provider, killed, "running")
        leader = ProcessRecord.parse((Path(killed.env["SPOTTUNE_NODE_DIR"]) / "machine-0.json").read_text())
        assert leader.kill()
        assert "signal 9" in _watch_until(provider, killed, "lost")[-1].reason
    finally:
        provider.stop()


def test_a_process_starting_on_a_reclaimed_node_dies(tmp_path):
    provider = LocalProvider(tmp_path, SimulatedMarket(), python="true")
    node = provider.launch(provider.offers(Requirements(market="on-demand"))[0], LaunchSpec("run", "t000-a", 0, 1))
    provider.terminate(node)
    late = subprocess.Popen([sys.executable, "-c", WORKER], env={**os.environ, **node.env})
    assert late.wait(timeout=30) == -9


def test_process_records_ignore_a_reused_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = ProcessRecord(process.pid, start_ticks(process.pid))
        assert record.alive()
        assert not ProcessRecord(process.pid, record.ticks + 1).kill(), "another start time is another process"
        assert record.kill() and process.wait(timeout=10) == -9
        assert not record.alive()
    finally:
        process.kill()


def test_process_records_check_the_command_line_when_recorded():
    process = subprocess.Popen(["sleep", "60"])
    try:
        ticks = start_ticks(process.pid)
        deadline = time.monotonic() + 10
        while command_line(process.pid) != ("sleep", "60") and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child has exec'd
        assert ProcessRecord(process.pid, ticks, ("sleep", "60")).alive()
        assert not ProcessRecord(process.pid, ticks, ("python", "-m", "orchestrator.run.controller")).kill()
        assert process.poll() is None
    finally:
        process.kill()


def _machine_file(tmp_path, record: ProcessRecord):
    """A machine record as a previous controller of the run left it."""
    machine = tmp_path / "nodes" / "t000-a1-l4" / "machine-0.json"
    machine.parent.mkdir(parents=True, exist_ok=True)
    machine.write_text(record.dump(), encoding="utf-8")
    return machine


def _leader_with_child(**options) -> tuple[subprocess.Popen, int]:
    """A session leader (`sh`) with a `sleep` child in its session; returns it and the child's PID."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], start_new_session=True,
                              stdout=subprocess.PIPE, text=True, **options)
    return leader, int(leader.stdout.readline())


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_reused_machine_pid_and_its_session_are_not_killed(tmp_path):
    """A machine record names a dead node process whose PID now belongs to an unrelated session leader (with a
    child in its session): the next controller's start must signal neither of them."""
    leader, child = _leader_with_child()
    try:
        _machine_file(tmp_path, ProcessRecord(leader.pid, start_ticks(leader.pid) - 100))
        LocalProvider(tmp_path, SimulatedMarket()).start()
        time.sleep(0.2)
        assert leader.poll() is None, "an unrelated process with the recorded PID was killed"
        assert _running(child) and session_id(child) == leader.pid, "the unrelated session's child was killed"
    finally:
        subprocess.run(["kill", "-9", str(child), str(leader.pid)], check=False, capture_output=True)
        leader.wait(timeout=10)


def test_machines_a_dead_controller_left_are_killed_with_their_sessions(tmp_path):
    """One machine still runs (leader and child); another's leader died but a process of its session lives on."""
    live, live_child = _leader_with_child()
    dead = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], start_new_session=True, stdout=subprocess.PIPE,
                            text=True)
    orphan = int(dead.stdout.readline())
    dead_record = ProcessRecord(dead.pid, start_ticks(dead.pid))
    dead.wait(timeout=10)
    try:
        _machine_file(tmp_path, ProcessRecord(live.pid, start_ticks(live.pid)))
        other = tmp_path / "nodes" / "t001-a1-l4" / "machine-0.json"
        other.parent.mkdir(parents=True)
        other.write_text(dead_record.dump())
        LocalProvider(tmp_path, SimulatedMarket()).start()
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in (live.pid, live_child, orphan)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(pid) for pid in (live.pid, live_child, orphan))
        assert not list(tmp_path.glob("nodes/*/machine-*.json")), "the records are gone with their machines"
    finally:
        subprocess.run(["kill", "-9", str(live_child), str(orphan)], check=False, capture_output=True)
        live.kill()
        live.wait(timeout=10)


def test_agent_without_a_node_is_none(tmp_path):
    assert agent_from_env({}) is None
    assert LocalNodeAgent(tmp_path).notice_deadline() is None


def test_time_scale_runs_boot_preemption_notice_and_cooldown_faster(tmp_path, node_image):
    """At time_scale 100, 20 s of boot, a preemption 30 s into the run, 60 s of notice and 1000 s of cooldown
    take a hundredth of that on the wall clock."""
    market = SimulatedMarket(preemptions=[{"trial": 0, "after_s": 30, "notice_s": 60}], boot_s=20,
                             capacity_cooldown_s=1000, time_scale=100)
    provider = LocalProvider(tmp_path, market, python=node_image)
    offer = provider.offers(Requirements())[0]
    node = provider.launch(offer, LaunchSpec("run", "t000-aaaaaa", 0, 1))
    running = _watch_until(provider, node, "running")[-1]
    assert running.time >= node.launched_at + 0.2
    notice = _watch_until(provider, node, "notice")[-1]
    assert notice.time >= running.time + 0.3
    assert notice.deadline - notice.time == pytest.approx(0.6)
    wait = {o.gpu.name: o.capacity_wait_s for o in provider.offers(Requirements())}[offer.gpu.name]
    assert 900 < wait <= 1000, "the wait is reported in market seconds, not wall seconds"
    lost = _watch_until(provider, node, "lost")[-1]
    assert lost.time >= notice.deadline
    provider.stop()


def test_the_market_can_copy_chosen_providers_prices():
    from cost_models.catalog import list_offers
    from cost_models.errors import EstimateError

    hyperscalers = LocalProvider("/nonexistent", SimulatedMarket(prices_from=["aws", "gcp"]))
    offers = hyperscalers.offers(Requirements(market="any"))
    assert offers and all(o.source.startswith(("simulated at the price of aws ", "simulated at the price of gcp "))
                          for o in offers)
    real = list_offers(["aws", "gcp"], "any")
    for offer in offers:
        same = [o.usd_per_gpu_hour for o in real if (o.gpu.name, o.market) == (offer.gpu.name, offer.market)]
        assert offer.usd_per_gpu_hour == min(same)
    everyone = LocalProvider("/nonexistent", SimulatedMarket()).offers(Requirements(market="any"))
    assert len(everyone) >= len(offers)
    with pytest.raises(EstimateError, match="provider_settings.local.market.prices_from: unknown provider 'nowhere'; accepted: "):
        LocalProvider("/nonexistent", SimulatedMarket(prices_from=["nowhere"])).offers(Requirements())
