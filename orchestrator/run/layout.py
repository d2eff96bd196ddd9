"""Where a run keeps its local files under the state directory (the SQLite database sits beside them)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_ENV = "SPOTTUNE_STATE_DIR"


def default_state_dir() -> Path:
    """$SPOTTUNE_STATE_DIR, else ./runs."""
    return Path(os.environ.get(STATE_DIR_ENV, "runs")).resolve()


@dataclass(frozen=True)
class RunLayout:
    state_dir: Path
    run_id: str

    @property
    def root(self) -> Path:
        return self.state_dir / self.run_id

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def trial_log(self, trial_id: str) -> Path:
        return self.logs / f"{trial_id}.log"

    @property
    def controller_log(self) -> Path:
        return self.root / "controller.log"

    @property
    def controller_record(self) -> Path:
        """The live controller's PID, start time and command line (cluster/processes.py's ProcessRecord)."""
        return self.root / "controller.json"

    @property
    def lock(self) -> Path:
        return self.root / "controller.lock"

    @property
    def report_png(self) -> Path:
        return self.root / "report.png"
