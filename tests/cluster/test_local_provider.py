"""The local provider's market mechanics on real processes (no Ray needed): offers, notice, deadline kill."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cluster.local import LocalProvider
from cluster.node_agent import LocalNodeAgent, agent_from_env
from cluster.processes import ProcessRecord, start_ticks
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
