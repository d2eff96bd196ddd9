"""Starting the controller as a daemon (its own session, so its Ray processes can be found and reaped later)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from orchestrator.controller import controller_pid
from orchestrator.errors import SpecError
from orchestrator.layout import RunLayout

START_TIMEOUT_S = 60


def spawn_controller(layout: RunLayout) -> int:
    """Start `python -m orchestrator.controller` detached; return its PID once it holds the run's lock."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.controller_log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.controller", "--state-dir", str(layout.state_dir), layout.run_id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ),
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
