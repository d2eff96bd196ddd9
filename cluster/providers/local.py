"""The `local` provider: nodes are processes on this machine running the node entry point, rented on a simulated
spot market.

Offers are the catalog's simulated market (cost_models.catalog.simulated_offers: every GPU type at the
cheapest price any provider lists); the work itself runs on this machine's CPU.
A launched node is booted like any provider's: once its simulated boot time has passed, each of its machines
runs the boot script (cluster/node/boot.py) as a process in a session of its own, so the node entry point
(cluster/node/entry.py) brings up its own Ray instance, exactly as on a rented VM. A one-machine node's Ray is on
127.0.0.1; the machines of a node that spans several are 127.0.0.2, 127.0.0.3, ... and form one Ray cluster.
The machines of a node share its directory, where their processes register (cluster/node/agent.py).
The market (cluster/providers/local_market.py) decides when a node is reclaimed: a notice file with a deadline,
then at the deadline a hard kill (SIGKILL) of every process of the node's sessions; notice 0 kills at once. After
a preemption that GPU type has no spot capacity for a cooldown: offers() reports how long
(Offer.capacity_wait_s), and the planner prices waiting for it against moving to another type. The market's
time_scale runs its clocks (boot, preemption times, notice, cooldown) that much faster than the wall clock.
A node whose processes outlive their controller is killed by the next controller of the run (`start`), by PID,
start time and session.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cluster.node.agent import NODE_DIR_ENV, PIDS_DIR, RECLAIMED_FILE, LocalNodeAgent, post_notice, write_atomic
from cluster.node.boot import boot_script, local_install
from cluster.node.entry import ADDRESS_ENV, INDEX_ENV
from cluster.node.worker import STORAGE_FAULT_ENV
from cluster.processes import ProcessRecord, processes_with_environment, session_members, start_ticks
from cluster.provider import LaunchSpec, Node, NodeEvent, Requirements
from cluster.providers.local_market import PreemptionPlan, SimulatedMarket, plan_preemption, storage_fault, \
    unknown_trial_refs
from cluster.providers.registry import ProviderContext, ProviderKind, register
from cost_models.catalog import LOCAL, Offer, list_offers

BOOT_FILE = "boot.sh"
MACHINE_FILE = "machine-{index}.json"  # the ProcessRecord of a machine's session leader
NODE_ENV = {"GLOO_SOCKET_IFNAME": "lo"}  # gloo on loopback: every machine of a local node is this one


def machine_address(index: int, machines: int) -> str:
    """127.0.0.1 for a node of one machine; 127.0.0.2, .3, ... for the machines of one that spans several (Ray
    refuses to join a second node at 127.0.0.1)."""
    return "127.0.0.1" if machines == 1 else f"127.0.0.{index + 2}"


class LocalSettings(BaseModel):
    """The `local` provider's section of a sweep spec (`provider_settings.local`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    market: SimulatedMarket = Field(
        default_factory=SimulatedMarket,
        description="The simulated spot market: random or scheduled preemptions, storage faults.",
    )

    def unknown_trials(self, trial_ids: list[str]) -> str:
        """'' when every trial the market names is in the sweep, else the problem in one line."""
        unknown = unknown_trial_refs(self.market, trial_ids)
        if not unknown:
            return ""
        return (f"field 'provider_settings.local.market': no trial {', '.join(unknown)} in this sweep; "
                f"use a trial index 0..{len(trial_ids) - 1} or one of {', '.join(trial_ids)}")


@dataclass
class _NodeState:
    node: Node
    directory: Path
    plan: PreemptionPlan | None
    fault: dict | None
    running_at: float | None = None
    deadline: float | None = None
    gone: bool = False
    processes: list[subprocess.Popen] = field(default_factory=list)
    leaders: list[ProcessRecord] = field(default_factory=list)  # each machine's session leader


