"""Starting the controller as a daemon, in a session of its own, so it outlives the command that submitted it.

The controller and everything it starts (the local provider's nodes and their Ray) run under umask 077: the
run's files are for this user only (directories 0700, files 0600).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from orchestrator.run.controller import controller_pid
from orchestrator.errors import SpecError
from orchestrator.run.layout import RunLayout

START_TIMEOUT_S = 60
PRIVATE_UMASK = 0o077


def spawn_controller(layout: RunLayout) -> int:
    """Start `python -m orchestrator.run.controller` detached; return its PID once it holds the run's lock."""
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout.root.chmod(0o700)
    descriptor = os.open(layout.controller_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(layout.controller_log, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.run.controller", "--state-dir", str(layout.state_dir), layout.run_id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            umask=PRIVATE_UMASK,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if controller_pid(layout) == process.pid:
            return process.pid
        if process.poll() is not None:
            tail = layout.controller_log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            raise SpecError(f"the controller of run {layout.run_id} exited at start: {' '.join(tail)} "
                            f"(log: {layout.controller_log})")
        time.sleep(0.05)
    raise SpecError(f"the controller of run {layout.run_id} did not start within {START_TIMEOUT_S} s "
                    f"(log: {layout.controller_log})")
