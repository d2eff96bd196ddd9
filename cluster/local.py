"""The `local` provider: nodes are slices of a Ray instance on this machine, rented on a simulated spot market.

Offers are the catalog's simulated market (cost_models.catalog.simulated_offers: every GPU type at the
cheapest price any provider lists); the work itself runs on this machine's CPU.
Each launched node gets a directory where its processes register (cluster/node_agent.py). The market
(cluster/spot_market.py) decides when a node is reclaimed: a notice file with a deadline, then at the
deadline a hard kill (SIGKILL) of every process registered on the node; notice 0 kills at once. After a
preemption that GPU type has no spot capacity for a cooldown, so a re-plan may pick another type. The market's
time_scale runs its clocks (boot, preemption times, notice, cooldown) that much faster than the wall clock.

Ray runs inside the run directory (temp dir reached through a short symlink, because Ray's socket paths
must stay under 108 bytes), on 127.0.0.1 only, without a dashboard, and with Ray's token authentication: a
random token per controller start, in ray/auth_token (mode 0600), which every Ray process reads through
RAY_AUTH_TOKEN_PATH. Ray's temp dir is ray/tmp: Ray makes it and its own directories 0777, and ray/ (0700)
keeps other users out of all of them. The controller process owns Ray: when the controller dies, Ray dies with
it, and the next controller kills whatever that session left behind, by PID, start time and command line.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import ClusterError
from cluster.node_agent import HEARTBEAT_FILE, NODE_DIR_ENV, NOTICE_FILE, PIDS_DIR, RECLAIMED_FILE, write_atomic
from cluster.processes import ProcessRecord, session_members
from cluster.provider import LaunchSpec, Node, NodeEvent, Requirements
from cluster.spot_market import PreemptionPlan, SimulatedMarket, plan_preemption
from cost_models.catalog import LOCAL, Offer, list_offers

SESSION_FILE = "session.json"
TOKEN_FILE = "auth_token"
# The controller's environment (orchestrator/daemon.py sets it before Python starts: Ray reads some of these
# when it is imported). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps node IP 127.0.0.1 from being replaced by the
# machine's outward address, which would make Ray listen on every interface.
RAY_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


@dataclass
class _NodeState:
    node: Node
    directory: Path
    plan: PreemptionPlan | None
    running_at: float | None = None
    deadline: float | None = None
    gone: bool = False


class LocalProvider:
    name = "local"

    def __init__(self, run_dir: Path, market: SimulatedMarket, cpus: int) -> None:
        self.run_dir = Path(run_dir)
        self.market = market
        self.cpus = max(1, cpus)
        self._nodes: dict[str, _NodeState] = {}
        self._no_spot_until: dict[str, float] = {}
        self._ray_link: Path | None = None

    # lifecycle of the local Ray instance

    def start(self) -> None:
        """Clean up after a previous controller of this run, then start Ray inside the run directory."""
        import ray

        ray_dir = self.run_dir / "ray"
        ray_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ray_dir.chmod(0o700)
        self._reap_previous_session(ray_dir / SESSION_FILE)
        write_atomic(ray_dir / SESSION_FILE,
                     json.dumps({"controller": ProcessRecord.current(with_cmdline=True).to_dict()}))
        token = write_token(ray_dir / TOKEN_FILE)
        digest = hashlib.sha1(str(ray_dir.resolve()).encode()).hexdigest()[:10]
        link = Path(tempfile.gettempdir()) / f"spottune-ray-{digest}"
        if link.is_symlink() or link.exists():
            link.unlink()
        ray_temp = ray_dir / "tmp"  # Ray makes its temp dir 0777 (again and again); ray/ stays 0700 around it
        ray_temp.mkdir(exist_ok=True)
        link.symlink_to(ray_temp.resolve(), target_is_directory=True)
        self._ray_link = link
        os.environ.update(RAY_ENV)
        os.environ["RAY_TMPDIR"] = str(link)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
        os.environ.pop("RAY_AUTH_TOKEN", None)
        # `import ray` cached RAY_AUTH_MODE and the token; re-read them, as Ray's own token set-up does
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        ray.init(
            address="local", num_cpus=self.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False,
            _temp_dir=str(link), _node_ip_address="127.0.0.1", object_store_memory=200 * 2**20,
            configure_logging=False,
        )
        if ray.util.get_node_ip_address() != "127.0.0.1":
            ray.shutdown()
            raise ClusterError(
                "Ray would listen beyond 127.0.0.1: start the controller with RAY_ENV in its environment "
                "(ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported)"
            )

    def shutdown(self) -> None:
        import ray

        for state in self._nodes.values():
            self._kill(state)
        if ray.is_initialized():
            ray.shutdown()
        if os.getsid(0) == os.getpid():  # Ray's agents can outlive ray.shutdown(); they are in our session
            for process in session_members(ProcessRecord.current()):
                process.kill()
        if self._ray_link is not None and self._ray_link.is_symlink():
            self._ray_link.unlink()

    @staticmethod
    def _reap_previous_session(session_file: Path) -> None:
        """Kill what a dead controller's Ray session left (it was a session leader; see session_members).

        Nothing is killed when the recorded PID now belongs to another process (another start time or
        command line), nor any process that is not verifiably the one found (ProcessRecord.kill).
        """
        if not session_file.is_file():
            return
        previous = ProcessRecord.from_dict(json.loads(session_file.read_text(encoding="utf-8"))["controller"])
        if previous.alive():
            raise ClusterError(f"another controller (PID {previous.pid}) still drives this run")
        for process in session_members(previous):
            process.kill()

    # the provider interface

    def offers(self, requirements: Requirements) -> list[Offer]:
        now = time.time()
        return [
            offer for offer in list_offers([LOCAL], requirements.market, requirements.gpu_types,
                                           local_prices_from=self.market.prices_from)
            if offer.market != "spot" or self._no_spot_until.get(offer.gpu.name, 0.0) <= now
        ]

    def launch(self, offer: Offer, spec: LaunchSpec) -> Node:
        node_id = f"{spec.trial_id}-a{spec.attempt}-{offer.gpu.name.lower()}"
        directory = self.run_dir / "nodes" / node_id
        if directory.exists():
            shutil.rmtree(directory)
        (directory / PIDS_DIR).mkdir(mode=0o700, parents=True)
        node = Node(node_id, offer, spec, time.time(), env={NODE_DIR_ENV: str(directory)}, accelerator="cpu")
        plan = None
        if offer.market == "spot":
            plan = plan_preemption(self.market, spec.trial_index, spec.trial_id, spec.attempt,
                                   offer.interruptions_per_hour)
        self._nodes[node_id] = _NodeState(node, directory, plan)
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
            events.append(NodeEvent("running", now))
        if state.deadline is None and state.plan is not None and self._triggered(state, now):
            notice = state.plan.notice_s
            state.deadline = now + notice / scale
            self._no_spot_until[node.offer.gpu.name] = now + self.market.capacity_cooldown_s / scale
            if notice > 0:
                write_atomic(state.directory / NOTICE_FILE, json.dumps({"deadline": state.deadline}))
                events.append(NodeEvent("notice", now, deadline=state.deadline,
                                        reason=f"spot capacity reclaimed ({state.plan.source}), {notice:g} s notice"))
        if state.deadline is not None and now >= state.deadline:
            self._kill(state)
            state.gone = True
            events.append(NodeEvent("lost", now, reason=f"spot capacity reclaimed ({state.plan.source})"))
        return events

    # internals

    def _triggered(self, state: _NodeState, now: float) -> bool:
        plan = state.plan
        if plan.after_s is not None:
            return state.running_at is not None and now - state.running_at >= plan.after_s / self.market.time_scale
        try:
            beat = json.loads((state.directory / HEARTBEAT_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return int(beat["step"]) >= plan.at_step

    @staticmethod
    def _kill(state: _NodeState) -> None:
        """Mark the node reclaimed, then SIGKILL every process registered on it (see LocalNodeAgent.register)."""
        write_atomic(state.directory / RECLAIMED_FILE, "")
        pids = state.directory / PIDS_DIR
        for entry in sorted(pids.iterdir()):
            if not entry.name.startswith("."):
                ProcessRecord.parse(entry.read_text(encoding="utf-8")).kill()


def write_token(path: Path) -> Path:
    """A fresh random Ray authentication token in a file only this user can read (mode 0600)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(32))
    return path
