"""The local provider's market mechanics on real processes (no Ray needed): offers, notice, deadline kill."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.errors import ClusterError
from cluster.local import LocalProvider
from cluster.node_agent import LocalNodeAgent, agent_from_env
from cluster.processes import ProcessRecord, command_line, session_id, start_ticks
from cluster.provider import LaunchSpec, Requirements
from cluster.spot_market import SimulatedMarket

WORKER = """
import sys, time
from cluster.node_agent import LocalNodeAgent
agent = LocalNodeAgent(sys.argv[1])
agent.register("rank-0")
for step in range(1, 10_000):
    agent.beat(step)
    time.sleep(0.05)
"""


def _worker(node_dir) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(node_dir)])
    deadline = time.monotonic() + 30
    while not (node_dir / "pids" / "rank-0").is_file():
        assert time.monotonic() < deadline, "worker did not register"
        time.sleep(0.05)
    return process


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
    provider = LocalProvider("/nonexistent", SimulatedMarket(), cpus=1)
    spot = provider.offers(Requirements())
    assert spot and all(o.market == "spot" and o.provider == "local" for o in spot)
    assert [o.usd_per_gpu_hour for o in spot] == sorted(o.usd_per_gpu_hour for o in spot)
    both = provider.offers(Requirements(gpu_types=("L4",), market="any"))
    assert {(o.gpu.name, o.market) for o in both} == {("L4", "spot"), ("L4", "on-demand")}


def test_notice_then_hard_kill_at_the_deadline_and_capacity_cooldown(tmp_path):
    market = SimulatedMarket(preemptions=[{"trial": 0, "at_step": 5, "notice_s": 1.0}], capacity_cooldown_s=600)
    provider = LocalProvider(tmp_path, market, cpus=1)
    offer = provider.offers(Requirements())[0]
    node = provider.launch(offer, LaunchSpec("run", "t000-aaaaaa", 0, 1))
    agent = agent_from_env(node.env)
    process = _worker(agent.node_dir)
    try:
        events = _watch_until(provider, node, "notice")
        assert [e.kind for e in events] == ["running", "notice"]
        notice = events[-1]
        assert agent.notice_deadline() == pytest.approx(notice.deadline)
        assert process.poll() is None, "nothing is killed before the deadline"
        assert offer.gpu.name not in {o.gpu.name for o in provider.offers(Requirements())}, "spot capacity is gone"
        assert offer.gpu.name in {o.gpu.name for o in provider.offers(Requirements(market="on-demand"))}
        lost = _watch_until(provider, node, "lost")[-1]
        assert lost.time >= notice.deadline
        assert process.wait(timeout=10) == -9
    finally:
        process.kill()


def test_time_triggered_preemption_without_notice(tmp_path):
    provider = LocalProvider(tmp_path, SimulatedMarket(preemptions=[{"trial": 0, "after_s": 0.3}]), cpus=1)
    node = provider.launch(provider.offers(Requirements())[0], LaunchSpec("run", "t000-aaaaaa", 0, 1))
    process = _worker(agent_from_env(node.env).node_dir)
    try:
        events = _watch_until(provider, node, "lost")
        assert [e.kind for e in events] == ["running", "lost"]
        assert events[1].time - events[0].time >= 0.3
        assert process.wait(timeout=10) == -9
    finally:
        process.kill()


def test_a_process_starting_on_a_reclaimed_node_dies(tmp_path):
    provider = LocalProvider(tmp_path, SimulatedMarket(), cpus=1)
    node = provider.launch(provider.offers(Requirements(market="on-demand"))[0], LaunchSpec("run", "t000-a", 0, 1))
    provider.terminate(node)
    late = subprocess.Popen([sys.executable, "-c", WORKER, node.env["SPOTTUNE_NODE_DIR"]])
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
        assert not ProcessRecord(process.pid, ticks, ("python", "-m", "orchestrator.controller")).kill()
        assert process.poll() is None
    finally:
        process.kill()


def _session_file(tmp_path, record: ProcessRecord):
    session = tmp_path / "session.json"
    session.write_text(json.dumps({"controller": record.to_dict()}), encoding="utf-8")
    return session


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


@pytest.mark.parametrize("mismatch", ["start time", "command line"])
def test_a_reused_controller_pid_and_its_session_are_not_killed(tmp_path, mismatch):
    """session.json names a dead controller whose PID now belongs to an unrelated session leader (with a child
    in its session): reaping the old session must signal neither of them."""
    leader, child = _leader_with_child()
    try:
        ticks = start_ticks(leader.pid)
        recorded = (ProcessRecord(leader.pid, ticks - 100, command_line(leader.pid)) if mismatch == "start time"
                    else ProcessRecord(leader.pid, ticks, ("python", "-m", "orchestrator.controller", "run")))
        LocalProvider._reap_previous_session(_session_file(tmp_path, recorded))
        time.sleep(0.2)
        assert leader.poll() is None, "an unrelated process with the recorded PID was killed"
        assert _running(child) and session_id(child) == leader.pid, "the unrelated session's child was killed"
    finally:
        subprocess.run(["kill", "-9", str(child), str(leader.pid)], check=False, capture_output=True)
        leader.wait(timeout=10)


def test_a_live_recorded_controller_is_not_reaped(tmp_path):
    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        recorded = ProcessRecord(leader.pid, start_ticks(leader.pid), command_line(leader.pid))
        with pytest.raises(ClusterError, match=f"PID {leader.pid}"):
            LocalProvider._reap_previous_session(_session_file(tmp_path, recorded))
        assert leader.poll() is None
    finally:
        leader.kill()
        leader.wait(timeout=10)


def test_a_dead_controller_s_session_is_reaped(tmp_path):
    """The recorded controller died (its PID is free) but a process of its session lives on: it is killed."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], start_new_session=True, stdout=subprocess.PIPE,
                              text=True)
    orphan = int(leader.stdout.readline())
    recorded = ProcessRecord(leader.pid, start_ticks(leader.pid), command_line(leader.pid))
    leader.wait(timeout=10)
    try:
        assert session_id(orphan) == recorded.pid and start_ticks(recorded.pid) is None
        LocalProvider._reap_previous_session(_session_file(tmp_path, recorded))
        deadline = time.monotonic() + 10
        while _running(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(orphan)
    finally:
        subprocess.run(["kill", "-9", str(orphan)], check=False, capture_output=True)


def test_agent_without_a_node_is_none(tmp_path):
    assert agent_from_env({}) is None
    assert LocalNodeAgent(tmp_path).notice_deadline() is None


def test_time_scale_runs_boot_preemption_notice_and_cooldown_faster(tmp_path):
    """At time_scale 100, 20 s of boot, a preemption 30 s into the run, 60 s of notice and 1000 s of cooldown
    take a hundredth of that on the wall clock."""
    market = SimulatedMarket(preemptions=[{"trial": 0, "after_s": 30, "notice_s": 60}], boot_s=20,
                             capacity_cooldown_s=1000, time_scale=100)
    provider = LocalProvider(tmp_path, market, cpus=1)
    offer = provider.offers(Requirements())[0]
    node = provider.launch(offer, LaunchSpec("run", "t000-aaaaaa", 0, 1))
    running = _watch_until(provider, node, "running")[-1]
    assert running.time >= node.launched_at + 0.2
    notice = _watch_until(provider, node, "notice")[-1]
    assert notice.time >= running.time + 0.3
    assert notice.deadline - notice.time == pytest.approx(0.6)
    assert offer.gpu.name not in {o.gpu.name for o in provider.offers(Requirements())}
    lost = _watch_until(provider, node, "lost")[-1]
    assert lost.time >= notice.deadline


def test_the_market_can_copy_chosen_providers_prices():
    from cost_models.catalog import list_offers
    from cost_models.errors import EstimateError

    hyperscalers = LocalProvider("/nonexistent", SimulatedMarket(prices_from=["aws", "gcp"]), cpus=1)
    offers = hyperscalers.offers(Requirements(market="any"))
    assert offers and all(o.source.startswith(("simulated at the price of aws ", "simulated at the price of gcp "))
                          for o in offers)
    real = list_offers(["aws", "gcp"], "any")
    for offer in offers:
        same = [o.usd_per_gpu_hour for o in real if (o.gpu.name, o.market) == (offer.gpu.name, offer.market)]
        assert offer.usd_per_gpu_hour == min(same)
    everyone = LocalProvider("/nonexistent", SimulatedMarket(), cpus=1).offers(Requirements(market="any"))
    assert len(everyone) >= len(offers)
    with pytest.raises(EstimateError, match="simulation.prices_from: unknown provider 'nowhere'; accepted: "):
        LocalProvider("/nonexistent", SimulatedMarket(prices_from=["nowhere"]), cpus=1).offers(Requirements())
