"""A running sweep seen from outside: what its processes listen on, and who may read what it writes.

One trial trains data-parallel on two Ray Train workers (so torch.distributed's store and gloo are up too).
While it trains, every listening TCP socket of the sweep's processes (the controller's session, and the node's:
its entry point, Ray's GCS, raylet, agents and the trial's workers) is listed with psutil. When the run has
finished, the modes of everything under the state directory are checked.

What the socket test proves: at one moment while a trial trains on two workers (process group up), every
listening TCP socket of every process of the sweep (Ray's, torch.distributed's gloo, the controller's) is
bound to a loopback address, so nothing is reachable from another machine and no authentication is needed
for that. Ray's token authentication is on as well (checked in the Ray processes' environment). It does not
prove anything about sockets opened and closed between two listings, nor about UDP or Unix sockets (Ray's
Unix sockets live under each node's private (0700) Ray temp directory).
"""
from __future__ import annotations

import ipaddress
import json
import os
import stat

import psutil
import pytest

from cluster.processes import ProcessRecord, session_members
from tests.orchestrator.sweeps import (
    controller_record, leftover_processes, node_processes, submit_detached, tiny_sweep, wait_for,
)

pytestmark = pytest.mark.slow

STEPS = 25


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def sweep_pids(controller: ProcessRecord, run_dir) -> list[int]:
    """The controller, its session, and every process of the run's nodes."""
    return [controller.pid, *(member.pid for member in session_members(controller)), *node_processes(run_dir)]


def sweep_sockets(controller: ProcessRecord, run_dir) -> list[tuple[int, str, str, int]]:
    """Listening TCP sockets (pid, process name, address, port) of the sweep's processes."""
    listening = []
    for pid in sweep_pids(controller, run_dir):
        try:
            process = psutil.Process(pid)
            name = process.name()
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        listening += [(pid, name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return listening


def ray_token_files(environments: dict[int, dict]) -> dict[str, tuple[int, int]]:
    """Each Ray token file the processes name: (its mode, its length), read while the run lives."""
    found = {}
    for environment in environments.values():
        path = environment.get("RAY_AUTH_TOKEN_PATH")
        if path and path not in found:
            try:
                found[path] = (stat.S_IMODE(os.stat(path).st_mode), len(open(path).read()))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    directory = tmp_path_factory.mktemp("secured")
    spec = tiny_sweep(directory, "secured", max_steps=STEPS, search={"parameters": {"training.seed": [3]}},
                      resources={"gpus_per_trial": 2}, storage=f"file://{directory / 'state'}")
    state_dir = directory / "state"
    run_id, state = submit_detached(spec, state_dir)
    wait_for(lambda: any(e.kind == "training" for e in state.events(run_id)), timeout=600, what="training")
    controller = controller_record(state_dir, run_id)
    run_dir = state_dir / run_id
    wait_for(lambda: sum(name.startswith("ray::RayTrain") for _, name, _, _ in sweep_sockets(controller, run_dir)) >= 2,
             timeout=120, what="both Train workers listening")
    sockets = sweep_sockets(controller, run_dir)
    environments = {}
    for pid in sweep_pids(controller, run_dir):
        try:
            environments[pid] = psutil.Process(pid).environ()
        except psutil.Error:
            continue
    tokens = ray_token_files(environments)
    temp_dirs = {env["RAY_TMPDIR"]: stat.S_IMODE(os.stat(os.path.dirname(env["RAY_TMPDIR"])).st_mode)
                 for env in environments.values() if "RAY_TMPDIR" in env}
    wait_for(lambda: state.run(run_id).finished and not leftover_processes(controller, state_dir / run_id), timeout=600,
             what="the run to finish")
    return {"run": run_id, "state": state, "state_dir": state_dir, "sockets": sockets,
            "environments": environments, "controller": controller, "tokens": tokens, "temp_dirs": temp_dirs}


def test_the_sweep_succeeded_on_two_workers(secured):
    assert [t.state for t in secured["state"].trials(secured["run"])] == ["succeeded"]
    started = [e for e in secured["state"].events(secured["run"]) if e.kind == "workers_started"]
    assert started and all(e.detail["world_size"] == 2 for e in started)


def test_no_socket_of_a_running_sweep_listens_off_loopback(secured):
    sockets = secured["sockets"]
    names = {name for _, name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, f"the listing missed Ray itself: {sockets}"
    exposed = [entry for entry in sockets if not _is_loopback(entry[2])]
    assert exposed == [], f"listening off loopback: {exposed}"


def test_ray_runs_with_token_authentication_and_a_private_token(secured):
    ray_processes = [env for env in secured["environments"].values() if "RAY_TMPDIR" in env]
    assert ray_processes, "no Ray process environment was readable"
    for environment in ray_processes:
        assert environment.get("RAY_AUTH_MODE") == "token"
        assert environment.get("RAY_AUTH_TOKEN_PATH") in secured["tokens"]
    assert len(secured["tokens"]) == 1, "one node, one Ray, one token"
    assert all(mode == 0o600 and length >= 32 for mode, length in secured["tokens"].values())
    assert secured["temp_dirs"] and set(secured["temp_dirs"].values()) == {0o700}, "Ray's temp dir is inside a private one"


def test_the_run_s_files_are_private(secured):
    state_dir, run_dir = secured["state_dir"], secured["state_dir"] / secured["run"]
    wider = []
    for path in [state_dir, *state_dir.rglob("*")]:
        if path.is_symlink() or path.is_socket():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wider.append((str(path.relative_to(state_dir)), oct(mode)))
    assert wider == []
    record = json.loads((run_dir / "controller.json").read_text(encoding="utf-8"))
    assert record["cmdline"][1:3] == ["-m", "orchestrator.run.controller"]