class LocalProvider:
    name = "local"
    accelerator = "cpu"

    def __init__(self, run_dir: Path, market: SimulatedMarket, python: str = sys.executable) -> None:
        self.run_dir = Path(run_dir)
        self.market = market
        self.python = python  # the interpreter the machines boot spottune with: this machine's, as the controller's
        self._nodes: dict[str, _NodeState] = {}
        self._no_spot_until: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: LocalSettings, context: ProviderContext) -> LocalProvider:
        return cls(context.run_dir, settings.market)

    def start(self) -> None:
        """Kill the machines a previous controller of this run left running."""
        for record in sorted((self.run_dir / "nodes").glob(f"*/{MACHINE_FILE.format(index='*')}")):
            leader = ProcessRecord.parse(record.read_text(encoding="utf-8"))
            for process in [leader, *session_members(leader)]:
                process.kill()
            record.unlink()

    def stop(self) -> None:
        """Kill every node's processes."""
        for state in self._nodes.values():
            self._kill(state)

    # the provider interface

    def list_nodes(self, run_id: str) -> list[Node]:
        return [state.node for state in self._nodes.values() if state.node.spec.run_id == run_id and not state.gone]

    def offers(self, requirements: Requirements) -> list[Offer]:
        """Every offer; a spot type in its cooldown carries the simulated seconds until its capacity returns."""
        now = time.time()
        offers = list_offers([LOCAL], requirements.market, requirements.gpu_types,
                             local_prices_from=self.market.prices_from)
        return [
            replace(offer, capacity_wait_s=(until - now) * self.market.time_scale)
            if offer.market == "spot" and (until := self._no_spot_until.get(offer.gpu.name, 0.0)) > now else offer
            for offer in offers
        ]

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        """Rent the node; its machines boot once the market's boot time has passed (see watch)."""
        node_id = f"{spec.trial_id}-a{spec.attempt}-{offer.gpu.name.lower()}"
        directory = self.run_dir / "nodes" / node_id
        if directory.exists():
            shutil.rmtree(directory)
        (directory / PIDS_DIR).mkdir(mode=0o700, parents=True)
        fault = storage_fault(self.market, spec.trial_index, spec.trial_id, spec.attempt)
        machines = [f"{node_id}/m{index}" for index in range(spec.nodes)]
        node = Node(node_id, offer, spec, time.time(), machines=machines, env={NODE_DIR_ENV: str(directory)})
        plan = None
        if offer.market == "spot":
            plan = plan_preemption(self.market, spec.trial_index, spec.trial_id, spec.attempt,
                                   offer.interruptions_per_hour)
        self._nodes[node_id] = _NodeState(node, directory, plan, fault.model_dump() if fault is not None else None)
        return node

    def terminate(self, node: Node) -> None:
        state = self._nodes.get(node.id)
        if state is not None:
            self._kill(state)
            state.gone = True

    def watch(self, node: Node) -> list[NodeEvent]:
        state = self._nodes[node.id]
        if state.gone:
            return []
        now = time.time()
        scale = self.market.time_scale
        events: list[NodeEvent] = []
        if state.running_at is None:
            if now < node.launched_at + self.market.boot_s / scale:
                return events
            state.running_at = now
            self._boot(state)
            events.append(NodeEvent("running", now))
        if state.deadline is None and state.plan is not None and self._triggered(state, now):
            notice = state.plan.notice_s
            state.deadline = now + notice / scale
            self._no_spot_until[node.offer.gpu.name] = now + self.market.capacity_cooldown_s / scale
            if notice > 0:
                post_notice(state.directory, state.deadline)
                events.append(NodeEvent("notice", now, deadline=state.deadline,
                                        reason=f"spot capacity reclaimed ({state.plan.source}), {notice:g} s notice"))
        if state.deadline is not None and now >= state.deadline:
            self._kill(state)
            state.gone = True
            events.append(NodeEvent("lost", now, reason=f"spot capacity reclaimed ({state.plan.source})"))
        elif (ended := self._ended(state)) is not None:
            state.gone = True
            self._kill(state)
            events.append(ended)
        return events

    # internals

    def _boot(self, state: _NodeState) -> None:
        """Start each machine: the boot script in a session of its own, logging to node-<i>.log."""
        node = state.node
        script = state.directory / BOOT_FILE
        write_atomic(script, boot_script(node.spec.payload, node.spec.storage_endpoint, local_install(self.python)))
        for index in range(node.spec.nodes):
            env = {**os.environ, **NODE_ENV, NODE_DIR_ENV: str(state.directory), INDEX_ENV: str(index),
                   ADDRESS_ENV: machine_address(index, node.spec.nodes)}
            if state.fault is not None:
                env[STORAGE_FAULT_ENV] = json.dumps(state.fault)
            with open(state.directory / f"node-{index}.log", "ab") as log:
                process = subprocess.Popen(["bash", str(script)], stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True, env=env)
            leader = ProcessRecord(process.pid, start_ticks(process.pid) or 0)
            state.processes.append(process)
            state.leaders.append(leader)
            write_atomic(state.directory / MACHINE_FILE.format(index=index), leader.dump())

    @staticmethod
    def _ended(state: _NodeState) -> NodeEvent | None:
        """`exited` once machine 0's entry point has ended by itself; `lost` when something else killed it."""
        if not state.processes or (code := state.processes[0].poll()) is None:
            return None
        if code < 0:
            return NodeEvent("lost", time.time(), reason=f"node process killed by signal {-code}")
        return NodeEvent("exited", time.time(), reason=f"node entry point exited with status {code}")

    def _triggered(self, state: _NodeState, now: float) -> bool:
        plan = state.plan
        if plan.after_s is not None:
            return state.running_at is not None and now - state.running_at >= plan.after_s / self.market.time_scale
        return LocalNodeAgent(state.directory).step() >= plan.at_step

    @staticmethod
    def _kill(state: _NodeState) -> None:
        """Mark the node reclaimed, then SIGKILL every process of its machines' sessions, every process registered
        on it (see LocalNodeAgent.register) and every process that inherited its directory."""
        write_atomic(state.directory / RECLAIMED_FILE, "")
        for process, leader in zip(state.processes, state.leaders):
            for member in session_members(leader):
                member.kill()
            if process.poll() is None:
                process.kill()
            process.wait()
        pids = state.directory / PIDS_DIR
        for entry in sorted(pids.iterdir()):
            if not entry.name.startswith("."):
                ProcessRecord.parse(entry.read_text(encoding="utf-8")).kill()
        for process in processes_with_environment(NODE_DIR_ENV, str(state.directory)):
            process.kill()  # what the machines started in sessions of its own (`ray start`'s daemons)
        for record in state.directory.glob(MACHINE_FILE.format(index="*")):
            record.unlink()


register(ProviderKind(LOCAL, LocalSettings, LocalProvider.from_settings))
